//! When a workload's rollout is finished, still going, or failed: kubectl's `rollout status`
//! rules for Deployment, StatefulSet and DaemonSet, and the pod states that fail a rollout at once
//! instead of at its deadline. Pure: objects come in as the JSON the API server sent.
//!
//! Unlike kube-runtime's `is_deployment_completed`, every rule first requires that the controller
//! has observed the latest spec (`status.observedGeneration >= metadata.generation`); without
//! that, the status right after a patch still describes the previous rollout.

use serde::Serialize;
use serde_json::Value;

use crate::duration::HumanDuration;
use crate::k8s::{Pod, Workload, current_pods};

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

/// A count the controller has not written yet reads as 0, as kubectl reads it.
fn int(v: Option<i64>) -> i64 {
    v.unwrap_or(0)
}

/// The rollout state of a Deployment, StatefulSet or DaemonSet; `None` for other kinds (they are
/// done once applied).
pub fn workload(object: &Value) -> Option<Rollout> {
    let w = Workload::view(object);
    let kind = w.kind.as_deref()?;
    let name = w.metadata.name.as_deref().unwrap_or("?");
    let generation = int(w.metadata.generation);
    let status = &w.status;
    let observed = int(status.observed_generation);
    let spec_replicas = w.spec.replicas;
    Some(match kind {
        "Deployment" => {
            if generation > observed {
                return Some(Rollout::Progressing("waiting for the deployment spec update to be observed".into()));
            }
            let deadline_passed = status.conditions.iter().any(|c| {
                c.kind.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            });
            let (updated, replicas, available) =
                (int(status.updated_replicas), int(status.replicas), int(status.available_replicas));
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
            let strategy = &w.spec.update_strategy;
            if let Some(t) = strategy.kind.as_deref().filter(|t| *t != "RollingUpdate") {
                return Some(Rollout::Complete(format!(
                    "statefulset {name:?} updates its pods only when they are deleted ({t})"
                )));
            }
            if observed == 0 || generation > observed {
                return Some(Rollout::Progressing("waiting for the statefulset spec update to be observed".into()));
            }
            let ready = int(status.ready_replicas);
            if let Some(want) = spec_replicas.filter(|w| ready < *w) {
                return Some(Rollout::Progressing(format!("waiting for {} pods to be ready", want - ready)));
            }
            let updated = int(status.updated_replicas);
            if let Some(rolling) = &strategy.rolling_update {
                let partition = int(rolling.partition);
                if let Some(want) = spec_replicas.map(|r| r - partition).filter(|w| updated < *w) {
                    return Some(Rollout::Progressing(format!(
                        "partitioned roll out: {updated} out of {want} new pods have been updated"
                    )));
                }
                return Some(Rollout::Complete(format!(
                    "partitioned roll out complete: {updated} new pods have been updated"
                )));
            }
            let (current, update) = (status.current_revision.as_deref(), status.update_revision.as_deref());
            if update != current {
                Rollout::Progressing(format!("rolling update: {updated} pods at revision {}", update.unwrap_or("?")))
            } else {
                Rollout::Complete(format!("statefulset rolling update complete at revision {}", current.unwrap_or("?")))
            }
        }
        "DaemonSet" => {
            if let Some(t) = w.spec.update_strategy.kind.as_deref().filter(|t| *t != "RollingUpdate") {
                return Some(Rollout::Complete(format!(
                    "daemon set {name:?} updates its pods only when they are deleted ({t})"
                )));
            }
            if generation > observed {
                return Some(Rollout::Progressing("waiting for the daemon set spec update to be observed".into()));
            }
            let desired = int(status.desired_number_scheduled);
            let updated = int(status.updated_number_scheduled);
            let available = int(status.number_available);
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
    let pod = Pod::view(pod);
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    pod.status.init_container_statuses.iter().chain(&pod.status.container_statuses).find_map(|c| {
        let waiting = c.state.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FATAL_REASONS.contains(&reason).then(|| PodFailure {
            pod: name.to_owned(),
            container: c.name.as_deref().unwrap_or("?").to_owned(),
            reason: reason.to_owned(),
            message: waiting.message.clone().unwrap_or_default(),
            image_pull: matches!(reason, "ErrImagePull" | "ImagePullBackOff"),
        })
    })
}

/// What the rollout watch concludes from one look at the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not there yet; says what is awaited.
    Waiting(String),
    Healthy,
    Failed {
        reason: String,
        /// Only image pulls failed (see [`PodFailure::image_pull`]).
        image_pull: bool,
    },
}

/// What the watch saw: each desired workload (id and live object, `None` when not seen yet), and
/// the ReplicaSets and pods of their namespaces.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub workloads: &'a [(String, Option<Value>)],
    pub replica_sets: &'a [Value],
    pub pods: &'a [Value],
}

/// Healthy when every workload completed its rollout (kubectl's rules); failed at once when a pod
/// of the workload's current revision is stuck (CrashLoopBackOff, image pull, config error) or a
/// Deployment exceeded its own progress deadline.
pub fn judge(seen: Seen<'_>) -> Verdict {
    let mut waiting = Vec::new();
    let mut pull_failures = Vec::new();
    for (id, live) in seen.workloads {
        let Some(live) = live else {
            waiting.push(format!("{id}: not seen yet"));
            continue;
        };
        // Until the controller has observed the applied spec, the revision it names is the old
        // one: right after a rollback is applied, the failed revision's pods still look current
        // and crash. Pods are judged only once the spec is observed.
        let view = Workload::view(live);
        let observed = match (view.metadata.generation, view.status.observed_generation) {
            (Some(generation), Some(seen)) => seen >= generation,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let pods = if observed { current_pods(live, seen.replica_sets, seen.pods) } else { Vec::new() };
        for pod in pods {
            if let Some(f) = pod_failure(pod) {
                let reason = format!(
                    "{id}: pod {} container {}: {}{}",
                    f.pod,
                    f.container,
                    f.reason,
                    if f.message.is_empty() { String::new() } else { format!(" ({})", f.message) }
                );
                if !f.image_pull {
                    return Verdict::Failed { reason, image_pull: false };
                }
                pull_failures.push(reason);
            }
        }
        match workload(live) {
            Some(Rollout::Failed(m)) => return Verdict::Failed { reason: format!("{id}: {m}"), image_pull: false },
            Some(Rollout::Progressing(m)) => waiting.push(format!("{id}: {m}")),
            Some(Rollout::Complete(_)) | None => {}
        }
    }
    if !pull_failures.is_empty() {
        return Verdict::Failed { reason: pull_failures.join("; "), image_pull: true };
    }
    if waiting.is_empty() { Verdict::Healthy } else { Verdict::Waiting(waiting.join("; ")) }
}

/// Where a watched rollout goes after one verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep watching; wake up by `wake_at` at the latest (deadline or end of verification).
    Continue {
        healthy_since: Option<i64>,
        wake_at: i64,
    },
    /// Healthy for the whole verification window.
    Done,
    Failed {
        reason: String,
        image_pull: bool,
    },
}

/// How one rollout is watched: durations in seconds, and the health probes of its verification
/// window. Persisted with the rollout, so a restarted agent judges it as the interrupted one did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// From the first apply to healthy.
    pub progress_deadline: i64,
    /// Healthy, and staying so, for this long before it counts.
    pub verify_window: i64,
    /// HTTP probes that must stay green during the verification window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::probe::Probe>,
    /// The drain plans of the rollout (`shared::drain`), persisted so a restarted agent tracks the
    /// drain as the interrupted one did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<crate::drain::Plan>,
}

