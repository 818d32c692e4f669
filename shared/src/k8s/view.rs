//! The fields of Kubernetes objects that decisions read, as small structs parsed once from the
//! JSON the API server (or a chart) gave, so that a misspelt field is a compile error and not a
//! silent Null. Each field reads as indexing the JSON did: absent or of another type, it is empty
//! (an unreadable element of a list is an empty element, so positions are kept).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::selector::LabelSelector;

/// A field's value, or its default when it has another type.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// A view of a mapping; anything else (serde would read a list positionally) reads as empty.
fn view_of<T: DeserializeOwned + Default>(v: Value) -> T {
    match v {
        Value::Object(_) => serde_json::from_value(v).unwrap_or_default(),
        _ => T::default(),
    }
}

/// A field that is a view of a mapping.
fn object<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    Ok(view_of(Value::deserialize(d)?))
}

/// An optional view: `None` unless the field is a mapping.
fn object_opt<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<Option<T>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(v.is_object().then(|| view_of(v)))
}

/// A list of views, each element read as [`object`] reads a field (positions are kept); not a
/// list: empty.
fn list<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<Vec<T>, D::Error> {
    let items = match Value::deserialize(d)? {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    Ok(items.into_iter().map(view_of).collect())
}

/// The string values of a mapping (labels, annotations); other values are left out.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let v = Value::deserialize(d)?;
    let Value::Object(map) = v else { return Ok(BTreeMap::new()) };
    Ok(map.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned()))).collect())
}

/// The strings of a list; other elements are left out.
fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Value::deserialize(d)?;
    let Value::Array(items) = v else { return Ok(Vec::new()) };
    Ok(items.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
}

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Meta {
    #[serde(deserialize_with = "lenient")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub namespace: Option<String>,
    #[serde(deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "string_map")]
    pub annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "lenient")]
    pub uid: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub generation: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub deletion_timestamp: Option<String>,
    #[serde(deserialize_with = "list")]
    pub owner_references: Vec<OwnerReference>,
    /// RFC 3339, as the API server wrote it.
    #[serde(deserialize_with = "lenient")]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OwnerReference {
    #[serde(deserialize_with = "lenient")]
    pub uid: Option<String>,
}

/// A Deployment, StatefulSet or DaemonSet.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Workload {
    #[serde(deserialize_with = "lenient")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "object")]
    pub metadata: Meta,
    #[serde(deserialize_with = "object")]
    pub spec: WorkloadSpec,
    #[serde(deserialize_with = "object")]
    pub status: WorkloadStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSpec {
    #[serde(deserialize_with = "lenient")]
    pub replicas: Option<i64>,
    /// `None` when absent or not a selector.
    #[serde(deserialize_with = "lenient")]
    pub selector: Option<LabelSelector>,
    #[serde(deserialize_with = "object")]
    pub template: PodTemplate,
    /// A StatefulSet's or DaemonSet's.
    #[serde(deserialize_with = "object")]
    pub update_strategy: UpdateStrategy,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UpdateStrategy {
    #[serde(rename = "type", deserialize_with = "lenient")]
    pub kind: Option<String>,
    /// `None` when absent or not a mapping.
    #[serde(deserialize_with = "object_opt")]
    pub rolling_update: Option<RollingUpdate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RollingUpdate {
    #[serde(deserialize_with = "lenient")]
    pub partition: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(deserialize_with = "lenient")]
    pub observed_generation: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub replicas: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub updated_replicas: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub available_replicas: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub ready_replicas: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub current_revision: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub update_revision: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub desired_number_scheduled: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub updated_number_scheduled: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub number_available: Option<i64>,
    #[serde(deserialize_with = "list")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type", deserialize_with = "lenient")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub status: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodTemplate {
    #[serde(deserialize_with = "object")]
    pub metadata: Meta,
    #[serde(deserialize_with = "object")]
    pub spec: PodSpec,
}

/// A ReplicaSet, for its metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReplicaSet {
    #[serde(deserialize_with = "object")]
    pub metadata: Meta,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    #[serde(deserialize_with = "object")]
    pub metadata: Meta,
    #[serde(deserialize_with = "object")]
    pub spec: PodSpec,
    #[serde(deserialize_with = "object")]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(deserialize_with = "lenient")]
    pub phase: Option<String>,
    /// Why the pod ended, e.g. `DeadlineExceeded` (`activeDeadlineSeconds`).
    #[serde(deserialize_with = "lenient")]
    pub reason: Option<String>,
    #[serde(deserialize_with = "list")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(deserialize_with = "list")]
    pub container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    #[serde(deserialize_with = "lenient")]
    pub name: Option<String>,
    #[serde(deserialize_with = "object")]
    pub state: ContainerState,
    /// The image's digest reference once the kubelet pulled it (or found it on the node).
    #[serde(rename = "imageID", deserialize_with = "lenient")]
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    /// `None` when the container is not waiting.
    #[serde(deserialize_with = "object_opt")]
    pub waiting: Option<Waiting>,
    /// `None` when the container is not running.
    #[serde(deserialize_with = "object_opt")]
    pub running: Option<Running>,
    /// `None` when the container has not ended.
    #[serde(deserialize_with = "object_opt")]
    pub terminated: Option<Terminated>,
}

