//! systemd's notify protocol for `Type=notify` units (`deploy/systemd/gitops-agent.service`):
//! `READY=1` once the agent would answer `/readyz` with 200, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while the runtime runs, `STOPPING=1` on SIGTERM, and `STATUS=` lines for
//! `systemctl status`. Without `NOTIFY_SOCKET` (a pod, a shell) nothing is sent.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Daemon;

/// How often readiness is looked at until the agent is ready (the reasons live in the view,
/// which several tasks update).
const READY_CHECK: Duration = Duration::from_millis(250);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "systemd notify: sending failed");
    }
}

/// Whether the process was started by a service manager that listens (`NOTIFY_SOCKET`).
fn notify_socket_set() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Runs until the process exits: readiness once, watchdog pings throughout (also while stopping,
/// so a slow drain of the cycle in flight is not taken for a hang), `STOPPING=1` once `stop`
/// turns true.
pub(super) async fn run(d: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    if !notify_socket_set() {
        return;
    }
    // WATCHDOG_USEC (for this pid, per WATCHDOG_PID) set by `WatchdogSec=`; ping at half of it.
    let watchdog = sd_notify::watchdog_enabled().map(|every| every / 2);
    if let Some(every) = watchdog {
        info!(every_ms = every.as_millis() as u64, "systemd watchdog: pinging");
    }
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut check = tokio::time::interval(READY_CHECK);
    let mut ready = false;
    let mut stopping = false;
    let mut shown = String::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing the cycle in flight")]);
            }
            _ = check.tick(), if !ready && !stopping => {
                let missing = d.not_ready();
                if missing.is_empty() {
                    ready = true;
                    send(&[NotifyState::Ready, NotifyState::Status("ready")]);
                    info!("systemd notify: ready");
                } else {
                    let status = format!("waiting: {}", missing.join("; "));
                    if status != shown {
                        send(&[NotifyState::Status(&status)]);
                        shown = status;
                    }
                }
            }
            _ = ping.tick(), if watchdog.is_some() => send(&[NotifyState::Watchdog]),
        }
    }
}
