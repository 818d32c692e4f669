//! The rollout watch: Kubernetes watches (kube-runtime reflectors) on the workloads' namespaces,
//! re-judged on every change. What the changes mean is `shared::rollout::{judge, step}`; this
//! module only keeps the caches, the clock and the wake-ups, and makes the health probes' HTTP
//! calls (`shared::probe` says which, and what their answers mean). A watch that breaks (API
//! server down) is re-established with backoff, so a rollout outlives an outage.

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

use shared::k8s::{Time, object_id};
use shared::probe::{Health, Tally, Target};
use shared::rollout::{Limits, Seen, Step, Verdict, judge, step};

// Kinds whose rollout is watched (others are done once applied).
use shared::k8s::is_workload;

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

/// Each watch stream yields `None` for a change, `Some(error)` when the watch broke.
type Changes = SelectAll<BoxStream<'static, Option<String>>>;

fn cache<K>(client: &Client, ns: &str, streams: &mut Changes) -> Store<K>
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
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .map(|event| event.err().map(|e| e.to_string()));
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
/// the original deadline). While they are healthy, `limits.probes` are called, each target every
/// `interval`. `on_change` hears each new verdict and probe state, `on_watch` when the watch
/// breaks (`Some(error)`: it is re-established with backoff) and when it is back (`None`).
pub async fn until_settled(
    client: &Client,
    workloads: &[Value],
    started: Time,
    limits: &Limits,
    mut on_change: impl FnMut(&Verdict, &Health),
    mut on_watch: impl FnMut(Option<&str>),
) -> Step {
    let watched: Vec<&Value> = workloads.iter().filter(|o| is_workload(o)).collect();
    if watched.is_empty() {
        return Step::Done;
    }
    let namespaces: BTreeSet<&str> = watched.iter().filter_map(|o| o["metadata"]["namespace"].as_str()).collect();
    let mut streams: Changes = SelectAll::new();
    let mut broken = false;
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
    let prober = Prober::new();
    let mut tally = Tally::default();
    // When each probe (by index) is due next.
    let mut due: Vec<Time> = vec![0; limits.probes.len()];
    let mut healthy_since = None;
    let mut last: Option<(Verdict, Health)> = None;
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
        let mut now = unix_now();
        let health = if verdict == Verdict::Healthy {
            let targets = shared::probe::targets(&limits.probes, &live, &replica_sets, &pods);
            tally.retain(&targets);
            let calls: Vec<&Target> = targets.iter().filter(|t| due[t.probe] <= now).collect();
            if !calls.is_empty() {
                for (key, answer) in prober.call(&limits.probes, &calls).await {
                    tally.record(&key, answer);
                }
                for t in &calls {
                    due[t.probe] = now + limits.probes[t.probe].interval;
                }
                now = unix_now();
            }
            tally.health(&limits.probes, &targets)
        } else {
            // New pods will come: a new tally, each probe due as soon as they are healthy.
            tally = Tally::default();
            due.iter_mut().for_each(|d| *d = 0);
            Health::Green
        };
        let seen = (verdict, health);
        if last.as_ref() != Some(&seen) {
            on_change(&seen.0, &seen.1);
            last = Some(seen.clone());
        }
        let (verdict, health) = seen;
        match step(&verdict, &health, started, healthy_since, limits, now) {
            Step::Continue { healthy_since: h, wake_at } => {
                healthy_since = h;
                // Wake for the step's own time, or for the next probe call while healthy.
                let probe_at = if h.is_some() { due.iter().min().copied() } else { None };
                let wake = match probe_at {
                    Some(p) if wake_at <= now => p,
                    Some(p) => p.min(wake_at),
                    None => wake_at,
                };
                let wait = Duration::from_secs(u64::try_from(wake - now).unwrap_or(0).max(1));
                tokio::select! {
                    Some(first) = streams.next() => {
                        // Take every change already queued before judging again.
                        let mut error = first;
                        while let Some(Some(next)) = streams.next().now_or_never() {
                            error = next.or(error);
                        }
                        match error {
                            Some(e) if !broken => {
                                broken = true;
                                on_watch(Some(&e));
                            }
                            None if broken => {
                                broken = false;
                                on_watch(None);
                            }
                            _ => {}
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
            settled => return settled,
        }
    }
}

/// Makes health probes' and session probes' HTTP GETs (plain HTTP, or HTTPS checked against
/// public roots).
pub(crate) struct Prober {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

/// The most of a session probe's answer that is read.
const MAX_BODY: usize = 1 << 20;

impl Prober {
    pub(crate) fn new() -> Prober {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Prober {
            client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        }
    }

    /// One GET within `timeout`: the body of a 2xx answer, else why not.
    pub(crate) async fn get_text(&self, url: &str, timeout: Duration) -> Result<String, String> {
        use http_body_util::BodyExt;
        let uri = url.parse::<hyper::Uri>().map_err(|e| format!("not a URL: {e}"))?;
        let req = hyper::Request::get(uri)
            .header("user-agent", "gitops-agent")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| connect_error(&e))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8 text".to_owned())
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
    }

    /// Calls every target at once, each within its probe's timeout. Which answers are good is
    /// `shared::probe::healthy_status`'s.
    async fn call(&self, probes: &[shared::probe::Probe], targets: &[&Target]) -> Vec<(String, Result<(), String>)> {
        let calls = targets.iter().map(|t| async move {
            let timeout = Duration::from_secs(u64::try_from(probes[t.probe].timeout).unwrap_or(1));
            let answer = match t.url.parse::<hyper::Uri>() {
                Err(e) => Err(format!("not a URL: {e}")),
                Ok(uri) => {
                    let req = hyper::Request::get(uri)
                        .header("user-agent", "gitops-agent")
                        .body(http_body_util::Empty::new())
                        .map_err(|e| e.to_string());
                    match req {
                        Err(e) => Err(e),
                        Ok(req) => match tokio::time::timeout(timeout, self.client.request(req)).await {
                            Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
                            Ok(Err(e)) => Err(connect_error(&e)),
                            Ok(Ok(resp)) if shared::probe::healthy_status(resp.status().as_u16()) => Ok(()),
                            Ok(Ok(resp)) => Err(format!("HTTP {}", resp.status())),
                        },
                    }
                }
            };
            (t.key.clone(), answer)
        });
        futures::future::join_all(calls).await
    }
}

/// The innermost cause of a client error ("connection refused"), which is what an operator needs.
fn connect_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}

fn find<K>(stores: &[Store<K>], name: &str, ns: &str) -> Option<Value>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
{
    let key = ObjectRef::new(name).within(ns);
    stores.iter().find_map(|s| s.get(&key)).and_then(|o| serde_json::to_value(&*o).ok())
}
