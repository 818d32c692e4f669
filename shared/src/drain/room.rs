//! Room for a surge pod: an estimate of the scheduler's resource fit, the same before and after
//! a rollout (see the rules in the module docs of `drain`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Room, plural};
use crate::k8s::{
    Container, Node, NodeRequirement, Pod, PodSpec, Taint, Toleration, Workload, owns, quantity, selector_of,
    show_quantity, workload_kind,
};

/// Resource name -> thousandths.
type Resources = BTreeMap<String, i128>;

fn add(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn max_into(into: &mut Resources, from: &Resources) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

/// A container's requests, its limits standing in for missing ones.
fn container_requests(c: &Container, what: &str) -> Result<Resources, String> {
    let mut out = Resources::new();
    for (source, quantities) in [("limits", &c.resources.limits), ("requests", &c.resources.requests)] {
        for (k, v) in quantities {
            let q = quantity(v)
                .map_err(|e| format!("{what}: container {}: {source}.{k}: {e}", c.name.as_deref().unwrap_or("?")))?;
            out.insert(k.clone(), q);
        }
    }
    Ok(out)
}

/// A pod's request from its spec (see the module docs).
fn pod_requests(spec: &PodSpec, what: &str) -> Result<Resources, String> {
    let mut containers = Resources::new();
    for c in &spec.containers {
        add(&mut containers, &container_requests(c, what)?);
    }
    let mut sidecars = Resources::new();
    let mut init_peak = Resources::new();
    for c in &spec.init_containers {
        let r = container_requests(c, what)?;
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &r);
            max_into(&mut init_peak, &sidecars);
        } else {
            let mut running = sidecars.clone();
            add(&mut running, &r);
            max_into(&mut init_peak, &running);
        }
    }
    add(&mut containers, &sidecars);
    max_into(&mut containers, &init_peak);
    for (k, v) in &spec.overhead {
        let q = quantity(v).map_err(|e| format!("{what}: overhead.{k}: {e}"))?;
        *containers.entry(k.clone()).or_default() += q;
    }
    containers.retain(|_, v| *v != 0);
    containers.insert("pods".into(), 1000);
    Ok(containers)
}

/// A toleration tolerates a taint (Kubernetes' `ToleratesTaint`).
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && Some(effect) != taint.effect.as_deref() {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if Some(key) != taint.key.as_deref() {
        return false;
    }
    exists || toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
}

/// The tolerations the DaemonSet controller adds to its pods.
fn daemonset_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(format!("node.kubernetes.io/{key}")),
        operator: Some("Exists".into()),
        value: None,
        effect: Some(effect.into()),
    };
    let mut out = vec![exists("not-ready", "NoExecute"), exists("unreachable", "NoExecute")];
    for key in ["disk-pressure", "memory-pressure", "pid-pressure", "unschedulable", "network-unavailable"] {
        out.push(exists(key, "NoSchedule"));
    }
    out
}

/// A node selector requirement (`matchExpressions` of node affinity) on a value.
fn requirement_holds(r: &NodeRequirement, value: Option<&str>) -> bool {
    let values: Vec<&str> = r.values.iter().map(String::as_str).collect();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_deref().unwrap_or_default() {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(int), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((value.and_then(int), values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a < b),
        _ => false,
    }
}

/// Whether a node satisfies the pod's `nodeSelector` and required node affinity.
fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = &node.metadata.labels;
    let selector_ok = spec.node_selector.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let terms = &spec.affinity.node_affinity.required.node_selector_terms;
    let affinity_ok = terms.is_empty()
        || terms.iter().any(|t| {
            let (exprs, fields) = (&t.match_expressions, &t.match_fields);
            (!exprs.is_empty() || !fields.is_empty())
                && exprs
                    .iter()
                    .all(|r| requirement_holds(r, r.key.as_ref().and_then(|k| labels.get(k)).map(String::as_str)))
                && fields.iter().all(|r| {
                    r.key.as_deref() == Some("metadata.name") && requirement_holds(r, node.metadata.name.as_deref())
                })
        });
    selector_ok && affinity_ok
}