impl Limits {
    /// For watching a rollback or an adoption: Kubernetes health only, at once. The probes judged
    /// the revision that failed; what was last known good is restored as fast as it can be, so a
    /// rollback is not drained either.
    pub fn health_only(&self) -> Limits {
        Limits { progress_deadline: self.progress_deadline, verify_window: 0, probes: Vec::new(), drains: Vec::new() }
    }
}

impl Limits {
    /// A bundle's limits: its policy's durations and probes over the node's defaults. Errors name
    /// the `fleet.yaml` field.
    pub fn for_bundle(policy: &crate::fleet::BundlePolicy, defaults: &Limits) -> Result<Limits, String> {
        let secs = |v: Option<HumanDuration>, default: i64| v.map_or(default, HumanDuration::secs);
        let probes = policy
            .health_probes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                crate::probe::Probe::compile(p)
                    .map_err(|e| format!("fleet.yaml: {}", e.under(&format!("gitopsAgent.healthProbes[{i}]"))))
            })
            .collect::<Result<_, _>>()?;
        Ok(Limits {
            progress_deadline: secs(policy.progress_deadline, defaults.progress_deadline),
            verify_window: secs(policy.verify_window, defaults.verify_window),
            probes,
            // Drains are planned when the bundle's manifests are shaped (`drain::shape`).
            drains: Vec::new(),
        })
    }
}

