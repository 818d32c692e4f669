//! The Kubernetes adapter: connection, discovery (scopes, and Helm's `--api-versions`), the
//! server-side apply (dry-run for plans), reads and deletes of live objects, Events.
//! It reports what the API server says; `shared::plan` decides what that means.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, Config};
use serde_json::Value;

use shared::desired::FIELD_MANAGER;
use shared::plan::Observed;
use shared::render::Manifest;

use crate::render::Capabilities;

/// Why a cluster operation failed, naming the object or the server.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubeconfig {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("API server {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{object}: the API server has no kind {api_version}/{kind} (is its CRD installed?)")]
    UnknownKind { object: String, api_version: String, kind: String },
    /// The API server refused or failed a request about one object; `status` is its HTTP status.
    #[error("{object}: {reason}")]
    Object { object: String, reason: String, status: Option<u16> },
}

/// A connected cluster with its discovery (cheap to clone: the client is shared).
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    url: String,
    /// Every served kind, by (apiVersion, kind).
    kinds: BTreeMap<(String, String), (ApiResource, ApiCapabilities)>,
    caps: Capabilities,
}

fn api_version_kind(object: &Value) -> (String, String) {
    (
        object["apiVersion"].as_str().unwrap_or_default().to_owned(),
        object["kind"].as_str().unwrap_or_default().to_owned(),
    )
}

