//! The driver's side of waves: what a bundle's wave gate is asked with (its waves, this node's
//! place, the release), the reports read when the gate needs them, and this store's report
//! published after the bundle's reconcile. What any of it means is `shared::waves`' and
//! `shared::report`'s; the registry traffic is `source::reports`'.

use std::collections::BTreeMap;

use shared::gate::{Reports as Read, WaveCheck};
use shared::k8s::Time;
use shared::report::{Gated, Live, Report, SCHEMA};
use shared::state::Record;

use super::Driver;
use crate::desired::DesiredBundle;
use crate::source::registry::Registries;
use crate::source::reports::Reports;

/// What the driver needs for waves: the node's `waves` section, its reports adapter, the
/// session's registries and the node's labels.
#[derive(Clone, Copy)]
pub struct WavesCtx<'a> {
    pub reports: &'a Reports,
    pub registries: &'a Registries,
    pub config: &'a shared::config::Waves,
    pub labels: &'a BTreeMap<String, String>,
}

/// A bundle's wave gate inputs, or why the bundle is held before any gate (its waves cannot be
/// known, or the node has nowhere to read reports).
pub(super) enum Prepared<'d> {
    NoWaves,
    Held(String),
    Check { waves: &'d [shared::waves::Wave], release: &'d str },
}

impl Driver<'_> {
    pub(super) fn wave_inputs<'d>(&self, desired: &'d DesiredBundle) -> Prepared<'d> {
        let (waves, release) = match (&desired.waves, &desired.release) {
            (None, _) => return Prepared::NoWaves,
            (Some(Err(why)), _) => return Prepared::Held(format!("held: {why}")),
            (Some(Ok(w)), Some(r)) => (&w.waves, r.as_str()),
            (Some(Ok(_)), None) => return Prepared::Held("held: the bundle's release is not known".into()),
        };
        if self.waves.is_none() {
            return Prepared::Held(
                "held: the bundle has waves but the node config has no `waves.reports` to read them from".into(),
            );
        }
        Prepared::Check { waves, release }
    }

    /// The gate's inputs for `waves` (reports not read yet).
    pub(super) fn wave_check<'c>(
        &'c self,
        waves: &'c [shared::waves::Wave],
        release: &'c str,
        reports: Option<&'c Read>,
    ) -> Option<WaveCheck<'c>> {
        let ctx = self.waves?;
        Some(WaveCheck {
            waves,
            place: shared::waves::place(waves, ctx.labels),
            labels: ctx.labels,
            store: self.agent_id,
            release,
            reports,
            reread: ctx.config.interval.secs(),
        })
    }

    /// The reports a gate asked for: the wave before this node's and this wave's members.
    pub(super) async fn read_reports(&self, bundle: &str, check: &WaveCheck<'_>, now: Time) -> Read {
        let (Some(ctx), Some(mine)) = (self.waves, check.place) else { return Read::default() };
        let previous = mine.checked_sub(1).map(|i| check.waves[i].name.as_str());
        let read = ctx
            .reports
            .read(ctx.registries, bundle, previous, &check.waves[mine].name, ctx.config.interval.secs(), now)
            .await;
        for p in &read.problems {
            self.say(bundle, &format!("reports: {p} (not counted)"));
        }
        read
    }

    /// Publishes this store's report on the bundle from its record, when `shared::report::due`
    /// says so. Stores of the last wave refresh nothing (no gate reads them); the others
    /// republish an unchanged report every `waves.refresh`.
    pub(super) async fn publish(&self, desired: &DesiredBundle, commit: &str, gated: &Gated, live: Live, now: Time) {
        let (Some(ctx), Some(Ok(waves)), Some(release)) = (self.waves, &desired.waves, &desired.release) else {
            return;
        };
        if self.dry_run {
            return;
        }
        let Some(mine) = shared::waves::place(&waves.waves, ctx.labels) else { return };
        let record = match self.store.load(&desired.name).await {
            Ok(r) => r.unwrap_or_else(|| Record::new(&desired.name)),
            Err(e) => {
                self.say(&desired.name, &format!("report not published: reading the record: {e:#}"));
                return;
            }
        };
        let (state, since, running) = record.report_state(release, gated, live, now);
        let report = Report {
            schema: SCHEMA,
            store: self.agent_id.to_owned(),
            labels: ctx.labels.clone(),
            wave: waves.waves[mine].name.clone(),
            published: now,
            bundle: desired.name.clone(),
            release: release.clone(),
            commit: commit.to_owned(),
            state,
            since,
            running,
        };
        let last_wave = mine + 1 == waves.waves.len();
        let refresh = (!last_wave).then(|| ctx.config.refresh.secs());
        match ctx.reports.publish(ctx.registries, report, refresh).await {
            Ok(true) => self.say(&desired.name, "report published"),
            Ok(false) => {}
            Err(e) => self.say(&desired.name, &format!("report not published: {e}")),
        }
    }

    /// A bundle whose kept plan still holds (not rendered this poll): its last report is
    /// published again once `waves.refresh` is over, so readers still see this store alive.
    pub async fn refresh_report(&self, bundle: &str, now: Time) {
        let Some(ctx) = self.waves else { return };
        let Some((last, Some(refresh))) = ctx.reports.last_published(bundle) else { return };
        let next = Report { published: now, ..last };
        if let Err(e) = ctx.reports.publish(ctx.registries, next, Some(refresh)).await {
            self.say(bundle, &format!("report not refreshed: {e}"));
        }
    }
}
