//! The leaf of `shared`: Kubernetes facts every other module uses: time, object ids, label
//! selectors, quantities, workload kinds and pod helpers. It imports no other module of the crate.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Unix seconds.
pub type Time = i64;

/// `Kind/namespace/name` (or `Kind/name`), as `shared::render::Manifest::id`.
pub fn object_id(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

// ---- label selectors ----

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Kubernetes semantics: every matchLabels pair and every expression must hold.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator {
                    Operator::In => have.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => have.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => have.is_some(),
                    Operator::DoesNotExist => have.is_none(),
                }
            })
    }
}

// ---- quantities ----

/// A Kubernetes quantity (`500m`, `1`, `2Gi`, `1e3`, `100M`, `0.5`) in thousandths of its unit,
/// exactly, rounded up as Kubernetes' `MilliValue` does.
pub fn parse_quantity(s: &str) -> Result<i128, String> {
    let bad = || format!("{s:?} is not a Kubernetes quantity");
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return Err(bad());
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(format!("{s:?} is too large a quantity"));
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad())? };
    let (ten, two): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
            let exp = &e[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse::<i32>().ok().filter(|x| x.abs() <= 40).ok_or_else(bad)?, 0)
        }
        _ => return Err(bad()),
    };
    // value = mantissa * 10^(ten - fraction digits) * 2^two, in thousandths.
    let scale = ten + 3 - i32::try_from(fraction.len()).map_err(|_| bad())?;
    let too_large = || format!("{s:?} is too large a quantity");
    let scaled = mantissa.checked_mul(1i128 << two).ok_or_else(too_large)?;
    let milli = if scale >= 0 {
        scaled.checked_mul(10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?).ok_or_else(too_large)?
    } else {
        let divisor = 10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?;
        scaled.div_euclid(divisor) + i128::from(scaled.rem_euclid(divisor) != 0)
    };
    Ok(if negative { -milli } else { milli })
}

/// A quantity as JSON (the API server sends strings; a chart may write `cpu: 1`).
pub fn quantity(v: &Value) -> Result<i128, String> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        other => Err(format!("{other} is not a Kubernetes quantity")),
    }
}

/// Thousandths back to a readable quantity: `500m`, `1`, `2Gi` for byte resources.
pub fn show_quantity(resource: &str, milli: i128) -> String {
    let milli = milli.max(0);
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let n = milli / 1000;
    let bytes = resource == "memory" || resource == "ephemeral-storage" || resource.starts_with("hugepages-");
    if bytes && n > 0 {
        for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if n % (1i128 << shift) == 0 {
                return format!("{}{suffix}", n >> shift);
            }
        }
    }
    n.to_string()
}

// ---- workloads and their pods ----

/// The kinds that roll out pods (all `apps/v1`): what drains, probes and the rollout watch follow.
pub const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

/// The kind of an `apps/v1` Deployment, StatefulSet or DaemonSet; `None` for anything else.
pub fn workload_kind(object: &Value) -> Option<&str> {
    if object["apiVersion"] != "apps/v1" {
        return None;
    }
    object["kind"].as_str().filter(|k| WORKLOAD_KINDS.contains(k))
}

/// Whether `object` is an `apps/v1` Deployment, StatefulSet or DaemonSet.
pub fn is_workload(object: &Value) -> bool {
    workload_kind(object).is_some()
}

pub fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object().into_iter().flatten().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect()
}

/// The workload's selector; its template's labels when it has none.
pub fn selector_of(workload: &Value) -> LabelSelector {
    serde_json::from_value(workload["spec"]["selector"].clone()).unwrap_or_else(|_| LabelSelector {
        match_labels: labels_of(&workload["spec"]["template"]["metadata"]["labels"]),
        match_expressions: Vec::new(),
    })
}

/// Whether `pod` is one of `workload`'s: same namespace, labels match its selector.
pub fn owns(workload: &Value, selector: &LabelSelector, pod: &Value) -> bool {
    let ns = workload["metadata"]["namespace"].as_str();
    ns.is_some()
        && pod["metadata"]["namespace"].as_str() == ns
        && selector.matches(&labels_of(&pod["metadata"]["labels"]))
}

