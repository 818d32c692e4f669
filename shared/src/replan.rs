//! Whether a bundle needs rendering and planning again, or its last plan still holds: the key of
//! everything that can change a render or a plan's input as the agent sees it without asking the
//! API server, and the periodic full resync that catches what no key or watch saw.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::k8s::Time;
use crate::outcome::Outcome;
use crate::trigger::Cause;

/// Everything a render and its image pins depend on, as one poll saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanKey {
    /// What the bundle renders from in Git: its folder's tree (its values files, `fleet.yaml`
    /// and charts are inside it; nothing outside is read) and the repository's waves file. A
    /// commit that changes another bundle, or files of no bundle, leaves it as it was.
    pub content: String,
    /// The owner label's value: objects are labelled with it.
    pub agent_id: String,
    /// Target matching and Fleet's `global.fleet.clusterLabels` read them.
    pub labels: BTreeMap<String, String>,
    /// Helm's `--kube-version` (the API versions come with the same server).
    pub kube_version: Option<String>,
    /// A new agent may render or plan differently.
    pub agent_version: String,
    /// Per image as written: the tag chosen and its digest (`tag@digest`), in request order.
    pub images: Vec<(String, String)>,
}

/// A bundle's last plan that found nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPlan {
    pub key: PlanKey,
    /// When the bundle was last rendered and planned against the cluster.
    pub at: Time,
}

/// What the trigger of a cycle asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replan {
    /// A poll or a webhook: plan again only what changed (or is due for a resync).
    IfChanged,
    /// A drift event, a deferred bundle, a person at the command line, a new leader, a
    /// one-shot `reconcile --once`: render and plan everything asked for.
    Always,
}

impl Replan {
    /// What the causes of one cycle ask for: polls and webhooks (a hint to re-read the sources)
    /// plan only what changed; anything else plans everything it targets.
    pub fn for_causes(causes: &[Cause]) -> Replan {
        if causes.iter().all(|c| matches!(c, Cause::Poll | Cause::Webhook { .. })) {
            Replan::IfChanged
        } else {
            Replan::Always
        }
    }
}

/// Why a bundle is planned in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No plan of it that found it in sync since the agent started.
    NoPlanKept,
    Forced,
    /// The full resync interval passed since its last plan.
    ResyncDue,
    /// This part of the key changed.
    Changed(&'static str),
}

/// The decision for one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing it depends on changed: its last plan holds, nothing is rendered or asked.
    Unchanged {
        planned_at: Time,
    },
    Plan(Why),
}

/// Decides for one bundle at `now`; `resync` is the full resync interval.
pub fn decide(last: Option<&LastPlan>, key: &PlanKey, replan: Replan, now: Time, resync: Duration) -> Decision {
    let Some(last) = last else { return Decision::Plan(Why::NoPlanKept) };
    if replan == Replan::Always {
        return Decision::Plan(Why::Forced);
    }
    let resync = i64::try_from(resync.as_secs()).unwrap_or(i64::MAX);
    // A clock set back counts as due too: a plan "from the future" is not trusted.
    if now.saturating_sub(last.at) >= resync || now < last.at {
        return Decision::Plan(Why::ResyncDue);
    }
    if let Some(field) = changed(&last.key, key) {
        return Decision::Plan(Why::Changed(field));
    }
    Decision::Unchanged { planned_at: last.at }
}

/// The first part of the key that differs, by its name in messages.
fn changed(a: &PlanKey, b: &PlanKey) -> Option<&'static str> {
    let parts = [
        (a.content != b.content, "bundle content in Git"),
        (a.images != b.images, "image digests"),
        (a.agent_id != b.agent_id, "agent identity"),
        (a.labels != b.labels, "node labels"),
        (a.kube_version != b.kube_version, "Kubernetes version"),
        (a.agent_version != b.agent_version, "agent version"),
    ];
    parts.into_iter().find_map(|(differs, name)| differs.then_some(name))
}

/// Whether a plan that ended in `outcome` is kept as the bundle's last plan: only one that found
/// the live objects in sync with nothing to do. Anything else (a rollout, a block, a retry) is
/// looked at in full at the next poll.
pub fn keeps(outcome: Outcome) -> bool {
    outcome == Outcome::InSync
}

