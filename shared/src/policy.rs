//! Image tag policies: which tag of a repository a bundle should run.
//!
//! The policy language is Flux's ImagePolicy, so Flux users bring their specs unchanged:
//! `semver` ranges in the constraint syntax Flux users write (space or comma for AND, `||` for OR,
//! `~`, `^`, wildcards, hyphen ranges), `numerical` and `alphabetical` ordering, an optional
//! `filterTags` regex with an `extract` template, and `digest` tracking of one mutable tag.
//!
//! Selection is a pure function of the policy and the tag list; every candidate comes back with
//! the reason it was chosen, kept or dropped, so `agent policy test` can explain a choice.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A policy as written in YAML (a bundle's rollout policy, or `agent policy test --policy`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// A semver range; pre-releases match only when a comparator of the range names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerical: Option<OrderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabetical: Option<OrderSpec>,
    /// Follow one mutable tag (e.g. `latest`) by its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_tags: Option<FilterSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderSpec {
    #[serde(default)]
    pub order: SortOrder,
}

/// Flux's meaning: `asc` selects the last tag in ascending order (the highest), `desc` the lowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DigestSpec {
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    pub pattern: String,
    /// Template over the pattern's groups (`$1`, `$name`, `${name}`); the policy orders on the
    /// extracted value. Default: the whole tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct TagPolicy {
    filter: Option<(regex::Regex, String)>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Semver(Range),
    Numerical(SortOrder),
    Alphabetical(SortOrder),
    Digest(String),
}

/// Why a policy could not be built; names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {spec:?} is not valid YAML for a policy: {reason}")]
    Syntax { spec: String, reason: String },
    #[error("a policy needs exactly one of semver, numerical, alphabetical, digest (found {found})")]
    Kind { found: String },
    #[error("semver range {range:?}: {reason}")]
    Range { range: String, reason: String },
    #[error("filterTags.pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("digest.tag {tag:?} is not a valid tag")]
    DigestTag { tag: String },
}

impl TagPolicy {
    /// Parses the YAML (block or flow) form, e.g. `semver: ">=1.0.0 <2.0.0"` or
    /// `{filterTags: {pattern: '^main-(?P<ts>\d+)$', extract: '$ts'}, numerical: {order: asc}}`.
    pub fn parse(spec: &str) -> Result<TagPolicy, PolicyError> {
        let parsed: PolicySpec = serde_saphyr::from_str(spec).map_err(|e| PolicyError::Syntax {
            spec: spec.to_owned(),
            reason: e.to_string().lines().next().unwrap_or("invalid").trim_start_matches("error: ").to_owned(),
        })?;
        TagPolicy::new(&parsed)
    }

