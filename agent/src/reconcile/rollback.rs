//! By hand: `agent rollback` (back to the last-known-good or an earlier revision) and
//! `agent retry` (lift a quarantine).

use shared::rollout::Limits;

use super::{BundleResult, Driver};
use crate::watch::unix_now;

impl Driver<'_> {
    /// `agent rollback BUNDLE [--to REVISION]`.
    pub async fn rollback(&self, bundle: &str, to: Option<&str>, limits: Limits) -> anyhow::Result<BundleResult> {
        let record =
            self.store.load(bundle).await?.ok_or_else(|| {
                anyhow::anyhow!("no record of bundle {bundle}: it was never rolled out by this agent")
            })?;
        let record = record.manual_rollback(to, limits, unix_now()).map_err(anyhow::Error::msg)?;
        self.save(&record).await?;
        Ok(self.finish(record, false).await)
    }

    /// `agent retry BUNDLE`: lifts the quarantine; the next reconcile tries the revision again.
    pub async fn retry(&self, bundle: &str) -> anyhow::Result<String> {
        let record = self.store.load(bundle).await?.ok_or_else(|| anyhow::anyhow!("no record of bundle {bundle}"))?;
        let Some(q) = record.quarantine.clone() else {
            return Ok(format!("bundle {bundle} has no quarantined revision"));
        };
        self.save(&record.retry()).await?;
        Ok(format!("lifted the quarantine of {} ({}); the next reconcile tries it again", q.revision.short(), q.reason))
    }
}
