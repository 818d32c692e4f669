//! HTTP health probes during the verification window: which URLs to call (a template expanded per
//! pod of the workload's current revision), and what a run of answers means. The calls themselves
//! are the agent's (`agent::watch`); this module only decides.
//!
//! A probe is green when every target's last answer was 2xx or 3xx (as the kubelet's `httpGet`
//! judges). It turns red, failing the rollout, after `failureThreshold` failures in a row of any
//! one target. The verification window only ends on green, so a rollout never counts as verified
//! on a failing answer that has not yet reached the threshold.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::{current_pods, is_workload};
use crate::problem::Problem;
use crate::written::WrittenDuration;

/// Variables a URL template may use, each written `{name}`.
pub const VARIABLES: &[(&str, &str)] = &[
    ("podIP", "the pod's IP address"),
    ("pod", "the pod's name"),
    ("port", "the first container's first containerPort"),
    ("hostIP", "the IP address of the pod's node"),
    ("namespace", "the workload's namespace"),
    ("name", "the workload's name"),
];

/// Variables that make a template per pod (otherwise it is called once per workload).
const POD_VARIABLES: &[&str] = &["podIP", "pod", "port", "hostIP"];

/// One health probe of a bundle, as written in `fleet.yaml` (`gitopsAgent.healthProbes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSpec {
    /// The workload's name (or `Kind/name`); absent: every Deployment, StatefulSet and DaemonSet
    /// of the bundle.
    #[serde(default)]
    pub workload: Option<String>,
    /// A URL template, or a path (`/health`), which means `http://{podIP}:{port}/health`.
    pub url: String,
    /// Between two calls of one target (default 5s).
    #[serde(default)]
    pub interval: Option<WrittenDuration>,
    /// Of one call (default 2s).
    #[serde(default)]
    pub timeout: Option<WrittenDuration>,
    /// Failures in a row of one target that fail the rollout (default 3).
    #[serde(default)]
    pub failure_threshold: Option<u32>,
}

/// A probe ready to run: durations in seconds, template checked. Persisted with the rollout (in
/// `rollout::Limits`), so a restarted agent probes as the interrupted one did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub workload: Option<String>,
    pub url: String,
    pub interval: i64,
    pub timeout: i64,
    pub failure_threshold: u32,
}

impl Probe {
    /// Checks a spec; the problem's path is the field relative to the probe (`interval`), for the
    /// caller to put under the probe's path ([`Problem::under`]).
    pub fn compile(spec: &ProbeSpec) -> Result<Probe, Problem> {
        let url = check_template(&spec.url).map_err(|e| Problem::new("url", e))?;
        let secs = |field: &str, v: &Option<WrittenDuration>, default: i64| -> Result<i64, Problem> {
            match v {
                None => Ok(default),
                Some(s) => match s.parsed() {
                    Ok(d) if d.as_secs() >= 1 => Ok(d.as_secs() as i64),
                    Ok(_) => Err(Problem::new(field, format!("{:?} is under one second", s.text()))),
                    Err(e) => Err(Problem::new(field, format!("{:?} is not a duration: {e}", s.text()))),
                },
            }
        };
        let failure_threshold = spec.failure_threshold.unwrap_or(3);
        if failure_threshold == 0 {
            return Err(Problem::new("failureThreshold", "must be at least 1"));
        }
        Ok(Probe {
            workload: spec.workload.clone(),
            url,
            interval: secs("interval", &spec.interval, 5)?,
            timeout: secs("timeout", &spec.timeout, 2)?,
            failure_threshold,
        })
    }

    /// Whether this probe applies to a workload (`Kind/ns/name` id and its object).
    fn applies_to(&self, workload: &Value) -> bool {
        let name = workload["metadata"]["name"].as_str().unwrap_or_default();
        let kind = workload["kind"].as_str().unwrap_or_default();
        match &self.workload {
            None => true,
            Some(w) => match w.split_once('/') {
                Some((k, n)) => k == kind && n == name,
                None => w == name,
            },
        }
    }

    fn per_pod(&self) -> bool {
        is_per_pod(&self.url)
    }
}