    pub fn new(spec: &PolicySpec) -> Result<TagPolicy, PolicyError> {
        let mut kinds = Vec::new();
        if let Some(r) = &spec.semver {
            kinds.push(("semver", Kind::Semver(Range::parse(r)?)));
        }
        if let Some(o) = &spec.numerical {
            kinds.push(("numerical", Kind::Numerical(o.order)));
        }
        if let Some(o) = &spec.alphabetical {
            kinds.push(("alphabetical", Kind::Alphabetical(o.order)));
        }
        if let Some(d) = &spec.digest {
            if !crate_tag_is_valid(&d.tag) {
                return Err(PolicyError::DigestTag { tag: d.tag.clone() });
            }
            kinds.push(("digest", Kind::Digest(d.tag.clone())));
        }
        if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
            };
            return Err(PolicyError::Kind { found });
        }
        let filter = match &spec.filter_tags {
            None => None,
            Some(f) => {
                let re = regex::Regex::new(&f.pattern)
                    .map_err(|e| PolicyError::Pattern { pattern: f.pattern.clone(), reason: e.to_string() })?;
                Some((re, f.extract.clone().unwrap_or_else(|| "$0".to_owned())))
            }
        };
        let kind = kinds.pop().expect("exactly one kind").1;
        Ok(TagPolicy { filter, kind })
    }

    /// Whether the policy needs the registry's tag list (a digest policy only needs one HEAD).
    pub fn needs_tag_list(&self) -> bool {
        !matches!(self.kind, Kind::Digest(_))
    }

    /// The one tag a digest policy follows (it needs no tag list).
    pub fn tracked_tag(&self) -> Option<&str> {
        match &self.kind {
            Kind::Digest(tag) => Some(tag),
            _ => None,
        }
    }

    /// Chooses among `tags`; the result lists every tag with what happened to it.
    pub fn select<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Selection {
        let mut candidates = Vec::new();
        let mut eligible: Vec<(usize, SortKey)> = Vec::new();
        for tag in tags {
            let i = candidates.len();
            let outcome = match self.judge(tag) {
                Ok(key) => {
                    eligible.push((i, key));
                    Outcome::Eligible
                }
                Err(reason) => Outcome::Dropped(reason),
            };
            candidates.push(Candidate { tag: tag.to_owned(), outcome });
        }
        let order = match self.kind {
            Kind::Numerical(o) | Kind::Alphabetical(o) => o,
            Kind::Semver(_) | Kind::Digest(_) => SortOrder::Asc,
        };
        // The winner is the maximum (asc) or minimum (desc) key; ties broken by the tag text so
        // the choice never depends on the registry's listing order.
        let best = eligible.iter().max_by(|(ia, ka), (ib, kb)| {
            let by_key = ka.cmp(kb);
            let by_key = if order == SortOrder::Desc { by_key.reverse() } else { by_key };
            by_key.then_with(|| candidates[*ia].tag.cmp(&candidates[*ib].tag))
        });
        let chosen = best.map(|(i, _)| *i);
        if let Some(i) = chosen {
            candidates[i].outcome = Outcome::Chosen;
        }
        Selection { chosen: chosen.map(|i| candidates[i].tag.clone()), candidates }
    }

    fn judge(&self, tag: &str) -> Result<SortKey, DropReason> {
        let value = match &self.filter {
            None => tag.to_owned(),
            Some((re, template)) => {
                let caps = re.captures(tag).ok_or(DropReason::FilterMismatch)?;
                let mut out = String::new();
                caps.expand(template, &mut out);
                if out.is_empty() {
                    return Err(DropReason::EmptyExtract);
                }
                out
            }
        };
        match &self.kind {
            Kind::Semver(range) => {
                let v = parse_version(&value).ok_or(DropReason::NotSemver)?;
                if !v.pre.is_empty() && !range.allows_prerelease() {
                    return Err(DropReason::Prerelease);
                }
                if range.matches(&v) { Ok(SortKey::Version(v)) } else { Err(DropReason::OutOfRange) }
            }
            Kind::Numerical(_) => match value.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(SortKey::Number(n)),
                _ => Err(DropReason::NotNumber),
            },
            Kind::Alphabetical(_) => Ok(SortKey::Text(value)),
            Kind::Digest(want) => {
                if tag == want {
                    Ok(SortKey::Text(value))
                } else {
                    Err(DropReason::NotTrackedTag)
                }
            }
        }
    }
}

/// What a policy made of a tag list.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub chosen: Option<String>,
    /// Every tag considered, in the order given.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub tag: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Chosen,
    /// Passed the policy but another tag ranks higher.
    Eligible,
    Dropped(DropReason),
}

/// Why a tag was not eligible. `reason()` is stable (for JSON output and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    FilterMismatch,
    EmptyExtract,
    NotSemver,
    Prerelease,
    OutOfRange,
    NotNumber,
    NotTrackedTag,
}

impl DropReason {
    pub fn reason(self) -> &'static str {
        match self {
            DropReason::FilterMismatch => "FilterMismatch",
            DropReason::EmptyExtract => "EmptyExtract",
            DropReason::NotSemver => "NotSemver",
            DropReason::Prerelease => "Prerelease",
            DropReason::OutOfRange => "OutOfRange",
            DropReason::NotNumber => "NotNumber",
            DropReason::NotTrackedTag => "NotTrackedTag",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::FilterMismatch => "does not match filterTags.pattern",
            DropReason::EmptyExtract => "filterTags.extract produced an empty value",
            DropReason::NotSemver => "not a semantic version",
            DropReason::Prerelease => "pre-release, and the range names no pre-release",
            DropReason::OutOfRange => "outside the semver range",
            DropReason::NotNumber => "not a number",
            DropReason::NotTrackedTag => "not the tracked tag",
        })
    }
}

