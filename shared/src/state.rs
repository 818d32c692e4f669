//! What the agent remembers of each bundle, and every decision about it: whether to roll out,
//! what a finished, failed or rolled-back rollout leaves behind, quarantine and its retry
//! backoff, and which revision a rollback goes to.
//!
//! A [`Record`] is persisted before each step (in a Secret and a local file; the adapter writes
//! both). Every transition returns a new record with a higher `seq`, so when the two copies
//! disagree after a crash, [`newer`] picks the one written last. Time is passed in as Unix
//! seconds; nothing here reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::rollout::Limits;

use crate::k8s::{Time, object_id};

/// Revisions kept besides the last-known-good, newest first: enough for `agent rollback --to`,
/// small enough that the record stays far below a Secret's 1 MiB.
pub const HISTORY: usize = 4;

/// First retry of a revision whose images could not be pulled, doubled per attempt up to
/// [`RETRY_MAX`].
pub const RETRY_FIRST: Time = 60;
pub const RETRY_MAX: Time = 30 * 60;

/// What one reconcile wants of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Git commit the objects were rendered from (`adopted` for objects found running).
    pub commit: String,
    /// [`rendered_hash`] of the objects.
    pub hash: String,
    /// Every image as written into the objects (pinned), sorted.
    pub images: Vec<String>,
    /// Per image (as in `images`), the cosign keys that verified its digest before it was
    /// applied (`shared::cosign`); a rollback to this revision needs no new verification.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verified: BTreeMap<String, Vec<String>>,
    /// The release this revision renders (`waves::release_id`: the bundle's content in Git,
    /// the same on every store), for the health reports of waves; unset before waves existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl Revision {
    /// `commit-prefix/hash-prefix`, as shown to operators and accepted by `rollback --to`.
    pub fn short(&self) -> String {
        format!("{}/{}", &self.commit[..self.commit.len().min(12)], &self.hash[..self.hash.len().min(12)])
    }

    /// Whether `wanted` names this revision: a prefix of its commit or of its hash.
    pub fn is_named(&self, wanted: &str) -> bool {
        !wanted.is_empty()
            && (self.commit.starts_with(wanted) || self.hash.starts_with(wanted) || self.short() == wanted)
    }
}

/// A revision with the objects that were applied for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub revision: Revision,
    pub objects: Vec<Value>,
    /// When it became what it is (applied, verified, adopted).
    pub at: Time,
}

impl Snapshot {
    pub fn ids(&self) -> BTreeSet<String> {
        self.objects.iter().map(object_id).collect()
    }
}

/// Where a bundle's rollout stands. Anything but `Idle` after a restart is unfinished work,
/// resumed before the sources are even read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    Idle,
    /// `candidate` is being applied or watched since `started`.
    RollingOut {
        candidate: Snapshot,
        started: Time,
        limits: Limits,
        /// Take over fields other field managers own (configured, or the first rollout of
        /// objects found running: adoption takes ownership explicitly).
        #[serde(default)]
        force: bool,
    },
    /// `failed` is being replaced by the last-known-good (or by `target` for a manual rollback).
    #[serde(rename_all = "camelCase")]
    RollingBack {
        failed: Snapshot,
        target: Snapshot,
        reason: String,
        /// The failure was an image pull after a good preflight: retried later, not for good.
        retryable: bool,
        started: Time,
        limits: Limits,
    },
}

/// A revision that failed, keyed by its rendered hash: not tried again until the bundle renders
/// differently, or until `retry_at` for image-pull failures, or `agent retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub revision: Revision,
    pub reason: String,
    pub at: Time,
    pub retry_at: Option<Time>,
    /// Failures of this same hash so far.
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutcomeKind {
    RolledOut,
    Adopted,
    RolledBack,
    /// Failed with nothing to roll back to: what the failed revision applied still runs.
    FailedNoRollback,
    /// The rollback itself did not become healthy: a human is needed.
    RollbackFailed,
}

/// The last thing that happened to the bundle, for status and exit codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastOutcome {
    pub result: OutcomeKind,
    pub revision: Revision,
    pub message: String,
    pub at: Time,
}

/// Everything the agent keeps of one bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub seq: u64,
    pub bundle: String,
    pub phase: Phase,
    pub lkg: Option<Snapshot>,
    /// Earlier last-known-good revisions, newest first, at most [`HISTORY`].
    pub history: Vec<Snapshot>,
    pub quarantine: Option<Quarantine>,
    pub last: Option<LastOutcome>,
    /// How the bundle's rollouts ended, counted since the record began (status and metrics).
    #[serde(default)]
    pub counts: Counts,
    /// `agent pause`: no rollout starts until `agent resume`. Unfinished work (a rollout or a
    /// rollback a killed agent left) is still finished: stopping half-way is never safer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
    /// A rollout deferred until the old pods are idle (`waitForIdle`): since when, for which
    /// rendered revision. Persisted so `maxDefer` counts from the first deferral across cycles
    /// and restarts; a different revision starts a new wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_wait: Option<IdleWait>,
    /// An environment fault (`fault::classify`: namespace missing, 5xx, ...) stopped the plan or
    /// apply of a revision: it is tried again at `retry_at`, by itself, never quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
    /// The bundle left Git (`crate::removal`): held until confirmed, or removed (its objects
    /// deleted, or kept by node config). A removed record stays as history; the bundle coming
    /// back to Git clears it ([`Record::back_in_git`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<Removal>,
    /// The release Git wants is held by its wave gate (an earlier wave failed on it,
    /// `shared::waves`): kept so `agent retry` knows what it overrides and status says since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_held: Option<WaveHold>,
    /// `agent retry` of a held release: that release starts whatever the earlier waves say,
    /// and the record says who asked and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_override: Option<WaveOverride>,
}

/// A release held at this store's wave gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveHold {
    pub release: String,
    pub reason: String,
    pub since: Time,
}

/// A deliberate override of a held release (`agent retry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveOverride {
    pub release: String,
    /// Who asked, as the command knew it (the local user).
    pub by: String,
    pub at: Time,
    /// What held it.
    pub held: String,
}

/// What became of a bundle that left Git, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Removal {
    /// The first commit seen without the bundle.
    pub commit: String,
    pub at: Time,
    /// Flattened: `{"commit", "at", "state": "held", "reason", "objects"}`.
    #[serde(flatten)]
    pub state: RemovalState,
}

