//! The rollout watch: Kubernetes watches (kube-runtime reflectors) on the workloads' namespaces,
//! re-judged on every change. What the changes mean is `shared::rollout::{judge, step}`; this
//! module only keeps the caches, the clock and the wake-ups. A watch that breaks (API server
//! down) is re-established with backoff, so a rollout outlives an outage.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use shared::rollout::{Limits, Seen, Step, Verdict, judge, step};
use shared::state::{Time, object_id};

/// Kinds whose rollout is watched (others are done once applied).
pub fn is_workload(object: &Value) -> bool {
    object["apiVersion"] == "apps/v1"
        && matches!(object["kind"].as_str(), Some("Deployment" | "StatefulSet" | "DaemonSet"))
}

pub fn unix_now() -> Time {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as Time)
}

struct Caches {
    deployments: Vec<Store<Deployment>>,
    statefulsets: Vec<Store<StatefulSet>>,
    daemonsets: Vec<Store<DaemonSet>>,
    replicasets: Vec<Store<ReplicaSet>>,
    pods: Vec<Store<Pod>>,
}

fn cache<K>(client: &Client, ns: &str, streams: &mut SelectAll<BoxStream<'static, ()>>) -> Store<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff().map(|_| ());
    streams.push(stream.boxed());
    reader
}

fn values<K>(stores: &[Store<K>]) -> Vec<Value>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    stores.iter().flat_map(|s| s.state()).filter_map(|o| serde_json::to_value(&*o).ok()).collect()
}

/// Watches `workloads` (desired objects; others are ignored) until `shared::rollout::step` says
/// done or failed. `started` is when their apply began (persisted, so a restarted agent keeps
/// the original deadline). `on_change` hears each new verdict.
pub async fn until_settled(
    client: &Client,
    workloads: &[Value],
    started: Time,
    limits: Limits,
    mut on_change: impl FnMut(&Verdict),
) -> Step {
    let watched: Vec<&Value> = workloads.iter().filter(|o| is_workload(o)).collect();
    if watched.is_empty() {
        return Step::Done;
    }
    let namespaces: BTreeSet<&str> = watched.iter().filter_map(|o| o["metadata"]["namespace"].as_str()).collect();
    let mut streams = SelectAll::new();
    let mut c = Caches {
        deployments: Vec::new(),
        statefulsets: Vec::new(),
        daemonsets: Vec::new(),
        replicasets: Vec::new(),
        pods: Vec::new(),
    };
    for ns in &namespaces {
        c.deployments.push(cache(client, ns, &mut streams));
        c.statefulsets.push(cache(client, ns, &mut streams));
        c.daemonsets.push(cache(client, ns, &mut streams));
        c.replicasets.push(cache(client, ns, &mut streams));
        c.pods.push(cache(client, ns, &mut streams));
    }
    let mut healthy_since = None;
    let mut last: Option<Verdict> = None;
    loop {
        let live: Vec<(String, Option<Value>)> = watched
            .iter()
            .map(|o| {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
                let found = match o["kind"].as_str() {
                    Some("Deployment") => find(&c.deployments, name, ns),
                    Some("StatefulSet") => find(&c.statefulsets, name, ns),
                    _ => find(&c.daemonsets, name, ns),
                };
                (object_id(o), found)
            })
            .collect();
        let (replica_sets, pods) = (values(&c.replicasets), values(&c.pods));
        let verdict = judge(Seen { workloads: &live, replica_sets: &replica_sets, pods: &pods });
        if last.as_ref() != Some(&verdict) {
            on_change(&verdict);
            last = Some(verdict.clone());
        }
        let now = unix_now();
        match step(&verdict, started, healthy_since, limits, now) {
            Step::Continue { healthy_since: h, wake_at } => {
                healthy_since = h;
                let wait = Duration::from_secs(u64::try_from(wake_at - now).unwrap_or(0).max(1));
                tokio::select! {
                    _ = streams.next() => {
                        // Take every change already queued before judging again.
                        while let Some(Some(())) = streams.next().now_or_never() {}
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
            settled => return settled,
        }
    }
}

fn find<K>(stores: &[Store<K>], name: &str, ns: &str) -> Option<Value>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    let key = ObjectRef::new(name).within(ns);
    stores.iter().find_map(|s| s.get(&key)).and_then(|o| serde_json::to_value(&*o).ok())
}
