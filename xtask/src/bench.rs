//! `cargo xtask bench [--quick]`: what a poll, a change and a first sync cost, on the testenv,
//! beside the peers measured in the same run. The measurement is the e2e test `bench::...`
//! (ignored in the suite, so it runs alone); this sets its sizes: quick (CI) 10 bundles, a
//! history of 500 files and 50 commits, RSS at 2 and 5 bundles, 3 webhook → apply samples, the
//! debug build, no Flux; full 50 bundles, 10,000 files and 2,000 commits, RSS at 10, 50 and 200
//! bundles, 20 samples, the agent as it ships (the static musl `release-image` build of the image
//! and the host unit), and Flux's source-, kustomize- and helm-controller (built from the Go
//! module proxy, cached; `--without-flux` leaves them out). It prints one table and writes
//! target/bench/report.json; docs/performance.md keeps the last table.

use anyhow::{Result, bail};
use xtask::{paths, testenv, tools};

/// The test that measures, by its full name in the e2e binary.
const TEST: &str = "bench::bench_first_sync_and_no_change_polls";

/// Sizes and build of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Small sizes, the debug build, no Flux: CI runs it so the bench keeps working.
    Quick,
    /// 50 bundles, the agent as it ships, Flux side by side unless `without_flux`.
    Full { without_flux: bool },
}

/// The test's environment for `size`: (variable, value).
fn settings(size: Size) -> Vec<(&'static str, String)> {
    let (bundles, slope, history, samples) = match size {
        Size::Quick => (10, "2,5", "500x50", 3),
        Size::Full { .. } => (50, "10,50,200", "10000x2000", 20),
    };
    vec![
        ("GITOPS_BENCH_BUNDLES", bundles.to_string()),
        // A shorter slope when asked (the 200-bundle first sync is long on a busy machine).
        ("GITOPS_BENCH_SLOPE", std::env::var("GITOPS_BENCH_SLOPE").unwrap_or_else(|_| slope.to_owned())),
        ("GITOPS_BENCH_HISTORY", history.to_owned()),
        ("GITOPS_BENCH_LATENCY_SAMPLES", samples.to_string()),
    ]
}

/// Starts the testenv if it is not up (and stops it again after), then runs the bench alone.
pub async fn bench(size: Size) -> Result<()> {
    let target = paths::workspace_root().join("target");
    let mut env = settings(size);
    let started = std::time::Instant::now();
    if let Size::Full { without_flux } = size {
        // The binary that ships (the image's and the host unit's), so its size and memory are
        // the product's.
        let agent = xtask::agent_image::build_agent()?;
        env.push(("GITOPS_BENCH_AGENT", agent.display().to_string()));
        if without_flux {
            eprintln!("xtask bench: --without-flux: Flux's controllers are not built or run");
        }
    }
    if let Size::Full { without_flux: false } = size {
        let (dir, failed) = tools::ensure_flux()?;
        env.push(("GITOPS_BENCH_FLUX", dir.display().to_string()));
        let errors: serde_json::Map<String, serde_json::Value> =
            failed.into_iter().map(|(k, v)| (k, v.into())).collect();
        env.push(("GITOPS_BENCH_FLUX_ERRORS", serde_json::Value::Object(errors).to_string()));
    }
    let report = target.join("bench/report.json");
    let was_up = testenv::running(&paths::run_dir()).is_some();
    testenv::up(&testenv::UpOptions::default()).await?;
    eprintln!("xtask bench: {TEST} with {env:?}");
    let mut cmd = paths::cargo();
    cmd.args(["test", "-p", "agent", "--test", "e2e", "--", "--ignored", "--exact", "--nocapture", TEST])
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .env("GITOPS_BENCH_REPORT", &report);
    let status = cmd.status()?;
    if !was_up {
        testenv::down()?;
    }
    if !status.success() {
        bail!("the bench failed ({status})");
    }
    eprintln!("xtask bench: {} ({:.0} s in all)", report.display(), started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_bench_is_small_and_leaves_flux_out() {
        let quick = settings(Size::Quick);
        let get = |k: &str| quick.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("GITOPS_BENCH_BUNDLES").as_deref(), Some("10"));
        assert_eq!(get("GITOPS_BENCH_HISTORY").as_deref(), Some("500x50"));
        assert_eq!(get("GITOPS_BENCH_FLUX"), None);
        let full = settings(Size::Full { without_flux: false });
        assert!(full.iter().any(|(k, v)| *k == "GITOPS_BENCH_SLOPE" && v == "10,50,200"), "{full:?}");
        assert!(full.iter().any(|(k, v)| *k == "GITOPS_BENCH_HISTORY" && v == "10000x2000"), "{full:?}");
    }
}
