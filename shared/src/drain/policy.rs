//! `gitopsAgent.drain[]` as written in `fleet.yaml`, checked with field paths (`compile`, `check`)
//! and matched to the workloads of a bundle (`drain_for`, `unmatched`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Drain, PreStop, Read, Replace, SessionProbe, container_index, human};
use crate::duration::HumanDuration;
use crate::k8s::{WORKLOAD_KINDS, name_of, object_id, workload_kind};
use crate::problem::Problem;
use crate::written::WrittenDuration;

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
    pub window: Option<WrittenDuration>,
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

/// `preStop`: exactly one of `httpGet` and `sleep`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreStopSpec {
    #[serde(default)]
    pub http_get: Option<HttpGetSpec>,
    /// A duration (`5s`): the kubelet's own sleep action, no shell needed in the image.
    #[serde(default)]
    pub sleep: Option<WrittenDuration>,
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
    pub interval: Option<WrittenDuration>,
    /// Of one reading (default 2s).
    #[serde(default)]
    pub timeout: Option<WrittenDuration>,
}

/// `waitForIdle`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitForIdleSpec {
    /// The longest a revision waits for idle pods; then it rolls out and sessions get the window.
    pub max_defer: WrittenDuration,
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

/// A field of a bundle's drain policy that does not hold; its path is from the `fleet.yaml` root
/// (`gitopsAgent.drain[0].sessions.url`), its line found by the caller.
fn field(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::new(path, message)
}

/// Compiles a bundle's drain policy. `bundle_window` is `gitopsAgent.drainWindow` (when set and
/// `specs` is empty, every workload of the bundle gets a drain with that window, i.e. one
/// implicit entry with workload None; `0s` there means no drain); `node_window` the node's
/// default in seconds. Errors name the field: `fleet.yaml: gitopsAgent.drain[0].sessions.url: ...`.
pub fn compile(
    bundle_window: Option<HumanDuration>,
    specs: &[DrainSpec],
    node_window: i64,
) -> Result<Vec<Drain>, String> {
    compile_with(bundle_window, specs, Some(node_window)).map_err(|e| format!("fleet.yaml: {e}"))
}

/// Checks a bundle's drain policy while `fleet.yaml` is parsed, before the node's window is
/// known: every rule of [`compile`] except those about a window inherited from the node.
pub fn check(bundle_window: Option<HumanDuration>, specs: &[DrainSpec]) -> Result<(), Problem> {
    compile_with(bundle_window, specs, None).map(|_| ())
}

/// Seconds of a duration, rounded up (a window is a minimum); `min_one` rejects under 1s.
fn seconds(path: &str, raw: &WrittenDuration, min_one: bool) -> Result<i64, Problem> {
    let d = raw.parsed().map_err(|e| field(path, format!("{:?} is not a duration: {e}", raw.text())))?;
    whole_seconds(path, d, raw.text(), min_one)
}

