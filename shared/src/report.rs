//! Health reports between stores (docs/waves.md): the document one store publishes per bundle
//! (which release it is on, how it went, since when), read strictly and bounded because other
//! stores wrote it; whether a report is worth a publish (`due`), its OCI manifest, and the
//! registry repository and tag a report lives under (what a record says to publish is
//! `state::Record::report_state`). A report never tells a store what
//! to run: it only opens or holds a wave gate (`shared::waves`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::k8s::Time;

/// The schema this agent writes and reads; a newer one is refused, not guessed at.
pub const SCHEMA: u32 = 1;
/// A report larger than this is refused before it is parsed.
pub const MAX_BYTES: usize = 16 * 1024;
/// Longest string field (a reason is cut to it when written, refused when read).
pub const MAX_TEXT: usize = 512;
/// At most this many labels in a report.
pub const MAX_LABELS: usize = 64;
/// The media type of a report: the config blob of its OCI manifest.
pub const MEDIA_TYPE: &str = "application/vnd.gitops-agent.report.v1+json";
/// The artifact type of a report's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.gitops-agent.report.v1";

/// Where a store stands with a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Seen in Git, not started here (no gate passed yet, or a dry run).
    Pending,
    /// Its wave gate is closed for now; the older release keeps running.
    Waiting { reason: String },
    /// An earlier wave failed on it (the reason names where); the older release keeps running.
    Held { reason: String },
    /// Being applied and watched.
    Rolling,
    /// Runs it, verified healthy.
    Healthy,
    /// Failed here and rolled back to the last-known-good.
    RolledBack { reason: String },
    /// Failed here with nothing to roll back to, or the rollback failed.
    Failed { reason: String },
}

impl State {
    pub fn word(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Waiting { .. } => "waiting",
            State::Held { .. } => "held",
            State::Rolling => "rolling",
            State::Healthy => "healthy",
            State::RolledBack { .. } => "rolledBack",
            State::Failed { .. } => "failed",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            State::Waiting { reason }
            | State::Held { reason }
            | State::RolledBack { reason }
            | State::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// One store's report on one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub schema: u32,
    /// The store's agent id.
    pub store: String,
    /// The node labels the store selected its wave with.
    pub labels: BTreeMap<String, String>,
    pub wave: String,
    pub published: Time,
    pub bundle: String,
    /// `waves::release_id` of the release in Git the state is about.
    pub release: String,
    pub commit: String,
    pub state: State,
    /// When `state` began.
    pub since: Time,
    /// The release running now, when it is another one (waiting, held, rolled back).
    pub running: Option<String>,
}

/// The document on the wire (`state` a word, its `reason` beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Wire {
    schema: u32,
    store: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    wave: String,
    published: Time,
    bundle: String,
    release: String,
    commit: String,
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    since: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    running: Option<String>,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("report of {0} bytes, at most {MAX_BYTES}")]
    TooLarge(usize),
    #[error("not a report: {0}")]
    Invalid(String),
    #[error("report schema {0}, this agent reads {SCHEMA}")]
    Schema(u32),
    #[error("report field {field}: {message}")]
    Field { field: &'static str, message: String },
}

impl Report {
    /// The JSON document, with keys in a fixed order (its digest changes only with its content).
    pub fn to_json(&self) -> Vec<u8> {
        let (state, reason) = (self.state.word().to_owned(), self.state.reason().map(|r| cut(r).to_owned()));
        let wire = Wire {
            schema: self.schema,
            store: self.store.clone(),
            labels: self.labels.clone(),
            wave: self.wave.clone(),
            published: self.published,
            bundle: self.bundle.clone(),
            release: self.release.clone(),
            commit: self.commit.clone(),
            state,
            reason,
            since: self.since,
            running: self.running.clone(),
        };
        serde_json::to_vec(&wire).expect("a report serializes")
    }

