//! Kubernetes helpers of the testenv and the tests: a client from a kubeconfig, KWOK nodes and
//! waiting for a node to be Ready. `testenv` (which starts the cluster) and `support` (which
//! tests use) both need them, so they live below both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

/// A kube client from a kubeconfig file.
pub async fn kube_client(kubeconfig: &Path) -> Result<kube::Client> {
    crate::tls::install_crypto_provider();
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Creates a KWOK-managed node (no taints) unless it exists.
pub async fn ensure_node(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
    extra_capacity: &[(&str, &str)],
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let mut all_labels = serde_json::json!({
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    for (k, v) in labels {
        all_labels[*k] = serde_json::Value::String((*v).to_owned());
    }
    let mut capacity = serde_json::json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    for (k, v) in extra_capacity {
        capacity[*k] = serde_json::Value::String((*v).to_owned());
    }
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }))?;
    nodes.create(&PostParams::default(), &node).await.with_context(|| format!("creating node {name}"))?;
    Ok(())
}

/// Waits until the node's Ready condition is True.
pub async fn wait_node_ready(client: &kube::Client, name: &str, timeout: Duration) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let ready = nodes
            .get_opt(name)
            .await?
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {name} not Ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
