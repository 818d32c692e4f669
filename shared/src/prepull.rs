//! Pre-pull decided: while a bundle waits for its rollout (a window closed, `waitForIdle`, any
//! gate that defers it), which of its new images the node should pull ahead (`wanted`), the
//! short-lived pod that pulls one (`pod`), what the existing pods say (`observe`), what to create
//! and delete now within the concurrency bound (`step`), what goes once the bundle no longer
//! waits (`cleanup`), and the progress line for status ("pre-pulled 2/3 images").
//!
//! Kubernetes has no pre-pull API: a pod naming the image with `imagePullPolicy: IfNotPresent`
//! on the node pulls it. Ours never starts the app: an init container from the helper image (the
//! agent's own, a static binary) copies `/agent` into an emptyDir, and the app image's container
//! runs that copy (`agent prepull-helper`, which exits 0) instead of its entrypoint.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Prepull;
use crate::desired::{BUNDLE_ANNOTATION, BUNDLE_LABEL, OWNER_LABEL, bundle_label_value};
use crate::gate::Gate;
use crate::k8s::Time;
use crate::k8s::{Node, Pod};

/// Marks a pre-pull pod (value `true`), beside the owner and bundle labels.
pub const PREPULL_LABEL: &str = "gitops-agent.io/prepull";
/// The pinned image a pre-pull pod pulls.
pub const IMAGE_ANNOTATION: &str = "gitops-agent.io/prepull-image";
/// The app image's container; the helper's init container.
pub const PULL_CONTAINER: &str = "pull";
pub const HELPER_CONTAINER: &str = "helper";
/// Where the helper's copy of itself lives in the pod.
pub const HELPER_PATH: &str = "/gitops-prepull/agent";
/// The subcommand both containers run (`--install PATH` copies, alone it exits 0).
pub const HELPER_COMMAND: &str = "prepull-helper";
/// The user both containers run as: PodSecurity `restricted` wants non-root, and an app image
/// whose own user is root must not make the pod fail `runAsNonRoot`.
pub const RUN_AS: i64 = 65532;
/// While pulls are under way, the bundle is looked at again this often, so status follows them.
pub const RECHECK_SECS: i64 = 10;
/// A pod the kubelet did not end at its deadline (the node was away) is deleted this much later.
pub const GRACE_SECS: i64 = 60;

/// Waiting reasons of a container whose image cannot be pulled (yet).
const PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "SignatureValidationFailed",
];

/// Whose pods these are: the agent identity, the bundle and the node they are pinned to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub agent_id: &'a str,
    pub bundle: &'a str,
    pub node: &'a str,
}

/// One image the node should hold before the rollout, and how a pod pulls it: in the namespace of
/// the workload that runs it (its pull secrets live there), with that workload's pull secrets
/// and tolerations.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// Pinned: `host/repo:tag@sha256:...`.
    pub image: String,
    pub namespace: String,
    pub pull_secrets: Vec<String>,
    pub tolerations: Vec<Value>,
    /// The node reports it already (`Node.status.images`): nothing to pull.
    pub on_node: bool,
}

/// Whether a gate decision is a wait the pre-pull serves: deferred, to be looked at again (a
/// window, `waitForIdle`), or waiting for an earlier wave or its stagger slot, as opposed to
/// blocked until a person or Git acts (a release held by a failed wave pulls nothing).
pub fn waits(decision: &crate::gate::Decision) -> bool {
    matches!(decision.wave, crate::report::Gated::Waiting(_))
        || matches!(&decision.gate, Gate::Blocked { reason, .. } if reason.starts_with("deferred:"))
}

/// `host/repo:tag@sha256:d` as `host/repo@sha256:d`, the form the kubelet reports.
fn by_digest(image: &str) -> Option<String> {
    let (name, digest) = image.split_once('@')?;
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let repo = match name[slash..].find(':') {
        Some(colon) => &name[..slash + colon],
        None => name,
    };
    Some(format!("{repo}@{digest}"))
}

/// The images the node reports holding, by digest.
fn node_images(node: &Value) -> BTreeSet<String> {
    Node::view(node)
        .status
        .images
        .iter()
        .flat_map(|i| i.names.iter())
        .filter(|n| n.contains("@sha256:"))
        .cloned()
        .collect()
}

