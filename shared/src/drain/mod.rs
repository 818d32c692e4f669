//! Drain windows: never cut a live customer session (a kiosk pod holds one WebSocket per
//! conversation) during a rollout. A workload with a drain policy (`gitopsAgent.drainWindow`, or
//! `gitopsAgent.drain[]` per workload) is decided here in four steps; the agent only fetches,
//! applies, calls and keeps the clock.
//!
//! 1. **Shaping** ([`shape`]): before the workload is applied, the fields its drain depends on are
//!    written into the manifest, so they are owned by the agent under server-side apply, are part
//!    of the revision and come back with a rollback: the update strategy, the pod template's
//!    `terminationGracePeriodSeconds` (raised to the window, never lowered) and an optional
//!    `preStop` hook.
//!    - Deployments and DaemonSets surge before they go unavailable (`maxUnavailable: 0`, a
//!      non-zero `maxSurge`): the new pod is ready before the old one is asked to stop.
//!    - That needs room for one more pod. On a one-GPU node where each pod requests
//!      `nvidia.com/gpu: 1`, the surge pod would stay Pending until the progress deadline, so the
//!      fallback is one pod at a time (`maxSurge: 0`, `maxUnavailable: 1`): the old pod drains for
//!      the whole window, and its replacement is scheduled once the old one is gone.
//!    - StatefulSets replace their pods one at a time in place anyway; their strategy is left
//!      alone.
//! 2. **Room** ([`room`]) is an estimate of the scheduler's resource fit, nothing more:
//!    - a pod's request is, per resource, the larger of the sum over its containers (plus
//!      restartable init containers, i.e. sidecars) and the largest init container (plus the
//!      sidecars started before it), plus `spec.overhead` and `pods: 1`; a container's limit
//!      stands in for a missing request, as Kubernetes defaults requests to limits;
//!    - the feasible nodes are those not cordoned (`spec.unschedulable`; DaemonSets ignore it),
//!      whose labels satisfy the template's `nodeSelector` and required node affinity, and whose
//!      `NoSchedule`/`NoExecute` taints the template tolerates (DaemonSets also get the
//!      tolerations their controller adds); capacity is `status.allocatable`;
//!    - a node's use is the requests of the pods bound to it that have not ended (terminating
//!      pods hold their resources until they are gone), except the workload's own pods (same
//!      namespace, labels match its selector): they are replaced by `spec.replicas` (default 1)
//!      steady-state pods placed first-fit over the feasible nodes in name order. So the answer is
//!      the same before and after the first rollout, and does not flip between two reconciles;
//!    - then one more pod must fit on a feasible node (a DaemonSet: a second pod beside its own
//!      on every feasible node). A `hostPort` (or `hostNetwork`) or a required pod anti-affinity
//!      against the workload's own labels allows one of its pods per node (per topology domain).
//!
//!    Not modelled: preferred affinities, pod affinity and anti-affinity towards other
//!    workloads, topology spread constraints, volume limits, priorities and preemption.
//! 3. **Waiting for idle** ([`idle`]): with a session probe and `waitForIdle`, the rollout starts
//!    only once every old pod reports 0 sessions, or once `maxDefer` has passed since the revision
//!    was first deferred. A pod whose sessions cannot be read counts as busy.
//! 4. **Following the drain** ([`terminating`], [`ended`], [`report`], [`progress`]): each old
//!    pod from its deletion until it is gone, and how it ended: drained cleanly, or N sessions
//!    cut when the grace period ended it.
//!
//! One file per job: `policy` (the `fleet.yaml` entries checked and matched), `room`, `shape`
//! (with `describe`), `sessions` (readings), `idle` and `report`; this file holds the types they
//! share. Kubernetes facts (quantities, selectors, workload kinds, pod ownership) are
//! `crate::k8s`'s.

mod idle;
mod policy;
mod report;
mod room;
mod sessions;
mod shape;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::Workload;

pub use idle::{Idle, idle, idle_for, waiting_for_idle};
pub use policy::{
    DrainSpec, HttpGetSpec, PreStopSpec, SessionsSpec, WaitForIdleSpec, check, compile, drain_for, estimates_room,
    unknown_key, unmatched,
};
pub use report::{Ended, PodDrain, Report, ended, progress, report, terminating};
pub use room::room;
pub use sessions::{read_sessions, session_url};
pub use shape::{describe, shape};

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: i64 = 30;
/// Between two session readings of one pod, by default.
const DEFAULT_INTERVAL: i64 = 5;
/// Of one session reading, by default.
const DEFAULT_TIMEOUT: i64 = 2;

/// How old pods are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Replace {
    /// Surge when the estimate ([`room`]) finds room for one more pod, else one at a time.
    #[default]
    Auto,
    Surge,
    OneAtATime,
}

// ---- compiled ----

/// A checked drain policy: durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub workload: Option<String>,
    pub window: i64,
    pub replace: Replace,
    pub pre_stop: Option<PreStop>,
    pub sessions: Option<SessionProbe>,
    pub max_defer: Option<i64>,
}

