//! Staged rollout across stores (docs/waves.md): the waves as Git declares them (a bundle's
//! `gitopsAgent.waves`, else the repository's `waves.yaml`), which wave a node is in, the wave
//! gate over the earlier wave's reports (`shared::report`), the stagger within a wave, and the
//! release identity every store shares. Pure: reports, labels and `now` come in as arguments.
//!
//! The gate reads only the wave just before this one: a store that is held publishes why
//! (`report::State::Held`), so a failure in wave 1 holds wave 3 through wave 2's reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::duration::HumanDuration;
use crate::k8s::{LabelSelector, Time};
use crate::problem::Problem;
use crate::report::{Report, State};
use crate::yaml_lines::LineIndex;

/// The repository-level file of waves, at the root of the configured git path; a bundle's own
/// `gitopsAgent.waves` wins over it.
pub const REPO_FILE: &str = "waves.yaml";

/// How long a report may be silent before its store counts as not healthy, unless the wave says.
pub const DEFAULT_REPORT_TIMEOUT: i64 = 15 * 60;
/// Time between two stagger slots of a wave, unless the wave says.
pub const DEFAULT_STAGGER: i64 = 60;
/// At most this many waves: each one is a tag prefix and a line of `fleet status`.
pub const MAX_WAVES: usize = 32;

/// A share of a wave's stores: a count (`3`) or a fraction (`50%`, `0.5`), kept in thousandths
/// so it compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Count(u32),
    /// Thousandths of the wave, 1..=1000.
    Permille(u32),
}

impl Share {
    /// How many of `size` stores this share is (a fraction rounds up, at least one).
    pub fn of(self, size: usize) -> usize {
        match self {
            Share::Count(n) => (n as usize).min(size),
            Share::Permille(p) => (size * p as usize).div_ceil(1000).clamp(usize::from(size > 0), size),
        }
    }

