//! The gate chain of one bundle's reconcile: from what the adapters observed (refused objects, the
//! record, the rendered hash, the windows, the old pods' sessions) to what the driver does next,
//! with the reason and when to look again. In order: refused objects, a busy record,
//! `state::next` (quarantine, pause, in sync, verify), rollout windows, `waitForIdle`. The first
//! that holds decides; a dry run reads no sessions. Also the first-meet force rule. The wave
//! gate (`shared::waves`) sits between `state::next` and the windows: a release waits for the
//! earlier wave, or is held by its failure, while what runs keeps running.
//!
//! The idle readings are I/O, so the chain is two calls: [`before_idle`] decides, or says the
//! idle gate is next ([`Chain::ReadIdle`]); the driver then reads the sessions and asks
//! [`after_idle`].

use crate::drain::{Idle, Plan, idle_for, waiting_for_idle};
use crate::fleet::BundlePolicy;
use crate::k8s::Time;
use crate::report::{Gated, Report};
use crate::state::{Next, Phase, Record};
use crate::waves::{self, Verdict, Wave};
use crate::window::{self, Change, WindowSpec};

/// Whether the reconcile may change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// `--dry-run`: say what would be done.
    Yes,
    No,
}

/// What the adapters observed of one bundle, for the chain.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// What `plan::blockers` refused (another identity's objects, conflicts not forced).
    pub refused: &'a [String],
    pub record: &'a Record,
    /// `state::rendered_hash` of the desired objects.
    pub hash: &'a str,
    /// The live objects already equal the desired ones (`plan::Summary::in_sync`).
    pub in_sync: bool,
    /// The node's rollout windows (`rollout.windows`).
    pub node_windows: &'a [WindowSpec],
    /// The bundle's own (`gitopsAgent.rolloutWindows`), added to the node's.
    pub bundle_windows: &'a [WindowSpec],
    /// A rollout, or an emergency one (`--ignore-windows`).
    pub change: Change,
    /// The bundle's planned drains; those with `waitForIdle` hold the rollout.
    pub drains: &'a [Plan],
    pub dry_run: DryRun,
    /// The bundle's waves, when it has any.
    pub waves: Option<WaveCheck<'a>>,
    pub now: Time,
}

/// What the wave gate looks at (`shared::waves`).
#[derive(Debug, Clone, Copy)]
pub struct WaveCheck<'a> {
    pub waves: &'a [Wave],
    /// This node's wave (`waves::place`); `None`: it matches none and is told so.
    pub place: Option<usize>,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub store: &'a str,
    pub release: &'a str,
    /// The reports read so far, `None` until the driver read them.
    pub reports: Option<&'a Reports>,
    /// Seconds between two reads of the reports while the gate waits.
    pub reread: i64,
}

/// What the driver read of the reports for one gate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reports {
    /// The reports of the wave before this store's.
    pub previous: Vec<Report>,
    /// The store ids of this store's wave, from the tags.
    pub members: Vec<String>,
    /// Reports that could not be read or were refused, said in the log (never trusted).
    pub problems: Vec<String>,
}

impl WaveCheck<'_> {
    /// Whether the gate needs the reports (the wave before, or the stagger's members).
    pub fn needs_reports(&self) -> bool {
        self.place.is_some_and(|i| i > 0 || self.waves[i].max_concurrent.is_some())
    }
}

/// What the driver does with the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Live objects equal the last-known-good: nothing to do.
    InSync,
    /// Live objects equal Git's but were never verified: watch them and record them.
    Verify,
    /// A dry run's [`Gate::Verify`].
    WouldVerify,
    /// Apply and watch.
    RollOut,
    /// A dry run's [`Gate::RollOut`].
    WouldRollOut,
    /// Not tried, and why; `retry_at` is when the answer may change (a window opens, the idle
    /// pods are read again), `None` when only a change (Git, a person) does.
    Blocked { reason: String, retry_at: Option<Time> },
    /// The environment failed this revision's last attempt (`shared::fault`): tried again at
    /// `retry_at`, by itself; `reason` reads "retrying in 40s: <what failed>".
    Retrying { reason: String, retry_at: Time },
}