/// The images the bundle's desired objects run that the running release does not, pinned by
/// digest only (what preflight resolved; anything else is not pulled ahead), in the order the
/// objects name them. `node` is the Node object (`Null` when unread): images it reports are
/// counted as there.
pub fn wanted(objects: &[Value], running: &[String], node: &Value) -> Vec<Want> {
    let running: BTreeSet<&str> = running.iter().map(String::as_str).collect();
    let on_node = node_images(node);
    let mut out: Vec<Want> = Vec::new();
    for object in objects {
        let Some(path) = object["kind"].as_str().and_then(crate::render::pod_spec_path) else { continue };
        let spec = path.iter().fold(object, |v, k| &v[*k]);
        let Some(namespace) = object["metadata"]["namespace"].as_str() else { continue };
        let view = crate::k8s::PodSpec::view(spec);
        let secrets: Vec<String> = view.image_pull_secrets.iter().filter_map(|s| s.name.clone()).collect();
        let containers = view.init_containers.iter().chain(&view.containers);
        for image in containers.filter_map(|c| c.image.as_deref()) {
            if !image.contains("@sha256:") || running.contains(image) {
                continue;
            }
            match out.iter_mut().find(|w| w.image == image) {
                Some(w) if w.namespace == namespace => {
                    w.pull_secrets.extend(secrets.iter().cloned());
                    w.pull_secrets.sort();
                    w.pull_secrets.dedup();
                }
                Some(_) => {}
                None => {
                    let mut pull_secrets = secrets.clone();
                    pull_secrets.sort();
                    pull_secrets.dedup();
                    out.push(Want {
                        image: image.to_owned(),
                        namespace: namespace.to_owned(),
                        pull_secrets,
                        tolerations: spec["tolerations"].as_array().cloned().unwrap_or_default(),
                        on_node: by_digest(image).is_some_and(|d| on_node.contains(&d)),
                    });
                }
            }
        }
    }
    out
}

/// The namespaces a bundle's pre-pull pods can be in: those of its objects that run pods.
pub fn namespaces(objects: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"].as_str().and_then(crate::render::pod_spec_path).is_some())
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The label selector of one bundle's pre-pull pods.
pub fn selector(target: &Target) -> String {
    format!(
        "{PREPULL_LABEL}=true,{OWNER_LABEL}={},{BUNDLE_LABEL}={}",
        target.agent_id,
        bundle_label_value(target.bundle)
    )
}

/// A pod's name from who pulls what: stable, so a cycle finds the pod the last one made.
pub fn pod_name(target: &Target, image: &str) -> String {
    let mut h = Sha256::new();
    for part in [target.agent_id, target.bundle, target.node, image] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("gitops-prepull-{hex}")
}

/// The pod that pulls `want.image` onto the node and ends Succeeded without starting the app.
pub fn pod(want: &Want, settings: &Prepull, target: &Target) -> Value {
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let resources = json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}});
    let dir = HELPER_PATH.rsplit_once('/').map_or("/", |(d, _)| d);
    let mut spec = json!({
        "nodeName": target.node,
        "restartPolicy": "Never",
        "activeDeadlineSeconds": settings.timeout.secs().max(1),
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "helper", "emptyDir": {"sizeLimit": "256Mi"}}],
        "initContainers": [{
            "name": HELPER_CONTAINER,
            "image": settings.helper_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/agent", HELPER_COMMAND, "--install", HELPER_PATH],
            "volumeMounts": [{"name": "helper", "mountPath": dir}],
            "securityContext": restricted,
            "resources": resources,
        }],
        "containers": [{
            "name": PULL_CONTAINER,
            "image": want.image,
            "imagePullPolicy": "IfNotPresent",
            "command": [HELPER_PATH, HELPER_COMMAND],
            "volumeMounts": [{"name": "helper", "mountPath": dir, "readOnly": true}],
            "securityContext": restricted,
            "resources": resources,
        }],
    });
    if !want.pull_secrets.is_empty() {
        spec["imagePullSecrets"] = want.pull_secrets.iter().map(|n| json!({"name": n})).collect();
    }
    if !want.tolerations.is_empty() {
        spec["tolerations"] = Value::Array(want.tolerations.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(target, &want.image),
            "namespace": want.namespace,
            "labels": {
                PREPULL_LABEL: "true",
                OWNER_LABEL: target.agent_id,
                BUNDLE_LABEL: bundle_label_value(target.bundle),
            },
            "annotations": {BUNDLE_ANNOTATION: target.bundle, IMAGE_ANNOTATION: want.image},
        },
        "spec": spec,
    })
}

