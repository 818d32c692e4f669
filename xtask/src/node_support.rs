//! Test support for the real node: the pod-spec lines that place a pod there, the pull secret
//! its pods pull private images with, a follower of a container's log (which outlives the pod),
//! and the routes inside a pod's network namespace as the host sees them.

use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, LogParams, Patch, PatchParams};

use crate::env_info::RealNode;
use crate::testenv::EnvInfo;

/// The Secret name pods on the real node pull with (see [`pull_secret`]).
pub const PULL_SECRET: &str = "registry-pull";

/// The real node of the running testenv, or a clear failure (the tests need it).
pub fn real_node(info: &EnvInfo) -> &RealNode {
    info.real_node.as_ref().expect(
        "this testenv runs no real node: the primary instance runs it unless GITOPS_TESTENV_REAL_NODE=0 \
         (see docs/testenv.md)",
    )
}

/// Pod-spec fields (YAML, indented for a Deployment's `template.spec`, 6 spaces) that land a pod
/// on the real node: its label and a toleration of its taint.
pub fn placement(node: &RealNode, indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!(
        "{pad}nodeSelector: {{{key}: {value}}}\n{pad}tolerations:\n{pad}- {{key: {taint}, operator: Equal, value: \"{tv}\", effect: NoSchedule}}\n",
        key = node.label_key,
        value = node.label_value,
        taint = node.taint_key,
        tv = node.taint_value,
    )
}

/// Creates the `kubernetes.io/dockerconfigjson` Secret [`PULL_SECRET`] in `ns` with the store's
/// pull-only robot, as an operator does for a private registry.
pub async fn pull_secret(client: &kube::Client, info: &EnvInfo, ns: &str) -> Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let auth = b64(&format!("{}:{}", info.registry_agent.username, info.registry_agent.password));
    let config = serde_json::json!({"auths": {info.registry.clone(): {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": PULL_SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&config)},
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(PULL_SECRET, &PatchParams::apply("testenv").force(), &Patch::Apply(&secret))
        .await
        .with_context(|| format!("creating the pull secret in {ns}"))?;
    Ok(())
}

/// One line of a container's log, with the kubelet's timestamp (unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub at: f64,
    pub text: String,
}

/// Follows a container's log from its start until the container ends (the stream closes), so
/// what the app printed while it was drained and stopped is kept after the pod is gone.
#[derive(Debug, Clone)]
pub struct LogFollower {
    lines: Arc<Mutex<Vec<LogLine>>>,
    done: Arc<tokio::sync::watch::Sender<bool>>,
}

impl LogFollower {
    pub fn start(client: &kube::Client, ns: &str, pod: &str) -> LogFollower {
        let follower = LogFollower { lines: Arc::default(), done: Arc::new(tokio::sync::watch::Sender::new(false)) };
        let (api, pod, f) = (Api::<Pod>::namespaced(client.clone(), ns), pod.to_owned(), follower.clone());
        tokio::spawn(async move {
            let lp = LogParams { follow: true, timestamps: true, ..LogParams::default() };
            match api.log_stream(&pod, &lp).await {
                Ok(stream) => {
                    let mut lines = stream.lines();
                    while let Ok(Some(line)) = lines.try_next().await {
                        let (stamp, text) = line.split_once(' ').unwrap_or(("", &line));
                        let at = stamp
                            .parse::<k8s_openapi::jiff::Timestamp>()
                            .map_or(0.0, |t| t.as_millisecond() as f64 / 1000.0);
                        f.lines.lock().expect("log lines lock").push(LogLine { at, text: text.to_owned() });
                    }
                }
                Err(e) => {
                    f.lines.lock().expect("log lines lock").push(LogLine { at: 0.0, text: format!("(no log: {e})") })
                }
            }
            f.done.send_replace(true);
        });
        follower
    }

    pub fn lines(&self) -> Vec<LogLine> {
        self.lines.lock().expect("log lines lock").clone()
    }

    pub fn texts(&self) -> Vec<String> {
        self.lines().into_iter().map(|l| l.text).collect()
    }

    /// Waits until the container's log ended (the container stopped), up to `timeout`.
    pub async fn wait_done(&self, timeout: std::time::Duration) -> Result<Vec<LogLine>> {
        let mut done = self.done.subscribe();
        tokio::time::timeout(timeout, done.wait_for(|d| *d))
            .await
            .with_context(|| format!("the container's log did not end within {timeout:?}: {:?}", self.texts()))?
            .ok();
        Ok(self.lines())
    }

    /// Waits until a line contains `text`; returns it.
    pub async fn wait_line(&self, text: &str, timeout: std::time::Duration) -> Result<LogLine> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.text.contains(text)) {
                return Ok(l);
            }
            if std::time::Instant::now() > deadline {
                bail!("no log line with {text:?} within {timeout:?}: {:?}", self.texts());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The IPv4 routes inside the network namespace that holds `pod_ip` (`ip route` as printed),
/// read from the host through the namespaces the CNI plugin made in `/run/netns`.
pub fn pod_routes(pod_ip: &str) -> Result<Vec<String>> {
    let names = std::fs::read_dir("/run/netns").context("reading /run/netns")?;
    for entry in names.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ip = |args: &[&str]| -> Result<String> {
            let out = Command::new("ip").args(["netns", "exec", &name, "ip"]).args(args).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        if ip(&["-4", "-o", "addr"])?.contains(&format!("inet {pod_ip}/")) {
            return Ok(ip(&["-4", "route"])?.lines().map(str::to_owned).collect());
        }
    }
    bail!("no network namespace in /run/netns holds {pod_ip}")
}

/// The host's address on the pods' bridge ([`RealNode::host_address`]): the only host address a
/// pod has a route to.
pub fn host_address(node: &RealNode) -> Result<std::net::Ipv4Addr> {
    Ok(node.host_address()?.0)
}

/// Relays from the host's side of the pod network to services on the host's loopback: one
/// listener on the host's bridge address ([`host_address`], any free port) per target
/// `127.0.0.1:PORT`.
/// Pods cannot reach the host's loopback; a pod that needs a testenv service (the agent's own
/// pod: API server, git, registry, token service) runs the kiosk image's `--relay` mode as a
/// sidecar that listens on the pod's loopback at `PORT` and relays to [`HostRelay::args`]'
/// addresses. Stops when dropped.
pub struct HostRelay {
    /// (loopback port on the host, the relay's address on the node IP).
    pub routes: Vec<(u16, std::net::SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HostRelay {
    pub async fn start(node: &RealNode, ports: &[u16]) -> Result<HostRelay> {
        let mut routes = Vec::new();
        let mut tasks = Vec::new();
        for &port in ports {
            let at = host_address(node)?;
            let listener =
                tokio::net::TcpListener::bind((at, 0)).await.with_context(|| format!("binding a relay on {at}"))?;
            routes.push((port, listener.local_addr()?));
            tasks.push(tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }));
        }
        Ok(HostRelay { routes, tasks })
    }

    /// The sidecar's arguments: `--relay 127.0.0.1:PORT=NODE_IP:RELAY_PORT` per route.
    pub fn args(&self) -> Vec<String> {
        self.routes.iter().flat_map(|(port, at)| ["--relay".to_owned(), format!("127.0.0.1:{port}={at}")]).collect()
    }
}

impl Drop for HostRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