/// A running container's state (its fields are not read, only that it runs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Running {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Terminated {
    #[serde(deserialize_with = "lenient")]
    pub exit_code: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Waiting {
    #[serde(deserialize_with = "lenient")]
    pub reason: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(deserialize_with = "list")]
    pub containers: Vec<Container>,
    #[serde(deserialize_with = "list")]
    pub init_containers: Vec<Container>,
    /// Resource name -> quantity as written (a string, or a number in a chart).
    #[serde(deserialize_with = "lenient")]
    pub overhead: Map<String, Value>,
    /// Label -> value; a value that is not a string matches no node label.
    #[serde(deserialize_with = "lenient")]
    pub node_selector: Map<String, Value>,
    #[serde(deserialize_with = "object")]
    pub affinity: Affinity,
    #[serde(deserialize_with = "list")]
    pub tolerations: Vec<Toleration>,
    #[serde(deserialize_with = "lenient")]
    pub host_network: bool,
    #[serde(deserialize_with = "lenient")]
    pub node_name: Option<String>,
    #[serde(deserialize_with = "list")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// A reference by name to an object of the same namespace (`imagePullSecrets[]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LocalObjectReference {
    #[serde(deserialize_with = "lenient")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    #[serde(deserialize_with = "lenient")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub image: Option<String>,
    #[serde(deserialize_with = "object")]
    pub resources: Resources,
    /// `Always` for a sidecar (a restartable init container).
    #[serde(deserialize_with = "lenient")]
    pub restart_policy: Option<String>,
    #[serde(deserialize_with = "list")]
    pub ports: Vec<ContainerPort>,
}