    fn parse(v: &Value) -> Result<Share, String> {
        let bad = || format!("{v} is not a share: write a count (3), a percentage (\"50%\") or a fraction (0.5)");
        match v {
            Value::Number(n) if n.as_u64().is_some() => {
                let n = n.as_u64().expect("checked above");
                u32::try_from(n).ok().filter(|n| *n >= 1).map(Share::Count).ok_or_else(bad)
            }
            Value::Number(n) => {
                let f = n.as_f64().ok_or_else(bad)?;
                if f > 0.0 && f <= 1.0 { Ok(Share::Permille((f * 1000.0).round().max(1.0) as u32)) } else { Err(bad()) }
            }
            Value::String(s) => {
                let pct: f64 = s.strip_suffix('%').and_then(|p| p.trim().parse().ok()).ok_or_else(bad)?;
                if pct > 0.0 && pct <= 100.0 {
                    Ok(Share::Permille((pct * 10.0).round().max(1.0) as u32))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Permille(p) if p % 10 == 0 => write!(f, "{}%", p / 10),
            Share::Permille(p) => write!(f, "{}.{}%", p / 10, p % 10),
        }
    }
}

/// One wave as written, before its durations and shares are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaveSpec {
    name: String,
    selector: LabelSelector,
    #[serde(default)]
    soak: Option<HumanDuration>,
    #[serde(default)]
    gate: Option<GateSpec>,
    #[serde(default)]
    max_concurrent: Option<Value>,
    #[serde(default)]
    stagger: Option<HumanDuration>,
    #[serde(default)]
    size: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GateSpec {
    #[serde(default)]
    healthy_share: Option<Value>,
    #[serde(default)]
    report_timeout: Option<HumanDuration>,
}

/// One checked wave.
#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    /// DNS-label characters: it becomes part of registry tags.
    pub name: String,
    pub selector: LabelSelector,
    /// How long this wave's stores must have been healthy on a release before the next wave
    /// starts it (seconds).
    pub soak: i64,
    /// The gate on the wave before this one: which share of it must be healthy and soaked.
    pub healthy_share: Share,
    /// A store of the wave before whose report is older than this counts as not healthy.
    pub report_timeout: i64,
    /// At most this many of this wave's stores start a release in one stagger slot.
    pub max_concurrent: Option<Share>,
    /// Seconds between two stagger slots.
    pub stagger: i64,
    /// The stores this wave is expected to have; stores that never reported count as not
    /// healthy up to it. Unset: the wave is as large as its reports say.
    pub size: Option<u32>,
}

/// Parses the repository's `waves.yaml`: `waves: [...]`, every problem with path and line.
pub fn parse_file(text: &str) -> Result<Vec<Wave>, Problem> {
    let lines = LineIndex::new(text);
    let raw: Value = serde_saphyr::from_str(text).map_err(|e| Problem {
        path: "(document)".into(),
        line: e.location().map(|l| l.line() as usize),
        message: e.to_string().lines().next().unwrap_or("invalid YAML").to_owned(),
    })?;
    let Value::Object(mut top) = raw else {
        return Err(Problem::new("(document)", "expected a mapping with `waves:`").at_line(Some(1)));
    };
    if let Some(key) = top.keys().find(|k| *k != "waves") {
        return Err(Problem::new(key.clone(), "unknown key (the file holds `waves:` only)").at_line(lines.line(key)));
    }
    let waves = top.remove("waves").ok_or_else(|| Problem::new("waves", "missing"))?;
    parse_list(&waves, "waves", &lines)
}

/// Checks a list of waves found at `path` (`waves`, `gitopsAgent.waves`), lines from `lines`.
pub fn parse_list(raw: &Value, path: &str, lines: &LineIndex) -> Result<Vec<Wave>, Problem> {
    let at = |p: String, m: String| Problem { line: lines.line(&p), path: p, message: m };
    let items = raw.as_array().ok_or_else(|| at(path.to_owned(), "expected a list of waves".into()))?;
    if items.is_empty() {
        return Err(at(path.to_owned(), "at least one wave".into()));
    }
    if items.len() > MAX_WAVES {
        return Err(at(path.to_owned(), format!("{} waves, at most {MAX_WAVES}", items.len())));
    }
    let mut out: Vec<Wave> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if let Some(obj) = item.as_object() {
            const KEYS: &[&str] = &["name", "selector", "soak", "gate", "maxConcurrent", "stagger", "size"];
            if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(at(format!("{here}.{k}"), format!("unknown field {k:?}, expected one of {KEYS:?}")));
            }
            if let Some(k) = obj
                .get("gate")
                .and_then(Value::as_object)
                .and_then(|g| g.keys().find(|k| !["healthyShare", "reportTimeout"].contains(&k.as_str())).cloned())
            {
                return Err(at(
                    format!("{here}.gate.{k}"),
                    "unknown field, expected healthyShare or reportTimeout".into(),
                ));
            }
            for field in ["soak", "stagger"] {
                if let Some(Value::String(v)) = obj.get(field)
                    && let Err(e) = humantime::parse_duration(v)
                {
                    return Err(at(format!("{here}.{field}"), format!("{v:?} is not a duration: {e}")));
                }
            }
            if let Some(Value::String(v)) = obj.get("gate").and_then(|g| g.get("reportTimeout"))
                && let Err(e) = humantime::parse_duration(v)
            {
                return Err(at(format!("{here}.gate.reportTimeout"), format!("{v:?} is not a duration: {e}")));
            }
        }
        let spec: WaveSpec = serde_json::from_value(item.clone()).map_err(|e| at(here.clone(), e.to_string()))?;
        if let Err(m) = dns_label(&spec.name) {
            return Err(at(format!("{here}.name"), m));
        }
        if out.iter().any(|w| w.name == spec.name) {
            return Err(at(format!("{here}.name"), format!("wave {:?} is named twice", spec.name)));
        }
        let gate = spec.gate.unwrap_or(GateSpec { healthy_share: None, report_timeout: None });
        let healthy_share = match &gate.healthy_share {
            None => Share::Permille(1000),
            Some(v) => Share::parse(v).map_err(|m| at(format!("{here}.gate.healthyShare"), m))?,
        };
        let max_concurrent = match &spec.max_concurrent {
            None => None,
            Some(v) => Some(Share::parse(v).map_err(|m| at(format!("{here}.maxConcurrent"), m))?),
        };
        let stagger = spec.stagger.map_or(DEFAULT_STAGGER, HumanDuration::secs);
        if stagger == 0 {
            return Err(at(format!("{here}.stagger"), "must be longer than 0s".into()));
        }
        let report_timeout = gate.report_timeout.map_or(DEFAULT_REPORT_TIMEOUT, HumanDuration::secs);
        if report_timeout == 0 {
            return Err(at(format!("{here}.gate.reportTimeout"), "must be longer than 0s".into()));
        }
        if spec.size == Some(0) {
            return Err(at(format!("{here}.size"), "a wave of no store: leave size out instead".into()));
        }
        out.push(Wave {
            name: spec.name,
            selector: spec.selector,
            soak: spec.soak.map_or(0, HumanDuration::secs),
            healthy_share,
            report_timeout,
            max_concurrent,
            stagger,
            size: spec.size,
        });
    }
    Ok(out)
}

