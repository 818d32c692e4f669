//! The leaf of `shared`: Kubernetes facts every other module uses: time, object ids, label
//! selectors, quantities, workload kinds and pod helpers. It imports no other module of the crate.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Unix seconds.
pub type Time = i64;

/// `Kind/namespace/name` (or `Kind/name`), as `shared::render::Manifest::id`.
pub fn object_id(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// `metadata.name`.
pub fn name_of(object: &Value) -> Option<&str> {
    object["metadata"]["name"].as_str()
}

// ---- label selectors ----

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Kubernetes semantics: every matchLabels pair and every expression must hold.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator {
                    Operator::In => have.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => have.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => have.is_some(),
                    Operator::DoesNotExist => have.is_none(),
                }
            })
    }
}

// ---- quantities ----

/// Why a value is no quantity; each holds the value as shown (a string quoted, JSON otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0} is not a Kubernetes quantity")]
    NotAQuantity(String),
    #[error("{0} is too large a quantity")]
    TooLarge(String),
}

/// A Kubernetes quantity (`500m`, `1`, `2Gi`, `1e3`, `100M`, `0.5`) in thousandths of its unit,
/// exactly, rounded up as Kubernetes' `MilliValue` does.
pub fn parse_quantity(s: &str) -> Result<i128, QuantityError> {
    let bad = || QuantityError::NotAQuantity(format!("{s:?}"));
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.len() + fraction.len() == 0 || fraction.contains('.') {
        return Err(bad());
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(QuantityError::TooLarge(format!("{s:?}")));
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad())? };
    let (ten, two): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
            let exp = &e[1..];
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse::<i32>().ok().filter(|x| x.abs() <= 40).ok_or_else(bad)?, 0)
        }
        _ => return Err(bad()),
    };
    // value = mantissa * 10^(ten - fraction digits) * 2^two, in thousandths.
    let scale = ten + 3 - i32::try_from(fraction.len()).map_err(|_| bad())?;
    let too_large = || QuantityError::TooLarge(format!("{s:?}"));
    let scaled = mantissa.checked_mul(1i128 << two).ok_or_else(too_large)?;
    let milli = if scale >= 0 {
        scaled.checked_mul(10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?).ok_or_else(too_large)?
    } else {
        let divisor = 10i128.checked_pow(scale.unsigned_abs()).ok_or_else(too_large)?;
        scaled.div_euclid(divisor) + i128::from(scaled.rem_euclid(divisor) != 0)
    };
    Ok(if negative { -milli } else { milli })
}

/// A quantity as JSON (the API server sends strings; a chart may write `cpu: 1`).
pub fn quantity(v: &Value) -> Result<i128, QuantityError> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => parse_quantity(&n.to_string()),
        other => Err(QuantityError::NotAQuantity(other.to_string())),
    }
}

/// Thousandths back to a readable quantity: `500m`, `1`, `2Gi` for byte resources.
pub fn show_quantity(resource: &str, milli: i128) -> String {
    let milli = milli.max(0);
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let n = milli / 1000;
    let bytes = resource == "memory" || resource == "ephemeral-storage" || resource.starts_with("hugepages-");
    if bytes && n > 0 {
        for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if n % (1i128 << shift) == 0 {
                return format!("{}{suffix}", n >> shift);
            }
        }
    }
    n.to_string()
}

// ---- workloads and their pods ----

/// The kinds that roll out pods (all `apps/v1`): what drains, probes and the rollout watch follow.
pub const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

/// The kind of an `apps/v1` Deployment, StatefulSet or DaemonSet; `None` for anything else.
pub fn workload_kind(object: &Value) -> Option<&str> {
    if object["apiVersion"] != "apps/v1" {
        return None;
    }
    object["kind"].as_str().filter(|k| WORKLOAD_KINDS.contains(k))
}

/// Whether `object` is an `apps/v1` Deployment, StatefulSet or DaemonSet.
pub fn is_workload(object: &Value) -> bool {
    workload_kind(object).is_some()
}

/// The workload's selector; its template's labels when it has none (or one that does not parse).
pub fn selector_of(workload: &Workload) -> LabelSelector {
    workload.spec.selector.clone().unwrap_or_else(|| LabelSelector {
        match_labels: workload.spec.template.metadata.labels.clone(),
        match_expressions: Vec::new(),
    })
}

/// Whether `pod` is one of `workload`'s: same namespace, labels match its selector.
pub fn owns(workload: &Workload, selector: &LabelSelector, pod: &Pod) -> bool {
    let ns = workload.metadata.namespace.as_deref();
    ns.is_some() && pod.metadata.namespace.as_deref() == ns && selector.matches(&pod.metadata.labels)
}

/// The pods of `workload`'s current revision: for a Deployment those of its ReplicaSet with the
/// same `deployment.kubernetes.io/revision`, for a StatefulSet those labelled with its
/// `updateRevision`, for a DaemonSet all of its pods. Terminating pods never count: during a
/// rollback the failed revision's pods crash until they are gone, and must not fail it again.
pub fn current_pods<'a>(workload: &Value, replica_sets: &'a [Value], pods: &'a [Value]) -> Vec<&'a Value> {
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let w = Workload::view(workload);
    let ns = w.metadata.namespace.as_deref();
    let Some(selector) = &w.spec.selector else {
        return Vec::new();
    };
    let revision_label: Option<(&str, String)> = match w.kind.as_deref() {
        Some("Deployment") => {
            let revision = w.metadata.annotations.get(REVISION);
            let current = replica_sets.iter().map(ReplicaSet::view).find(|rs| {
                rs.metadata.namespace.as_deref() == ns
                    && revision.is_some()
                    && rs.metadata.annotations.get(REVISION) == revision
                    && rs.metadata.owner_references.iter().any(|r| r.uid == w.metadata.uid)
            });
            match current.and_then(|rs| rs.metadata.labels.get("pod-template-hash").cloned()) {
                Some(h) => Some(("pod-template-hash", h)),
                None => return Vec::new(),
            }
        }
        Some("StatefulSet") => match &w.status.update_revision {
            Some(r) => Some(("controller-revision-hash", r.clone())),
            None => return Vec::new(),
        },
        _ => None,
    };
    pods.iter()
        .filter(|p| {
            let pod = Pod::view(p);
            pod.metadata.namespace.as_deref() == ns
                && pod.metadata.deletion_timestamp.is_none()
                && selector.matches(&pod.metadata.labels)
                && revision_label.as_ref().is_none_or(|(k, v)| pod.metadata.labels.get(*k) == Some(v))
        })
        .collect()
}