/// Where a removal stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum RemovalState {
    /// Nothing deleted: the disappearance looks like an accident (`reason`); `objects` (ids)
    /// would be deleted once `agent prune --confirm BUNDLE` confirms it.
    Held { reason: String, objects: Vec<String> },
    /// Its objects were deleted (`deleted`, ids); `kept` are those left on purpose (a CRD, a
    /// namespace not empty of others' objects) or no longer ours.
    Removed { deleted: Vec<String>, kept: Vec<String> },
    /// `prune.removedBundles: keep`: its objects were left running, no longer followed.
    Kept { objects: Vec<String> },
}

/// A revision whose plan or apply met an environment fault, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retrying {
    /// The rendered hash of the revision that waits.
    pub hash: String,
    /// What failed, as the API server said it.
    pub reason: String,
    pub at: Time,
    pub retry_at: Time,
    /// Environment faults of this revision in a row.
    pub attempts: u32,
}

/// Since when a revision has waited for idle pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdleWait {
    /// The rendered hash of the revision that waits.
    pub hash: String,
    pub since: Time,
}

/// Who paused a bundle, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paused {
    pub at: Time,
    pub reason: String,
}

/// Outcomes counted per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub rolled_out: u64,
    pub adopted: u64,
    pub rolled_back: u64,
    pub failed_no_rollback: u64,
    pub rollback_failed: u64,
}

impl Record {
    pub fn new(bundle: &str) -> Record {
        Record {
            seq: 0,
            bundle: bundle.to_owned(),
            phase: Phase::Idle,
            lkg: None,
            history: Vec::new(),
            quarantine: None,
            last: None,
            counts: Counts::default(),
            paused: None,
            idle_wait: None,
            retrying: None,
            removal: None,
            wave_held: None,
            wave_override: None,
        }
    }

    /// The wave gate holds `release` (an earlier wave failed on it); the first hold's time is
    /// kept. `None` when the record already says so (nothing to save).
    pub fn hold_wave(&self, release: &str, reason: &str, now: Time) -> Option<Record> {
        match &self.wave_held {
            Some(h) if h.release == release && h.reason == reason => None,
            _ => Some(Record {
                wave_held: Some(WaveHold { release: release.to_owned(), reason: reason.to_owned(), since: now }),
                ..self.next()
            }),
        }
    }

    /// What this store's record says about `release`: rolling, healthy since, rolled back and why,
    /// or waiting/held at its gate (`gated`). `running` is named when another release runs.
    /// `live`: this reconcile found what runs equal to what the release renders here (a release
    /// that changed nothing for this store is healthy at once, since its last-known-good).
    pub fn report_state(
        &self,
        release: &str,
        gated: &crate::report::Gated,
        live: crate::report::Live,
        now: Time,
    ) -> (crate::report::State, Time, Option<String>) {
        use crate::report::{Gated, Live, State};
        let record = self;
        let lkg_release = record.lkg.as_ref().and_then(|s| s.revision.release.clone());
        let running = lkg_release.clone().filter(|r| r != release);
        if let Phase::RollingOut { candidate, started, .. } = &record.phase
            && candidate.revision.release.as_deref() == Some(release)
        {
            return (State::Rolling, *started, running);
        }
        if let Some(q) = &record.quarantine
            && q.revision.release.as_deref() == Some(release)
        {
            let rolled_back = record.last.as_ref().is_some_and(|l| l.result == OutcomeKind::RolledBack);
            let state = if rolled_back {
                State::RolledBack { reason: q.reason.clone() }
            } else {
                State::Failed { reason: q.reason.clone() }
            };
            return (state, q.at, running);
        }
        if let (Some(lkg), Some(r)) = (&record.lkg, &lkg_release)
            && r == release
        {
            return (State::Healthy, lkg.at, None);
        }
        if let (Some(lkg), Live::AsReleased) = (&record.lkg, live) {
            return (State::Healthy, lkg.at, None);
        }
        match gated {
            Gated::Waiting(reason) => (State::Waiting { reason: reason.clone() }, now, running),
            Gated::Held(reason) => (State::Held { reason: reason.clone() }, now, running),
            Gated::No => (State::Pending, now, running),
        }
    }

    /// Whether `agent retry` overrode the wave gate for `release`.
    pub fn wave_overridden(&self, release: &str) -> Option<&WaveOverride> {
        self.wave_override.as_ref().filter(|o| o.release == release)
    }

    /// The bundle left Git and its removal waits for a confirmation: nothing changes but the
    /// record saying so. A hold already recorded keeps its first commit and time.
    pub fn removal_held(&self, commit: &str, reason: &str, objects: Vec<String>, now: Time) -> Record {
        let (commit, at) = match &self.removal {
            Some(r @ Removal { state: RemovalState::Held { .. }, .. }) => (r.commit.clone(), r.at),
            _ => (commit.to_owned(), now),
        };
        let state = RemovalState::Held { reason: reason.to_owned(), objects };
        Record { removal: Some(Removal { commit, at, state }), ..self.next() }
    }

    /// The bundle's removal is done (`state` says how): the last-known-good becomes history
    /// (nothing of the bundle is followed any more), and so does any wait or quarantine.
    pub fn removed(&self, commit: &str, state: RemovalState, now: Time) -> Record {
        let mut r = self.next();
        let commit = match &self.removal {
            Some(held) => held.commit.clone(),
            None => commit.to_owned(),
        };
        if let Some(lkg) = r.lkg.take() {
            r.history.retain(|h| h.revision.hash != lkg.revision.hash);
            r.history.insert(0, lkg);
            r.history.truncate(HISTORY);
        }
        r.quarantine = None;
        r.retrying = None;
        r.idle_wait = None;
        r.removal = Some(Removal { commit, at: now, state });
        r
    }

    /// The bundle is in Git again: it is reconciled as any other, from what the record holds.
    pub fn back_in_git(&self) -> Record {
        Record { removal: None, ..self.next() }
    }

    /// Whether the bundle's removal is done (the record is history).
    pub fn is_removed(&self) -> bool {
        matches!(&self.removal, Some(r) if !matches!(r.state, RemovalState::Held { .. }))
    }

    /// Every object the record says was applied for the bundle, newest revision first, each id
    /// once: the last-known-good, then the history. This is the bundle's inventory: what a prune
    /// or a removal looks for, whatever its kind.
    pub fn inventory(&self) -> Vec<Value> {
        let mut seen = BTreeSet::new();
        self.lkg
            .iter()
            .chain(&self.history)
            .flat_map(|s| &s.objects)
            .filter(|o| seen.insert(object_id(o)))
            .cloned()
            .collect()
    }