/// Host ports a pod spec binds (`(protocol, port)`); with `hostNetwork` its container ports.
fn host_ports(spec: &PodSpec) -> BTreeSet<(String, i64)> {
    spec.containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0).or(p.container_port.filter(|_| spec.host_network))?;
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()), port))
        })
        .collect()
}

/// Topology keys of required pod anti-affinity terms that select the workload's own pods: one of
/// its pods per domain of each.
fn self_anti_affinity(workload: &Workload) -> Vec<String> {
    let template = &workload.spec.template;
    let own = &template.metadata.labels;
    let ns = workload.metadata.namespace.as_deref().unwrap_or_default();
    template
        .spec
        .affinity
        .pod_anti_affinity
        .required
        .iter()
        .filter(|t| {
            (t.namespaces.is_empty() || t.namespaces.iter().any(|n| n == ns))
                && t.label_selector.as_ref().is_some_and(|s| s.matches(own))
        })
        .filter_map(|t| t.topology_key.clone())
        .collect()
}

/// One feasible node during the estimate.
struct Slot {
    name: String,
    labels: BTreeMap<String, String>,
    /// Allocatable minus what other pods request.
    free: Resources,
    /// Host ports other pods hold.
    ports: BTreeSet<(String, i64)>,
    /// The workload's pods placed here.
    own: usize,
}

/// Why one more pod does not fit on a slot, `None` when it does.
struct Shortage {
    /// How many resources are short (fewer is closer to fitting).
    count: usize,
    what: String,
    /// A resource is short (the reason then says how many replicas are beside it).
    resources: bool,
}

struct Estimate {
    request: Resources,
    ports: BTreeSet<(String, i64)>,
    spread: Vec<String>,
    slots: Vec<Slot>,
    /// Per topology key and domain: the workload's pods placed there.
    domains: BTreeMap<(String, String), usize>,
    daemonset: bool,
}

impl Estimate {
    fn shortage(&self, i: usize) -> Option<Shortage> {
        let slot = &self.slots[i];
        if let Some(key) = self.spread.iter().find(|k| {
            slot.labels.get(*k).is_some_and(|v| self.domains.get(&((*k).clone(), v.clone())).is_some_and(|n| *n > 0))
        }) {
            return Some(Shortage {
                count: 1,
                what: format!("its required pod anti-affinity allows one pod per {key}"),
                resources: false,
            });
        }
        if let Some((proto, port)) = self.ports.iter().find(|p| slot.own > 0 || slot.ports.contains(p)) {
            let what = if slot.own > 0 {
                format!("hostPort {port}/{proto} allows one pod per node")
            } else {
                format!("hostPort {port}/{proto} is taken by another pod")
            };
            return Some(Shortage { count: 1, what, resources: false });
        }
        // The scarcest resource: the smallest share of the request that is free.
        let short: Vec<(&String, i128, i128)> = self
            .request
            .iter()
            .map(|(k, want)| (k, *want, slot.free.get(k).copied().unwrap_or(0)))
            .filter(|(_, want, free)| want > free)
            .collect();
        let ratio = |want: i128, free: i128| free.max(0) as f64 / want as f64;
        let scarcest = short.iter().min_by(|a, b| ratio(a.1, a.2).total_cmp(&ratio(b.1, b.2)))?;
        let (k, want, free) = scarcest;
        Some(Shortage {
            count: short.len(),
            what: format!("{k} {} requested, {} free", show_quantity(k, *want), show_quantity(k, *free)),
            resources: true,
        })
    }

    fn place(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        for (k, v) in &self.request {
            *slot.free.entry(k.clone()).or_default() -= v;
        }
        slot.own += 1;
        for key in &self.spread {
            if let Some(v) = slot.labels.get(key) {
                *self.domains.entry((key.clone(), v.clone())).or_default() += 1;
            }
        }
    }

    /// Why one more pod fits nowhere: the node closest to fitting (fewest resources short, then
    /// name order) and its scarcest resource.
    fn closest(&self) -> String {
        let shortages = (0..self.slots.len()).filter_map(|i| self.shortage(i).map(|s| (i, s)));
        match shortages.min_by_key(|(_, s)| s.count) {
            Some((i, s)) => self.full(i, &s),
            None => "no node to judge".into(),
        }
    }