/// A wave name must be a DNS label (`report::dns_label`: it is part of the report tags).
pub use crate::report::dns_label;

/// Where the waves of a bundle come from, for status and `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `gitopsAgent.waves` in the bundle's `fleet.yaml`.
    Bundle,
    /// The repository's `waves.yaml`.
    Repository,
}

/// The waves that apply to a bundle: its own win over the repository's; `None`: no waves.
pub fn for_bundle<'a>(bundle: Option<&'a [Wave]>, repo: Option<&'a [Wave]>) -> Option<(&'a [Wave], Source)> {
    match (bundle, repo) {
        (Some(b), _) => Some((b, Source::Bundle)),
        (None, Some(r)) => Some((r, Source::Repository)),
        (None, None) => None,
    }
}

/// The wave a node is in: the first whose selector matches its labels.
pub fn place(waves: &[Wave], labels: &BTreeMap<String, String>) -> Option<usize> {
    waves.iter().position(|w| w.selector.matches(labels))
}

/// What a node matching no wave is told (status, `validate`): it keeps what runs and starts no
/// new release until a wave selects it. Never silently skipped.
pub fn unplaced(waves: &[Wave], labels: &BTreeMap<String, String>) -> String {
    let names: Vec<&str> = waves.iter().map(|w| w.name.as_str()).collect();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "held: this node matches no wave ({}) with labels {{{}}}: no release starts here until one selects it",
        names.join(", "),
        labels.join(",")
    )
}

/// The release every store shares: the bundle's folder in Git (its tree id) and the repository
/// inputs every store reads alike (the waves file's blob id), never a store's render.
pub fn release_id(bundle_tree: &str, repo_inputs: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    h.update(b"release/v1\n");
    h.update(bundle_tree.as_bytes());
    for (name, id) in repo_inputs {
        h.update(format!("\n{name}={id}").as_bytes());
    }
    let mut out = String::with_capacity(20);
    for b in &h.finalize()[..10] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The wave gate's verdict for one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Start the release now; the note says why (for the log).
    Open(String),
    /// Look again at `retry_at` (reports re-read, a soak or a stagger slot ends).
    Waiting { reason: String, retry_at: Time },
    /// An earlier wave failed on this release: only a new release or `agent retry` moves it.
    Held(String),
}

/// What the gate looks at for one store and one bundle.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub waves: &'a [Wave],
    /// This store's wave ([`place`]).
    pub mine: usize,
    pub store: &'a str,
    pub release: &'a str,
    /// The reports of the wave before this one (others are ignored).
    pub previous: &'a [Report],
    /// The store ids of this wave known from its tags, for the stagger (this store counts even
    /// when absent).
    pub members: &'a [String],
    /// When the reports are read again while waiting on them.
    pub reread: i64,
    pub now: Time,
}

