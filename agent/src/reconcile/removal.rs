//! Bundles that left Git, as `shared::removal` decided: their recorded objects deleted (each
//! re-checked on the live object for our owner and bundle labels), kept, or held; and
//! `agent prune --confirm BUNDLE`, which deletes what a hold named.

use std::collections::BTreeSet;

use serde_json::Value;

use shared::k8s::object_id;
use shared::outcome::Outcome;
use shared::removal::{Decision, some_of};
use shared::state::{Record, RemovalState};

use super::{BundleResult, Driver};
use crate::watch::unix_now;

impl Driver<'_> {
    /// Deletes the namespace `ns` of a removed bundle when `shared::removal::namespace_removable`
    /// says so: ours for this bundle and empty of anything else. `Ok(false)`: it does not exist;
    /// `Err`: why it stays.
    async fn delete_namespace_if_empty(&self, bundle: &str, ns: &str) -> Result<bool, String> {
        let m = shared::render::Manifest {
            source: String::new(),
            object: serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        };
        let Some(live) = self.cluster.get(&m).await.map_err(|e| e.to_string())? else { return Ok(false) };
        let contents = self.cluster.namespace_contents(ns).await.map_err(|e| match e {
            // Deleting a namespace deletes everything in it, also what the agent may not see:
            // a kind it may not list keeps the namespace (the chart grants only `rbac.kinds`).
            crate::cluster::ClusterError::Object { status: Some(403), object, .. } => format!(
                "the agent may not list everything in it ({object}: forbidden), so it cannot tell that it is \
                 empty; delete it by hand if it is"
            ),
            e => format!("Namespace/{ns}: {e}"),
        })?;
        shared::removal::namespace_removable(&live, &contents, self.agent_id, bundle)?;
        self.cluster.delete(&m).await.map_err(|e| e.to_string())?;
        self.say(bundle, &format!("deleted Namespace/{ns}: made for this bundle, and nothing else is in it"));
        Ok(true)
    }

    /// Carries out one decision about a bundle that left Git at `commit`. A dry run says what
    /// would happen and writes nothing. A deletion cut short (the API server stopped answering)
    /// leaves the record as it was: the next cycle decides the same and deletes the rest.
    pub async fn removal(&self, record: &Record, decision: Decision, commit: &str) -> BundleResult {
        let now = unix_now();
        let bundle = record.bundle.as_str();
        let (next, result) = match decision {
            Decision::Hold { reason, objects, .. } => {
                let ids: Vec<String> = objects.iter().map(object_id).collect();
                let message = format!(
                    "removed from Git: would delete {} object(s){}; held: {reason}; confirm with `agent prune \
                     --confirm {bundle}`",
                    ids.len(),
                    if ids.is_empty() { String::new() } else { format!(" ({})", some_of(&ids)) }
                );
                let held = record.removal_held(commit, &reason, ids, now);
                // The same hold again is no news: the record is not written every cycle.
                let same = record.removal.as_ref().map(|r| &r.state) == held.removal.as_ref().map(|r| &r.state);
                (if same { None } else { Some(held) }, BundleResult::new(bundle, Outcome::RemovalHeld, message))
            }
            Decision::Keep { objects, .. } => {
                let message = format!(
                    "removed from Git: its {} object(s) kept running (prune.removedBundles: keep){}",
                    objects.len(),
                    if objects.is_empty() { String::new() } else { format!(": {}", some_of(&objects)) }
                );
                let next = record.removed(commit, RemovalState::Kept { objects }, now);
                (Some(next), BundleResult::new(bundle, Outcome::Removed, message))
            }
            Decision::Delete { objects, kept, .. } => {
                if self.dry_run {
                    let ids: Vec<String> = objects.iter().map(object_id).collect();
                    let message = format!("removed from Git: would delete {} object(s)", ids.len());
                    return BundleResult::new(bundle, Outcome::WouldApply, format!("{message} ({})", some_of(&ids)));
                }
                return self.delete_removed(record, &objects, kept, commit).await;
            }
        };
        if let Some(next) = next.filter(|_| !self.dry_run)
            && let Err(e) = self.save(&next).await
        {
            return BundleResult::new(bundle, Outcome::Interrupted, format!("saving the record: {e:#}"));
        }
        result
    }

    /// The bundle is in Git again (`record` says it left): its removal is forgotten, and it is
    /// reconciled as any bundle, from what its record holds. A dry run writes nothing.
    pub async fn back_in_git(&self, record: Record) -> Result<Record, BundleResult> {
        if record.removal.is_none() || self.dry_run {
            return Ok(record);
        }
        let back = record.back_in_git();
        if let Err(e) = self.save(&back).await {
            let why = format!("saving the record: {e:#}");
            return Err(BundleResult::new(&record.bundle, Outcome::Interrupted, why));
        }
        self.say(&record.bundle, "back in Git: reconciled again");
        Ok(back)
    }

    /// `agent prune --confirm BUNDLE`: deletes what the bundle's held removal named, from the
    /// records alone (no git, no registry), and records the bundle as removed.
    pub async fn confirm_removal(&self, bundle: &str) -> anyhow::Result<BundleResult> {
        let record = self.store.load(bundle).await?.ok_or_else(|| anyhow::anyhow!("no record of bundle {bundle}"))?;
        let Some((objects, kept)) = shared::removal::confirmed(&record) else {
            anyhow::bail!(
                "bundle {bundle} has no removal held (`agent status` says {}): nothing to confirm",
                shared::status::bundle_status(&record, unix_now()).state
            );
        };
        let commit = record.removal.as_ref().map(|r| r.commit.clone()).unwrap_or_default();
        Ok(self.delete_removed(&record, &objects, kept, &commit).await)
    }

    async fn delete_removed(
        &self,
        record: &Record,
        objects: &[Value],
        kept: Vec<String>,
        commit: &str,
    ) -> BundleResult {
        let bundle = record.bundle.as_str();
        let deleted = match self.delete_owned(bundle, objects).await {
            Ok(d) => d,
            Err(e) => {
                return BundleResult::new(
                    bundle,
                    Outcome::Interrupted,
                    format!("removed from Git; deleting its objects: {e} (the next reconcile deletes the rest)"),
                );
            }
        };
        // What was not deleted was gone already, or is no longer ours (adopted or handed over).
        let done: BTreeSet<&String> = deleted.iter().collect();
        let mut kept = kept;
        kept.extend(objects.iter().map(object_id).filter(|id| !done.contains(id)));
        let mut deleted = deleted;
        for ns in shared::removal::namespaces_of(record) {
            match self.delete_namespace_if_empty(bundle, &ns).await {
                Ok(true) => {
                    kept.retain(|k| *k != format!("Namespace/{ns}"));
                    deleted.push(format!("Namespace/{ns}"));
                }
                Ok(false) => {}
                // A rendered Namespace is in `kept` already; one not ours was never the bundle's.
                Err(why) => self.say(bundle, &format!("kept Namespace/{ns}: {why}")),
            }
        }
        let message = format!(
            "removed from Git: deleted {} object(s){}{}",
            deleted.len(),
            if deleted.is_empty() { String::new() } else { format!(" ({})", some_of(&deleted)) },
            if kept.is_empty() { String::new() } else { format!("; left {}", some_of(&kept)) }
        );
        let next = record.removed(commit, RemovalState::Removed { deleted, kept }, unix_now());
        if let Err(e) = self.save(&next).await {
            return BundleResult::new(bundle, Outcome::Interrupted, format!("saving the record: {e:#}"));
        }
        BundleResult::new(bundle, Outcome::Removed, message)
    }
}