/// How one image's pull stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    /// The image is on the node.
    Pulled,
    /// Being pulled (or the pod waits for the kubelet).
    Pulling,
    /// Cannot be pulled now (the kubelet keeps trying until the deadline): why.
    Failed(String),
    /// The deadline passed and the kubelet did not end the pod: it is deleted.
    Overdue,
}

/// An existing pre-pull pod as the decisions read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub namespace: String,
    pub name: String,
    pub image: String,
    pub pull: Pull,
}

fn parse_time(text: &str) -> Option<Time> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// A pre-pull pod (one with our image annotation) read at `now`; `None` for any other pod.
pub fn observe(pod: &Value, settings: &Prepull, now: Time) -> Option<Seen> {
    let p = Pod::view(pod);
    let image = p.metadata.annotations.get(IMAGE_ANNOTATION)?.clone();
    let named = |list: &[crate::k8s::ContainerStatus], name: &str| {
        list.iter().find(|c| c.name.as_deref() == Some(name)).cloned().unwrap_or_default()
    };
    let app = named(&p.status.container_statuses, PULL_CONTAINER);
    let helper = named(&p.status.init_container_statuses, HELPER_CONTAINER);
    let failing = |c: &crate::k8s::ContainerStatus| {
        let w = c.state.waiting.as_ref()?;
        let reason = w.reason.as_deref().filter(|r| PULL_FAILURES.contains(r))?;
        Some(match w.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_owned(),
        })
    };
    let phase = p.status.phase.as_deref();
    let pull = if app.image_id.as_deref().is_some_and(|i| !i.is_empty())
        || app.state.running.is_some()
        || app.state.terminated.is_some()
        || phase == Some("Succeeded")
    {
        Pull::Pulled
    } else if let Some(why) = failing(&app) {
        Pull::Failed(why)
    } else if let Some(why) = failing(&helper) {
        Pull::Failed(format!("helper image {}: {why}", settings.helper_image))
    } else if phase == Some("Failed") {
        Pull::Failed(match p.status.reason.as_deref() {
            Some("DeadlineExceeded") => format!("not pulled within {}", settings.timeout),
            Some(r) => r.to_owned(),
            None => "the pod failed".to_owned(),
        })
    } else if p
        .metadata
        .creation_timestamp
        .as_deref()
        .and_then(parse_time)
        .is_some_and(|at| now > at + settings.timeout.secs() + GRACE_SECS)
    {
        Pull::Overdue
    } else {
        Pull::Pulling
    };
    Some(Seen {
        namespace: p.metadata.namespace.unwrap_or_default(),
        name: p.metadata.name.unwrap_or_default(),
        image,
        pull,
    })
}

/// One image that could not be pulled, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub image: String,
    pub reason: String,
}

/// Where a waiting bundle's pre-pull stands, for status and JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// New images of the release (those the running one lacks).
    pub images: usize,
    /// On the node: pulled ahead, or reported there already.
    pub pulled: usize,
    pub pulling: usize,
    /// Waiting for a pull slot (`prepull.maxConcurrent`).
    pub queued: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failure>,
}

impl Progress {
    /// A pod of [`Step::create`] the API server refused (a namespace the release creates, a
    /// quota): that image failed this time, with why.
    pub fn not_created(&mut self, image: &str, reason: &str) {
        self.pulling = self.pulling.saturating_sub(1);
        self.failed.push(Failure { image: image.to_owned(), reason: format!("no pod: {reason}") });
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pre-pulled {}/{} image{}", self.pulled, self.images, if self.images == 1 { "" } else { "s" })?;
        if self.pulling > 0 {
            write!(f, ", {} pulling", self.pulling)?;
        }
        if self.queued > 0 {
            write!(f, ", {} queued", self.queued)?;
        }
        for x in &self.failed {
            write!(f, "; {} failed: {}", x.image, x.reason)?;
        }
        Ok(())
    }
}

/// A pod to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// What the driver does for a waiting bundle now.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub create: Vec<Value>,
    pub delete: Vec<PodRef>,
    pub progress: Progress,
    /// Pulls are under way: look again then, so status follows them.
    pub recheck_at: Option<Time>,
}