impl Cluster {
    /// Connects with a kubeconfig (relative to `base`) and context, or in-cluster without one,
    /// and runs discovery.
    pub async fn connect(kube: &shared::config::Kube, base: &Path) -> Result<Cluster, ClusterError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match &kube.kubeconfig {
            Some(path) => {
                let path = base.join(path);
                let shown = path.display().to_string();
                let kc = Kubeconfig::read_from(&path).map_err(|e| ClusterError::Config {
                    path: shown.clone(),
                    reason: crate::source::error_chain(&e),
                })?;
                let opts = KubeConfigOptions { context: kube.context.clone(), ..Default::default() };
                Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(|e| ClusterError::Config { path: shown, reason: crate::source::error_chain(&e) })?
            }
            None => Config::incluster().map_err(|e| ClusterError::Config {
                path: "(in-cluster service account)".into(),
                reason: crate::source::error_chain(&e),
            })?,
        };
        let url = shared::redact::url(&config.cluster_url.to_string());
        // kube's own retry of 429/503/504 waits up to minutes without a word (15 tries, delays
        // doubling up to 1000 s): off, so the agent's backoff retries them and says so (the
        // step's log line and status), and a fault that lasts becomes `retrying` in the record.
        let mut config = config;
        config.default_retry = false;
        let client = Client::try_from(config)
            .map_err(|e| ClusterError::Unreachable { url: url.clone(), reason: crate::source::error_chain(&e) })?;
        let unreachable =
            |e: kube::Error| ClusterError::Unreachable { url: url.clone(), reason: crate::source::error_chain(&e) };
        let version = client.apiserver_version().await.map_err(unreachable)?;
        let discovery = match Discovery::new(client.clone()).run_aggregated().await {
            Ok(d) => d,
            Err(_) => Discovery::new(client.clone()).run().await.map_err(unreachable)?,
        };
        let mut kinds = BTreeMap::new();
        let mut api_versions = BTreeSet::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    api_versions.insert(ar.api_version.clone());
                    api_versions.insert(format!("{}/{}", ar.api_version, ar.kind));
                    kinds.entry((ar.api_version.clone(), ar.kind.clone())).or_insert((ar, caps));
                }
            }
        }
        let caps =
            Capabilities { kube_version: Some(version.git_version), api_versions: api_versions.into_iter().collect() };
        Ok(Cluster { client, url, kinds, caps })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The API server's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the API server serves this kind namespaced; unknown kinds fall back to the
    /// built-in list (the apply then reports the missing kind).
    pub fn is_namespaced(&self, api_version: &str, kind: &str) -> bool {
        match self.kinds.get(&(api_version.to_owned(), kind.to_owned())) {
            Some((_, caps)) => caps.scope == Scope::Namespaced,
            None => !shared::desired::is_cluster_scoped_builtin(api_version, kind),
        }
    }

    /// A metadata-only API for a served kind in one namespace, or over the cluster for `None`
    /// (drift watches: `managedFields` and labels are all they read), if the API server serves it.
    pub fn metadata_api_in(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Option<Api<PartialObjectMeta<DynamicObject>>> {
        let (ar, _) = self.kinds.get(&(api_version.to_owned(), kind.to_owned()))?;
        Some(match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        })
    }

    fn api_for(&self, m: &Manifest) -> Result<Api<DynamicObject>, ClusterError> {
        let (api_version, kind) = api_version_kind(&m.object);
        let (ar, caps) = self.kinds.get(&(api_version.clone(), kind.clone())).ok_or_else(|| {
            ClusterError::UnknownKind { object: m.id(), api_version: api_version.clone(), kind: kind.clone() }
        })?;
        Ok(match (&caps.scope, m.object["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        })
    }

    /// The live object, if it exists.
    pub async fn get(&self, m: &Manifest) -> Result<Option<Value>, ClusterError> {
        let api = self.api_for(m)?;
        let name = m.object["metadata"]["name"].as_str().unwrap_or_default();
        let found = api.get_opt(name).await.map_err(|e| object_err(m, &e))?;
        Ok(found.map(|o| serde_json::to_value(o).unwrap_or_default()))
    }

    /// Server-side apply of one object under the agent's field manager; with `dry_run` the API
    /// server answers what the object would become and stores nothing.
    pub async fn apply(&self, m: &Manifest, dry_run: bool, force: bool) -> Result<Value, ClusterError> {
        let api = self.api_for(m)?;
        let name = m.object["metadata"]["name"].as_str().unwrap_or_default();
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if dry_run {
            params = params.dry_run();
        }
        if force {
            params = params.force();
        }
        let applied = api.patch(name, &params, &Patch::Apply(&m.object)).await.map_err(|e| object_err(m, &e))?;
        Ok(serde_json::to_value(applied).unwrap_or_default())
    }

    /// What the plan needs to know about one desired object: the live object and what the
    /// API server would make of ours. A conflict with another field manager is reported and the
    /// dry-run repeated with force, so the plan still shows the full difference.
    pub async fn observe(&self, m: &Manifest) -> Result<Observed, ClusterError> {
        let live = self.get(m).await?;
        let (applied, conflict) = match self.apply(m, true, false).await {
            Ok(v) => (Some(v), None),
            Err(ClusterError::Object { reason, status: Some(409), .. }) => {
                (Some(self.apply(m, true, true).await?), Some(format!("conflict: {reason}")))
            }
            // The namespace does not exist yet: a create the server cannot dry-run.
            Err(ClusterError::Object { status: Some(404), .. }) if live.is_none() => (None, None),
            Err(e) => return Err(e),
        };
        Ok(Observed { applied, live, conflict })
    }

    /// Every object in namespace `ns`, of every namespaced kind the API server lists (each
    /// resource once, at one version), for the check that a namespace is empty before the agent
    /// deletes it. A list that fails is an error: what it would hold is unknown.
    pub async fn namespace_contents(&self, ns: &str) -> Result<Vec<Value>, ClusterError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for ((api_version, kind), (ar, caps)) in &self.kinds {
            let listable = caps.operations.is_empty() || caps.operations.iter().any(|o| o == "list");
            if caps.scope != Scope::Namespaced || !listable || !seen.insert((ar.group.clone(), ar.plural.clone())) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, ar);
            let list = api.list(&ListParams::default()).await.map_err(|e| ClusterError::Object {
                object: format!("{kind} list in {ns}"),
                reason: crate::source::error_chain(&e),
                status: match &e {
                    kube::Error::Api(s) => Some(s.code),
                    _ => None,
                },
            })?;
            for item in list.items {
                let mut v = serde_json::to_value(item).unwrap_or_default();
                // Lists leave apiVersion and kind out of items.
                v["apiVersion"] = Value::String(api_version.clone());
                v["kind"] = Value::String(kind.clone());
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Deletes one object (foreground: dependents such as a Deployment's pods go first). An
    /// object already gone is not an error.
    pub async fn delete(&self, m: &Manifest) -> Result<(), ClusterError> {
        let api = self.api_for(m)?;
        let name = m.object["metadata"]["name"].as_str().unwrap_or_default();
        match api.delete(name, &kube::api::DeleteParams::foreground()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(object_err(m, &e)),
        }
    }

    /// A Kubernetes Event on `object` (`kubectl describe` shows it), reported by the agent
    /// identity `instance`.
    pub async fn event(
        &self,
        instance: &str,
        object: &Value,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Result<(), ClusterError> {
        use kube::runtime::events::{Event, EventType, Recorder, Reporter};
        let reporter = Reporter { controller: FIELD_MANAGER.to_owned(), instance: Some(instance.to_owned()) };
        let recorder = Recorder::new(self.client.clone(), reporter);
        let meta = &object["metadata"];
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: object["apiVersion"].as_str().map(str::to_owned),
            kind: object["kind"].as_str().map(str::to_owned),
            name: meta["name"].as_str().map(str::to_owned),
            namespace: meta["namespace"].as_str().map(str::to_owned),
            uid: meta["uid"].as_str().map(str::to_owned),
            ..Default::default()
        };
        // The API server limits a note to 1 kB.
        let mut note = note.to_owned();
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.map_err(|e| ClusterError::Object {
            object: shared::k8s::object_id(object),
            reason: format!("recording event {reason}: {}", crate::source::error_chain(&e)),
            status: None,
        })
    }

    /// Every object of a core kind (`Node`, `Pod`), in all namespaces or in `namespace`, as JSON
    /// (for the drain's room estimate and its idle check).
    pub async fn list_core(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, ClusterError> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", kind));
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let list = api.list(&ListParams::default()).await.map_err(|e| ClusterError::Object {
            object: format!("{kind} list{}", namespace.map(|n| format!(" in {n}")).unwrap_or_default()),
            reason: crate::source::error_chain(&e),
            status: match &e {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
        })?;
        Ok(list.items.into_iter().filter_map(|o| serde_json::to_value(o).ok()).collect())
    }

    /// Labels of the Node `name` (for `identity.labelsFromNode`).
    pub async fn node_labels(&self, name: &str) -> Result<BTreeMap<String, String>, ClusterError> {
        let gvk = GroupVersionKind::gvk("", "v1", "Node");
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let node = api.get(name).await.map_err(|e| ClusterError::Object {
            object: format!("Node/{name}"),
            reason: crate::source::error_chain(&e),
            status: None,
        })?;
        Ok(node.metadata.labels.unwrap_or_default())
    }
}

fn object_err(m: &Manifest, e: &kube::Error) -> ClusterError {
    let (reason, status) = match e {
        kube::Error::Api(s) => (format!("{} (HTTP {})", s.message, s.code), Some(s.code)),
        other => (crate::source::error_chain(other), None),
    };
    ClusterError::Object { object: m.id(), reason, status }
}
