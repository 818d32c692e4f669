//! `agent status` from the bundle records: what runs (the last-known-good), what happened last,
//! what is quarantined, and what happens next and why. One screen (a table that fits 100
//! columns), JSON for machines, and `--explain` for one bundle in full.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::k8s::Time;
use crate::state::{Counts, OutcomeKind, Paused, Phase, Record, Removal, RemovalState, Retrying, rfc3339};

/// The width the human table fits in.
pub const WIDTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionView {
    /// The git commit (`adopted`: found running).
    pub commit: String,
    pub hash: String,
    pub images: Vec<String>,
    /// Per image, the cosign keys that verified it (`Revision::verified`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub verified: BTreeMap<String, Vec<String>>,
    pub since: Time,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastView {
    pub result: OutcomeKind,
    pub commit: String,
    pub message: String,
    pub at: Time,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineView {
    pub commit: String,
    pub hash: String,
    pub reason: String,
    pub since: Time,
    pub retry_at: Option<Time>,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    pub bundle: String,
    /// One word an operator can grep: `synced`, `rolling-out`, `rolling-back`, `rolled-back`,
    /// `quarantined`, `failed`, `rollback-failed`, `new`, `paused`, `retrying` (an environment
    /// fault, tried again by itself), `blocked`, `deferred` (outside its rollout windows),
    /// `waiting` (its wave gate: the wave before is not healthy and soaked yet, or a stagger
    /// slot), `held` (an earlier wave failed on the release, or the node is in no wave),
    /// `removed` (left Git; its record is history), `removal-held` (left Git; nothing deleted
    /// until confirmed).
    pub state: &'static str,
    /// The last-known-good: what runs, as far as the agent knows.
    pub running: Option<RevisionView>,
    pub last: Option<LastView>,
    pub quarantined: Option<QuarantineView>,
    pub counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
    /// An environment fault stopped the last attempt: what, and when it is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
    /// The bundle left Git: held, or removed (objects deleted or kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<Removal>,
    /// The release Git wants is held by its wave gate (`crate::waves`): why, since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave_held: Option<crate::state::WaveHold>,
    /// `agent retry` overrode a wave hold: who, when, what held it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave_override: Option<crate::state::WaveOverride>,
    /// What the running agent's last reconcile of this bundle found (absent when the agent is
    /// down: the records alone do not know what Git wants now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<CycleView>,
    /// What the running agent is doing with the bundle right now (its last progress line of a
    /// reconcile still running: a step retried while the API server fails, a drain, a watch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// What happens next, and why.
    pub next: String,
}

/// The last progress line of a reconcile still running, and when it was said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub line: String,
    pub at: Time,
}

/// The running agent's last reconcile of a bundle: the commit, the desired images (pinned to
/// digests when resolved) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CycleView {
    pub commit: String,
    pub images: Vec<String>,
    /// Per image, the cosign keys that verified it in this reconcile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verified: BTreeMap<String, Vec<String>>,
    /// `in-sync`, `rolled-out`, `blocked`, ... (one word).
    pub result: String,
    pub message: String,
    pub at: Time,
    /// The last full resync of the bundle: rendered and planned against the cluster (a poll
    /// that finds nothing changed skips both, `crate::replan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<Time>,
    /// A waiting bundle's new images pulled onto the node ahead of its rollout
    /// (`crate::prepull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepull: Option<crate::prepull::Progress>,
}

/// One source as the running agent last saw it. The URL carries no credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    /// `git` or `registry`.
    pub kind: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The last successful fetch.
    pub fetched_at: Option<Time>,
    pub last_error: Option<String>,
    /// Failing since then (what runs is kept; it may lag behind Git).
    pub stale_since: Option<Time>,
    /// `git.verify`'s verdict on the tip: `commit 1a2b3c signed by ci@... (ssh key SHA256:...)`,
    /// or why nothing of it is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl SourceView {
    /// A source not fetched yet.
    pub fn new(kind: &str, url: &str, reference: Option<&str>) -> SourceView {
        SourceView {
            kind: kind.to_owned(),
            url: url.to_owned(),
            reference: reference.map(str::to_owned),
            commit: None,
            fetched_at: None,
            last_error: None,
            stale_since: None,
            signature: None,
        }
    }

    /// Takes one fetch's outcome at `now`: a success clears the error (and sets the commit when
    /// it has one); a failure keeps the last good fetch and marks the source stale since the
    /// first failure in a row.
    pub fn observe(&mut self, outcome: Result<Option<&str>, &str>, now: Time) {
        match outcome {
            Ok(commit) => {
                if let Some(c) = commit {
                    self.commit = Some(c.to_owned());
                }
                self.fetched_at = Some(now);
                self.last_error = None;
                self.stale_since = None;
            }
            Err(e) => {
                self.last_error = Some(e.to_owned());
                self.stale_since = self.stale_since.or(Some(now));
            }
        }
    }
}

/// Who the agent is and whether it leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: String,
    pub node: String,
    /// This process's Lease holder identity.
    pub holder: String,
    /// `None`: leader election is off (this agent always applies).
    pub leader: Option<bool>,
    pub version: String,
}

