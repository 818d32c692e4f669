//! Drain windows: never cut a live customer session (a kiosk pod holds one WebSocket per
//! conversation) during a rollout. A workload with a drain policy (`gitopsAgent.drainWindow`, or
//! `gitopsAgent.drain[]` per workload) is decided here in four steps; the agent only fetches,
//! applies, calls and keeps the clock.
//!
//! 1. **Shaping** ([`shape`]): before the workload is applied, the fields its drain depends on are
//!    written into the manifest, so they are owned by the agent under server-side apply, are part
//!    of the revision and come back with a rollback: the update strategy, the pod template's
//!    `terminationGracePeriodSeconds` (raised to the window, never lowered) and an optional
//!    `preStop` hook.
//!    - Deployments and DaemonSets surge before they go unavailable (`maxUnavailable: 0`, a
//!      non-zero `maxSurge`): the new pod is ready before the old one is asked to stop.
//!    - That needs room for one more pod. On a one-GPU node where each pod requests
//!      `nvidia.com/gpu: 1`, the surge pod would stay Pending until the progress deadline, so the
//!      fallback is one pod at a time (`maxSurge: 0`, `maxUnavailable: 1`): the old pod drains for
//!      the whole window, and its replacement is scheduled once the old one is gone.
//!    - StatefulSets replace their pods one at a time in place anyway; their strategy is left
//!      alone.
//! 2. **Room** ([`room`]) is an estimate of the scheduler's resource fit, nothing more:
//!    - a pod's request is, per resource, the larger of the sum over its containers (plus
//!      restartable init containers, i.e. sidecars) and the largest init container (plus the
//!      sidecars started before it), plus `spec.overhead` and `pods: 1`; a container's limit
//!      stands in for a missing request, as Kubernetes defaults requests to limits;
//!    - the feasible nodes are those not cordoned (`spec.unschedulable`; DaemonSets ignore it),
//!      whose labels satisfy the template's `nodeSelector` and required node affinity, and whose
//!      `NoSchedule`/`NoExecute` taints the template tolerates (DaemonSets also get the
//!      tolerations their controller adds); capacity is `status.allocatable`;
//!    - a node's use is the requests of the pods bound to it that have not ended (terminating
//!      pods hold their resources until they are gone), except the workload's own pods (same
//!      namespace, labels match its selector): they are replaced by `spec.replicas` (default 1)
//!      steady-state pods placed first-fit over the feasible nodes in name order. So the answer is
//!      the same before and after the first rollout, and does not flip between two reconciles;
//!    - then one more pod must fit on a feasible node (a DaemonSet: a second pod beside its own
//!      on every feasible node). A `hostPort` (or `hostNetwork`) or a required pod anti-affinity
//!      against the workload's own labels allows one of its pods per node (per topology domain).
//!
//!    Not modelled: preferred affinities, pod affinity and anti-affinity towards other
//!    workloads, topology spread constraints, volume limits, priorities and preemption.
//! 3. **Waiting for idle** ([`idle`]): with a session probe and `waitForIdle`, the rollout starts
//!    only once every old pod reports 0 sessions, or once `maxDefer` has passed since the revision
//!    was first deferred. A pod whose sessions cannot be read counts as busy.
//! 4. **Following the drain** ([`terminating`], [`ended`], [`report`], [`progress`]): each old
//!    pod from its deletion until it is gone, and how it ended: drained cleanly, or N sessions
//!    cut when the grace period ended it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::fleet::LabelSelector;
use crate::state::Time;

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: i64 = 30;
/// Between two session readings of one pod, by default.
const DEFAULT_INTERVAL: i64 = 5;
/// Of one session reading, by default.
const DEFAULT_TIMEOUT: i64 = 2;
/// The kinds a drain applies to (all `apps/v1`).
const KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

// ---- fleet.yaml `gitopsAgent.drain[]` ----

/// One drain policy as written in `fleet.yaml` (`gitopsAgent.drain[]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainSpec {
    /// The workload's name, or `Kind/name`; absent: every Deployment, StatefulSet and DaemonSet
    /// of the bundle.
    #[serde(default)]
    pub workload: Option<String>,
    /// Sessions get at least this long once a pod is asked to stop (default: the bundle's
    /// `drainWindow`, else the node's `rollout.drainWindow`).
    #[serde(default)]
    pub window: Option<String>,
    /// How old pods are replaced (default `auto`: surge when there is room for one more pod).
    #[serde(default)]
    pub replace: Option<Replace>,
    /// A hook that tells the app to drain when its pod is asked to stop.
    #[serde(default)]
    pub pre_stop: Option<PreStopSpec>,
    /// Where each pod says how many sessions it holds.
    #[serde(default)]
    pub sessions: Option<SessionsSpec>,
    /// Start a rollout only once the old pods are idle (needs `sessions`).
    #[serde(default)]
    pub wait_for_idle: Option<WaitForIdleSpec>,
}

/// How old pods are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Replace {
    /// Surge when the estimate ([`room`]) finds room for one more pod, else one at a time.
    #[default]
    Auto,
    Surge,
    OneAtATime,
}

/// `preStop`: exactly one of `httpGet` and `sleep`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreStopSpec {
    #[serde(default)]
    pub http_get: Option<HttpGetSpec>,
    /// A duration (`5s`): the kubelet's own sleep action, no shell needed in the image.
    #[serde(default)]
    pub sleep: Option<String>,
    /// default: the first container
    #[serde(default)]
    pub container: Option<String>,
}

/// `preStop.httpGet`: called on the pod by the kubelet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetSpec {
    pub path: String,
    /// A number 1-65535 or a port name (`http`).
    pub port: Value,
}

/// The session probe: exactly one of `gauge` and `jsonPointer`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionsSpec {
    /// A URL template as in the health probes (`crate::probe::VARIABLES`), naming the pod; a path
    /// (`/metrics`) means `http://{podIP}:{port}/metrics`.
    pub url: String,
    /// A gauge in the Prometheus text format, summed over its label sets.
    #[serde(default)]
    pub gauge: Option<String>,
    /// An RFC 6901 pointer to a number in a JSON body (`/active`).
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// Between two readings of one pod (default 5s, at least 1s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Of one reading (default 2s).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `waitForIdle`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitForIdleSpec {
    /// The longest a revision waits for idle pods; then it rolls out and sessions get the window.
    pub max_defer: String,
}

/// Keys of a drain entry, per path inside it: `deny_unknown_fields` rejects the others, but its
/// error names neither the path nor the line; this table lets `fleet.yaml` parsing do both.
const KNOWN: &[(&str, &[&str])] = &[
    ("", &["workload", "window", "replace", "preStop", "sessions", "waitForIdle"]),
    ("preStop", &["httpGet", "sleep", "container"]),
    ("preStop.httpGet", &["path", "port"]),
    ("sessions", &["url", "gauge", "jsonPointer", "interval", "timeout"]),
    ("waitForIdle", &["maxDefer"]),
];

/// The first key of a raw drain entry that [`DrainSpec`] does not know: its path inside the
/// entry (`.sessions.gauge_name`) and the message. A typo in a safety policy must not be
/// silently dropped, and must say where it is.
pub fn unknown_key(entry: &Value) -> Option<(String, String)> {
    fn walk(v: &Value, at: &str) -> Option<(String, String)> {
        let map = v.as_object()?;
        let (_, known) = KNOWN.iter().find(|(p, _)| *p == at)?;
        for (k, child) in map {
            let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            if !known.contains(&k.as_str()) {
                let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                return Some((
                    format!(".{path}"),
                    format!("unknown field `{k}`, expected one of {}", expected.join(", ")),
                ));
            }
            if let Some(found) = walk(child, &path) {
                return Some(found);
            }
        }
        None
    }
    walk(entry, "")
}

// ---- compiled ----

/// A checked drain policy: durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub workload: Option<String>,
    pub window: i64,
    pub replace: Replace,
    pub pre_stop: Option<PreStop>,
    pub sessions: Option<SessionProbe>,
    pub max_defer: Option<i64>,
}

/// The `preStop` hook written into the pod template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PreStop {
    HttpGet { path: String, port: Value, container: Option<String> },
    Sleep { seconds: i64, container: Option<String> },
}

/// A checked session probe: the URL template in full, durations in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionProbe {
    pub url: String,
    pub read: Read,
    pub interval: i64,
    pub timeout: i64,
}

/// How sessions are read from a probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Read {
    Gauge(String),
    JsonPointer(String),
}

/// A field of a bundle's drain policy that does not hold; `path` is from the `fleet.yaml` root
/// (`gitopsAgent.drain[0].sessions.url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

fn field(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), message: message.into() }
}

/// Compiles a bundle's drain policy. `bundle_window` is `gitopsAgent.drainWindow` (when set and
/// `specs` is empty, every workload of the bundle gets a drain with that window, i.e. one
/// implicit entry with workload None; `0s` there means no drain); `node_window` the node's
/// default in seconds. Errors name the field: `fleet.yaml: gitopsAgent.drain[0].sessions.url: ...`.
pub fn compile(bundle_window: Option<&str>, specs: &[DrainSpec], node_window: i64) -> Result<Vec<Drain>, String> {
    compile_with(bundle_window, specs, Some(node_window)).map_err(|e| format!("fleet.yaml: {e}"))
}

/// Checks a bundle's drain policy while `fleet.yaml` is parsed, before the node's window is
/// known: every rule of [`compile`] except those about a window inherited from the node.
pub fn check(bundle_window: Option<&str>, specs: &[DrainSpec]) -> Result<(), FieldError> {
    compile_with(bundle_window, specs, None).map(|_| ())
}

/// Seconds of a duration, rounded up (a window is a minimum); `min_one` rejects under 1s.
fn seconds(path: &str, raw: &str, min_one: bool) -> Result<i64, FieldError> {
    let d = humantime::parse_duration(raw).map_err(|e| field(path, format!("{raw:?} is not a duration: {e}")))?;
    if min_one && d < Duration::from_secs(1) {
        return Err(field(path, format!("{raw} is under one second")));
    }
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(secs)
        .ok()
        .filter(|s| *s <= i64::from(i32::MAX))
        .ok_or_else(|| field(path, format!("{raw} is too long")))
}

fn compile_with(
    bundle_window: Option<&str>,
    specs: &[DrainSpec],
    node_window: Option<i64>,
) -> Result<Vec<Drain>, FieldError> {
    let bundle = match bundle_window {
        Some(raw) => Some(seconds("gitopsAgent.drainWindow", raw, false)?),
        None => None,
    };
    if specs.is_empty() {
        return Ok(match bundle {
            Some(window) if window > 0 => vec![Drain {
                workload: None,
                window,
                replace: Replace::Auto,
                pre_stop: None,
                sessions: None,
                max_defer: None,
            }],
            _ => Vec::new(),
        });
    }
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = |f: &str| format!("gitopsAgent.drain[{i}].{f}");
        if let Some(w) = &spec.workload {
            check_selector(w).map_err(|m| field(at("workload"), m))?;
        }
        for (j, earlier) in specs[..i].iter().enumerate() {
            if let Some(why) = shadowed(earlier.workload.as_deref(), spec.workload.as_deref()) {
                let path = if spec.workload.is_some() { at("workload") } else { format!("gitopsAgent.drain[{i}]") };
                return Err(field(path, format!("{why} drain[{j}]")));
            }
        }
        // The window, and whether it is known here (one inherited from the node is not while
        // fleet.yaml is parsed).
        let (window, known) = match (&spec.window, bundle, node_window) {
            (Some(raw), ..) => (seconds(&at("window"), raw, true)?, true),
            (None, Some(b), _) => (b, true),
            (None, None, Some(n)) => (n, true),
            (None, None, None) => (0, false),
        };
        let pre_stop = match &spec.pre_stop {
            None => None,
            Some(p) => Some(compile_pre_stop(p, &at("preStop"), known.then_some(window))?),
        };
        let sessions = match &spec.sessions {
            None => None,
            Some(s) => Some(compile_sessions(s, &at("sessions"))?),
        };
        let max_defer = match &spec.wait_for_idle {
            None => None,
            Some(_) if sessions.is_none() => {
                return Err(field(
                    at("waitForIdle"),
                    "needs sessions: whether a pod is idle is read from the session probe",
                ));
            }
            Some(w) => Some(seconds(&at("waitForIdle.maxDefer"), &w.max_defer, true)?),
        };
        out.push(Drain {
            workload: spec.workload.clone(),
            window,
            replace: spec.replace.unwrap_or_default(),
            pre_stop,
            sessions,
            max_defer,
        });
    }
    Ok(out)
}

/// `name` or `Kind/name` of a Deployment, StatefulSet or DaemonSet.
fn check_selector(w: &str) -> Result<(), String> {
    let name = match w.split_once('/') {
        Some((kind, name)) => {
            if !KINDS.contains(&kind) {
                return Err(format!("{w:?}: {kind:?} is not Deployment, StatefulSet or DaemonSet"));
            }
            name
        }
        None => w,
    };
    if name.is_empty() || name.contains('/') || name.trim() != name {
        return Err(format!("{w:?} is not a workload name or Kind/name"));
    }
    Ok(())
}