    /// Since when `hash` has waited for idle pods: the recorded start when it is the same
    /// revision, else `now` (a new revision waits anew).
    pub fn idle_since(&self, hash: &str, now: Time) -> Time {
        match &self.idle_wait {
            Some(w) if w.hash == hash => w.since,
            _ => now,
        }
    }

    /// The rollout of `hash` is deferred until the pods are idle; keeps the first deferral's time.
    pub fn wait_for_idle(&self, hash: &str, now: Time) -> Record {
        Record { idle_wait: Some(IdleWait { hash: hash.to_owned(), since: self.idle_since(hash, now) }), ..self.next() }
    }

    /// `agent pause`.
    pub fn pause(&self, reason: &str, now: Time) -> Record {
        Record { paused: Some(Paused { at: now, reason: reason.to_owned() }), ..self.next() }
    }

    /// `agent resume`.
    pub fn resume(&self) -> Record {
        Record { paused: None, ..self.next() }
    }

    /// Records how a step ended, and counts it.
    fn ended(&mut self, result: OutcomeKind, revision: Revision, message: String, now: Time) {
        let c = &mut self.counts;
        match result {
            OutcomeKind::RolledOut => c.rolled_out += 1,
            OutcomeKind::Adopted => c.adopted += 1,
            OutcomeKind::RolledBack => c.rolled_back += 1,
            OutcomeKind::FailedNoRollback => c.failed_no_rollback += 1,
            OutcomeKind::RollbackFailed => c.rollback_failed += 1,
        }
        self.last = Some(LastOutcome { result, revision, message, at: now });
    }

    fn next(&self) -> Record {
        Record { seq: self.seq + 1, ..self.clone() }
    }

    /// Before the first apply of `candidate`.
    pub fn start_rollout(&self, candidate: Snapshot, limits: Limits, force: bool, now: Time) -> Record {
        // A release that starts is no longer held (a hold of another release is moot).
        Record {
            phase: Phase::RollingOut { candidate, started: now, limits, force },
            idle_wait: None,
            wave_held: None,
            ..self.next()
        }
    }

    /// The candidate became healthy (and stayed so through the verification window): it is
    /// the new last-known-good, and any quarantine is lifted.
    pub fn rolled_out(&self, now: Time) -> Record {
        let Phase::RollingOut { candidate, .. } = &self.phase else { return self.clone() };
        let mut r = self.next();
        r.ended(OutcomeKind::RolledOut, candidate.revision.clone(), "healthy".into(), now);
        r.become_lkg(Snapshot { at: now, ..candidate.clone() });
        // A quarantine blocks what is current; once another revision is healthy it has done its
        // job (a later commit that renders the failed objects again is one new attempt, not a loop).
        r.quarantine = None;
        r.retrying = None;
        r.phase = Phase::Idle;
        r
    }

    /// The environment stopped the plan or the apply of the revision `hash` (`fault::classify`
    /// said so): back to idle with the last-known-good as it was, nothing quarantined, nothing
    /// rolled back (the revision was never judged), and a retry at a backoff that grows while
    /// the same revision keeps meeting faults. A rollback is never left this way: it is
    /// finished first.
    pub fn environment_fault(&self, hash: &str, reason: &str, now: Time) -> Record {
        if matches!(self.phase, Phase::RollingBack { .. }) {
            return self.clone();
        }
        let attempts = match &self.retrying {
            Some(w) if w.hash == hash => w.attempts + 1,
            _ => 1,
        };
        let retry_at = now + crate::fault::retry_delay(attempts);
        let retrying = Retrying { hash: hash.to_owned(), reason: reason.to_owned(), at: now, retry_at, attempts };
        Record { phase: Phase::Idle, retrying: Some(retrying), ..self.next() }
    }

    /// Objects found running (and healthy) recorded as the first last-known-good, or the live
    /// state already equal to the desired one.
    pub fn adopted(&self, snapshot: Snapshot, message: &str, now: Time) -> Record {
        let mut r = self.next();
        r.ended(OutcomeKind::Adopted, snapshot.revision.clone(), message.to_owned(), now);
        r.become_lkg(Snapshot { at: now, ..snapshot });
        r
    }

    fn become_lkg(&mut self, snap: Snapshot) {
        if let Some(old) = self.lkg.take().filter(|old| old.revision.hash != snap.revision.hash) {
            self.history.retain(|h| h.revision.hash != old.revision.hash && h.revision.hash != snap.revision.hash);
            self.history.insert(0, old);
            self.history.truncate(HISTORY);
        }
        self.lkg = Some(snap);
    }

    /// The rollout failed: roll back to the last-known-good, or, without one, quarantine the
    /// candidate and leave what it applied (nothing better is known).
    pub fn rollout_failed(&self, reason: &str, retryable: bool, now: Time) -> Record {
        let Phase::RollingOut { candidate, limits, .. } = &self.phase else { return self.clone() };
        let mut r = self.next();
        // The environment answered: what failed now is the revision.
        r.retrying = None;
        match &self.lkg {
            Some(lkg) => {
                r.phase = Phase::RollingBack {
                    failed: candidate.clone(),
                    target: lkg.clone(),
                    reason: reason.to_owned(),
                    retryable,
                    started: now,
                    limits: limits.clone(),
                }
            }
            None => {
                r.quarantine(&candidate.revision, reason, retryable, now);
                r.ended(
                    OutcomeKind::FailedNoRollback,
                    candidate.revision.clone(),
                    format!("{reason}; no last-known-good to roll back to"),
                    now,
                );
                r.phase = Phase::Idle;
            }
        }
        r
    }

    /// The rollback is healthy again: the failed revision is quarantined.
    pub fn rolled_back(&self, now: Time) -> Record {
        let Phase::RollingBack { failed, target, reason, retryable, .. } = &self.phase else { return self.clone() };
        let mut r = self.next();
        r.quarantine(&failed.revision, reason, *retryable, now);
        r.ended(
            OutcomeKind::RolledBack,
            failed.revision.clone(),
            format!("{reason}; rolled back to {}", target.revision.short()),
            now,
        );
        if self.lkg.as_ref().is_none_or(|l| l.revision.hash != target.revision.hash) {
            r.become_lkg(Snapshot { at: now, ..target.clone() });
        }
        r.phase = Phase::Idle;
        r
    }

    /// The rollback did not become healthy either. The failed revision stays quarantined and
    /// nothing is tried again by itself: the node needs a human.
    pub fn rollback_failed(&self, why: &str, now: Time) -> Record {
        let Phase::RollingBack { failed, reason, .. } = &self.phase else { return self.clone() };
        let mut r = self.next();
        r.quarantine(&failed.revision, reason, false, now);
        r.ended(
            OutcomeKind::RollbackFailed,
            failed.revision.clone(),
            format!("{reason}; the rollback did not become healthy: {why}"),
            now,
        );
        r.phase = Phase::Idle;
        r
    }