/// The whole `agent status` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Absent when read from the records (the agent is not running).
    pub agent: Option<AgentView>,
    pub sources: Vec<SourceView>,
    pub bundles: Vec<BundleStatus>,
    pub warning: Option<String>,
}

/// One bundle's status from its record at `now`.
pub fn bundle_status(record: &Record, now: Time) -> BundleStatus {
    let running = record.lkg.as_ref().map(|l| RevisionView {
        commit: l.revision.commit.clone(),
        hash: l.revision.hash.clone(),
        images: l.revision.images.clone(),
        verified: l.revision.verified.clone(),
        since: l.at,
    });
    let last = record.last.as_ref().map(|o| LastView {
        result: o.result,
        commit: o.revision.commit.clone(),
        message: o.message.clone(),
        at: o.at,
    });
    let quarantined = record.quarantine.as_ref().map(|q| QuarantineView {
        commit: q.revision.commit.clone(),
        hash: q.revision.hash.clone(),
        reason: q.reason.clone(),
        since: q.at,
        retry_at: q.retry_at,
        attempts: q.attempts,
    });
    let last_kind = record.last.as_ref().map(|o| o.result);
    let (state, next) = match (&record.phase, &record.quarantine, last_kind) {
        (Phase::RollingOut { candidate, started, .. }, _, _) => (
            "rolling-out",
            format!("rolling out {} since {} ago{RESTARTED}", short(&candidate.revision.commit), ago(now - started)),
        ),
        (Phase::RollingBack { failed, target, .. }, _, _) => (
            "rolling-back",
            format!("rolling back {} to {}{RESTARTED}", short(&failed.revision.commit), short(&target.revision.commit)),
        ),
        (Phase::Idle, _, Some(OutcomeKind::RollbackFailed)) => {
            ("rollback-failed", "needs a person: the rollback did not become healthy (see last)".to_owned())
        }
        (Phase::Idle, Some(q), Some(OutcomeKind::FailedNoRollback)) => (
            "failed",
            format!(
                "needs a person: {} failed with no last-known-good to return to; a change in Git or \
                 `agent retry {}` tries again",
                short(&q.revision.commit),
                record.bundle
            ),
        ),
        (Phase::Idle, _, _) if record.removal.is_some() => {
            removal_line(record.removal.as_ref().expect("guarded"), &record.bundle)
        }
        (Phase::Idle, _, _) if record.paused.is_some() => {
            let p = record.paused.as_ref().expect("guarded");
            (
                "paused",
                format!(
                    "paused since {} ({}); `agent resume {}` lets it roll out",
                    rfc3339(p.at),
                    p.reason,
                    record.bundle
                ),
            )
        }
        (Phase::Idle, _, _) if record.retrying.is_some() => {
            let w = record.retrying.as_ref().expect("guarded");
            let next = match w.retry_at - now {
                left if left > 0 => format!("retrying in {}: {}", ago(left), w.reason),
                _ => format!("retries at the next reconcile: {}", w.reason),
            };
            ("retrying", next)
        }
        (Phase::Idle, Some(q), _) => {
            let state = if last_kind == Some(OutcomeKind::RolledBack) { "rolled-back" } else { "quarantined" };
            let next = match q.retry_at {
                Some(at) if at > now => format!(
                    "retries {} in {} (at {}, attempt {} failed on an image pull)",
                    short(&q.revision.commit),
                    ago(at - now),
                    rfc3339(at),
                    q.attempts
                ),
                Some(_) => format!("retries {} at the next reconcile", short(&q.revision.commit)),
                None => format!(
                    "keeps {} off until Git renders the bundle differently, or `agent retry {}`",
                    short(&q.revision.commit),
                    record.bundle
                ),
            };
            (state, next)
        }
        (Phase::Idle, None, _) if record.lkg.is_none() => ("new", "rolls out at the next reconcile".to_owned()),
        (Phase::Idle, None, _) => ("synced", "follows Git at the next reconcile".to_owned()),
    };
    BundleStatus {
        bundle: record.bundle.clone(),
        state,
        running,
        last,
        quarantined,
        counts: record.counts,
        paused: record.paused.clone(),
        retrying: record.retrying.clone(),
        removal: record.removal.clone(),
        wave_held: record.wave_held.clone(),
        wave_override: record.wave_override.clone(),
        desired: None,
        activity: None,
        next,
    }
}

/// What a record rolling out or back says happens next when no agent is working on it now
/// ([`with_activity`] replaces it with what the running one does).
const RESTARTED: &str = "; an agent restarted meanwhile finishes it first";

/// The status with what the running agent is doing now: a bundle rolling out or back says its
/// latest step (e.g. an apply retried while the API server answers 500) instead of what a
/// restarted agent would do.
pub fn with_activity(mut status: BundleStatus, activity: Activity, now: Time) -> BundleStatus {
    if let ("rolling-out" | "rolling-back", Some(cut)) = (status.state, status.next.find(RESTARTED)) {
        status.next = format!("{}; now: {} ({} ago)", &status.next[..cut], activity.line, ago(now - activity.at));
    }
    status.activity = Some(activity);
    status
}