/// Why an entry with selector `later` can never apply after one with `earlier`, if it cannot.
fn shadowed(earlier: Option<&str>, later: Option<&str>) -> Option<&'static str> {
    match (earlier, later) {
        (None, None) => Some("a second entry without workload: every workload already has"),
        (Some(a), Some(b)) if a == b => Some("the same workload as"),
        (Some(a), Some(b)) if !a.contains('/') && b.split_once('/').is_some_and(|(_, n)| n == a) => {
            Some("never applies: the workload is matched first by")
        }
        _ => None,
    }
}

fn compile_pre_stop(p: &PreStopSpec, at: &str, window: Option<i64>) -> Result<PreStop, FieldError> {
    if p.container.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(field(format!("{at}.container"), "must not be empty"));
    }
    let container = p.container.clone();
    match (&p.http_get, &p.sleep) {
        (Some(_), Some(_)) => Err(field(at, "set httpGet or sleep, not both")),
        (None, None) => Err(field(at, "needs httpGet {path, port} or sleep")),
        (Some(h), None) => {
            if !h.path.starts_with('/') {
                return Err(field(format!("{at}.httpGet.path"), format!("{:?} does not start with '/'", h.path)));
            }
            check_port(&h.port).map_err(|m| field(format!("{at}.httpGet.port"), m))?;
            Ok(PreStop::HttpGet { path: h.path.clone(), port: h.port.clone(), container })
        }
        (None, Some(raw)) => {
            let path = format!("{at}.sleep");
            let seconds = seconds(&path, raw, true)?;
            // The sleep runs inside the grace period: longer than the window, the kubelet kills
            // the pod while it still sleeps, and every drain ends at the grace period.
            if let Some(w) = window.filter(|w| seconds > *w) {
                return Err(field(path, format!("{raw} is longer than the drain window of {}", human(w))));
            }
            Ok(PreStop::Sleep { seconds, container })
        }
    }
}

/// A port number 1-65535, or a port name (Kubernetes' IANA_SVC_NAME: at most 15 lower-case
/// letters, digits and '-', a letter among them, no '-' at either end or twice in a row).
fn check_port(port: &Value) -> Result<(), String> {
    let valid = match port {
        Value::Number(n) => n.as_u64().is_some_and(|p| (1..=65_535).contains(&p)),
        Value::String(s) => {
            !s.is_empty()
                && s.len() <= 15
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.bytes().any(|b| b.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--")
        }
        _ => false,
    };
    if valid { Ok(()) } else { Err(format!("{port} is not a port number 1-65535 or a port name such as http")) }
}

fn compile_sessions(s: &SessionsSpec, at: &str) -> Result<SessionProbe, FieldError> {
    let url = crate::probe::check_template(&s.url).map_err(|m| field(format!("{at}.url"), m))?;
    if !["{podIP}", "{pod}", "{hostIP}"].iter().any(|v| url.contains(v)) {
        return Err(field(
            format!("{at}.url"),
            "must name the pod ({podIP}, {pod} or {hostIP}): sessions are counted per pod",
        ));
    }
    let read = match (&s.gauge, &s.json_pointer) {
        (Some(_), Some(_)) => return Err(field(at, "set gauge or jsonPointer, not both")),
        (None, None) => {
            return Err(field(at, "needs gauge (a Prometheus metric name) or jsonPointer (in a JSON body)"));
        }
        (Some(g), None) => {
            if !is_metric_name(g) {
                return Err(field(format!("{at}.gauge"), format!("{g:?} is not a Prometheus metric name")));
            }
            Read::Gauge(g.clone())
        }
        (None, Some(p)) => {
            check_pointer(p).map_err(|m| field(format!("{at}.jsonPointer"), m))?;
            Read::JsonPointer(p.clone())
        }
    };
    let secs = |f: &str, v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(raw) => seconds(&format!("{at}.{f}"), raw, true),
    };
    Ok(SessionProbe {
        url,
        read,
        interval: secs("interval", &s.interval, DEFAULT_INTERVAL)?,
        timeout: secs("timeout", &s.timeout, DEFAULT_TIMEOUT)?,
    })
}

/// Prometheus' metric-name grammar: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// An RFC 6901 pointer to a value inside the document: starts with '/', `~` only as `~0`/`~1`.
fn check_pointer(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} does not start with '/' (e.g. /active)"));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!("{p:?}: '~' must be written ~0, and '/' inside a key ~1"));
        }
    }
    Ok(())
}

/// The kind of an `apps/v1` Deployment, StatefulSet or DaemonSet; `None` for anything else.
fn workload_kind(object: &Value) -> Option<&str> {
    if object["apiVersion"] != "apps/v1" {
        return None;
    }
    object["kind"].as_str().filter(|k| KINDS.contains(k))
}

fn selects(selector: &str, kind: &str, name: &str) -> bool {
    match selector.split_once('/') {
        Some((k, n)) => k == kind && n == name,
        None => selector == name,
    }
}

/// The drain that applies to a live or desired object: the first whose `workload` matches
/// (name, or `Kind/name`), else one with no `workload`; `None` for non-workloads (only apps/v1
/// Deployment, StatefulSet, DaemonSet count).
pub fn drain_for<'a>(drains: &'a [Drain], object: &Value) -> Option<&'a Drain> {
    let kind = workload_kind(object)?;
    let name = object["metadata"]["name"].as_str()?;
    drains
        .iter()
        .find(|d| d.workload.as_deref().is_some_and(|w| selects(w, kind, name)))
        .or_else(|| drains.iter().find(|d| d.workload.is_none()))
}

/// Drains whose `workload` names nothing in `objects`, and preStop containers a matched workload
/// does not have: typos that would silently drain nothing.
pub fn unmatched(drains: &[Drain], objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for d in drains {
        if let Some(w) = &d.workload
            && !objects.iter().any(|o| {
                workload_kind(o).is_some_and(|k| selects(w, k, o["metadata"]["name"].as_str().unwrap_or_default()))
            })
        {
            out.push(format!("drain for workload {w:?}: no such workload in the bundle"));
        }
        let container = match &d.pre_stop {
            Some(PreStop::HttpGet { container: Some(c), .. } | PreStop::Sleep { container: Some(c), .. }) => c,
            _ => continue,
        };
        for o in objects.iter().filter(|o| drain_for(drains, o).is_some_and(|m| std::ptr::eq(m, d))) {
            if container_index(o, Some(container)).is_none() {
                out.push(format!("drain preStop of {}: no container named {container:?}", crate::state::object_id(o)));
            }
        }
    }
    out
}

fn container_index(object: &Value, name: Option<&str>) -> Option<usize> {
    let containers = object["spec"]["template"]["spec"]["containers"].as_array()?;
    match name {
        None => (!containers.is_empty()).then_some(0),
        Some(n) => containers.iter().position(|c| c["name"] == n),
    }
}

// ---- quantities ----

/// A Kubernetes quantity (`500m`, `1`, `2Gi`, `1e3`, `100M`, `0.5`) in thousandths of its unit,
/// exactly, rounded up as Kubernetes' `MilliValue` does.
pub fn parse_quantity(s: &str) -> Result<i128, String> {
    let bad = || format!("{s:?} is not a Kubernetes quantity");
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return Err(bad());
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(format!("{s:?} is too large a quantity"));
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad())? };
    let (ten, two): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
            let exp = &e[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse::<i32>().ok().filter(|x| x.abs() <= 40).ok_or_else(bad)?, 0)
        }
        _ => return Err(bad()),
    };
    // value = mantissa * 10^(ten - fraction digits) * 2^two, in thousandths.
    let scale = ten + 3 - i32::try_from(fraction.len()).map_err(|_| bad())?;
    let too_large = || format!("{s:?} is too large a quantity");
    let scaled = mantissa.checked_mul(1i128 << two).ok_or_else(too_large)?;
    let milli = if scale >= 0 {
        scaled.checked_mul(10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?).ok_or_else(too_large)?
    } else {
        let divisor = 10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?;
        scaled.div_euclid(divisor) + i128::from(scaled.rem_euclid(divisor) != 0)
    };
    Ok(if negative { -milli } else { milli })
}

/// A quantity as JSON (the API server sends strings; a chart may write `cpu: 1`).
fn quantity(v: &Value) -> Result<i128, String> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        other => Err(format!("{other} is not a Kubernetes quantity")),
    }
}

/// Thousandths back to a readable quantity: `500m`, `1`, `2Gi` for byte resources.
fn show(resource: &str, milli: i128) -> String {
    let milli = milli.max(0);
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let n = milli / 1000;
    let bytes = resource == "memory" || resource == "ephemeral-storage" || resource.starts_with("hugepages-");
    if bytes && n > 0 {
        for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if n % (1i128 << shift) == 0 {
                return format!("{}{suffix}", n >> shift);
            }
        }
    }
    n.to_string()
}

// ---- room for a surge pod ----

/// Whether one more pod of a workload fits beside its steady state ([`room`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "room", rename_all = "camelCase")]
pub enum Room {
    /// It fits on `node` (a DaemonSet: on each of the nodes named).
    Fits {
        node: String,
    },
    Full {
        reason: String,
    },
    /// The estimate cannot say (no feasible node, an unreadable quantity).
    Unknown {
        reason: String,
    },
}

/// Resource name -> thousandths.
type Resources = BTreeMap<String, i128>;

fn add(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn max_into(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

/// A container's requests, its limits standing in for missing ones.
fn container_requests(c: &Value, what: &str) -> Result<Resources, String> {
    let mut out = Resources::new();
    for source in ["limits", "requests"] {
        for (k, v) in c["resources"][source].as_object().into_iter().flatten() {
            let q = quantity(v)
                .map_err(|e| format!("{what}: container {}: {source}.{k}: {e}", c["name"].as_str().unwrap_or("?")))?;
            out.insert(k.clone(), q);
        }
    }
    Ok(out)
}

/// A pod's request from its spec (see the module docs).
fn pod_requests(spec: &Value, what: &str) -> Result<Resources, String> {
    let mut containers = Resources::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        add(&mut containers, &container_requests(c, what)?);
    }
    let mut sidecars = Resources::new();
    let mut init_peak = Resources::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let r = container_requests(c, what)?;
        if c["restartPolicy"] == "Always" {
            add(&mut sidecars, &r);
            max_into(&mut init_peak, &sidecars);
        } else {
            let mut running = sidecars.clone();
            add(&mut running, &r);
            max_into(&mut init_peak, &running);
        }
    }
    add(&mut containers, &sidecars);
    max_into(&mut containers, &init_peak);
    for (k, v) in spec["overhead"].as_object().into_iter().flatten() {
        let q = quantity(v).map_err(|e| format!("{what}: overhead.{k}: {e}"))?;
        *containers.entry(k.clone()).or_default() += q;
    }
    containers.retain(|_, v| *v != 0);
    containers.insert("pods".into(), 1000);
    Ok(containers)
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object().into_iter().flatten().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect()
}

/// The workload's selector; its template's labels when it has none.
fn selector_of(workload: &Value) -> LabelSelector {
    serde_json::from_value(workload["spec"]["selector"].clone()).unwrap_or_else(|_| LabelSelector {
        match_labels: labels_of(&workload["spec"]["template"]["metadata"]["labels"]),
        match_expressions: Vec::new(),
    })
}

/// Whether `pod` is one of `workload`'s: same namespace, labels match its selector.
fn owns(workload: &Value, selector: &LabelSelector, pod: &Value) -> bool {
    let ns = workload["metadata"]["namespace"].as_str();
    ns.is_some()
        && pod["metadata"]["namespace"].as_str() == ns
        && selector.matches(&labels_of(&pod["metadata"]["labels"]))
}

/// A toleration tolerates a taint (Kubernetes' `ToleratesTaint`).
fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or_default();
    let exists = toleration["operator"] == "Exists";
    if key.is_empty() {
        return exists;
    }
    if Some(key) != taint["key"].as_str() {
        return false;
    }
    exists || toleration["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default()
}

/// The tolerations the DaemonSet controller adds to its pods.
fn daemonset_tolerations() -> Vec<Value> {
    let mut out = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
    ];
    for key in ["disk-pressure", "memory-pressure", "pid-pressure", "unschedulable", "network-unavailable"] {
        out.push(json!({"key": format!("node.kubernetes.io/{key}"), "operator": "Exists", "effect": "NoSchedule"}));
    }
    out
}

