//! What a testenv instance is and offers: its ports, credentials and endpoints (`EnvInfo`, the
//! `env.json` tests read), and what its real node offers. Below `testenv` (which writes it),
//! `node`, `images`, `seed` and `support` (which read it), so none of them imports another back.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::pki::Pki;

/// Default first port; `GITOPS_TESTENV_PORT_BASE` moves the whole block.
pub const DEFAULT_PORT_BASE: u16 = 38400;
/// The ports of one testenv instance, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
    pub kwok: u16,
    pub registry: u16,
    pub token: u16,
    pub git: u16,
}

impl Ports {
    pub fn from_base(b: u16) -> Ports {
        Ports {
            etcd_client: b,
            etcd_peer: b + 1,
            apiserver: b + 2,
            controller_manager: b + 3,
            scheduler: b + 4,
            kwok: b + 5,
            registry: b + 6,
            token: b + 7,
            git: b + 8,
        }
    }

    pub fn from_env() -> Result<Ports> {
        let base = match std::env::var("GITOPS_TESTENV_PORT_BASE") {
            Ok(v) => v.parse().with_context(|| format!("GITOPS_TESTENV_PORT_BASE={v:?} is not a port number"))?,
            Err(_) => DEFAULT_PORT_BASE,
        };
        if base > u16::MAX - 16 {
            bail!("GITOPS_TESTENV_PORT_BASE={base} leaves no room for the 9 ports the testenv needs");
        }
        Ok(Ports::from_base(base))
    }

    pub fn all(&self) -> Vec<(&'static str, u16)> {
        vec![
            ("etcd client", self.etcd_client),
            ("etcd peer", self.etcd_peer),
            ("kube-apiserver", self.apiserver),
            ("kube-controller-manager", self.controller_manager),
            ("kube-scheduler", self.scheduler),
            ("kwok", self.kwok),
            ("registry", self.registry),
            ("registry token service", self.token),
            ("git server", self.git),
        ]
    }
}

/// A name and password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Creds {
    pub username: String,
    pub password: String,
}

/// What a running testenv offers, written to `env.json` for tests and `testenv env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvInfo {
    pub run_dir: PathBuf,
    pub ports: Ports,
    /// Admin kubeconfig (bearer token, so a fault proxy can sit in front of the API server).
    pub kubeconfig: PathBuf,
    pub apiserver: String,
    pub admin_token: String,
    /// The CA behind every TLS endpoint of the testenv.
    pub ca_cert: PathBuf,
    /// JSON lines of every write request the API server served.
    pub audit_log: PathBuf,
    /// `127.0.0.1:PORT`, as written in image references.
    pub registry: String,
    pub registry_service: String,
    pub token_realm: String,
    /// JSON lines of every token request (account, scope, status).
    pub token_access_log: PathBuf,
    /// Pull-only robot, as a store's agent has: `robot$store1+agent`.
    pub registry_agent: Creds,
    /// Push+pull robot, as CI has: `robot$ci+builder`.
    pub registry_ci: Creds,
    /// Folder for `skopeo --cert-dir` / docker-style CA lookup.
    pub registry_cert_dir: PathBuf,
    /// `https://127.0.0.1:PORT/git`; repositories are `<git_base>/<name>.git`.
    pub git_base: String,
    pub git_repos_dir: PathBuf,
    pub git_access_log: PathBuf,
    pub git_agent: Creds,
    pub git_ci: Creds,
    pub node_name: String,
    pub helm: PathBuf,
    pub kustomize: PathBuf,
    /// Files tests may use to prove foreign signatures are refused.
    pub foreign_signing_cert: PathBuf,
    pub foreign_signing_key: PathBuf,
    /// The real node (kubelet + containerd), when this instance runs it (`crate::node`).
    #[serde(default)]
    pub real_node: Option<RealNode>,
}

impl EnvInfo {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("env.json")
    }

    pub fn load(run_dir: &Path) -> Result<EnvInfo> {
        let p = EnvInfo::path(run_dir);
        let text = fs::read_to_string(&p).with_context(|| format!("reading {} (is the testenv up?)", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn pki(&self) -> Pki {
        Pki { dir: self.run_dir.join("pki") }
    }
}

/// What the real node offers, in `env.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealNode {
    pub name: String,
    pub ip: String,
    pub pod_subnet: String,
    /// The taint `taint_key=taint_value:NoSchedule`: only tolerating pods land on the node.
    pub taint_key: String,
    pub taint_value: String,
    pub label_key: String,
    pub label_value: String,
    pub kubelet_version: String,
    pub containerd_version: String,
    pub runc_version: String,
    pub containerd_socket: PathBuf,
    pub pause_image: String,
    /// The kiosk app's layer, for `images::push_kiosk`.
    pub kiosk_layer: Layer,
}

impl RealNode {
    /// The host's address on the pods' bridge (the first address of the pod subnet, the gateway
    /// the bridge plugin gives it: the only host address a pod has a route to), with the
    /// subnet's prefix length.
    pub fn host_address(&self) -> Result<(std::net::Ipv4Addr, u8)> {
        let (net, len) = self.pod_subnet.split_once('/').context("the pod subnet has no prefix length")?;
        let net: std::net::Ipv4Addr = net.parse().with_context(|| format!("pod subnet {}", self.pod_subnet))?;
        let len: u8 = len.parse().with_context(|| format!("pod subnet {}", self.pod_subnet))?;
        Ok((std::net::Ipv4Addr::from(u32::from(net) + 1), len))
    }
}

/// One gzipped layer blob and what a manifest and config say of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    pub blob: PathBuf,
    /// `sha256:…` of the gzipped blob.
    pub digest: String,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
    pub size: u64,
}