#[derive(Debug, Clone)]
enum SortKey {
    Version(semver::Version),
    Number(f64),
    Text(String),
}

impl SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortKey::Version(a), SortKey::Version(b)) => a.cmp(b),
            (SortKey::Number(a), SortKey::Number(b)) => a.total_cmp(b),
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            // One policy yields one kind of key; mixed keys cannot meet.
            _ => Ordering::Equal,
        }
    }
}

/// A tag as OCI allows it: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn crate_tag_is_valid(tag: &str) -> bool {
    let mut b = tag.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        && tag.len() <= 128
        && b.all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// Parses a tag as a version the way Flux does: an optional `v`, and missing minor or patch
/// taken as 0 (`v1.2` is 1.2.0).
pub fn parse_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = semver::Version::parse(t) {
        return Some(v);
    }
    // Coerce `1` and `1.2` (with optional pre-release/build) to full versions.
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 2
        || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let full = format!("{}.{}.0{rest}", parts[0], parts.get(1).copied().unwrap_or("0"));
    semver::Version::parse(&full).ok()
}

/// A semver range: alternatives (`||`) of comparator sets (AND).
#[derive(Debug, Clone)]
struct Range {
    alternatives: Vec<Vec<Comparator>>,
}

#[derive(Debug, Clone)]
struct Comparator {
    op: Op,
    version: semver::Version,
    /// Whether the comparator itself named a pre-release (`>=1.2.0-0`).
    has_pre: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Range {
    fn parse(text: &str) -> Result<Range, PolicyError> {
        let err = |reason: String| PolicyError::Range { range: text.to_owned(), reason };
        let mut alternatives = Vec::new();
        for alt in text.split("||") {
            let tokens = tokenize(alt);
            if tokens.is_empty() {
                return Err(err("empty alternative".into()));
            }
            let mut set = Vec::new();
            let mut i = 0;
            while i < tokens.len() {
                // Hyphen range: `A - B` is `>=A <=B` (a partial B is inclusive of all it covers).
                if tokens.get(i + 1).map(String::as_str) == Some("-") {
                    let lo = Partial::parse(&tokens[i]).map_err(&err)?;
                    let hi = Partial::parse(
                        tokens.get(i + 2).ok_or_else(|| err("hyphen range needs an upper bound".into()))?,
                    )
                    .map_err(&err)?;
                    set.extend(lo.expand("=>").map_err(&err)?);
                    set.extend(hi.expand("<=").map_err(&err)?);
                    i += 3;
                    continue;
                }
                let tok = &tokens[i];
                let op_len = tok.find(|c: char| !"=!<>~^".contains(c)).unwrap_or(tok.len());
                let (op, ver) = tok.split_at(op_len);
                let ver = if ver.is_empty() {
                    // `>= 1.2`: operator and version written apart.
                    i += 1;
                    tokens.get(i).ok_or_else(|| err(format!("operator {op:?} has no version")))?.as_str()
                } else {
                    ver
                };
                set.extend(Partial::parse(ver).map_err(&err)?.expand(op).map_err(&err)?);
                i += 1;
            }
            alternatives.push(set);
        }
        Ok(Range { alternatives })
    }

    fn allows_prerelease(&self) -> bool {
        self.alternatives.iter().flatten().any(|c| c.has_pre)
    }

    fn matches(&self, v: &semver::Version) -> bool {
        self.alternatives.iter().any(|set| {
            // A pre-release version is only judged by an alternative that names a pre-release.
            (v.pre.is_empty() || set.iter().any(|c| c.has_pre)) && set.iter().all(|c| c.matches(v))
        })
    }
}

impl Comparator {
    fn matches(&self, v: &semver::Version) -> bool {
        // Build metadata has no precedence (semver 2.0 §10).
        let ord = cmp_precedence(v, &self.version);
        match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
        }
    }
}

fn cmp_precedence(a: &semver::Version, b: &semver::Version) -> Ordering {
    (a.major, a.minor, a.patch).cmp(&(b.major, b.minor, b.patch)).then_with(|| {
        match (a.pre.is_empty(), b.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => a.pre.cmp(&b.pre),
        }
    })
}