/// The `preStop` hook written into the pod template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PreStop {
    HttpGet { path: String, port: Value, container: Option<String> },
    Sleep { seconds: i64, container: Option<String> },
}

/// A checked session probe: the URL template in full, durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionProbe {
    pub url: String,
    pub read: Read,
    pub interval: i64,
    pub timeout: i64,
}

/// How sessions are read from a probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Read {
    Gauge(String),
    JsonPointer(String),
}

/// The index of the container named `name` in a workload's pod template, or of the first one.
fn container_index(object: &Value, name: Option<&str>) -> Option<usize> {
    let containers = Workload::view(object).spec.template.spec.containers;
    match name {
        None => (!containers.is_empty()).then_some(0),
        Some(n) => containers.iter().position(|c| c.name.as_deref() == Some(n)),
    }
}

// ---- room for a surge pod ----

/// Whether one more pod of a workload fits beside its steady state ([`room`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "room", rename_all = "camelCase")]
pub enum Room {
    /// It fits on `node` (a DaemonSet: on each of the nodes named).
    Fits {
        node: String,
    },
    Full {
        reason: String,
    },
    /// The estimate cannot say (no feasible node, an unreadable quantity).
    Unknown {
        reason: String,
    },
}

// ---- shaping ----

/// How a workload's old pods are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// new pods start beside the old ones (maxSurge >= 1, maxUnavailable 0)
    Surge,
    /// no room: one pod at a time (maxSurge 0, maxUnavailable 1); the old pod drains for the
    /// window before its replacement can start
    OneAtATime,
    /// StatefulSet: Kubernetes replaces its pods one at a time in place (nothing to choose)
    InPlace,
}

/// What the agent does for one workload's drain; persisted with a rollout (serde), shown by
/// `agent diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// `Kind/namespace/name` (same format as `crate::k8s::object_id`).
    pub workload: String,
    pub window: i64,
    pub mode: Mode,
    /// Why this mode (the Room's reason, or "replace: oneAtATime in fleet.yaml", or
    /// "StatefulSets replace pods one at a time").
    pub why: String,
    /// The terminationGracePeriodSeconds written.
    pub grace: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<PreStop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_defer: Option<i64>,
    /// What the agent changed of the chart's values (e.g. "strategy Recreate replaced by
    /// RollingUpdate", "terminationGracePeriodSeconds 30 -> 45", "preStop of container web
    /// replaced").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Seconds as a duration (`45s`, `10m`, `1m 30s`).
fn human(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0))).to_string()
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn word<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Objects and policies the tests of every drain job build on.
    use serde_json::{Value, json};

    use super::*;
    use crate::k8s::Time;

    pub(crate) fn specs(yaml: &str) -> Vec<DrainSpec> {
        serde_saphyr::from_str(yaml).expect(yaml)
    }

    pub(crate) fn deployment(name: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "kiosk"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name}]}}}})
    }

    pub(crate) fn of_kind(kind: &str, name: &str) -> Value {
        let mut o = deployment(name);
        o["kind"] = json!(kind);
        o
    }

    pub(crate) fn node(name: &str, allocatable: Value) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {}, "status": {"allocatable": allocatable}})
    }

    pub(crate) fn gpu_node(name: &str, gpus: i64) -> Value {
        node(name, json!({"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": gpus.to_string(), "pods": "110"}))
    }

    pub(crate) fn pod_on(node: &str, ns: &str, name: &str, labels: Value, resources: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": resources}]},
            "status": {"phase": "Running"}})
    }

    /// The kiosk orchestrator: one replica holding a GPU (as a limit only, as charts write it).
    pub(crate) fn kiosk(kind: &str) -> Value {
        let mut w = of_kind(kind, "orchestrator");
        w["spec"]["replicas"] = json!(1);
        w["spec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}});
        w
    }

    pub(crate) fn own_pod(node: &str, terminating: bool) -> Value {
        let mut p = pod_on(
            node,
            "kiosk",
            "orchestrator-abc",
            json!({"app": "orchestrator", "pod-template-hash": "abc"}),
            json!({"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}}),
        );
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:45Z");
        }
        p
    }

    pub(crate) fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() { &mut v } else { v.pointer_mut(parent).unwrap() };
        target[key] = value;
        v
    }

    pub(crate) fn fits(node: &str) -> Room {
        Room::Fits { node: node.into() }
    }

    pub(crate) fn full(reason: &str) -> Room {
        Room::Full { reason: reason.into() }
    }

    pub(crate) fn drain(yaml: &str) -> Drain {
        compile(None, &specs(yaml), 30).unwrap().remove(0)
    }

    pub(crate) fn gone(pod: &str, deadline: Time, gone_at: Time, last: Option<u64>) -> PodDrain {
        PodDrain { pod: pod.into(), deadline, gone_at: Some(gone_at), last, error: None }
    }

    pub(crate) fn still(pod: &str, deadline: Time, last: Option<u64>, error: Option<&str>) -> PodDrain {
        PodDrain { pod: pod.into(), deadline, gone_at: None, last, error: error.map(str::to_owned) }
    }
}