/// A decided gate, with what the driver says and saves before acting on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub gate: Gate,
    /// Lines for the log that do not change the gate (windows overridden, what the idle gate
    /// read), said in order.
    pub notes: Vec<String>,
    /// A record to persist before acting (the first deferral of a revision for idle pods, so
    /// `maxDefer` counts from it across runs). Boxed: a record is large, a decision is passed.
    pub save: Option<Box<Record>>,
    /// How the wave gate left the bundle, for its health report.
    pub wave: Gated,
}

/// What the chain says before the idle gate.
#[derive(Debug, Clone, PartialEq)]
pub enum Chain {
    Decided(Decision),
    /// Everything before lets the rollout go and the idle gate is next: say `notes`, read the
    /// old pods' sessions, then ask [`after_idle`].
    ReadIdle {
        notes: Vec<String>,
    },
    /// The wave gate needs the other stores' reports: read them and ask [`before_idle`] again
    /// with [`WaveCheck::reports`] set.
    ReadReports,
}

impl Gate {
    /// Blocked until something changes.
    pub fn blocked(reason: impl Into<String>) -> Gate {
        Gate::Blocked { reason: reason.into(), retry_at: None }
    }

    /// An environment fault's wait, said as "retrying in 40s: <reason>".
    pub fn retrying(reason: &str, retry_at: Time, now: Time) -> Gate {
        Gate::Retrying { reason: format!("retrying in {}s: {reason}", (retry_at - now).max(0)), retry_at }
    }

    /// Deferred: looked at again at `retry_at`.
    pub fn deferred(reason: &str, retry_at: Option<Time>) -> Gate {
        Gate::Blocked { reason: format!("deferred: {reason}"), retry_at }
    }
}

impl Decision {
    pub(crate) fn only(gate: Gate) -> Decision {
        Decision { gate, notes: Vec::new(), save: None, wave: Gated::No }
    }
}

/// The first time the agent meets a bundle (no last-known-good, no outcome yet) it takes the
/// objects over explicitly, after recording what ran (adoption): fields Helm, Fleet or kubectl
/// own are forced then. Afterwards only `gitopsAgent.forceConflicts` forces.
pub fn force_conflicts(record: &Record, policy: &BundlePolicy) -> bool {
    policy.force_conflicts || first_meeting(record)
}

/// The agent has never finished anything for this bundle.
pub fn first_meeting(record: &Record) -> bool {
    record.lkg.is_none() && record.last.is_none()
}

/// The chain up to the idle gate.
pub fn before_idle(seen: &Observed) -> Chain {
    if !seen.refused.is_empty() {
        return decided(Gate::blocked(format!(
            "nothing applied: {} (set gitopsAgent.forceConflicts to take fields over)",
            seen.refused.join("; ")
        )));
    }
    if seen.record.phase != Phase::Idle {
        return decided(Gate::blocked(format!("busy: {} (finish it first)", seen.record.phase.name())));
    }
    match crate::state::next(seen.record, seen.hash, seen.in_sync, seen.now) {
        Next::Nothing => return decided(Gate::InSync),
        Next::Verify if seen.dry_run == DryRun::Yes => return decided(Gate::WouldVerify),
        Next::Verify => return decided(Gate::Verify),
        Next::Blocked(reason) => return decided(Gate::blocked(reason)),
        Next::Retrying { reason, at } => return decided(Gate::retrying(&reason, at, seen.now)),
        Next::RollOut => {}
    }
    let mut notes = Vec::new();
    let wave = Gated::No;
    if let Some(check) = &seen.waves {
        match wave_gate(check, seen.record, seen.now) {
            WaveStep::Read => return Chain::ReadReports,
            WaveStep::Open(note) => notes.push(note),
            WaveStep::Stop(decision) => return Chain::Decided(decision),
        }
    }
    let windows = match window::for_bundle(seen.node_windows, seen.bundle_windows) {
        Ok(w) => w,
        Err(e) => return decided(Gate::blocked(e)),
    };
    match window::gate_change(seen.change, &windows, seen.now) {
        window::Gate::Deferred { reason, until } => return decided(Gate::deferred(&reason, until)),
        window::Gate::Open if seen.change == Change::EmergencyRollout && !windows.is_empty() => {
            notes.push("--ignore-windows: rolling out whatever the windows say".to_owned());
        }
        window::Gate::Open => {}
    }
    match seen.dry_run {
        DryRun::Yes => Chain::Decided(Decision { gate: Gate::WouldRollOut, notes, save: None, wave }),
        DryRun::No if waiting_for_idle(seen.drains).is_empty() => {
            Chain::Decided(Decision { gate: Gate::RollOut, notes, save: None, wave })
        }
        DryRun::No => Chain::ReadIdle { notes },
    }
}