    /// The reason one more pod does not fit on slot `i`.
    fn full(&self, i: usize, shortage: &Shortage) -> String {
        let slot = &self.slots[i];
        let pod = match slot.own {
            0 => "a pod",
            1 => "a second pod",
            _ => "one more pod",
        };
        let beside = match (slot.own, self.daemonset) {
            _ if !shortage.resources => String::new(),
            (0, _) => String::new(),
            (_, true) => " beside its own".into(),
            (n, false) => format!(" beside {}", plural(n as u64, "replica", "replicas")),
        };
        format!("{} has no room for {pod}: {}{beside}", slot.name, shortage.what)
    }
}

/// Whether the cluster has room for one more pod of `workload`'s template beside its steady
/// state; `nodes` and `pods` are everything the API server listed. An estimate, with the rules
/// of the module docs.
pub fn room(workload: &Value, nodes: &[Value], pods: &[Value]) -> Room {
    let Some(kind) = workload_kind(workload) else {
        return Room::Unknown { reason: "not a Deployment, StatefulSet or DaemonSet".into() };
    };
    let daemonset = kind == "DaemonSet";
    let workload = Workload::view(workload);
    let spec = &workload.spec.template.spec;
    let request = match pod_requests(spec, "the pod template") {
        Ok(r) => r,
        Err(e) => return Room::Unknown { reason: e },
    };
    let mut tolerations = spec.tolerations.clone();
    if daemonset {
        tolerations.extend(daemonset_tolerations());
    }
    let selector = selector_of(&workload);
    let nodes: Vec<Node> = nodes.iter().map(Node::view).collect();
    let pods: Vec<Pod> = pods.iter().map(Pod::view).collect();
    let mut feasible: Vec<&Node> = nodes
        .iter()
        .filter(|n| daemonset || !n.spec.unschedulable)
        .filter(|n| node_matches(spec, n))
        .filter(|n| {
            n.spec.taints.iter().all(|t| {
                !matches!(t.effect.as_deref(), Some("NoSchedule" | "NoExecute"))
                    || tolerations.iter().any(|tol| tolerates(tol, t))
            })
        })
        .collect();
    feasible.sort_by_key(|n| n.metadata.name.as_deref().unwrap_or_default());
    if feasible.is_empty() {
        return Room::Unknown { reason: "no schedulable node matches the pod's nodeSelector and tolerations".into() };
    }
    let mut slots = Vec::new();
    for node in feasible {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut free = Resources::new();
        for (k, v) in &node.status.allocatable {
            match quantity(v) {
                Ok(q) => free.insert(k.clone(), q),
                Err(e) => return Room::Unknown { reason: format!("node {name}: allocatable.{k}: {e}") },
            };
        }
        let mut ports = BTreeSet::new();
        let on_node = pods.iter().filter(|p| {
            p.spec.node_name.as_deref() == Some(name.as_str())
                && !matches!(p.status.phase.as_deref(), Some("Succeeded" | "Failed"))
                && !owns(&workload, &selector, p)
        });
        for p in on_node {
            let what = format!(
                "pod {}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            );
            match pod_requests(&p.spec, &what) {
                Ok(r) => {
                    for (k, v) in r {
                        *free.entry(k).or_default() -= v;
                    }
                }
                Err(e) => return Room::Unknown { reason: e },
            }
            ports.extend(host_ports(&p.spec));
        }
        slots.push(Slot { name, labels: node.metadata.labels.clone(), free, ports, own: 0 });
    }
    let mut e = Estimate {
        request,
        ports: host_ports(spec),
        spread: self_anti_affinity(&workload),
        slots,
        domains: BTreeMap::new(),
        daemonset,
    };
    if daemonset {
        for i in 0..e.slots.len() {
            e.place(i);
        }
        let failing: Vec<(usize, Shortage)> =
            (0..e.slots.len()).filter_map(|i| e.shortage(i).map(|s| (i, s))).collect();
        return match failing.first() {
            None => Room::Fits { node: e.slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ") },
            Some((i, s)) => Room::Full { reason: e.full(*i, s) },
        };
    }
    let replicas = workload.spec.replicas.unwrap_or(1).max(0);
    for placed in 0..replicas {
        match (0..e.slots.len()).find(|i| e.shortage(*i).is_none()) {
            Some(i) => e.place(i),
            None => return Room::Full { reason: format!("only {placed} of {replicas} replicas fit; {}", e.closest()) },
        }
    }
    match (0..e.slots.len()).find(|i| e.shortage(*i).is_none()) {
        Some(i) => Room::Fits { node: e.slots[i].name.clone() },
        None if e.slots.len() == 1 => Room::Full { reason: e.closest() },
        None => Room::Full { reason: format!("none of {} schedulable nodes has room; {}", e.slots.len(), e.closest()) },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drain::fixtures::*;

    /// What a room row shows, the workload, the nodes, the pods, the expected room.
    type RoomRow = (&'static str, Value, Vec<Value>, Vec<Value>, Room);

    #[test]
    fn room_estimates_the_schedulers_resource_fit() {
        let gpu_full =
            full("store-node-1 has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside 1 replica");
        let other = |node: &str, cpu: &str| {
            pod_on(node, "kube-system", "x", json!({"app": "x"}), json!({"requests": {"cpu": cpu, "memory": "64Mi"}}))
        };
        let tainted = |n: Value, effect: &str| {
            with(n, "/spec/taints", json!([{"key": "dedicated", "value": "kiosk", "effect": effect}]))
        };
        let toleration = json!([{"key": "dedicated", "operator": "Equal", "value": "kiosk", "effect": "NoSchedule"}]);
        let cpu_workload = |cpu: &str| {
            with(kiosk("Deployment"), "/spec/template/spec/containers/0/resources", json!({"requests": {"cpu": cpu}}))
        };
        let no_node =
            Room::Unknown { reason: "no schedulable node matches the pod's nodeSelector and tolerations".into() };
        // (what, workload, nodes, pods, expected)
        let table: Vec<RoomRow> = vec![
            (
                "one GPU, held by the own pod",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 1)],
                vec![own_pod("store-node-1", false)],
                gpu_full.clone(),
            ),
            (
                "one GPU, no own pod yet (first rollout)",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 1)],
                vec![],
                gpu_full.clone(),
            ),
            (
                "one GPU, own pod terminating",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 1)],
                vec![own_pod("store-node-1", true)],
                gpu_full.clone(),
            ),
            (
                "two GPUs",
                kiosk("Deployment"),
                vec![gpu_node("store-node-1", 2)],
                vec![own_pod("store-node-1", false)],
                fits("store-node-1"),
            ),
            (
                "a second one-GPU node",
                kiosk("Deployment"),
                vec![gpu_node("store-node-2", 1), gpu_node("store-node-1", 1)],
                vec![own_pod("store-node-2", false)],
                fits("store-node-2"),
            ),
            (
                "a GPU-less node",
                kiosk("Deployment"),
                vec![node("n", json!({"cpu": "8", "memory": "32Gi", "pods": "110"}))],
                vec![],
                full("only 0 of 1 replicas fit; n has no room for a pod: nvidia.com/gpu 1 requested, 0 free"),
            ),
            (
                "cpu: room",
                cpu_workload("250m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![other("n", "1500m")],
                fits("n"),
            ),
            (
                "cpu: no room",
                cpu_workload("300m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![other("n", "1500m")],
                full("n has no room for a second pod: cpu 300m requested, 200m free beside 1 replica"),
            ),
            (
                "pods that ended hold nothing",
                cpu_workload("300m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![with(other("n", "1500m"), "/status/phase", json!("Succeeded"))],
                fits("n"),
            ),
            (
                "pods of other nodes hold nothing here",
                cpu_workload("300m"),
                vec![node("n", json!({"cpu": "2", "pods": "110"}))],
                vec![other("m", "1500m")],
                fits("n"),
            ),
            (
                "the pods count is a resource too",
                cpu_workload("100m"),
                vec![node("n", json!({"cpu": "2", "pods": "2"}))],
                vec![other("n", "100m")],
                full("n has no room for a second pod: pods 1 requested, 0 free beside 1 replica"),
            ),
            (
                "nodeSelector excludes the node with room",
                with(kiosk("Deployment"), "/spec/template/spec/nodeSelector", json!({"gpu": "a100"})),
                vec![
                    gpu_node("store-node-0", 4),
                    with(gpu_node("store-node-1", 1), "/metadata/labels/gpu", json!("a100")),
                ],
                vec![],
                gpu_full.clone(),
            ),
            (
                "required node affinity excludes it too",
                with(
                    kiosk("Deployment"),
                    "/spec/template/spec/affinity",
                    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]}}}),
                ),
                vec![
                    gpu_node("store-node-0", 4),
                    with(gpu_node("store-node-1", 1), "/metadata/labels/gpu", json!("a100")),
                ],
                vec![],
                gpu_full.clone(),
            ),
            (
                "a taint not tolerated",
                kiosk("Deployment"),
                vec![tainted(gpu_node("n", 2), "NoSchedule")],
                vec![],
                no_node.clone(),
            ),
            (
                "NoExecute too",
                kiosk("Deployment"),
                vec![tainted(gpu_node("n", 2), "NoExecute")],
                vec![],
                no_node.clone(),
            ),
            (
                "PreferNoSchedule does not filter",
                kiosk("Deployment"),
                vec![tainted(gpu_node("n", 2), "PreferNoSchedule")],
                vec![],
                fits("n"),
            ),
            (
                "a tolerated taint",
                with(kiosk("Deployment"), "/spec/template/spec/tolerations", toleration.clone()),
                vec![tainted(gpu_node("n", 2), "NoSchedule")],
                vec![],
                fits("n"),
            ),
            (
                "Exists with no key tolerates all",
                with(kiosk("Deployment"), "/spec/template/spec/tolerations", json!([{"operator": "Exists"}])),
                vec![tainted(gpu_node("n", 2), "NoExecute")],
                vec![],
                fits("n"),
            ),
            (
                "a cordoned node",
                kiosk("Deployment"),
                vec![with(gpu_node("n", 2), "/spec/unschedulable", json!(true))],
                vec![],
                no_node.clone(),
            ),
            (
                "a cordoned node beside one that is not",
                kiosk("Deployment"),
                vec![with(gpu_node("a", 2), "/spec/unschedulable", json!(true)), gpu_node("b", 2)],
                vec![],
                fits("b"),
            ),
            (
                "limits stand in for requests (GPU as a limit only)",
                with(
                    kiosk("Deployment"),
                    "/spec/template/spec/containers/0/resources",
                    json!({"limits": {"cpu": "2", "memory": "1Gi"}}),
                ),
                vec![node("n", json!({"cpu": "3", "memory": "8Gi", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: cpu 2 requested, 1 free beside 1 replica"),
            ),
            (
                "a request wins over its limit",
                with(
                    kiosk("Deployment"),
                    "/spec/template/spec/containers/0/resources",
                    json!({"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}),
                ),
                vec![node("n", json!({"cpu": "3", "pods": "110"}))],
                vec![],
                fits("n"),
            ),
            (
                "the largest init container is the request when larger than the containers",
                with(
                    cpu_workload("100m"),
                    "/spec/template/spec/initContainers",
                    json!([{"name": "i", "resources": {"requests": {"cpu": "1"}}}]),
                ),
                vec![node("n", json!({"cpu": "1500m", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: cpu 1 requested, 500m free beside 1 replica"),
            ),
            (
                "sidecars add to the containers",
                with(
                    cpu_workload("600m"),
                    "/spec/template/spec/initContainers",
                    json!([{"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}}]),
                ),
                vec![node("n", json!({"cpu": "1500m", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: cpu 800m requested, 700m free beside 1 replica"),
            ),
            (
                "several nodes, none with room: the closest is named",
                kiosk("Deployment"),
                vec![
                    gpu_node("a", 1),
                    node("b", json!({"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1", "pods": "110"})),
                ],
                vec![pod_on("b", "ml", "train", json!({}), json!({"limits": {"nvidia.com/gpu": "1"}}))],
                full(
                    "none of 2 schedulable nodes has room; a has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside 1 replica",
                ),
            ),
            (
                "replicas that do not fit at all",
                with(kiosk("Deployment"), "/spec/replicas", json!(3)),
                vec![gpu_node("n", 2)],
                vec![],
                full(
                    "only 2 of 3 replicas fit; n has no room for one more pod: nvidia.com/gpu 1 requested, 0 free beside 2 replicas",
                ),
            ),
            (
                "a hostPort allows one pod per node",
                with(
                    cpu_workload("100m"),
                    "/spec/template/spec/containers/0/ports",
                    json!([{"containerPort": 8080, "hostPort": 8080}]),
                ),
                vec![node("n", json!({"cpu": "8", "pods": "110"}))],
                vec![],
                full("n has no room for a second pod: hostPort 8080/TCP allows one pod per node"),
            ),
            (
                "required anti-affinity against itself: one per hostname",
                with(
                    cpu_workload("100m"),
                    "/spec/template/spec/affinity",
                    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "orchestrator"}}, "topologyKey": "kubernetes.io/hostname"}]}}),
                ),
                vec![node("n", json!({"cpu": "8", "pods": "110"})), node("m", json!({"cpu": "8", "pods": "110"}))],
                vec![],
                fits("n"),
            ),
            (
                "an unparsable quantity makes it unknown",
                cpu_workload("lots"),
                vec![node("n", json!({"cpu": "8", "pods": "110"}))],
                vec![],
                Room::Unknown {
                    reason:
                        "the pod template: container orchestrator: requests.cpu: \"lots\" is not a Kubernetes quantity"
                            .into(),
                },
            ),
            (
                "so does a node's",
                cpu_workload("1"),
                vec![node("n", json!({"cpu": "eight", "pods": "110"}))],
                vec![],
                Room::Unknown { reason: "node n: allocatable.cpu: \"eight\" is not a Kubernetes quantity".into() },
            ),
            ("no nodes", kiosk("Deployment"), vec![], vec![], no_node.clone()),
        ];
        for (what, workload, nodes, pods, want) in table {
            assert_eq!(room(&workload, &nodes, &pods), want, "{what}");
        }
    }

    #[test]
    fn room_is_the_same_before_during_and_after_a_rollout() {
        let nodes = [gpu_node("store-node-1", 2)];
        let first = room(&kiosk("Deployment"), &nodes, &[]);
        let running = room(&kiosk("Deployment"), &nodes, &[own_pod("store-node-1", false)]);
        let mut surge = own_pod("store-node-1", false);
        surge["metadata"]["name"] = json!("orchestrator-def");
        let rolling = room(&kiosk("Deployment"), &nodes, &[own_pod("store-node-1", true), surge]);
        assert_eq!((&first, &running, &rolling), (&fits("store-node-1"), &fits("store-node-1"), &fits("store-node-1")));
        // Another namespace's pod with the same labels is not the workload's own.
        let mut foreign = own_pod("store-node-1", false);
        foreign["metadata"]["namespace"] = json!("lab");
        assert!(matches!(room(&kiosk("Deployment"), &nodes, &[foreign]), Room::Full { .. }));
    }

    #[test]
    fn a_daemonset_needs_room_for_a_second_pod_on_every_node() {
        let ds = kiosk("DaemonSet");
        let table: Vec<(&str, Vec<Value>, Vec<Value>, Room)> = vec![
            ("room on both", vec![gpu_node("b", 2), gpu_node("a", 2)], vec![], fits("a, b")),
            (
                "one node full",
                vec![gpu_node("a", 2), gpu_node("b", 1)],
                vec![own_pod("b", false)],
                full("b has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside its own"),
            ),
            // The DaemonSet controller tolerates cordoned nodes: its pod runs there too.
            (
                "a cordoned node still counts",
                vec![gpu_node("a", 2), with(gpu_node("b", 1), "/spec/unschedulable", json!(true))],
                vec![],
                full("b has no room for a second pod: nvidia.com/gpu 1 requested, 0 free beside its own"),
            ),
        ];
        for (what, nodes, pods, want) in table {
            assert_eq!(room(&ds, &nodes, &pods), want, "{what}");
        }
    }
}
