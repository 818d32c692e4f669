//! The driver: the one place that sequences side effects of a reconcile. For each bundle it
//! plans, asks `shared::state::next` what to do, persists the record before each step, applies
//! (server-side, in dependency order), watches the rollout, and records the result or rolls
//! back. Unfinished work found in the records (an agent killed mid-rollout) is finished first,
//! from the records alone: no git, no registry.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use shared::desired::{in_apply_order, ownership};
use shared::drain::Idle;
use shared::plan::{Action, ObjectPlan, Summary};
use shared::probe::Health;
use shared::render::Manifest;
use shared::rollout::{Limits, Step, Verdict};
use shared::state::{Next, OutcomeKind, Phase, Record, Revision, Snapshot, Time, object_id, rendered_hash};
use shared::window::{Change, Gate};

use crate::cluster::{Cluster, ClusterError};
use crate::desired::DesiredBundle;
use crate::state::StateStore;
use crate::watch::{is_workload, unix_now, until_settled};

/// Objects observed at once while planning.
const OBSERVE_CONCURRENCY: usize = 8;

/// How long a deletion (prune, or what a failed revision added) is waited for.
const DELETE_WAIT: Duration = Duration::from_secs(60);

/// What happened to one bundle in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Result {
    /// Live objects equal the last-known-good; nothing was done.
    InSync,
    /// Live objects already matched and were verified healthy: recorded as last-known-good.
    Verified,
    RolledOut,
    RolledBack,
    /// `--dry-run`: this would be applied.
    WouldApply,
    /// Not applied: render, preflight, blast radius, conflict, quarantine, dependency.
    Blocked,
    /// Failed with no last-known-good to return to.
    FailedNoRollback,
    /// The rollback did not become healthy.
    RollbackFailed,
    /// Cut short (API server unreachable); the record says where to resume.
    Interrupted,
}