/// The idle gate, once [`before_idle`] said [`Chain::ReadIdle`]: `readings` are the old pods'
/// sessions (per pod, the count or why it could not be read). The wait counts from the first
/// deferral of this revision, which the record keeps.
pub fn after_idle(seen: &Observed, readings: &[(String, Result<u64, String>)]) -> Decision {
    let since = seen.record.idle_since(seen.hash, seen.now);
    match idle_for(&waiting_for_idle(seen.drains), readings, since, seen.now) {
        Idle::Go(why) => Decision { gate: Gate::RollOut, notes: vec![why], save: None, wave: Gated::No },
        Idle::Wait { recheck_at, reason } => {
            let first = seen.record.idle_wait.as_ref().is_none_or(|w| w.hash != seen.hash);
            Decision {
                gate: Gate::deferred(&reason, Some(recheck_at)),
                notes: vec![reason],
                save: first.then(|| Box::new(seen.record.wait_for_idle(seen.hash, seen.now))),
                wave: Gated::No,
            }
        }
    }
}

enum WaveStep {
    Read,
    Open(String),
    Stop(Decision),
}

/// The wave gate of a release that would roll out: an override by `agent retry` opens it; a
/// node in no wave is held (told, never skipped); else `waves::gate` over the reports, read
/// first when it needs them. A held release is saved in the record (for `agent retry`).
fn wave_gate(check: &WaveCheck, record: &Record, now: Time) -> WaveStep {
    if let Some(o) = record.wave_overridden(check.release) {
        return WaveStep::Open(format!("wave gate overridden by agent retry ({} at {}): {}", o.by, o.at, o.held));
    }
    let Some(mine) = check.place else {
        let reason = waves::unplaced(check.waves, check.labels);
        return WaveStep::Stop(Decision {
            gate: Gate::blocked(reason.clone()),
            notes: Vec::new(),
            save: None,
            wave: Gated::Held(reason),
        });
    };
    let empty = Reports::default();
    let reports = match check.reports {
        Some(r) => r,
        None if check.needs_reports() => return WaveStep::Read,
        None => &empty,
    };
    let verdict = waves::gate(&waves::Input {
        waves: check.waves,
        mine,
        store: check.store,
        release: check.release,
        previous: &reports.previous,
        members: &reports.members,
        reread: check.reread,
        now,
    });
    match verdict {
        Verdict::Open(note) => WaveStep::Open(note),
        Verdict::Waiting { reason, retry_at } => WaveStep::Stop(Decision {
            gate: Gate::Blocked { reason: reason.clone(), retry_at: Some(retry_at) },
            notes: Vec::new(),
            save: None,
            wave: Gated::Waiting(reason),
        }),
        Verdict::Held(reason) => WaveStep::Stop(Decision {
            gate: Gate::Blocked {
                reason: format!("{reason} (`agent retry` starts it anyway)"),
                retry_at: Some(now + check.reread.max(1)),
            },
            notes: Vec::new(),
            save: record.hold_wave(check.release, &reason, now).map(Box::new),
            wave: Gated::Held(reason),
        }),
    }
}

