//! Drain windows at the cluster: the nodes and pods the surge-room estimate reads, the session
//! probes' HTTP calls before a rollout (`waitForIdle`), and the tracker that follows the old
//! pods while they drain. What it all means is `shared::drain`'s; this module only fetches,
//! calls, watches and keeps the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::watch;

use shared::drain::{Drain, Plan, PodDrain, Replace, Report, Room};
use shared::k8s::{Time, object_id};
use shared::render::Manifest;

use crate::cluster::Cluster;
use crate::watch::{Prober, unix_now};

/// How often the tracker looks at the clock when nothing changes (session readings are due by
/// their own interval).
const TICK: Duration = Duration::from_millis(500);

/// After the last old pod's grace period, how long a pod that is still there is waited for
/// (the kubelet's own clean-up), before it is reported as still terminating.
const AFTER_GRACE: i64 = 30;

/// A bundle's drain policy (`gitopsAgent.drainWindow` and `drain[]` over the node's window)
/// compiled and applied to its manifests; the error names the `fleet.yaml` field.
pub async fn for_bundle(
    cluster: &Cluster,
    policy: &shared::fleet::BundlePolicy,
    node_window: i64,
    manifests: &mut [Manifest],
) -> Result<Vec<Plan>, String> {
    let drains = shared::drain::compile(policy.drain_window, &policy.drain, node_window)?;
    let objects: Vec<Value> = manifests.iter().map(|m| m.object.clone()).collect();
    let unmatched = shared::drain::unmatched(&drains, &objects);
    if !unmatched.is_empty() {
        return Err(format!("fleet.yaml: gitopsAgent: {}", unmatched.join("; ")));
    }
    Ok(shape(cluster, manifests, &drains).await)
}

/// Whether the bundle's drains estimate the room for a surge pod (`shared::drain::estimates_room`);
/// a policy that does not compile estimates nothing (its preflight blocks the bundle).
pub fn estimates_room(policy: &shared::fleet::BundlePolicy, node_window: i64, manifests: &[Manifest]) -> bool {
    let Ok(drains) = shared::drain::compile(policy.drain_window, &policy.drain, node_window) else { return false };
    shared::drain::estimates_room(&drains, manifests.iter().map(|m| &m.object))
}

/// Shapes the bundle's workloads for their drain (`shared::drain::shape`) and returns the
/// plans. Room for a surge pod is estimated from every Node and Pod, listed once and only when
/// a drain asks for it; when they cannot be listed the estimate says so and the plan surges
/// (the rollout then fails at its progress deadline rather than cutting sessions).
pub async fn shape(cluster: &Cluster, manifests: &mut [Manifest], drains: &[Drain]) -> Vec<Plan> {
    let needs_room = shared::drain::estimates_room(drains, manifests.iter().map(|m| &m.object));
    let listed = if needs_room {
        let nodes = cluster.list_core("Node", None).await;
        let pods = cluster.list_core("Pod", None).await;
        Some(match (nodes, pods) {
            (Ok(n), Ok(p)) => Ok((n, p)),
            (Err(e), _) | (_, Err(e)) => Err(format!("cannot estimate the room for a surge pod: {e}")),
        })
    } else {
        None
    };
    let mut plans = Vec::new();
    for m in manifests.iter_mut() {
        let Some(drain) = shared::drain::drain_for(drains, &m.object) else { continue };
        let room = match (&listed, drain.replace) {
            (Some(Ok((nodes, pods))), Replace::Auto) => shared::drain::room(&m.object, nodes, pods),
            (Some(Err(e)), Replace::Auto) => Room::Unknown { reason: e.clone() },
            _ => Room::Unknown { reason: "not estimated: fleet.yaml sets replace".into() },
        };
        if let Some(plan) = shared::drain::shape(&mut m.object, drain, &room) {
            plans.push(plan);
        }
    }
    plans
}