/// The pods of `workload`'s current revision: for a Deployment those of its ReplicaSet with the
/// same `deployment.kubernetes.io/revision`, for a StatefulSet those labelled with its
/// `updateRevision`, for a DaemonSet all of its pods. Terminating pods never count: during a
/// rollback the failed revision's pods crash until they are gone, and must not fail it again.
pub fn current_pods<'a>(workload: &Value, replica_sets: &'a [Value], pods: &'a [Value]) -> Vec<&'a Value> {
    let ns = workload["metadata"]["namespace"].as_str();
    let Ok(selector) = serde_json::from_value::<LabelSelector>(workload["spec"]["selector"].clone()) else {
        return Vec::new();
    };
    let labels = |o: &Value, k: &str| o["metadata"]["labels"][k].as_str().map(str::to_owned);
    let revision_label: Option<(&str, String)> = match workload["kind"].as_str() {
        Some("Deployment") => {
            let uid = &workload["metadata"]["uid"];
            let revision = &workload["metadata"]["annotations"]["deployment.kubernetes.io/revision"];
            let current = replica_sets.iter().find(|rs| {
                rs["metadata"]["namespace"].as_str() == ns
                    && !revision.is_null()
                    && rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == *revision
                    && rs["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|r| r["uid"] == *uid))
            });
            match current.and_then(|rs| labels(rs, "pod-template-hash")) {
                Some(h) => Some(("pod-template-hash", h)),
                None => return Vec::new(),
            }
        }
        Some("StatefulSet") => match workload["status"]["updateRevision"].as_str() {
            Some(r) => Some(("controller-revision-hash", r.to_owned())),
            None => return Vec::new(),
        },
        _ => None,
    };
    pods.iter()
        .filter(|p| p["metadata"]["namespace"].as_str() == ns && p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            let l: BTreeMap<String, String> =
                serde_json::from_value(p["metadata"]["labels"].clone()).unwrap_or_default();
            selector.matches(&l) && revision_label.as_ref().is_none_or(|(k, v)| l.get(*k) == Some(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_saphyr::from_str(yaml).expect(yaml)
    }

    #[test]
    fn label_selectors_follow_kubernetes_semantics() {
        let node = labels(&[("store", "store1"), ("env", "qa")]);
        let table: &[(&str, bool)] = &[
            ("{}", true),
            ("matchLabels: {store: store1}", true),
            ("matchLabels: {store: store1, env: prod}", false),
            ("matchExpressions: [{key: env, operator: In, values: [qa, prod]}]", true),
            ("matchExpressions: [{key: env, operator: In, values: [prod]}]", false),
            ("matchExpressions: [{key: env, operator: NotIn, values: [prod]}]", true),
            ("matchExpressions: [{key: region, operator: NotIn, values: [eu]}]", true),
            ("matchExpressions: [{key: store, operator: Exists}]", true),
            ("matchExpressions: [{key: region, operator: Exists}]", false),
            ("matchExpressions: [{key: region, operator: DoesNotExist}]", true),
            ("{matchLabels: {env: qa}, matchExpressions: [{key: store, operator: DoesNotExist}]}", false),
        ];
        for (yaml, want) in table {
            assert_eq!(selector(yaml).matches(&node), *want, "{yaml}");
        }
    }

    #[test]
    fn quantities_parse_exactly_to_thousandths() {
        let table: &[(&str, Result<i128, ()>)] = &[
            ("500m", Ok(500)),
            ("1", Ok(1000)),
            ("0.5", Ok(500)),
            (".5", Ok(500)),
            ("2Gi", Ok(2 * (1 << 30) * 1000)),
            ("1Ki", Ok(1_024_000)),
            ("1e3", Ok(1_000_000)),
            ("1E3", Ok(1_000_000)),
            ("1e-3", Ok(1)),
            ("100M", Ok(100_000_000_000)),
            ("1k", Ok(1_000_000)),
            ("1E", Ok(1_000_000_000_000_000_000_000)),
            ("1n", Ok(1)), // rounded up, as Kubernetes' MilliValue
            ("1500u", Ok(2)),
            ("0", Ok(0)),
            ("-1", Ok(-1000)),
            ("+2", Ok(2000)),
            ("1.5Gi", Ok(1_610_612_736_000)),
            ("", Err(())),
            ("abc", Err(())),
            ("1.2.3", Err(())),
            ("1Gb", Err(())),
            ("1e", Err(())),
            ("1 Gi", Err(())),
            ("m", Err(())),
            ("1e99", Err(())),
        ];
        for (s, want) in table {
            assert_eq!(parse_quantity(s).map_err(|_| ()), *want, "{s:?}");
        }
        assert_eq!(quantity(&json!(2)), Ok(2000), "a chart may write a number");
        assert_eq!(quantity(&json!(0.25)), Ok(250));
        let shown: Vec<String> =
            [("cpu", 500), ("cpu", 2000), ("memory", 2 * (1 << 30) * 1000), ("nvidia.com/gpu", 0), ("memory", 1500)]
                .iter()
                .map(|(r, m)| show_quantity(r, *m))
                .collect();
        assert_eq!(shown, ["500m", "2", "2Gi", "0", "1500m"]);
    }

    #[test]
    fn statefulset_pods_count_by_update_revision() {
        let sts = json!({"kind": "StatefulSet", "metadata": {"name": "db", "namespace": "ns", "generation": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "db"}}},
            "status": {"observedGeneration": 1, "updateRevision": "db-2", "currentRevision": "db-1", "replicas": 1}});
        let p = |rev: &str| {
            json!({"metadata": {"name": "db-0", "namespace": "ns", "labels": {"app": "db", "controller-revision-hash": rev}},
                "status": {"containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "m"}}}]}})
        };
        let (a, b) = ([p("db-1")], [p("db-2")]);
        assert_eq!(current_pods(&sts, &[], &a).len(), 0);
        assert_eq!(current_pods(&sts, &[], &b).len(), 1);
    }
}
