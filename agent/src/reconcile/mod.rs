//! The driver: the one place that sequences side effects of a reconcile. For each bundle it
//! runs the preflight, plans, asks `shared::gate` what to do (which asks `shared::state::next`,
//! the windows and the idle gate), persists the record before each step, and does the I/O of
//! the chosen arm: apply (server-side, in dependency order), watch, record the result or roll
//! back. Unfinished work found in the records (an agent killed mid-rollout) is finished first,
//! from the records alone: no git, no registry.
//!
//! The rooms: `plan` (preflight, plan, apply, delete), `rollout` (a record driven to its end:
//! apply, watch, drain, Events), `rollback` (by hand, and `retry`), `adopt` (objects found
//! running), `resume` (unfinished records, and the pause test seam).

mod adopt;
mod plan;
mod prepull;
mod removal;
mod resume;
mod rollback;
mod rollout;
mod waves;

pub use waves::WavesCtx;

use serde::Serialize;
use serde_json::Value;

use shared::fault::Cause;
use shared::gate::{Chain, DryRun, Gate, Observed};
use shared::k8s::Time;
use shared::outcome::Outcome;
use shared::plan::{Action, ObjectPlan, Summary};
use shared::rollout::{Limits, Step};
use shared::state::{Record, Revision, Snapshot, rendered_hash};
use shared::window::Change;

use crate::cluster::{Cluster, ClusterError};
use crate::desired::DesiredBundle;
use crate::state::StateStore;
use crate::watch::unix_now;

pub use plan::plan_objects;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleResult {
    pub bundle: String,
    pub result: Outcome,
    /// `commit/hash` prefixes of the revision concerned.
    pub revision: Option<String>,
    pub message: String,
    pub summary: Option<Summary>,
    /// Objects that would change (dry-run) or changed.
    pub objects: Vec<ObjectPlan>,
    /// When a deferred bundle should be looked at again (a rollout window opens, idle pods are
    /// checked again): the daemon wakes for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
    /// How the old pods of each drained workload ended (drained cleanly, sessions cut).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drains: Vec<shared::drain::Report>,
    /// A waiting bundle's new images pulled onto the node ahead (`shared::prepull`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepull: Option<shared::prepull::Progress>,
}

impl BundleResult {
    pub fn new(bundle: &str, result: Outcome, message: impl Into<String>) -> BundleResult {
        BundleResult {
            bundle: bundle.to_owned(),
            result,
            revision: None,
            message: message.into(),
            summary: None,
            objects: Vec::new(),
            retry_at: None,
            drains: Vec::new(),
            prepull: None,
        }
    }
}

pub struct Driver<'a> {
    pub cluster: &'a Cluster,
    pub store: &'a StateStore,
    pub agent_id: &'a str,
    /// Node config's rollout defaults.
    pub defaults: Limits,
    /// The node's drain window (`rollout.drainWindow`) in seconds, for drains that set none.
    pub drain_window: i64,
    pub dry_run: bool,
    /// The node's rollout windows (`rollout.windows`); a bundle's own add to them.
    pub windows: &'a [shared::window::WindowSpec],
    /// `--ignore-windows`: an emergency rollout (rollbacks ignore windows anyway).
    pub ignore_windows: bool,
    /// Hears progress lines (verdict changes, steps), for the log.
    pub progress: &'a (dyn Fn(&str, &str) + Sync),
    /// Waves across stores: set once the session is known (its registries, the node's labels)
    /// and the node config has `waves`.
    pub waves: Option<WavesCtx<'a>>,
    /// `prepull` when enabled: a waiting bundle's new images are pulled onto the node ahead.
    pub prepull: Option<&'a shared::config::Prepull>,
    /// `identity.nodeName`: the node pre-pull pods are pinned to.
    pub node_name: &'a str,
    /// Held by a bundle whose drains estimate the room for a surge pod, from its preflight to
    /// the end of its rollout: two at once could each count the room the other's surge pod is
    /// about to take (`shared::drain::estimates_room`). The cycle's, shared by its bundles.
    pub surge_room: Option<&'a tokio::sync::Mutex<()>>,
}

