//! `cargo xtask webhook-load`: the webhook endpoint under a bounded burst (10,000 requests in
//! 10 s over loopback, good and bad signatures, 20 senders) against `agent run` on the testenv.
//! The measurement is the e2e test `webhook_load::...` (ignored in the suite, so it never runs
//! beside other tests): it asserts the correctness bounds and prints the figures
//! (`/healthz` p50/p99/max, RSS before/peak/after, reconciles), which docs/reliability.md keeps.

use anyhow::{Result, bail};
use xtask::{paths, testenv};

/// The test that does the burst, by its full name in the e2e binary.
const TEST: &str =
    "webhook_load::a_burst_of_webhooks_leaves_healthz_answering_memory_bounded_and_only_debounced_reconciles";

/// Starts the testenv if it is not up (and stops it again after), then runs the load test alone.
pub async fn webhook_load() -> Result<()> {
    let was_up = testenv::running(&paths::run_dir()).is_some();
    testenv::up(&testenv::UpOptions::default()).await?;
    eprintln!("xtask webhook-load: {TEST}");
    let status = paths::cargo()
        .args(["test", "-p", "agent", "--test", "e2e", "--", "--ignored", "--exact", "--nocapture", TEST])
        .status()?;
    if !was_up {
        testenv::down()?;
    }
    if !status.success() {
        bail!("the webhook load test failed ({status})");
    }
    Ok(())
}
