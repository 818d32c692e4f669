//! Session readings: the probe URL of one pod (`session_url`) and the count from a Prometheus
//! text or JSON answer (`read_sessions`).

use serde_json::Value;

use super::{Read, SessionProbe};

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drain::fixtures::*;

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
}