// ---- typed views ----
//
// The fields of Kubernetes objects that decisions read, as small structs parsed once from the
// JSON the API server (or a chart) gave, so that a misspelt field is a compile error and not a
// silent Null. Each field reads as indexing the JSON did: absent or of another type, it is empty
// (an unreadable element of a list is an empty element, so positions are kept).

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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    /// `None` when the container is not waiting.
    #[serde(deserialize_with = "object_opt")]
    pub waiting: Option<Waiting>,
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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    #[serde(deserialize_with = "lenient")]
    pub name: Option<String>,
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
view!(Workload, ReplicaSet, Pod, Node);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_saphyr::from_str(yaml).expect(yaml)
    }

    #[test]
    fn label_selectors_follow_kubernetes_semantics() {
        let node = labels(&[("store", "store1"), ("env", "qa")]);
        let table: &[(&str, bool)] = &[
            ("{}", true),
            ("matchLabels: {store: store1}", true),
            ("matchLabels: {store: store1, env: prod}", false),
            ("matchExpressions: [{key: env, operator: In, values: [qa, prod]}]", true),
            ("matchExpressions: [{key: env, operator: In, values: [prod]}]", false),
            ("matchExpressions: [{key: env, operator: NotIn, values: [prod]}]", true),
            ("matchExpressions: [{key: region, operator: NotIn, values: [eu]}]", true),
            ("matchExpressions: [{key: store, operator: Exists}]", true),
            ("matchExpressions: [{key: region, operator: Exists}]", false),
            ("matchExpressions: [{key: region, operator: DoesNotExist}]", true),
            ("{matchLabels: {env: qa}, matchExpressions: [{key: store, operator: DoesNotExist}]}", false),
        ];
        for (yaml, want) in table {
            assert_eq!(selector(yaml).matches(&node), *want, "{yaml}");
        }
    }

    #[test]
    fn quantities_parse_exactly_to_thousandths() {
        let table: &[(&str, Result<i128, ()>)] = &[
            ("500m", Ok(500)),
            ("1", Ok(1000)),
            ("0.5", Ok(500)),
            (".5", Ok(500)),
            ("2Gi", Ok(2 * (1 << 30) * 1000)),
            ("1Ki", Ok(1_024_000)),
            ("1e3", Ok(1_000_000)),
            ("1E3", Ok(1_000_000)),
            ("1e-3", Ok(1)),
            ("100M", Ok(100_000_000_000)),
            ("1k", Ok(1_000_000)),
            ("1E", Ok(1_000_000_000_000_000_000_000)),
            ("1n", Ok(1)), // rounded up, as Kubernetes' MilliValue
            ("1500u", Ok(2)),
            ("0", Ok(0)),
            ("-1", Ok(-1000)),
            ("+2", Ok(2000)),
            ("1.5Gi", Ok(1_610_612_736_000)),
            ("", Err(())),
            ("abc", Err(())),
            ("1.2.3", Err(())),
            ("1Gb", Err(())),
            ("1e", Err(())),
            ("1 Gi", Err(())),
            ("m", Err(())),
            ("1e99", Err(())),
        ];
        for (s, want) in table {
            assert_eq!(parse_quantity(s).map_err(|_| ()), *want, "{s:?}");
        }
        assert_eq!(quantity(&json!(2)), Ok(2000), "a chart may write a number");
        assert_eq!(quantity(&json!(0.25)), Ok(250));
        let shown: Vec<String> =
            [("cpu", 500), ("cpu", 2000), ("memory", 2 * (1 << 30) * 1000), ("nvidia.com/gpu", 0), ("memory", 1500)]
                .iter()
                .map(|(r, m)| show_quantity(r, *m))
                .collect();
        assert_eq!(shown, ["500m", "2", "2Gi", "0", "1500m"]);
        assert_eq!(quantity(&json!("lots")).unwrap_err().to_string(), "\"lots\" is not a Kubernetes quantity");
        assert_eq!(quantity(&json!(true)).unwrap_err().to_string(), "true is not a Kubernetes quantity");
        assert_eq!(parse_quantity("1e40").unwrap_err(), QuantityError::TooLarge("\"1e40\"".into()));
    }

    #[test]
    fn statefulset_pods_count_by_update_revision() {
        let sts = json!({"kind": "StatefulSet", "metadata": {"name": "db", "namespace": "ns", "generation": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "db"}}},
            "status": {"observedGeneration": 1, "updateRevision": "db-2", "currentRevision": "db-1", "replicas": 1}});
        let p = |rev: &str| {
            json!({"metadata": {"name": "db-0", "namespace": "ns", "labels": {"app": "db", "controller-revision-hash": rev}},
                "status": {"containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "m"}}}]}})
        };
        let (a, b) = ([p("db-1")], [p("db-2")]);
        assert_eq!(current_pods(&sts, &[], &a).len(), 0);
        assert_eq!(current_pods(&sts, &[], &b).len(), 1);
    }

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
