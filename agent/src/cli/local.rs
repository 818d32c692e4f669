//! The agent running on this node, as the command line reaches it: `status` over its HTTP
//! address (`server.listen`; read-only), and every command that changes state over its control
//! socket (`crate::daemon::control`), or, when no agent runs here, done by the command itself
//! while it holds the agent's Lease, so it never interleaves with an agent on another replica.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;

use crate::answer::Answer;
use crate::cycle::Setup;
use crate::daemon::control::{self, Command};

/// The running agent's address on this node, from `server.listen` (a wildcard means loopback).
pub(super) fn local_url(listen: &str) -> Option<String> {
    let addr: std::net::SocketAddr = listen.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    Some(format!("http://{ip}:{}", addr.port()))
}

pub(super) fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?)
}

/// Who did a command.
pub(super) enum Done {
    /// The running agent on this node, over its control socket.
    ByAgent(Answer),
    /// This command, holding the Lease (or alone, with leader election off).
    Here(Answer),
}

/// `command` through the running agent when its socket answers; else `alone` here, holding the
/// Lease for as long as it runs.
pub(super) async fn command(
    config_path: &Path,
    command: Command,
    alone: impl AsyncFnOnce(&Setup) -> anyhow::Result<Answer>,
) -> anyhow::Result<Done> {
    let (loaded, base) = crate::config::load(config_path)?;
    let socket = control::socket_path(&base, &loaded.config.state_dir);
    if let Some(answer) = ask(&socket, &command).await? {
        return Ok(Done::ByAgent(answer));
    }
    let s = super::setup(config_path).await?;
    let held = hold_lease(&s).await?;
    let done = alone(&s).await;
    if let Some(h) = held {
        h.release().await;
    }
    done.map(Done::Here)
}

/// Sends `command` to the agent behind `socket`. `None`: no agent listens there.
async fn ask(socket: &Path, command: &Command) -> anyhow::Result<Option<Answer>> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "the running agent's socket {}: run the command as the agent's user",
                socket.display()
            )));
        }
    };
    eprintln!("asking the running agent on this node (it acts between reconciles: a rollout in flight ends first)");
    let what = || format!("the running agent's socket {}", socket.display());
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.with_context(what)?;
    tokio::spawn(connection);
    let request = hyper::Request::post(control::ROUTE)
        .header(hyper::header::HOST, "agent")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::to_vec(command)?)))?;
    let response = sender.send_request(request).await.with_context(what)?;
    let status = response.status();
    let body = response.into_body().collect().await.with_context(what)?.to_bytes();
    if !status.is_success() {
        anyhow::bail!("the running agent did not do it: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(Some(serde_json::from_slice(&body).with_context(what)?))
}

/// The agent's Lease, held by this command.
struct Held {
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Held {
    async fn release(self) {
        drop(self.leading);
        // The task releases the Lease once its channel closes.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Takes the agent's Lease (leader election on), waiting at most one Lease duration for a
/// holder that is gone to let it expire; a live holder makes this an error naming it.
async fn hold_lease(s: &Setup) -> anyhow::Result<Option<Held>> {
    if !s.config.leader_election.enabled {
        return Ok(None);
    }
    let secs = s.config.leader_election.lease_duration.get().as_secs().max(5);
    let namespace = &s.config.kube.namespace;
    let name = crate::daemon::lease_name(&s.config.identity.agent_id);
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
    let identity =
        format!("{}/cli-{}", host.unwrap_or_else(|| s.config.identity.node_name.clone()), std::process::id());
    let manager = kube_lease_manager::LeaseManagerBuilder::new(s.cluster.client().clone(), &name)
        .with_namespace(namespace)
        .with_identity(&identity)
        .with_duration(secs)
        .with_grace((secs / 3).max(1))
        .build()
        .await
        .with_context(|| format!("the Lease {namespace}/{name}"))?;
    let (mut leading, task) = manager.watch().await;
    let wait = Duration::from_secs(secs + secs / 3 + 2);
    let acquired = matches!(tokio::time::timeout(wait, leading.wait_for(|l| *l)).await, Ok(Ok(_)));
    if acquired {
        return Ok(Some(Held { leading, task }));
    }
    Held { leading, task }.release().await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(s.cluster.client().clone(), namespace);
    let holder = leases
        .get_opt(&name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_else(|| "unknown".into());
    anyhow::bail!(
        "another agent holds the Lease {namespace}/{name} ({holder}) and no agent answers on this node: \
         run the command on the node where the leader runs; nothing was changed"
    )
}
