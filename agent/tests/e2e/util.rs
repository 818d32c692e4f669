//! Helpers shared by the e2e tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 200 ms until it yields `Some`, or panics after `timeout` naming `what`
/// and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(observed) => observed,
        };
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last seen: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `cargo xtask ARGS` with extra environment; returns (success, stdout+stderr).
pub fn xtask(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .output()
        .expect("running cargo xtask");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