    fn quarantine(&mut self, revision: &Revision, reason: &str, retryable: bool, now: Time) {
        let attempts = match &self.quarantine {
            Some(q) if q.revision.hash == revision.hash => q.attempts + 1,
            _ => 1,
        };
        self.quarantine = Some(Quarantine {
            revision: revision.clone(),
            reason: reason.to_owned(),
            at: now,
            retry_at: retryable.then(|| now + retry_delay(attempts)),
            attempts,
        });
    }

    /// Live objects equal the last-known-good again (Git went back): an environment retry of
    /// another revision is moot.
    pub fn forget_retry(&self) -> Record {
        Record { retrying: None, ..self.next() }
    }

    /// `agent retry`: forget the quarantine, and any environment retry's wait.
    pub fn retry(&self) -> Record {
        Record { quarantine: None, retrying: None, ..self.next() }
    }

    /// `agent retry` of a release its wave gate holds: a deliberate override, recorded with who
    /// asked and when; the release starts at the next reconcile. `None`: nothing is held.
    pub fn override_wave(&self, by: &str, now: Time) -> Option<Record> {
        let held = self.wave_held.as_ref()?;
        Some(Record {
            wave_override: Some(WaveOverride {
                release: held.release.clone(),
                by: by.to_owned(),
                at: now,
                held: held.reason.clone(),
            }),
            wave_held: None,
            ..self.next()
        })
    }
}

/// Why `agent rollback` cannot start ([`Record::manual_rollback`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("bundle {bundle} is busy ({phase}); try again when it is idle")]
    Busy { bundle: String, phase: &'static str },
    #[error("bundle {bundle} has no last-known-good yet")]
    NoLastKnownGood { bundle: String },
    #[error("bundle {bundle} has no earlier revision than {current}")]
    NoEarlierRevision { bundle: String, current: String },
    #[error("no revision {name:?} in {bundle}: {known}")]
    NoSuchRevision { name: String, bundle: String, known: String },
    #[error("{name:?} names more than one revision of {bundle}: {known}")]
    Ambiguous { name: String, bundle: String, known: String },
    #[error("{revision} is already the last-known-good of {bundle}")]
    AlreadyLastKnownGood { revision: String, bundle: String },
}

impl Record {
    /// `agent rollback [--to REVISION]`: back to the named revision (default: the one before the
    /// last-known-good). The current one is quarantined by the rollback, so the next reconcile
    /// does not put it back until Git renders something else.
    pub fn manual_rollback(&self, to: Option<&str>, limits: Limits, now: Time) -> Result<Record, RollbackError> {
        let bundle = || self.bundle.clone();
        if self.phase != Phase::Idle {
            return Err(RollbackError::Busy { bundle: bundle(), phase: self.phase.name() });
        }
        let current = self.lkg.as_ref().ok_or_else(|| RollbackError::NoLastKnownGood { bundle: bundle() })?;
        let target = match to {
            None => self.history.first().ok_or_else(|| RollbackError::NoEarlierRevision {
                bundle: bundle(),
                current: current.revision.short(),
            })?,
            Some(name) => {
                let found: Vec<&Snapshot> =
                    std::iter::once(current).chain(&self.history).filter(|s| s.revision.is_named(name)).collect();
                match found.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(RollbackError::NoSuchRevision {
                            name: name.to_owned(),
                            bundle: bundle(),
                            known: self.known(),
                        });
                    }
                    _ => {
                        return Err(RollbackError::Ambiguous {
                            name: name.to_owned(),
                            bundle: bundle(),
                            known: self.known(),
                        });
                    }
                }
            }
        };
        if target.revision.hash == current.revision.hash {
            return Err(RollbackError::AlreadyLastKnownGood { revision: current.revision.short(), bundle: bundle() });
        }
        Ok(Record {
            phase: Phase::RollingBack {
                failed: current.clone(),
                target: target.clone(),
                reason: "rolled back by hand".into(),
                retryable: false,
                started: now,
                limits,
            },
            ..self.next()
        })
    }

    fn known(&self) -> String {
        let all: Vec<String> = self.lkg.iter().chain(&self.history).map(|s| s.revision.short()).collect();
        if all.is_empty() { "none recorded".into() } else { all.join(", ") }
    }
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::RollingOut { .. } => "rolling out",
            Phase::RollingBack { .. } => "rolling back",
        }
    }
}

/// Delay before retry `attempts` (1-based) of a revision whose images failed to pull.
pub fn retry_delay(attempts: u32) -> Time {
    let doublings = attempts.saturating_sub(1).min(16);
    (RETRY_FIRST << doublings).min(RETRY_MAX)
}

/// The copy written last; `None` only when there is none.
pub fn newer(a: Option<Record>, b: Option<Record>) -> Option<Record> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A write of a record was refused because the stored copy changed since this writer last saw
/// it (409 Conflict on the `resourceVersion` precondition): what the writer does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterConflict {
    /// Nothing this writer has not seen was recorded (the object changed, its record did not,
    /// or it is gone): write again over the fresh `resourceVersion`.
    Write,
    /// The stored record is the one being written (an earlier answer was lost): done.
    AlreadyWritten,
    /// Another writer recorded a transition in between: ours was decided from an old record and
    /// is dropped; the caller re-reads and decides again, so no transition is lost.
    Superseded,
}

/// After a conflict: `known` is the highest `seq` this writer read from or tried to write to the
/// stored copy (`None`: it saw no stored copy), `ours` the record it wanted to write, `stored`
/// the stored copy read again.
pub fn after_conflict(known: Option<u64>, ours: &Record, stored: Option<&Record>) -> AfterConflict {
    match (stored, known) {
        (None, _) => AfterConflict::Write,
        (Some(s), _) if s == ours => AfterConflict::AlreadyWritten,
        (Some(s), Some(k)) if s.seq <= k => AfterConflict::Write,
        (Some(_), _) => AfterConflict::Superseded,
    }
}

/// What a reconcile does with a bundle whose record is idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Live objects equal the desired ones, which are the last-known-good.
    Nothing,
    /// Live objects equal the desired ones, but they were never verified: check their health and
    /// record them as last-known-good without applying anything.
    Verify,
    /// Apply and watch.
    RollOut,
    /// Not tried: the reason says why and until when.
    Blocked(String),
    /// Not tried before `at`: the environment failed its last attempt (`reason`).
    Retrying { reason: String, at: Time },
}