/// The rollout watch as a state machine: `healthy_since` is the state, `now` the clock, `probes`
/// what the health probes say (`Green` when there are none). A failure during verification,
/// Kubernetes' or a probe's, fails the rollout; a blip back to waiting restarts the window; the
/// window ends only on green probes.
pub fn step(
    verdict: &Verdict,
    probes: &crate::probe::Health,
    started: i64,
    healthy_since: Option<i64>,
    limits: &Limits,
    now: i64,
) -> Step {
    use crate::probe::Health;
    let deadline = started + limits.progress_deadline;
    match verdict {
        Verdict::Failed { reason, image_pull } => Step::Failed { reason: reason.clone(), image_pull: *image_pull },
        Verdict::Healthy => {
            if let Health::Red(why) = probes {
                return Step::Failed { reason: why.clone(), image_pull: false };
            }
            let since = healthy_since.unwrap_or(now);
            let end = since + limits.verify_window;
            match probes {
                Health::Green if now >= end => Step::Done,
                // Past the window with a probe undecided: the next answer decides (the caller
                // wakes for it), so no deadline is needed: it turns green or red.
                _ => Step::Continue { healthy_since: Some(since), wake_at: end.max(now) },
            }
        }
        Verdict::Waiting(what) if now >= deadline => Step::Failed {
            reason: format!("not healthy within the progress deadline of {}s: {what}", limits.progress_deadline),
            image_pull: false,
        },
        Verdict::Waiting(_) => Step::Continue { healthy_since: None, wake_at: deadline },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Health;
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

    fn labelled_pod(name: &str, labels: Value, waiting: Option<&str>, terminating: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}, "status": {}});
        if let Some(r) = waiting {
            p["status"]["containerStatuses"] =
                json!([{"name": "web", "state": {"waiting": {"reason": r, "message": "m"}}}]);
        }
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    fn live_deploy(revision: &str, done: bool) -> Value {
        let (updated, available) = if done { (1, 1) } else { (1, 0) };
        json!({"kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "generation": 2,
                         "annotations": {"deployment.kubernetes.io/revision": revision}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": updated, "availableReplicas": available}})
    }

    fn rs(revision: &str, hash: &str) -> Value {
        json!({"metadata": {"name": format!("web-{hash}"), "namespace": "ns",
            "labels": {"pod-template-hash": hash},
            "annotations": {"deployment.kubernetes.io/revision": revision},
            "ownerReferences": [{"uid": "u1"}]}})
    }

    fn verdict(workload: Option<Value>, pods: &[Value]) -> Verdict {
        let workloads = [("Deployment/ns/web".to_owned(), workload)];
        let sets = [rs("1", "old"), rs("2", "new")];
        judge(Seen { workloads: &workloads, replica_sets: &sets, pods })
    }

    #[test]
    fn judge_fails_fast_on_current_pods_only() {
        let crash = |hash: &str, terminating| {
            labelled_pod(
                "web-x",
                json!({"app": "web", "pod-template-hash": hash}),
                Some("CrashLoopBackOff"),
                terminating,
            )
        };
        let pull =
            labelled_pod("web-y", json!({"app": "web", "pod-template-hash": "new"}), Some("ImagePullBackOff"), false);
        let other_app =
            labelled_pod("db-0", json!({"app": "db", "pod-template-hash": "new"}), Some("CrashLoopBackOff"), false);
        let cases: Vec<(&str, Option<Value>, Vec<Value>, Verdict)> = vec![
            ("not seen", None, vec![], Verdict::Waiting("Deployment/ns/web: not seen yet".into())),
            ("complete", Some(live_deploy("2", true)), vec![], Verdict::Healthy),
            (
                "new pod crashes",
                Some(live_deploy("2", false)),
                vec![crash("new", false)],
                Verdict::Failed {
                    reason: "Deployment/ns/web: pod web-x container web: CrashLoopBackOff (m)".into(),
                    image_pull: false,
                },
            ),
            // Rolling back: the failed revision's pods still crash, they are not the current ones.
            ("old pod crashes", Some(live_deploy("2", true)), vec![crash("old", false)], Verdict::Healthy),
            ("terminating pod crashes", Some(live_deploy("2", true)), vec![crash("new", true)], Verdict::Healthy),
            ("another app's pod", Some(live_deploy("2", true)), vec![other_app], Verdict::Healthy),
            (
                "image pull",
                Some(live_deploy("2", false)),
                vec![pull],
                Verdict::Failed {
                    reason: "Deployment/ns/web: pod web-y container web: ImagePullBackOff (m)".into(),
                    image_pull: true,
                },
            ),
            (
                "spec not observed yet: the revision named is the previous one",
                Some({
                    let mut d = live_deploy("2", false);
                    d["metadata"]["generation"] = json!(3);
                    d
                }),
                vec![crash("new", false)],
                Verdict::Waiting("Deployment/ns/web: waiting for the deployment spec update to be observed".into()),
            ),
            (
                "no ReplicaSet of this revision yet",
                Some(live_deploy("3", false)),
                vec![crash("new", false)],
                Verdict::Waiting("Deployment/ns/web: 0 of 1 updated replicas are available".into()),
            ),
        ];
        for (name, w, pods, want) in cases {
            assert_eq!(verdict(w, &pods), want, "{name}");
        }
    }

    #[test]
    fn step_waits_verifies_and_meets_the_deadline() {
        let limits = Limits { progress_deadline: 60, verify_window: 10, probes: Vec::new(), drains: Vec::new() };
        let waiting = Verdict::Waiting("w".into());
        let failed = Verdict::Failed { reason: "crash".into(), image_pull: false };
        // (verdict, healthy_since, now, expected)
        let cases = [
            (&waiting, None, 5, Step::Continue { healthy_since: None, wake_at: 60 }),
            (
                &waiting,
                None,
                60,
                Step::Failed { reason: "not healthy within the progress deadline of 60s: w".into(), image_pull: false },
            ),
            (&Verdict::Healthy, None, 20, Step::Continue { healthy_since: Some(20), wake_at: 30 }),
            (&Verdict::Healthy, Some(20), 29, Step::Continue { healthy_since: Some(20), wake_at: 30 }),
            (&Verdict::Healthy, Some(20), 30, Step::Done),
            // Verification may run past the progress deadline: the rollout itself made it in time.
            (&Verdict::Healthy, Some(55), 64, Step::Continue { healthy_since: Some(55), wake_at: 65 }),
            (&waiting, Some(20), 25, Step::Continue { healthy_since: None, wake_at: 60 }),
            (&failed, Some(20), 25, Step::Failed { reason: "crash".into(), image_pull: false }),
        ];
        for (i, (v, since, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(step(v, &Health::Green, 0, since, &limits, now), want, "case {i}");
        }
        let no_verify = Limits { verify_window: 0, ..limits.clone() };
        assert_eq!(step(&Verdict::Healthy, &Health::Green, 0, None, &no_verify, 3), Step::Done);
    }

    #[test]
    fn a_bundle_policy_overrides_the_node_defaults() {
        let defaults = Limits { progress_deadline: 300, verify_window: 0, probes: Vec::new(), drains: Vec::new() };
        let policy: crate::fleet::BundlePolicy = serde_json::from_value(json!({
            "verifyWindow": "30s", "healthProbes": [{"workload": "web", "url": "/health"}]
        }))
        .unwrap();
        let l = Limits::for_bundle(&policy, &defaults).unwrap();
        assert_eq!((l.progress_deadline, l.verify_window, l.probes.len()), (300, 30, 1));
        // A duration is parsed when the policy is read: a bad one never reaches the limits.
        let bad = serde_json::from_value::<crate::fleet::BundlePolicy>(json!({"progressDeadline": "soon"}));
        assert!(bad.expect_err("no duration").to_string().contains("\"soon\" is not a duration"));
        let bad: crate::fleet::BundlePolicy =
            serde_json::from_value(json!({"healthProbes": [{"url": "/health", "interval": "500ms"}]})).unwrap();
        assert_eq!(
            Limits::for_bundle(&bad, &defaults).unwrap_err(),
            "fleet.yaml: gitopsAgent.healthProbes[0].interval: \"500ms\" is under one second"
        );
    }

    #[test]
    fn probes_gate_the_end_of_the_window_and_fail_it_when_red() {
        let limits = Limits { progress_deadline: 60, verify_window: 10, probes: Vec::new(), drains: Vec::new() };
        let pending = Health::Pending("http://p/h: not called yet".into());
        let red = Health::Red("health probe http://p/h failed 3 times in a row: HTTP 503".into());
        let waiting = Verdict::Waiting("w".into());
        // (verdict, probes, healthy_since, now, expected)
        let cases = [
            (&Verdict::Healthy, &pending, None, 20, Step::Continue { healthy_since: Some(20), wake_at: 30 }),
            (&Verdict::Healthy, &Health::Green, Some(20), 25, Step::Continue { healthy_since: Some(20), wake_at: 30 }),
            (&Verdict::Healthy, &Health::Green, Some(20), 30, Step::Done),
            // The window is over but a probe has not answered well yet: wait for it.
            (&Verdict::Healthy, &pending, Some(20), 31, Step::Continue { healthy_since: Some(20), wake_at: 31 }),
            (
                &Verdict::Healthy,
                &red,
                Some(20),
                25,
                Step::Failed {
                    reason: "health probe http://p/h failed 3 times in a row: HTTP 503".into(),
                    image_pull: false,
                },
            ),
            // Probes only judge healthy workloads.
            (&waiting, &red, None, 5, Step::Continue { healthy_since: None, wake_at: 60 }),
        ];
        for (i, (v, probes, since, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(step(v, probes, 0, since, &limits, now), want, "case {i}");
        }
    }
}