    /// Reads another store's report: bounded, strict, every field checked.
    pub fn parse(bytes: &[u8]) -> Result<Report, ParseError> {
        if bytes.len() > MAX_BYTES {
            return Err(ParseError::TooLarge(bytes.len()));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| ParseError::Invalid(e.to_string()))?;
        if wire.schema != SCHEMA {
            return Err(ParseError::Schema(wire.schema));
        }
        let field = |field: &'static str, message: String| ParseError::Field { field, message };
        id(&wire.store).map_err(|m| field("store", m))?;
        dns_label(&wire.wave).map_err(|m| field("wave", m))?;
        if wire.labels.len() > MAX_LABELS {
            return Err(field("labels", format!("{} labels, at most {MAX_LABELS}", wire.labels.len())));
        }
        for (name, text) in [("bundle", &wire.bundle), ("release", &wire.release), ("commit", &wire.commit)] {
            if text.is_empty() || text.len() > MAX_TEXT || text.chars().any(char::is_control) {
                return Err(field(name, "empty, too long or with control characters".into()));
            }
        }
        let long = |s: &String| s.len() > MAX_TEXT || s.chars().any(|c| c.is_control() && c != '\n');
        if wire.reason.as_ref().is_some_and(long) || wire.running.as_ref().is_some_and(long) {
            return Err(field("reason", format!("longer than {MAX_TEXT} or with control characters")));
        }
        if wire.labels.iter().any(|(k, v)| k.len() > 317 || v.len() > 63) {
            return Err(field("labels", "a key or value longer than Kubernetes allows".into()));
        }
        let reason = || wire.reason.clone().ok_or_else(|| field("reason", format!("state {} needs one", wire.state)));
        let state = match wire.state.as_str() {
            "pending" => State::Pending,
            "waiting" => State::Waiting { reason: reason()? },
            "held" => State::Held { reason: reason()? },
            "rolling" => State::Rolling,
            "healthy" => State::Healthy,
            "rolledBack" => State::RolledBack { reason: reason()? },
            "failed" => State::Failed { reason: reason()? },
            other => return Err(field("state", format!("{other:?} is not a state"))),
        };
        Ok(Report {
            schema: wire.schema,
            store: wire.store,
            labels: wire.labels,
            wave: wire.wave,
            published: wire.published,
            bundle: wire.bundle,
            release: wire.release,
            commit: wire.commit,
            state,
            since: wire.since,
            running: wire.running,
        })
    }
}

/// A wave name must be a DNS label: lower-case letters, digits and `-`, 1..=40 characters (the
/// tag `<wave>.<store>` must stay within 128).
pub fn dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a wave name: lower-case letters, digits and '-', at most 40"))
    }
}

/// A store id is an agent id (a label value), so it is safe in a tag.
fn id(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok { Ok(()) } else { Err(format!("{s:?} is not a store id")) }
}

/// A reason cut to [`MAX_TEXT`] on a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The tag a store's report on a bundle lives under in `<reports repository>/<bundle>`.
pub fn tag(wave: &str, store: &str) -> Result<String, String> {
    dns_label(wave)?;
    id(store)?;
    Ok(format!("{wave}.{store}"))
}

/// The store ids of `wave` among a repository's tags (the stagger's members, the reports to
/// read for a gate).
pub fn stores_of<'a>(tags: &'a [String], wave: &str) -> Vec<&'a str> {
    tags.iter()
        .filter_map(|t| t.strip_prefix(wave).and_then(|r| r.strip_prefix('.')))
        .filter(|s| id(s).is_ok())
        .collect()
}

/// The registry repository of a bundle's reports: `<prefix>/<bundle>`, the bundle's folder
/// lower-cased with characters a repository path cannot hold turned into `-`.
pub fn repository(prefix: &str, bundle: &str) -> Result<String, String> {
    let name: String = bundle
        .trim_matches('/')
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '/' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    let ok = |part: &str| {
        !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !name.split('/').all(ok) {
        return Err(format!("bundle {bundle:?} makes no registry repository name ({name:?})"));
    }
    Ok(format!("{}/{name}", prefix.trim_matches('/')))
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut out = String::from("sha256:");
    for b in Sha256::digest(bytes) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The OCI manifest of a report document whose digest is `blob` (the document is both its
/// config and its one layer, so one upload serves both).
pub fn manifest(blob: &str, size: usize) -> Vec<u8> {
    let descriptor = serde_json::json!({"mediaType": MEDIA_TYPE, "digest": blob, "size": size});
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor,
        "layers": [descriptor],
    });
    serde_json::to_vec(&m).expect("a manifest serializes")
}

/// The report blob a fetched manifest names: its config, when it is a report and small
/// enough to read (untrusted: the registry repository is shared by every store).
pub fn config_of(manifest: &[u8]) -> Result<String, String> {
    if manifest.len() > MAX_BYTES {
        return Err(format!("manifest of {} bytes, at most {MAX_BYTES}", manifest.len()));
    }
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| format!("manifest: {e}"))?;
    let config = &m["config"];
    if config["mediaType"] != MEDIA_TYPE {
        return Err(format!("not a report: config media type {}", config["mediaType"]));
    }
    let size = config["size"].as_u64().ok_or("manifest: config without a size")?;
    if size as usize > MAX_BYTES {
        return Err(format!("report of {size} bytes, at most {MAX_BYTES}"));
    }
    let d = config["digest"].as_str().ok_or("manifest: config without a digest")?;
    let hex = d.strip_prefix("sha256:").ok_or("manifest: config digest is not sha256")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(format!("manifest: {d:?} is not a digest"));
    }
    Ok(d.to_owned())
}

