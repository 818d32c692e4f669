//! By hand: `agent rollback` (back to the last-known-good or an earlier revision),
//! `agent retry` (lift a quarantine), `agent pause` and `agent resume`.

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
    /// A release held by its wave gate is started anyway: a deliberate override, recorded with
    /// `by` and the time.
    pub async fn retry(&self, bundle: &str, by: &str) -> anyhow::Result<String> {
        let record = self.store.load(bundle).await?.ok_or_else(|| anyhow::anyhow!("no record of bundle {bundle}"))?;
        if let Some(overridden) = record.override_wave(by, unix_now()) {
            let held = record.wave_held.as_ref().map(|h| h.reason.clone()).unwrap_or_default();
            let overridden = if overridden.quarantine.is_some() { overridden.retry() } else { overridden };
            self.save(&overridden).await?;
            return Ok(format!(
                "overrode the wave gate of {bundle} ({held}), recorded as by {by}; the next reconcile starts the release"
            ));
        }
        let Some(q) = record.quarantine.clone() else {
            return Ok(format!("bundle {bundle} has no quarantined revision and no release held by its wave"));
        };
        self.save(&record.retry()).await?;
        Ok(format!("lifted the quarantine of {} ({}); the next reconcile tries it again", q.revision.short(), q.reason))
    }

    /// `agent pause BUNDLE` (with a reason) and `agent resume BUNDLE` (without): a new version of
    /// the record; what to tell the operator.
    pub async fn pause(&self, bundle: &str, reason: Option<&str>) -> anyhow::Result<String> {
        let record = self.store.load(bundle).await?;
        let known = record.is_some();
        let record = record.unwrap_or_else(|| shared::state::Record::new(bundle));
        let mut said = String::new();
        if record.phase != shared::state::Phase::Idle && reason.is_some() {
            said = format!(
                "note: {bundle} is {} now; that finishes first (stopping half-way is never safer)\n",
                record.phase.name()
            );
        }
        let next = match reason {
            Some(r) => record.pause(r, unix_now()),
            None if record.paused.is_none() => anyhow::bail!("{bundle} is not paused"),
            None => record.resume(),
        };
        self.save(&next).await?;
        said.push_str(&match reason {
            Some(_) if known => format!("paused {bundle}: no rollout starts until `agent resume {bundle}`"),
            Some(_) => {
                format!("paused {bundle} before its first rollout: nothing starts until `agent resume {bundle}`")
            }
            None => format!("resumed {bundle}"),
        });
        Ok(said)
    }
}
