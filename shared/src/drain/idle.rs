//! The `waitForIdle` gate: whether a rollout starts now or waits for the old pods' sessions
//! (`idle`; for a bundle `waiting_for_idle`, `idle_for`).

use super::{DEFAULT_INTERVAL, Plan, human, plural, word};
use crate::k8s::Time;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::{Mode, Read, SessionProbe};

    /// Per old pod: its name and its reading.
    type Readings = Vec<(String, Result<u64, String>)>;

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
}
