//! Workloads (`apps/v1` Deployment, StatefulSet, DaemonSet) and their pods: which objects are
//! workloads, which pods a workload owns, and which belong to its current revision.

use serde_json::Value;

use super::selector::LabelSelector;
use super::view::{Pod, ReplicaSet, Workload};

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

/// The workload's selector; its template's labels when it has none (or one that does not parse).
pub fn selector_of(workload: &Workload) -> LabelSelector {
    workload.spec.selector.clone().unwrap_or_else(|| LabelSelector {
        match_labels: workload.spec.template.metadata.labels.clone(),
        match_expressions: Vec::new(),
    })
}

/// Whether `pod` is one of `workload`'s: same namespace, labels match its selector.
pub fn owns(workload: &Workload, selector: &LabelSelector, pod: &Pod) -> bool {
    let ns = workload.metadata.namespace.as_deref();
    ns.is_some() && pod.metadata.namespace.as_deref() == ns && selector.matches(&pod.metadata.labels)
}

/// The pods of `workload`'s current revision: for a Deployment those of its ReplicaSet with the
/// same `deployment.kubernetes.io/revision`, for a StatefulSet those labelled with its
/// `updateRevision`, for a DaemonSet all of its pods. Terminating pods never count: during a
/// rollback the failed revision's pods crash until they are gone, and must not fail it again.
pub fn current_pods<'a>(workload: &Value, replica_sets: &'a [Value], pods: &'a [Value]) -> Vec<&'a Value> {
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let w = Workload::view(workload);
    let ns = w.metadata.namespace.as_deref();
    let Some(selector) = &w.spec.selector else {
        return Vec::new();
    };
    let revision_label: Option<(&str, String)> = match w.kind.as_deref() {
        Some("Deployment") => {
            let revision = w.metadata.annotations.get(REVISION);
            let current = replica_sets.iter().map(ReplicaSet::view).find(|rs| {
                rs.metadata.namespace.as_deref() == ns
                    && revision.is_some()
                    && rs.metadata.annotations.get(REVISION) == revision
                    && rs.metadata.owner_references.iter().any(|r| r.uid == w.metadata.uid)
            });
            match current.and_then(|rs| rs.metadata.labels.get("pod-template-hash").cloned()) {
                Some(h) => Some(("pod-template-hash", h)),
                None => return Vec::new(),
            }
        }
        Some("StatefulSet") => match &w.status.update_revision {
            Some(r) => Some(("controller-revision-hash", r.clone())),
            None => return Vec::new(),
        },
        _ => None,
    };
    pods.iter()
        .filter(|p| {
            let pod = Pod::view(p);
            pod.metadata.namespace.as_deref() == ns
                && pod.metadata.deletion_timestamp.is_none()
                && selector.matches(&pod.metadata.labels)
                && revision_label.as_ref().is_none_or(|(k, v)| pod.metadata.labels.get(*k) == Some(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