/// A report read from the tag `<wave>.<store>` of `bundle`'s repository, checked against what
/// the tag says: another store's tag, wave or bundle is refused (a store can only write about
/// itself under its own name).
pub fn read_tagged(bytes: &[u8], tag: &str, bundle: &str) -> Result<Report, String> {
    let r = Report::parse(bytes).map_err(|e| e.to_string())?;
    let expected = self::tag(&r.wave, &r.store)?;
    if expected != tag {
        return Err(format!("tag {tag} holds a report of {expected}"));
    }
    if r.bundle != bundle {
        return Err(format!("tag {tag} holds a report on bundle {:?}", r.bundle));
    }
    Ok(r)
}

/// `agent fleet status` for one bundle: per wave in Git's order (stores in no known wave
/// last), per store, what runs, its state and how old its report is; within 100 columns.
pub fn fleet_table(bundle: &str, waves: &[String], reports: &[Report], now: Time) -> String {
    let mut rows: Vec<&Report> = reports.iter().collect();
    let order = |r: &Report| waves.iter().position(|w| *w == r.wave).unwrap_or(waves.len());
    rows.sort_by(|a, b| (order(a), &a.store).cmp(&(order(b), &b.store)));
    let mut out = format!("bundle {bundle}: {} report(s)\n", rows.len());
    out.push_str(&format!(
        "{:<10} {:<22} {:<12} {:<10} {:>6}  {}\n",
        "WAVE", "STORE", "RELEASE", "STATE", "AGE", "WHY"
    ));
    for r in rows {
        let mut why = r.state.reason().unwrap_or_default().to_owned();
        if let Some(running) = &r.running {
            why = format!("runs {}; {why}", &running[..running.len().min(12)]);
        }
        let line = format!(
            "{:<10} {:<22} {:<12} {:<10} {:>6}  {}",
            r.wave,
            r.store,
            &r.release[..r.release.len().min(12)],
            r.state.word(),
            human(now - r.published),
            why
        );
        let line: String = line.chars().take(100).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The JSON of `agent fleet status`: stable keys, one object per report.
pub fn fleet_json(bundle: &str, reports: &[Report], now: Time) -> serde_json::Value {
    let stores: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "wave": r.wave, "store": r.store, "release": r.release, "commit": r.commit,
                "state": r.state.word(), "reason": r.state.reason(), "since": r.since,
                "published": r.published, "ageSeconds": now - r.published, "running": r.running,
            })
        })
        .collect();
    serde_json::json!({"bundle": bundle, "stores": stores})
}

/// `4m`, `1h5m`, `30s`: a short remaining time for reasons and ages.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// What this reconcile found running, for `state::Record::report_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// The live objects are what the release renders on this store (in sync, verified, or
    /// just rolled out).
    AsReleased,
    /// Anything else (waiting, blocked, rolled back, not planned).
    Other,
}

/// How the wave gate left a bundle this cycle, for `state::Record::report_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gated {
    /// The gate did not hold it (it may have rolled out, or be in sync).
    No,
    Waiting(String),
    Held(String),
}

