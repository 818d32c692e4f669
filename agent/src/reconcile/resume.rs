//! Unfinished work first: state Secrets left behind their node's record are written again,
//! rollouts and rollbacks a previous run left in its records are finished from the records
//! alone (no git, no registry); and the test seam that stops after a step.

use std::time::Duration;

use shared::state::Phase;

use super::{BundleResult, Driver};

impl Driver<'_> {
    /// Finishes every rollout or rollback a previous run left in its records.
    pub async fn resume(&self) -> anyhow::Result<Vec<BundleResult>> {
        let mut out = Vec::new();
        let records = self.store.all().await?;
        if !self.dry_run {
            for (bundle, written) in self.store.write_behind().await {
                match written {
                    Ok(()) => self.say(&bundle, "wrote the state Secret again: it was behind this node's record"),
                    Err(e) => {
                        self.say(&bundle, &format!("warning: the state Secret is behind this node's record: {e}"))
                    }
                }
            }
        }
        for record in records {
            if record.phase == Phase::Idle || self.dry_run {
                continue;
            }
            self.say(&record.bundle, &format!("resuming: {} was interrupted", record.phase.name()));
            out.push(self.finish(record, true).await);
        }
        Ok(out)
    }
}

/// Test seam for restart safety: with `GITOPS_AGENT_PAUSE_AT` set to `before-apply`,
/// `mid-rollout` or `mid-rollback`, the agent stops right after that step's record was persisted,
/// says `paused at <step>` on stderr and waits, so a test can SIGKILL it at a known point. Unset
/// (always, outside tests) it costs one variable lookup per step.
pub(super) async fn pause_at(step: &str) {
    if std::env::var("GITOPS_AGENT_PAUSE_AT").is_ok_and(|v| v == step) {
        eprintln!("paused at {step}");
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}