/// Splits on whitespace and commas, keeping `-` of hyphen ranges as its own token.
fn tokenize(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// A version as written in a range: `1`, `1.2`, `1.2.x`, `*`, `v1.2.3-rc.1`.
#[derive(Debug, Clone)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: semver::Prerelease,
}

impl Partial {
    fn parse(text: &str) -> Result<Partial, String> {
        let t = text.strip_prefix('v').unwrap_or(text);
        let (core, pre) = match t.split_once('-') {
            Some((c, p)) => (c, p),
            None => (t, ""),
        };
        let core = core.split('+').next().unwrap_or(core);
        let mut nums = [None, None, None];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 || core.is_empty() {
            return Err(format!("{text:?} is not a version"));
        }
        let mut wild = false;
        for (i, p) in parts.iter().enumerate() {
            if ["x", "X", "*"].contains(p) {
                wild = true;
                continue;
            }
            if wild {
                return Err(format!("{text:?}: a number after a wildcard"));
            }
            nums[i] = Some(p.parse::<u64>().map_err(|_| format!("{text:?}: {p:?} is not a number"))?);
        }
        let pre = semver::Prerelease::new(pre).map_err(|e| format!("{text:?}: pre-release: {e}"))?;
        if !pre.is_empty() && nums.iter().any(Option::is_none) {
            return Err(format!("{text:?}: a pre-release needs major.minor.patch"));
        }
        Ok(Partial { major: nums[0], minor: nums[1], patch: nums[2], pre })
    }

    fn lower(&self) -> semver::Version {
        let mut v = semver::Version::new(self.major.unwrap_or(0), self.minor.unwrap_or(0), self.patch.unwrap_or(0));
        v.pre = self.pre.clone();
        v
    }

    /// The first version above everything this partial covers (`1.2` -> 1.3.0); None for `*`.
    fn upper(&self) -> Option<semver::Version> {
        match (self.major, self.minor, self.patch) {
            (None, _, _) => None,
            (Some(m), None, _) => Some(semver::Version::new(m + 1, 0, 0)),
            (Some(m), Some(n), None) => Some(semver::Version::new(m, n + 1, 0)),
            (Some(_), Some(_), Some(_)) => None,
        }
    }

    fn is_full(&self) -> bool {
        self.patch.is_some()
    }