/// A node selector requirement (`matchExpressions` of node affinity) on a value.
fn requirement_holds(r: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = r["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let int = |s: &str| s.parse::<i64>().ok();
    match r["operator"].as_str().unwrap_or_default() {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(int), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((value.and_then(int), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a < b),
        _ => false,
    }
}

/// Whether a node satisfies the pod's `nodeSelector` and required node affinity.
fn node_matches(spec: &Value, node: &Value) -> bool {
    let labels = labels_of(&node["metadata"]["labels"]);
    let selector_ok = spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array();
    let affinity_ok = match terms {
        None => true,
        Some(terms) if terms.is_empty() => true,
        Some(terms) => terms.iter().any(|t| {
            let exprs = t["matchExpressions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let fields = t["matchFields"].as_array().map(Vec::as_slice).unwrap_or_default();
            (!exprs.is_empty() || !fields.is_empty())
                && exprs
                    .iter()
                    .all(|r| requirement_holds(r, r["key"].as_str().and_then(|k| labels.get(k)).map(String::as_str)))
                && fields
                    .iter()
                    .all(|r| r["key"] == "metadata.name" && requirement_holds(r, node["metadata"]["name"].as_str()))
        }),
    };
    selector_ok && affinity_ok
}

/// Host ports a pod spec binds (`(protocol, port)`); with `hostNetwork` its container ports.
fn host_ports(spec: &Value) -> BTreeSet<(String, i64)> {
    let host_network = spec["hostNetwork"] == true;
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let port = p["hostPort"]
                .as_i64()
                .filter(|p| *p > 0)
                .or_else(|| if host_network { p["containerPort"].as_i64() } else { None })?;
            Some((p["protocol"].as_str().unwrap_or("TCP").to_owned(), port))
        })
        .collect()
}

/// Topology keys of required pod anti-affinity terms that select the workload's own pods: one of
/// its pods per domain of each.
fn self_anti_affinity(workload: &Value) -> Vec<String> {
    let template = &workload["spec"]["template"];
    let own = labels_of(&template["metadata"]["labels"]);
    let ns = workload["metadata"]["namespace"].as_str().unwrap_or_default();
    template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            let namespaces: Vec<&str> =
                t["namespaces"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            (namespaces.is_empty() || namespaces.contains(&ns))
                && serde_json::from_value::<LabelSelector>(t["labelSelector"].clone()).is_ok_and(|s| s.matches(&own))
                && !t["labelSelector"].is_null()
        })
        .filter_map(|t| t["topologyKey"].as_str().map(str::to_owned))
        .collect()
}

/// One feasible node during the estimate.
struct Slot {
    name: String,
    labels: BTreeMap<String, String>,
    /// Allocatable minus what other pods request.
    free: Resources,
    /// Host ports other pods hold.
    ports: BTreeSet<(String, i64)>,
    /// The workload's pods placed here.
    own: usize,
}

/// Why one more pod does not fit on a slot, `None` when it does.
struct Shortage {
    /// How many resources are short (fewer is closer to fitting).
    count: usize,
    what: String,
    /// A resource is short (the reason then says how many replicas are beside it).
    resources: bool,
}

struct Estimate {
    request: Resources,
    ports: BTreeSet<(String, i64)>,
    spread: Vec<String>,
    slots: Vec<Slot>,
    /// Per topology key and domain: the workload's pods placed there.
    domains: BTreeMap<(String, String), usize>,
    daemonset: bool,
}

impl Estimate {
    fn shortage(&self, i: usize) -> Option<Shortage> {
        let slot = &self.slots[i];
        if let Some(key) = self.spread.iter().find(|k| {
            slot.labels.get(*k).is_some_and(|v| self.domains.get(&((*k).clone(), v.clone())).is_some_and(|n| *n > 0))
        }) {
            return Some(Shortage {
                count: 1,
                what: format!("its required pod anti-affinity allows one pod per {key}"),
                resources: false,
            });
        }
        if let Some((proto, port)) = self.ports.iter().find(|p| slot.own > 0 || slot.ports.contains(p)) {
            let what = if slot.own > 0 {
                format!("hostPort {port}/{proto} allows one pod per node")
            } else {
                format!("hostPort {port}/{proto} is taken by another pod")
            };
            return Some(Shortage { count: 1, what, resources: false });
        }
        // The scarcest resource: the smallest share of the request that is free.
        let short: Vec<(&String, i128, i128)> = self
            .request
            .iter()
            .map(|(k, want)| (k, *want, slot.free.get(k).copied().unwrap_or(0)))
            .filter(|(_, want, free)| want > free)
            .collect();
        let ratio = |want: i128, free: i128| free.max(0) as f64 / want as f64;
        let scarcest = short.iter().min_by(|a, b| ratio(a.1, a.2).total_cmp(&ratio(b.1, b.2)))?;
        let (k, want, free) = scarcest;
        Some(Shortage {
            count: short.len(),
            what: format!("{k} {} requested, {} free", show(k, *want), show(k, *free)),
            resources: true,
        })
    }

    fn place(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        for (k, v) in &self.request {
            *slot.free.entry(k.clone()).or_default() -= v;
        }
        slot.own += 1;
        for key in &self.spread {
            if let Some(v) = slot.labels.get(key) {
                *self.domains.entry((key.clone(), v.clone())).or_default() += 1;
            }
        }
    }

    /// Why one more pod fits nowhere: the node closest to fitting (fewest resources short, then
    /// name order) and its scarcest resource.
    fn closest(&self) -> String {
        let shortages = (0..self.slots.len()).filter_map(|i| self.shortage(i).map(|s| (i, s)));
        match shortages.min_by_key(|(_, s)| s.count) {
            Some((i, s)) => self.full(i, &s),
            None => "no node to judge".into(),
        }
    }

    /// The reason one more pod does not fit on slot `i`.
    fn full(&self, i: usize, shortage: &Shortage) -> String {
        let slot = &self.slots[i];
        let pod = match slot.own {
            0 => "a pod",
            1 => "a second pod",
            _ => "one more pod",
        };
        let beside = match (slot.own, self.daemonset) {
            _ if !shortage.resources => String::new(),
            (0, _) => String::new(),
            (_, true) => " beside its own".into(),
            (n, false) => format!(" beside {}", plural(n as u64, "replica", "replicas")),
        };
        format!("{} has no room for {pod}: {}{beside}", slot.name, shortage.what)
    }
}

/// Whether the cluster has room for one more pod of `workload`'s template beside its steady
/// state; `nodes` and `pods` are everything the API server listed. An estimate, with the rules
/// of the module docs.
pub fn room(workload: &Value, nodes: &[Value], pods: &[Value]) -> Room {
    let Some(kind) = workload_kind(workload) else {
        return Room::Unknown { reason: "not a Deployment, StatefulSet or DaemonSet".into() };
    };
    let daemonset = kind == "DaemonSet";
    let spec = &workload["spec"]["template"]["spec"];
    let request = match pod_requests(spec, "the pod template") {
        Ok(r) => r,
        Err(e) => return Room::Unknown { reason: e },
    };
    let mut tolerations: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    if daemonset {
        tolerations.extend(daemonset_tolerations());
    }
    let selector = selector_of(workload);
    let mut feasible: Vec<&Value> = nodes
        .iter()
        .filter(|n| daemonset || n["spec"]["unschedulable"] != true)
        .filter(|n| node_matches(spec, n))
        .filter(|n| {
            n["spec"]["taints"].as_array().into_iter().flatten().all(|t| {
                !matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
                    || tolerations.iter().any(|tol| tolerates(tol, t))
            })
        })
        .collect();
    feasible.sort_by_key(|n| n["metadata"]["name"].as_str().unwrap_or_default());
    if feasible.is_empty() {
        return Room::Unknown { reason: "no schedulable node matches the pod's nodeSelector and tolerations".into() };
    }
    let mut slots = Vec::new();
    for node in feasible {
        let name = node["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let mut free = Resources::new();
        for (k, v) in node["status"]["allocatable"].as_object().into_iter().flatten() {
            match quantity(v) {
                Ok(q) => free.insert(k.clone(), q),
                Err(e) => return Room::Unknown { reason: format!("node {name}: allocatable.{k}: {e}") },
            };
        }
        let mut ports = BTreeSet::new();
        let on_node = pods.iter().filter(|p| {
            p["spec"]["nodeName"].as_str() == Some(name.as_str())
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                && !owns(workload, &selector, p)
        });
        for p in on_node {
            let what = format!(
                "pod {}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default()
            );
            match pod_requests(&p["spec"], &what) {
                Ok(r) => {
                    for (k, v) in r {
                        *free.entry(k).or_default() -= v;
                    }
                }
                Err(e) => return Room::Unknown { reason: e },
            }
            ports.extend(host_ports(&p["spec"]));
        }
        slots.push(Slot { name, labels: labels_of(&node["metadata"]["labels"]), free, ports, own: 0 });
    }
    let mut e = Estimate {
        request,
        ports: host_ports(spec),
        spread: self_anti_affinity(workload),
        slots,
        domains: BTreeMap::new(),
        daemonset,
    };
    if daemonset {
        for i in 0..e.slots.len() {
            e.place(i);
        }
        let failing: Vec<(usize, Shortage)> =
            (0..e.slots.len()).filter_map(|i| e.shortage(i).map(|s| (i, s))).collect();
        return match failing.first() {
            None => Room::Fits { node: e.slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ") },
            Some((i, s)) => Room::Full { reason: e.full(*i, s) },
        };
    }
    let replicas = workload["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    for placed in 0..replicas {
        match (0..e.slots.len()).find(|i| e.shortage(*i).is_none()) {
            Some(i) => e.place(i),
            None => return Room::Full { reason: format!("only {placed} of {replicas} replicas fit; {}", e.closest()) },
        }
    }
    match (0..e.slots.len()).find(|i| e.shortage(*i).is_none()) {
        Some(i) => Room::Fits { node: e.slots[i].name.clone() },
        None if e.slots.len() == 1 => Room::Full { reason: e.closest() },
        None => Room::Full { reason: format!("none of {} schedulable nodes has room; {}", e.slots.len(), e.closest()) },
    }
}

// ---- shaping ----

/// How a workload's old pods are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// new pods start beside the old ones (maxSurge >= 1, maxUnavailable 0)
    Surge,
    /// no room: one pod at a time (maxSurge 0, maxUnavailable 1); the old pod drains for the
    /// window before its replacement can start
    OneAtATime,
    /// StatefulSet: Kubernetes replaces its pods one at a time in place (nothing to choose)
    InPlace,
}

/// What the agent does for one workload's drain; persisted with a rollout (serde), shown by
/// `agent diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// `Kind/namespace/name` (same format as `crate::state::object_id`).
    pub workload: String,
    pub window: i64,
    pub mode: Mode,
    /// Why this mode (the Room's reason, or "replace: oneAtATime in fleet.yaml", or
    /// "StatefulSets replace pods one at a time").
    pub why: String,
    /// The terminationGracePeriodSeconds written.
    pub grace: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<PreStop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_defer: Option<i64>,
    /// What the agent changed of the chart's values (e.g. "strategy Recreate replaced by
    /// RollingUpdate", "terminationGracePeriodSeconds 30 -> 45", "preStop of container web
    /// replaced").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The map at `path` under `v`, created where missing; `None` when something else is in the way.
fn map_at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut at = v;
    for key in path {
        if at.is_null() {
            *at = Value::Object(Map::new());
        }
        at = at.as_object_mut()?.entry(*key).or_insert(Value::Null);
    }
    if at.is_null() {
        *at = Value::Object(Map::new());
    }
    at.as_object_mut()
}

/// A `maxSurge`/`maxUnavailable` value above zero: an integer, or `N%` with N > 0.
fn non_zero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64().is_some_and(|n| n > 0),
        Value::String(s) => s.strip_suffix('%').unwrap_or(s).parse::<u64>().is_ok_and(|n| n > 0),
        _ => false,
    }
}

fn shown(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Writes a RollingUpdate strategy for `mode` into `spec.<field>`; notes what the chart had.
fn write_strategy(spec: &mut Map<String, Value>, field: &str, mode: Mode, notes: &mut Vec<String>) {
    let before = spec.get(field).cloned().unwrap_or(Value::Null);
    if let Some(t) = before["type"].as_str().filter(|t| *t != "RollingUpdate") {
        notes.push(format!("{field} {t} replaced by RollingUpdate"));
    }
    let chart = &before["rollingUpdate"];
    let (surge, unavailable) = match mode {
        Mode::Surge => {
            let surge = if non_zero(&chart["maxSurge"]) { chart["maxSurge"].clone() } else { json!(1) };
            (surge, json!(0))
        }
        Mode::OneAtATime | Mode::InPlace => (json!(0), json!(1)),
    };
    for (key, value) in [("maxSurge", &surge), ("maxUnavailable", &unavailable)] {
        let had = &chart[key];
        if !had.is_null() && shown(had) != shown(value) {
            notes.push(format!("{key} {} replaced by {}", shown(had), shown(value)));
        }
    }
    spec.insert(
        field.to_owned(),
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}),
    );
}

