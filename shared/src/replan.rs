//! Whether a bundle needs rendering and planning again, or its last plan still holds: the key of
//! everything that can change a render or a plan's input as the agent sees it without asking the
//! API server, and the periodic full resync that catches what no key or watch saw.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::desired::{ImageRequest, Resolution};
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

/// What the agent knows of its node and itself, the parts of a [`PlanKey`] that are not the
/// bundle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    pub kube_version: Option<String>,
    pub agent_version: String,
}

/// A part of the key this poll could not read: the bundle is planned in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Its folder's tree in the git cache.
    Content,
    /// An image the registry did not resolve (missing, no tag matching, unreachable).
    Images,
}

impl PlanKey {
    /// The key of a bundle whose content in Git is `content` (`None`: not readable) and whose
    /// images resolved as `resolved` (in request order), or the part that is unknown.
    pub fn of(
        content: Option<&str>,
        resolved: &[(&ImageRequest, &Resolution)],
        context: &Context,
    ) -> Result<PlanKey, Unknown> {
        let content = content.ok_or(Unknown::Content)?;
        let images = resolved
            .iter()
            .map(|(req, res)| match res {
                Resolution::Found { tag, digest } => {
                    Some((req.written.clone(), format!("{}@{digest}", tag.as_deref().unwrap_or(""))))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(Unknown::Images)?;
        Ok(PlanKey {
            content: content.to_owned(),
            agent_id: context.agent_id.clone(),
            labels: context.labels.clone(),
            kube_version: context.kube_version.clone(),
            agent_version: context.agent_version.clone(),
            images,
        })
    }
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
    /// This part of the key could not be read this poll.
    Unknown(Unknown),
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

/// Decides for one bundle at `now`; `resync` is the full resync interval. A key with a part
/// unknown ([`PlanKey::of`]) cannot show that nothing changed: the bundle is planned in full.
pub fn decide(
    last: Option<&LastPlan>,
    key: Result<&PlanKey, Unknown>,
    replan: Replan,
    now: Time,
    resync: Duration,
) -> Decision {
    let Some(last) = last else { return Decision::Plan(Why::NoPlanKept) };
    if replan == Replan::Always {
        return Decision::Plan(Why::Forced);
    }
    let key = match key {
        Ok(k) => k,
        Err(part) => return Decision::Plan(Why::Unknown(part)),
    };
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
            Why::Unknown(Unknown::Content) => "its content in Git could not be read from the cache".into(),
            Why::Unknown(Unknown::Images) => "an image did not resolve".into(),
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
            assert_eq!(decide(last, Ok(&now_key), replan, now, TEN_MIN), want, "{case}");
        }
        // A part of the key unknown this poll: planned in full (unless never planned or forced,
        // which say so first).
        let unknown = [
            (Some(&last), Unknown::Content, Replan::IfChanged, Decision::Plan(Why::Unknown(Unknown::Content))),
            (Some(&last), Unknown::Images, Replan::IfChanged, Decision::Plan(Why::Unknown(Unknown::Images))),
            (None, Unknown::Images, Replan::IfChanged, Decision::Plan(Why::NoPlanKept)),
            (Some(&last), Unknown::Content, Replan::Always, Decision::Plan(Why::Forced)),
        ];
        for (last, part, replan, want) in unknown {
            assert_eq!(decide(last, Err(part), replan, 1020, TEN_MIN), want, "{part:?} unknown");
        }
    }

    #[test]
    fn a_key_is_known_only_when_the_content_and_every_image_were_read() {
        use crate::image::ImageRef;
        let context = Context {
            agent_id: "store-1".into(),
            labels: BTreeMap::from([("zone".into(), "eu".into())]),
            kube_version: Some("v1.33.1".into()),
            agent_version: "0.1.0".into(),
        };
        let req = |written: &str| ImageRequest {
            image: ImageRef::parse(written).unwrap(),
            written: written.into(),
            used_by: vec!["Deployment/ns/web container web".into()],
            policy: None,
        };
        let pinned = format!("r/db@sha256:{}", "a".repeat(64));
        let (web, db) = (req("r/web:1.0"), req(&pinned));
        let found =
            |tag: Option<&str>, digest: &str| Resolution::Found { tag: tag.map(str::to_owned), digest: digest.into() };
        let (a, b) = (found(Some("1.0"), "sha256:aa"), found(None, "sha256:aa"));
        let key = PlanKey::of(Some("tree1 waves1"), &[(&web, &a), (&db, &b)], &context).unwrap();
        assert_eq!(
            key.images,
            vec![("r/web:1.0".into(), "1.0@sha256:aa".into()), (pinned.clone(), "@sha256:aa".into())]
        );
        assert_eq!((key.content.as_str(), key.agent_id.as_str()), ("tree1 waves1", "store-1"));
        assert_eq!(PlanKey::of(None, &[(&web, &a)], &context), Err(Unknown::Content));
        let missing = Resolution::Missing { reference: "r/db:2".into() };
        assert_eq!(PlanKey::of(Some("t"), &[(&web, &a), (&db, &missing)], &context), Err(Unknown::Images));
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