/// The wave gate: previous wave failed (held), not yet healthy and soaked (waiting), then the
/// stagger slot of this store within its wave.
pub fn gate(i: &Input) -> Verdict {
    let wave = &i.waves[i.mine];
    let me = format!("wave {}", wave.name);
    if i.mine > 0 {
        let prev = &i.waves[i.mine - 1];
        match previous_wave(wave, prev, i) {
            Previous::Held(reason) => return Verdict::Held(reason),
            Previous::Waiting { reason, retry_at } => {
                return Verdict::Waiting { reason: format!("{me}: waits for {reason}"), retry_at };
            }
            Previous::Passed => {}
        }
    }
    match stagger(wave, i.store, i.members, i.now) {
        Slot::Now { slot, slots } if slots > 1 => Verdict::Open(format!("{me}: open (slot {}/{slots})", slot + 1)),
        Slot::Now { .. } => Verdict::Open(format!("{me}: open")),
        Slot::Later { slot, slots, at } => Verdict::Waiting {
            reason: format!("{me}: staggered, slot {}/{slots} starts in {}", slot + 1, human(at - i.now)),
            retry_at: at,
        },
    }
}

enum Previous {
    Held(String),
    Waiting { reason: String, retry_at: Time },
    Passed,
}

/// The newest report of each store of `wave` (a store republishes; a moved store's old tag
/// names another wave and is ignored).
fn latest<'a>(reports: &'a [Report], wave: &str) -> BTreeMap<&'a str, &'a Report> {
    let mut out: BTreeMap<&str, &Report> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.wave == wave) {
        let newer = out.get(r.store.as_str()).is_none_or(|o| r.published > o.published);
        if newer {
            out.insert(r.store.as_str(), r);
        }
    }
    out
}

fn previous_wave(wave: &Wave, prev: &Wave, i: &Input) -> Previous {
    let stores = latest(i.previous, &prev.name);
    // A failure on this release anywhere in the wave before holds: rolled back, failed, or held
    // itself (its reason names the wave where it failed).
    for (store, r) in &stores {
        if r.release != i.release {
            continue;
        }
        match &r.state {
            State::RolledBack { reason } | State::Failed { reason } => {
                return Previous::Held(format!("held: wave {} failed at {store}: {reason}", prev.name));
            }
            State::Held { reason } => return Previous::Held(reason.clone()),
            _ => {}
        }
    }
    let size = stores.len().max(prev.size.unwrap_or(0) as usize);
    let need = wave.healthy_share.of(size);
    let fresh = |r: &Report| i.now - r.published <= wave.report_timeout;
    let healthy: Vec<Time> = stores
        .values()
        .filter(|r| r.release == i.release && fresh(r))
        .filter_map(|r| match r.state {
            State::Healthy => Some(r.since),
            _ => None,
        })
        .collect();
    let silent = stores.values().filter(|r| !fresh(r)).count();
    let mut soaked: Vec<Time> = healthy.iter().map(|since| since + prev.soak).collect();
    soaked.sort_unstable();
    let summary = format!("{}/{size} healthy", healthy.len());
    let silent_note =
        if silent > 0 { format!(", {silent} silent over {}", human(wave.report_timeout)) } else { String::new() };
    let reread = i.now + i.reread.max(1);
    if size == 0 {
        return Previous::Waiting {
            reason: format!("wave {}: no store has reported yet", prev.name),
            retry_at: reread,
        };
    }
    if healthy.len() < need {
        return Previous::Waiting {
            reason: format!("wave {}: {summary}, needs {}{silent_note}", prev.name, need),
            retry_at: reread,
        };
    }
    // The `need`-th store to finish its soak opens the gate.
    let opens = soaked[need - 1];
    if opens > i.now {
        return Previous::Waiting {
            reason: format!("wave {}: {summary}, soak {} left", prev.name, human(opens - i.now)),
            retry_at: opens.min(reread),
        };
    }
    Previous::Passed
}

/// This store's stagger slot within its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Now { slot: usize, slots: usize },
    Later { slot: usize, slots: usize, at: Time },
}