fn decided(gate: Gate) -> Chain {
    Chain::Decided(Decision::only(gate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::{Mode, Read, SessionProbe};
    use crate::rollout::Limits;
    use crate::state::{Revision, Snapshot, rendered_hash};
    use crate::window::WindowKind;
    use serde_json::json;

    const L: Limits = Limits { progress_deadline: 60, verify_window: 0, probes: Vec::new(), drains: Vec::new() };

    /// 2026-12-01T10:00:00Z, a Tuesday.
    const NOW: Time = 1_796_119_200;
    /// 22:00 the same day.
    const TEN_PM: Time = NOW + 12 * 3600;

    fn snap(data: &str) -> Snapshot {
        let objects = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}, "data": {"k": data}}),
        ];
        let hash = rendered_hash(&objects);
        Snapshot {
            revision: Revision {
                commit: format!("commit-{data}"),
                hash,
                images: vec![],
                verified: Default::default(),
                release: None,
            },
            objects,
            at: 0,
        }
    }

    /// A record whose last-known-good is `good`.
    fn running(good: &Snapshot) -> Record {
        Record::new("web").start_rollout(good.clone(), L, false, 10).rolled_out(20)
    }

    /// Open from 22:00 to 00:00 UTC each day.
    fn evenings() -> Vec<WindowSpec> {
        vec![WindowSpec {
            kind: WindowKind::Allow,
            schedule: "0 22 * * *".into(),
            duration: "2h".into(),
            time_zone: "UTC".into(),
        }]
    }

    fn waits_for_idle() -> Vec<Plan> {
        vec![Plan {
            workload: "Deployment/ns/web".into(),
            window: 30,
            mode: Mode::Surge,
            why: "room for a surge pod".into(),
            grace: 45,
            pre_stop: None,
            sessions: Some(SessionProbe {
                url: "http://{podIP}:9000/metrics".into(),
                read: Read::Gauge("sessions".into()),
                interval: 10,
                timeout: 2,
            }),
            max_defer: Some(600),
            notes: vec![],
        }]
    }

    /// What the adapters saw, before each row changes one thing: a new revision, an idle record
    /// with a last-known-good, nothing refused, no windows, no drains.
    struct Seen {
        refused: Vec<String>,
        record: Record,
        hash: String,
        in_sync: bool,
        node_windows: Vec<WindowSpec>,
        bundle_windows: Vec<WindowSpec>,
        change: Change,
        drains: Vec<Plan>,
        dry_run: DryRun,
        /// No waves unless a row sets them.
        waves: Vec<Wave>,
        place: Option<usize>,
        labels: std::collections::BTreeMap<String, String>,
        reports: Option<Reports>,
    }

    impl Seen {
        fn new() -> Seen {
            Seen {
                refused: vec![],
                record: running(&snap("good")),
                hash: snap("new").revision.hash,
                in_sync: false,
                node_windows: vec![],
                bundle_windows: vec![],
                change: Change::Rollout,
                drains: vec![],
                dry_run: DryRun::No,
                waves: vec![],
                place: None,
                labels: [("store".to_owned(), "s1".to_owned())].into(),
                reports: None,
            }
        }

        fn observed(&self, now: Time) -> Observed<'_> {
            Observed {
                refused: &self.refused,
                record: &self.record,
                hash: &self.hash,
                in_sync: self.in_sync,
                node_windows: &self.node_windows,
                bundle_windows: &self.bundle_windows,
                change: self.change,
                drains: &self.drains,
                dry_run: self.dry_run,
                waves: (!self.waves.is_empty()).then_some(WaveCheck {
                    waves: &self.waves,
                    place: self.place,
                    labels: &self.labels,
                    store: "s1",
                    release: "r2",
                    reports: self.reports.as_ref(),
                    reread: 60,
                }),
                now,
            }
        }
    }

    /// The chain's answer in a word, with its reason and retry time.
    fn said(chain: &Chain) -> (&'static str, String, Option<Time>) {
        match chain {
            Chain::ReadIdle { .. } => ("read idle", String::new(), None),
            Chain::ReadReports => ("read reports", String::new(), None),
            Chain::Decided(d) => match &d.gate {
                Gate::InSync => ("in sync", String::new(), None),
                Gate::Verify => ("verify", String::new(), None),
                Gate::WouldVerify => ("would verify", String::new(), None),
                Gate::RollOut => ("roll out", String::new(), None),
                Gate::WouldRollOut => ("would roll out", String::new(), None),
                Gate::Blocked { reason, retry_at } => ("blocked", reason.clone(), *retry_at),
                Gate::Retrying { reason, retry_at } => ("retrying", reason.clone(), Some(*retry_at)),
            },
        }
    }

    /// Edits one thing of [`Seen::new`].
    type Edit = fn(&mut Seen);

    fn busy(s: &mut Seen) {
        s.record = s.record.start_rollout(snap("new"), L, false, 30);
    }

    fn quarantine(s: &mut Seen) {
        s.record = Record::new("web").start_rollout(snap("new"), L, false, 10).rollout_failed("deadline", false, 20);
    }

    /// The new revision's apply met a missing namespace 5 seconds ago (first attempt: 10 s).
    fn environment_fault(s: &mut Seen) {
        s.record = s.record.environment_fault(&s.hash, "namespaces \"ns\" not found", NOW - 5);
    }

    /// qa, then canary, with this store in canary (`place` 1) unless the row says.
    fn in_canary(s: &mut Seen) {
        s.waves = crate::waves::parse_file(
            "waves:\n- name: qa\n  selector: {matchLabels: {env: qa}}\n  soak: 10m\n- name: canary\n  selector: {}\n",
        )
        .expect("the waves parse");
        s.place = Some(1);
    }

    fn qa_reported(s: &mut Seen, state: crate::report::State, since: Time) {
        let report = Report {
            schema: crate::report::SCHEMA,
            store: "store7".into(),
            labels: Default::default(),
            wave: "qa".into(),
            published: NOW - 5,
            bundle: "web".into(),
            release: "r2".into(),
            commit: "c".into(),
            state,
            since,
            running: None,
        };
        s.reports = Some(Reports { previous: vec![report], ..Reports::default() });
    }

    fn in_sync_with_lkg(s: &mut Seen) {
        s.hash = snap("good").revision.hash;
        s.in_sync = true;
    }

    #[test]
    fn each_gate_of_the_chain_decides_in_its_turn_with_its_reason_and_retry_time() {
        let rows: Vec<(&str, Edit, &str, &str, Option<Time>)> = vec![
            ("a new revision with nothing in the way rolls out", |_| {}, "roll out", "", None),
            (
                "objects another identity owns block it",
                |s| {
                    s.refused =
                        vec!["ConfigMap/ns/c belongs to agent other".into(), "Deployment/ns/web: conflict".into()]
                },
                "blocked",
                "nothing applied: ConfigMap/ns/c belongs to agent other; Deployment/ns/web: conflict \
                 (set gitopsAgent.forceConflicts to take fields over)",
                None,
            ),
            ("a record still rolling out blocks it", busy, "blocked", "busy: rolling out (finish it first)", None),
            ("a quarantined revision is blocked by state::next", quarantine, "blocked", "revision commit-new/", None),
            (
                "a paused bundle is blocked by state::next",
                |s| s.record = s.record.pause("maintenance", 5),
                "blocked",
                "paused since 1970-01-01T00:00:05Z (maintenance)",
                None,
            ),
            (
                "an environment fault holds the revision until its retry time, and says when",
                environment_fault,
                "retrying",
                "retrying in 5s: namespaces \"ns\" not found",
                Some(NOW + 5),
            ),
            (
                "past its retry time the revision rolls out again by itself",
                |s| s.record = s.record.environment_fault(&s.hash, "HTTP 503", NOW - 10),
                "roll out",
                "",
                None,
            ),
            (
                "another revision is not held by an environment fault of the last one",
                |s| {
                    environment_fault(s);
                    s.hash = snap("fix").revision.hash;
                },
                "roll out",
                "",
                None,
            ),
            ("live objects equal to the last-known-good are in sync", in_sync_with_lkg, "in sync", "", None),
            ("live objects equal to Git but never verified are verified", |s| s.in_sync = true, "verify", "", None),
            (
                "a dry run only says it would verify",
                |s| {
                    s.in_sync = true;
                    s.dry_run = DryRun::Yes;
                },
                "would verify",
                "",
                None,
            ),
            ("a dry run only says it would roll out", |s| s.dry_run = DryRun::Yes, "would roll out", "", None),
            (
                "a closed node window defers it until the window opens",
                |s| s.node_windows = evenings(),
                "blocked",
                "deferred: ",
                Some(TEN_PM),
            ),
            (
                "a closed window of the bundle's own defers it too",
                |s| s.bundle_windows = evenings(),
                "blocked",
                "deferred: ",
                Some(TEN_PM),
            ),
            (
                "an emergency goes out whatever the windows say",
                |s| {
                    s.node_windows = evenings();
                    s.change = Change::EmergencyRollout;
                },
                "roll out",
                "",
                None,
            ),
            (
                "a window that does not compile blocks it, naming the field",
                |s| {
                    s.bundle_windows = evenings();
                    s.bundle_windows[0].schedule = "every evening".into();
                },
                "blocked",
                "fleet.yaml: gitopsAgent.rolloutWindows[0].schedule: ",
                None,
            ),
            ("waitForIdle makes the idle gate next", |s| s.drains = waits_for_idle(), "read idle", "", None),
            ("a wave after the first reads the reports first", in_canary, "read reports", "", None),
            (
                "the first wave without a stagger needs no report",
                |s| {
                    in_canary(s);
                    s.place = Some(0);
                },
                "roll out",
                "",
                None,
            ),
            (
                "a node in no wave is held and told so",
                |s| {
                    in_canary(s);
                    s.place = None;
                },
                "blocked",
                "held: this node matches no wave (qa, canary) with labels {store=s1}",
                None,
            ),
            (
                "a soaking wave before waits, and says when it looks again",
                |s| {
                    in_canary(s);
                    qa_reported(s, crate::report::State::Healthy, NOW - 360);
                },
                "blocked",
                "wave canary: waits for wave qa: 1/1 healthy, soak 4m left",
                Some(NOW + 60),
            ),
            (
                "a healthy soaked wave before opens the gate",
                |s| {
                    in_canary(s);
                    qa_reported(s, crate::report::State::Healthy, NOW - 600);
                },
                "roll out",
                "",
                None,
            ),
            (
                "a rollback in the wave before holds the release",
                |s| {
                    in_canary(s);
                    qa_reported(s, crate::report::State::RolledBack { reason: "CrashLoopBackOff".into() }, NOW - 5);
                },
                "blocked",
                "held: wave qa failed at store7: CrashLoopBackOff (`agent retry` starts it anyway)",
                Some(NOW + 60),
            ),
            (
                "an override by agent retry opens a held release",
                |s| {
                    in_canary(s);
                    qa_reported(s, crate::report::State::RolledBack { reason: "CrashLoopBackOff".into() }, NOW - 5);
                    let held = s.record.hold_wave("r2", "held: wave qa failed", NOW - 100).expect("a new hold");
                    s.record = held.override_wave("alice", NOW - 50).expect("something held");
                },
                "roll out",
                "",
                None,
            ),
            (
                "a rollback of a running release never waits for a wave: the record is busy first",
                |s| {
                    in_canary(s);
                    busy(s);
                },
                "blocked",
                "busy: ",
                None,
            ),
            (
                "a wave gate beats a closed window",
                |s| {
                    in_canary(s);
                    qa_reported(s, crate::report::State::Rolling, NOW - 5);
                    s.node_windows = evenings();
                },
                "blocked",
                "wave canary: waits for wave qa: 0/1 healthy",
                Some(NOW + 60),
            ),
            (
                "a dry run reads no sessions",
                |s| {
                    s.drains = waits_for_idle();
                    s.dry_run = DryRun::Yes;
                },
                "would roll out",
                "",
                None,
            ),
            // The order: when two gates hold, the earlier one decides.
            (
                "refused objects beat a busy record",
                |s| {
                    s.refused = vec!["Deployment/ns/web: conflict".into()];
                    busy(s);
                },
                "blocked",
                "nothing applied: ",
                None,
            ),
            (
                "refused objects beat a dry run",
                |s| {
                    s.refused = vec!["Deployment/ns/web: conflict".into()];
                    s.dry_run = DryRun::Yes;
                },
                "blocked",
                "nothing applied: ",
                None,
            ),
            (
                "a busy record beats being in sync",
                |s| {
                    busy(s);
                    in_sync_with_lkg(s);
                },
                "blocked",
                "busy: ",
                None,
            ),
            (
                "a busy record beats a closed window",
                |s| {
                    busy(s);
                    s.node_windows = evenings();
                },
                "blocked",
                "busy: ",
                None,
            ),
            (
                "a quarantine beats a closed window",
                |s| {
                    quarantine(s);
                    s.node_windows = evenings();
                },
                "blocked",
                "revision ",
                None,
            ),
            (
                "an environment fault's wait beats a closed window, which is asked once it ends",
                |s| {
                    environment_fault(s);
                    s.node_windows = evenings();
                },
                "retrying",
                "retrying in ",
                Some(NOW + 5),
            ),
            (
                "being in sync needs no open window",
                |s| {
                    in_sync_with_lkg(s);
                    s.node_windows = evenings();
                },
                "in sync",
                "",
                None,
            ),
            (
                "a closed window beats a dry run",
                |s| {
                    s.node_windows = evenings();
                    s.dry_run = DryRun::Yes;
                },
                "blocked",
                "deferred: ",
                Some(TEN_PM),
            ),
            (
                "a closed window beats the idle gate: no sessions are read",
                |s| {
                    s.node_windows = evenings();
                    s.drains = waits_for_idle();
                },
                "blocked",
                "deferred: ",
                Some(TEN_PM),
            ),
            (
                "an emergency still waits for idle pods",
                |s| {
                    s.node_windows = evenings();
                    s.change = Change::EmergencyRollout;
                    s.drains = waits_for_idle();
                },
                "read idle",
                "",
                None,
            ),
        ];
        for (name, edit, word, reason, retry_at) in rows {
            let mut seen = Seen::new();
            edit(&mut seen);
            let chain = before_idle(&seen.observed(NOW));
            let (got_word, got_reason, got_retry) = said(&chain);
            assert_eq!(got_word, word, "{name}: {chain:?}");
            assert!(got_reason.starts_with(reason), "{name}: {got_reason:?} should start with {reason:?}");
            assert_eq!(got_retry, retry_at, "{name}");
            if let Chain::Decided(d) = &chain {
                let held = d.save.as_ref().and_then(|r| r.wave_held.clone()).map(|h| h.reason);
                let want = got_reason
                    .starts_with("held: wave")
                    .then(|| got_reason.replace(" (`agent retry` starts it anyway)", ""));
                assert_eq!(held, want, "{name}: only the idle gate and a first wave hold save");
            }
        }
    }

    #[test]
    fn an_emergency_says_that_it_overrides_the_windows_and_only_when_there_are_windows() {
        let mut seen = Seen::new();
        seen.change = Change::EmergencyRollout;
        let Chain::Decided(d) = before_idle(&seen.observed(NOW)) else { panic!("decided") };
        assert_eq!(d.notes, Vec::<String>::new());
        seen.node_windows = evenings();
        let Chain::Decided(d) = before_idle(&seen.observed(NOW)) else { panic!("decided") };
        assert_eq!(
            (d.gate, d.notes),
            (Gate::RollOut, vec!["--ignore-windows: rolling out whatever the windows say".to_owned()])
        );
        seen.drains = waits_for_idle();
        assert_eq!(
            before_idle(&seen.observed(NOW)),
            Chain::ReadIdle { notes: vec!["--ignore-windows: rolling out whatever the windows say".to_owned()] }
        );
    }

    fn reading(pod: &str, sessions: std::result::Result<u64, &str>) -> (String, std::result::Result<u64, String>) {
        (pod.to_owned(), sessions.map_err(str::to_owned))
    }

    #[test]
    fn idle_pods_let_the_rollout_go_and_say_so() {
        let mut seen = Seen::new();
        seen.drains = waits_for_idle();
        let d = after_idle(&seen.observed(NOW), &[reading("web-1", Ok(0)), reading("web-2", Ok(0))]);
        assert_eq!(
            d,
            Decision {
                gate: Gate::RollOut,
                notes: vec!["idle: no sessions on 2 old pods".into()],
                save: None,
                wave: Gated::No
            }
        );
        let d = after_idle(&seen.observed(NOW), &[]);
        assert_eq!((d.gate, d.notes), (Gate::RollOut, vec!["no old pods to wait for".to_owned()]));
    }

    #[test]
    fn busy_pods_defer_the_rollout_one_interval_and_the_first_deferral_is_saved() {
        let mut seen = Seen::new();
        seen.drains = waits_for_idle();
        let d = after_idle(&seen.observed(NOW), &[reading("web-1", Ok(3))]);
        let Gate::Blocked { reason, retry_at } = &d.gate else { panic!("deferred: {d:?}") };
        assert!(reason.starts_with("deferred: "), "{reason}");
        assert_eq!(d.notes, vec![reason["deferred: ".len()..].to_owned()], "the log says the idle gate's reason");
        assert_eq!(*retry_at, Some(NOW + 10), "the probe's interval");
        let saved = d.save.expect("the first deferral is saved");
        assert_eq!(saved.idle_since(&seen.hash, NOW + 500), NOW);

        // Looked at again later: the wait still counts from the first deferral, nothing to save.
        seen.record = *saved;
        let d = after_idle(&seen.observed(NOW + 10), &[reading("web-1", Ok(3))]);
        assert!(matches!(d.gate, Gate::Blocked { retry_at: Some(t), .. } if t == NOW + 20), "{d:?}");
        assert_eq!(d.save, None);

        // maxDefer (600s) after the first deferral the rollout goes, sessions or not.
        let d = after_idle(&seen.observed(NOW + 600), &[reading("web-1", Ok(3))]);
        assert_eq!(d.gate, Gate::RollOut, "{d:?}");
    }

    #[test]
    fn a_new_revision_waiting_for_idle_starts_its_own_deferral() {
        let mut seen = Seen::new();
        seen.drains = waits_for_idle();
        seen.record = seen.record.wait_for_idle(&snap("older").revision.hash, NOW - 1000);
        let d = after_idle(&seen.observed(NOW), &[reading("web-1", Err("connection refused"))]);
        assert!(matches!(d.gate, Gate::Blocked { .. }), "an unreadable pod counts as busy: {d:?}");
        let saved = d.save.expect("a deferral of another revision is replaced");
        assert_eq!(saved.idle_since(&seen.hash, NOW + 1), NOW);
    }

    #[test]
    fn conflicts_are_forced_the_first_time_a_bundle_is_met_or_when_the_policy_says_so() {
        let policy = |force_conflicts| BundlePolicy { force_conflicts, ..BundlePolicy::default() };
        let failed_first =
            Record::new("web").start_rollout(snap("new"), L, false, 10).rollout_failed("deadline", false, 20);
        let rows = [
            ("never met", Record::new("web"), false, true),
            ("met, with a last-known-good", running(&snap("good")), false, false),
            ("met, its first rollout failed (no last-known-good)", failed_first, false, false),
            ("met, and the policy forces", running(&snap("good")), true, true),
        ];
        for (name, record, forced_by_policy, forced) in rows {
            assert_eq!(force_conflicts(&record, &policy(forced_by_policy)), forced, "{name}");
        }
    }
}