/// Decides for an idle record, the `hash` of the desired objects, and whether the live objects
/// already equal them.
pub fn next(record: &Record, hash: &str, in_sync: bool, now: Time) -> Next {
    if let Some(q) = record.quarantine.as_ref().filter(|q| q.revision.hash == hash) {
        match q.retry_at {
            Some(at) if now >= at => {}
            Some(at) => {
                return Next::Blocked(format!(
                    "revision {} is quarantined until {} (attempt {}): {}",
                    q.revision.short(),
                    rfc3339(at),
                    q.attempts,
                    q.reason
                ));
            }
            None => {
                return Next::Blocked(format!(
                    "revision {} is quarantined: {}; it is tried again when the bundle renders differently, \
                     or with `agent retry {}`",
                    q.revision.short(),
                    q.reason,
                    record.bundle
                ));
            }
        }
    }
    if let Some(p) = record.paused.as_ref().filter(|_| !in_sync) {
        return Next::Blocked(format!(
            "paused since {} ({}): `agent resume {}` lets it roll out",
            rfc3339(p.at),
            p.reason,
            record.bundle
        ));
    }
    match (in_sync, record.lkg.as_ref().is_some_and(|l| l.revision.hash == hash)) {
        (true, true) => Next::Nothing,
        (true, false) => Next::Verify,
        (false, _) => match record.retrying.as_ref().filter(|w| w.hash == hash && now < w.retry_at) {
            Some(w) => Next::Retrying { reason: w.reason.clone(), at: w.retry_at },
            None => Next::RollOut,
        },
    }
}

/// Kinds never deleted because they left Git: deleting a CustomResourceDefinition deletes every
/// object of its kind, anyone's, and deleting a Namespace everything in it (the agent's own
/// namespaces go by `crate::removal`'s emptiness rule instead). Helm leaves CRDs behind too.
pub fn never_pruned(object: &Value) -> bool {
    let (api_version, kind) = (object["apiVersion"].as_str().unwrap_or_default(), object["kind"].as_str());
    matches!(
        (api_version, kind),
        ("v1", Some("Namespace"))
            | ("apiextensions.k8s.io/v1" | "apiextensions.k8s.io/v1beta1", Some("CustomResourceDefinition"))
    )
}

/// Prune candidates of a bundle: the objects its record says were applied ([`Record::inventory`])
/// that the new render (`desired`, ids) no longer has, CRDs and Namespaces aside
/// ([`never_pruned`]). Only candidates: the adapter reads each live object and `plan` prunes it
/// only when it carries this agent's owner and bundle labels.
pub fn prune_candidates(record: &Record, desired: &BTreeSet<String>) -> Vec<Value> {
    record.inventory().into_iter().filter(|o| !desired.contains(&object_id(o)) && !never_pruned(o)).collect()
}

/// Objects a rollback deletes: what the failed revision applied and the target lacks.
pub fn rollback_deletions(failed: &Snapshot, target: &Snapshot) -> Vec<String> {
    let keep = target.ids();
    failed.ids().into_iter().filter(|id| !keep.contains(id)).collect()
}

