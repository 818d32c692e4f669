//! What `render`, `diff`, `reconcile` and the daemon share: the config, one git poll, the cluster
//! (when wanted), the registries and the node identity, set up the way the agent itself does.
//! Outside `cli/`, so the daemon and the cycle use it without importing the command line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use shared::bundle::Bundle;

use crate::cluster::Cluster;
use crate::desired::{Build, Checkout, Node};
use crate::render::{Capabilities, Renderers};
use crate::source::git::{GitOptions, GitSource, Poll};
use crate::source::registry::Registries;

pub struct Session {
    pub config: shared::config::AgentConfig,
    pub checkout: Checkout,
    pub poll: Poll,
    pub shown_url: String,
    pub cluster: Option<Cluster>,
    pub caps: Capabilities,
    pub renderers: Renderers,
    /// Shared with the daemon, which keeps it between cycles so registry tokens are reused.
    pub registries: Arc<Registries>,
    pub node: Node,
}

/// A cluster already connected, or the version to render for offline.
pub enum Connected<'a> {
    Yes(Cluster),
    Offline(&'a str),
}

/// How the session reaches the cluster.
pub enum ClusterUse<'a> {
    /// Required (diff).
    Required,
    /// Not contacted: Helm gets this `--kube-version` (render offline).
    Offline(&'a str),
}

impl Session {
    /// `labels` replaces the configured node labels (rendering for another node).
    pub async fn open(
        config_path: &Path,
        cluster: ClusterUse<'_>,
        labels: Option<BTreeMap<String, String>>,
    ) -> anyhow::Result<Session> {
        let (loaded, base) = crate::config::load(config_path)?;
        let config = loaded.config;
        let git = Arc::new(GitSource::new(GitOptions::from_config(&config, &base))?);
        let poller = git.clone();
        let poll = tokio::task::spawn_blocking(move || poller.poll()).await??;
        let cluster = match cluster {
            ClusterUse::Required => Connected::Yes(Cluster::connect(&config.kube, &base).await?),
            ClusterUse::Offline(v) => Connected::Offline(v),
        };
        Session::assemble(config, &base, git, poll, cluster, labels, None).await
    }

    /// A session from a poll already made and a cluster already connected (the daemon keeps
    /// both between cycles, and its registries: their Bearer tokens outlive a poll).
    pub async fn assemble(
        config: shared::config::AgentConfig,
        base: &Path,
        git: Arc<GitSource>,
        poll: Poll,
        cluster: Connected<'_>,
        labels: Option<BTreeMap<String, String>>,
        registries: Option<Arc<Registries>>,
    ) -> anyhow::Result<Session> {
        let shown_url = git.shown_url();
        let root = config.git.path.trim_matches('/').to_owned();
        let root = if root == "." { String::new() } else { root };
        let mut checkout = Checkout { git, commit: poll.commit.id.clone(), root, waves: Default::default() };
        checkout.read_waves().await;
        let (cluster, caps) = match cluster {
            Connected::Yes(c) => {
                let caps = c.capabilities().clone();
                (Some(c), caps)
            }
            Connected::Offline(v) => {
                (None, Capabilities { kube_version: Some(v.to_owned()), api_versions: Vec::new() })
            }
        };
        let labels = match labels {
            Some(l) => l,
            None => {
                let mut l = BTreeMap::new();
                if config.identity.labels_from_node {
                    let c = cluster.as_ref().context(
                        "identity.labelsFromNode needs the cluster; pass --labels to render for a node offline",
                    )?;
                    l = c.node_labels(&config.identity.node_name).await?;
                }
                // Configured labels win over the Node's.
                l.extend(config.identity.labels.clone());
                l
            }
        };
        let registries = match registries {
            Some(r) => r,
            None => Arc::new(Registries::from_config(&config.registries, base)?),
        };
        let node = Node { agent_id: config.identity.agent_id.clone(), labels };
        let renderers = Renderers::from_config(&config);
        Ok(Session { config, checkout, poll, shown_url, cluster, caps, renderers, registries, node })
    }

    pub async fn bundles(&self) -> anyhow::Result<Vec<Bundle>> {
        self.checkout.bundles().await
    }

    /// The named bundle, or an error listing the bundles there are.
    pub async fn bundle(&self, name: &str) -> anyhow::Result<Bundle> {
        let all = self.bundles().await?;
        let wanted = name.trim_matches('/');
        all.iter().find(|b| b.dir == wanted).cloned().with_context(|| {
            let names: Vec<&str> = all.iter().map(|b| b.dir.as_str()).collect();
            format!(
                "no bundle {wanted:?} under {} at {} (bundles: {})",
                self.config.git.path,
                &self.poll.commit.id[..12.min(self.poll.commit.id.len())],
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )
        })
    }

    /// A desired-state build for this session's commit and node; `resolve` asks the registries.
    pub fn build<'a>(&'a self, namespaced: &'a (dyn Fn(&str, &str) -> bool + Sync), resolve: bool) -> Build<'a> {
        Build {
            checkout: &self.checkout,
            node: &self.node,
            renderers: &self.renderers,
            caps: &self.caps,
            namespaced,
            registries: resolve.then_some(&self.registries),
        }
    }

    pub fn namespaced(&self) -> impl Fn(&str, &str) -> bool + Sync + '_ {
        move |v: &str, k: &str| match &self.cluster {
            Some(c) => c.is_namespaced(v, k),
            None => !shared::desired::is_cluster_scoped_builtin(v, k),
        }
    }
}