/// One step of a waiting bundle's pre-pull: pods for new images are created up to
/// `maxConcurrent` pulling at once (failed and pulled ones hold no slot), pods for images no
/// longer wanted (Git moved on while it waited) and overdue ones are deleted.
pub fn step(wants: &[Want], seen: &[Seen], settings: &Prepull, target: &Target, now: Time) -> Step {
    let wanted: BTreeMap<&str, &Want> = wants.iter().map(|w| (w.image.as_str(), w)).collect();
    let mut delete: Vec<PodRef> = Vec::new();
    let mut live: BTreeMap<&str, &Seen> = BTreeMap::new();
    for s in seen {
        let keep = wanted.get(s.image.as_str()).is_some_and(|w| !w.on_node && w.namespace == s.namespace);
        if !keep || s.pull == Pull::Overdue || live.contains_key(s.image.as_str()) {
            delete.push(PodRef { namespace: s.namespace.clone(), name: s.name.clone() });
        }
        // An overdue pod is still the image's until it is gone: a new one of its name would
        // be refused while it terminates; the next look makes it.
        if keep && !live.contains_key(s.image.as_str()) {
            live.insert(&s.image, s);
        }
    }
    let mut active = live.values().filter(|s| s.pull == Pull::Pulling).count();
    let limit = settings.max_concurrent.max(1) as usize;
    let mut progress = Progress { images: wants.len(), ..Progress::default() };
    let mut create = Vec::new();
    for w in wants {
        if w.on_node {
            progress.pulled += 1;
            continue;
        }
        match live.get(w.image.as_str()).map(|s| &s.pull) {
            Some(Pull::Pulled) => progress.pulled += 1,
            Some(Pull::Pulling) => progress.pulling += 1,
            Some(Pull::Failed(reason)) => {
                progress.failed.push(Failure { image: w.image.clone(), reason: reason.clone() })
            }
            Some(Pull::Overdue) => progress.failed.push(Failure {
                image: w.image.clone(),
                reason: format!("not pulled within {}; tried again", settings.timeout),
            }),
            None if active < limit => {
                create.push(pod(w, settings, target));
                active += 1;
                progress.pulling += 1;
            }
            None => progress.queued += 1,
        }
    }
    delete.sort();
    let recheck_at = (progress.pulling + progress.queued > 0).then_some(now + RECHECK_SECS);
    Step { create, delete, progress, recheck_at }
}