/// Whether `next` is worth publishing over `last` (what this store published before): its
/// content changed (ignoring `published`, and `since` of a state that did not change), or the
/// last one is `refresh` old, so readers can tell a live store from a silent one.
pub fn due(last: Option<&Report>, next: &mut Report, refresh: i64) -> bool {
    let Some(last) = last else { return true };
    if last.state.word() == next.state.word() && last.release == next.release {
        next.since = last.since;
    }
    let same = Report { published: next.published, ..last.clone() } == *next;
    !same || next.published - last.published >= refresh
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            schema: SCHEMA,
            store: "store7".into(),
            labels: [("env".to_owned(), "qa".to_owned())].into(),
            wave: "qa".into(),
            published: 1000,
            bundle: "kiosk".into(),
            release: "abc".into(),
            commit: "c0ffee".into(),
            state: State::RolledBack { reason: "CrashLoopBackOff".into() },
            since: 990,
            running: Some("old".into()),
        }
    }

    #[test]
    fn a_report_reads_back_what_was_written() {
        let r = sample();
        assert_eq!(Report::parse(&r.to_json()), Ok(r));
    }

    #[test]
    fn hostile_reports_are_refused_with_the_field() {
        let good = String::from_utf8(sample().to_json()).expect("json is text");
        let cases: Vec<(String, &str)> = vec![
            (good.replace("\"schema\":1", "\"schema\":2"), "report schema 2"),
            (good.replace("\"store\":\"store7\"", "\"store\":\"../x\""), "report field store"),
            (good.replace("\"wave\":\"qa\"", "\"wave\":\"QA\""), "report field wave"),
            (good.replace("\"state\":\"rolledBack\"", "\"state\":\"exploded\""), "report field state"),
            (good.replace(",\"reason\":\"CrashLoopBackOff\"", ""), "report field reason"),
            (good.replace("\"bundle\"", "\"extra\":1,\"bundle\""), "not a report"),
            (good.replace("CrashLoopBackOff", &"x".repeat(MAX_TEXT + 1)), "report field reason"),
            (format!("{good}{}", " ".repeat(MAX_BYTES)), "report of"),
            ("[]".into(), "not a report"),
        ];
        for (text, want) in cases {
            let e = Report::parse(text.as_bytes()).expect_err(&text[..text.len().min(80)]);
            assert!(e.to_string().starts_with(want), "{want}: {e}");
        }
    }

    #[test]
    fn tags_join_wave_and_store_and_are_read_back_per_wave() {
        assert_eq!(tag("canary", "store-1"), Ok("canary.store-1".into()));
        assert!(tag("Canary", "s").is_err());
        let tags: Vec<String> =
            ["qa.s1", "canary.s2", "canary.s3", "canaryx.s4", "canary.-bad"].map(String::from).into();
        assert_eq!(stores_of(&tags, "canary"), vec!["s2", "s3"]);
    }

    #[test]
    fn a_bundle_s_reports_repository_is_a_registry_path() {
        assert_eq!(repository("gitops-reports/stack-b/", "kiosk"), Ok("gitops-reports/stack-b/kiosk".into()));
        assert_eq!(repository("r", "Apps/Kiosk_1"), Ok("r/apps/kiosk_1".into()));
        assert_eq!(repository("r", "a b"), Ok("r/a-b".into()));
        assert!(repository("r", "-x").is_err());
    }

    #[test]
    fn a_manifest_names_its_report_and_a_foreign_one_is_refused() {
        let doc = sample().to_json();
        let d = digest(&doc);
        assert_eq!(config_of(&manifest(&d, doc.len())), Ok(d.clone()));
        let image =
            br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":2}}"#;
        assert!(config_of(image).unwrap_err().starts_with("not a report"));
        let huge = String::from_utf8(manifest(&d, MAX_BYTES + 1)).expect("text");
        assert!(config_of(huge.as_bytes()).unwrap_err().starts_with("report of"));
    }

    #[test]
    fn a_report_under_another_store_s_tag_is_refused() {
        let doc = sample().to_json();
        assert_eq!(read_tagged(&doc, "qa.store7", "kiosk").map(|r| r.store), Ok("store7".into()));
        assert_eq!(read_tagged(&doc, "qa.store8", "kiosk"), Err("tag qa.store8 holds a report of qa.store7".into()));
        assert!(read_tagged(&doc, "qa.store7", "other").is_err());
    }

    #[test]
    fn the_fleet_screen_lists_stores_by_wave_within_100_columns() {
        let qa = sample();
        let last =
            Report { store: "store9".into(), wave: "all".into(), state: State::Healthy, running: None, ..sample() };
        let waves = vec!["qa".to_owned(), "all".to_owned()];
        let text = fleet_table("kiosk", &waves, &[last.clone(), qa.clone()], 1060);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "bundle kiosk: 2 report(s)");
        assert!(lines[2].starts_with("qa         store7") && lines[2].contains("rolledBack"), "{text}");
        assert!(lines[2].contains("runs old; CrashLoopBackOff"), "{text}");
        assert!(lines[3].starts_with("all        store9") && lines[3].contains("healthy"), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 100));
        let doc = fleet_json("kiosk", &[qa], 1060);
        assert_eq!(doc["stores"][0]["state"], "rolledBack");
        assert_eq!(doc["stores"][0]["ageSeconds"], 60);
    }

    #[test]
    fn a_report_is_due_on_change_or_when_its_refresh_is_over() {
        let last = sample();
        let mut same = Report { published: 1100, since: 1050, ..last.clone() };
        assert!(!due(Some(&last), &mut same, 300), "only the time moved");
        assert_eq!(same.since, 990, "the state's start is kept");
        let mut old = Report { published: 1300, ..last.clone() };
        assert!(due(Some(&last), &mut old, 300), "refresh");
        let mut changed = Report { published: 1001, state: State::Healthy, ..last.clone() };
        assert!(due(Some(&last), &mut changed, 300));
        assert!(due(None, &mut sample(), 300));
    }
}