/// Checks a URL template as written in `fleet.yaml` and returns it in full: a path (`/health`)
/// means `http://{podIP}:{port}/health`; only known variables; http or https; no credentials
/// (they would end up in logs and status). The error is about the `url` field.
pub(crate) fn check_template(written: &str) -> Result<String, String> {
    let url = if written.starts_with('/') { format!("http://{{podIP}}:{{port}}{written}") } else { written.to_owned() };
    for var in variables(&url)? {
        if !VARIABLES.iter().any(|(v, _)| *v == var) {
            let known: Vec<String> = VARIABLES.iter().map(|(v, _)| format!("{{{v}}}")).collect();
            return Err(format!("unknown variable {{{var}}} (known: {})", known.join(", ")));
        }
    }
    let sample = expand(&url, &|var| Some(if var == "port" { "80" } else { "x" }.to_owned()));
    match url::Url::parse(&sample) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => return Err(format!("scheme {:?} is not http or https", u.scheme())),
        Err(e) => return Err(format!("{:?} is not a URL: {e}", crate::redact::url(written))),
    }
    if crate::redact::has_userinfo(&sample) {
        return Err("must not carry credentials".into());
    }
    Ok(url)
}

/// Whether a checked template names a per-pod variable (`{podIP}`, `{pod}`, `{port}`, `{hostIP}`).
fn is_per_pod(template: &str) -> bool {
    variables(template).is_ok_and(|vs| vs.iter().any(|v| POD_VARIABLES.contains(&v.as_str())))
}

/// A checked template expanded for one pod of `workload`; `None` when a variable has no value
/// (no IP yet, no containerPort).
pub(crate) fn pod_url(template: &str, workload: &Value, pod: &Value) -> Option<String> {
    let value = |var: &str| match var {
        "podIP" => pod["status"]["podIP"].as_str().map(str::to_owned),
        "hostIP" => pod["status"]["hostIP"].as_str().map(str::to_owned),
        "pod" => pod["metadata"]["name"].as_str().map(str::to_owned),
        "port" => pod["spec"]["containers"][0]["ports"][0]["containerPort"].as_i64().map(|p| p.to_string()),
        "namespace" => workload["metadata"]["namespace"].as_str().map(str::to_owned),
        "name" => workload["metadata"]["name"].as_str().map(str::to_owned),
        _ => None,
    };
    let vars = variables(template).ok()?;
    vars.iter().all(|v| value(v).is_some()).then(|| expand(template, &value))
}

/// The `{name}`s of a template, in order.
fn variables(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        out.push(after[..close].to_owned());
        rest = &after[close + 1..];
    }
    Ok(out)
}

