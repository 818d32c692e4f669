//! The drain during a rollout: which old pods are terminating (`terminating`), how each one's
//! drain ended (`ended`), the workload's report (`report`) and progress lines (`progress`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{plural, word};
use crate::k8s::{Pod, Time, Workload, owns, selector_of};

/// Pods of `workload` (namespace and selector match) that have a deletionTimestamp: (name, the
/// deletionTimestamp as unix seconds, which is when the grace period ends).
pub fn terminating(workload: &Value, pods: &[Value]) -> Vec<(String, Time)> {
    let workload = Workload::view(workload);
    let selector = selector_of(&workload);
    pods.iter()
        .map(Pod::view)
        .filter(|p| owns(&workload, &selector, p))
        .filter_map(|p| {
            let at = p.metadata.deletion_timestamp?.parse::<jiff::Timestamp>().ok()?;
            Some((p.metadata.name?, at.as_second()))
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
    use serde_json::json;

    use super::*;
    use crate::drain::fixtures::*;

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