/// Shapes one desired workload object in place for its drain and returns the plan; `None` for
/// objects [`drain_for`] does not match with `drain`. The mode comes from `drain.replace`, or
/// from `room` when Auto: Fits -> Surge, Full -> OneAtATime, Unknown -> Surge (a surge pod that
/// cannot be scheduled fails the rollout at its progress deadline, which rolls back; cutting
/// sessions cannot be undone), the reason kept in `why`.
pub fn shape(object: &mut Value, drain: &Drain, room: &Room) -> Option<Plan> {
    let kind = workload_kind(object)?.to_owned();
    drain_for(std::slice::from_ref(drain), object)?;
    let workload = crate::state::object_id(object);
    let (mode, why) = match (kind.as_str(), drain.replace, room) {
        ("StatefulSet", ..) => (Mode::InPlace, "StatefulSets replace pods one at a time".to_owned()),
        (_, Replace::Surge, _) => (Mode::Surge, "replace: surge in fleet.yaml".to_owned()),
        (_, Replace::OneAtATime, _) => (Mode::OneAtATime, "replace: oneAtATime in fleet.yaml".to_owned()),
        (_, Replace::Auto, Room::Fits { node }) => (Mode::Surge, format!("room for a second pod on {node}")),
        (_, Replace::Auto, Room::Full { reason }) => (Mode::OneAtATime, reason.clone()),
        (_, Replace::Auto, Room::Unknown { reason }) => {
            (Mode::Surge, format!("room for a second pod unknown, surging: {reason}"))
        }
    };
    let mut notes = Vec::new();
    let spec = map_at(object, &["spec"]);
    match (kind.as_str(), spec) {
        ("Deployment", Some(spec)) => write_strategy(spec, "strategy", mode, &mut notes),
        ("DaemonSet", Some(spec)) => write_strategy(spec, "updateStrategy", mode, &mut notes),
        ("StatefulSet", Some(spec)) => {
            if spec.get("updateStrategy").and_then(|s| s["type"].as_str()) == Some("OnDelete") {
                notes.push("updateStrategy OnDelete kept: pods are replaced only when deleted".into());
            }
        }
        _ => notes.push("spec is not a mapping; left alone".into()),
    }
    let mut grace = drain.window.max(DEFAULT_GRACE);
    let mut pre_stop = drain.pre_stop.clone();
    match map_at(object, &["spec", "template", "spec"]) {
        None => notes.push("spec.template.spec is not a mapping; left alone".into()),
        Some(pod) => {
            let before = pod.get("terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_GRACE);
            grace = before.max(drain.window);
            if grace != before {
                notes.push(format!("terminationGracePeriodSeconds {before} -> {grace}"));
            }
            pod.insert("terminationGracePeriodSeconds".into(), json!(grace));
        }
    }
    if let Some(hook) = &drain.pre_stop {
        let (action, container) = match hook {
            PreStop::HttpGet { path, port, container } => (json!({"httpGet": {"path": path, "port": port}}), container),
            PreStop::Sleep { seconds, container } => (json!({"sleep": {"seconds": seconds}}), container),
        };
        let index = container_index(object, container.as_deref());
        let target = index.and_then(|i| object["spec"]["template"]["spec"]["containers"].get_mut(i));
        match target.and_then(|c| c.as_object_mut()) {
            None => {
                let which =
                    container.as_deref().map_or("no container".to_owned(), |c| format!("no container named {c}"));
                notes.push(format!("preStop not written: {which}"));
                pre_stop = None;
            }
            Some(c) => {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
                let had = c.get("lifecycle").is_some_and(|l| !l["preStop"].is_null());
                match map_at(c.entry("lifecycle").or_insert(Value::Null), &[]) {
                    Some(lifecycle) => {
                        lifecycle.insert("preStop".into(), action);
                        if had {
                            notes.push(format!("preStop of container {name} replaced"));
                        }
                    }
                    None => {
                        notes.push(format!("preStop not written: lifecycle of container {name} is not a mapping"));
                        pre_stop = None;
                    }
                }
            }
        }
    }
    Some(Plan {
        workload,
        window: drain.window,
        mode,
        why,
        grace,
        pre_stop,
        sessions: drain.sessions.clone(),
        max_defer: drain.max_defer,
        notes,
    })
}

/// Seconds as a duration (`45s`, `10m`, `1m 30s`).
fn human(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0))).to_string()
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A session probe's URL as written: a path for the default `http://{podIP}:{port}` prefix.
fn written_url(url: &str) -> String {
    url.strip_prefix("http://{podIP}:{port}")
        .filter(|p| p.starts_with('/'))
        .map_or_else(|| crate::redact::url(url), str::to_owned)
}

/// One line for `agent diff` and logs: the mode and why, then waiting for idle, the grace
/// period, the preStop hook, the session probe and what of the chart was changed.
pub fn describe(plan: &Plan) -> String {
    let w = human(plan.window);
    let mode = match plan.mode {
        Mode::Surge => {
            format!(
                "new pods start beside the old ones (maxUnavailable 0), each old pod drains for {w} once its replacement is ready"
            )
        }
        Mode::OneAtATime => format!(
            "one pod at a time (maxSurge 0, maxUnavailable 1), each old pod drains for {w} before its replacement starts"
        ),
        Mode::InPlace => {
            format!("pods replaced one at a time in place, each old pod drains for {w} before its replacement starts")
        }
    };
    let mut parts = vec![format!("{}: {mode}: {}", plan.workload, plan.why)];
    if let Some(d) = plan.max_defer {
        parts.push(format!("waits for idle first (up to {})", human(d)));
    }
    parts.push(format!("terminationGracePeriodSeconds {}", plan.grace));
    let in_container = |c: &Option<String>| c.as_ref().map(|c| format!(" in container {c}")).unwrap_or_default();
    match &plan.pre_stop {
        Some(PreStop::HttpGet { path, port, container }) => {
            parts.push(format!("preStop GET {path} on port {}{}", shown(port), in_container(container)));
        }
        Some(PreStop::Sleep { seconds, container }) => {
            parts.push(format!("preStop sleep {}{}", human(*seconds), in_container(container)));
        }
        None => {}
    }
    if let Some(s) = &plan.sessions {
        let read = match &s.read {
            Read::Gauge(g) => g.clone(),
            Read::JsonPointer(p) => format!("JSON {p}"),
        };
        parts.push(format!("sessions from {} ({read})", written_url(&s.url)));
    }
    if !plan.notes.is_empty() {
        parts.push(format!("changed: {}", plan.notes.join(", ")));
    }
    parts.join("; ")
}

// ---- session readings ----

/// The URL of `probe` for one pod of `workload` (same variables as `crate::probe`); `None` when
/// a variable has no value (no podIP yet).
pub fn session_url(probe: &SessionProbe, workload: &Value, pod: &Value) -> Option<String> {
    crate::probe::pod_url(&probe.url, workload, pod)
}

/// A sample value as a session count: finite, not negative, whole.
fn whole(raw: &str, what: &str) -> Result<u64, String> {
    let v: f64 = raw.parse().map_err(|_| format!("{what} is {raw:?}, not a number"))?;
    if !v.is_finite() {
        return Err(format!("{what} is {raw}, not a finite number"));
    }
    if v < 0.0 {
        return Err(format!("{what} is {raw}, a negative number of sessions"));
    }
    if v.fract() != 0.0 || v >= u64::MAX as f64 {
        return Err(format!("{what} is {raw}, not a whole number of sessions"));
    }
    Ok(v as u64)
}

/// Sessions from a response body: a gauge summed over all its label sets in the Prometheus text
/// format, or the number at a JSON pointer.
pub fn read_sessions(read: &Read, body: &str) -> Result<u64, String> {
    match read {
        Read::Gauge(gauge) => {
            let mut total: Option<u64> = None;
            for line in body.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
                if &line[..name_end] != gauge {
                    continue;
                }
                let mut rest = &line[name_end..];
                if rest.starts_with('{') {
                    rest = after_labels(rest).ok_or_else(|| format!("a sample of {gauge} has unclosed labels"))?;
                }
                let raw = rest.split_whitespace().next().ok_or_else(|| format!("a sample of {gauge} has no value"))?;
                let n = whole(raw, &format!("a sample of {gauge}"))?;
                total = Some(total.unwrap_or(0).checked_add(n).ok_or_else(|| format!("{gauge} sums past u64"))?);
            }
            total.ok_or_else(|| format!("no sample of {gauge}"))
        }
        Read::JsonPointer(pointer) => {
            let doc: Value = serde_json::from_str(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
            let v = doc.pointer(pointer).ok_or_else(|| format!("no value at {pointer}"))?;
            match v {
                Value::Number(n) => n.as_u64().map_or_else(|| whole(&n.to_string(), pointer), Ok),
                other => Err(format!("{pointer} is {other}, not a number of sessions")),
            }
        }
    }
}

/// The text after a `{...}` label set at the start of `s` (quoted values may hold `}`).
fn after_labels(s: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(&s[i + 1..]),
            _ => {}
        }
    }
    None
}

// ---- wait for idle ----

/// Whether a rollout that waits for idle starts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idle {
    /// start the rollout; the reason for the log
    Go(String),
    /// defer; look again at `recheck_at`
    Wait { recheck_at: Time, reason: String },
}

/// An instant in RFC 3339, UTC.
fn instant(t: Time) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| format!("{t} (unix seconds)"), |ts| ts.to_string())
}

/// `readings`: per old pod (name, sessions or the error reading them); an error counts as busy.
/// `since` is when this revision was first deferred, `interval` the probe's. Go when there are
/// no pods, when every reading is 0, or once `since + max_defer` has come (sessions then get the
/// drain window); otherwise Wait, looking again after one interval (or at the end of maxDefer).
pub fn idle(readings: &[(String, Result<u64, String>)], since: Time, max_defer: i64, interval: i64, now: Time) -> Idle {
    if readings.is_empty() {
        return Idle::Go("no old pods to wait for".into());
    }
    if readings.iter().all(|(_, r)| matches!(r, Ok(0))) {
        return Idle::Go(format!(
            "idle: no sessions on {} old {}",
            readings.len(),
            word(readings.len(), "pod", "pods")
        ));
    }
    let deadline = since.saturating_add(max_defer);
    let busy: Vec<(&str, u64)> =
        readings.iter().filter_map(|(p, r)| r.as_ref().ok().filter(|n| **n > 0).map(|n| (p.as_str(), *n))).collect();
    let failed: Vec<(&str, &str)> =
        readings.iter().filter_map(|(p, r)| r.as_ref().err().map(|e| (p.as_str(), e.as_str()))).collect();
    if now >= deadline {
        let sessions: u64 = busy.iter().map(|(_, n)| n).sum();
        let mut open = Vec::new();
        if !busy.is_empty() {
            open.push(format!(
                "{} open on {}",
                plural(sessions, "session", "sessions"),
                plural(busy.len() as u64, "pod", "pods")
            ));
        }
        if !failed.is_empty() {
            open.push(format!("sessions unknown on {}", plural(failed.len() as u64, "pod", "pods")));
        }
        return Idle::Go(format!(
            "maxDefer {} passed with {}: rolling out; they get the drain window",
            human(max_defer),
            open.join(" and ")
        ));
    }
    let mut items = Vec::new();
    for (i, (pod, n)) in busy.iter().enumerate() {
        items.push(if i == 0 {
            format!("{} on {pod}", plural(*n, "session", "sessions"))
        } else {
            format!("{n} on {pod}")
        });
    }
    for (pod, e) in &failed {
        items.push(format!("sessions of {pod} unknown ({e}), counted as busy"));
    }
    Idle::Wait {
        recheck_at: now.saturating_add(interval.max(1)).min(deadline),
        reason: format!(
            "waiting for idle: {} (rolls out anyway at {}, maxDefer {})",
            items.join(", "),
            instant(deadline),
            human(max_defer)
        ),
    }
}

/// The plans of a bundle whose rollout waits for idle pods (`waitForIdle`).
pub fn waiting_for_idle(plans: &[Plan]) -> Vec<&Plan> {
    plans.iter().filter(|p| p.max_defer.is_some() && p.sessions.is_some()).collect()
}

/// [`idle`] for a bundle: one answer over all its plans that wait, with the shortest `maxDefer`
/// and the shortest probe interval among them (a bundle starts its rollout as one unit).
pub fn idle_for(waiting: &[&Plan], readings: &[(String, Result<u64, String>)], since: Time, now: Time) -> Idle {
    let max_defer = waiting.iter().filter_map(|p| p.max_defer).min().unwrap_or(0);
    let interval =
        waiting.iter().filter_map(|p| p.sessions.as_ref().map(|s| s.interval)).min().unwrap_or(DEFAULT_INTERVAL);
    idle(readings, since, max_defer, interval, now)
}

fn word<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

// ---- the drain during a rollout ----

/// Pods of `workload` (namespace and selector match) that have a deletionTimestamp: (name, the
/// deletionTimestamp as unix seconds, which is when the grace period ends).
pub fn terminating(workload: &Value, pods: &[Value]) -> Vec<(String, Time)> {
    let selector = selector_of(workload);
    pods.iter()
        .filter(|p| owns(workload, &selector, p))
        .filter_map(|p| {
            let at = p["metadata"]["deletionTimestamp"].as_str()?.parse::<jiff::Timestamp>().ok()?;
            Some((p["metadata"]["name"].as_str()?.to_owned(), at.as_second()))
        })
        .collect()
}

/// One old pod followed from its deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDrain {
    pub pod: String,
    /// end of its grace period
    pub deadline: Time,
    /// first seen gone
    pub gone_at: Option<Time>,
    /// last session reading while terminating
    pub last: Option<u64>,
    pub error: Option<String>,
}

/// How one old pod's drain ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ended", rename_all = "camelCase")]
pub enum Ended {
    Clean,
    Cut {
        sessions: u64,
    },
    /// ended by its grace period with no reading, or still there
    Unknown {
        why: String,
    },
}

const NO_READING: &str = "ended by its grace period; no session reading";
const STILL_THERE: &str = "still terminating";

/// How a pod's drain ended. A pod gone before its deadline exited by itself, which a draining app
/// does once its last session ended: Clean. A pod gone at or after its deadline was ended by the
/// grace period: Cut with the last reading when it was above 0, Clean when it was 0, Unknown when
/// there was none. A pod not gone: Unknown ("still terminating").
pub fn ended(pod: &PodDrain) -> Ended {
    match (pod.gone_at, pod.last) {
        (None, _) => Ended::Unknown { why: STILL_THERE.into() },
        (Some(t), _) if t < pod.deadline => Ended::Clean,
        (Some(_), Some(0)) => Ended::Clean,
        (Some(_), Some(n)) => Ended::Cut { sessions: n },
        (Some(_), None) => Ended::Unknown { why: NO_READING.into() },
    }
}

