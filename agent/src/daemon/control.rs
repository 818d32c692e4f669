//! The control socket, `stateDir/agent.sock`: how the command line on this node asks the
//! running agent to change state (`rollback`, `retry`, `pause`, `resume`, `reconcile --once`).
//!
//! A peer address is no identity (a sidecar proxy or another local user also arrives from
//! loopback), so these commands never go over TCP: the socket is mode 0600 inside the agent's
//! 0700 state folder, and a connection whose peer is neither the agent's own user nor root is
//! refused as well (`SO_PEERCRED`). The worker performs each command between cycles, as the
//! Lease holder, so a command and a reconcile never write the same record at once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::answer::Answer;

/// The socket's file name in `stateDir`.
pub const SOCKET: &str = "agent.sock";
/// The one route: a [`Command`] as JSON in, an [`Answer`] as JSON out.
pub const ROUTE: &str = "/command";
/// `sun_path` holds 108 bytes with its terminating NUL (unix(7)).
const MAX_SOCKET_PATH: usize = 107;

/// What the command line asks the running agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Command {
    Rollback {
        bundle: String,
        to: Option<String>,
    },
    Retry {
        bundle: String,
        /// Who asked, as the command line knows it (recorded when it overrides a wave hold).
        #[serde(default)]
        by: Option<String>,
    },
    Pause {
        bundle: String,
        reason: String,
    },
    Resume {
        bundle: String,
    },
    /// `agent prune --confirm`: delete what a held removal named.
    Prune {
        bundle: String,
    },
    /// `reconcile --once`: one cycle now, its report sent back.
    Reconcile {
        bundle: Option<String>,
        ignore_windows: bool,
    },
}

/// A command on its way to the worker, with where its answer goes.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

/// The control socket of the agent whose config says `state_dir` (relative to `base`).
pub fn socket_path(base: &Path, state_dir: &str) -> PathBuf {
    base.join(state_dir).join(SOCKET)
}

/// Binds the socket, mode 0600. A socket file left by an agent that is gone is replaced; one
/// that answers means another agent runs with this state folder, which is refused.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    anyhow::ensure!(
        path.as_os_str().len() <= MAX_SOCKET_PATH,
        "stateDir: the control socket {} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes)",
        path.display()
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("stateDir: creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "stateDir: another agent runs with this state folder (its socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("stateDir: cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} the agent user's only", path.display()))?;
    Ok(listener)
}

/// The peer's user, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy)]
struct Peer {
    uid: Option<u32>,
}

impl Connected<axum::serve::IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Peer {
        Peer { uid: stream.io().peer_cred().ok().map(|c| c.uid()) }
    }
}

/// Serves the socket until `stop`, then removes its file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    commands: mpsc::Sender<Request>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new().route(ROUTE, post(command)).with_state(Arc::new(commands));
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let served =
        axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).with_graceful_shutdown(shutdown).await;
    if let Err(e) = served {
        warn!(error = %e, "the control socket stopped");
    }
    let _ = std::fs::remove_file(&path);
}

async fn command(
    State(commands): State<Arc<mpsc::Sender<Request>>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(command): Json<Command>,
) -> Response {
    let me = nix::unistd::geteuid().as_raw();
    if !matches!(peer.uid, Some(uid) if uid == me || uid == 0) {
        warn!(peer_uid = ?peer.uid, "control socket: refused a command from another user");
        return (StatusCode::FORBIDDEN, "only the agent's own user or root may command it\n").into_response();
    }
    let (reply, answer) = oneshot::channel();
    if commands.send(Request { command, reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n").into_response();
    }
    match answer.await {
        Ok(Ok(a)) => Json(a).into_response(),
        Ok(Err(refused)) => (StatusCode::CONFLICT, format!("{refused}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the agent stopped before it answered\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_travel_as_tagged_json() {
        let c = Command::Reconcile { bundle: Some("apps/web".into()), ignore_windows: true };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, r#"{"command":"reconcile","bundle":"apps/web","ignoreWindows":true}"#);
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
    }

    #[tokio::test]
    async fn the_socket_is_the_owners_only_and_a_live_one_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let listener = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path).await.unwrap_err().to_string();
        assert!(err.contains("another agent runs with this state folder"), "{err}");
        drop(listener);
        bind(&path).await.expect("a stale socket file is replaced");
    }
}