    fn expand(&self, op: &str) -> Result<Vec<Comparator>, String> {
        let has_pre = !self.pre.is_empty();
        let c = |op: Op, version: semver::Version| Comparator { op, version, has_pre };
        let lo = self.lower();
        let any = || vec![c(Op::Ge, semver::Version::new(0, 0, 0))];
        Ok(match op {
            "" | "=" | "==" => match (self.is_full(), self.upper()) {
                (true, _) => vec![c(Op::Eq, lo)],
                (false, Some(hi)) => vec![c(Op::Ge, lo), c(Op::Lt, hi)],
                (false, None) => any(),
            },
            "!=" => match (self.is_full(), self.upper()) {
                (true, _) => vec![c(Op::Ne, lo)],
                // `!=1.2` excludes the whole 1.2.x line: express as a set that cannot be ANDed,
                // so refuse it rather than guess.
                _ => return Err("`!=` needs a full version".into()),
            },
            ">" => match (self.is_full(), self.upper()) {
                (true, _) => vec![c(Op::Gt, lo)],
                (false, Some(hi)) => vec![c(Op::Ge, hi)],
                (false, None) => return Err("`>*` matches nothing".into()),
            },
            ">=" | "=>" => vec![c(Op::Ge, lo)],
            "<" => vec![c(Op::Lt, lo)],
            "<=" | "=<" => match (self.is_full(), self.upper()) {
                (true, _) => vec![c(Op::Le, lo)],
                (false, Some(hi)) => vec![c(Op::Lt, hi)],
                (false, None) => any(),
            },
            "~" | "~>" => {
                let hi = match (self.major, self.minor) {
                    (None, _) => return Ok(any()),
                    (Some(m), None) => semver::Version::new(m + 1, 0, 0),
                    (Some(m), Some(n)) => semver::Version::new(m, n + 1, 0),
                };
                vec![c(Op::Ge, lo), c(Op::Lt, hi)]
            }
            "^" => {
                let hi = match (self.major, self.minor, self.patch) {
                    (None, _, _) => return Ok(any()),
                    (Some(0), Some(0), Some(p)) => semver::Version::new(0, 0, p + 1),
                    (Some(0), Some(n), _) => semver::Version::new(0, n + 1, 0),
                    (Some(m), _, _) => semver::Version::new(m + 1, 0, 0),
                };
                vec![c(Op::Ge, lo), c(Op::Lt, hi)]
            }
            other => return Err(format!("unknown operator {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(spec: &str, tags: &[&str]) -> Option<String> {
        TagPolicy::parse(spec).expect(spec).select(tags.iter().copied()).chosen
    }

    const TAGS: &[&str] =
        &["1.0.0", "1.1.0", "1.2.0-broken", "1.4.2", "1.4.9", "1.5.0-rc.1", "2.0.0", "v2.1.0", "latest", "0.9.3"];

    #[test]
    fn semver_ranges_in_the_syntax_flux_users_write() {
        let table: &[(&str, Option<&str>)] = &[
            (">=1.0.0 <2.0.0", Some("1.4.9")),
            (">=1.0.0, <2.0.0", Some("1.4.9")),
            ("~1.4", Some("1.4.9")),
            ("~1.4.3", Some("1.4.9")),
            ("^1.2", Some("1.4.9")),
            ("^0.9", Some("0.9.3")),
            ("1.1.x", Some("1.1.0")),
            ("1.x", Some("1.4.9")),
            ("*", Some("v2.1.0")),
            ("<1.0.0 || >=2.0.0 <2.1.0", Some("2.0.0")),
            ("1.0.0 - 1.4", Some("1.4.9")),
            ("> 1.4.9 < 2", None),
            (">=3.0.0", None),
        ];
        for (range, want) in table {
            assert_eq!(chosen(&format!("semver: '{range}'"), TAGS).as_deref(), *want, "range {range:?}");
        }
    }

    #[test]
    fn pre_releases_only_when_the_range_names_one() {
        assert_eq!(chosen("semver: '>=1.4.0 <2.0.0'", TAGS).as_deref(), Some("1.4.9"));
        assert_eq!(chosen("semver: '>=1.5.0-0 <2.0.0'", TAGS).as_deref(), Some("1.5.0-rc.1"));
        // A pre-release is judged only by the alternative that asks for pre-releases.
        assert_eq!(chosen("semver: '>=1.4.0 <1.5.0 || >=9.0.0-0'", TAGS).as_deref(), Some("1.4.9"));
        let sel = TagPolicy::parse("semver: '>=1.0.0'").unwrap().select(["1.2.0-broken", "1.1.0"]);
        assert_eq!(sel.candidates[0].outcome, Outcome::Dropped(DropReason::Prerelease));
    }

    #[test]
    fn every_candidate_comes_back_with_its_outcome() {
        let sel = TagPolicy::parse("semver: ~1.4").unwrap().select(["1.4.2", "latest", "2.0.0", "1.4.9"]);
        let outcomes: Vec<(&str, &Outcome)> = sel.candidates.iter().map(|c| (c.tag.as_str(), &c.outcome)).collect();
        assert_eq!(
            outcomes,
            vec![
                ("1.4.2", &Outcome::Eligible),
                ("latest", &Outcome::Dropped(DropReason::NotSemver)),
                ("2.0.0", &Outcome::Dropped(DropReason::OutOfRange)),
                ("1.4.9", &Outcome::Chosen),
            ]
        );
    }

    #[test]
    fn regex_filter_with_extract_then_numerical_or_alphabetical() {
        let tags = ["main-abc123-1700000100", "main-def456-1700000200", "pr-7-1800000000", "main-x-notanumber"];
        let spec = r#"{filterTags: {pattern: '^main-[a-z0-9]+-(?P<ts>.*)$', extract: '$ts'}, numerical: {order: asc}}"#;
        let sel = TagPolicy::parse(spec).unwrap().select(tags);
        assert_eq!(sel.chosen.as_deref(), Some("main-def456-1700000200"));
        assert_eq!(sel.candidates[2].outcome, Outcome::Dropped(DropReason::FilterMismatch));
        assert_eq!(sel.candidates[3].outcome, Outcome::Dropped(DropReason::NotNumber));

        let desc = spec.replace("asc", "desc");
        assert_eq!(TagPolicy::parse(&desc).unwrap().select(tags).chosen.as_deref(), Some("main-abc123-1700000100"));

        let semver = r#"{filterTags: {pattern: '^stable-(?P<v>.*)$', extract: '$v'}, semver: '^1'}"#;
        assert_eq!(
            chosen(semver, &["stable-1.2.0", "stable-1.10.0", "1.99.0", "stable-2.0.0"]).as_deref(),
            Some("stable-1.10.0")
        );
    }

    #[test]
    fn numerical_orders_by_value_not_text_and_alphabetical_by_text() {
        assert_eq!(chosen("numerical: {order: asc}", &["9", "10", "100", "x"]).as_deref(), Some("100"));
        assert_eq!(chosen("numerical: {order: desc}", &["9", "10", "100"]).as_deref(), Some("9"));
        let times = ["2026-11-01T10-00-00", "2026-11-20T09-00-00", "2026-02-28T23-59-59"];
        assert_eq!(chosen("alphabetical: {order: asc}", &times).as_deref(), Some("2026-11-20T09-00-00"));
    }

    #[test]
    fn digest_tracking_needs_no_tag_list_and_keeps_its_tag() {
        let p = TagPolicy::parse("digest: {tag: latest}").unwrap();
        assert!(!p.needs_tag_list());
        assert_eq!(p.tracked_tag(), Some("latest"));
        assert_eq!(p.select(TAGS.iter().copied()).chosen.as_deref(), Some("latest"));
        assert!(TagPolicy::parse("semver: '*'").unwrap().needs_tag_list());
    }

    #[test]
    fn the_choice_does_not_depend_on_listing_order() {
        let mut tags = vec!["v1.4.9", "1.4.9", "1.4.2"];
        let a = chosen("semver: ~1.4", &tags);
        tags.reverse();
        assert_eq!(a, chosen("semver: ~1.4", &tags));
    }

    #[test]
    fn no_match_is_a_selection_without_a_choice() {
        let sel = TagPolicy::parse("semver: '>=5'").unwrap().select(["1.0.0"]);
        assert_eq!(sel.chosen, None);
        assert_eq!(sel.candidates[0].outcome, Outcome::Dropped(DropReason::OutOfRange));
    }

    #[test]
    fn bad_policies_are_errors_that_name_the_value() {
        let table: &[(&str, &str)] = &[
            ("semver: '>=1.x.3'", r#"semver range ">=1.x.3": "1.x.3": a number after a wildcard"#),
            ("semver: '>=banana'", r#"semver range ">=banana": "banana": "banana" is not a number"#),
            ("semver: '>=1.0 ||'", r#"semver range ">=1.0 ||": empty alternative"#),
            ("semver: '%1.0'", r#"semver range "%1.0": "%1.0": "%1" is not a number"#),
            (
                "{semver: '1', numerical: {}}",
                "a policy needs exactly one of semver, numerical, alphabetical, digest (found semver, numerical)",
            ),
            ("{}", "a policy needs exactly one of semver, numerical, alphabetical, digest (found none)"),
            ("{filterTags: {pattern: '('}, numerical: {}}", "filterTags.pattern \"(\": "),
            ("digest: {tag: 'UP per'}", "digest.tag \"UP per\" is not a valid tag"),
        ];
        for (spec, want) in table {
            let err = TagPolicy::parse(spec).expect_err(spec).to_string();
            assert!(err.starts_with(want), "{spec}: got {err:?}, want prefix {want:?}");
        }
        let err = TagPolicy::parse("semvr: '1'").expect_err("unknown key").to_string();
        assert!(err.contains("semvr"), "{err}");
    }

    #[test]
    fn tags_parse_as_versions_the_way_flux_coerces_them() {
        assert_eq!(parse_version("v1.2").map(|v| v.to_string()).as_deref(), Some("1.2.0"));
        assert_eq!(parse_version("1").map(|v| v.to_string()).as_deref(), Some("1.0.0"));
        assert_eq!(parse_version("1.2.0-broken").map(|v| v.pre.to_string()).as_deref(), Some("broken"));
        assert_eq!(parse_version("latest"), None);
        assert_eq!(parse_version("1.2.3.4"), None);
    }
}
