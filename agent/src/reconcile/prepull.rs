//! The driver's pre-pull: for a bundle the gate chain deferred, one `shared::prepull::step`
//! (read the Node and the bundle's pre-pull pods, create and delete what it says) and its
//! progress; for any other answer, the bundle's pre-pull pods deleted. Neither ever changes the
//! bundle's outcome: a pre-pull that cannot run is said and the rollout pulls as it always did.

use serde_json::Value;

use shared::prepull::{Progress, Target};
use shared::state::{Record, Snapshot};

use super::Driver;
use crate::watch::unix_now;

impl Driver<'_> {
    fn prepull_target<'b>(&'b self, bundle: &'b str) -> Target<'b> {
        Target { agent_id: self.agent_id, bundle, node: self.node_name }
    }

    /// One pre-pull step of a waiting bundle: its progress and when to look again while pulls
    /// are under way; `None` when pre-pull is off, a dry run, or could not look (said).
    pub(super) async fn prepull_step(
        &self,
        bundle: &str,
        candidate: &Snapshot,
        record: &Record,
    ) -> Option<(Progress, Option<shared::k8s::Time>)> {
        let settings = self.prepull.filter(|_| !self.dry_run)?;
        let target = self.prepull_target(bundle);
        let node = match crate::prepull::node(self.cluster, self.node_name).await {
            Ok(n) => n,
            Err(e) => {
                // Cluster mode names a cluster, not a node: no pod can be pinned to it.
                self.say(
                    bundle,
                    &format!("pre-pull skipped: reading this node ({e}); identity.nodeName must be a Node"),
                );
                return None;
            }
        };
        let running = record.lkg.as_ref().map(|l| l.revision.images.clone()).unwrap_or_default();
        let wants = shared::prepull::wanted(&candidate.objects, &running, &node);
        let namespaces = shared::prepull::namespaces(&candidate.objects);
        let now = unix_now();
        let seen =
            match crate::prepull::pods(self.cluster, &namespaces, &shared::prepull::selector(&target), settings, now)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.say(bundle, &format!("pre-pull skipped: {e}"));
                    return None;
                }
            };
        let mut step = shared::prepull::step(&wants, &seen, settings, &target, now);
        for pod in &step.delete {
            if let Err(e) = crate::prepull::delete(self.cluster, pod).await {
                self.say(bundle, &format!("pre-pull: {e}"));
            }
        }
        for pod in &step.create {
            if let Err(e) = crate::prepull::create(self.cluster, pod).await {
                let image = pod["metadata"]["annotations"][shared::prepull::IMAGE_ANNOTATION].as_str().unwrap_or("");
                step.progress.not_created(image, &e.to_string());
            }
        }
        if wants.is_empty() {
            return None;
        }
        self.say(bundle, &step.progress.to_string());
        Some((step.progress, step.recheck_at))
    }

    /// The bundle no longer waits: its pre-pull pods go (the images stay on the node).
    pub(super) async fn prepull_cleanup(&self, bundle: &str, objects: &[Value]) {
        let Some(settings) = self.prepull.filter(|_| !self.dry_run) else { return };
        let target = self.prepull_target(bundle);
        let namespaces = shared::prepull::namespaces(objects);
        let selector = shared::prepull::selector(&target);
        let seen = match crate::prepull::pods(self.cluster, &namespaces, &selector, settings, unix_now()).await {
            Ok(s) => s,
            Err(e) => {
                self.say(bundle, &format!("pre-pull cleanup skipped: {e}"));
                return;
            }
        };
        let gone = shared::prepull::cleanup(&seen);
        for pod in &gone {
            if let Err(e) = crate::prepull::delete(self.cluster, pod).await {
                self.say(bundle, &format!("pre-pull cleanup: {e}"));
            }
        }
        if !gone.is_empty() {
            self.say(bundle, &format!("pre-pull: {} pod(s) deleted, the images stay on the node", gone.len()));
        }
    }
}