impl Driver<'_> {
    fn say(&self, bundle: &str, line: &str) {
        (self.progress)(bundle, line);
    }

    async fn save(&self, record: &Record) -> anyhow::Result<()> {
        let saved = self.store.save(record).await?;
        if let Some(e) = saved.secret_error {
            self.say(&record.bundle, &format!("warning: {e} (the local state file holds the record)"));
        }
        Ok(())
    }

    /// An environment fault (`shared::fault`) stopped the plan or the apply of `revision`: the
    /// record goes back to idle with a retry time (growing while the same revision keeps
    /// meeting faults), nothing quarantined, nothing rolled back; the result says when, so the
    /// daemon wakes for it. A dry run records nothing.
    pub(super) async fn retry_later(&self, record: &Record, revision: &Revision, what: &str) -> BundleResult {
        let now = unix_now();
        let next = record.environment_fault(&revision.hash, what, now);
        let retry_at = next.retrying.as_ref().map_or(now, |w| w.retry_at);
        self.say(&record.bundle, &format!("{what}; the environment is not ready, retrying in {}s", retry_at - now));
        if !self.dry_run
            && let Err(e) = self.save(&next).await
        {
            return BundleResult::new(&record.bundle, Outcome::Interrupted, format!("saving the record: {e:#}"));
        }
        let Gate::Retrying { reason, .. } = Gate::retrying(what, retry_at, now) else {
            unreachable!("Gate::retrying makes a Retrying gate")
        };
        let mut r = BundleResult::new(&record.bundle, Outcome::Retrying, reason);
        r.retry_at = (!self.dry_run).then_some(retry_at);
        r.revision = Some(revision.short());
        r
    }

    /// One bundle's reconcile from its desired objects at `commit`: preflight, plan, the gate
    /// chain's decision (`shared::gate`), then the I/O of the arm it chose; then this store's
    /// report on it when it has waves.
    pub async fn bundle(&self, desired: &DesiredBundle, commit: &str) -> BundleResult {
        let estimates = || crate::drain::estimates_room(&desired.spec.policy, self.drain_window, &desired.manifests);
        let _room = match self.surge_room {
            Some(room) if estimates() => Some(room.lock().await),
            _ => None,
        };
        let mut gated = shared::report::Gated::No;
        let result = self.bundle_gated(desired, commit, &mut gated).await;
        let live = match result.result {
            Outcome::InSync | Outcome::Verified | Outcome::RolledOut => shared::report::Live::AsReleased,
            _ => shared::report::Live::Other,
        };
        self.publish(desired, commit, &gated, live, unix_now()).await;
        result
    }

    async fn bundle_gated(
        &self,
        desired: &DesiredBundle,
        commit: &str,
        gated: &mut shared::report::Gated,
    ) -> BundleResult {
        let name = desired.name.as_str();
        let policy = &desired.spec.policy;
        let (limits, manifests) = match self.preflight(desired).await {
            Ok(ready) => ready,
            Err(blocked) => return blocked,
        };
        let record = match self.store.load(name).await {
            Ok(r) => r.unwrap_or_else(|| Record::new(name)),
            Err(e) => return BundleResult::new(name, Outcome::Interrupted, format!("reading the record: {e:#}")),
        };
        // Back in Git after it left: reconciled as any bundle, from what its record holds.
        let record = match self.back_in_git(record).await {
            Ok(r) => r,
            Err(interrupted) => return interrupted,
        };
        let objects: Vec<Value> = manifests.iter().map(|m| m.object.clone()).collect();
        let mut images: Vec<String> = desired.images.iter().map(|i| i.running.clone()).collect();
        images.sort();
        images.dedup();
        let verified = desired.verified_images();
        let candidate = Snapshot {
            revision: Revision {
                commit: commit.to_owned(),
                hash: rendered_hash(&objects),
                images,
                verified,
                release: desired.release.clone(),
            },
            objects,
            at: unix_now(),
        };
        let plans = match plan_objects(self.cluster, &manifests, &record, self.agent_id, name).await {
            Ok(p) => p,
            Err(e) => match cause(&e) {
                // The namespace is terminating, the API server answers 5xx, ...: the revision
                // was never judged, so it waits and is tried again, by itself.
                Cause::Environment(_) => {
                    let mut r = self.retry_later(&record, &candidate.revision, &format!("planning: {e}")).await;
                    r.revision = Some(candidate.revision.short());
                    return r;
                }
                Cause::Revision => return BundleResult::new(name, Outcome::Interrupted, format!("planning: {e}")),
            },
        };
        let force = shared::gate::force_conflicts(&record, policy);
        let refused = shared::plan::blockers(&plans, force);
        let prunes: Vec<&ObjectPlan> = plans.iter().filter(|p| p.action == Action::Prune).collect();
        let mut summary = Summary::of(&plans);
        if !policy.prune {
            summary.prune = 0;
        }
        let changed: Vec<ObjectPlan> = plans
            .iter()
            .filter(|p| p.action != Action::Unchanged && (policy.prune || p.action != Action::Prune))
            .cloned()
            .collect();
        let with = |mut r: BundleResult| {
            r.revision = Some(candidate.revision.short());
            r.summary = Some(summary);
            r.objects = changed.clone();
            r
        };

        let now = unix_now();
        let (wave_list, release) = match self.wave_inputs(desired) {
            waves::Prepared::NoWaves => (None, ""),
            waves::Prepared::Held(reason) => {
                *gated = shared::report::Gated::Held(reason.clone());
                return with(BundleResult::new(name, Outcome::Blocked, reason));
            }
            waves::Prepared::Check { waves, release } => (Some(waves), release),
        };
        let mut seen = Observed {
            refused: &refused,
            record: &record,
            hash: &candidate.revision.hash,
            in_sync: summary.in_sync(),
            node_windows: self.windows,
            bundle_windows: &policy.rollout_windows,
            change: if self.ignore_windows { Change::EmergencyRollout } else { Change::Rollout },
            drains: &limits.drains,
            dry_run: if self.dry_run { DryRun::Yes } else { DryRun::No },
            waves: wave_list.and_then(|w| self.wave_check(w, release, None)),
            now,
        };
        let read;
        let mut chain = shared::gate::before_idle(&seen);
        if let (Chain::ReadReports, Some(check)) = (&chain, &seen.waves) {
            read = self.read_reports(name, check, now).await;
            seen.waves = wave_list.and_then(|w| self.wave_check(w, release, Some(&read)));
            chain = shared::gate::before_idle(&seen);
        }
        let decision = match chain {
            Chain::Decided(d) => d,
            Chain::ReadReports => unreachable!("the reports were read"),
            Chain::ReadIdle { notes } => {
                for n in &notes {
                    self.say(name, n);
                }
                let waiting = shared::drain::waiting_for_idle(&limits.drains);
                let readings = crate::drain::readings(self.cluster, &waiting, &candidate.objects).await;
                shared::gate::after_idle(&seen, &readings)
            }
        };
        for n in &decision.notes {
            self.say(name, n);
        }
        *gated = decision.wave.clone();
        // Pre-pull serves a bundle that waits; any other answer ends it (a rollout starting
        // among them, before its apply).
        let waits = shared::prepull::waits(&decision);
        let record = match decision.save {
            None => record,
            Some(saved) => {
                if let Err(e) = self.save(&saved).await {
                    return BundleResult::new(name, Outcome::Interrupted, format!("saving the record: {e:#}"));
                }
                *saved
            }
        };

        if !waits {
            self.prepull_cleanup(name, &candidate.objects).await;
        }
        match decision.gate {
            Gate::InSync => {
                // Git went back to what runs: an environment retry of another revision is moot.
                if record.retrying.is_some()
                    && !self.dry_run
                    && let Err(e) = self.save(&record.forget_retry()).await
                {
                    return BundleResult::new(name, Outcome::Interrupted, format!("saving the record: {e:#}"));
                }
                with(BundleResult::new(name, Outcome::InSync, "live objects match the last-known-good"))
            }
            Gate::Retrying { reason, retry_at } => {
                let mut r = with(BundleResult::new(name, Outcome::Retrying, reason));
                r.retry_at = Some(retry_at);
                r
            }
            Gate::Blocked { reason, retry_at } => {
                let mut r = with(BundleResult::new(name, Outcome::Blocked, reason));
                r.retry_at = retry_at;
                if waits && let Some((progress, recheck_at)) = self.prepull_step(name, &candidate, &record).await {
                    r.retry_at = match (retry_at, recheck_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    r.prepull = Some(progress);
                }
                r
            }
            Gate::WouldVerify => {
                with(BundleResult::new(name, Outcome::WouldApply, "would verify the running objects and record them"))
            }
            Gate::Verify => match self.watch(name, &candidate.objects, now, &limits).await {
                Step::Done => {
                    let rec = record.adopted(candidate.clone(), "live objects match Git and are healthy", unix_now());
                    if let Err(e) = self.save(&rec).await {
                        return BundleResult::new(name, Outcome::Interrupted, format!("saving the record: {e:#}"));
                    }
                    with(BundleResult::new(
                        name,
                        Outcome::Verified,
                        "live objects match Git and are healthy: recorded as last-known-good",
                    ))
                }
                Step::Failed { reason, .. } => with(BundleResult::new(
                    name,
                    Outcome::Blocked,
                    format!("live objects match Git but are not healthy: {reason}"),
                )),
                Step::Continue { .. } => unreachable!("until_settled returns only when settled"),
            },
            Gate::WouldRollOut => with(BundleResult::new(
                name,
                Outcome::WouldApply,
                format!(
                    "would apply: {} to create, {} to update, {} to prune",
                    summary.create, summary.update, summary.prune
                ),
            )),
            Gate::RollOut => {
                let mut record = record;
                if record.lkg.is_none() {
                    match self.adopt(name, &manifests, &plans, &limits).await {
                        Ok(Some(snapshot)) => {
                            record = record.adopted(
                                snapshot,
                                "found running and healthy before the first rollout",
                                unix_now(),
                            );
                            self.say(name, "adopted the running objects as the first last-known-good");
                        }
                        Ok(None) => {}
                        Err(e) => return with(BundleResult::new(name, Outcome::Blocked, e)),
                    }
                }
                let record = record.start_rollout(candidate.clone(), limits, force, unix_now());
                if let Err(e) = self.save(&record).await {
                    return BundleResult::new(name, Outcome::Interrupted, format!("saving the record: {e:#}"));
                }
                let mut r = self.finish(record, false).await;
                if r.result == Outcome::RolledOut && policy.prune && !prunes.is_empty() {
                    let gone: Vec<Value> = prunes.iter().map(|p| plan::stub(p)).collect();
                    match self.delete_owned(name, &gone).await {
                        Ok(deleted) => r.message = format!("{}; pruned {}", r.message, deleted.join(", ")),
                        Err(e) => r.message = format!("{}; pruning failed: {e}", r.message),
                    }
                }
                with(r)
            }
        }
    }
}

/// What an API error says about the revision (`shared::fault::classify`): the adapter's error
/// in the classification's terms (no answer at all is the API server unreachable).
pub(crate) fn cause(e: &ClusterError) -> Cause {
    match e {
        ClusterError::Unreachable { reason, .. } => shared::fault::classify(None, reason),
        ClusterError::Object { status, reason, .. } => shared::fault::classify(*status, reason),
        ClusterError::UnknownKind { .. } | ClusterError::Config { .. } => Cause::Revision,
    }
}