impl Why {
    /// For the cycle's log line.
    pub fn describe(self) -> String {
        match self {
            Why::NoPlanKept => "no plan kept".into(),
            Why::Forced => "asked for".into(),
            Why::ResyncDue => "full resync due".into(),
            Why::Changed(field) => format!("{field} changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PlanKey {
        PlanKey {
            content: "tree1 waves1".into(),
            agent_id: "store-1".into(),
            labels: BTreeMap::from([("zone".into(), "eu".into())]),
            kube_version: Some("v1.33.1".into()),
            agent_version: "0.1.0".into(),
            images: vec![("r/web:1.0".into(), "1.0@sha256:aa".into())],
        }
    }

    #[test]
    fn a_poll_with_nothing_changed_keeps_the_plan_and_anything_else_plans_again() {
        const TEN_MIN: Duration = Duration::from_secs(600);
        let last = LastPlan { key: key(), at: 1000 };
        let with = |f: fn(&mut PlanKey)| {
            let mut k = key();
            f(&mut k);
            k
        };
        let unchanged = Decision::Unchanged { planned_at: 1000 };
        // (case, last plan, key now, trigger, now, expected)
        type Case<'a> = (&'a str, Option<&'a LastPlan>, PlanKey, Replan, Time, Decision);
        let cases: Vec<Case> = vec![
            ("nothing changed", Some(&last), key(), Replan::IfChanged, 1020, unchanged),
            ("just before the resync", Some(&last), key(), Replan::IfChanged, 1599, unchanged),
            ("never planned", None, key(), Replan::IfChanged, 1020, Decision::Plan(Why::NoPlanKept)),
            ("drift or the CLI", Some(&last), key(), Replan::Always, 1020, Decision::Plan(Why::Forced)),
            ("resync due", Some(&last), key(), Replan::IfChanged, 1600, Decision::Plan(Why::ResyncDue)),
            ("clock set back", Some(&last), key(), Replan::IfChanged, 900, Decision::Plan(Why::ResyncDue)),
            (
                "a commit that changed the bundle's folder",
                Some(&last),
                with(|k| k.content = "tree2 waves1".into()),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("bundle content in Git")),
            ),
            (
                "a commit that changed the repository's waves",
                Some(&last),
                with(|k| k.content = "tree1 waves2".into()),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("bundle content in Git")),
            ),
            (
                "a tag moved to a new digest",
                Some(&last),
                with(|k| k.images[0].1 = "1.0@sha256:bb".into()),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("image digests")),
            ),
            (
                "a policy chose another tag",
                Some(&last),
                with(|k| k.images[0].1 = "1.1@sha256:aa".into()),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("image digests")),
            ),
            (
                "a node label changed",
                Some(&last),
                with(|k| {
                    k.labels.insert("zone".into(), "us".into());
                }),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("node labels")),
            ),
            (
                "another identity",
                Some(&last),
                with(|k| k.agent_id = "store-2".into()),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("agent identity")),
            ),
            (
                "the cluster was upgraded",
                Some(&last),
                with(|k| k.kube_version = Some("v1.34.0".into())),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("Kubernetes version")),
            ),
            (
                "the agent was upgraded",
                Some(&last),
                with(|k| k.agent_version = "0.2.0".into()),
                Replan::IfChanged,
                1020,
                Decision::Plan(Why::Changed("agent version")),
            ),
        ];
        for (case, last, now_key, replan, now, want) in cases {
            assert_eq!(decide(last, &now_key, replan, now, TEN_MIN), want, "{case}");
        }
    }

    #[test]
    fn only_a_plan_that_found_nothing_to_do_is_kept() {
        assert!(keeps(Outcome::InSync));
        for o in [Outcome::Verified, Outcome::RolledOut, Outcome::Blocked, Outcome::Retrying, Outcome::WouldApply] {
            assert!(!keeps(o), "{o:?}");
        }
    }

    #[test]
    fn polls_and_webhooks_plan_what_changed_and_drift_the_cli_and_deferrals_plan_everything() {
        let hook = Cause::Webhook { sender: "gitea".into(), trace: None };
        let drift = Cause::Drift { object: "Deployment/ns/web".into() };
        let cli = Cause::Cli { what: "became leader".into() };
        let cases: Vec<(&str, Vec<Cause>, Replan)> = vec![
            ("poll", vec![Cause::Poll], Replan::IfChanged),
            ("webhook", vec![hook.clone()], Replan::IfChanged),
            ("poll and webhook", vec![Cause::Poll, hook.clone()], Replan::IfChanged),
            ("drift", vec![drift.clone()], Replan::Always),
            ("poll with drift", vec![Cause::Poll, drift], Replan::Always),
            ("command line", vec![cli], Replan::Always),
            ("deferred", vec![hook, Cause::Deferred], Replan::Always),
        ];
        for (case, causes, want) in cases {
            assert_eq!(Replan::for_causes(&causes), want, "{case}");
        }
    }

    #[test]
    fn reasons_read_as_words() {
        assert_eq!(Why::Changed("bundle content in Git").describe(), "bundle content in Git changed");
        assert_eq!(Why::ResyncDue.describe(), "full resync due");
    }
}
