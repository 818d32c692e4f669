//! A rollout or rollback driven to its end from its record (`finish`): apply, watch (beside the
//! drain tracker when old pods drain), Events, and the record saved after each step.

use serde_json::Value;

use shared::fault::Cause;
use shared::k8s::{Time, is_workload, object_id};
use shared::outcome::Outcome;
use shared::probe::Health;
use shared::render::Manifest;
use shared::rollout::{Limits, Step, Verdict};
use shared::state::{Phase, Record};

use super::plan::transient;
use super::resume::pause_at;
use super::{BundleResult, Driver, cause};
use crate::watch::{unix_now, until_settled};

impl Driver<'_> {
    /// Drives a record that is rolling out or back to its end.
    pub(super) async fn finish(&self, mut record: Record, resumed: bool) -> BundleResult {
        let bundle = record.bundle.clone();
        let mut drained: Vec<shared::drain::Report> = Vec::new();
        loop {
            match record.phase.clone() {
                Phase::Idle => {
                    let mut r = result_of(&record, resumed);
                    r.drains = drained;
                    return r;
                }
                Phase::RollingOut { candidate, started, limits, force } => {
                    pause_at("before-apply").await;
                    self.say(&bundle, &format!("applying {}", candidate.revision.short()));
                    let step = match self.apply_all(&bundle, &candidate.objects, force).await {
                        // Still failing after the backoff, or a namespace not there (yet) or
                        // terminating: the environment's fault, not the revision's. Not
                        // quarantined, not rolled back (it was never judged): tried again later.
                        Err(e) if matches!(cause(&e), Cause::Environment(_)) => {
                            let what = format!("applying {}: {e}", candidate.revision.short());
                            let mut r = self.retry_later(&record, &candidate.revision, &what).await;
                            r.drains = drained;
                            return r;
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
                                &Outcome::RolledOut.reason(),
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
                                    &Outcome::FailedNoRollback.reason(),
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
                            self.events(&target.objects, true, &Outcome::RolledBack.reason(), &note).await;
                            record.rolled_back(now)
                        }
                        Step::Failed { reason: why, .. } => {
                            self.events(
                                &target.objects,
                                true,
                                &Outcome::RollbackFailed.reason(),
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
                return BundleResult::new(&bundle, Outcome::Interrupted, format!("saving the record: {e:#}"));
            }
        }
    }

    /// Watches `objects` until they settle: healthy (and, with probes, verified), or failed.
    pub(super) async fn watch(&self, bundle: &str, objects: &[Value], started: Time, limits: &Limits) -> Step {
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

    async fn events(&self, objects: &[Value], warning: bool, reason: &str, note: &str) {
        for o in objects.iter().filter(|o| is_workload(o)) {
            let live = self.cluster.get(&Manifest { source: String::new(), object: o.clone() }).await.ok().flatten();
            if let Err(e) = self.cluster.event(self.agent_id, live.as_ref().unwrap_or(o), warning, reason, note).await {
                self.say("", &format!("warning: {e}"));
            }
        }
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
}

/// A finished record's result: its last outcome, said as this reconcile's.
fn result_of(record: &Record, resumed: bool) -> BundleResult {
    let Some(last) = &record.last else { return BundleResult::new(&record.bundle, Outcome::InSync, "") };
    let mut r = BundleResult::new(
        &record.bundle,
        Outcome::from(last.result),
        if resumed { format!("{} (resumed after a restart)", last.message) } else { last.message.clone() },
    );
    r.revision = Some(last.revision.short());
    r
}

fn interrupted(bundle: &str, why: &str) -> BundleResult {
    BundleResult::new(
        bundle,
        Outcome::Interrupted,
        format!("{why}; the record keeps the step, the next run resumes it"),
    )
}
