//! The workload shaped for its drain (strategy, grace period, preStop) as a persisted `Plan`
//! (`shape`), and its one-line description for `agent diff` and logs (`describe`).

use serde_json::{Map, Value, json};

use super::{DEFAULT_GRACE, Drain, Mode, Plan, PreStop, Read, Replace, Room, container_index, drain_for, human};
use crate::k8s::{object_id, workload_kind};

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

/// The pod template's containers, to write into.
fn containers_mut(object: &mut Value) -> Option<&mut Vec<Value>> {
    object.pointer_mut("/spec/template/spec/containers")?.as_array_mut()
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
    let workload = object_id(object);
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
        let target = index.and_then(|i| containers_mut(object)?.get_mut(i));
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drain::fixtures::*;
    use crate::drain::{Ended, Report, report};

    /// What a shape row shows, the object, its drain, the room, the strategy written, the mode,
    /// the notes.
    type ShapeRow = (&'static str, Value, Drain, Room, Value, Mode, Vec<&'static str>);
    /// What a preStop row shows, the drain, the object, the container's index, its lifecycle
    /// after shaping, the note about it.
    type PreStopRow = (&'static str, &'static str, Value, usize, Value, Option<&'static str>);

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
}
