//! `cargo xtask bench [--quick]`: what a poll costs and how fast a first sync is, on the testenv.
//! The measurement is the e2e test `bench::...` (ignored in the suite, so it runs alone): M
//! bundles (quick: 10, 5 Helm + 5 raw; full: 50) with distinct images, `agent run` (the release
//! build for the full bench, the debug one for quick), requests counted at the server side. It
//! prints a table and writes target/bench/report.json; docs/performance.md keeps the last table.

use anyhow::{Result, bail};
use xtask::{paths, testenv};

/// The test that measures, by its full name in the e2e binary.
const TEST: &str = "bench::bench_first_sync_and_no_change_polls";

/// Sizes and build of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 10 bundles, the debug build: CI runs it so the bench keeps working.
    Quick,
    /// 50 bundles, the release build.
    Full,
}

/// Starts the testenv if it is not up (and stops it again after), then runs the bench alone.
pub async fn bench(size: Size) -> Result<()> {
    let target = paths::workspace_root().join("target");
    let (bundles, agent) = match size {
        Size::Quick => (10, None),
        Size::Full => {
            eprintln!("xtask bench: cargo build --release -p agent");
            if !paths::cargo().args(["build", "--release", "-p", "agent"]).status()?.success() {
                bail!("the release build of the agent failed");
            }
            (50, Some(target.join("release/agent")))
        }
    };
    let report = target.join("bench/report.json");
    let was_up = testenv::running(&paths::run_dir()).is_some();
    testenv::up(&testenv::UpOptions::default()).await?;
    eprintln!("xtask bench: {bundles} bundles: {TEST}");
    let mut cmd = paths::cargo();
    cmd.args(["test", "-p", "agent", "--test", "e2e", "--", "--ignored", "--exact", "--nocapture", TEST])
        .env("GITOPS_BENCH_BUNDLES", bundles.to_string())
        .env("GITOPS_BENCH_REPORT", &report);
    if let Some(agent) = &agent {
        cmd.env("GITOPS_BENCH_AGENT", agent);
    }
    let status = cmd.status()?;
    if !was_up {
        testenv::down()?;
    }
    if !status.success() {
        bail!("the bench failed ({status})");
    }
    eprintln!("xtask bench: {}", report.display());
    Ok(())
}
