//! Pre-pull at the cluster: a bundle's pre-pull pods listed (by their labels, in the namespaces
//! the bundle runs pods in), created and deleted, and the Node read for the images it reports;
//! and `agent prepull-helper`, the program both containers of such a pod run. What to pull,
//! when and how many at once is `shared::prepull`'s.

use std::path::Path;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::Value;

use shared::config::Prepull;
use shared::k8s::Time;
use shared::prepull::{PodRef, Seen};

use crate::cluster::{Cluster, ClusterError};

fn core(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", kind))
}

fn err(object: String, e: &kube::Error) -> ClusterError {
    let status = match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    };
    ClusterError::Object { object, reason: crate::source::error_chain(e), status }
}

/// The pods `selector` selects in each of `namespaces`, read by `shared::prepull::observe`.
pub async fn pods(
    cluster: &Cluster,
    namespaces: &[String],
    selector: &str,
    settings: &Prepull,
    now: Time,
) -> Result<Vec<Seen>, ClusterError> {
    let mut out = Vec::new();
    for ns in namespaces {
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client().clone(), ns, &core("Pod"));
        let list = match api.list(&ListParams::default().labels(selector)).await {
            Ok(l) => l,
            // A namespace the release creates: nothing of ours in it yet.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(err(format!("Pod list in {ns}"), &e)),
        };
        for pod in list.items {
            let value = serde_json::to_value(pod).unwrap_or(Value::Null);
            out.extend(shared::prepull::observe(&value, settings, now));
        }
    }
    Ok(out)
}

/// Creates one pre-pull pod; one that exists already (a cycle raced another) is fine.
pub async fn create(cluster: &Cluster, pod: &Value) -> Result<(), ClusterError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let object: DynamicObject = serde_json::from_value(pod.clone()).map_err(|e| ClusterError::Object {
        object: format!("Pod/{ns}/{name}"),
        reason: e.to_string(),
        status: None,
    })?;
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client().clone(), ns, &core("Pod"));
    match api
        .create(
            &PostParams { field_manager: Some(shared::desired::FIELD_MANAGER.into()), ..Default::default() },
            &object,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(err(format!("Pod/{ns}/{name}"), &e)),
    }
}

/// Deletes one pre-pull pod at once (nothing in it needs a grace period); gone already is fine.
pub async fn delete(cluster: &Cluster, pod: &PodRef) -> Result<(), ClusterError> {
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client().clone(), &pod.namespace, &core("Pod"));
    match api.delete(&pod.name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::background() }).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(err(format!("Pod/{}/{}", pod.namespace, pod.name), &e)),
    }
}

/// The Node `name` as JSON (its `status.images`).
pub async fn node(cluster: &Cluster, name: &str) -> Result<Value, ClusterError> {
    let api: Api<DynamicObject> = Api::all_with(cluster.client().clone(), &core("Node"));
    match api.get(name).await {
        Ok(n) => Ok(serde_json::to_value(n).unwrap_or(Value::Null)),
        Err(e) => Err(err(format!("Node/{name}"), &e)),
    }
}

/// `agent prepull-helper [--install PATH]`: with `--install` (the helper image's init
/// container) copies this binary to PATH, executable; alone (the app image's container, running
/// that copy) exits at once, so the pod ends Succeeded once the image is on the node.
pub fn helper(install: Option<&Path>, out: &mut dyn std::io::Write) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let Some(to) = install else {
        writeln!(out, "the image is on the node")?;
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let me = std::env::current_exe().context("finding this program")?;
    std::fs::copy(&me, to).with_context(|| format!("copying {} to {}", me.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o555))
        .with_context(|| format!("making {} executable", to.display()))?;
    Ok(std::process::ExitCode::SUCCESS)
}
