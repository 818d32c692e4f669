//! Helpers shared by the e2e tests.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Polls `check` every 200 ms until it yields `Some`, or panics after `timeout` naming `what`
/// and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match try_wait_for(what, timeout, check).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// As [`wait_for`], but a timeout is an `Err` (naming `what` and the last observation), for a
/// caller that gathers more evidence before it fails.
pub async fn try_wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(observed) => observed,
        };
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}; last seen: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first Kubernetes Event (events.k8s.io/v1) with `reason` in namespace `ns`, waited for up
/// to 20 s.
pub async fn event(env: &xtask::support::TestEnv, ns: &str, reason: &str) -> k8s_openapi::api::events::v1::Event {
    use kube::api::{Api, ListParams};
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client().await, ns);
    wait_for(&format!("{reason} event"), Duration::from_secs(20), || async {
        events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
}

/// Runs `cargo xtask ARGS` with extra environment; returns (success, stdout+stderr).
pub fn xtask(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = xtask::paths::cargo()
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running cargo xtask");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The first port of `n` consecutive free ports on 127.0.0.1 (for a second, throw-away testenv;
/// picked at random so parallel runs on one machine do not collide). The block lies below
/// Linux's ephemeral range (32768-60999), where the suite's own outgoing connections and fault
/// proxies (port 0) take ports: a free port there can be gone a moment later.
pub fn free_port_block(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand_u16() % 1_200) * 10;
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {n} free ports found");
}

fn rand_u16() -> u16 {
    // Good enough spread for picking a port block; no crate needed.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(7)) as u16
}

/// Runs `git -C dir ARGS` as the CI user; panics with git's stderr on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_with_env(dir, args, &[])
}

/// [`git`] with more environment (e.g. `GNUPGHOME` for a signing key).
pub fn git_with_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "CI")
        .env("GIT_AUTHOR_EMAIL", "ci@example.test")
        .env("GIT_COMMITTER_NAME", "CI")
        .env("GIT_COMMITTER_EMAIL", "ci@example.test")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