/// How one workload's drain ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub workload: String,
    pub pods: Vec<(String, Ended)>,
    /// Sessions cut, over all pods.
    pub cut: u64,
    /// Every pod ended Clean (true for no pods).
    pub clean: bool,
    pub message: String,
}

impl Report {
    /// One word for metrics and Events: `clean`, `cut` (sessions were cut), or `unconfirmed`
    /// (a pod ended by its grace period with no session reading, or is still terminating).
    pub fn result(&self) -> &'static str {
        match (self.cut, self.clean) {
            (0, true) => "clean",
            (0, false) => "unconfirmed",
            _ => "cut",
        }
    }
}

/// A workload's drain from its pods' ([`ended`]), with a message for the outcome and its Event.
pub fn report(workload: &str, pods: &[PodDrain]) -> Report {
    let ends: Vec<(String, Ended)> = pods.iter().map(|p| (p.pod.clone(), ended(p))).collect();
    let cuts: Vec<(&str, u64)> = ends
        .iter()
        .filter_map(|(p, e)| match e {
            Ended::Cut { sessions } => Some((p.as_str(), *sessions)),
            _ => None,
        })
        .collect();
    let cut: u64 = cuts.iter().map(|(_, n)| n).sum();
    let clean = ends.iter().all(|(_, e)| *e == Ended::Clean);
    let message = if ends.is_empty() {
        "no pod was replaced".to_owned()
    } else if clean {
        format!("drained cleanly ({})", plural(ends.len() as u64, "pod", "pods"))
    } else {
        let mut parts = Vec::new();
        if !cuts.is_empty() {
            let each: Vec<String> = cuts.iter().map(|(p, n)| format!("{p}: {n}")).collect();
            parts.push(format!("{} cut at window end ({})", plural(cut, "session", "sessions"), each.join(", ")));
        }
        let mut unknown: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, e) in &ends {
            if let Ended::Unknown { why } = e {
                *unknown.entry(why.as_str()).or_default() += 1;
            }
        }
        for (why, n) in unknown {
            let pods = plural(n as u64, "pod", "pods");
            parts.push(match why {
                NO_READING => format!(
                    "{pods} ended by {} grace period, sessions unknown (no session reading)",
                    word(n, "its", "their")
                ),
                STILL_THERE => format!("{pods} still terminating"),
                other => format!("{pods}: {other}"),
            });
        }
        parts.join("; ")
    };
    Report { workload: workload.to_owned(), pods: ends, cut, clean, message: format!("{workload}: {message}") }
}

