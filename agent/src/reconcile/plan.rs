//! Plan and apply: a bundle's preflight (limits, drains, probes, blast radius), its objects
//! planned against the cluster (shared with `agent diff`), applied in dependency order and
//! deleted when they are ours, retrying while the API server is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use serde_json::Value;

use shared::desired::{in_apply_order, ownership};
use shared::outcome::Outcome;
use shared::plan::ObjectPlan;
use shared::render::Manifest;
use shared::rollout::Limits;
use shared::state::Record;

use super::{BundleResult, Driver};
use crate::cluster::{Cluster, ClusterError};
use crate::desired::DesiredBundle;

/// Objects observed at once while planning.
const OBSERVE_CONCURRENCY: usize = 8;

/// How long a deletion (prune, or what a failed revision added) is waited for.
const DELETE_WAIT: Duration = Duration::from_secs(60);

/// Plans one bundle's objects against the cluster: the API server's dry-run of our apply, the
/// live objects, and the objects of ours that left Git (`shared::plan`). Those are looked for
/// among what `record` says was applied (`shared::state::prune_candidates`), whatever their kind,
/// so an object of a CRD's kind is pruned like a ConfigMap; `plan` keeps the live ones that
/// carry this agent's owner and bundle labels.
pub async fn plan_objects(
    cluster: &Cluster,
    manifests: &[Manifest],
    record: &Record,
    agent_id: &str,
    bundle: &str,
) -> Result<Vec<ObjectPlan>, ClusterError> {
    let observed: Vec<_> = futures::stream::iter(manifests.iter().map(|m| cluster.observe(m)))
        .buffered(OBSERVE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let desired: BTreeSet<String> = manifests.iter().map(Manifest::id).collect();
    let candidates = shared::state::prune_candidates(record, &desired);
    let found: Vec<Option<Value>> = futures::stream::iter(candidates.into_iter().map(|object| async move {
        match cluster.get(&Manifest { source: String::new(), object }).await {
            // The kind is no longer served (its CRD is gone): nothing of it is left to prune.
            Err(ClusterError::UnknownKind { .. }) => Ok(None),
            other => other,
        }
    }))
    .buffered(OBSERVE_CONCURRENCY)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let live: Vec<Value> = found.into_iter().flatten().collect();
    let observed: BTreeMap<_, _> = manifests.iter().map(Manifest::id).zip(observed).collect();
    Ok(shared::plan::plan(manifests, &observed, &live, agent_id, bundle))
}

fn manifests(objects: &[Value]) -> Vec<Manifest> {
    let mut out: Vec<Manifest> =
        objects.iter().map(|o| Manifest { source: String::new(), object: o.clone() }).collect();
    in_apply_order(&mut out);
    out
}

/// An API error worth retrying: the server or the way to it failed, not our object.
pub(super) fn transient(e: &ClusterError) -> bool {
    match e {
        ClusterError::Unreachable { .. } => true,
        ClusterError::Object { status, .. } => status.is_none_or(|s| s == 429 || s >= 500),
        _ => false,
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_total_delay(Some(Duration::from_secs(120)))
        .without_max_times()
        .with_jitter()
}

/// A minimal object for a plan entry (to delete it).
pub(super) fn stub(p: &ObjectPlan) -> Value {
    let parts: Vec<&str> = p.id.splitn(3, '/').collect();
    let (kind, ns, name) = match parts.as_slice() {
        [kind, ns, name] => (*kind, Some(*ns), *name),
        [kind, name] => (*kind, None, *name),
        _ => ("", None, ""),
    };
    let mut meta = serde_json::json!({"name": name});
    if let Some(ns) = ns {
        meta["namespace"] = ns.into();
    }
    serde_json::json!({"apiVersion": p.api_version, "kind": kind, "metadata": meta})
}

impl Driver<'_> {
    /// What is checked before anything is asked of the cluster: the bundle's limits, its drains
    /// (which shape the manifests: strategy, grace period and preStop are part of what is
    /// applied, and so of the revision, so a rollback restores them too), that every probe
    /// names a workload, and the blast radius. A failed check blocks the bundle.
    pub(super) async fn preflight(&self, desired: &DesiredBundle) -> Result<(Limits, Vec<Manifest>), BundleResult> {
        let name = desired.name.as_str();
        let policy = &desired.spec.policy;
        let blocked = |why: String| BundleResult::new(name, Outcome::Blocked, why);
        let mut limits = Limits::for_bundle(policy, &self.defaults).map_err(blocked)?;
        let mut manifests = desired.manifests.clone();
        limits.drains =
            crate::drain::for_bundle(self.cluster, policy, self.drain_window, &mut manifests).await.map_err(blocked)?;
        let objects: Vec<Value> = manifests.iter().map(|m| m.object.clone()).collect();
        let unmatched = shared::probe::unmatched(&limits.probes, &objects);
        if !unmatched.is_empty() {
            return Err(blocked(format!("fleet.yaml: {}", unmatched.join("; "))));
        }
        if let Err(problems) = shared::desired::check_scope(&manifests, &desired.spec.namespace, policy) {
            return Err(blocked(format!(
                "outside the bundle's blast radius, nothing applied: {}",
                problems.join("; ")
            )));
        }
        Ok((limits, manifests))
    }

    /// Says why a call to the API server is retried.
    fn retrying(&self, bundle: &str, e: &ClusterError, after: Duration) {
        self.say(bundle, &format!("{e}; retrying in {:.1}s", after.as_secs_f64()));
    }

    /// Applies objects in dependency order, retrying while the API server is unreachable. The
    /// target namespaces the bundle does not render are created first when missing, labelled as
    /// ours (`shared::desired::namespaces_to_create`; never deleted here). One still
    /// terminating is left alone: the apply's 403 is an environment fault, retried later.
    pub(super) async fn apply_all(&self, bundle: &str, objects: &[Value], force: bool) -> Result<(), ClusterError> {
        for ns in shared::desired::namespaces_to_create(objects, self.agent_id, bundle) {
            let m = Manifest { source: String::new(), object: ns };
            let live = (|| self.cluster.get(&m))
                .retry(backoff())
                .when(transient)
                .notify(|e, d| self.retrying(bundle, e, d))
                .await?;
            if live.is_none() {
                (|| self.cluster.apply(&m, false, false))
                    .retry(backoff())
                    .when(transient)
                    .notify(|e, d| self.retrying(bundle, e, d))
                    .await?;
                self.say(bundle, &format!("created the missing {} (labelled as this agent's)", m.id()));
            }
        }
        for m in manifests(objects) {
            (|| self.cluster.apply(&m, false, force))
                .retry(backoff())
                .when(transient)
                .notify(|e, d| self.retrying(bundle, e, d))
                .await?;
        }
        Ok(())
    }

    /// Deletes objects by id, each only when the live object carries this agent's owner label
    /// and the bundle's label (it might have been adopted or handed over since). Deletion is in
    /// the foreground (dependents, such as a Deployment's pods, go first), so it waits, up to
    /// `DELETE_WAIT`, until they are gone; one still there then is said, not failed.
    pub(super) async fn delete_owned(&self, bundle: &str, objects: &[Value]) -> Result<Vec<String>, ClusterError> {
        let mut deleted = Vec::new();
        let mut pending = Vec::new();
        for m in manifests(objects).into_iter().rev() {
            let live = (|| self.cluster.get(&m))
                .retry(backoff())
                .when(transient)
                .notify(|e, d| self.retrying(bundle, e, d))
                .await?;
            let Some(live) = live else { continue };
            if ownership(&live) == Some((self.agent_id.to_owned(), bundle.to_owned())) {
                (|| self.cluster.delete(&m))
                    .retry(backoff())
                    .when(transient)
                    .notify(|e, d| self.retrying(bundle, e, d))
                    .await?;
                deleted.push(m.id());
                pending.push(m);
            }
        }
        let gone = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_total_delay(Some(DELETE_WAIT))
            .without_max_times();
        for m in pending {
            let still_there = || async {
                match self.cluster.get(&m).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            };
            if let Err(e) = still_there.retry(gone).await {
                let why = e.map_or_else(|| "still being deleted (finalizers)".to_owned(), |e| e.to_string());
                self.say(bundle, &format!("warning: {}: {why} after {}s", m.id(), DELETE_WAIT.as_secs()));
            }
        }
        Ok(deleted)
    }
}