impl Result {
    /// Needs a person: what runs may be broken.
    pub fn is_critical(&self) -> bool {
        matches!(self, Result::FailedNoRollback | Result::RollbackFailed | Result::Interrupted)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleResult {
    pub bundle: String,
    pub result: Result,
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
}

impl BundleResult {
    pub fn new(bundle: &str, result: Result, message: impl Into<String>) -> BundleResult {
        BundleResult {
            bundle: bundle.to_owned(),
            result,
            revision: None,
            message: message.into(),
            summary: None,
            objects: Vec::new(),
            retry_at: None,
            drains: Vec::new(),
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
}

/// Plans one bundle's objects against the cluster: the API server's dry-run of our apply, the
/// live objects, and the objects of ours that left Git (`shared::plan`).
pub async fn plan_objects(
    cluster: &Cluster,
    manifests: &[Manifest],
    owned_cache: &mut BTreeMap<(String, String), Vec<Value>>,
    agent_id: &str,
    bundle: &str,
) -> std::result::Result<Vec<ObjectPlan>, ClusterError> {
    let observed: Vec<_> = futures::stream::iter(manifests.iter().map(|m| cluster.observe(m)))
        .buffered(OBSERVE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<std::result::Result<_, _>>()?;
    let owned = cluster.owned(agent_id, manifests, owned_cache).await?;
    let observed: BTreeMap<_, _> = manifests.iter().map(Manifest::id).zip(observed).collect();
    Ok(shared::plan::plan(manifests, &observed, &owned, agent_id, bundle))
}

fn manifests(objects: &[Value]) -> Vec<Manifest> {
    let mut out: Vec<Manifest> =
        objects.iter().map(|o| Manifest { source: String::new(), object: o.clone() }).collect();
    in_apply_order(&mut out);
    out
}

/// An API error worth retrying: the server or the way to it failed, not our object.
fn transient(e: &ClusterError) -> bool {
    match e {
        ClusterError::Unreachable { .. } => true,
        ClusterError::Object { status, .. } => status.is_none_or(|s| s == 429 || s >= 500),
        _ => false,
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_total_delay(Some(Duration::from_secs(120)))
        .without_max_times()
        .with_jitter()
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

    /// Says why a call to the API server is retried.
    fn retrying(&self, bundle: &str, e: &ClusterError, after: Duration) {
        self.say(bundle, &format!("{e}; retrying in {:.1}s", after.as_secs_f64()));
    }

    /// Applies objects in dependency order, retrying while the API server is unreachable.
    async fn apply_all(&self, bundle: &str, objects: &[Value], force: bool) -> std::result::Result<(), ClusterError> {
        for m in manifests(objects) {
            (|| self.cluster.apply(&m, false, force))
                .retry(backoff())
                .when(transient)
                .notify(|e, d| self.retrying(bundle, e, d))
                .await?;
        }
        Ok(())
    }

    /// Deletes objects by id, each only when the live object carries this agent's owner label
    /// and the bundle's label (it might have been adopted or handed over since). Deletion is in
    /// the foreground (dependents, such as a Deployment's pods, go first), so it waits, up to
    /// `DELETE_WAIT`, until they are gone; one still there then is said, not failed.
    async fn delete_owned(&self, bundle: &str, objects: &[Value]) -> std::result::Result<Vec<String>, ClusterError> {
        let mut deleted = Vec::new();
        let mut pending = Vec::new();
        for m in manifests(objects).into_iter().rev() {
            let live = (|| self.cluster.get(&m))
                .retry(backoff())
                .when(transient)
                .notify(|e, d| self.retrying(bundle, e, d))
                .await?;
            let Some(live) = live else { continue };
            if ownership(&live) == Some((self.agent_id.to_owned(), bundle.to_owned())) {
                (|| self.cluster.delete(&m))
                    .retry(backoff())
                    .when(transient)
                    .notify(|e, d| self.retrying(bundle, e, d))
                    .await?;
                deleted.push(m.id());
                pending.push(m);
            }
        }
        let gone = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_total_delay(Some(DELETE_WAIT))
            .without_max_times();
        for m in pending {
            let still_there = || async {
                match self.cluster.get(&m).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            };
            if let Err(e) = still_there.retry(gone).await {
                let why = e.map_or_else(|| "still being deleted (finalizers)".to_owned(), |e| e.to_string());
                self.say(bundle, &format!("warning: {}: {why} after {}s", m.id(), DELETE_WAIT.as_secs()));
            }
        }
        Ok(deleted)
    }

    async fn events(&self, objects: &[Value], warning: bool, reason: &str, note: &str) {
        for o in objects.iter().filter(|o| is_workload(o)) {
            let live = self.cluster.get(&Manifest { source: String::new(), object: o.clone() }).await.ok().flatten();
            if let Err(e) = self.cluster.event(self.agent_id, live.as_ref().unwrap_or(o), warning, reason, note).await {
                self.say("", &format!("warning: {e}"));
            }
        }
    }

    async fn watch(&self, bundle: &str, objects: &[Value], started: Time, limits: &Limits) -> Step {
        let say = |v: &Verdict, h: &Health| {
            let line = match (v, h) {
                (Verdict::Waiting(w), _) => format!("waiting: {w}"),
                (Verdict::Healthy, Health::Green) if limits.probes.is_empty() => "healthy".to_owned(),
                (Verdict::Healthy, Health::Green) => "healthy; health probes green".to_owned(),
                (Verdict::Healthy, Health::Pending(p)) => format!("healthy; health probes pending: {p}"),
                (Verdict::Healthy, Health::Red(r)) => format!("healthy, but {r}"),
                (Verdict::Failed { reason, .. }, _) => format!("failed: {reason}"),
            };
            self.say(bundle, &line);
        };
        let on_watch = |broken: Option<&str>| match broken {
            Some(e) => self.say(bundle, &format!("watch interrupted, re-watching with backoff: {e}")),
            None => self.say(bundle, "watch re-established"),
        };
        until_settled(self.cluster.client(), objects, started, limits, say, on_watch).await
    }

    /// The rollout watch, and beside it the drain tracker of the workloads whose drain is
    /// planned (`limits.drains`): the old pods are followed until they are gone, so the result
    /// says whether their sessions drained or were cut.
    async fn watch_draining(
        &self,
        bundle: &str,
        objects: &[Value],
        started: Time,
        limits: &Limits,
    ) -> (Step, Vec<shared::drain::Report>) {
        if limits.drains.is_empty() {
            return (self.watch(bundle, objects, started, limits).await, Vec::new());
        }
        let (tx, rx) = tokio::sync::watch::channel(crate::drain::Watched::Running);
        let watching = async {
            let step = self.watch(bundle, objects, started, limits).await;
            let watched =
                if step == Step::Done { crate::drain::Watched::Healthy } else { crate::drain::Watched::Failed };
            let _ = tx.send(watched);
            step
        };
        let tracking =
            crate::drain::track(self.cluster.client(), &limits.drains, objects, rx, |line| self.say(bundle, line));
        let (step, reports) = tokio::join!(watching, tracking);
        for r in &reports {
            self.say(bundle, &r.message);
        }
        (step, reports)
    }

    /// Events on each drained workload: `DrainedCleanly`; a warning `SessionsCut`; or a warning
    /// `DrainUnconfirmed` when a pod ended by its grace period without a session reading.
    async fn drain_events(&self, objects: &[Value], reports: &[shared::drain::Report]) {
        for r in reports {
            let Some(o) = objects.iter().find(|o| object_id(o) == r.workload) else { continue };
            let live = self.cluster.get(&Manifest { source: String::new(), object: o.clone() }).await.ok().flatten();
            let (warning, reason) = match r.result() {
                "clean" => (false, "DrainedCleanly"),
                "cut" => (true, "SessionsCut"),
                _ => (true, "DrainUnconfirmed"),
            };
            let note = format!("gitops-agent: {}", r.message);
            if let Err(e) = self.cluster.event(self.agent_id, live.as_ref().unwrap_or(o), warning, reason, &note).await
            {
                self.say("", &format!("warning: {e}"));
            }
        }
    }

    /// Finishes every rollout or rollback a previous run left in its records.
    pub async fn resume(&self) -> anyhow::Result<Vec<BundleResult>> {
        let mut out = Vec::new();
        for record in self.store.all().await? {
            if record.phase == Phase::Idle || self.dry_run {
                continue;
            }
            self.say(&record.bundle, &format!("resuming: {} was interrupted", record.phase.name()));
            out.push(self.finish(record, true).await);
        }
        Ok(out)
    }

    /// Drives a record that is rolling out or back to its end.
    async fn finish(&self, mut record: Record, resumed: bool) -> BundleResult {
        let bundle = record.bundle.clone();
        let mut drained: Vec<shared::drain::Report> = Vec::new();
        loop {
            match record.phase.clone() {
                Phase::Idle => {
                    let mut r = self.result_of(&record, resumed);
                    r.drains = drained;
                    return r;
                }
                Phase::RollingOut { candidate, started, limits, force } => {
                    pause_at("before-apply").await;
                    self.say(&bundle, &format!("applying {}", candidate.revision.short()));
                    let step = match self.apply_all(&bundle, &candidate.objects, force).await {
                        Err(e) if transient(&e) => {
                            return interrupted(&bundle, &format!("applying {}: {e}", candidate.revision.short()));
                        }
                        Err(e) => Step::Failed { reason: format!("apply failed: {e}"), image_pull: false },
                        Ok(()) => {
                            self.say(&bundle, &format!("applied {}; watching the rollout", candidate.revision.short()));
                            pause_at("mid-rollout").await;
                            let (step, reports) =
                                self.watch_draining(&bundle, &candidate.objects, started, &limits).await;
                            drained = reports;
                            step
                        }
                    };
                    let now = unix_now();
                    record = match step {
                        Step::Done => {
                            self.events(
                                &candidate.objects,
                                false,
                                "RolledOut",
                                &format!("gitops-agent rolled out {}", candidate.revision.short()),
                            )
                            .await;
                            self.drain_events(&candidate.objects, &drained).await;
                            let mut next = record.rolled_out(now);
                            if let Some(last) = next.last.as_mut().filter(|_| !drained.is_empty()) {
                                let notes: Vec<&str> = drained.iter().map(|d| d.message.as_str()).collect();
                                last.message = format!("{}; {}", last.message, notes.join("; "));
                            }
                            next
                        }
                        Step::Failed { reason, image_pull } => {
                            self.say(&bundle, &format!("rollout of {} failed: {reason}", candidate.revision.short()));
                            let next = record.rollout_failed(&reason, image_pull, now);
                            if next.phase == Phase::Idle {
                                self.events(
                                    &candidate.objects,
                                    true,
                                    "RolloutFailed",
                                    &format!("{reason}; no last-known-good to roll back to"),
                                )
                                .await;
                            }
                            next
                        }
                        Step::Continue { .. } => unreachable!("until_settled returns only when settled"),
                    };
                }
                Phase::RollingBack { failed, target, reason, started, limits, .. } => {
                    self.say(
                        &bundle,
                        &format!("rolling back {} to {}: {reason}", failed.revision.short(), target.revision.short()),
                    );
                    let applied = self.apply_all(&bundle, &target.objects, true).await;
                    let step = match applied {
                        Err(e) if transient(&e) => {
                            return interrupted(&bundle, &format!("rolling back to {}: {e}", target.revision.short()));
                        }
                        Err(e) => Step::Failed {
                            reason: format!("re-applying the last-known-good failed: {e}"),
                            image_pull: false,
                        },
                        Ok(()) => {
                            let gone: Vec<Value> = failed
                                .objects
                                .iter()
                                .filter(|o| shared::state::rollback_deletions(&failed, &target).contains(&object_id(o)))
                                .cloned()
                                .collect();
                            match self.delete_owned(&bundle, &gone).await {
                                Err(e) => {
                                    return interrupted(
                                        &bundle,
                                        &format!("deleting what {} added: {e}", failed.revision.short()),
                                    );
                                }
                                Ok(deleted) if !deleted.is_empty() => self.say(
                                    &bundle,
                                    &format!("deleted what the failed revision added: {}", deleted.join(", ")),
                                ),
                                Ok(_) => {}
                            }
                            pause_at("mid-rollback").await;
                            self.watch(&bundle, &target.objects, started, &limits.health_only()).await
                        }
                    };
                    let now = unix_now();
                    record = match step {
                        Step::Done => {
                            let note = format!(
                                "gitops-agent rolled back {} to {}: {reason}",
                                failed.revision.short(),
                                target.revision.short()
                            );
                            self.events(&target.objects, true, "RolledBack", &note).await;
                            record.rolled_back(now)
                        }
                        Step::Failed { reason: why, .. } => {
                            self.events(
                                &target.objects,
                                true,
                                "RollbackFailed",
                                &format!("{reason}; the rollback did not become healthy: {why}"),
                            )
                            .await;
                            record.rollback_failed(&why, now)
                        }
                        Step::Continue { .. } => unreachable!("until_settled returns only when settled"),
                    };
                }
            }
            if let Err(e) = self.save(&record).await {
                return BundleResult::new(&bundle, Result::Interrupted, format!("saving the record: {e:#}"));
            }
        }
    }

    fn result_of(&self, record: &Record, resumed: bool) -> BundleResult {
        let Some(last) = &record.last else { return BundleResult::new(&record.bundle, Result::InSync, "") };
        let result = match last.result {
            OutcomeKind::RolledOut => Result::RolledOut,
            OutcomeKind::Adopted => Result::Verified,
            OutcomeKind::RolledBack => Result::RolledBack,
            OutcomeKind::FailedNoRollback => Result::FailedNoRollback,
            OutcomeKind::RollbackFailed => Result::RollbackFailed,
        };
        let mut r = BundleResult::new(
            &record.bundle,
            result,
            if resumed { format!("{} (resumed after a restart)", last.message) } else { last.message.clone() },
        );
        r.revision = Some(last.revision.short());
        r
    }

    /// One bundle's reconcile from its desired objects at `commit`.
    pub async fn bundle(
        &self,
        desired: &DesiredBundle,
        commit: &str,
        owned_cache: &mut BTreeMap<(String, String), Vec<Value>>,
    ) -> BundleResult {
        let name = desired.name.as_str();
        let policy = &desired.spec.policy;
        let mut limits = match Limits::for_bundle(policy, &self.defaults) {
            Ok(l) => l,
            Err(e) => return BundleResult::new(name, Result::Blocked, e),
        };
        // The drain's fields (strategy, grace period, preStop) are part of what is applied, and
        // so of the revision: a rollback restores them too.
        let mut manifests = desired.manifests.clone();
        limits.drains = match crate::drain::for_bundle(self.cluster, policy, self.drain_window, &mut manifests).await {
            Ok(plans) => plans,
            Err(e) => return BundleResult::new(name, Result::Blocked, e),
        };
        let objects: Vec<Value> = manifests.iter().map(|m| m.object.clone()).collect();
        let unmatched = shared::probe::unmatched(&limits.probes, &objects);
        if !unmatched.is_empty() {
            return BundleResult::new(name, Result::Blocked, format!("fleet.yaml: {}", unmatched.join("; ")));
        }
        if let Err(problems) = shared::desired::check_scope(&manifests, &desired.spec.namespace, policy) {
            return BundleResult::new(
                name,
                Result::Blocked,
                format!("outside the bundle's blast radius, nothing applied: {}", problems.join("; ")),
            );
        }
        let plans = match plan_objects(self.cluster, &manifests, owned_cache, self.agent_id, name).await {
            Ok(p) => p,
            Err(e) => return BundleResult::new(name, Result::Interrupted, format!("planning: {e}")),
        };
        let mut record = match self.store.load(name).await {
            Ok(r) => r.unwrap_or_else(|| Record::new(name)),
            Err(e) => return BundleResult::new(name, Result::Interrupted, format!("reading the record: {e:#}")),
        };
        // The first time the agent meets a bundle it takes the objects over explicitly (after
        // recording what ran, see `adopt`): fields Helm, Fleet or kubectl own are forced then.
        let first_meeting = record.lkg.is_none() && record.last.is_none();
        let force = policy.force_conflicts || first_meeting;
        let refused = shared::plan::blockers(&plans, force);
        let mut images: Vec<String> = desired.images.iter().map(|i| i.running.clone()).collect();
        images.sort();
        images.dedup();
        let candidate = Snapshot {
            revision: Revision { commit: commit.to_owned(), hash: rendered_hash(&objects), images },
            objects,
            at: unix_now(),
        };
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
        if !refused.is_empty() {
            return with(BundleResult::new(
                name,
                Result::Blocked,
                format!("nothing applied: {} (set gitopsAgent.forceConflicts to take fields over)", refused.join("; ")),
            ));
        }
        if record.phase != Phase::Idle {
            return with(BundleResult::new(
                name,
                Result::Blocked,
                format!("busy: {} (finish it first)", record.phase.name()),
            ));
        }
        let now = unix_now();
        let mut next = shared::state::next(&record, &candidate.revision.hash, summary.in_sync(), now);
        let mut retry_at = None;
        if next == Next::RollOut {
            let windows = match shared::window::for_bundle(self.windows, &policy.rollout_windows) {
                Ok(w) => w,
                Err(e) => return with(BundleResult::new(name, Result::Blocked, e)),
            };
            let change = if self.ignore_windows { Change::EmergencyRollout } else { Change::Rollout };
            if let Gate::Deferred { reason, until } = shared::window::gate_change(change, &windows, now) {
                next = Next::Blocked(format!("deferred: {reason}"));
                retry_at = until;
            } else if self.ignore_windows && !windows.is_empty() {
                self.say(name, "--ignore-windows: rolling out whatever the windows say");
            }
        }
        // waitForIdle: the rollout starts once the old pods have no sessions, or maxDefer passed.
        let idle_waits = shared::drain::waiting_for_idle(&limits.drains);
        if next == Next::RollOut && !self.dry_run && !idle_waits.is_empty() {
            let readings = crate::drain::readings(self.cluster, &idle_waits, &candidate.objects).await;
            let since = record.idle_since(&candidate.revision.hash, now);
            match shared::drain::idle_for(&idle_waits, &readings, since, now) {
                Idle::Go(why) => self.say(name, &why),
                Idle::Wait { recheck_at, reason } => {
                    self.say(name, &reason);
                    if record.idle_wait.as_ref().is_none_or(|w| w.hash != candidate.revision.hash) {
                        record = record.wait_for_idle(&candidate.revision.hash, now);
                        if let Err(e) = self.save(&record).await {
                            return BundleResult::new(name, Result::Interrupted, format!("saving the record: {e:#}"));
                        }
                    }
                    next = Next::Blocked(format!("deferred: {reason}"));
                    retry_at = Some(recheck_at);
                }
            }
        }
        match next {
            Next::Nothing => with(BundleResult::new(name, Result::InSync, "live objects match the last-known-good")),
            Next::Blocked(why) => {
                let mut r = with(BundleResult::new(name, Result::Blocked, why));
                r.retry_at = retry_at;
                r
            }
            Next::Verify if self.dry_run => {
                with(BundleResult::new(name, Result::WouldApply, "would verify the running objects and record them"))
            }
            Next::Verify => match self.watch(name, &candidate.objects, now, &limits).await {
                Step::Done => {
                    let rec = record.adopted(candidate.clone(), "live objects match Git and are healthy", unix_now());
                    if let Err(e) = self.save(&rec).await {
                        return BundleResult::new(name, Result::Interrupted, format!("saving the record: {e:#}"));
                    }
                    with(BundleResult::new(
                        name,
                        Result::Verified,
                        "live objects match Git and are healthy: recorded as last-known-good",
                    ))
                }
                Step::Failed { reason, .. } => with(BundleResult::new(
                    name,
                    Result::Blocked,
                    format!("live objects match Git but are not healthy: {reason}"),
                )),
                Step::Continue { .. } => unreachable!("until_settled returns only when settled"),
            },
            Next::RollOut if self.dry_run => with(BundleResult::new(
                name,
                Result::WouldApply,
                format!(
                    "would apply: {} to create, {} to update, {} to prune",
                    summary.create, summary.update, summary.prune
                ),
            )),
            Next::RollOut => {
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
                        Err(e) => return with(BundleResult::new(name, Result::Blocked, e)),
                    }
                }
                let record = record.start_rollout(candidate.clone(), limits, force, unix_now());
                if let Err(e) = self.save(&record).await {
                    return BundleResult::new(name, Result::Interrupted, format!("saving the record: {e:#}"));
                }
                let mut r = self.finish(record, false).await;
                if r.result == Result::RolledOut && policy.prune && !prunes.is_empty() {
                    let gone: Vec<Value> = prunes.iter().map(|p| stub(p)).collect();
                    match self.delete_owned(name, &gone).await {
                        Ok(deleted) => r.message = format!("{}; pruned {}", r.message, deleted.join(", ")),
                        Err(e) => r.message = format!("{}; pruning failed: {e}", r.message),
                    }
                }
                with(r)
            }
        }
    }

    /// The first time a bundle is met with objects already running that another tool applied:
    /// when they are healthy, their live state (as ours: owner labels added) becomes the first
    /// last-known-good, so the very first rollout can roll back. `None` when nothing runs yet.
    async fn adopt(
        &self,
        bundle: &str,
        desired: &[Manifest],
        plans: &[ObjectPlan],
        limits: &Limits,
    ) -> std::result::Result<Option<Snapshot>, String> {
        let existing: Vec<&Manifest> =
            desired.iter().filter(|m| plans.iter().any(|p| p.id == m.id() && p.action != Action::Create)).collect();
        if !existing.iter().any(|m| is_workload(&m.object)) {
            return Ok(None);
        }
        let mut live = Vec::new();
        for m in &existing {
            match self.cluster.get(m).await {
                Ok(Some(v)) => live.push(shared::plan::normalize(&v)),
                Ok(None) => {}
                Err(e) => return Err(format!("reading {} to adopt it: {e}", m.id())),
            }
        }
        let workloads: Vec<Value> = live.iter().filter(|o| is_workload(o)).cloned().collect();
        match self.watch(bundle, &workloads, unix_now(), &limits.health_only()).await {
            Step::Done => {}
            Step::Failed { reason, .. } => {
                self.say(bundle, &format!("not adopting the running objects, they are not healthy: {reason}"));
                return Ok(None);
            }
            Step::Continue { .. } => unreachable!("until_settled returns only when settled"),
        }
        let mut ms: Vec<Manifest> =
            live.into_iter().map(|o| Manifest { source: String::new(), object: adoptable(o) }).collect();
        shared::desired::label_owned(&mut ms, self.agent_id, bundle);
        let objects: Vec<Value> = ms.into_iter().map(|m| m.object).collect();
        let mut images: Vec<String> = shared::render::images(
            &objects.iter().map(|o| Manifest { source: String::new(), object: o.clone() }).collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|u| u.image)
        .collect();
        images.sort();
        images.dedup();
        Ok(Some(Snapshot {
            revision: Revision { commit: "adopted".into(), hash: rendered_hash(&objects), images },
            objects,
            at: unix_now(),
        }))
    }

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

/// Test seam for restart safety: with `GITOPS_AGENT_PAUSE_AT` set to `before-apply`,
/// `mid-rollout` or `mid-rollback`, the agent stops right after that step's record was persisted,
/// says `paused at <step>` on stderr and waits, so a test can SIGKILL it at a known point. Unset
/// (always, outside tests) it costs one variable lookup per step.
async fn pause_at(step: &str) {
    if std::env::var("GITOPS_AGENT_PAUSE_AT").is_ok_and(|v| v == step) {
        eprintln!("paused at {step}");
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

fn interrupted(bundle: &str, why: &str) -> BundleResult {
    BundleResult::new(bundle, Result::Interrupted, format!("{why}; the record keeps the step, the next run resumes it"))
}

/// A minimal object for a plan entry (to delete it).
fn stub(p: &ObjectPlan) -> Value {
    let parts: Vec<&str> = p.id.splitn(3, '/').collect();
    let (kind, ns, name) = match parts.as_slice() {
        [kind, ns, name] => (*kind, Some(*ns), *name),
        [kind, name] => (*kind, None, *name),
        _ => ("", None, ""),
    };
    let mut meta = serde_json::json!({"name": name});
    if let Some(ns) = ns {
        meta["namespace"] = ns.into();
    }
    serde_json::json!({"apiVersion": p.api_version, "kind": kind, "metadata": meta})
}

/// A live object made fit to be applied again: controller-written annotations dropped.
fn adoptable(mut o: Value) -> Value {
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        a.remove("deployment.kubernetes.io/revision");
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o
}
