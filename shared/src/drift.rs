//! Drift: an object the agent applied was changed by someone else. Decided from the object's
//! `managedFields` alone: the newest entry that is not a subresource (status written by a
//! controller, replicas by an autoscaler through `scale`) names who last changed the spec. When
//! that is not the agent's field manager, the bundle is reconciled again (debounced), which puts
//! back what Git says.

use serde_json::Value;

/// Who last changed an object's spec and when (`manager@time`), from `metadata.managedFields`.
/// Entries written to a subresource are not changes of what the agent applies. Among entries of
/// the same second, `ours` wins: our own apply is never mistaken for drift.
pub fn last_writer(object: &Value, ours: &str) -> Option<(String, String)> {
    let fields = object["metadata"]["managedFields"].as_array()?;
    fields
        .iter()
        .filter(|f| f["subresource"].as_str().is_none_or(str::is_empty))
        .filter_map(|f| Some((f["manager"].as_str()?.to_owned(), f["time"].as_str().unwrap_or_default().to_owned())))
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| (a.0 == ours).cmp(&(b.0 == ours))))
}

/// Whether an update of `object` is drift: its last writer is not `ours` and differs from the
/// writer seen before (`seen`; `None` for the first sight, which is never drift: the initial
/// list of a watch is not a change).
pub fn is_drift(object: &Value, ours: &str, seen: Option<&(String, String)>) -> Option<String> {
    let now = last_writer(object, ours)?;
    let seen = seen?;
    (now.0 != ours && &now != seen).then_some(now.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(entries: &[(&str, &str, &str)]) -> Value {
        let fields: Vec<Value> = entries
            .iter()
            .map(|(m, t, sub)| {
                let mut f = json!({"manager": m, "operation": "Update", "time": t});
                if !sub.is_empty() {
                    f["subresource"] = json!(sub);
                }
                f
            })
            .collect();
        json!({"metadata": {"managedFields": fields}})
    }

    #[test]
    fn drift_is_a_new_spec_writer_that_is_not_us() {
        let ga = "gitops-agent";
        let applied = ("gitops-agent".to_owned(), "2026-11-24T10:00:00Z".to_owned());
        // (case, managedFields, seen before, drift by)
        type Case<'a> = (&'a str, Value, Option<(String, String)>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("first sight is never drift", obj(&[("kubectl-edit", "2026-11-24T10:05:00Z", "")]), None, None),
            ("our own apply", obj(&[(ga, "2026-11-24T10:00:00Z", "")]), Some(applied.clone()), None),
            (
                "a controller writing status",
                obj(&[(ga, "2026-11-24T10:00:00Z", ""), ("kube-controller-manager", "2026-11-24T10:01:00Z", "status")]),
                Some(applied.clone()),
                None,
            ),
            (
                "an autoscaler through scale",
                obj(&[(ga, "2026-11-24T10:00:00Z", ""), ("hpa", "2026-11-24T10:01:00Z", "scale")]),
                Some(applied.clone()),
                None,
            ),
            (
                "kubectl edit of the spec",
                obj(&[(ga, "2026-11-24T10:00:00Z", ""), ("kubectl-edit", "2026-11-24T10:02:00Z", "")]),
                Some(applied.clone()),
                Some("kubectl-edit"),
            ),
            (
                "the same edit seen again (a status update after it)",
                obj(&[
                    (ga, "2026-11-24T10:00:00Z", ""),
                    ("kubectl-edit", "2026-11-24T10:02:00Z", ""),
                    ("kube-controller-manager", "2026-11-24T10:03:00Z", "status"),
                ]),
                Some(("kubectl-edit".to_owned(), "2026-11-24T10:02:00Z".to_owned())),
                None,
            ),
            (
                "our re-apply after the edit",
                obj(&[(ga, "2026-11-24T10:04:00Z", ""), ("kubectl-edit", "2026-11-24T10:02:00Z", "")]),
                Some(("kubectl-edit".to_owned(), "2026-11-24T10:02:00Z".to_owned())),
                None,
            ),
            (
                "a tie within one second goes to us",
                obj(&[("kubectl-edit", "2026-11-24T10:04:00Z", ""), (ga, "2026-11-24T10:04:00Z", "")]),
                Some(applied.clone()),
                None,
            ),
            ("no managed fields", json!({"metadata": {}}), Some(applied), None),
        ];
        for (name, object, seen, want) in cases {
            assert_eq!(is_drift(&object, ga, seen.as_ref()).as_deref(), want, "{name}");
        }
    }
}