/// Once the bundle no longer waits (its rollout starts, it is in sync or blocked for another
/// reason, the release changed): every pre-pull pod of it goes. The images stay on the node.
pub fn cleanup(seen: &[Seen]) -> Vec<PodRef> {
    let mut out: Vec<PodRef> =
        seen.iter().map(|s| PodRef { namespace: s.namespace.clone(), name: s.name.clone() }).collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;

    const NOW: Time = 1_796_119_200;
    const A: &str = "reg.test/web:1.1.0@sha256:aaaa";
    const B: &str = "reg.test/side:2.0@sha256:bbbb";
    const C: &str = "reg.test/init@sha256:cccc";
    const OLD: &str = "reg.test/web:1.0.0@sha256:0000";

    fn settings(max: u32) -> Prepull {
        Prepull {
            enabled: true,
            helper_image: "reg.test/platform/gitops-agent:0.1.0".into(),
            max_concurrent: max,
            timeout: HumanDuration::from_secs(600),
        }
    }

    const T: Target = Target { agent_id: "store1", bundle: "apps/web", node: "node-1" };

    fn deployment(ns: &str, images: &[&str], init: &[&str], secrets: &[&str]) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
               "spec": {"template": {"spec": {
                   "imagePullSecrets": secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
                   "tolerations": [{"key": "store", "operator": "Exists", "effect": "NoSchedule"}],
                   "initContainers": init.iter().map(|i| json!({"name": "i", "image": i})).collect::<Vec<_>>(),
                   "containers": images.iter().map(|i| json!({"name": "c", "image": i})).collect::<Vec<_>>()}}}})
    }

    fn want(image: &str) -> Want {
        Want { image: image.into(), namespace: "ns".into(), pull_secrets: vec![], tolerations: vec![], on_node: false }
    }

    fn seen(image: &str, pull: Pull) -> Seen {
        Seen { namespace: "ns".into(), name: pod_name(&T, image), image: image.into(), pull }
    }

    #[test]
    fn the_new_pinned_images_are_wanted_once_each_with_the_pull_secrets_of_their_namespace() {
        let objects = vec![
            deployment("ns", &[A, OLD, "reg.test/unpinned:1"], &[C], &["pull-a"]),
            deployment("ns", &[A], &[], &["pull-b", "pull-a"]),
            deployment("other", &[A], &[], &["pull-c"]),
            json!({"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}),
        ];
        let node = json!({"status": {"images": [{"names": ["reg.test/init@sha256:cccc", "reg.test/init:1"]}]}});
        let w = wanted(&objects, &[OLD.to_owned()], &node);
        let rows: Vec<(&str, &str, Vec<&str>, bool)> = w
            .iter()
            .map(|w| {
                (w.image.as_str(), w.namespace.as_str(), w.pull_secrets.iter().map(String::as_str).collect(), w.on_node)
            })
            .collect();
        assert_eq!(rows, vec![(C, "ns", vec!["pull-a"], true), (A, "ns", vec!["pull-a", "pull-b"], false)]);
        assert_eq!(w[1].tolerations.len(), 1, "the workload's tolerations go with it");
        assert_eq!(namespaces(&objects), vec!["ns", "other"]);
        assert!(wanted(&objects, &[A.into(), C.into(), OLD.into()], &Value::Null).is_empty(), "nothing new");
    }

    #[test]
    fn an_image_is_matched_to_the_nodes_list_by_repository_and_digest() {
        let rows = [
            ("reg.test/web:1.1.0@sha256:aa", Some("reg.test/web@sha256:aa")),
            ("reg.test:5000/a/web:1@sha256:aa", Some("reg.test:5000/a/web@sha256:aa")),
            ("reg.test:5000/web@sha256:aa", Some("reg.test:5000/web@sha256:aa")),
            ("reg.test/web:1", None),
        ];
        for (image, expected) in rows {
            assert_eq!(by_digest(image).as_deref(), expected, "{image}");
        }
    }

    #[test]
    fn the_pod_is_pinned_to_the_node_pulls_if_not_present_and_runs_the_helpers_copy_not_the_app() {
        let mut w = want(A);
        w.pull_secrets = vec!["pull-a".into()];
        let p = pod(&w, &settings(2), &T);
        let spec = &p["spec"];
        assert_eq!(p["metadata"]["name"], pod_name(&T, A));
        assert_eq!(p["metadata"]["namespace"], "ns");
        assert_eq!(p["metadata"]["labels"][PREPULL_LABEL], "true");
        assert_eq!(p["metadata"]["labels"][OWNER_LABEL], "store1");
        assert_eq!(p["metadata"]["labels"][BUNDLE_LABEL], "apps.web");
        assert_eq!(p["metadata"]["annotations"][IMAGE_ANNOTATION], A);
        assert_eq!(spec["nodeName"], "node-1");
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["activeDeadlineSeconds"], 600);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "pull-a"}]));
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let app = &spec["containers"][0];
        assert_eq!((app["image"].as_str(), app["imagePullPolicy"].as_str()), (Some(A), Some("IfNotPresent")));
        assert_eq!(app["command"], json!([HELPER_PATH, HELPER_COMMAND]), "the app's entrypoint never runs");
        let helper = &spec["initContainers"][0];
        assert_eq!(helper["image"], "reg.test/platform/gitops-agent:0.1.0");
        assert_eq!(helper["command"], json!(["/agent", HELPER_COMMAND, "--install", HELPER_PATH]));
        for c in [app, helper] {
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(c["volumeMounts"][0]["mountPath"], "/gitops-prepull");
        }
        assert_ne!(pod_name(&T, A), pod_name(&T, B), "one pod per image");
        assert_ne!(pod_name(&T, A), pod_name(&Target { node: "node-2", ..T }, A), "and per node");
        assert!(pod_name(&T, A).len() <= 63);
        assert_eq!(
            selector(&T),
            "gitops-agent.io/prepull=true,gitops-agent.io/owner=store1,gitops-agent.io/bundle=apps.web"
        );
    }

    fn status_pod(phase: &str, app: Value, helper: Value, created: &str, reason: Option<&str>) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "creationTimestamp": created,
                            "annotations": {IMAGE_ANNOTATION: A}},
               "status": {"phase": phase, "reason": reason,
                          "containerStatuses": [app], "initContainerStatuses": [helper]}})
    }

    #[test]
    fn a_pods_status_reads_as_pulled_pulling_failed_with_its_reason_or_overdue() {
        let at = "2026-12-01T10:00:00Z"; // NOW
        let waiting = |name: &str, r: &str| json!({"name": name, "state": {"waiting": {"reason": r, "message": "m"}}});
        let rows = [
            (status_pod("Pending", waiting("pull", "ContainerCreating"), json!({}), at, None), Pull::Pulling),
            (
                status_pod(
                    "Pending",
                    json!({"name": "pull", "imageID": "reg.test/web@sha256:aaaa"}),
                    json!({}),
                    at,
                    None,
                ),
                Pull::Pulled,
            ),
            (
                status_pod("Running", json!({"name": "pull", "state": {"running": {}}}), json!({}), at, None),
                Pull::Pulled,
            ),
            (status_pod("Succeeded", json!({"name": "pull"}), json!({}), at, None), Pull::Pulled),
            (
                status_pod("Pending", waiting("pull", "ErrImagePull"), json!({}), at, None),
                Pull::Failed("ErrImagePull: m".into()),
            ),
            (
                status_pod("Pending", waiting("pull", "ImagePullBackOff"), json!({}), at, None),
                Pull::Failed("ImagePullBackOff: m".into()),
            ),
            (
                status_pod("Pending", waiting("pull", "PodInitializing"), waiting("helper", "ErrImagePull"), at, None),
                Pull::Failed("helper image reg.test/platform/gitops-agent:0.1.0: ErrImagePull: m".into()),
            ),
            (
                status_pod("Failed", json!({"name": "pull"}), json!({}), at, Some("DeadlineExceeded")),
                Pull::Failed("not pulled within 10m".into()),
            ),
            (status_pod("Pending", json!({"name": "pull"}), json!({}), "2026-12-01T09:50:00Z", None), Pull::Pulling),
            (status_pod("Pending", json!({"name": "pull"}), json!({}), "2026-12-01T09:49:00Z", None), Pull::Pulling),
            (status_pod("Pending", json!({"name": "pull"}), json!({}), "2026-12-01T09:48:59Z", None), Pull::Overdue),
        ];
        for (i, (p, expected)) in rows.into_iter().enumerate() {
            let s = observe(&p, &settings(2), NOW).expect("a pre-pull pod");
            assert_eq!((i, s.pull), (i, expected));
            assert_eq!((s.image.as_str(), s.namespace.as_str(), s.name.as_str()), (A, "ns", "p"));
        }
        assert!(observe(&json!({"metadata": {"name": "web-1"}}), &settings(2), NOW).is_none(), "not ours");
    }

    #[test]
    fn pulls_start_up_to_the_concurrency_bound_and_stale_or_overdue_pods_go() {
        let d = |image: &str, ns: &str| PodRef { namespace: ns.into(), name: pod_name(&T, image) };
        let on_node = Want { on_node: true, ..want(C) };
        // (wants, seen, max) -> (images created, deleted, progress line, recheck)
        type Row<'a> = (Vec<Want>, Vec<Seen>, u32, Vec<&'a str>, Vec<PodRef>, &'a str, bool);
        let rows: Vec<Row> = vec![
            (
                vec![want(A), want(B), on_node.clone()],
                vec![],
                1,
                vec![A],
                vec![],
                "pre-pulled 1/3 images, 1 pulling, 1 queued",
                true,
            ),
            (vec![want(A), want(B)], vec![], 2, vec![A, B], vec![], "pre-pulled 0/2 images, 2 pulling", true),
            (
                vec![want(A), want(B)],
                vec![seen(A, Pull::Pulling)],
                1,
                vec![],
                vec![],
                "pre-pulled 0/2 images, 1 pulling, 1 queued",
                true,
            ),
            (
                vec![want(A), want(B)],
                vec![seen(A, Pull::Pulled)],
                1,
                vec![B],
                vec![],
                "pre-pulled 1/2 images, 1 pulling",
                true,
            ),
            (
                vec![want(A), want(B)],
                vec![seen(A, Pull::Failed("ErrImagePull: m".into()))],
                1,
                vec![B],
                vec![],
                "pre-pulled 0/2 images, 1 pulling; reg.test/web:1.1.0@sha256:aaaa failed: ErrImagePull: m",
                true,
            ),
            (
                vec![want(A)],
                vec![seen(A, Pull::Pulled), seen(OLD, Pull::Pulled)],
                1,
                vec![],
                vec![d(OLD, "ns")],
                "pre-pulled 1/1 image",
                false,
            ),
            (
                vec![want(A)],
                vec![seen(A, Pull::Overdue)],
                1,
                vec![],
                vec![d(A, "ns")],
                "pre-pulled 0/1 image; reg.test/web:1.1.0@sha256:aaaa failed: not pulled within 10m; tried again",
                false,
            ),
            (
                vec![on_node.clone()],
                vec![seen(C, Pull::Pulling)],
                1,
                vec![],
                vec![d(C, "ns")],
                "pre-pulled 1/1 image",
                false,
            ),
            (
                vec![Want { namespace: "moved".into(), ..want(A) }],
                vec![seen(A, Pull::Pulled)],
                1,
                vec![A],
                vec![d(A, "ns")],
                "pre-pulled 0/1 image, 1 pulling",
                true,
            ),
        ];
        for (i, (wants, seen, max, created, deleted, line, recheck)) in rows.into_iter().enumerate() {
            let s = step(&wants, &seen, &settings(max), &T, NOW);
            let made: Vec<&str> =
                s.create.iter().map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap()).collect();
            assert_eq!((i, made), (i, created));
            assert_eq!((i, s.delete), (i, deleted));
            assert_eq!((i, s.progress.to_string()), (i, line.to_owned()));
            assert_eq!((i, s.recheck_at), (i, recheck.then_some(NOW + RECHECK_SECS)));
        }
    }

    #[test]
    fn cleanup_deletes_every_pre_pull_pod_of_the_bundle() {
        let all = cleanup(&[seen(B, Pull::Pulling), seen(A, Pull::Pulled)]);
        let mut expected = vec![
            PodRef { namespace: "ns".into(), name: pod_name(&T, B) },
            PodRef { namespace: "ns".into(), name: pod_name(&T, A) },
        ];
        expected.sort();
        assert_eq!(all, expected);
        assert!(cleanup(&[]).is_empty());
    }

    #[test]
    fn only_a_deferral_is_a_wait_pre_pull_serves() {
        let only = |gate: Gate| crate::gate::Decision::only(gate);
        assert!(waits(&only(Gate::deferred("inside deny window", Some(NOW + 60)))));
        assert!(!waits(&only(Gate::blocked("paused"))));
        assert!(!waits(&only(Gate::RollOut)));
        assert!(!waits(&only(Gate::InSync)));
        let wave = |gated: crate::report::Gated| crate::gate::Decision {
            wave: gated,
            ..only(Gate::Blocked {
                reason: "wave canary: waits for wave qa: 0/1 healthy, needs 1".into(),
                retry_at: None,
            })
        };
        assert!(waits(&wave(crate::report::Gated::Waiting("wave canary: waits".into()))), "an earlier wave's gate");
        assert!(!waits(&wave(crate::report::Gated::Held("held: wave qa failed".into()))), "a held release");
    }

    #[test]
    fn progress_serializes_for_status_json() {
        let p = Progress {
            images: 3,
            pulled: 2,
            pulling: 0,
            queued: 0,
            failed: vec![Failure { image: A.into(), reason: "ImagePullBackOff".into() }],
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            json!({"images": 3, "pulled": 2, "pulling": 0, "queued": 0,
                             "failed": [{"image": A, "reason": "ImagePullBackOff"}]})
        );
        assert_eq!(serde_json::from_value::<Progress>(v).unwrap(), p);
        assert_eq!(p.to_string(), format!("pre-pulled 2/3 images; {A} failed: ImagePullBackOff"));
        let mut q = Progress { images: 1, pulling: 1, ..Progress::default() };
        q.not_created(B, "namespaces \"ns\" not found");
        assert_eq!(q.to_string(), format!("pre-pulled 0/1 image; {B} failed: no pod: namespaces \"ns\" not found"));
    }
}
