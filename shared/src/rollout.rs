//! When a workload's rollout is finished, still going, or failed: kubectl's `rollout status`
//! rules for Deployment, StatefulSet and DaemonSet, and the pod states that fail a rollout at once
//! instead of at its deadline. Pure: objects come in as the JSON the API server sent.
//!
//! Unlike kube-runtime's `is_deployment_completed`, every rule first requires that the controller
//! has observed the latest spec (`status.observedGeneration >= metadata.generation`); without
//! that, the status right after a patch still describes the previous rollout.

use serde::Serialize;
use serde_json::Value;

/// Where a workload's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "message", rename_all = "camelCase")]
pub enum Rollout {
    /// Still going; the message says what it waits for (kubectl's wording).
    Progressing(String),
    Complete(String),
    /// Will not finish by itself (the progress deadline passed).
    Failed(String),
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The rollout state of a Deployment, StatefulSet or DaemonSet; `None` for other kinds (they are
/// done once applied).
pub fn workload(object: &Value) -> Option<Rollout> {
    let kind = object["kind"].as_str()?;
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    let generation = int(&object["metadata"]["generation"]);
    let status = &object["status"];
    let observed = int(&status["observedGeneration"]);
    let spec_replicas = object["spec"]["replicas"].as_i64();
    Some(match kind {
        "Deployment" => {
            if generation > observed {
                return Some(Rollout::Progressing("waiting for the deployment spec update to be observed".into()));
            }
            let deadline_passed = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
            let (updated, replicas, available) =
                (int(&status["updatedReplicas"]), int(&status["replicas"]), int(&status["availableReplicas"]));
            if deadline_passed {
                Rollout::Failed(format!("deployment {name:?} exceeded its progress deadline"))
            } else if let Some(want) = spec_replicas.filter(|w| updated < *w) {
                Rollout::Progressing(format!("{updated} out of {want} new replicas have been updated"))
            } else if replicas > updated {
                Rollout::Progressing(format!("{} old replicas are pending termination", replicas - updated))
            } else if available < updated {
                Rollout::Progressing(format!("{available} of {updated} updated replicas are available"))
            } else {
                Rollout::Complete(format!("deployment {name:?} successfully rolled out"))
            }
        }
        "StatefulSet" => {
            let strategy = &object["spec"]["updateStrategy"];
            if strategy["type"].as_str().is_some_and(|t| t != "RollingUpdate") {
                return Some(Rollout::Complete(format!(
                    "statefulset {name:?} updates its pods only when they are deleted ({})",
                    strategy["type"].as_str().unwrap_or_default()
                )));
            }
            if observed == 0 || generation > observed {
                return Some(Rollout::Progressing("waiting for the statefulset spec update to be observed".into()));
            }
            let ready = int(&status["readyReplicas"]);
            if let Some(want) = spec_replicas.filter(|w| ready < *w) {
                return Some(Rollout::Progressing(format!("waiting for {} pods to be ready", want - ready)));
            }
            let updated = int(&status["updatedReplicas"]);
            if strategy["rollingUpdate"].is_object() {
                let partition = int(&strategy["rollingUpdate"]["partition"]);
                if let Some(want) = spec_replicas.map(|r| r - partition).filter(|w| updated < *w) {
                    return Some(Rollout::Progressing(format!(
                        "partitioned roll out: {updated} out of {want} new pods have been updated"
                    )));
                }
                return Some(Rollout::Complete(format!(
                    "partitioned roll out complete: {updated} new pods have been updated"
                )));
            }
            let (current, update) = (status["currentRevision"].as_str(), status["updateRevision"].as_str());
            if update != current {
                Rollout::Progressing(format!("rolling update: {updated} pods at revision {}", update.unwrap_or("?")))
            } else {
                Rollout::Complete(format!("statefulset rolling update complete at revision {}", current.unwrap_or("?")))
            }
        }
        "DaemonSet" => {
            let strategy = object["spec"]["updateStrategy"]["type"].as_str();
            if strategy.is_some_and(|t| t != "RollingUpdate") {
                return Some(Rollout::Complete(format!(
                    "daemon set {name:?} updates its pods only when they are deleted ({})",
                    strategy.unwrap_or_default()
                )));
            }
            if generation > observed {
                return Some(Rollout::Progressing("waiting for the daemon set spec update to be observed".into()));
            }
            let desired = int(&status["desiredNumberScheduled"]);
            let updated = int(&status["updatedNumberScheduled"]);
            let available = int(&status["numberAvailable"]);
            if updated < desired {
                Rollout::Progressing(format!("{updated} out of {desired} new pods have been updated"))
            } else if available < desired {
                Rollout::Progressing(format!("{available} of {desired} updated pods are available"))
            } else {
                Rollout::Complete(format!("daemon set {name:?} successfully rolled out"))
            }
        }
        _ => return None,
    })
}

/// Why a pod will not become ready by waiting, from a container's waiting reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodFailure {
    pub pod: String,
    pub container: String,
    pub reason: String,
    pub message: String,
    /// The image could not be pulled: after a successful preflight this may pass (registry
    /// hiccup), so it is retried with backoff rather than quarantined for good.
    pub image_pull: bool,
}

/// Waiting reasons that do not go away by themselves.
const FATAL_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The first container (init containers first) of `pod` stuck in a fatal waiting state.
pub fn pod_failure(pod: &Value) -> Option<PodFailure> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|f| pod["status"][*f].as_array().into_iter().flatten())
        .find_map(|c| {
            let waiting = &c["state"]["waiting"];
            let reason = waiting["reason"].as_str()?;
            FATAL_REASONS.contains(&reason).then(|| PodFailure {
                pod: name.to_owned(),
                container: c["name"].as_str().unwrap_or("?").to_owned(),
                reason: reason.to_owned(),
                message: waiting["message"].as_str().unwrap_or_default().to_owned(),
                image_pull: matches!(reason, "ErrImagePull" | "ImagePullBackOff"),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each row: the object, its expected state and kubectl-worded message.
    fn check(table: &[(Value, &str, &str)]) {
        for (object, want_state, want_message) in table {
            let (s, m) = state(workload(object));
            assert_eq!((s, m.as_str()), (*want_state, *want_message), "{object}");
        }
    }

    fn deploy(generation: i64, spec: i64, status: Value) -> Value {
        json!({"kind": "Deployment", "metadata": {"name": "web", "generation": generation}, "spec": {"replicas": spec}, "status": status})
    }

    fn state(r: Option<Rollout>) -> (&'static str, String) {
        match r.expect("a workload") {
            Rollout::Progressing(m) => ("progressing", m),
            Rollout::Complete(m) => ("complete", m),
            Rollout::Failed(m) => ("failed", m),
        }
    }

    #[test]
    fn deployments_follow_kubectl() {
        let deadline = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        // (object, state, message)
        let table: &[(Value, &str, &str)] = &[
            // A patched spec whose status still shows the old, finished rollout: not done.
            (
                deploy(
                    3,
                    1,
                    json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
                ),
                "progressing",
                "waiting for the deployment spec update to be observed",
            ),
            (
                deploy(
                    3,
                    2,
                    json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}),
                ),
                "progressing",
                "1 out of 2 new replicas have been updated",
            ),
            (
                deploy(
                    3,
                    1,
                    json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}),
                ),
                "progressing",
                "1 old replicas are pending termination",
            ),
            (
                deploy(
                    3,
                    1,
                    json!({"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0}),
                ),
                "progressing",
                "0 of 1 updated replicas are available",
            ),
            (
                deploy(
                    3,
                    1,
                    json!({"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
                ),
                "complete",
                "deployment \"web\" successfully rolled out",
            ),
            (
                deploy(
                    3,
                    1,
                    json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "conditions": deadline}),
                ),
                "failed",
                "deployment \"web\" exceeded its progress deadline",
            ),
            (deploy(1, 0, json!({"observedGeneration": 1})), "complete", "deployment \"web\" successfully rolled out"),
        ];
        check(table);
    }

    fn sts(generation: i64, strategy: Value, status: Value) -> Value {
        json!({"kind": "StatefulSet", "metadata": {"name": "db", "generation": generation}, "spec": {"replicas": 3, "updateStrategy": strategy}, "status": status})
    }

    #[test]
    fn statefulsets_follow_kubectl_including_partitions() {
        let rolling = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
        let partitioned = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        let bare = json!({"type": "RollingUpdate"});
        let table: &[(Value, &str, &str)] = &[
            (
                sts(2, rolling.clone(), json!({"observedGeneration": 0})),
                "progressing",
                "waiting for the statefulset spec update to be observed",
            ),
            (
                sts(2, rolling.clone(), json!({"observedGeneration": 2, "readyReplicas": 1})),
                "progressing",
                "waiting for 2 pods to be ready",
            ),
            (
                sts(2, rolling.clone(), json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 2})),
                "progressing",
                "partitioned roll out: 2 out of 3 new pods have been updated",
            ),
            (
                sts(2, rolling, json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3})),
                "complete",
                "partitioned roll out complete: 3 new pods have been updated",
            ),
            (
                sts(2, partitioned, json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1})),
                "complete",
                "partitioned roll out complete: 1 new pods have been updated",
            ),
            (
                sts(
                    2,
                    bare.clone(),
                    json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1, "currentRevision": "db-1", "updateRevision": "db-2"}),
                ),
                "progressing",
                "rolling update: 1 pods at revision db-2",
            ),
            (
                sts(
                    2,
                    bare,
                    json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3, "currentRevision": "db-2", "updateRevision": "db-2"}),
                ),
                "complete",
                "statefulset rolling update complete at revision db-2",
            ),
            (
                sts(2, json!({"type": "OnDelete"}), json!({})),
                "complete",
                "statefulset \"db\" updates its pods only when they are deleted (OnDelete)",
            ),
        ];
        check(table);
    }

    #[test]
    fn daemonsets_follow_kubectl() {
        let ds = |generation: i64, status: Value| json!({"kind": "DaemonSet", "metadata": {"name": "agent", "generation": generation}, "spec": {"updateStrategy": {"type": "RollingUpdate"}}, "status": status});
        let table: &[(Value, &str, &str)] = &[
            (
                ds(2, json!({"observedGeneration": 1})),
                "progressing",
                "waiting for the daemon set spec update to be observed",
            ),
            (
                ds(2, json!({"observedGeneration": 2, "desiredNumberScheduled": 2, "updatedNumberScheduled": 1})),
                "progressing",
                "1 out of 2 new pods have been updated",
            ),
            (
                ds(
                    2,
                    json!({"observedGeneration": 2, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1}),
                ),
                "progressing",
                "1 of 2 updated pods are available",
            ),
            (
                ds(
                    2,
                    json!({"observedGeneration": 2, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2}),
                ),
                "complete",
                "daemon set \"agent\" successfully rolled out",
            ),
        ];
        check(table);
        assert_eq!(workload(&json!({"kind": "ConfigMap", "metadata": {"name": "x"}})), None);
    }

    fn pod(init: Value, containers: Value) -> Value {
        json!({"metadata": {"name": "web-1"}, "status": {"initContainerStatuses": init, "containerStatuses": containers}})
    }

    fn waiting(name: &str, reason: &str) -> Value {
        json!({"name": name, "state": {"waiting": {"reason": reason, "message": format!("{reason} happened")}}})
    }

    #[test]
    fn fatal_pod_states_fail_fast_and_image_pulls_are_told_apart() {
        /// The failing container, its reason, and whether it is an image pull.
        type Failing = Option<(&'static str, &'static str, bool)>;
        let table: &[(Value, Failing)] = &[
            (pod(json!([]), json!([waiting("web", "ContainerCreating")])), None),
            (pod(json!([]), json!([{"name": "web", "state": {"running": {}}}])), None),
            (pod(json!([]), json!([waiting("web", "CrashLoopBackOff")])), Some(("web", "CrashLoopBackOff", false))),
            (pod(json!([]), json!([waiting("web", "ImagePullBackOff")])), Some(("web", "ImagePullBackOff", true))),
            (pod(json!([]), json!([waiting("web", "ErrImagePull")])), Some(("web", "ErrImagePull", true))),
            (pod(json!([]), json!([waiting("web", "InvalidImageName")])), Some(("web", "InvalidImageName", false))),
            (
                pod(json!([]), json!([waiting("web", "CreateContainerConfigError")])),
                Some(("web", "CreateContainerConfigError", false)),
            ),
            // Init containers first, as they run.
            (
                pod(json!([waiting("init", "CrashLoopBackOff")]), json!([waiting("web", "ImagePullBackOff")])),
                Some(("init", "CrashLoopBackOff", false)),
            ),
            (json!({"metadata": {"name": "p"}, "status": {}}), None),
        ];
        for (p, want) in table {
            let got = pod_failure(p).map(|f| (f.container, f.reason, f.image_pull));
            let want = want.map(|(c, r, i)| (c.to_owned(), r.to_owned(), i));
            assert_eq!(got, want, "{p}");
        }
        let f = pod_failure(&pod(json!([]), json!([waiting("web", "ErrImagePull")]))).unwrap();
        assert_eq!((f.pod.as_str(), f.message.as_str()), ("web-1", "ErrImagePull happened"));
    }
}
