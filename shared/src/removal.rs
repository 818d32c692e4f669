//! Bundles that left Git: which are removed and which held for a person, and what a removal
//! deletes, in which order.
//!
//! Fleet and Flux delete the objects of a bundle that leaves Git; so does the agent, from what
//! its records say was applied (`Record::inventory`), unless node config keeps them
//! (`prune.removedBundles: keep`). A disappearance that looks like an accident deletes nothing
//! and is held until `agent prune --confirm BUNDLE`: the bundles' folder gone whole, or more than
//! `prune.maxRemovedPercent` of the bundles gone in one commit (a `git rm -r`). A source that
//! could not be read decides nothing at all. Pure: the caller lists the bundles and reads the
//! records.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::{Prune, RemovedBundles};
use crate::desired::in_apply_order;
use crate::k8s::object_id;
use crate::render::Manifest;
use crate::state::{Phase, Record, never_pruned};

/// What the source said about the bundles at one commit.
#[derive(Debug, Clone, Copy)]
pub enum Listing<'a> {
    /// The bundles found under the configured folder (`git.path`).
    Found(&'a BTreeSet<String>),
    /// The configured folder is not in the commit at all.
    FolderMissing,
    /// The source could not be read: what is missing is unknown.
    Unreadable,
}

/// What is done about one bundle that left Git.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Delete `objects` (reverse apply order; each re-checked on the live object for the
    /// agent's owner and bundle labels); `kept` (ids) are left on purpose ([`never_pruned`]).
    Delete { bundle: String, objects: Vec<Value>, kept: Vec<String> },
    /// `prune.removedBundles: keep`: `objects` (ids) keep running, no longer followed.
    Keep { bundle: String, objects: Vec<String> },
    /// Nothing deleted: `reason` says why it looks like an accident; `objects` would be deleted
    /// on confirmation, `kept` would stay.
    Hold { bundle: String, reason: String, objects: Vec<Value>, kept: Vec<String> },
}

impl Decision {
    pub fn bundle(&self) -> &str {
        match self {
            Decision::Delete { bundle, .. } | Decision::Keep { bundle, .. } | Decision::Hold { bundle, .. } => bundle,
        }
    }
}

/// Decides for every bundle the records know and Git no longer has. `records` are all of this
/// agent's; `still_desired` are the ids of the objects the bundles still in Git render (an
/// object that moved to another bundle is not deleted); `folder` is `git.path`, for the reason.
/// Records already removed are history and left alone; a record busy with a rollout is left
/// until it is idle (unfinished work is finished first).
pub fn decide(
    records: &[Record],
    listing: Listing<'_>,
    still_desired: &BTreeSet<String>,
    policy: &Prune,
    folder: &str,
) -> Vec<Decision> {
    let live: Vec<&Record> = records.iter().filter(|r| !r.is_removed()).collect();
    let gone: Vec<&Record> = match listing {
        Listing::Unreadable => return Vec::new(),
        Listing::FolderMissing => live.clone(),
        Listing::Found(found) => live.iter().copied().filter(|r| !found.contains(&r.bundle)).collect(),
    };
    let held = match listing {
        _ if policy.removed_bundles == RemovedBundles::Keep => None,
        Listing::FolderMissing => {
            Some(format!("the bundles' folder {folder:?} is gone from Git as a whole, which looks like a mistake"))
        }
        _ if gone.len() * 100 > policy.max_removed_percent as usize * live.len() => Some(format!(
            "{} of {} bundles left Git at once, more than prune.maxRemovedPercent ({}%)",
            gone.len(),
            live.len(),
            policy.max_removed_percent
        )),
        _ => None,
    };
    gone.into_iter()
        .filter(|r| r.phase == Phase::Idle)
        .map(|r| {
            let bundle = r.bundle.clone();
            let (objects, kept) = deletions(r, still_desired);
            match (&held, policy.removed_bundles) {
                (_, RemovedBundles::Keep) => {
                    let mut ids: Vec<String> = objects.iter().map(object_id).collect();
                    ids.extend(kept);
                    Decision::Keep { bundle, objects: ids }
                }
                (Some(reason), _) => Decision::Hold { bundle, reason: reason.clone(), objects, kept },
                (None, _) => Decision::Delete { bundle, objects, kept },
            }
        })
        .collect()
}