/// A progress line while draining: "draining web-abc: 2 sessions left, 12s of 45s" (several
/// pods joined with "; "); pods already gone are left out.
pub fn progress(window: i64, pods: &[PodDrain], now: Time) -> String {
    let lines: Vec<String> = pods
        .iter()
        .filter(|p| p.gone_at.is_none())
        .map(|p| {
            let elapsed = (window - (p.deadline - now)).clamp(0, window.max(0));
            let sessions = match (p.last, &p.error) {
                (Some(n), _) => format!("{} left", plural(n, "session", "sessions")),
                (None, Some(e)) => format!("sessions unknown ({e})"),
                (None, None) => "sessions unknown".to_owned(),
            };
            format!("draining {}: {sessions}, {elapsed}s of {window}s", p.pod)
        })
        .collect();
    if lines.is_empty() { "no pod draining".into() } else { lines.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a room row shows, the workload, the nodes, the pods, the expected room.
    type RoomRow = (&'static str, Value, Vec<Value>, Vec<Value>, Room);
    /// What a shape row shows, the object, its drain, the room, the strategy written, the mode,
    /// the notes.
    type ShapeRow = (&'static str, Value, Drain, Room, Value, Mode, Vec<&'static str>);
    /// What a preStop row shows, the drain, the object, the container's index, its lifecycle
    /// after shaping, the note about it.
    type PreStopRow = (&'static str, &'static str, Value, usize, Value, Option<&'static str>);
    /// Per old pod: its name and its reading.
    type Readings = Vec<(String, Result<u64, String>)>;

    fn specs(yaml: &str) -> Vec<DrainSpec> {
        serde_saphyr::from_str(yaml).expect(yaml)
    }

    #[test]
    fn compile_errors_name_the_field() {
        // (bundle drainWindow, drain entries, error)
        let table: &[(Option<&str>, &str, &str)] = &[
            (
                None,
                "- {workload: web}\n- {workload: db, window: soon}",
                "fleet.yaml: gitopsAgent.drain[1].window: \"soon\" is not a duration: ",
            ),
            (None, "- {window: 500ms}", "fleet.yaml: gitopsAgent.drain[0].window: 500ms is under one second"),
            (Some("soon"), "[]", "fleet.yaml: gitopsAgent.drainWindow: \"soon\" is not a duration"),
            (Some("later"), "- {workload: web}", "fleet.yaml: gitopsAgent.drainWindow: \"later\" is not a duration"),
            (
                None,
                "- {workload: Pod/web}",
                "fleet.yaml: gitopsAgent.drain[0].workload: \"Pod/web\": \"Pod\" is not Deployment, StatefulSet or DaemonSet",
            ),
            (None, "- {workload: ''}", "fleet.yaml: gitopsAgent.drain[0].workload: \"\" is not a workload name"),
            (
                None,
                "- {workload: web}\n- {workload: db}\n- {workload: web}",
                "fleet.yaml: gitopsAgent.drain[2].workload: the same workload as drain[0]",
            ),
            (None, "- {}\n- {window: 1m}", "fleet.yaml: gitopsAgent.drain[1]: a second entry without workload"),
            (
                None,
                "- {workload: web}\n- {workload: Deployment/web}",
                "fleet.yaml: gitopsAgent.drain[1].workload: never applies: the workload is matched first by drain[0]",
            ),
            (
                None,
                "- preStop: {sleep: 5s, httpGet: {path: /drain, port: 8080}}",
                "fleet.yaml: gitopsAgent.drain[0].preStop: set httpGet or sleep, not both",
            ),
            (None, "- preStop: {container: web}", "fleet.yaml: gitopsAgent.drain[0].preStop: needs httpGet"),
            (
                None,
                "- preStop: {httpGet: {path: drain, port: 8080}}",
                "fleet.yaml: gitopsAgent.drain[0].preStop.httpGet.path: \"drain\" does not start with '/'",
            ),
            (
                None,
                "- preStop: {httpGet: {path: /drain, port: 70000}}",
                "fleet.yaml: gitopsAgent.drain[0].preStop.httpGet.port: 70000 is not a port number 1-65535",
            ),
            (
                None,
                "- preStop: {httpGet: {path: /drain, port: HTTP}}",
                "fleet.yaml: gitopsAgent.drain[0].preStop.httpGet.port: \"HTTP\" is not a port number",
            ),
            (
                None,
                "- {window: 45s, preStop: {sleep: 1m}}",
                "fleet.yaml: gitopsAgent.drain[0].preStop.sleep: 1m is longer than the drain window of 45s",
            ),
            (
                None,
                "- sessions: {url: 'http://{podIp}:9090/metrics', gauge: s}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.url: unknown variable {podIp}",
            ),
            (
                None,
                "- sessions: {url: 'ftp://{podIP}/metrics', gauge: s}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.url: scheme \"ftp\" is not http or https",
            ),
            (
                None,
                "- sessions: {url: 'http://u:p@{podIP}/metrics', gauge: s}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.url: must not carry credentials",
            ),
            (
                None,
                "- sessions: {url: 'http://{name}.{namespace}.svc/metrics', gauge: s}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.url: must name the pod",
            ),
            (
                None,
                "- sessions: {url: /metrics, gauge: s, jsonPointer: /active}",
                "fleet.yaml: gitopsAgent.drain[0].sessions: set gauge or jsonPointer, not both",
            ),
            (None, "- sessions: {url: /metrics}", "fleet.yaml: gitopsAgent.drain[0].sessions: needs gauge"),
            (
                None,
                "- sessions: {url: /metrics, gauge: kiosk-sessions}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.gauge: \"kiosk-sessions\" is not a Prometheus metric name",
            ),
            (
                None,
                "- sessions: {url: /status, jsonPointer: active}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.jsonPointer: \"active\" does not start with '/'",
            ),
            (
                None,
                "- sessions: {url: /status, jsonPointer: /a~2}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.jsonPointer: \"/a~2\": '~' must be written ~0",
            ),
            (
                None,
                "- sessions: {url: /metrics, gauge: s, interval: 500ms}",
                "fleet.yaml: gitopsAgent.drain[0].sessions.interval: 500ms is under one second",
            ),
            (None, "- waitForIdle: {maxDefer: 10m}", "fleet.yaml: gitopsAgent.drain[0].waitForIdle: needs sessions"),
            (
                None,
                "- {sessions: {url: /metrics, gauge: s}, waitForIdle: {maxDefer: later}}",
                "fleet.yaml: gitopsAgent.drain[0].waitForIdle.maxDefer: \"later\" is not a duration",
            ),
        ];
        for (bundle, yaml, want) in table {
            let err = compile(*bundle, &specs(yaml), 30).unwrap_err();
            assert!(err.starts_with(want), "{yaml}:\n got  {err}\n want {want}");
            assert!(!err.contains(":p@"), "{err}");
        }
    }

    #[test]
    fn compile_fills_defaults_from_the_bundle_then_the_node() {
        let implicit = |w: i64| Drain {
            workload: None,
            window: w,
            replace: Replace::Auto,
            pre_stop: None,
            sessions: None,
            max_defer: None,
        };
        assert_eq!(compile(Some("45s"), &[], 30).unwrap(), vec![implicit(45)], "drainWindow alone drains everything");
        assert_eq!(compile(None, &[], 30).unwrap(), vec![], "no policy, no drain");
        assert_eq!(compile(Some("0s"), &[], 30).unwrap(), vec![], "drainWindow 0s switches it off");

        let yaml = "\
- workload: Deployment/orchestrator
  window: 1500ms
  replace: oneAtATime
  preStop: {httpGet: {path: /drain, port: http}, container: web}
  sessions: {url: /metrics, gauge: kiosk_active_sessions}
  waitForIdle: {maxDefer: 10m}
- workload: signalling
  preStop: {sleep: 5s}
  sessions: {url: 'http://{pod}.signalling.kiosk.svc:9000/status', jsonPointer: /sessions/active, interval: 10s, timeout: 3s}
- replace: surge
";
        let got = compile(Some("1m"), &specs(yaml), 30).unwrap();
        assert_eq!(
            got[0],
            Drain {
                workload: Some("Deployment/orchestrator".into()),
                window: 2,
                replace: Replace::OneAtATime,
                pre_stop: Some(PreStop::HttpGet {
                    path: "/drain".into(),
                    port: json!("http"),
                    container: Some("web".into())
                }),
                sessions: Some(SessionProbe {
                    url: "http://{podIP}:{port}/metrics".into(),
                    read: Read::Gauge("kiosk_active_sessions".into()),
                    interval: 5,
                    timeout: 2,
                }),
                max_defer: Some(600),
            },
            "a window is rounded up: it is a minimum"
        );
        assert_eq!(got[1].window, 60, "the bundle's drainWindow");
        assert_eq!(got[1].pre_stop, Some(PreStop::Sleep { seconds: 5, container: None }));
        assert_eq!(
            got[1].sessions.as_ref().map(|s| (&s.read, s.interval, s.timeout)),
            Some((&Read::JsonPointer("/sessions/active".into()), 10, 3))
        );
        assert_eq!((got[2].workload.as_deref(), got[2].replace), (None, Replace::Surge));
        assert_eq!(compile(None, &specs("- {}"), 30).unwrap()[0].window, 30, "the node's rollout.drainWindow");

        // The node's window is not known while fleet.yaml is parsed: what depends on it waits.
        let sleepy = specs("- preStop: {sleep: 40s}");
        assert_eq!(check(None, &sleepy), Ok(()));
        assert!(compile(None, &sleepy, 30).unwrap_err().contains("preStop.sleep: 40s is longer"));
        assert_eq!(
            check(Some("20s"), &sleepy).unwrap_err().to_string(),
            "gitopsAgent.drain[0].preStop.sleep: 40s is longer than the drain window of 20s"
        );
    }

    #[test]
    fn unknown_keys_are_found_with_their_path() {
        let table: &[(Value, Option<&str>)] = &[
            (json!({"workload": "web", "window": "45s"}), None),
            (json!({"windw": "45s"}), Some(".windw")),
            (json!({"preStop": {"httpGet": {"path": "/d", "port": 80, "host": "x"}}}), Some(".preStop.httpGet.host")),
            (json!({"sessions": {"url": "/m", "gauges": "s"}}), Some(".sessions.gauges")),
            (json!({"waitForIdle": {"maxDefer": "1m", "min": "1s"}}), Some(".waitForIdle.min")),
            (
                json!({"workload": "w", "window": "1s", "replace": "auto",
                    "preStop": {"httpGet": {"path": "/d", "port": 80}, "sleep": "1s", "container": "c"},
                    "sessions": {"url": "/m", "gauge": "g", "jsonPointer": "/a", "interval": "1s", "timeout": "1s"},
                    "waitForIdle": {"maxDefer": "1m"}}),
                None,
            ),
        ];
        for (entry, want) in table {
            let got = unknown_key(entry);
            assert_eq!(got.as_ref().map(|(p, _)| p.as_str()), *want, "{entry}");
            if want.is_none() {
                // The table agrees with the structs.
                serde_json::from_value::<DrainSpec>(entry.clone()).unwrap();
            }
        }
        let (_, message) = unknown_key(&json!({"windw": "45s"})).unwrap();
        assert!(message.starts_with("unknown field `windw`, expected one of `workload`, `window`"), "{message}");
    }

    fn deployment(name: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "kiosk"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name}]}}}})
    }

    fn of_kind(kind: &str, name: &str) -> Value {
        let mut o = deployment(name);
        o["kind"] = json!(kind);
        o
    }

    #[test]
    fn drain_for_prefers_a_named_entry_and_counts_only_apps_v1_workloads() {
        let drains =
            compile(None, &specs("- {workload: web}\n- {}\n- {workload: StatefulSet/db, window: 90s}"), 30).unwrap();
        let table: &[(Value, Option<usize>)] = &[
            (deployment("web"), Some(0)),
            (of_kind("StatefulSet", "db"), Some(2)), // named after the catch-all, still first
            (of_kind("Deployment", "db"), Some(1)),
            (of_kind("DaemonSet", "agent"), Some(1)),
            (json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}}), None),
            (json!({"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": {"name": "web"}}), None),
            (of_kind("ReplicaSet", "web"), None),
        ];
        for (object, want) in table {
            let got = drain_for(&drains, object).map(|d| drains.iter().position(|x| std::ptr::eq(x, d)).unwrap());
            assert_eq!(got, *want, "{object}");
        }
        let named_only = compile(None, &specs("- {workload: web}"), 30).unwrap();
        assert_eq!(drain_for(&named_only, &deployment("db")), None);
    }

    #[test]
    fn unmatched_names_typos() {
        let drains =
            compile(None, &specs("- {workload: web, preStop: {sleep: 5s, container: sidecar}}\n- {workload: wbe}"), 30)
                .unwrap();
        assert_eq!(
            unmatched(&drains, &[deployment("web")]),
            vec![
                "drain preStop of Deployment/kiosk/web: no container named \"sidecar\"",
                "drain for workload \"wbe\": no such workload in the bundle",
            ]
        );
    }

    #[test]
    fn quantities_parse_exactly_to_thousandths() {
        let table: &[(&str, Result<i128, ()>)] = &[
            ("500m", Ok(500)),
            ("1", Ok(1000)),
            ("0.5", Ok(500)),
            (".5", Ok(500)),
            ("2Gi", Ok(2 * (1 << 30) * 1000)),
            ("1Ki", Ok(1_024_000)),
            ("1e3", Ok(1_000_000)),
            ("1E3", Ok(1_000_000)),
            ("1e-3", Ok(1)),
            ("100M", Ok(100_000_000_000)),
            ("1k", Ok(1_000_000)),
            ("1E", Ok(1_000_000_000_000_000_000_000)),
            ("1n", Ok(1)), // rounded up, as Kubernetes' MilliValue
            ("1500u", Ok(2)),
            ("0", Ok(0)),
            ("-1", Ok(-1000)),
            ("+2", Ok(2000)),
            ("1.5Gi", Ok(1_610_612_736_000)),
            ("", Err(())),
            ("abc", Err(())),
            ("1.2.3", Err(())),
            ("1Gb", Err(())),
            ("1e", Err(())),
            ("1 Gi", Err(())),
            ("m", Err(())),
            ("1e99", Err(())),
        ];
        for (s, want) in table {
            assert_eq!(parse_quantity(s).map_err(|_| ()), *want, "{s:?}");
        }
        assert_eq!(quantity(&json!(2)), Ok(2000), "a chart may write a number");
        assert_eq!(quantity(&json!(0.25)), Ok(250));
        let shown: Vec<String> =
            [("cpu", 500), ("cpu", 2000), ("memory", 2 * (1 << 30) * 1000), ("nvidia.com/gpu", 0), ("memory", 1500)]
                .iter()
                .map(|(r, m)| show(r, *m))
                .collect();
        assert_eq!(shown, ["500m", "2", "2Gi", "0", "1500m"]);
    }

    fn node(name: &str, allocatable: Value) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {}, "status": {"allocatable": allocatable}})
    }

    fn gpu_node(name: &str, gpus: i64) -> Value {
        node(name, json!({"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": gpus.to_string(), "pods": "110"}))
    }

    fn pod_on(node: &str, ns: &str, name: &str, labels: Value, resources: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": resources}]},
            "status": {"phase": "Running"}})
    }

    /// The kiosk orchestrator: one replica holding a GPU (as a limit only, as charts write it).
    fn kiosk(kind: &str) -> Value {
        let mut w = of_kind(kind, "orchestrator");
        w["spec"]["replicas"] = json!(1);
        w["spec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}});
        w
    }

    fn own_pod(node: &str, terminating: bool) -> Value {
        let mut p = pod_on(
            node,
            "kiosk",
            "orchestrator-abc",
            json!({"app": "orchestrator", "pod-template-hash": "abc"}),
            json!({"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}}),
        );
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:45Z");
        }
        p
    }

    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() { &mut v } else { v.pointer_mut(parent).unwrap() };
        target[key] = value;
        v
    }

    fn fits(node: &str) -> Room {
        Room::Fits { node: node.into() }
    }

    fn full(reason: &str) -> Room {
        Room::Full { reason: reason.into() }
    }

    #[test]
    fn room_estimates_the_schedulers_resource_fit() {
        let gpu_full =
            full("store-node-1 has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside 1 replica");
        let other = |node: &str, cpu: &str| {
            pod_on(node, "kube-system", "x", json!({"app": "x"}), json!({"requests": {"cpu": cpu, "memory": "64Mi"}}))
        };
        let tainted = |n: Value, effect: &str| {
            with(n, "/spec/taints", json!([{"key": "dedicated", "value": "kiosk", "effect": effect}]))
        };
        let toleration = json!([{"key": "dedicated", "operator": "Equal", "value": "kiosk", "effect": "NoSchedule"}]);
        let cpu_workload = |cpu: &str| {
            with(kiosk("Deployment"), "/spec/template/spec/containers/0/resources", json!({"requests": {"cpu": cpu}}))
        };
        let no_node =
            Room::Unknown { reason: "no schedulable node matches the pod's nodeSelector and tolerations".into() };
        // (what, workload, nodes, pods, expected)
        let table: Vec<RoomRow> = vec![
            (
                "one GPU, held by the own pod",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 1)],
                vec![own_pod("store-node-1", false)],
                gpu_full.clone(),
            ),
            (
                "one GPU, no own pod yet (first rollout)",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 1)],
                vec![],
                gpu_full.clone(),
            ),
            (
                "one GPU, own pod terminating",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 1)],
                vec![own_pod("store-node-1", true)],
                gpu_full.clone(),
            ),
            (
                "two GPUs",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 2)],
                vec![own_pod("store-node-1", false)],
                fits("store-node-1"),
            ),
            (
                "a second one-GPU node",
                kiosk("Deployment"),
                vec![gpu_node("store-node-2", 1), gpu_node("store-node-1", 1)],
                vec![own_pod("store-node-2", false)],
                fits("store-node-2"),
            ),
            (
                "a GPU-less node",
                kiosk("Deployment"),
                vec![node("n", json!({"cpu": "8", "memory": "32Gi", "pods": "110"}))],
                vec![],
                full("only 0 of 1 replicas fit; n has no room for a pod: nvidia.com/gpu 1 requested, 0 free"),
            ),
            (
                "cpu: room",
                cpu_workload("250m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![other("n", "1500m")],
                fits("n"),
            ),
            (
                "cpu: no room",
                cpu_workload("300m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![other("n", "1500m")],
                full("n has no room for a second pod: cpu 300m requested, 200m free beside 1 replica"),
            ),
            (
                "pods that ended hold nothing",
                cpu_workload("300m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![with(other("n", "1500m"), "/status/phase", json!("Succeeded"))],
                fits("n"),
            ),
            (
                "pods of other nodes hold nothing here",
                cpu_workload("300m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![other("m", "1500m")],
                fits("n"),
            ),
            (
                "the pods count is a resource too",
                cpu_workload("100m"),
                vec![node("n", json!({"cpu": "2", "pods": "2"}))],
                vec![other("n", "100m")],
                full("n has no room for a second pod: pods 1 requested, 0 free beside 1 replica"),
            ),
            (
                "nodeSelector excludes the node with room",
                with(kiosk("Deployment"), "/spec/template/spec/nodeSelector", json!({"gpu": "a100"})),
                vec![
                    gpu_node("store-node-0", 4),
                    with(gpu_node("store-node-1", 1), "/metadata/labels/gpu", json!("a100")),
                ],
                vec![],
                gpu_full.clone(),
            ),
            (
                "required node affinity excludes it too",
                with(
                    kiosk("Deployment"),
                    "/spec/template/spec/affinity",
                    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]}}}),
                ),
                vec![
                    gpu_node("store-node-0", 4),
                    with(gpu_node("store-node-1", 1), "/metadata/labels/gpu", json!("a100")),
                ],
                vec![],
                gpu_full.clone(),
            ),
            (
                "a taint not tolerated",
                kiosk("Deployment"),
                vec![tainted(gpu_node("n", 2), "NoSchedule")],
                vec![],
                no_node.clone(),
            ),
            (
                "NoExecute too",
                kiosk("Deployment"),
                vec![tainted(gpu_node("n", 2), "NoExecute")],
                vec![],
                no_node.clone(),
            ),
            (
                "PreferNoSchedule does not filter",
                kiosk("Deployment"),
                vec![tainted(gpu_node("n", 2), "PreferNoSchedule")],
                vec![],
                fits("n"),
            ),
            (
                "a tolerated taint",
                with(kiosk("Deployment"), "/spec/template/spec/tolerations", toleration.clone()),
                vec![tainted(gpu_node("n", 2), "NoSchedule")],
                vec![],
                fits("n"),
            ),
            (
                "Exists with no key tolerates all",
                with(kiosk("Deployment"), "/spec/template/spec/tolerations", json!([{"operator": "Exists"}])),
                vec![tainted(gpu_node("n", 2), "NoExecute")],
                vec![],
                fits("n"),
            ),
            (
                "a cordoned node",
                kiosk("Deployment"),
                vec![with(gpu_node("n", 2), "/spec/unschedulable", json!(true))],
                vec![],
                no_node.clone(),
            ),
            (
                "a cordoned node beside one that is not",
                kiosk("Deployment"),
                vec![with(gpu_node("a", 2), "/spec/unschedulable", json!(true)), gpu_node("b", 2)],
                vec![],
                fits("b"),
            ),
            (
                "limits stand in for requests (GPU as a limit only)",
                with(
                    kiosk("Deployment"),
                    "/spec/template/spec/containers/0/resources",
                    json!({"limits": {"cpu": "2", "memory": "1Gi"}}),
                ),
                vec![node("n", json!({"cpu": "3", "memory": "8Gi", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: cpu 2 requested, 1 free beside 1 replica"),
            ),
            (
                "a request wins over its limit",
                with(
                    kiosk("Deployment"),
                    "/spec/template/spec/containers/0/resources",
                    json!({"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}),
                ),
                vec![node("n", json!({"cpu": "3", "pods": "110"}))],
                vec![],
                fits("n"),
            ),
            (
                "the largest init container is the request when larger than the containers",
                with(
                    cpu_workload("100m"),
                    "/spec/template/spec/initContainers",
                    json!([{"name": "i", "resources": {"requests": {"cpu": "1"}}}]),
                ),
                vec![node("n", json!({"cpu": "1500m", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: cpu 1 requested, 500m free beside 1 replica"),
            ),
            (
                "sidecars add to the containers",
                with(
                    cpu_workload("600m"),
                    "/spec/template/spec/initContainers",
                    json!([{"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}}]),
                ),
                vec![node("n", json!({"cpu": "1500m", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: cpu 800m requested, 700m free beside 1 replica"),
            ),
            (
                "several nodes, none with room: the closest is named",
                kiosk("Deployment"),
                vec![
                    gpu_node("a", 1),
                    node("b", json!({"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1", "pods": "110"})),
                ],
                vec![pod_on("b", "ml", "train", json!({}), json!({"limits": {"nvidia.com/gpu": "1"}}))],
                full(
                    "none of 2 schedulable nodes has room; a has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside 1 replica",
                ),
            ),
            (
                "replicas that do not fit at all",
                with(kiosk("Deployment"), "/spec/replicas", json!(3)),
                vec![gpu_node("n", 2)],
                vec![],
                full(
                    "only 2 of 3 replicas fit; n has no room for one more pod: nvidia.com/gpu 1 requested, 0 free beside 2 replicas",
                ),
            ),
            (
                "a hostPort allows one pod per node",
                with(
                    cpu_workload("100m"),
                    "/spec/template/spec/containers/0/ports",
                    json!([{"containerPort": 8080, "hostPort": 8080}]),
                ),
                vec![node("n", json!({"cpu": "8", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: hostPort 8080/TCP allows one pod per node"),
            ),
            (
                "required anti-affinity against itself: one per hostname",
                with(
                    cpu_workload("100m"),
                    "/spec/template/spec/affinity",
                    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "orchestrator"}}, "topologyKey": "kubernetes.io/hostname"}]}}),
                ),
                vec![node("n", json!({"cpu": "8", "pods": "110"})), node("m", json!({"cpu": "8", "pods": "110"}))],
                vec![],
                fits("n"),
            ),
            (
                "an unparsable quantity makes it unknown",
                cpu_workload("lots"),
                vec![node("n", json!({"cpu": "8", "pods": "110"}))],
                vec![],
                Room::Unknown {
                    reason:
                        "the pod template: container orchestrator: requests.cpu: \"lots\" is not a Kubernetes quantity"
                            .into(),
                },
            ),
            (
                "so does a node's",
                cpu_workload("1"),
                vec![node("n", json!({"cpu": "eight", "pods": "110"}))],
                vec![],
                Room::Unknown { reason: "node n: allocatable.cpu: \"eight\" is not a Kubernetes quantity".into() },
            ),
            ("no nodes", kiosk("Deployment"), vec![], vec![], no_node.clone()),
        ];
        for (what, workload, nodes, pods, want) in table {
            assert_eq!(room(&workload, &nodes, &pods), want, "{what}");
        }
    }

    #[test]
    fn room_is_the_same_before_during_and_after_a_rollout() {
        let nodes = [gpu_node("store-node-1", 2)];
        let first = room(&kiosk("Deployment"), &nodes, &[]);
        let running = room(&kiosk("Deployment"), &nodes, &[own_pod("store-node-1", false)]);
        let mut surge = own_pod("store-node-1", false);
        surge["metadata"]["name"] = json!("orchestrator-def");
        let rolling = room(&kiosk("Deployment"), &nodes, &[own_pod("store-node-1", true), surge]);
        assert_eq!((&first, &running, &rolling), (&fits("store-node-1"), &fits("store-node-1"), &fits("store-node-1")));
        // Another namespace's pod with the same labels is not the workload's own.
        let mut foreign = own_pod("store-node-1", false);
        foreign["metadata"]["namespace"] = json!("lab");
        assert!(matches!(room(&kiosk("Deployment"), &nodes, &[foreign]), Room::Full { .. }));
    }

    #[test]
    fn a_daemonset_needs_room_for_a_second_pod_on_every_node() {
        let ds = kiosk("DaemonSet");
        let table: Vec<(&str, Vec<Value>, Vec<Value>, Room)> = vec![
            ("room on both", vec![gpu_node("b", 2), gpu_node("a", 2)], vec![], fits("a, b")),
            (
                "one node full",
                vec![gpu_node("a", 2), gpu_node("b", 1)],
                vec![own_pod("b", false)],
                full("b has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside its own"),
            ),
            // The DaemonSet controller tolerates cordoned nodes: its pod runs there too.
            (
                "a cordoned node still counts",
                vec![gpu_node("a", 2), with(gpu_node("b", 1), "/spec/unschedulable", json!(true))],
                vec![],
                full("b has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside its own"),
            ),
        ];
        for (what, nodes, pods, want) in table {
            assert_eq!(room(&ds, &nodes, &pods), want, "{what}");
        }
    }

    fn drain(yaml: &str) -> Drain {
        compile(None, &specs(yaml), 30).unwrap().remove(0)
    }

    #[test]
    fn shape_writes_the_strategy_grace_and_prestop() {
        let gpu_full =
            full("store-node-1 has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside 1 replica");
        let chart = |strategy: Value| with(kiosk("Deployment"), "/spec/strategy", strategy);
        // (what, object, drain, room, expected strategy, mode, notes)
        let table: Vec<ShapeRow> = vec![
            (
                "surge keeps the chart's 25%",
                chart(json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})),
                drain("- {window: 45s}"),
                fits("n"),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}),
                Mode::Surge,
                vec!["maxUnavailable 25% replaced by 0", "terminationGracePeriodSeconds 30 -> 45"],
            ),
            (
                "surge replaces a zero maxSurge by 1",
                chart(json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "0%", "maxUnavailable": 0}})),
                drain("- {window: 20s}"),
                fits("n"),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
                Mode::Surge,
                vec!["maxSurge 0% replaced by 1"],
            ),
            (
                "no strategy in the chart: nothing to note",
                kiosk("Deployment"),
                drain("- {window: 20s}"),
                Room::Unknown { reason: "cannot list nodes".into() },
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
                Mode::Surge,
                vec![],
            ),
            (
                "no room: one at a time",
                chart(json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})),
                drain("- {window: 20s}"),
                gpu_full.clone(),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                Mode::OneAtATime,
                vec!["maxSurge 1 replaced by 0", "maxUnavailable 0 replaced by 1"],
            ),
            (
                "replace: oneAtATime whatever the room",
                kiosk("Deployment"),
                drain("- {window: 20s, replace: oneAtATime}"),
                fits("n"),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                Mode::OneAtATime,
                vec![],
            ),
            (
                "replace: surge whatever the room",
                kiosk("Deployment"),
                drain("- {window: 20s, replace: surge}"),
                gpu_full.clone(),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
                Mode::Surge,
                vec![],
            ),
            (
                "Recreate is replaced",
                chart(json!({"type": "Recreate"})),
                drain("- {window: 20s}"),
                gpu_full,
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                Mode::OneAtATime,
                vec!["strategy Recreate replaced by RollingUpdate"],
            ),
        ];
        for (what, mut object, drain, room, strategy, mode, notes) in table {
            let plan = shape(&mut object, &drain, &room).expect(what);
            assert_eq!(object["spec"]["strategy"], strategy, "{what}");
            assert_eq!(plan.mode, mode, "{what}");
            assert_eq!(plan.notes, notes, "{what}");
            assert_eq!(
                object["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
                json!(plan.grace),
                "{what}"
            );
        }
        let mut unknown = kiosk("Deployment");
        let plan = shape(&mut unknown, &drain("- {}"), &Room::Unknown { reason: "cannot list nodes".into() }).unwrap();
        assert_eq!(plan.why, "room for a second pod unknown, surging: cannot list nodes");
    }

    #[test]
    fn the_grace_period_is_raised_to_the_window_never_lowered() {
        // (chart's terminationGracePeriodSeconds, window, written, note)
        let table: &[(Option<i64>, &str, i64, Option<&str>)] = &[
            (None, "45s", 45, Some("terminationGracePeriodSeconds 30 -> 45")),
            (None, "10s", 30, None),
            (Some(20), "45s", 45, Some("terminationGracePeriodSeconds 20 -> 45")),
            (Some(120), "45s", 120, None),
        ];
        for (chart, window, want, note) in table {
            let mut o = kiosk("Deployment");
            if let Some(g) = chart {
                o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(g);
            }
            let plan = shape(&mut o, &drain(&format!("- {{window: {window}, replace: surge}}")), &fits("n")).unwrap();
            assert_eq!((plan.grace, plan.window <= plan.grace), (*want, true), "{chart:?} {window}");
            assert_eq!(o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], json!(want));
            assert_eq!(plan.notes.first().map(String::as_str), *note, "{chart:?} {window}");
        }
    }

    #[test]
    fn prestop_goes_into_the_named_or_first_container() {
        let two = |lifecycle: Value| {
            with(
                kiosk("Deployment"),
                "/spec/template/spec/containers",
                json!([{"name": "proxy"}, {"name": "web", "lifecycle": lifecycle}]),
            )
        };
        // (what, drain, object, container index, expected lifecycle, note)
        let table: Vec<PreStopRow> = vec![
            (
                "httpGet into the named container",
                "- preStop: {httpGet: {path: /drain, port: 8080}, container: web}",
                two(Value::Null),
                1,
                json!({"preStop": {"httpGet": {"path": "/drain", "port": 8080}}}),
                None,
            ),
            (
                "sleep into the first",
                "- preStop: {sleep: 5s}",
                two(Value::Null),
                0,
                json!({"preStop": {"sleep": {"seconds": 5}}}),
                None,
            ),
            (
                "the chart's preStop is replaced, postStart kept",
                "- preStop: {httpGet: {path: /drain, port: http}, container: web}",
                two(
                    json!({"postStart": {"exec": {"command": ["x"]}}, "preStop": {"exec": {"command": ["sleep", "5"]}}}),
                ),
                1,
                json!({"postStart": {"exec": {"command": ["x"]}}, "preStop": {"httpGet": {"path": "/drain", "port": "http"}}}),
                Some("preStop of container web replaced"),
            ),
        ];
        for (what, yaml, mut object, index, lifecycle, note) in table {
            let d = drain(yaml);
            let plan = shape(&mut object, &d, &fits("n")).unwrap();
            assert_eq!(object["spec"]["template"]["spec"]["containers"][index]["lifecycle"], lifecycle, "{what}");
            assert_eq!(plan.pre_stop, d.pre_stop, "{what}");
            assert_eq!(plan.notes.iter().find(|n| n.starts_with("preStop")).map(String::as_str), note, "{what}");
        }
        let mut object = two(Value::Null);
        let plan = shape(&mut object, &drain("- preStop: {sleep: 5s, container: sidecar}"), &fits("n")).unwrap();
        assert_eq!(plan.pre_stop, None);
        assert!(plan.notes.contains(&"preStop not written: no container named sidecar".to_owned()), "{:?}", plan.notes);
    }

    #[test]
    fn statefulsets_and_daemonsets_are_shaped_by_their_kind() {
        let mut sts = with(kiosk("StatefulSet"), "/spec/updateStrategy", json!({"type": "OnDelete"}));
        let plan = shape(&mut sts, &drain("- {window: 45s}"), &fits("n")).unwrap();
        assert_eq!((plan.mode, plan.why.as_str()), (Mode::InPlace, "StatefulSets replace pods one at a time"));
        assert_eq!(sts["spec"]["updateStrategy"], json!({"type": "OnDelete"}), "untouched");
        assert_eq!(plan.notes[0], "updateStrategy OnDelete kept: pods are replaced only when deleted");
        assert_eq!(plan.workload, "StatefulSet/kiosk/orchestrator");

        let mut ds = with(kiosk("DaemonSet"), "/spec/updateStrategy", json!({"type": "OnDelete"}));
        let plan = shape(&mut ds, &drain("- {window: 45s}"), &fits("a, b")).unwrap();
        assert_eq!((plan.mode, plan.why.as_str()), (Mode::Surge, "room for a second pod on a, b"));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
        );
        assert_eq!(plan.notes[0], "updateStrategy OnDelete replaced by RollingUpdate");
        assert!(ds["spec"].get("strategy").is_none());

        let mut ds = kiosk("DaemonSet");
        let plan = shape(&mut ds, &drain("- {window: 45s}"), &full("b has no room")).unwrap();
        assert_eq!(plan.mode, Mode::OneAtATime);
        assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"], json!({"maxSurge": 0, "maxUnavailable": 1}));

        // Not for this drain, or not a workload: untouched.
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orchestrator"}});
        assert_eq!(shape(&mut cm, &drain("- {}"), &fits("n")), None);
        let mut other = kiosk("Deployment");
        let before = other.clone();
        assert_eq!(shape(&mut other, &drain("- {workload: signalling}"), &fits("n")), None);
        assert_eq!(other, before);
    }

    #[test]
    fn describe_says_what_and_why_in_one_line() {
        let d = drain(
            "- {window: 45s, preStop: {httpGet: {path: /drain, port: 8080}}, \
             sessions: {url: /metrics, gauge: kiosk_active_sessions}, waitForIdle: {maxDefer: 10m}}",
        );
        let gpu_full =
            full("store-node-1 has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside 1 replica");
        let plan = shape(&mut kiosk("Deployment"), &d, &gpu_full).unwrap();
        assert_eq!(
            describe(&plan),
            "Deployment/kiosk/orchestrator: one pod at a time (maxSurge 0, maxUnavailable 1), each old pod drains \
             for 45s before its replacement starts: store-node-1 has no room for a second pod: nvidia.com/gpu 1 \
             requested, 0 free beside 1 replica; waits for idle first (up to 10m); terminationGracePeriodSeconds 45; \
             preStop GET /drain on port 8080; sessions from /metrics (kiosk_active_sessions); \
             changed: terminationGracePeriodSeconds 30 -> 45"
        );
        let d = drain(
            "- {window: 90s, replace: surge, preStop: {sleep: 5s, container: web}, \
             sessions: {url: 'http://{pod}.web.kiosk.svc:9000/status', jsonPointer: /active}}",
        );
        let mut o = kiosk("Deployment");
        o["spec"]["template"]["spec"]["containers"][0]["name"] = json!("web");
        o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(120);
        let plan = shape(&mut o, &d, &fits("n")).unwrap();
        assert_eq!(
            describe(&plan),
            "Deployment/kiosk/orchestrator: new pods start beside the old ones (maxUnavailable 0), each old pod \
             drains for 1m 30s once its replacement is ready: replace: surge in fleet.yaml; \
             terminationGracePeriodSeconds 120; preStop sleep 5s in container web; \
             sessions from http://{pod}.web.kiosk.svc:9000/status (JSON /active)"
        );
    }

    #[test]
    fn plans_and_reports_survive_the_record() {
        let d = drain(
            "- {window: 45s, preStop: {httpGet: {path: /drain, port: http}}, sessions: {url: /m, gauge: g}, waitForIdle: {maxDefer: 1m}}",
        );
        let plan = shape(&mut kiosk("Deployment"), &d, &fits("n")).unwrap();
        let back: Plan = serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        let r = report("Deployment/ns/web", &[gone("a", 100, 120, Some(2)), gone("b", 100, 90, None)]);
        let back: Report = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(serde_json::to_value(Ended::Cut { sessions: 2 }).unwrap(), json!({"ended": "cut", "sessions": 2}));
        assert_eq!(serde_json::to_value(fits("n")).unwrap(), json!({"room": "fits", "node": "n"}));
    }

    #[test]
    fn session_urls_are_expanded_per_pod() {
        let probe = drain("- sessions: {url: /metrics, gauge: g}").sessions.unwrap();
        let pod = |ip: Option<&str>| {
            let mut p = json!({"metadata": {"name": "orchestrator-abc"},
                "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 9090}]}]}, "status": {}});
            if let Some(ip) = ip {
                p["status"]["podIP"] = json!(ip);
            }
            p
        };
        let w = kiosk("Deployment");
        assert_eq!(session_url(&probe, &w, &pod(Some("10.0.0.7"))).as_deref(), Some("http://10.0.0.7:9090/metrics"));
        assert_eq!(session_url(&probe, &w, &pod(None)), None, "no IP yet");
        let named = drain("- sessions: {url: 'http://{pod}.{name}.{namespace}.svc/s', gauge: g}").sessions.unwrap();
        assert_eq!(
            session_url(&named, &w, &pod(None)).as_deref(),
            Some("http://orchestrator-abc.orchestrator.kiosk.svc/s")
        );
    }

    #[test]
    fn sessions_are_read_from_prometheus_text_or_json() {
        let gauge = Read::Gauge("kiosk_active_sessions".into());
        let metrics = "\
# HELP kiosk_active_sessions Open WebSocket sessions.
# TYPE kiosk_active_sessions gauge
kiosk_active_sessions{room=\"a\",path=\"/ws}\"} 2
kiosk_active_sessions{room=\"b\"} 1.0 1732442400000
kiosk_active_sessions_total 99
other_kiosk_active_sessions 5
# EOF
";
        // (read, body, result)
        let table: Vec<(&Read, &str, Result<u64, &str>)> = vec![
            (&gauge, metrics, Ok(3)),
            (&gauge, "kiosk_active_sessions 0\n", Ok(0)),
            (&gauge, "kiosk_active_sessions 3\n", Ok(3)),
            (&gauge, "# TYPE kiosk_active_sessions gauge\nother 1\n", Err("no sample of kiosk_active_sessions")),
            (&gauge, "kiosk_active_sessions +Inf\n", Err("not a finite number")),
            (&gauge, "kiosk_active_sessions NaN\n", Err("not a finite number")),
            (&gauge, "kiosk_active_sessions -1\n", Err("negative")),
            (&gauge, "kiosk_active_sessions 2.5\n", Err("not a whole number")),
            (&gauge, "kiosk_active_sessions{a=\"b\"\n", Err("unclosed labels")),
            (&gauge, "kiosk_active_sessions\n", Err("has no value")),
        ];
        let pointer = Read::JsonPointer("/sessions/active".into());
        let json_rows: Vec<(&Read, &str, Result<u64, &str>)> = vec![
            (&pointer, r#"{"sessions": {"active": 4}}"#, Ok(4)),
            (&pointer, r#"{"sessions": {"active": 4.0}}"#, Ok(4)),
            (&pointer, r#"{"sessions": {"active": 4.5}}"#, Err("not a whole number")),
            (&pointer, r#"{"sessions": {"active": -1}}"#, Err("negative")),
            (&pointer, r#"{"sessions": {"active": "4"}}"#, Err("/sessions/active is \"4\", not a number")),
            (&pointer, r#"{"sessions": {}}"#, Err("no value at /sessions/active")),
            (&pointer, "sessions 4", Err("not JSON")),
        ];
        for (read, body, want) in table.into_iter().chain(json_rows) {
            match (read_sessions(read, body), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{body}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{body}: {got}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_bundle_waits_with_its_shortest_max_defer_and_interval() {
        let probe = |interval| SessionProbe {
            url: "http://{podIP}:9100/metrics".into(),
            read: Read::Gauge("kiosk_active_sessions".into()),
            interval,
            timeout: 2,
        };
        let plan = |name: &str, sessions: Option<SessionProbe>, max_defer| Plan {
            workload: format!("Deployment/ns/{name}"),
            window: 30,
            mode: Mode::Surge,
            why: String::new(),
            grace: 30,
            pre_stop: None,
            sessions,
            max_defer,
            notes: Vec::new(),
        };
        let plans = vec![
            plan("web", Some(probe(5)), Some(600)),
            plan("api", Some(probe(2)), Some(120)),
            plan("db", Some(probe(1)), None),
            plan("cache", None, None),
        ];
        let waiting = waiting_for_idle(&plans);
        let names: Vec<&str> = waiting.iter().map(|p| p.workload.as_str()).collect();
        assert_eq!(names, ["Deployment/ns/web", "Deployment/ns/api"], "only plans with waitForIdle and a probe wait");
        let busy = vec![("web-abc".to_owned(), Ok(1))];
        // (now, expected): api's 2s interval and 2m maxDefer bound the whole bundle.
        let table: Vec<(Time, Idle)> = vec![
            (
                1_000,
                Idle::Wait {
                    recheck_at: 1_002,
                    reason:
                        "waiting for idle: 1 session on web-abc (rolls out anyway at 1970-01-01T00:18:40Z, maxDefer 2m)"
                            .into(),
                },
            ),
            (
                1_120,
                Idle::Go(
                    "maxDefer 2m passed with 1 session open on 1 pod: rolling out; they get the drain window".into(),
                ),
            ),
        ];
        for (now, want) in table {
            assert_eq!(idle_for(&waiting, &busy, 1_000, now), want, "at {now}");
        }
    }

    #[test]
    fn idle_waits_for_every_old_pod_until_max_defer() {
        let since = 1_795_514_700; // 2026-11-24T10:05:00Z
        let r = |pairs: &[(&str, Result<u64, &str>)]| -> Readings {
            pairs.iter().map(|(p, v)| ((*p).to_owned(), v.map_err(str::to_owned))).collect()
        };
        let wait = |recheck_at: Time, reason: &str| Idle::Wait { recheck_at, reason: reason.into() };
        // (readings, now, expected)
        let table: Vec<(Readings, Time, Idle)> = vec![
            (r(&[]), since, Idle::Go("no old pods to wait for".into())),
            (r(&[("web-abc", Ok(0)), ("web-def", Ok(0))]), since, Idle::Go("idle: no sessions on 2 old pods".into())),
            (r(&[("web-abc", Ok(0))]), since + 30, Idle::Go("idle: no sessions on 1 old pod".into())),
            (
                r(&[("web-abc", Ok(2)), ("web-def", Ok(1)), ("web-ghi", Ok(0))]),
                since + 60,
                wait(
                    since + 65,
                    "waiting for idle: 2 sessions on web-abc, 1 on web-def (rolls out anyway at 2026-11-24T10:15:00Z, maxDefer 10m)",
                ),
            ),
            (
                r(&[("web-abc", Ok(1))]),
                since + 598,
                wait(since + 600, "waiting for idle: 1 session on web-abc (rolls out anyway at 2026-11-24T10:15:00Z, maxDefer 10m)"),
            ),
            (
                r(&[("web-abc", Ok(0)), ("web-def", Err("connection refused"))]),
                since,
                wait(
                    since + 5,
                    "waiting for idle: sessions of web-def unknown (connection refused), counted as busy (rolls out anyway at 2026-11-24T10:15:00Z, maxDefer 10m)",
                ),
            ),
            (
                r(&[("web-abc", Ok(3)), ("web-def", Ok(0))]),
                since + 600,
                Idle::Go("maxDefer 10m passed with 3 sessions open on 1 pod: rolling out; they get the drain window".into()),
            ),
            (
                r(&[("web-abc", Ok(1)), ("web-def", Err("timed out"))]),
                since + 900,
                Idle::Go(
                    "maxDefer 10m passed with 1 session open on 1 pod and sessions unknown on 1 pod: rolling out; they get the drain window"
                        .into(),
                ),
            ),
        ];
        for (readings, now, want) in table {
            assert_eq!(idle(&readings, since, 600, 5, now), want, "{readings:?} at {now}");
        }
    }

    #[test]
    fn terminating_pods_are_the_workloads_with_a_deletion_timestamp() {
        let w = kiosk("Deployment");
        let mut other_ns = own_pod("n", true);
        other_ns["metadata"]["namespace"] = json!("lab");
        let mut other_app = own_pod("n", true);
        other_app["metadata"]["labels"]["app"] = json!("signalling");
        let pods = [own_pod("n", true), own_pod("n", false), other_ns, other_app];
        assert_eq!(terminating(&w, &pods), vec![("orchestrator-abc".to_owned(), 1_795_514_445)]);
    }

    fn gone(pod: &str, deadline: Time, gone_at: Time, last: Option<u64>) -> PodDrain {
        PodDrain { pod: pod.into(), deadline, gone_at: Some(gone_at), last, error: None }
    }

    fn still(pod: &str, deadline: Time, last: Option<u64>, error: Option<&str>) -> PodDrain {
        PodDrain { pod: pod.into(), deadline, gone_at: None, last, error: error.map(str::to_owned) }
    }

    #[test]
    fn how_a_pod_ended() {
        let unknown = |why: &str| Ended::Unknown { why: why.into() };
        let table: Vec<(PodDrain, Ended)> = vec![
            (gone("a", 100, 60, Some(2)), Ended::Clean), // exited by itself: its sessions ended
            (gone("a", 100, 99, None), Ended::Clean),
            (gone("a", 100, 100, Some(3)), Ended::Cut { sessions: 3 }),
            (gone("a", 100, 130, Some(1)), Ended::Cut { sessions: 1 }),
            (gone("a", 100, 100, Some(0)), Ended::Clean),
            (gone("a", 100, 105, None), unknown("ended by its grace period; no session reading")),
            (still("a", 100, Some(2), None), unknown("still terminating")),
        ];
        for (pod, want) in table {
            assert_eq!(ended(&pod), want, "{pod:?}");
        }
    }

    #[test]
    fn reports_word_the_outcome() {
        let w = "Deployment/ns/web";
        // (pods, cut, clean, message)
        let table: Vec<(Vec<PodDrain>, u64, bool, &str)> = vec![
            (vec![], 0, true, "Deployment/ns/web: no pod was replaced"),
            (vec![gone("web-abc", 100, 50, Some(0))], 0, true, "Deployment/ns/web: drained cleanly (1 pod)"),
            (
                vec![gone("web-abc", 100, 50, Some(0)), gone("web-def", 100, 120, Some(0))],
                0,
                true,
                "Deployment/ns/web: drained cleanly (2 pods)",
            ),
            (
                vec![gone("web-abc", 100, 100, Some(3)), gone("web-def", 100, 50, Some(1))],
                3,
                false,
                "Deployment/ns/web: 3 sessions cut at window end (web-abc: 3)",
            ),
            (
                vec![gone("web-abc", 100, 101, Some(1))],
                1,
                false,
                "Deployment/ns/web: 1 session cut at window end (web-abc: 1)",
            ),
            (
                vec![gone("web-abc", 100, 101, Some(1)), gone("web-def", 100, 101, Some(2))],
                3,
                false,
                "Deployment/ns/web: 3 sessions cut at window end (web-abc: 1, web-def: 2)",
            ),
            (
                vec![gone("web-abc", 100, 100, None)],
                0,
                false,
                "Deployment/ns/web: 1 pod ended by its grace period, sessions unknown (no session reading)",
            ),
            (
                vec![
                    gone("web-abc", 100, 100, None),
                    gone("web-def", 100, 103, None),
                    still("web-ghi", 100, None, None),
                ],
                0,
                false,
                "Deployment/ns/web: 2 pods ended by their grace period, sessions unknown (no session reading); 1 pod still terminating",
            ),
            (
                vec![gone("web-abc", 100, 100, Some(2)), gone("web-def", 100, 100, None)],
                2,
                false,
                "Deployment/ns/web: 2 sessions cut at window end (web-abc: 2); 1 pod ended by its grace period, sessions unknown (no session reading)",
            ),
        ];
        for (pods, cut, clean, message) in table {
            let r = report(w, &pods);
            assert_eq!((r.cut, r.clean, r.message.as_str()), (cut, clean, message));
            assert_eq!(r.pods.len(), pods.len());
            // The one word of metrics and Events follows the counts.
            let word = if cut > 0 {
                "cut"
            } else if clean {
                "clean"
            } else {
                "unconfirmed"
            };
            assert_eq!(r.result(), word, "{message}");
        }
    }

    #[test]
    fn progress_shows_each_draining_pod() {
        let now = 1_000;
        // (pods, line)
        let table: Vec<(Vec<PodDrain>, &str)> = vec![
            (vec![still("web-abc", now + 33, Some(2), None)], "draining web-abc: 2 sessions left, 12s of 45s"),
            (
                vec![
                    still("web-abc", now + 45, Some(1), None),
                    gone("web-old", now, now - 5, Some(0)),
                    still("web-def", now + 40, None, Some("connection refused")),
                ],
                "draining web-abc: 1 session left, 0s of 45s; draining web-def: sessions unknown (connection refused), 5s of 45s",
            ),
            (vec![still("web-abc", now - 10, None, None)], "draining web-abc: sessions unknown, 45s of 45s"),
            (vec![], "no pod draining"),
        ];
        for (pods, want) in table {
            assert_eq!(progress(45, &pods, now), want);
        }
    }
}