/// A container's `resources`: resource name -> quantity as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    #[serde(deserialize_with = "lenient")]
    pub limits: Map<String, Value>,
    #[serde(deserialize_with = "lenient")]
    pub requests: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(deserialize_with = "lenient")]
    pub host_port: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub container_port: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Affinity {
    #[serde(deserialize_with = "object")]
    pub node_affinity: NodeAffinity,
    #[serde(deserialize_with = "object")]
    pub pod_anti_affinity: PodAntiAffinity,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeAffinity {
    #[serde(rename = "requiredDuringSchedulingIgnoredDuringExecution", deserialize_with = "object")]
    pub required: NodeSelector,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSelector {
    #[serde(deserialize_with = "list")]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(deserialize_with = "list")]
    pub match_expressions: Vec<NodeRequirement>,
    #[serde(deserialize_with = "list")]
    pub match_fields: Vec<NodeRequirement>,
}

/// A node selector requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeRequirement {
    #[serde(deserialize_with = "lenient")]
    pub key: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub operator: Option<String>,
    #[serde(deserialize_with = "strings")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodAntiAffinity {
    #[serde(rename = "requiredDuringSchedulingIgnoredDuringExecution", deserialize_with = "list")]
    pub required: Vec<PodAffinityTerm>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodAffinityTerm {
    #[serde(deserialize_with = "strings")]
    pub namespaces: Vec<String>,
    /// `None` when absent or not a selector: such a term selects nothing.
    #[serde(deserialize_with = "lenient")]
    pub label_selector: Option<LabelSelector>,
    #[serde(deserialize_with = "lenient")]
    pub topology_key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Toleration {
    #[serde(deserialize_with = "lenient")]
    pub key: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub operator: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub value: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub effect: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Node {
    #[serde(deserialize_with = "object")]
    pub metadata: Meta,
    #[serde(deserialize_with = "object")]
    pub spec: NodeSpec,
    #[serde(deserialize_with = "object")]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeSpec {
    #[serde(deserialize_with = "lenient")]
    pub unschedulable: bool,
    #[serde(deserialize_with = "list")]
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Taint {
    #[serde(deserialize_with = "lenient")]
    pub key: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub value: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub effect: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// Resource name -> quantity as the API server wrote it.
    #[serde(deserialize_with = "lenient")]
    pub allocatable: Map<String, Value>,
    /// The images the kubelet reports on the node (it lists at most 50 by default, largest
    /// first: absence proves nothing).
    #[serde(deserialize_with = "list")]
    pub images: Vec<NodeImage>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeImage {
    /// `repo@sha256:...` and `repo:tag` forms of one image.
    #[serde(deserialize_with = "strings")]
    pub names: Vec<String>,
}

/// Parsing once: every view reads any JSON value (one that is no object reads as empty).
macro_rules! view {
    ($($t:ident),*) => {$(
        impl $t {
            pub fn view(object: &Value) -> $t {
                view_of(object.clone())
            }
        }
    )*};
}
view!(Workload, ReplicaSet, Pod, PodSpec, Node);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::selector_of;

    #[test]
    fn views_read_what_indexing_read_and_an_ill_typed_field_as_empty() {
        let pod = Pod::view(&json!({
            "metadata": {"name": "web-0", "namespace": "ns", "labels": {"app": "web", "tier": 1},
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "hostNetwork": "yes",
                     "containers": ["not a container", {"name": "c", "resources": {"requests": {"cpu": "1"}},
                                    "ports": [{"containerPort": 80, "hostPort": "8080"}]}]},
            "status": {"phase": "Running"}
        }));
        assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(pod.metadata.labels, BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        assert_eq!(pod.metadata.deletion_timestamp.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(pod.spec.node_name.as_deref(), Some("n1"));
        assert!(!pod.spec.host_network, "a string is no bool");
        assert_eq!(pod.spec.containers.len(), 2, "positions are kept");
        assert!(pod.spec.containers[0].name.is_none());
        assert_eq!(pod.spec.containers[1].resources.requests["cpu"], "1");
        assert_eq!(
            (pod.spec.containers[1].ports[0].container_port, pod.spec.containers[1].ports[0].host_port),
            (Some(80), None)
        );
        assert_eq!(pod.status.phase.as_deref(), Some("Running"));

        let w = Workload::view(&json!({"kind": "Deployment", "spec": {"replicas": "2", "selector": {"matchLabels": 3},
            "template": {"metadata": {"labels": {"app": "web"}}}}}));
        assert_eq!(w.spec.replicas, None, "a string is no replica count");
        assert!(w.spec.selector.is_none(), "an unreadable selector is none");
        assert_eq!(selector_of(&w).match_labels, BTreeMap::from([("app".to_owned(), "web".to_owned())]));

        let positional = Workload::view(&json!({"metadata": ["web", "ns"],
            "spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": []}}}));
        assert!(positional.metadata.name.is_none(), "a list is no mapping, not read by position");
        assert!(positional.spec.update_strategy.rolling_update.is_none());
        assert_eq!(positional.spec.update_strategy.kind.as_deref(), Some("RollingUpdate"));

        let node = Node::view(&json!("not an object"));
        assert!(node.metadata.name.is_none() && !node.spec.unschedulable && node.status.allocatable.is_empty());
    }
}