/// What removing `record`'s bundle deletes: its inventory minus what other bundles still
/// render, in reverse apply order (workloads before their ConfigMaps and Services, as `helm
/// uninstall` does); and the ids it keeps ([`never_pruned`]: CRDs, Namespaces).
pub fn deletions(record: &Record, still_desired: &BTreeSet<String>) -> (Vec<Value>, Vec<String>) {
    let (kept, mut gone): (Vec<Manifest>, Vec<Manifest>) = record
        .inventory()
        .into_iter()
        .filter(|o| !still_desired.contains(&object_id(o)))
        .map(|object| Manifest { source: String::new(), object })
        .partition(|m| never_pruned(&m.object));
    in_apply_order(&mut gone);
    (gone.into_iter().rev().map(|m| m.object).collect(), kept.iter().map(Manifest::id).collect())
}

/// What a held removal deletes on confirmation: the objects the hold named, from the record's
/// inventory, in reverse apply order, and the ids it keeps. `None` when the record holds no
/// removal to confirm.
pub fn confirmed(record: &Record) -> Option<(Vec<Value>, Vec<String>)> {
    let crate::state::RemovalState::Held { objects, .. } = &record.removal.as_ref()?.state else { return None };
    let named: BTreeSet<&String> = objects.iter().collect();
    let (all, kept) = deletions(record, &BTreeSet::new());
    Some((all.into_iter().filter(|o| named.contains(&object_id(o))).collect(), kept))
}

/// Objects Kubernetes puts in every namespace: never a reason to keep one.
const IN_EVERY_NAMESPACE: &[(&str, &str)] = &[("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")];

/// The namespaces a removed bundle's objects were in, by name: each one a candidate for
/// [`namespace_removable`] once the bundle's objects are gone.
pub fn namespaces_of(record: &Record) -> Vec<String> {
    let names: BTreeSet<String> = record
        .inventory()
        .iter()
        .filter_map(|o| match (o["apiVersion"].as_str(), o["kind"].as_str()) {
            (Some("v1"), Some("Namespace")) => o["metadata"]["name"].as_str(),
            _ => o["metadata"]["namespace"].as_str(),
        })
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    names.into_iter().collect()
}

/// Whether a namespace goes with its removed bundle: only when it is ours (the agent created it
/// for this bundle, or the bundle rendered it) and nothing is left in it (`contents`: every live
/// object in it) but what Kubernetes puts in every namespace, Events, dependents the garbage
/// collector deletes with their owner (`ownerReferences`), and this bundle's own objects on
/// their way out. `Err` says why it stays. Deleting a namespace deletes everything in it, so
/// anything else, another bundle's objects included, keeps it.
pub fn namespace_removable(namespace: &Value, contents: &[Value], owner: &str, bundle: &str) -> Result<(), String> {
    let meta = &namespace["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let created_for = meta["annotations"][crate::desired::CREATED_FOR_ANNOTATION].as_str();
    let ours = meta["labels"][crate::desired::OWNER_LABEL].as_str() == Some(owner)
        && (created_for == Some(bundle)
            || crate::desired::ownership(namespace) == Some((owner.to_owned(), bundle.to_owned())));
    if !ours {
        return Err(format!("Namespace/{name} was not made by this agent for {bundle}"));
    }
    let of_this_bundle = |o: &Value| crate::desired::ownership(o) == Some((owner.to_owned(), bundle.to_owned()));
    let others: Vec<String> = contents
        .iter()
        .filter(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            let obj_name = o["metadata"]["name"].as_str().unwrap_or_default();
            !(kind == "Event"
                || IN_EVERY_NAMESPACE.contains(&(kind, obj_name))
                || o["metadata"]["ownerReferences"].as_array().is_some_and(|r| !r.is_empty())
                || of_this_bundle(o))
        })
        .map(object_id)
        .collect();
    if others.is_empty() { Ok(()) } else { Err(format!("Namespace/{name} still holds {}", some_of(&others))) }
}

