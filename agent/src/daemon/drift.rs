//! Drift watches: one metadata-only Kubernetes watch per kind and namespace the agent has applied to (cluster
//! scoped kinds: one per kind), filtered by its owner label. Per namespace, because the chart's
//! RBAC grants list and watch in the managed namespaces only, never cluster-wide. When someone else changes such an object (`shared::drift` decides from its
//! `managedFields`) or deletes it, its bundle is queued for a reconcile, which puts back what
//! Git says. Watches re-establish themselves with backoff after an API server outage.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tracing::{info, warn};

use shared::desired::{FIELD_MANAGER, OWNER_LABEL, ownership};
use shared::trigger::{Cause, Target, Trigger};

use super::Daemon;
use crate::cluster::Cluster;

/// The (apiVersion, kind, namespace) watched so far; no namespace for a cluster-scoped kind.
#[derive(Default)]
pub struct Watches {
    kinds: Mutex<BTreeSet<(String, String, Option<String>)>>,
}

impl Watches {
    /// Starts a watch for every kind and namespace of `objects` not watched yet.
    pub fn ensure(&self, d: &Arc<Daemon>, cluster: &Cluster, objects: &[serde_json::Value]) {
        let mut kinds = self.kinds.lock().expect("watched kinds lock");
        for o in objects {
            let (api_version, kind) =
                (o["apiVersion"].as_str().unwrap_or_default(), o["kind"].as_str().unwrap_or_default());
            let namespace = cluster
                .is_namespaced(api_version, kind)
                .then(|| o["metadata"]["namespace"].as_str().map(str::to_owned))
                .flatten();
            let key = (api_version.to_owned(), kind.to_owned(), namespace);
            if kinds.contains(&key) {
                continue;
            }
            let Some(api) = cluster.metadata_api_in(api_version, kind, key.2.as_deref()) else { continue };
            kinds.insert(key.clone());
            tokio::spawn(watch_kind(d.clone(), api, key.1));
        }
    }
}

async fn watch_kind(
    d: Arc<Daemon>,
    api: kube::Api<kube::core::PartialObjectMeta<kube::api::DynamicObject>>,
    kind: String,
) {
    let config = watcher::Config::default().labels(&format!("{OWNER_LABEL}={}", d.config.identity.agent_id));
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    // Metadata only: drift is decided from `managedFields` and the ownership labels, so the
    // objects' specs (a ConfigMap's data, a Deployment's template) never cross the wire or sit in
    // memory, not even during the initial list.
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let (object, deleted, initial) = match event {
            Ok(Event::InitApply(o)) => (o, false, true),
            Ok(Event::Apply(o)) => (o, false, false),
            Ok(Event::Delete(o)) => (o, true, false),
            Ok(_) => continue,
            Err(e) => {
                warn!(kind = %kind, error = %e, "drift watch interrupted; re-watching with backoff");
                continue;
            }
        };
        let Ok(value) = serde_json::to_value(&object) else { continue };
        let key = format!(
            "{}/{}",
            value["metadata"]["namespace"].as_str().unwrap_or_default(),
            value["metadata"]["name"].as_str().unwrap_or_default()
        );
        let Some((_, bundle)) = ownership(&value) else { continue };
        let writer = shared::drift::last_writer(&value, FIELD_MANAGER);
        let what = if deleted {
            seen.remove(&key);
            Some(format!("{kind}/{key} was deleted"))
        } else if initial {
            None
        } else {
            shared::drift::is_drift(&value, FIELD_MANAGER, seen.get(&key))
                .map(|who| format!("{kind}/{key} changed by {who}"))
        };
        if let (false, Some(w)) = (deleted, writer) {
            seen.insert(key, w);
        }
        if let Some(object) = what {
            info!(bundle = %bundle, "drift: {object}; reconciling the bundle");
            let _ = d.triggers.send(Trigger { target: Target::Bundle(bundle), cause: Cause::Drift { object } });
        }
    }
}