/// The sessions on each running pod of the workloads whose plan waits for idle, read through
/// their session probes: (pod, or the workload when its pods cannot be listed, reading).
/// `objects` are the bundle's desired objects, to find each planned workload. A workload not
/// found live has no old pods.
pub async fn readings(cluster: &Cluster, plans: &[&Plan], objects: &[Value]) -> Vec<(String, Result<u64, String>)> {
    let prober = Prober::new();
    let mut out = Vec::new();
    for plan in plans {
        let Some(probe) = &plan.sessions else { continue };
        let Some(object) = objects.iter().find(|o| object_id(o) == plan.workload) else { continue };
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let desired = Manifest { source: String::new(), object: object.clone() };
        let live = match cluster.get(&desired).await {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                out.push((plan.workload.clone(), Err(e.to_string())));
                continue;
            }
        };
        let (pods, rs) = match (cluster.list_core("Pod", Some(ns)).await, list_replica_sets(cluster, ns).await) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) | (_, Err(e)) => {
                out.push((plan.workload.clone(), Err(e.to_string())));
                continue;
            }
        };
        let timeout = Duration::from_secs(u64::try_from(probe.timeout).unwrap_or(2));
        for pod in shared::k8s::current_pods(&live, &rs, &pods) {
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or("?").to_owned();
            let reading = match shared::drain::session_url(probe, &live, pod) {
                None => Err("no address yet".to_owned()),
                Some(url) => prober
                    .get_text(&url, timeout)
                    .await
                    .and_then(|body| shared::drain::read_sessions(&probe.read, &body))
                    .map_err(|e| format!("{}: {e}", shared::redact::url(&url))),
            };
            out.push((pod_name, reading));
        }
    }
    out
}

async fn list_replica_sets(cluster: &Cluster, ns: &str) -> Result<Vec<Value>, crate::cluster::ClusterError> {
    let api: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(cluster.client().clone(), ns);
    let list = api.list(&Default::default()).await.map_err(|e| crate::cluster::ClusterError::Object {
        object: format!("ReplicaSet list in {ns}"),
        reason: crate::source::error_chain(&e),
        status: None,
    })?;
    Ok(list.items.into_iter().filter_map(|o| serde_json::to_value(o).ok()).collect())
}

/// How the rollout watch ended, for the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    Running,
    Healthy,
    Failed,
}