/// The state word and next line of a bundle that left Git.
fn removal_line(r: &Removal, bundle: &str) -> (&'static str, String) {
    let at = short(&r.commit);
    match &r.state {
        RemovalState::Held { reason, objects } => (
            "removal-held",
            format!(
                "removed from Git at {at}: would delete {} object{}{}; held: {reason}; confirm with \
                 `agent prune --confirm {bundle}`",
                objects.len(),
                if objects.len() == 1 { "" } else { "s" },
                if objects.is_empty() { String::new() } else { format!(" ({})", crate::removal::some_of(objects)) },
            ),
        ),
        RemovalState::Removed { deleted, kept } => (
            "removed",
            format!(
                "removed from Git at {at}: deleted {} object{}{}; the record is kept as history",
                deleted.len(),
                if deleted.len() == 1 { "" } else { "s" },
                if kept.is_empty() { String::new() } else { format!(", kept {}", crate::removal::some_of(kept)) },
            ),
        ),
        RemovalState::Kept { objects } => (
            "removed",
            format!(
                "removed from Git at {at}: its {} object{} kept running (prune.removedBundles: keep), no longer \
                 followed; the record is kept as history",
                objects.len(),
                if objects.len() == 1 { "" } else { "s" },
            ),
        ),
    }
}

/// Adds what the running agent's last reconcile found. A blocked bundle says why it waits
/// (preflight: image missing, render error, dependency, ...) unless its record says more
/// urgent things (a rollout under way, a person needed, a pause).
pub fn with_cycle(mut status: BundleStatus, cycle: CycleView) -> BundleStatus {
    let quiet = matches!(status.state, "synced" | "new" | "rolled-back" | "quarantined");
    // A cycle that met an environment fault before any record was written (the registry did
    // not answer during preflight): retrying, as for an API server fault.
    if cycle.result == crate::outcome::Outcome::Retrying.word() && quiet {
        status.next = format!("retrying at {}: {}", short(&cycle.commit), cycle.message);
        if status.state == "new" || status.state == "synced" {
            status.state = "retrying";
        }
    }
    if cycle.result == crate::outcome::Outcome::Blocked.word() && quiet {
        // The wave gate's reasons read "wave canary: waits for ..." and "held: ...".
        let (word, state) = if cycle.message.starts_with("deferred:") {
            ("waits", "deferred")
        } else if cycle.message.starts_with("wave ") {
            ("waits", "waiting")
        } else if cycle.message.starts_with("held:") {
            ("held", "held")
        } else {
            ("blocked", "blocked")
        };
        status.next = format!("{word} at {}: {}", short(&cycle.commit), cycle.message);
        if let Some(p) = cycle.prepull.as_ref().filter(|_| word == "waits") {
            // First, so the one-screen table's cut keeps it.
            status.next = format!("waits at {}: {p}; {}", short(&cycle.commit), cycle.message);
        }
        if status.state == "new" || status.state == "synced" {
            status.state = state;
        }
    }
    status.desired = Some(cycle);
    status
}

/// A bundle the running agent saw in Git but never recorded (it never got as far as a rollout).
pub fn unrecorded(bundle: &str) -> BundleStatus {
    bundle_status(&Record::new(bundle), 0)
}

/// The sources block of the screen: one line per source, a second when it fails.
pub fn sources(list: &[SourceView], now: Time) -> String {
    let mut out = String::new();
    for s in list {
        let at = match (&s.reference, &s.commit) {
            (Some(r), Some(c)) => format!(" {r}@{}", short(c)),
            (Some(r), None) => format!(" {r}"),
            _ => String::new(),
        };
        let fetched = s.fetched_at.map_or("never fetched".to_owned(), |t| format!("fetched {} ago", ago(now - t)));
        out.push_str(&fit(&format!("{} {}{at}  {fetched}", s.kind, s.url), WIDTH));
        out.push('\n');
        if let Some(signed) = &s.signature {
            // A key's fingerprint is no use cut: a line too long goes on two at its " (".
            let line = format!("  {signed}");
            match line.rfind(" (").filter(|_| line.chars().count() > WIDTH) {
                Some(at) => {
                    out.push_str(&fit(&line[..at], WIDTH));
                    out.push_str(&format!("\n    {}", fit(&line[at + 1..], WIDTH - 4)));
                }
                None => out.push_str(&fit(&line, WIDTH)),
            }
            out.push('\n');
        }
        if let Some(e) = &s.last_error {
            let stale = s.stale_since.map(|t| format!("stale since {} ago: ", ago(now - t))).unwrap_or_default();
            out.push_str(&fit(&format!("  {stale}{e}"), WIDTH));
            out.push('\n');
        }
    }
    out
}