/// A template with each `{name}` replaced; `None` from `value` leaves the template unexpandable.
fn expand(template: &str, value: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        out.push_str(&value(&after[..close]).unwrap_or_default());
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Probes whose `workload` names nothing in `objects`: a typo that would silently probe nothing.
pub fn unmatched(probes: &[Probe], objects: &[Value]) -> Vec<String> {
    let workloads: Vec<&Value> = objects.iter().filter(|o| is_workload(o)).collect();
    probes
        .iter()
        .filter(|p| p.workload.is_some() && !workloads.iter().any(|w| p.applies_to(w)))
        .map(|p| {
            format!(
                "health probe for workload {:?}: no such workload in the bundle",
                p.workload.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// One URL to call: for a pod of a workload's current revision, or for the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Which probe (index) it comes from.
    pub probe: usize,
    /// `Kind/ns/name` of the workload, then `/pod` for a per-pod template.
    pub key: String,
    pub url: String,
}

/// The targets now: each probe for each workload it applies to, per ready pod of the current
/// revision when the template names a pod variable. Pods not ready (or without the value a
/// variable needs) are not called: Kubernetes health already judges them.
pub fn targets(
    probes: &[Probe],
    workloads: &[(String, Option<Value>)],
    replica_sets: &[Value],
    pods: &[Value],
) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        for (id, live) in workloads {
            let Some(w) = live.as_ref().filter(|w| probe.applies_to(w)) else { continue };
            let of_workload = |var: &str| match var {
                "namespace" => w["metadata"]["namespace"].as_str().map(str::to_owned),
                "name" => w["metadata"]["name"].as_str().map(str::to_owned),
                _ => None,
            };
            if !probe.per_pod() {
                out.push(Target { probe: i, key: id.clone(), url: expand(&probe.url, &of_workload) });
                continue;
            }
            for pod in current_pods(w, replica_sets, pods).into_iter().filter(|p| ready(p)) {
                if let Some(url) = pod_url(&probe.url, w, pod) {
                    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                    out.push(Target { probe: i, key: format!("{id}/{name}"), url });
                }
            }
        }
    }
    out
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Whether a probe's HTTP answer is a good one: 2xx or 3xx, as the kubelet's `httpGet` probe
/// judges (redirects are not followed, their status counts).
pub fn healthy_status(status: u16) -> bool {
    (200..400).contains(&status)
}

/// What the probes say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every target's last answer was good (or there is nothing to probe).
    Green,
    /// Not decided: a target not called yet, or failing below its threshold.
    Pending(String),
    /// A target failed `failureThreshold` times in a row.
    Red(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mark {
    failures_in_a_row: u32,
    last_error: Option<String>,
    answered: bool,
}

/// The answers so far, per target key. Kept while the workloads stay healthy; the watch starts a
/// new tally when they stop being so (new pods, new targets).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    marks: BTreeMap<String, Mark>,
}

impl Tally {
    /// Records one call's answer: `Err` holds why it failed (status, timeout, connection).
    pub fn record(&mut self, key: &str, answer: Result<(), String>) {
        let m = self.marks.entry(key.to_owned()).or_default();
        m.answered = true;
        match answer {
            Ok(()) => {
                m.failures_in_a_row = 0;
                m.last_error = None;
            }
            Err(e) => {
                m.failures_in_a_row += 1;
                m.last_error = Some(e);
            }
        }
    }

    /// Forgets targets that are gone (a pod replaced).
    pub fn retain(&mut self, targets: &[Target]) {
        let keys: BTreeSet<&str> = targets.iter().map(|t| t.key.as_str()).collect();
        self.marks.retain(|k, _| keys.contains(k.as_str()));
    }

    pub fn health(&self, probes: &[Probe], targets: &[Target]) -> Health {
        let mut pending = Vec::new();
        for t in targets {
            let threshold = probes.get(t.probe).map_or(1, |p| p.failure_threshold);
            let url = crate::redact::url(&t.url);
            match self.marks.get(&t.key) {
                None => pending.push(format!("{url}: not called yet")),
                Some(m) if !m.answered => pending.push(format!("{url}: not called yet")),
                Some(Mark { failures_in_a_row: n, last_error: Some(e), .. }) if *n >= threshold => {
                    return Health::Red(format!("health probe {url} failed {n} times in a row: {e}"));
                }
                Some(Mark { failures_in_a_row: n, last_error: Some(e), .. }) => {
                    pending.push(format!("{url}: failed {n} of {threshold} times in a row: {e}"));
                }
                Some(_) => {}
            }
        }
        if pending.is_empty() { Health::Green } else { Health::Pending(pending.join("; ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_is_healthy_from_200_through_399_as_the_kubelet_judges() {
        let rows = [
            (100, false),
            (199, false),
            (200, true),
            (204, true),
            (302, true),
            (399, true),
            (400, false),
            (404, false),
            (500, false),
            (503, false),
        ];
        for (status, healthy) in rows {
            assert_eq!(healthy_status(status), healthy, "HTTP {status}");
        }
    }

    fn spec(url: &str) -> ProbeSpec {
        ProbeSpec { workload: None, url: url.into(), interval: None, timeout: None, failure_threshold: None }
    }

    #[test]
    fn templates_are_checked_and_paths_mean_the_pod() {
        let ok = Probe::compile(&spec("/health")).unwrap();
        assert_eq!(ok.url, "http://{podIP}:{port}/health");
        assert_eq!((ok.interval, ok.timeout, ok.failure_threshold), (5, 2, 3));
        let cases: &[(&str, &str)] = &[
            ("http://{podIp}:8080/health", "unknown variable {podIp}"),
            ("http://{podIP:8080/health", "unclosed"),
            ("ftp://{podIP}/health", "scheme \"ftp\""),
            ("http://u:p@{podIP}/health", "must not carry credentials"),
            ("health", "is not a URL"),
        ];
        for (url, want) in cases {
            let Problem { path: field, message, .. } = Probe::compile(&spec(url)).unwrap_err();
            assert_eq!(field, "url", "{url}");
            assert!(message.contains(want), "{url}: {message}");
            assert!(!message.contains(":p@"), "{message}");
        }
        let bad = ProbeSpec { interval: Some("500ms".into()), ..spec("/h") };
        assert_eq!(Probe::compile(&bad).unwrap_err().path, "interval");
        let bad = ProbeSpec { failure_threshold: Some(0), ..spec("/h") };
        assert_eq!(Probe::compile(&bad).unwrap_err().path, "failureThreshold");
    }

    fn deployment(name: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"),
            "annotations": {"deployment.kubernetes.io/revision": "2"}},
            "spec": {"selector": {"matchLabels": {"app": name}}}})
    }

    fn rs(name: &str) -> Value {
        json!({"metadata": {"name": format!("{name}-new"), "namespace": "ns", "labels": {"pod-template-hash": "new"},
            "annotations": {"deployment.kubernetes.io/revision": "2"}, "ownerReferences": [{"uid": format!("u-{name}")}]}})
    }

    fn pod(app: &str, name: &str, hash: &str, ready: bool, ip: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": app, "pod-template-hash": hash}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(ip) = ip {
            p["status"]["podIP"] = ip.into();
        }
        p
    }

    #[test]
    fn targets_are_ready_current_pods_or_the_workload() {
        let per_pod = Probe::compile(&ProbeSpec { workload: Some("web".into()), ..spec("/health") }).unwrap();
        let per_workload = Probe::compile(&spec("http://{name}.{namespace}.svc:9000/ready")).unwrap();
        let workloads = vec![
            ("Deployment/ns/web".to_owned(), Some(deployment("web"))),
            ("Deployment/ns/db".to_owned(), Some(deployment("db"))),
            ("Deployment/ns/gone".to_owned(), None),
        ];
        let sets = [rs("web"), rs("db")];
        let pods = [
            pod("web", "web-a", "new", true, Some("10.0.0.1")),
            pod("web", "web-b", "new", false, Some("10.0.0.2")), // not ready
            pod("web", "web-c", "old", true, Some("10.0.0.3")),  // the previous revision
            pod("web", "web-d", "new", true, None),              // no IP yet
        ];
        let got: Vec<(usize, String, String)> = targets(&[per_pod, per_workload], &workloads, &sets, &pods)
            .into_iter()
            .map(|t| (t.probe, t.key, t.url))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "Deployment/ns/web/web-a".into(), "http://10.0.0.1:8080/health".into()),
                (1, "Deployment/ns/web".into(), "http://web.ns.svc:9000/ready".into()),
                (1, "Deployment/ns/db".into(), "http://db.ns.svc:9000/ready".into()),
            ]
        );
    }

    #[test]
    fn probes_naming_no_workload_are_reported() {
        let named = |w: &str| Probe::compile(&ProbeSpec { workload: Some(w.into()), ..spec("/h") }).unwrap();
        let objects = [deployment("web"), json!({"kind": "ConfigMap", "metadata": {"name": "cfg"}})];
        let probes = [
            named("web"),
            named("Deployment/web"),
            named("StatefulSet/web"),
            named("cfg"),
            Probe::compile(&spec("/h")).unwrap(),
        ];
        assert_eq!(
            unmatched(&probes, &objects),
            vec![
                "health probe for workload \"StatefulSet/web\": no such workload in the bundle",
                "health probe for workload \"cfg\": no such workload in the bundle",
            ]
        );
    }

    #[test]
    fn a_tally_turns_red_only_at_the_threshold_and_green_only_when_all_answered_well() {
        let p = Probe { failure_threshold: 2, ..Probe::compile(&spec("http://{pod}/h")).unwrap() };
        let t = |key: &str| Target { probe: 0, key: key.into(), url: format!("http://{key}/h") };
        let both = [t("a"), t("b")];
        let mut tally = Tally::default();
        assert_eq!(tally.health(std::slice::from_ref(&p), &[]), Health::Green, "nothing to probe");
        assert!(
            matches!(tally.health(std::slice::from_ref(&p), &both), Health::Pending(m) if m.contains("http://a/h: not called yet"))
        );
        tally.record("a", Ok(()));
        tally.record("b", Err("HTTP 503".into()));
        assert_eq!(
            tally.health(std::slice::from_ref(&p), &both),
            Health::Pending("http://b/h: failed 1 of 2 times in a row: HTTP 503".into())
        );
        tally.record("b", Ok(()));
        assert_eq!(tally.health(std::slice::from_ref(&p), &both), Health::Green, "a success resets the run");
        tally.record("b", Err("HTTP 503".into()));
        tally.record("b", Err("timed out after 2s".into()));
        assert_eq!(
            tally.health(std::slice::from_ref(&p), &both),
            Health::Red("health probe http://b/h failed 2 times in a row: timed out after 2s".into())
        );
        // Pod b was replaced: its failures go with it, the new pod starts unanswered.
        let replaced = [t("a"), t("c")];
        tally.retain(&replaced);
        assert!(matches!(tally.health(&[p], &replaced), Health::Pending(m) if m == "http://c/h: not called yet"));
    }
}