/// A short list of ids for a status line: the first few, then how many more.
pub fn some_of(ids: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut out = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        out.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RemovalState, Revision, Snapshot, rendered_hash};
    use serde_json::json;

    fn obj(api_version: &str, kind: &str, name: &str) -> Value {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "ns"}})
    }

    fn record(bundle: &str, objects: Vec<Value>) -> Record {
        let snap = Snapshot {
            revision: Revision {
                commit: "c1".into(),
                hash: rendered_hash(&objects),
                images: vec![],
                verified: Default::default(),
                release: None,
            },
            objects,
            at: 0,
        };
        Record::new(bundle).adopted(snap, "test", 0)
    }

    fn web(bundle: &str) -> Record {
        record(bundle, vec![obj("v1", "ConfigMap", &format!("{bundle}-cm")), obj("apps/v1", "Deployment", bundle)])
    }

    fn policy(mode: RemovedBundles, percent: u32) -> Prune {
        Prune { removed_bundles: mode, max_removed_percent: percent }
    }

    /// `(bundle, what)`: `delete`, `keep` or `hold`.
    fn verdicts(d: &[Decision]) -> Vec<(String, &'static str)> {
        d.iter()
            .map(|d| {
                let what = match d {
                    Decision::Delete { .. } => "delete",
                    Decision::Keep { .. } => "keep",
                    Decision::Hold { .. } => "hold",
                };
                (d.bundle().to_owned(), what)
            })
            .collect()
    }

    #[test]
    fn which_bundles_are_removed_and_which_held() {
        let four = vec![web("a"), web("b"), web("c"), web("d")];
        let set = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<String>>();
        let (three, one, none) = (set(&["a", "b", "c"]), set(&["a"]), set(&[]));
        let (half_gone, all) = (set(&["a", "b"]), set(&["a", "b", "c", "d"]));
        let del = policy(RemovedBundles::Delete, 50);
        // (case, listing, policy, expected)
        type Case<'a> = (&'a str, Listing<'a>, Prune, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case<'_>> = vec![
            ("all still in Git", Listing::Found(&all), del.clone(), vec![]),
            ("one of four gone: removed", Listing::Found(&three), del.clone(), vec![("d", "delete")]),
            (
                "half gone is not more than half",
                Listing::Found(&half_gone),
                del.clone(),
                vec![("c", "delete"), ("d", "delete")],
            ),
            (
                "three of four gone: held",
                Listing::Found(&one),
                del.clone(),
                vec![("b", "hold"), ("c", "hold"), ("d", "hold")],
            ),
            (
                "an empty folder: all held",
                Listing::Found(&none),
                del.clone(),
                vec![("a", "hold"), ("b", "hold"), ("c", "hold"), ("d", "hold")],
            ),
            (
                "the folder gone whole: held even under the share",
                Listing::FolderMissing,
                policy(RemovedBundles::Delete, 100),
                vec![("a", "hold"), ("b", "hold"), ("c", "hold"), ("d", "hold")],
            ),
            (
                "100% lets a mass removal through",
                Listing::Found(&one),
                policy(RemovedBundles::Delete, 100),
                vec![("b", "delete"), ("c", "delete"), ("d", "delete")],
            ),
            ("0% holds any removal", Listing::Found(&three), policy(RemovedBundles::Delete, 0), vec![("d", "hold")]),
            (
                "keep never holds: nothing is deleted",
                Listing::Found(&one),
                policy(RemovedBundles::Keep, 50),
                vec![("b", "keep"), ("c", "keep"), ("d", "keep")],
            ),
            ("an unreadable source decides nothing", Listing::Unreadable, del.clone(), vec![]),
        ];
        for (case, listing, p, want) in cases {
            let got = verdicts(&decide(&four, listing, &BTreeSet::new(), &p, "apps"));
            let want: Vec<(String, &str)> = want.into_iter().map(|(b, w)| (b.to_owned(), w)).collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn removed_records_are_history_and_busy_ones_wait() {
        let gone = web("a").removed("c2", RemovalState::Removed { deleted: vec![], kept: vec![] }, 10);
        let busy = web("b").start_rollout(
            web("b").lkg.unwrap(),
            crate::rollout::Limits { progress_deadline: 60, verify_window: 0, probes: vec![], drains: vec![] },
            false,
            5,
        );
        let records = vec![gone, busy, web("c"), web("d")];
        let found: BTreeSet<String> = ["c", "d"].iter().map(|s| (*s).to_owned()).collect();
        let d = decide(&records, Listing::Found(&found), &BTreeSet::new(), &policy(RemovedBundles::Delete, 50), "apps");
        // Of the three live records one is gone (b, busy): not decided while it rolls out.
        assert_eq!(verdicts(&d), vec![]);
        let held = web("e").removal_held("c3", "x", vec![], 20);
        assert!(!held.is_removed(), "a held removal is still live");
        assert!(web("e").back_in_git().removal.is_none());
    }

    #[test]
    fn a_removal_deletes_the_inventory_in_reverse_apply_order_but_keeps_crds_and_namespaces_and_moved_objects() {
        let mut old = record("a", vec![obj("v1", "ConfigMap", "old-cm")]);
        let now = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.example"}}),
            obj("v1", "ConfigMap", "cm"),
            obj("v1", "Service", "svc"),
            obj("apps/v1", "Deployment", "web"),
            obj("example.test/v1", "Widget", "w"),
            obj("v1", "ConfigMap", "moved"),
        ];
        let snap = Snapshot {
            revision: Revision {
                commit: "c2".into(),
                hash: rendered_hash(&now),
                images: vec![],
                verified: Default::default(),
                release: None,
            },
            objects: now,
            at: 1,
        };
        old = old.adopted(snap, "test", 1);
        let moved: BTreeSet<String> = ["ConfigMap/ns/moved".to_owned()].into();
        let (objects, kept) = deletions(&old, &moved);
        let ids: Vec<String> = objects.iter().map(object_id).collect();
        assert_eq!(
            ids,
            ["Widget/ns/w", "Deployment/ns/web", "Service/ns/svc", "ConfigMap/ns/old-cm", "ConfigMap/ns/cm"],
            "custom resources and workloads first; an object of an earlier revision too; the moved one not"
        );
        assert_eq!(kept, ["Namespace/ns", "CustomResourceDefinition/w.example"]);
    }

    #[test]
    fn a_confirmation_deletes_what_the_hold_named() {
        let r = web("a");
        assert_eq!(confirmed(&r), None, "nothing held");
        let held = r.removal_held("c2", "mass removal", vec!["ConfigMap/ns/a-cm".into()], 5);
        let ids: Vec<String> = confirmed(&held).unwrap().0.iter().map(object_id).collect();
        assert_eq!(ids, ["ConfigMap/ns/a-cm"], "only what the status named");
        let again = held.removal_held("c3", "mass removal", vec![], 9).removal.unwrap();
        assert_eq!((again.commit.as_str(), again.at), ("c2", 5), "a hold keeps its first commit and time");
        let removed = held.removed("c9", RemovalState::Removed { deleted: vec![], kept: vec![] }, 7);
        assert!(removed.is_removed() && removed.lkg.is_none(), "history now");
        assert_eq!(removed.history[0].revision.commit, "c1", "the last-known-good is kept as history");
        assert_eq!(removed.removal.unwrap().commit, "c2", "the commit it left Git at");
    }

    #[test]
    fn a_namespace_goes_only_when_ours_for_this_bundle_and_empty_of_anything_else() {
        let ns = |labels: Value, annotations: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns", "labels": labels, "annotations": annotations}});
        let created = ns(json!({"gitops-agent.io/owner": "me"}), json!({"gitops-agent.io/created-for": "apps/web"}));
        let rendered = ns(
            json!({"gitops-agent.io/owner": "me", "gitops-agent.io/bundle": "apps-web"}),
            json!({"gitops-agent.io/bundle": "apps/web"}),
        );
        let for_other = ns(json!({"gitops-agent.io/owner": "me"}), json!({"gitops-agent.io/created-for": "apps/db"}));
        let not_ours = ns(json!({}), json!({}));
        let item = |kind: &str, name: &str, extra: Value| {
            let mut o = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}});
            o["metadata"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            o
        };
        let builtins = vec![
            item("ServiceAccount", "default", json!({})),
            item("ConfigMap", "kube-root-ca.crt", json!({})),
            item("Event", "web.1", json!({})),
            item("Pod", "web-1", json!({"ownerReferences": [{"kind": "ReplicaSet", "name": "web-1"}]})),
            item(
                "ConfigMap",
                "leaving",
                json!({"labels": {"gitops-agent.io/owner": "me"}, "annotations": {"gitops-agent.io/bundle": "apps/web"}}),
            ),
        ];
        let mut with_foreign = builtins.clone();
        with_foreign.push(item("ConfigMap", "theirs", json!({})));
        let mut with_other_bundle = builtins.clone();
        with_other_bundle.push(item(
            "Secret",
            "db",
            json!({"labels": {"gitops-agent.io/owner": "me"}, "annotations": {"gitops-agent.io/bundle": "apps/db"}}),
        ));
        // (case, namespace, contents, removable)
        type Case<'a> = (&'a str, &'a Value, &'a [Value], Result<(), &'a str>);
        let cases: Vec<Case<'_>> = vec![
            ("created for the bundle, only Kubernetes' own left", &created, &builtins, Ok(())),
            ("rendered by the bundle", &rendered, &builtins, Ok(())),
            (
                "created for another bundle",
                &for_other,
                &[],
                Err("Namespace/ns was not made by this agent for apps/web"),
            ),
            ("not ours at all", &not_ours, &[], Err("Namespace/ns was not made by this agent for apps/web")),
            (
                "someone else's ConfigMap in it",
                &created,
                &with_foreign,
                Err("Namespace/ns still holds ConfigMap/ns/theirs"),
            ),
            (
                "another bundle's Secret in it",
                &created,
                &with_other_bundle,
                Err("Namespace/ns still holds Secret/ns/db"),
            ),
        ];
        for (case, namespace, contents, want) in cases {
            assert_eq!(
                namespace_removable(namespace, contents, "me", "apps/web"),
                want.map_err(str::to_owned),
                "{case}"
            );
        }
        let r = record(
            "apps/web",
            vec![
                obj("v1", "ConfigMap", "a"),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "made"}}),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}),
            ],
        );
        assert_eq!(namespaces_of(&r), ["made", "ns"]);
    }

    #[test]
    fn a_status_names_a_few_objects_and_counts_the_rest() {
        let ids: Vec<String> = (1..=5).map(|i| format!("ConfigMap/ns/c{i}")).collect();
        assert_eq!(some_of(&ids[..2]), "ConfigMap/ns/c1, ConfigMap/ns/c2");
        assert_eq!(some_of(&ids), "ConfigMap/ns/c1, ConfigMap/ns/c2, ConfigMap/ns/c3 and 2 more");
    }
}