/// The whole screen: who, sources, then the bundle table.
pub fn screen(report: &Report, now: Time) -> String {
    let mut out = String::new();
    if let Some(w) = &report.warning {
        out.push_str(&format!("warning: {w}\n"));
    }
    if let Some(a) = &report.agent {
        let role = match a.leader {
            None => "applies (leader election off)".to_owned(),
            Some(true) => "leader: applies".to_owned(),
            Some(false) => "standby: another replica leads".to_owned(),
        };
        out.push_str(&fit(&format!("agent {} on {} ({}), {role}", a.agent_id, a.node, a.version), WIDTH));
        out.push('\n');
    }
    out.push_str(&sources(&report.sources, now));
    if report.agent.is_some() || !report.sources.is_empty() {
        out.push('\n');
    }
    out.push_str(&table(&report.bundles, now));
    out
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// A duration in its largest whole unit: `45s`, `12m`, `3h`, `2d`.
pub fn ago(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut t: String = text.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The one-screen table: a row per bundle, `NEXT` cut to fit [`WIDTH`] (`--explain` has it all).
pub fn table(statuses: &[BundleStatus], now: Time) -> String {
    let rows: Vec<[String; 5]> = statuses
        .iter()
        .map(|s| {
            let running = s.running.as_ref().map_or("-".to_owned(), |r| short(&r.commit).to_owned());
            let age = s.running.as_ref().map_or("-".to_owned(), |r| ago(now - r.since));
            [fit(&s.bundle, 24), s.state.to_owned(), running, age, s.next.clone()]
        })
        .collect();
    let head = ["BUNDLE", "STATE", "RUNNING", "AGE", "NEXT"];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(4) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let used: usize = widths[..4].iter().map(|w| w + 2).sum();
    let next_width = WIDTH.saturating_sub(used).max(10);
    let line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate().take(4) {
            l.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        l.push_str(&fit(cells[4], next_width));
        l.trim_end().to_owned()
    };
    let mut out = line(head) + "\n";
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        out.push('\n');
    }
    if statuses.is_empty() {
        out.push_str("(no bundle records yet: nothing was rolled out by this agent identity)\n");
    }
    out
}

/// One bundle in full.
pub fn explain(s: &BundleStatus, now: Time) -> String {
    let mut out = format!("bundle {}: {}\n", s.bundle, s.state);
    match &s.running {
        Some(r) => {
            out.push_str(&format!(
                "running (last-known-good): commit {} hash {}, since {} ({} ago)\n",
                short(&r.commit),
                short(&r.hash),
                rfc3339(r.since),
                ago(now - r.since)
            ));
            for image in &r.images {
                out.push_str(&image_line(image, &r.verified));
            }
        }
        None => out.push_str("running: nothing known to be good yet\n"),
    }
    if let Some(c) = &s.desired {
        out.push_str(&format!(
            "desired (Git at {}, last reconcile {} ago): {}\n",
            short(&c.commit),
            ago(now - c.at),
            c.result
        ));
        for image in &c.images {
            out.push_str(&image_line(image, &c.verified));
        }
        if let Some(at) = c.planned_at {
            out.push_str(&format!("  last full resync (render and plan) {} ago\n", ago(now - at)));
        }
        if let Some(p) = &c.prepull {
            out.push_str(&format!("  {p}\n"));
        }
    }
    if let Some(l) = &s.last {
        out.push_str(&format!(
            "last: {} of {} at {} ({} ago): {}\n",
            crate::outcome::Outcome::from(l.result).word(),
            short(&l.commit),
            rfc3339(l.at),
            ago(now - l.at),
            l.message
        ));
    }
    if let Some(q) = &s.quarantined {
        out.push_str(&format!(
            "quarantined: {} (hash {}) since {}, {} attempt(s): {}\n",
            short(&q.commit),
            short(&q.hash),
            rfc3339(q.since),
            q.attempts,
            q.reason
        ));
    }
    if let Some(h) = &s.wave_held {
        out.push_str(&format!("wave: release {} held since {}: {}\n", short(&h.release), rfc3339(h.since), h.reason));
    }
    if let Some(o) = &s.wave_override {
        out.push_str(&format!(
            "wave: release {} started over its hold by `agent retry` ({} at {}): {}\n",
            short(&o.release),
            o.by,
            rfc3339(o.at),
            o.held
        ));
    }
    if let Some(w) = &s.retrying {
        out.push_str(&format!(
            "retrying: hash {} after {} environment fault(s) in a row, the last at {}, again at {}: {}\n",
            short(&w.hash),
            w.attempts,
            rfc3339(w.at),
            rfc3339(w.retry_at),
            w.reason
        ));
    }
    let c = &s.counts;
    out.push_str(&format!(
        "counts: {} rolled out, {} adopted, {} rolled back, {} failed without rollback, {} rollbacks failed\n",
        c.rolled_out, c.adopted, c.rolled_back, c.failed_no_rollback, c.rollback_failed
    ));
    out.push_str(&format!("next: {}\n", s.next));
    out
}

/// One image of `--explain`, with the keys that verified it: `verified: cosign key ci-2026`.
fn image_line(image: &str, verified: &BTreeMap<String, Vec<String>>) -> String {
    match verified.get(image).filter(|k| !k.is_empty()) {
        Some(keys) => format!("  image {image}  verified: cosign key {}\n", keys.join(", ")),
        None => format!("  image {image}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Limits;
    use crate::state::{Snapshot, rendered_hash};
    use serde_json::json;

    const L: Limits = Limits { progress_deadline: 60, verify_window: 0, probes: Vec::new(), drains: Vec::new() };
    const NOW: Time = 1_790_000_000; // 2026-09-21T14:13:20Z

    fn snap(commit: &str, tag: &str) -> Snapshot {
        let objects =
            vec![json!({"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}, "data": {"t": tag}})];
        Snapshot {
            revision: crate::state::Revision {
                commit: commit.into(),
                hash: rendered_hash(&objects),
                images: vec![format!("harbor.example/library/web:{tag}@sha256:0123")],
                verified: Default::default(),
                release: None,
            },
            objects,
            at: 0,
        }
    }

    fn records() -> Vec<Record> {
        let good = snap("1111111111111111aaaa", "1.0.0");
        let synced = Record::new("kiosk").start_rollout(good.clone(), L, false, NOW - 7200).rolled_out(NOW - 7000);
        let rolled_back = synced
            .clone()
            .start_rollout(snap("2222222222222222bbbb", "1.2.0-broken"), L, false, NOW - 300)
            .rollout_failed(
                "Deployment/kiosk/web: pod web-1 container web: CrashLoopBackOff (back-off 10s)",
                false,
                NOW - 290,
            )
            .rolled_back(NOW - 280);
        let pulling = Record { bundle: "signalling".into(), ..synced.clone() }
            .start_rollout(snap("3333333333333333cccc", "1.3.0"), L, false, NOW - 20)
            .rollout_failed("ImagePullBackOff", true, NOW - 12)
            .rolled_back(NOW - 2);
        let midway = Record { bundle: "session-store".into(), ..synced.clone() }.start_rollout(
            snap("4444444444444444dddd", "7.2"),
            L,
            false,
            NOW - 20,
        );
        let fresh = Record::new("new-app");
        vec![Record { bundle: "monitoring".into(), ..synced }, rolled_back, pulling, midway, fresh]
    }

    #[test]
    fn the_table_fits_one_screen_and_says_what_happens_next() {
        let statuses: Vec<BundleStatus> = records().iter().map(|r| bundle_status(r, NOW)).collect();
        let got = table(&statuses, NOW);
        let want = "\
BUNDLE         STATE        RUNNING       AGE  NEXT
monitoring     synced       111111111111  1h   follows Git at the next reconcile
kiosk          rolled-back  111111111111  1h   keeps 222222222222 off until Git renders the bundle …
signalling     rolled-back  111111111111  1h   retries 333333333333 in 58s (at 2026-09-21T14:14:18Z…
session-store  rolling-out  111111111111  1h   rolling out 444444444444 since 20s ago; an agent res…
new-app        new          -             -    rolls out at the next reconcile
";
        assert_eq!(got, want, "\n{got}");
        assert!(got.lines().all(|l| l.chars().count() <= WIDTH), "{got}");
        assert!(table(&[], NOW).contains("no bundle records yet"));
    }

    #[test]
    fn an_environment_fault_reads_retrying_with_when_and_why_never_failed_or_quarantined() {
        let good = snap("1111111111111111aaaa", "1.0.0");
        let next_rev = snap("2222222222222222bbbb", "1.1.0");
        let why = "Deployment/store-1/web: namespaces \"store-1\" not found (HTTP 404)";
        let first = Record::new("kiosk").start_rollout(next_rev.clone(), L, true, NOW - 60).environment_fault(
            &next_rev.revision.hash,
            why,
            NOW - 50,
        );
        let synced = Record::new("kiosk").start_rollout(good, L, false, NOW - 7200).rolled_out(NOW - 7000);
        let third = synced
            .environment_fault(&next_rev.revision.hash, why, NOW - 100)
            .environment_fault(&next_rev.revision.hash, why, NOW - 70)
            .environment_fault(&next_rev.revision.hash, why, NOW);
        // (case, record, state, next)
        let cases = [
            (
                "the first rollout, past its retry time",
                &first,
                "retrying",
                format!("retries at the next reconcile: {why}"),
            ),
            ("a synced bundle's third attempt waits 40s", &third, "retrying", format!("retrying in 40s: {why}")),
        ];
        for (case, record, state, next) in cases {
            let s = bundle_status(record, NOW);
            assert_eq!((s.state, s.next.as_str()), (state, next.as_str()), "{case}");
            assert_eq!(s.quarantined, None, "{case}");
            let doc = serde_json::to_value(&s).unwrap();
            assert_eq!(doc["retrying"]["reason"], why, "{case}");
            assert!(doc["retrying"]["retryAt"].is_i64(), "{case}: {doc}");
        }
        assert_eq!(bundle_status(&third, NOW).running.unwrap().commit, "1111111111111111aaaa", "what runs is kept");
        let line = table(&[bundle_status(&third, NOW)], NOW);
        let row: Vec<&str> = line.lines().nth(1).unwrap_or_default().split_whitespace().take(6).collect();
        assert_eq!(row, ["kiosk", "retrying", "111111111111", "1h", "retrying", "in"], "{line}");
        assert!(line.contains("retrying in 40s: Deployment/store-1/web"), "{line}");
        let full = explain(&bundle_status(&third, NOW), NOW);
        let want = format!(
            "retrying: hash {} after 3 environment fault(s) in a row, the last at {}, again at {}: {why}\n",
            &next_rev.revision.hash[..12],
            rfc3339(NOW),
            rfc3339(NOW + 40)
        );
        assert!(full.contains(&want), "{full}");
    }

    #[test]
    fn a_bundle_that_left_git_reads_removed_or_held_with_the_command_that_confirms_it() {
        let synced = &records()[0];
        let ids: Vec<String> = (1..=4).map(|i| format!("ConfigMap/ns/c{i}")).collect();
        let held = synced.removal_held("9999999999999999ffff", "3 of 4 bundles left Git at once", ids.clone(), NOW);
        let removed = synced.removed(
            "9999999999999999ffff",
            RemovalState::Removed { deleted: ids[..1].to_vec(), kept: vec!["Namespace/ns".into()] },
            NOW,
        );
        let kept = synced.removed("9999999999999999ffff", RemovalState::Kept { objects: ids.clone() }, NOW);
        // (case, record, state, next)
        let cases = [
            (
                "held",
                &held,
                "removal-held",
                "removed from Git at 999999999999: would delete 4 objects (ConfigMap/ns/c1, ConfigMap/ns/c2, \
                 ConfigMap/ns/c3 and 1 more); held: 3 of 4 bundles left Git at once; confirm with \
                 `agent prune --confirm monitoring`",
            ),
            (
                "deleted",
                &removed,
                "removed",
                "removed from Git at 999999999999: deleted 1 object, kept Namespace/ns; the record is kept as history",
            ),
            (
                "kept by node config",
                &kept,
                "removed",
                "removed from Git at 999999999999: its 4 objects kept running (prune.removedBundles: keep), no \
                 longer followed; the record is kept as history",
            ),
        ];
        for (case, record, state, next) in cases {
            let s = bundle_status(record, NOW);
            assert_eq!((s.state, s.next.as_str()), (state, next), "{case}");
            let doc = serde_json::to_value(&s).unwrap();
            assert_eq!(doc["removal"]["commit"], "9999999999999999ffff", "{case}");
            let tag = match case {
                "held" => "held",
                "deleted" => "removed",
                _ => "kept",
            };
            assert_eq!(doc["removal"]["state"], tag, "{case}: the record's own word: {doc}");
        }
        assert_eq!(bundle_status(&removed, NOW).running, None, "nothing of it runs as far as the agent knows");
        assert_eq!(bundle_status(&held, NOW).running.unwrap().commit, "1111111111111111aaaa", "held: still runs");
        let back = bundle_status(&removed.back_in_git(), NOW);
        assert_eq!(back.state, "new", "back in Git: treated as any bundle");
    }

    #[test]
    fn a_commit_signature_too_long_for_a_line_keeps_its_fingerprint_whole_on_a_second() {
        let mut git = SourceView::new("git", "https://gitea.example/stores/gitops.git", Some("main"));
        let fp = "SHA256:WWgLxfNH6FcQnM5iKGLZsZ/actKAm6hSoqnAbCdEfGh";
        git.signature = Some(format!("commit 69c50164d7e1 signed by release-bot@stores.example.com (ssh key {fp})"));
        let text = sources(&[git], NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  commit 69c50164d7e1 signed by release-bot@stores.example.com");
        assert_eq!(lines[2], format!("    (ssh key {fp})"));
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn explain_names_the_cosign_key_that_verified_each_image() {
        let verified = BTreeMap::from([("h/web:1@sha256:01".to_owned(), vec!["ci-2026".to_owned()])]);
        assert_eq!(
            image_line("h/web:1@sha256:01", &verified),
            "  image h/web:1@sha256:01  verified: cosign key ci-2026\n"
        );
        assert_eq!(image_line("h/db:2@sha256:02", &verified), "  image h/db:2@sha256:02\n", "no policy covers it");
    }

    #[test]
    fn explain_and_json_tell_everything() {
        let s = bundle_status(&records()[1], NOW);
        let got = explain(&s, NOW);
        let want = "\
bundle kiosk: rolled-back
running (last-known-good): commit 111111111111 hash HASH, since 2026-09-21T12:16:40Z (1h ago)
  image harbor.example/library/web:1.0.0@sha256:0123
last: rolled-back of 222222222222 at 2026-09-21T14:08:40Z (4m ago): Deployment/kiosk/web: pod web-1 container web: CrashLoopBackOff (back-off 10s); rolled back to 111111111111/HASH
quarantined: 222222222222 (hash QHASH) since 2026-09-21T14:08:40Z, 1 attempt(s): Deployment/kiosk/web: pod web-1 container web: CrashLoopBackOff (back-off 10s)
counts: 1 rolled out, 0 adopted, 1 rolled back, 0 failed without rollback, 0 rollbacks failed
next: keeps 222222222222 off until Git renders the bundle differently, or `agent retry kiosk`
";
        let running = s.running.as_ref().unwrap();
        let q = s.quarantined.as_ref().unwrap();
        let want = want.replace("QHASH", &q.hash[..12]).replace("HASH", &running.hash[..12]);
        assert_eq!(got, want, "\n{got}");

        let doc = serde_json::to_value(&s).unwrap();
        assert_eq!(doc["state"], "rolled-back");
        assert_eq!(doc["running"]["commit"], "1111111111111111aaaa");
        assert_eq!(doc["last"]["result"], "rolledBack");
        assert_eq!(doc["quarantined"]["attempts"], 1);
        assert_eq!(doc["counts"]["rolledBack"], 1);
        assert!(doc["next"].as_str().unwrap().contains("agent retry kiosk"));
    }

    #[test]
    fn the_running_agent_s_screen_shows_who_sources_pauses_and_why_a_bundle_waits() {
        let recs = records();
        let paused = bundle_status(&recs[1].pause("store opening hours", NOW - 600), NOW);
        let blocked = with_cycle(
            bundle_status(&recs[0], NOW),
            CycleView {
                commit: "5555555555555555eeee".into(),
                images: vec!["harbor.example/library/web:1.4.0".into()],
                verified: Default::default(),
                result: "blocked".into(),
                message: "preflight failed: image harbor.example/library/web:1.4.0 is not in the registry".into(),
                at: NOW - 5,
                planned_at: Some(NOW - 65),
                prepull: None,
            },
        );
        let report = Report {
            agent: Some(AgentView {
                agent_id: "gitops-agent".into(),
                node: "store-node-1".into(),
                holder: "store-node-1/4242".into(),
                leader: Some(true),
                version: "0.1.0".into(),
            }),
            sources: vec![
                SourceView {
                    kind: "git".into(),
                    url: "https://gitea.example/stores/gitops.git".into(),
                    reference: Some("main".into()),
                    commit: Some("1111111111111111aaaa".into()),
                    fetched_at: Some(NOW - 12),
                    last_error: None,
                    stale_since: None,
                    signature: Some("commit 1111111111111111 signed by ci@example.com (ssh key SHA256:abc)".into()),
                },
                SourceView {
                    kind: "registry".into(),
                    url: "https://harbor.example".into(),
                    reference: None,
                    commit: None,
                    fetched_at: Some(NOW - 400),
                    last_error: Some("GET https://harbor.example/v2/: connection refused".into()),
                    stale_since: Some(NOW - 300),
                    signature: None,
                },
            ],
            bundles: vec![paused, blocked, unrecorded("brand-new")],
            warning: None,
        };
        let got = screen(&report, NOW);
        let want = "\
agent gitops-agent on store-node-1 (0.1.0), leader: applies
git https://gitea.example/stores/gitops.git main@111111111111  fetched 12s ago
  commit 1111111111111111 signed by ci@example.com (ssh key SHA256:abc)
registry https://harbor.example  fetched 6m ago
  stale since 5m ago: GET https://harbor.example/v2/: connection refused

BUNDLE      STATE    RUNNING       AGE  NEXT
kiosk       paused   111111111111  1h   paused since 2026-09-21T14:03:20Z (store opening hours); `a…
monitoring  blocked  111111111111  1h   blocked at 555555555555: preflight failed: image harbor.exa…
brand-new   new      -             -    rolls out at the next reconcile
";
        assert_eq!(got, want, "\n{got}");
        assert!(got.lines().all(|l| l.chars().count() <= WIDTH), "{got}");
        let doc = serde_json::to_value(&report).unwrap();
        assert_eq!(doc["agent"]["leader"], true);
        assert_eq!(doc["sources"][1]["staleSince"], NOW - 300);
        assert_eq!(doc["bundles"][0]["paused"]["reason"], "store opening hours");
        assert_eq!(doc["bundles"][1]["desired"]["images"][0], "harbor.example/library/web:1.4.0");
        assert!(doc["bundles"][2].get("paused").is_none());
        let deferred = with_cycle(
            bundle_status(&recs[0], NOW),
            CycleView {
                commit: "6666666666666666ffff".into(),
                images: Vec::new(),
                verified: Default::default(),
                result: "blocked".into(),
                message: "deferred: inside deny window `0 9 * * *` for 12h (UTC); opens at 2026-09-21T21:00:00Z".into(),
                at: NOW,
                planned_at: None,
                prepull: None,
            },
        );
        assert_eq!(deferred.state, "deferred");
        let unanswered = with_cycle(
            bundle_status(&recs[0], NOW),
            CycleView {
                commit: "7777777777777777aaaa".into(),
                images: vec!["harbor.example/library/web:1.4.0".into()],
                verified: Default::default(),
                result: "retrying".into(),
                message: "preflight failed (server-error): preflight: harbor.example/library/web:1.4.0: HTTP 503; \
                          the registry is not ready, tried again at the next poll"
                    .into(),
                at: NOW,
                planned_at: None,
                prepull: None,
            },
        );
        assert_eq!(unanswered.state, "retrying", "a registry outage is no block: {unanswered:?}");
        assert!(
            unanswered.next.starts_with("retrying at 777777777777: preflight failed (server-error)"),
            "{}",
            unanswered.next
        );
        assert_eq!(bundle_status(&recs[0], NOW).state, "synced", "the record itself is unchanged");
        assert!(deferred.next.starts_with("waits at 666666666666: deferred: inside deny window"), "{}", deferred.next);
        let cycle = |message: &str| CycleView {
            commit: "7777777777777777ffff".into(),
            images: Vec::new(),
            verified: Default::default(),
            result: "blocked".into(),
            message: message.into(),
            at: NOW,
            planned_at: None,
            prepull: None,
        };
        let waiting = with_cycle(
            bundle_status(&recs[0], NOW),
            cycle("wave canary: waits for wave qa: 1/1 healthy, soak 4m left"),
        );
        assert_eq!(waiting.state, "waiting");
        assert_eq!(waiting.next, "waits at 777777777777: wave canary: waits for wave qa: 1/1 healthy, soak 4m left");
        let held_record =
            recs[0].hold_wave("r2abcdef", "held: wave qa failed at store7: CrashLoopBackOff", NOW - 60).expect("new");
        let held =
            with_cycle(bundle_status(&held_record, NOW), cycle("held: wave qa failed at store7: CrashLoopBackOff"));
        assert_eq!(held.state, "held");
        assert!(explain(&held, NOW).contains("wave: release r2abcdef held since "), "{}", explain(&held, NOW));
        let overridden = held_record.override_wave("alice (uid 1000)", NOW).expect("held");
        let text = explain(&bundle_status(&overridden, NOW), NOW);
        assert!(text.contains("started over its hold by `agent retry` (alice (uid 1000) at "), "{text}");
        let progress = crate::prepull::Progress {
            images: 3,
            pulled: 2,
            pulling: 0,
            queued: 0,
            failed: vec![crate::prepull::Failure {
                image: "harbor.example/web:2@sha256:ab".into(),
                reason: "ErrImagePull".into(),
            }],
        };
        let mut cycle = deferred.desired.clone().expect("the cycle");
        cycle.prepull = Some(progress.clone());
        let pulling = with_cycle(bundle_status(&recs[0], NOW), cycle.clone());
        assert_eq!(
            pulling.next,
            "waits at 666666666666: pre-pulled 2/3 images; harbor.example/web:2@sha256:ab failed: ErrImagePull; \
             deferred: inside deny window `0 9 * * *` for 12h (UTC); opens at 2026-09-21T21:00:00Z"
        );
        let doc = serde_json::to_value(&pulling).unwrap();
        assert_eq!(doc["desired"]["prepull"]["pulled"], 2);
        assert_eq!(doc["desired"]["prepull"]["failed"][0]["reason"], "ErrImagePull");
        assert!(
            explain(&pulling, NOW)
                .contains("\n  pre-pulled 2/3 images; harbor.example/web:2@sha256:ab failed: ErrImagePull\n")
        );
        cycle.message = "quarantined".into();
        assert!(!with_cycle(bundle_status(&recs[0], NOW), cycle).next.contains("pre-pulled"), "only while it waits");
        let text = explain(&report.bundles[1], NOW);
        assert!(
            text.contains(
                "desired (Git at 555555555555, last reconcile 5s ago): blocked\n  image harbor.example/library/web:1.4.0\n  \
                 last full resync (render and plan) 1m ago\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_bundle_rolling_out_says_what_the_running_agent_does_now() {
        let rolling = records()
            .into_iter()
            .map(|r| bundle_status(&r, NOW))
            .find(|s| s.state == "rolling-out")
            .expect("a record rolling out");
        assert!(rolling.next.ends_with("an agent restarted meanwhile finishes it first"), "{}", rolling.next);
        let line = "ConfigMap/store-1/web-config: HTTP 500; retrying in 13.0s";
        let now = with_activity(rolling.clone(), Activity { line: line.into(), at: NOW - 4 }, NOW);
        assert!(now.next.ends_with(&format!("; now: {line} (4s ago)")), "{}", now.next);
        assert!(!now.next.contains("restarted"), "{}", now.next);
        assert_eq!(serde_json::to_value(&now).unwrap()["activity"]["line"], line);
        // A bundle at rest keeps its line; the activity is there for --output json.
        let synced = bundle_status(&records()[0], NOW);
        let kept = with_activity(synced.clone(), Activity { line: "watching".into(), at: NOW }, NOW);
        assert_eq!(kept.next, synced.next);
    }

    #[test]
    fn a_source_is_stale_from_its_first_failure_in_a_row_until_a_success() {
        let mut s = SourceView::new("git", "https://gitea.example/x.git", Some("main"));
        // (outcome, now, commit, fetched_at, last_error, stale_since)
        type Row<'a> =
            (Result<Option<&'a str>, &'a str>, Time, Option<&'a str>, Option<Time>, Option<&'a str>, Option<Time>);
        let rows: Vec<Row> = vec![
            (Ok(Some("c1")), 100, Some("c1"), Some(100), None, None),
            (Err("connection refused"), 160, Some("c1"), Some(100), Some("connection refused"), Some(160)),
            (Err("timed out"), 220, Some("c1"), Some(100), Some("timed out"), Some(160)),
            (Ok(None), 280, Some("c1"), Some(280), None, None),
            (Ok(Some("c2")), 340, Some("c2"), Some(340), None, None),
        ];
        for (outcome, now, commit, fetched, error, stale) in rows {
            s.observe(outcome, now);
            assert_eq!(
                (s.commit.as_deref(), s.fetched_at, s.last_error.as_deref(), s.stale_since),
                (commit, fetched, error, stale),
                "at {now}"
            );
        }
    }

    #[test]
    fn durations_read_at_a_glance() {
        for (secs, want) in [(-5, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"), (86_400, "1d")] {
            assert_eq!(ago(secs), want);
        }
    }
}