/// SHA-256 of the objects in a canonical form (keys sorted, objects sorted by id): the same
/// objects hash the same whatever order a renderer printed them or their keys in.
pub fn rendered_hash(objects: &[Value]) -> String {
    let mut sorted: Vec<(String, &Value)> = objects.iter().map(|o| (object_id(o), o)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (_, o) in sorted {
        let mut s = String::new();
        canonical(o, &mut s);
        h.update(s.as_bytes());
        h.update(b"\n");
    }
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `2026-11-23T10:00:00Z` for Unix seconds (UTC, proleptic Gregorian).
pub fn rfc3339(t: Time) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn release_snap(release: &str, data: &str) -> Snapshot {
        let objects = vec![serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": data}})];
        Snapshot {
            revision: Revision {
                commit: format!("commit-{data}"),
                hash: rendered_hash(&objects),
                images: vec![],
                verified: Default::default(),
                release: Some(release.into()),
            },
            objects,
            at: 0,
        }
    }

    #[test]
    fn what_a_record_says_about_a_release() {
        let l = crate::rollout::Limits { progress_deadline: 60, verify_window: 0, probes: vec![], drains: vec![] };
        let running = Record::new("web").start_rollout(release_snap("r1", "a"), l.clone(), false, 10).rolled_out(20);
        let rolling = running.start_rollout(release_snap("r2", "b"), l.clone(), false, 30);
        let failed = rolling.rollout_failed("CrashLoopBackOff", false, 40).rolled_back(50);
        use crate::report::{Gated, State};
        let none = Gated::No;
        assert_eq!(report_state_of(&running, "r1", &none, 99), (State::Healthy, 20, None));
        assert_eq!(report_state_of(&rolling, "r2", &none, 99), (State::Rolling, 30, Some("r1".into())));
        let (state, _, runs) = report_state_of(&failed, "r2", &none, 99);
        assert_eq!((state.word(), runs), ("rolledBack", Some("r1".into())));
        assert!(state.reason().is_some_and(|r| r.contains("CrashLoopBackOff")), "{state:?}");
        let waiting = Gated::Waiting("wave canary: waits".into());
        assert_eq!(
            report_state_of(&running, "r2", &waiting, 99),
            (State::Waiting { reason: "wave canary: waits".into() }, 99, Some("r1".into()))
        );
        assert_eq!(report_state_of(&running, "r2", &none, 99).0, State::Pending);
        let same_render = running.report_state("r2", &none, crate::report::Live::AsReleased, 99);
        assert_eq!(same_render, (State::Healthy, 20, None), "a release that renders the same here is healthy");
        let same_render = running.report_state("r2", &none, crate::report::Live::AsReleased, 99);
        assert_eq!(same_render, (State::Healthy, 20, None), "a release that renders the same here is healthy");
    }

    fn report_state_of(
        r: &Record,
        release: &str,
        gated: &crate::report::Gated,
        now: Time,
    ) -> (crate::report::State, Time, Option<String>) {
        r.report_state(release, gated, crate::report::Live::Other, now)
    }

    const L: Limits = Limits { progress_deadline: 60, verify_window: 0, probes: Vec::new(), drains: Vec::new() };

    fn snap(commit: &str, objects: Vec<Value>) -> Snapshot {
        let hash = rendered_hash(&objects);
        Snapshot {
            revision: Revision {
                commit: commit.into(),
                hash,
                images: vec![],
                verified: Default::default(),
                release: None,
            },
            objects,
            at: 0,
        }
    }

    fn cm(name: &str, data: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": {"k": data}})
    }

    #[test]
    fn the_hash_ignores_object_and_key_order_and_sees_any_value_change() {
        let a = json!({"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}, "data": {"x": "1", "y": "2"}});
        let a_reordered: Value = serde_json::from_str(
            r#"{"data": {"y": "2", "x": "1"}, "metadata": {"namespace": "n", "name": "a"}, "kind": "ConfigMap"}"#,
        )
        .unwrap();
        let b = cm("b", "1");
        assert_eq!(rendered_hash(&[a.clone(), b.clone()]), rendered_hash(&[b.clone(), a_reordered]));
        let mut a2 = a.clone();
        a2["data"]["y"] = json!("3");
        assert_ne!(rendered_hash(&[a.clone(), b.clone()]), rendered_hash(&[a2, b.clone()]));
        assert_eq!(rendered_hash(&[a]).len(), 64);
    }

    #[test]
    fn prune_candidates_are_what_the_records_say_was_applied_whatever_the_kind() {
        let widget =
            json!({"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns"}});
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}});
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.test"}});
        let first = snap("c1", vec![cm("old", "1"), cm("a", "1")]);
        let second = snap("c2", vec![cm("a", "2"), widget.clone(), ns, crd]);
        let r = Record::new("b").adopted(first, "t", 1).adopted(second, "t", 2);
        let ids = |desired: &[&str]| -> Vec<String> {
            let desired: BTreeSet<String> = desired.iter().map(|s| (*s).to_owned()).collect();
            prune_candidates(&r, &desired).iter().map(object_id).collect()
        };
        // (case, desired ids, candidates)
        let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            ("everything still wanted", vec!["ConfigMap/ns/a", "Widget/ns/w", "ConfigMap/ns/old"], vec![]),
            (
                "a custom resource that left Git is a candidate",
                vec!["ConfigMap/ns/a", "ConfigMap/ns/old"],
                vec!["Widget/ns/w"],
            ),
            (
                "an object of an earlier revision too (a prune that never ran)",
                vec!["ConfigMap/ns/a", "Widget/ns/w"],
                vec!["ConfigMap/ns/old"],
            ),
            ("never a Namespace or a CRD", vec![], vec!["ConfigMap/ns/a", "Widget/ns/w", "ConfigMap/ns/old"]),
        ];
        for (case, desired, want) in cases {
            assert_eq!(ids(&desired), want, "{case}");
        }
        assert_eq!(r.inventory().iter().filter(|o| object_id(o) == "ConfigMap/ns/a").count(), 1, "each id once");
        assert_eq!(r.inventory()[0]["data"]["k"], "2", "the newest revision's copy");
    }

    #[test]
    fn an_idle_wait_counts_from_the_first_deferral_of_its_revision() {
        let rec = Record::new("b");
        // (case, record, hash asked, now, expected since)
        let waited = rec.wait_for_idle("h1", 100);
        let cases: Vec<(&str, &Record, &str, Time, Time)> = vec![
            ("never waited", &rec, "h1", 150, 150),
            ("same revision keeps its start", &waited, "h1", 150, 100),
            ("another revision waits anew", &waited, "h2", 150, 150),
        ];
        for (case, r, hash, now, want) in cases {
            assert_eq!(r.idle_since(hash, now), want, "{case}");
        }
        assert_eq!(waited.wait_for_idle("h1", 200).idle_wait.unwrap().since, 100, "a second deferral keeps the first");
        let started = waited.start_rollout(snap("c1", vec![cm("a", "1")]), L, false, 300);
        assert_eq!(started.idle_wait, None, "a started rollout waits no more");
        let old =
            r#"{"seq":1,"bundle":"b","phase":{"phase":"idle"},"lkg":null,"history":[],"quarantine":null,"last":null}"#;
        assert_eq!(serde_json::from_str::<Record>(old).unwrap().idle_wait, None, "an older record still reads");
    }

    #[test]
    fn next_decides_from_quarantine_sync_and_lkg() {
        let good = snap("c1", vec![cm("a", "1")]);
        let bad = snap("c2", vec![cm("a", "2")]);
        let mut rec = Record::new("b");
        rec.lkg = Some(good.clone());
        let quarantined = |retry_at| Quarantine {
            revision: bad.revision.clone(),
            reason: "crash".into(),
            at: 100,
            retry_at,
            attempts: 1,
        };
        let h = |s: &Snapshot| s.revision.hash.clone();
        // (case, quarantine, desired hash, in sync, now, expected)
        type Case<'a> = (&'a str, Option<Quarantine>, String, bool, Time, &'a str);
        let cases: Vec<Case> = vec![
            ("in sync and lkg", None, h(&good), true, 0, "nothing"),
            ("in sync, never verified", None, h(&bad), true, 0, "verify"),
            ("differs", None, h(&bad), false, 0, "roll out"),
            ("quarantined for good", Some(quarantined(None)), h(&bad), false, 10_000, "blocked"),
            ("quarantined until later", Some(quarantined(Some(200))), h(&bad), false, 199, "blocked"),
            ("retry time reached", Some(quarantined(Some(200))), h(&bad), false, 200, "roll out"),
            (
                "another hash is not blocked",
                Some(quarantined(None)),
                h(&snap("c3", vec![cm("a", "3")])),
                false,
                0,
                "roll out",
            ),
        ];
        for (name, q, hash, in_sync, now, want) in cases {
            rec.quarantine = q;
            let got = match next(&rec, &hash, in_sync, now) {
                Next::Nothing => "nothing",
                Next::Verify => "verify",
                Next::RollOut => "roll out",
                Next::Blocked(_) => "blocked",
                Next::Retrying { .. } => "retrying",
            };
            assert_eq!(got, want, "{name}");
        }
        rec.quarantine = Some(quarantined(Some(200)));
        let Next::Blocked(why) = next(&rec, &h(&bad), false, 0) else { panic!() };
        assert!(why.contains("until 1970-01-01T00:03:20Z (attempt 1): crash"), "{why}");
        rec.quarantine = Some(quarantined(None));
        let Next::Blocked(why) = next(&rec, &h(&bad), false, 0) else { panic!() };
        assert!(why.contains("`agent retry b`"), "{why}");
    }

    #[test]
    fn a_paused_bundle_starts_no_rollout_but_is_still_verified_and_resumes() {
        let good = snap("c1", vec![cm("a", "1")]);
        let new = snap("c2", vec![cm("a", "2")]);
        let mut rec = Record::new("web");
        rec.lkg = Some(good.clone());
        let paused = rec.pause("store opening hours", 200);
        assert_eq!(paused.seq, rec.seq + 1, "a pause is a new record version");
        // (case, desired, in sync, expected)
        let cases = [
            ("a change waits", &new, false, "blocked"),
            ("in sync stays in sync", &good, true, "nothing"),
            ("found running is still verified (nothing is applied)", &new, true, "verify"),
        ];
        for (name, desired, in_sync, want) in cases {
            let got = match next(&paused, &desired.revision.hash, in_sync, 300) {
                Next::Nothing => "nothing",
                Next::Verify => "verify",
                Next::RollOut => "roll out",
                Next::Blocked(_) => "blocked",
                Next::Retrying { .. } => "retrying",
            };
            assert_eq!(got, want, "{name}");
        }
        let Next::Blocked(why) = next(&paused, &new.revision.hash, false, 300) else { panic!() };
        assert_eq!(why, "paused since 1970-01-01T00:03:20Z (store opening hours): `agent resume web` lets it roll out");
        let resumed = paused.resume();
        assert_eq!(resumed.paused, None);
        assert_eq!(next(&resumed, &new.revision.hash, false, 300), Next::RollOut);
        // An older record, written before pausing existed, reads as not paused.
        let mut old = serde_json::to_value(&rec).unwrap();
        old.as_object_mut().unwrap().remove("paused");
        assert_eq!(serde_json::from_value::<Record>(old).unwrap().paused, None);
    }

    #[test]
    fn a_failed_rollout_rolls_back_then_quarantines_and_a_pull_failure_backs_off() {
        let good = snap("c1", vec![cm("a", "1")]);
        let bad = snap("c2", vec![cm("a", "2"), cm("new", "x")]);
        let rec = Record::new("b").start_rollout(good.clone(), L, false, 10).rolled_out(20);
        assert_eq!(rec.quarantine, None);
        assert_eq!(rec.seq, 2);
        assert_eq!(rec.lkg.as_ref().unwrap().revision, good.revision);
        assert_eq!(rec.last.as_ref().unwrap().result, OutcomeKind::RolledOut);

        let failing = rec.start_rollout(bad.clone(), L, false, 30).rollout_failed("pod x: CrashLoopBackOff", false, 40);
        let Phase::RollingBack { target, failed, .. } = &failing.phase else { panic!("{:?}", failing.phase) };
        assert_eq!(target.revision, good.revision);
        assert_eq!(rollback_deletions(failed, target), ["ConfigMap/ns/new"]);
        let done = failing.rolled_back(50);
        assert_eq!(done.phase, Phase::Idle);
        assert_eq!(done.lkg.as_ref().unwrap().revision, good.revision);
        let q = done.quarantine.as_ref().unwrap();
        assert_eq!((q.revision.hash.as_str(), q.retry_at, q.attempts), (bad.revision.hash.as_str(), None, 1));
        assert_eq!(done.last.as_ref().unwrap().result, OutcomeKind::RolledBack);
        assert!(done.seq > failing.seq && failing.seq > rec.seq);

        // Image pulls: retried after 1 min, then 2 min, ... never sooner, never more than 30 min apart.
        let mut r = rec.clone();
        for (attempts, delay) in [(1, 60), (2, 120), (3, 240)] {
            r = r
                .start_rollout(bad.clone(), L, false, 100)
                .rollout_failed("ImagePullBackOff", true, 100)
                .rolled_back(100);
            let q = r.quarantine.as_ref().unwrap();
            assert_eq!((q.attempts, q.retry_at), (attempts, Some(100 + delay)));
        }
        assert_eq!(retry_delay(30), RETRY_MAX);
        // Every ending is counted (status and metrics read the counts).
        assert_eq!(r.counts, Counts { rolled_out: 1, rolled_back: 3, ..Counts::default() });
        let failed_back =
            rec.start_rollout(bad.clone(), L, false, 1).rollout_failed("x", false, 2).rollback_failed("y", 3);
        assert_eq!(failed_back.counts, Counts { rolled_out: 1, rollback_failed: 1, ..Counts::default() });
    }

    #[test]
    fn without_lkg_a_failure_is_quarantined_and_left_running() {
        let bad = snap("c2", vec![cm("a", "2")]);
        let r = Record::new("b").start_rollout(bad.clone(), L, false, 1).rollout_failed("deadline", false, 2);
        assert_eq!(r.phase, Phase::Idle);
        assert_eq!(r.last.as_ref().unwrap().result, OutcomeKind::FailedNoRollback);
        assert!(r.last.as_ref().unwrap().message.contains("no last-known-good"));
        assert_eq!(r.quarantine.as_ref().unwrap().revision, bad.revision);
        assert_eq!(r.counts, Counts { failed_no_rollback: 1, ..Counts::default() });
    }

    #[test]
    fn history_keeps_earlier_revisions_newest_first_and_rollback_picks_them_by_name() {
        let s: Vec<Snapshot> = (1..=7).map(|i| snap(&format!("c{i}aaaa"), vec![cm("a", &i.to_string())])).collect();
        let mut r = Record::new("b");
        for x in &s {
            r = r.start_rollout(x.clone(), L, false, 0).rolled_out(0);
        }
        assert_eq!(r.lkg.as_ref().unwrap().revision.commit, "c7aaaa");
        let hist: Vec<&str> = r.history.iter().map(|h| h.revision.commit.as_str()).collect();
        assert_eq!(hist, ["c6aaaa", "c5aaaa", "c4aaaa", "c3aaaa"]);

        let back = r.manual_rollback(None, L, 5).unwrap();
        let Phase::RollingBack { target, failed, .. } = &back.phase else { panic!() };
        assert_eq!((target.revision.commit.as_str(), failed.revision.commit.as_str()), ("c6aaaa", "c7aaaa"));
        let done = back.rolled_back(6);
        assert_eq!(done.lkg.as_ref().unwrap().revision.commit, "c6aaaa");
        assert_eq!(done.quarantine.as_ref().unwrap().revision.commit, "c7aaaa", "the current one is not re-applied");

        let to = r.manual_rollback(Some("c4"), L, 5).unwrap();
        let Phase::RollingBack { target, .. } = &to.phase else { panic!() };
        assert_eq!(target.revision.commit, "c4aaaa");
        assert!(r.manual_rollback(Some("c1"), L, 5).unwrap_err().to_string().contains("no revision \"c1\""));
        assert!(r.manual_rollback(Some("c7"), L, 5).unwrap_err().to_string().contains("already the last-known-good"));
        assert!(r.manual_rollback(Some("c"), L, 5).unwrap_err().to_string().contains("more than one"));
        assert!(Record::new("x").manual_rollback(None, L, 0).unwrap_err().to_string().contains("no last-known-good"));
        assert_eq!(
            Record::new("x").manual_rollback(None, L, 0).unwrap_err(),
            RollbackError::NoLastKnownGood { bundle: "x".into() }
        );
        assert!(back.manual_rollback(None, L, 0).unwrap_err().to_string().contains("busy (rolling back)"));
        assert_eq!(r.retry().quarantine, None);
    }

    #[test]
    fn the_copy_written_last_wins() {
        let a = Record { seq: 3, ..Record::new("b") };
        let b = Record { seq: 5, ..Record::new("b") };
        assert_eq!(newer(Some(a.clone()), Some(b.clone())).unwrap().seq, 5);
        assert_eq!(newer(Some(b.clone()), Some(a.clone())).unwrap().seq, 5);
        assert_eq!(newer(None, Some(a.clone())).unwrap().seq, 3);
        assert_eq!(newer(None, None), None);
    }

    #[test]
    fn a_write_refused_because_the_stored_record_moved_on_never_overwrites_it() {
        let read = Record { seq: 4, ..Record::new("b") };
        let ours = read.retry();
        let theirs = read.pause("by hand", 9);
        let edited_label_only = read.clone();
        let later = Record { seq: 7, ..theirs.clone() };
        let cases: [(&str, Option<u64>, Option<&Record>, AfterConflict); 7] = [
            ("another writer recorded the next transition first", Some(4), Some(&theirs), AfterConflict::Superseded),
            ("another writer went several transitions further", Some(4), Some(&later), AfterConflict::Superseded),
            ("the stored copy appeared after this writer saw none", None, Some(&theirs), AfterConflict::Superseded),
            ("only the object changed, not its record", Some(4), Some(&edited_label_only), AfterConflict::Write),
            ("the stored copy was deleted in between", Some(4), None, AfterConflict::Write),
            (
                "our own earlier write landed though its answer was lost",
                Some(5),
                Some(&ours),
                AfterConflict::AlreadyWritten,
            ),
            (
                "a copy this writer tried to write earlier is no stranger's",
                Some(5),
                Some(&read.pause("an earlier attempt of ours", 1)),
                AfterConflict::Write,
            ),
        ];
        for (case, known, stored, want) in cases {
            assert_eq!(after_conflict(known, &ours, stored), want, "{case}");
        }
        assert_eq!(theirs.seq, ours.seq, "both writers decided the same next version from one read");
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = Record::new("b").start_rollout(snap("c1", vec![cm("a", "1")]), L, false, 7);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""phase":"rollingOut""#), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
        // A record written before the counts existed still reads (as zero).
        let older = text.replace(
            r#","counts":{"rolledOut":0,"adopted":0,"rolledBack":0,"failedNoRollback":0,"rollbackFailed":0}"#,
            "",
        );
        assert_ne!(older, text);
        assert_eq!(serde_json::from_str::<Record>(&older).unwrap(), r);
    }

    #[test]
    fn an_environment_fault_retries_with_backoff_and_never_quarantines_or_rolls_back() {
        let good = snap("c1", vec![cm("a", "1")]);
        let next_rev = snap("c2", vec![cm("a", "2")]);
        let hash = next_rev.revision.hash.clone();
        let mut with_lkg = Record::new("b");
        with_lkg.lkg = Some(good.clone());
        // (case, record the fault meets, expected lkg afterwards)
        let cases: Vec<(&str, Record, Option<Snapshot>)> = vec![
            ("first rollout, during apply", Record::new("b").start_rollout(next_rev.clone(), L, true, 100), None),
            (
                "with a last-known-good, during apply",
                with_lkg.start_rollout(next_rev.clone(), L, false, 100),
                Some(good.clone()),
            ),
            ("while planning (idle)", with_lkg.clone(), Some(good.clone())),
        ];
        for (case, rec, lkg) in cases {
            let r = rec.environment_fault(&hash, "namespaces \"x\" not found", 200);
            assert_eq!(r.phase, Phase::Idle, "{case}: nothing is left half-way");
            assert_eq!(r.quarantine, None, "{case}: not quarantined");
            assert_eq!(r.last, rec.last, "{case}: no outcome recorded: the revision was never judged");
            assert_eq!(r.counts, rec.counts, "{case}");
            assert_eq!(r.lkg, lkg, "{case}: the last-known-good is kept, nothing rolled back");
            assert!(r.seq > rec.seq, "{case}");
            let w = r.retrying.clone().expect("retrying");
            assert_eq!((w.attempts, w.at, w.retry_at), (1, 200, 210), "{case}");
            // Before the retry time it waits; from it on it rolls out again, by itself.
            assert_eq!(next(&r, &hash, false, 209), Next::Retrying { reason: w.reason.clone(), at: 210 }, "{case}");
            assert_eq!(next(&r, &hash, false, 210), Next::RollOut, "{case}");
            // Another revision (a fix in Git) is not held by this one's wait.
            assert_eq!(next(&r, &good.revision.hash, false, 205), Next::RollOut, "{case}");
        }
        // The same revision failing again waits longer; another starts over.
        let once = with_lkg.environment_fault(&hash, "503", 200);
        let twice = once.start_rollout(next_rev.clone(), L, false, 210).environment_fault(&hash, "503", 211);
        assert_eq!((twice.retrying.as_ref().unwrap().attempts, twice.retrying.as_ref().unwrap().retry_at), (2, 231));
        let other = twice.environment_fault("other", "503", 300);
        assert_eq!(other.retrying.as_ref().unwrap().attempts, 1);
        // Healthy at last: the wait is forgotten; so does `agent retry`.
        let done = twice.start_rollout(next_rev.clone(), L, false, 240).rolled_out(250);
        assert_eq!(done.retrying, None);
        assert_eq!(twice.retry().retrying, None);
        // A real failure after the environment answered is the revision's: judged as before.
        let failed = twice.start_rollout(next_rev.clone(), L, false, 240).rollout_failed("crash", false, 250);
        assert_eq!(failed.retrying, None);
        assert!(matches!(failed.phase, Phase::RollingBack { .. }));
        // A rollback is finished, never parked.
        assert_eq!(failed.environment_fault(&hash, "503", 260), failed);
        // The field is optional in JSON: older records read, and it round-trips.
        let text = serde_json::to_string(&twice).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), twice);
        assert!(!serde_json::to_string(&with_lkg).unwrap().contains("retrying"));
    }

    #[test]
    fn rfc3339_formats_unix_seconds() {
        for (t, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_795_430_096, "2026-11-23T10:34:56Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(t), want, "{t}");
        }
    }
}