/// The stagger: the wave's members (its known store ids and this one) ordered by a stable hash
/// of their id, then cut into slots of `maxConcurrent`; slot k of n is open during the k-th
/// `stagger` interval of every n (wall-clock time), so at most `maxConcurrent` stores start in
/// any one interval while every store agrees without talking.
pub fn stagger(wave: &Wave, store: &str, members: &[String], now: Time) -> Slot {
    let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
    all.push(store);
    all.sort_unstable_by_key(|s| (stable_hash(s), *s));
    all.dedup();
    let size = all.len().max(wave.size.unwrap_or(0) as usize);
    let per = wave.max_concurrent.map_or(size, |m| m.of(size).max(1));
    let slots = size.div_ceil(per).max(1);
    let rank = all.iter().position(|s| *s == store).expect("this store was pushed above");
    let slot = (rank / per).min(slots - 1);
    let interval = now.div_euclid(wave.stagger);
    let current = interval.rem_euclid(slots as i64) as usize;
    if current == slot {
        return Slot::Now { slot, slots };
    }
    let ahead = (slot + slots - current) % slots;
    Slot::Later { slot, slots, at: (interval + ahead as i64) * wave.stagger }
}

/// FNV-1a over the id: stable across builds and machines (std's hasher is not).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `4m`, `1h5m`, `30s`: a short remaining time for reasons (`report::human`).
pub use crate::report::human;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Time = 1_796_119_200;

    const FILE: &str = "\
waves:
- name: qa
  selector: {matchLabels: {env: qa}}
  soak: 10m
- name: canary
  selector: {matchLabels: {ring: canary}}
  soak: 30m
  gate: {healthyShare: 100%, reportTimeout: 15m}
- name: all
  selector: {}
  maxConcurrent: 25%
  stagger: 2m
  gate: {healthyShare: 0.5}