/// [`seconds`] of a parsed duration; `raw` is how it was written, for the message.
fn whole_seconds(path: &str, d: Duration, raw: &str, min_one: bool) -> Result<i64, Problem> {
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
    bundle_window: Option<HumanDuration>,
    specs: &[DrainSpec],
    node_window: Option<i64>,
) -> Result<Vec<Drain>, Problem> {
    let bundle = match bundle_window {
        Some(d) => Some(whole_seconds("gitopsAgent.drainWindow", d.get(), &d.to_string(), false)?),
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
            if !WORKLOAD_KINDS.contains(&kind) {
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

fn compile_pre_stop(p: &PreStopSpec, at: &str, window: Option<i64>) -> Result<PreStop, Problem> {
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

fn compile_sessions(s: &SessionsSpec, at: &str) -> Result<SessionProbe, Problem> {
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
    let secs = |f: &str, v: &Option<WrittenDuration>, default: i64| match v {
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
    let name = name_of(object)?;
    drains
        .iter()
        .find(|d| d.workload.as_deref().is_some_and(|w| selects(w, kind, name)))
        .or_else(|| drains.iter().find(|d| d.workload.is_none()))
}

/// Whether shaping `objects` for `drains` estimates the room for a surge pod (a drain of one
/// of them replaces `auto`). Two such bundles rolling out at once could each count the room the
/// other's surge pod is about to take, so the agent runs them one after the other.
pub fn estimates_room<'a>(drains: &[Drain], objects: impl IntoIterator<Item = &'a Value>) -> bool {
    objects.into_iter().any(|o| drain_for(drains, o).is_some_and(|d| d.replace == Replace::Auto))
}

/// Drains whose `workload` names nothing in `objects`, and preStop containers a matched workload
/// does not have: typos that would silently drain nothing.
pub fn unmatched(drains: &[Drain], objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for d in drains {
        if let Some(w) = &d.workload
            && !objects.iter().any(|o| workload_kind(o).is_some_and(|k| selects(w, k, name_of(o).unwrap_or_default())))
        {
            out.push(format!("drain for workload {w:?}: no such workload in the bundle"));
        }
        let container = match &d.pre_stop {
            Some(PreStop::HttpGet { container: Some(c), .. } | PreStop::Sleep { container: Some(c), .. }) => c,
            _ => continue,
        };
        for o in objects.iter().filter(|o| drain_for(drains, o).is_some_and(|m| std::ptr::eq(m, d))) {
            if container_index(o, Some(container)).is_none() {
                out.push(format!("drain preStop of {}: no container named {container:?}", object_id(o)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drain::fixtures::*;

    #[test]
    fn compile_errors_name_the_field() {
        // (bundle drainWindow, drain entries, error)
        let table: &[(Option<HumanDuration>, &str, &str)] = &[
            (
                None,
                "- {workload: web}\n- {workload: db, window: soon}",
                "fleet.yaml: gitopsAgent.drain[1].window: \"soon\" is not a duration: ",
            ),
            (None, "- {window: 500ms}", "fleet.yaml: gitopsAgent.drain[0].window: 500ms is under one second"),
            // A bad bundle drainWindow is found when fleet.yaml is read (`fleet` tests).
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
    fn only_a_drain_that_replaces_auto_estimates_the_room_of_a_surge_pod() {
        let deployment =
            |name: &str| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}});
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}});
        let implicit = compile(Some(HumanDuration::from_secs(45)), &[], 30).unwrap();
        let named = compile(None, &specs("- workload: web\n  replace: surge\n- workload: api\n"), 30).unwrap();
        // (case, drains, objects, estimates)
        let cases: Vec<(&str, &[Drain], Vec<Value>, bool)> = vec![
            ("no drain", &[], vec![deployment("web")], false),
            ("drainWindow alone: every workload, auto", &implicit, vec![deployment("web")], true),
            ("no workload to drain", &implicit, vec![config.clone()], false),
            ("replace surge: no estimate", &named, vec![deployment("web"), config], false),
            ("a workload whose drain is auto", &named, vec![deployment("web"), deployment("api")], true),
        ];
        for (case, drains, objects, want) in cases {
            assert_eq!(estimates_room(drains, &objects), want, "{case}");
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
        assert_eq!(
            compile(Some(HumanDuration::from_secs(45)), &[], 30).unwrap(),
            vec![implicit(45)],
            "drainWindow alone drains everything"
        );
        assert_eq!(compile(None, &[], 30).unwrap(), vec![], "no policy, no drain");
        assert_eq!(
            compile(Some(HumanDuration::from_secs(0)), &[], 30).unwrap(),
            vec![],
            "drainWindow 0s switches it off"
        );

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
        let got = compile(Some(HumanDuration::from_secs(60)), &specs(yaml), 30).unwrap();
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
            check(Some(HumanDuration::from_secs(20)), &sleepy).unwrap_err().to_string(),
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
}