/// Follows the terminating pods of every planned workload from the start of the rollout until
/// they are gone, reading their sessions on each probe's interval, and reports how each
/// workload's drain ended. Stops at once when the rollout failed (the rollback follows), and
/// once it is healthy, as soon as no old pod is left (or the last grace period is well over).
/// `objects` are the applied objects (for each workload's selector); `say` hears progress.
///
/// It works on the watch's events, not on snapshots of a cache: a pod that drains at once (no
/// session open) is deleted a moment after its deletion began, and both are seen.
pub async fn track(
    client: &Client,
    plans: &[Plan],
    objects: &[Value],
    mut watched: watch::Receiver<Watched>,
    say: impl Fn(&str),
) -> Vec<Report> {
    let workloads: Vec<(&Plan, &Value)> =
        plans.iter().filter_map(|p| objects.iter().find(|o| object_id(o) == p.workload).map(|o| (p, o))).collect();
    if workloads.is_empty() {
        return Vec::new();
    }
    let namespaces: BTreeSet<&str> =
        workloads.iter().filter_map(|(_, o)| o["metadata"]["namespace"].as_str()).collect();
    let mut streams: SelectAll<BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>> = SelectAll::new();
    for ns in &namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        streams.push(watcher(api, watcher::Config::default()).default_backoff().boxed());
    }
    let prober = Prober::new();
    // Per workload: its pods draining; the live pods by name; when each is due for a reading.
    let mut drains: Vec<BTreeMap<String, PodDrain>> = vec![BTreeMap::new(); workloads.len()];
    let mut live: BTreeMap<String, Value> = BTreeMap::new();
    let mut listing: Option<BTreeSet<String>> = None;
    let mut listed = 0;
    let mut due: BTreeMap<String, Time> = BTreeMap::new();
    let mut last_line = String::new();
    let mut caught_up = false;
    loop {
        let now = unix_now();
        // Sessions of the pods still draining, each on its probe's interval.
        for ((plan, object), tracked) in workloads.iter().zip(drains.iter_mut()) {
            // Without a session probe the drain is followed by the pods' deletion alone.
            let probe = plan.sessions.as_ref();
            for (name, d) in tracked.iter_mut().filter(|(_, d)| d.gone_at.is_none() && probe.is_some()) {
                let (Some(probe), Some(pod)) = (probe, live.get(name)) else { continue };
                if due.get(name).is_some_and(|t| *t > now) {
                    continue;
                }
                due.insert(name.clone(), now + probe.interval);
                let timeout = Duration::from_secs(u64::try_from(probe.timeout).unwrap_or(2));
                let reading = match shared::drain::session_url(probe, object, pod) {
                    None => Err("no address".to_owned()),
                    Some(url) => {
                        prober.get_text(&url, timeout).await.and_then(|b| shared::drain::read_sessions(&probe.read, &b))
                    }
                };
                match reading {
                    Ok(n) => {
                        d.last = Some(n);
                        d.error = None;
                    }
                    Err(e) => d.error = Some(e),
                }
            }
            let draining: Vec<PodDrain> = tracked.values().filter(|d| d.gone_at.is_none()).cloned().collect();
            if !draining.is_empty() {
                let line = shared::drain::progress(plan.window, &draining, now);
                if line != last_line {
                    say(&line);
                    last_line = line;
                }
            }
        }
        let ready = listed == namespaces.len();
        let all_gone = drains.iter().flat_map(|t| t.values()).all(|d| d.gone_at.is_some());
        let last_deadline = drains.iter().flat_map(|t| t.values()).map(|d| d.deadline).max().unwrap_or(0);
        let state = *watched.borrow();
        match state {
            Watched::Failed => break,
            // The rollout is complete once the old pods are terminating (a ReplicaSet counts no
            // terminating pod), but this watch's events may lag behind the one that judged it:
            // before concluding, read the pods once as they are now, so an old pod already
            // terminating is followed (and its sessions reported) however late its event is.
            Watched::Healthy if ready && !caught_up => {
                caught_up = true;
                let now = unix_now();
                for ns in &namespaces {
                    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
                    if let Ok(list) = api.list(&Default::default()).await {
                        for pod in &list.items {
                            observe(&workloads, &mut drains, &mut live, pod, false, now);
                        }
                    }
                }
                continue;
            }
            Watched::Healthy if ready && (all_gone || now > last_deadline + AFTER_GRACE) => break,
            _ => {}
        }
        tokio::select! {
            Some(event) = streams.next() => {
                let now = unix_now();
                let mut seen = |pod: &Pod, gone: bool, drains: &mut Vec<BTreeMap<String, PodDrain>>| {
                    observe(&workloads, drains, &mut live, pod, gone, now);
                };
                match event {
                    Ok(watcher::Event::Apply(pod)) => seen(&pod, false, &mut drains),
                    Ok(watcher::Event::Delete(pod)) => seen(&pod, true, &mut drains),
                    Ok(watcher::Event::Init) => listing = Some(BTreeSet::new()),
                    Ok(watcher::Event::InitApply(pod)) => {
                        if let Some(names) = listing.as_mut() {
                            names.insert(pod.metadata.name.clone().unwrap_or_default());
                        }
                        seen(&pod, false, &mut drains);
                    }
                    Ok(watcher::Event::InitDone) => {
                        // A (re-)list: a pod followed but no longer listed went while the watch
                        // was down.
                        let names = listing.take().unwrap_or_default();
                        for d in drains.iter_mut().flat_map(|t| t.values_mut()) {
                            if d.gone_at.is_none() && !names.contains(&d.pod) {
                                d.gone_at = Some(now);
                            }
                        }
                        live.retain(|name, _| names.contains(name));
                        listed = (listed + 1).min(namespaces.len());
                    }
                    Err(_) => {}
                }
            }
            _ = watched.changed() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
    workloads
        .iter()
        .zip(drains)
        .filter(|(_, tracked)| !tracked.is_empty())
        .map(|((plan, _), tracked)| shared::drain::report(&plan.workload, &tracked.into_values().collect::<Vec<_>>()))
        .collect()
}

/// Takes one pod as the tracker saw it (`gone`: deleted) into the drains it follows and the live
/// pods it reads sessions from: a pod of a drained workload with a deletion timestamp is followed
/// from then on until it is gone.
fn observe(
    workloads: &[(&Plan, &Value)],
    drains: &mut [BTreeMap<String, PodDrain>],
    live: &mut BTreeMap<String, Value>,
    pod: &Pod,
    gone: bool,
    now: Time,
) {
    let Ok(value) = serde_json::to_value(pod) else { return };
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    for ((_, object), tracked) in workloads.iter().zip(drains.iter_mut()) {
        for (pod, deadline) in shared::drain::terminating(object, std::slice::from_ref(&value)) {
            let d = tracked.entry(pod.clone()).or_insert_with(|| PodDrain {
                pod,
                deadline,
                gone_at: None,
                last: None,
                error: None,
            });
            if gone && d.gone_at.is_none() {
                d.gone_at = Some(now);
            }
        }
    }
    if gone {
        live.remove(&name);
    } else {
        live.insert(name, value);
    }
}