";

    fn waves() -> Vec<Wave> {
        parse_file(FILE).expect("the example parses")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn report(store: &str, wave: &str, release: &str, state: State, since: Time, published: Time) -> Report {
        Report {
            schema: crate::report::SCHEMA,
            store: store.into(),
            labels: BTreeMap::new(),
            wave: wave.into(),
            published,
            bundle: "web".into(),
            release: release.into(),
            commit: "c0ffee".into(),
            state,
            since,
            running: None,
        }
    }

    #[test]
    fn the_example_file_parses_with_its_defaults() {
        let w = waves();
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].soak, w[0].healthy_share, w[0].report_timeout), (600, Share::Permille(1000), 900));
        assert_eq!(
            (w[2].max_concurrent, w[2].stagger, w[2].healthy_share),
            (Some(Share::Permille(250)), 120, Share::Permille(500))
        );
        assert_eq!(w[2].healthy_share.to_string(), "50%");
    }

    #[test]
    fn bad_waves_name_their_field_and_line() {
        let cases = [
            ("waves:\n- name: QA\n  selector: {}\n", "waves[0].name", 2),
            ("waves:\n- name: qa\n  selector: {}\n  soak: soon\n", "waves[0].soak", 4),
            ("waves:\n- name: qa\n  selector: {}\n- name: qa\n  selector: {}\n", "waves[1].name", 4),
            ("waves:\n- name: qa\n  selector: {}\n  gate: {healthyShare: 150%}\n", "waves[0].gate.healthyShare", 4),
            ("waves:\n- name: qa\n  selector: {}\n  gate:\n    reportTimout: 5m\n", "waves[0].gate.reportTimout", 5),
            ("waves:\n- name: qa\n  selector: {}\n  maxConcurrent: 0\n", "waves[0].maxConcurrent", 4),
            ("waves:\n- name: qa\n  selecter: {}\n", "waves[0].selecter", 3),
            ("waves: []\n", "waves", 1),
            ("wave:\n- name: qa\n", "wave", 1),
        ];
        for (text, path, line) in cases {
            let p = parse_file(text).expect_err(text);
            assert_eq!((p.path.as_str(), p.line), (path, Some(line)), "{text}: {p}");
        }
    }

    #[test]
    fn shares_count_and_round_up() {
        assert_eq!(Share::Permille(500).of(3), 2);
        assert_eq!(Share::Permille(1000).of(2), 2);
        assert_eq!(Share::Permille(1).of(500), 1);
        assert_eq!(Share::Count(3).of(2), 2);
        assert_eq!(Share::Permille(500).of(0), 0);
        assert_eq!(Share::parse(&serde_json::json!("12.5%")).map(|s| s.to_string()), Ok("12.5%".to_owned()));
    }

    #[test]
    fn a_node_is_in_the_first_wave_that_selects_it_or_told_it_is_in_none() {
        let w = waves();
        assert_eq!(place(&w, &labels(&[("env", "qa"), ("ring", "canary")])), Some(0));
        assert_eq!(place(&w, &labels(&[("ring", "canary")])), Some(1));
        assert_eq!(place(&w, &labels(&[])), Some(2));
        let only_qa = &w[..1];
        assert_eq!(place(only_qa, &labels(&[("store", "s9")])), None);
        assert_eq!(
            unplaced(only_qa, &labels(&[("store", "s9")])),
            "held: this node matches no wave (qa) with labels {store=s9}: no release starts here until one selects it"
        );
    }

    #[test]
    fn the_bundles_waves_win_over_the_repositorys() {
        let w = waves();
        assert_eq!(for_bundle(Some(&w[..1]), Some(&w)).map(|(w, s)| (w.len(), s)), Some((1, Source::Bundle)));
        assert_eq!(for_bundle(None, Some(&w)).map(|(w, s)| (w.len(), s)), Some((3, Source::Repository)));
        assert_eq!(for_bundle(None, None), None);
    }

    #[test]
    fn the_release_is_the_bundles_tree_and_the_repository_inputs() {
        let a = release_id("tree1", &[("waves.yaml", "blob1")]);
        assert_eq!(a, release_id("tree1", &[("waves.yaml", "blob1")]));
        assert_ne!(a, release_id("tree2", &[("waves.yaml", "blob1")]));
        assert_ne!(a, release_id("tree1", &[("waves.yaml", "blob2")]));
        assert_eq!(a.len(), 20);
    }

    fn verdict(mine: usize, previous: &[Report], now: Time) -> Verdict {
        let w = waves();
        gate(&Input { waves: &w, mine, store: "store1", release: "r2", previous, members: &[], reread: 60, now })
    }

    #[test]
    fn the_wave_gate_table() {
        use State::*;
        let rolled_back = RolledBack { reason: "CrashLoopBackOff".into() };
        let held_at_qa = Held { reason: "held: wave qa failed at store7: CrashLoopBackOff".into() };
        let rows: Vec<(&str, usize, Vec<Report>, Verdict)> = vec![
            ("the first wave is open", 0, vec![], Verdict::Open("wave qa: open".into())),
            (
                "nobody reported in the wave before",
                1,
                vec![],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: no store has reported yet".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "qa still runs the old release",
                1,
                vec![report("qa1", "qa", "r1", Healthy, NOW - 9000, NOW - 10)],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: 0/1 healthy, needs 1".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "qa healthy, soak not over: wakes at the reread",
                1,
                vec![report("qa1", "qa", "r2", Healthy, NOW - 360, NOW - 10)],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: 1/1 healthy, soak 4m left".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "qa healthy, soak ends sooner than the reread",
                1,
                vec![report("qa1", "qa", "r2", Healthy, NOW - 590, NOW - 10)],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: 1/1 healthy, soak 10s left".into(),
                    retry_at: NOW + 10,
                },
            ),
            (
                "qa healthy and soaked",
                1,
                vec![report("qa1", "qa", "r2", Healthy, NOW - 600, NOW - 10)],
                Verdict::Open("wave canary: open".into()),
            ),
            (
                "qa rolled this release back",
                1,
                vec![report("store7", "qa", "r2", rolled_back.clone(), NOW - 5, NOW - 5)],
                Verdict::Held("held: wave qa failed at store7: CrashLoopBackOff".into()),
            ),
            (
                "a rollback of another release holds nothing",
                1,
                vec![
                    report("qa1", "qa", "r1", rolled_back.clone(), NOW - 5000, NOW - 5),
                    report("qa2", "qa", "r2", Healthy, NOW - 900, NOW),
                ],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: 1/2 healthy, needs 2".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "a hold travels down the waves",
                2,
                vec![report("c1", "canary", "r2", held_at_qa.clone(), NOW - 50, NOW - 50)],
                Verdict::Held("held: wave qa failed at store7: CrashLoopBackOff".into()),
            ),
            (
                "a silent canary counts as not healthy: 100% waits",
                2,
                vec![],
                Verdict::Waiting {
                    reason: "wave all: waits for wave canary: no store has reported yet".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "one of two canaries healthy passes a 50% gate",
                2,
                vec![
                    report("c1", "canary", "r2", Healthy, NOW - 1800, NOW - 30),
                    report("c2", "canary", "r1", Healthy, NOW - 9000, NOW - 5000),
                ],
                Verdict::Open("wave all: open".into()),
            ),
            (
                "a store whose healthy report went silent counts as not healthy",
                1,
                vec![report("qa1", "qa", "r2", Healthy, NOW - 5000, NOW - 1000)],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: 0/1 healthy, needs 1, 1 silent over 15m".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "reports of another wave are not this gate's",
                1,
                vec![report("c1", "canary", "r2", Healthy, NOW - 5000, NOW)],
                Verdict::Waiting {
                    reason: "wave canary: waits for wave qa: no store has reported yet".into(),
                    retry_at: NOW + 60,
                },
            ),
            (
                "the newest report of a store counts",
                1,
                vec![
                    report("qa1", "qa", "r2", Rolling, NOW - 900, NOW - 800),
                    report("qa1", "qa", "r2", Healthy, NOW - 700, NOW - 700),
                ],
                Verdict::Open("wave canary: open".into()),
            ),
        ];
        for (name, mine, previous, want) in rows {
            assert_eq!(verdict(mine, &previous, NOW), want, "{name}");
        }
    }

    #[test]
    fn a_gate_on_a_wave_of_known_size_counts_the_missing_as_not_healthy() {
        let mut w = waves();
        w[0].size = Some(2);
        let previous = vec![report("qa1", "qa", "r2", State::Healthy, NOW - 9000, NOW)];
        let v = gate(&Input {
            waves: &w,
            mine: 1,
            store: "s",
            release: "r2",
            previous: &previous,
            members: &[],
            reread: 60,
            now: NOW,
        });
        assert_eq!(
            v,
            Verdict::Waiting {
                reason: "wave canary: waits for wave qa: 1/2 healthy, needs 2".into(),
                retry_at: NOW + 60
            }
        );
    }

    #[test]
    fn the_stagger_starts_at_most_max_concurrent_per_interval_and_every_store_in_time() {
        let w = waves();
        let wave = &w[2]; // 25% per 2m slot
        let members: Vec<String> = (0..200).map(|i| format!("store{i}")).collect();
        let t0 = 1_796_119_200; // a multiple of 120
        let mut starts: BTreeMap<Time, usize> = BTreeMap::new();
        for store in &members {
            let start = match stagger(wave, store, &members, t0) {
                Slot::Now { slots, .. } => {
                    assert_eq!(slots, 4);
                    t0
                }
                Slot::Later { at, slots, .. } => {
                    assert_eq!(slots, 4);
                    assert!(matches!(stagger(wave, store, &members, at), Slot::Now { .. }), "{store} opens at {at}");
                    at
                }
            };
            *starts.entry(start).or_default() += 1;
        }
        assert_eq!(starts.values().copied().collect::<Vec<_>>(), vec![50, 50, 50, 50]);
        assert!(starts.keys().all(|t| *t < t0 + 4 * 120));
        // Deterministic: the same answer for the same inputs, in any member order.
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(stagger(wave, "store7", &members, t0 + 30), stagger(wave, "store7", &reversed, t0 + 30));
    }

    #[test]
    fn a_wave_without_max_concurrent_starts_together() {
        let w = waves();
        let members: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(stagger(&w[1], "a", &members, NOW + 7), Slot::Now { slot: 0, slots: 1 });
    }

    #[test]
    fn remaining_times_read_short() {
        assert_eq!([human(240), human(10), human(3700), human(90)], ["4m", "10s", "1h1m", "1m30s"]);
    }
}
