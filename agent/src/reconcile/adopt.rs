//! Adoption: objects another tool applied, found running and healthy the first time a bundle is
//! met, become its first last-known-good (as ours), so the very first rollout can roll back.

use serde_json::Value;

use shared::plan::{Action, ObjectPlan};
use shared::render::Manifest;
use shared::rollout::{Limits, Step};
use shared::state::{Revision, Snapshot, rendered_hash};

use super::Driver;
use crate::watch::unix_now;
use shared::k8s::is_workload;

impl Driver<'_> {
    /// The first time a bundle is met with objects already running that another tool applied:
    /// when they are healthy, their live state (as ours: owner labels added) becomes the first
    /// last-known-good, so the very first rollout can roll back. `None` when nothing runs yet.
    pub(super) async fn adopt(
        &self,
        bundle: &str,
        desired: &[Manifest],
        plans: &[ObjectPlan],
        limits: &Limits,
    ) -> Result<Option<Snapshot>, String> {
        let existing: Vec<&Manifest> =
            desired.iter().filter(|m| plans.iter().any(|p| p.id == m.id() && p.action != Action::Create)).collect();
        if !existing.iter().any(|m| is_workload(&m.object)) {
            return Ok(None);
        }
        let mut live = Vec::new();
        for m in &existing {
            match self.cluster.get(m).await {
                Ok(Some(v)) => live.push(shared::plan::normalize(&v)),
                Ok(None) => {}
                Err(e) => return Err(format!("reading {} to adopt it: {e}", m.id())),
            }
        }
        let workloads: Vec<Value> = live.iter().filter(|o| is_workload(o)).cloned().collect();
        match self.watch(bundle, &workloads, unix_now(), &limits.health_only()).await {
            Step::Done => {}
            Step::Failed { reason, .. } => {
                self.say(bundle, &format!("not adopting the running objects, they are not healthy: {reason}"));
                return Ok(None);
            }
            Step::Continue { .. } => unreachable!("until_settled returns only when settled"),
        }
        let mut ms: Vec<Manifest> =
            live.into_iter().map(|o| Manifest { source: String::new(), object: adoptable(o) }).collect();
        shared::desired::label_owned(&mut ms, self.agent_id, bundle);
        let objects: Vec<Value> = ms.into_iter().map(|m| m.object).collect();
        let mut images: Vec<String> = shared::render::images(
            &objects.iter().map(|o| Manifest { source: String::new(), object: o.clone() }).collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|u| u.image)
        .collect();
        images.sort();
        images.dedup();
        Ok(Some(Snapshot {
            revision: Revision {
                commit: "adopted".into(),
                hash: rendered_hash(&objects),
                images,
                verified: Default::default(),
                release: None,
            },
            objects,
            at: unix_now(),
        }))
    }
}

/// A live object made fit to be applied again: controller-written annotations dropped.
fn adoptable(mut o: Value) -> Value {
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        a.remove("deployment.kubernetes.io/revision");
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o
}
