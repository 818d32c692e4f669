//! From a bundle to the objects the agent wants: which renderer, with what inputs (the decision
//! only; the adapter runs `helm`/`kustomize`), which namespace each object lands in, the
//! ownership labels, and how each image is written (tag policy, digest pin, preflight). Pure:
//! files come in as lists and contents, registry answers as values.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::bundle::{Bundle, Marker};
use crate::fleet::{BundlePolicy, FleetYaml};
use crate::image::ImageRef;
use crate::policy::TagPolicy;
use crate::render::{ImageUse, Manifest};

/// Label on every object the agent applies: the agent identity that owns it.
pub const OWNER_LABEL: &str = "gitops-agent.io/owner";
/// Label naming the bundle (made a valid label value) for selecting what a bundle owns.
pub const BUNDLE_LABEL: &str = "gitops-agent.io/bundle";
/// Annotation with the exact bundle name (labels cannot hold `/`).
pub const BUNDLE_ANNOTATION: &str = "gitops-agent.io/bundle";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "gitops-agent";
/// Namespace of objects when neither `fleet.yaml` nor the object names one (Fleet's default).
pub const DEFAULT_NAMESPACE: &str = "default";

/// How a bundle is rendered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "renderer", rename_all = "camelCase")]
pub enum RenderSpec {
    /// `helm template RELEASE CHART --namespace NAMESPACE --values <values>`; `chart` relative to
    /// the bundle folder.
    Helm { chart: String, release_name: String, namespace: String, values: Value },
    /// `kustomize build DIR`; `dir` relative to the bundle folder.
    Kustomize { dir: String },
    /// Plain manifests, relative to the bundle folder, in this order.
    Raw { files: Vec<String> },
}

/// Everything decided about a bundle before any renderer runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSpec {
    pub render: RenderSpec,
    /// Namespace for namespaced objects that name none.
    pub namespace: String,
    /// Fleet's `namespace`: every namespaced object is put there, whatever it names.
    pub force_namespace: bool,
    pub policy: BundlePolicy,
    /// Names of bundles this one waits for (`dependsOn`).
    pub depends_on: Vec<String>,
    /// The `targetCustomizations` entry used, if any.
    pub target: Option<String>,
}

fn is_manifest(path: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|e| path.ends_with(e))
}

/// A helm release name from a bundle folder: `stack-b/helm` -> `stack-b-helm` (a DNS label of at
/// most 53 characters, Helm's limit).
pub fn default_release_name(bundle_dir: &str) -> String {
    let mut name: String = bundle_dir
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    name.truncate(53);
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() { "bundle".to_owned() } else { name }
}

/// A path written in `fleet.yaml` (`./`, `sub/dir/`), made relative to the bundle and checked
/// to stay inside it.
fn bundle_path(field: &str, raw: &str) -> Result<String, String> {
    if raw.contains("://") || raw.starts_with("oci:") {
        return Err(format!("{field}: {raw:?} is remote; only charts inside the repository are supported"));
    }
    let trimmed = raw.trim_end_matches('/');
    let mut parts = Vec::new();
    for c in trimmed.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("{field}: {raw:?} leaves the bundle")),
            c => parts.push(c),
        }
    }
    if raw.starts_with('/') {
        return Err(format!("{field}: {raw:?} is absolute; write it relative to the bundle"));
    }
    Ok(if parts.is_empty() { ".".into() } else { parts.join("/") })
}

/// Decides how to render `bundle`. `files` are every file of the bundle, relative to its folder;
/// `read_values` parses a values file named relative to the bundle.
pub fn bundle_spec(
    bundle: &Bundle,
    fleet: Option<&FleetYaml>,
    files: &[String],
    labels: &BTreeMap<String, String>,
    read_values: &dyn Fn(&str) -> Result<Value, String>,
) -> Result<BundleSpec, String> {
    let empty = FleetYaml::default();
    let fleet = fleet.unwrap_or(&empty);
    let has = |name: &str| files.iter().any(|f| f == name);
    let target = fleet.target_for(labels);
    let namespace = fleet
        .namespace
        .clone()
        .or_else(|| fleet.default_namespace.clone())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let namespace = crate::fleet::expand_cluster_labels(&namespace, labels)?;
    let chart = fleet.helm.as_ref().and_then(|h| h.chart.as_deref());
    let kustomize_dir = target
        .and_then(|t| t.kustomize.as_ref())
        .and_then(|k| k.dir.as_deref())
        .or_else(|| fleet.kustomize.as_ref().and_then(|k| k.dir.as_deref()));
    let is_kustomization = |dir: &str| {
        ["kustomization.yaml", "kustomization.yml", "Kustomization"]
            .iter()
            .any(|k| has(&if dir == "." { (*k).to_owned() } else { format!("{dir}/{k}") }))
    };
    let render = match bundle.marker {
        Marker::Chart => helm(".", fleet, bundle, &namespace, labels, read_values)?,
        Marker::Fleet if chart.is_some() || has("Chart.yaml") => {
            let chart = bundle_path("helm.chart", chart.unwrap_or("."))?;
            let chart_file = if chart == "." { "Chart.yaml".to_owned() } else { format!("{chart}/Chart.yaml") };
            if !has(&chart_file) {
                return Err(format!("helm.chart: {chart:?} holds no Chart.yaml"));
            }
            helm(&chart, fleet, bundle, &namespace, labels, read_values)?
        }
        Marker::Kustomization => RenderSpec::Kustomize { dir: ".".into() },
        Marker::Fleet if kustomize_dir.is_some() || is_kustomization(".") => {
            let dir = bundle_path("kustomize.dir", kustomize_dir.unwrap_or("."))?;
            if !is_kustomization(&dir) {
                return Err(format!("kustomize.dir: {dir:?} holds no kustomization.yaml"));
            }
            RenderSpec::Kustomize { dir }
        }
        // Fleet's raw bundle: every manifest below the folder except fleet.yaml itself.
        Marker::Fleet => RenderSpec::Raw {
            files: files.iter().filter(|f| is_manifest(f) && f.as_str() != "fleet.yaml").cloned().collect(),
        },
        // A raw folder owns its own files only; subfolders are bundles of their own.
        Marker::Raw => {
            RenderSpec::Raw { files: files.iter().filter(|f| is_manifest(f) && !f.contains('/')).cloned().collect() }
        }
    };
    Ok(BundleSpec {
        render,
        namespace,
        force_namespace: fleet.namespace.is_some(),
        policy: fleet.gitops_agent.clone(),
        depends_on: fleet.depends_on.iter().map(|d| d.name.clone()).collect(),
        target: target.map(|t| t.name.clone().unwrap_or_else(|| "(unnamed)".into())),
    })
}

fn helm(
    chart: &str,
    fleet: &FleetYaml,
    bundle: &Bundle,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    read_values: &dyn Fn(&str) -> Result<Value, String>,
) -> Result<RenderSpec, String> {
    let values = fleet.values_for(labels, read_values)?;
    let release_name =
        fleet.helm.as_ref().and_then(|h| h.release_name.clone()).unwrap_or_else(|| default_release_name(&bundle.dir));
    Ok(RenderSpec::Helm { chart: chart.to_owned(), release_name, namespace: namespace.to_owned(), values })
}

/// Kinds that have no namespace, for when the API server's discovery is not at hand (`agent
/// render` without a cluster). With a cluster, discovery decides.
pub fn is_cluster_scoped_builtin(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    matches!(
        (group, kind),
        ("", "Namespace" | "Node" | "PersistentVolume" | "ComponentStatus")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding")
            | ("storage.k8s.io", "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment")
            | ("scheduling.k8s.io", "PriorityClass")
            | ("networking.k8s.io", "IngressClass")
            | ("node.k8s.io", "RuntimeClass")
            | ("admissionregistration.k8s.io", _)
            | ("apiregistration.k8s.io", "APIService")
            | ("certificates.k8s.io", "CertificateSigningRequest")
            | ("flowcontrol.apiserver.k8s.io", _)
    )
}

/// Puts namespaced objects in `namespace`: those naming none, or all of them when `force`.
/// `namespaced(apiVersion, kind)` answers from discovery (or the built-in list).
pub fn assign_namespace(
    manifests: &mut [Manifest],
    namespace: &str,
    force: bool,
    namespaced: &dyn Fn(&str, &str) -> bool,
) {
    for m in manifests {
        let api_version = m.object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = m.object["kind"].as_str().unwrap_or_default().to_owned();
        let Some(meta) = m.object.get_mut("metadata").and_then(Value::as_object_mut) else { continue };
        if !namespaced(&api_version, &kind) {
            meta.remove("namespace");
        } else if force || meta.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty) {
            meta.insert("namespace".into(), Value::String(namespace.to_owned()));
        }
    }
}

/// A bundle name as a label value: at most 63 characters of `[a-z0-9A-Z-_.]`, alphanumeric at
/// both ends; long names keep a hash of the full name so two bundles never share a value.
pub fn bundle_label_value(bundle: &str) -> String {
    let clean: String = bundle
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '.' })
        .collect();
    let clean = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned();
    let clean = if clean.is_empty() { "root".to_owned() } else { clean };
    if clean.len() <= 63 {
        return clean;
    }
    let hash = crate::tree::cache_name(bundle);
    let suffix = hash.rsplit('-').next().unwrap_or("0");
    let keep = 63 - suffix.len() - 1;
    format!("{}-{suffix}", clean[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
}

/// Adds the ownership labels and annotation to every object.
pub fn label_owned(manifests: &mut [Manifest], owner: &str, bundle: &str) {
    for m in manifests {
        let Some(meta) = m.object.get_mut("metadata").and_then(Value::as_object_mut) else { continue };
        let labels = meta.entry("labels").or_insert_with(|| Value::Object(Map::new()));
        if let Some(l) = labels.as_object_mut() {
            l.insert(OWNER_LABEL.into(), Value::String(owner.to_owned()));
            l.insert(BUNDLE_LABEL.into(), Value::String(bundle_label_value(bundle)));
        }
        let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(BUNDLE_ANNOTATION.into(), Value::String(bundle.to_owned()));
        }
    }
}

/// Annotation naming the bundle a namespace was created for (the agent creates a bundle's
/// missing target namespace, as Fleet does).
pub const CREATED_FOR_ANNOTATION: &str = "gitops-agent.io/created-for";

/// The namespaces a bundle's objects go to that it does not render itself, each as the
/// Namespace the agent creates when it is missing: labelled as ours (the owner label) and
/// annotated with the bundle it was made for, but without the bundle label and annotation, so
/// [`ownership`] names no bundle and no prune or rollback ever deletes it. Sorted by name.
pub fn namespaces_to_create(objects: &[Value], owner: &str, bundle: &str) -> Vec<Value> {
    let rendered: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["apiVersion"] == "v1" && o["kind"] == "Namespace")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    let wanted: BTreeSet<&str> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .filter(|ns| !ns.is_empty() && !rendered.contains(ns))
        .collect();
    wanted
        .into_iter()
        .map(|ns| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "labels": {OWNER_LABEL: owner},
                    "annotations": {CREATED_FOR_ANNOTATION: bundle},
                },
            })
        })
        .collect()
}

/// The owner and bundle an object's labels name, if the agent applied it.
pub fn ownership(object: &Value) -> Option<(String, String)> {
    let meta = &object["metadata"];
    let owner = meta["labels"][OWNER_LABEL].as_str()?;
    let bundle = meta["annotations"][BUNDLE_ANNOTATION].as_str().or_else(|| meta["labels"][BUNDLE_LABEL].as_str())?;
    Some((owner.to_owned(), bundle.to_owned()))
}

/// One distinct image of a bundle and what to ask the registry about it.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// As the renderer wrote it.
    pub written: String,
    pub image: ImageRef,
    /// Where it is used (`Kind/ns/name` container), for messages.
    pub used_by: Vec<String>,
    /// The policy whose tag replaces the written one; `None` keeps the written tag.
    pub policy: Option<TagPolicy>,
}

/// Problems that block a bundle before anything is asked of a registry.
pub fn image_requests(
    uses: &[ImageUse],
    policy: &BundlePolicy,
    same_registry: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<ImageRequest>, Vec<String>> {
    let mut by_written: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for u in uses {
        let kind = if u.init { "initContainer" } else { "container" };
        by_written.entry(&u.image).or_default().push(format!("{} {kind} {}", u.object, u.container));
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (written, used_by) in by_written {
        let image = match ImageRef::parse(written) {
            Ok(i) => i,
            Err(e) => {
                problems.push(format!("{e} (in {})", used_by.join(", ")));
                continue;
            }
        };
        let matching = policy.images.iter().find(|p| {
            ImageRef::parse(&p.repository)
                .is_ok_and(|r| r.repository == image.repository && same_registry(&r.registry, &image.registry))
        });
        let tag_policy = match matching.map(|p| TagPolicy::new(&p.policy)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                problems.push(format!("policy for {}: {e}", image.name()));
                continue;
            }
        };
        out.push(ImageRequest { written: written.to_owned(), image, used_by, policy: tag_policy });
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// What the registry said about one requested image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The tag to run (the policy's choice or the written tag) and its digest.
    Found { tag: Option<String>, digest: String },
    /// The image (tag or digest) is not in the registry.
    Missing { reference: String },
    /// The policy chose nothing from the repository's tags.
    NoTagMatches { tags: usize },
    /// The registry did not answer, or answered with a fault of its own (429, 5xx), after the
    /// client's retries: says nothing about the bundle. `status` is its HTTP status, if any.
    Unavailable { message: String, status: Option<u16> },
    /// Any other failure (authentication, a protocol error), as a message that names the URL.
    Failed { message: String },
}

/// Whether an image is written with the digest resolved for it: as the bundle's `pinDigests`
/// says, except that an image whose signatures a policy checks is always pinned. A tag alone
/// would let the kubelet pull whatever the tag points at when it pulls, signed or not: the digest
/// verified is the one that runs, whatever a commit sets.
pub fn must_pin(pin_digests: bool, signatures_checked: bool) -> bool {
    pin_digests || signatures_checked
}

/// Why preflight stopped a bundle: the problems, one per image, and the environment fault
/// behind them when that is all there is (every image not resolved met an unavailable
/// registry, nothing else was wrong): then the bundle is retried, not blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub problems: Vec<String>,
    pub fault: Option<crate::fault::Environment>,
}

/// The image written into desired objects, per written reference, or why the bundle is blocked.
/// An image that already carries a digest keeps it (after the registry confirmed it exists);
/// `pin` says which others are written with their digest (see [`must_pin`]).
pub fn pin_images(
    requests: &[ImageRequest],
    resolutions: &[Resolution],
    pin: impl Fn(&ImageRequest) -> bool,
) -> Result<BTreeMap<String, String>, Refused> {
    let mut map = BTreeMap::new();
    let mut blocked = Vec::new();
    // The first environment fault met, and whether anything else was wrong.
    let mut fault = None;
    let mut other = false;
    for (req, res) in requests.iter().zip(resolutions) {
        let users = req.used_by.join(", ");
        match res {
            Resolution::Found { tag, digest }
                if tag.is_none() && req.image.digest.as_ref().is_some_and(|d| d != digest) =>
            {
                other = true;
                blocked.push(format!(
                    "preflight: the registry answers digest {digest} for {} (used by {users})",
                    req.written
                ));
            }
            Resolution::Found { tag, digest } => {
                let mut image = ImageRef { tag: tag.clone().or_else(|| req.image.tag.clone()), ..req.image.clone() };
                image.digest = if pin(req) || req.image.digest.is_some() { Some(digest.clone()) } else { None };
                let text = image.to_string();
                if text != req.written {
                    map.insert(req.written.clone(), text);
                }
            }
            Resolution::Missing { reference } => {
                other = true;
                blocked.push(format!("preflight: image {reference} is not in the registry (used by {users})"));
            }
            Resolution::NoTagMatches { tags } => {
                other = true;
                blocked.push(format!(
                    "preflight: no tag of {} matches its policy ({tags} tags considered; used by {users})",
                    req.image.name()
                ));
            }
            Resolution::Unavailable { message, status } => {
                blocked.push(format!("preflight: {}: {message}", req.written));
                match crate::fault::classify(*status, message) {
                    crate::fault::Cause::Environment(e) => fault = fault.or(Some(e)),
                    crate::fault::Cause::Revision => other = true,
                }
            }
            Resolution::Failed { message } => {
                other = true;
                blocked.push(format!("preflight: {}: {message}", req.written));
            }
        }
    }
    if blocked.is_empty() {
        return Ok(map);
    }
    Err(Refused { problems: blocked, fault: if other { None } else { fault } })
}

/// Ids of objects that differ between two renders of the same input (or exist in only one):
/// the sign of a chart using `randAlphaNum`, `now` or `uuidv4`.
pub fn unstable_objects(first: &[Manifest], second: &[Manifest]) -> Vec<String> {
    let index =
        |ms: &[Manifest]| -> BTreeMap<String, Value> { ms.iter().map(|m| (m.id(), m.object.clone())).collect() };
    let (a, b) = (index(first), index(second));
    let ids: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    ids.into_iter().filter(|id| a.get(*id) != b.get(*id)).cloned().collect()
}

/// Apply order: what others need comes first (namespaces, CRDs, identities and config, then
/// services), then workloads, then what refers to workloads (autoscalers, budgets, custom
/// resources). Stable within a rank, so the render order decides among equals.
pub fn apply_rank(api_version: &str, kind: &str) -> u8 {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "PriorityClass" | "StorageClass" | "ServiceAccount" | "ClusterRole" | "Role" | "ClusterRoleBinding"
        | "RoleBinding" | "LimitRange" | "ResourceQuota" => 2,
        "ConfigMap" | "Secret" | "PersistentVolume" | "PersistentVolumeClaim" => 3,
        "Service" => 4,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob" | "Pod"
            if matches!(group, "" | "apps" | "batch") =>
        {
            5
        }
        _ => 6,
    }
}

/// `manifests` sorted into apply order ([`apply_rank`]).
pub fn in_apply_order(manifests: &mut [Manifest]) {
    manifests.sort_by_key(|m| {
        apply_rank(m.object["apiVersion"].as_str().unwrap_or_default(), m.object["kind"].as_str().unwrap_or_default())
    });
}

/// Leaves `spec.replicas` to the autoscaler: a workload that an HorizontalPodAutoscaler of the
/// bundle scales is applied without `replicas`, so our field manager does not own it and each
/// apply does not reset the scale. Returns the ids changed.
pub fn release_autoscaled_replicas(manifests: &mut [Manifest]) -> Vec<String> {
    let targets: Vec<(String, String, String)> = manifests
        .iter()
        .filter(|m| m.object["kind"] == "HorizontalPodAutoscaler")
        .filter_map(|m| {
            let t = &m.object["spec"]["scaleTargetRef"];
            Some((
                m.object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                t["kind"].as_str()?.to_owned(),
                t["name"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let mut changed = Vec::new();
    for m in manifests.iter_mut() {
        let key = (
            m.object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            m.object["kind"].as_str().unwrap_or_default().to_owned(),
            m.object["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        if targets.contains(&key)
            && let Some(spec) = m.object["spec"].as_object_mut()
            && spec.remove("replicas").is_some()
        {
            changed.push(m.id());
        }
    }
    changed
}

/// The blast radius of a bundle: every object must be in an allowed namespace and of an allowed
/// kind. Returns one reason per object outside it (nothing of the bundle is applied then).
pub fn check_scope(manifests: &[Manifest], own_namespace: &str, policy: &BundlePolicy) -> Result<(), Vec<String>> {
    let created: Vec<&str> = manifests
        .iter()
        .filter(|m| m.object["kind"] == "Namespace" && m.object["apiVersion"] == "v1")
        .filter_map(|m| m.object["metadata"]["name"].as_str())
        .collect();
    let ns_allowed = |ns: &str| match &policy.allowed_namespaces {
        Some(list) => list.iter().any(|a| a == "*" || a == ns),
        None => ns == own_namespace || created.contains(&ns),
    };
    let mut problems = Vec::new();
    for m in manifests {
        let api_version = m.object["apiVersion"].as_str().unwrap_or_default();
        let kind = m.object["kind"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        if let Some(kinds) = &policy.allowed_kinds {
            let qualified = if group.is_empty() { kind.to_owned() } else { format!("{group}/{kind}") };
            if !kinds.iter().any(|k| k == kind || *k == qualified) {
                problems.push(format!(
                    "{} ({}): kind {qualified} is not in gitopsAgent.allowedKinds [{}]",
                    m.id(),
                    m.source,
                    kinds.join(", ")
                ));
            }
        }
        // A Namespace object is in the namespace it creates.
        let ns = match (kind, api_version) {
            ("Namespace", "v1") => m.object["metadata"]["name"].as_str(),
            _ => m.object["metadata"]["namespace"].as_str(),
        };
        if let Some(ns) = ns
            && !ns_allowed(ns)
        {
            let allowed = match &policy.allowed_namespaces {
                Some(list) => format!("gitopsAgent.allowedNamespaces [{}]", list.join(", ")),
                None => {
                    format!("the bundle's namespace {own_namespace:?} (set gitopsAgent.allowedNamespaces to widen it)")
                }
            };
            problems.push(format!("{} ({}): namespace {ns:?} is outside {allowed}", m.id(), m.source));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Bundles in an order where each comes after the bundles it `dependsOn` (a dependency is named
/// by its folder, or by Fleet's bundle name: the folder with `/` as `-`); among independent
/// bundles the given order holds. A cycle or an unknown dependency is an error naming it.
/// Returns the order and, per bundle, the indices of the bundles it depends on.
pub fn bundle_order(bundles: &[(String, Vec<String>)]) -> Result<(Vec<usize>, Vec<Vec<usize>>), String> {
    let find = |name: &str| {
        bundles
            .iter()
            .position(|(dir, _)| dir == name || dir.replace('/', "-") == name || dir.ends_with(&format!("/{name}")))
    };
    let mut deps = Vec::new();
    for (dir, on) in bundles {
        let mut d = Vec::new();
        for name in on {
            d.push(find(name).ok_or_else(|| format!("bundle {dir} depends on {name:?}, which is not a bundle here"))?);
        }
        deps.push(d);
    }
    let mut order = Vec::new();
    let mut state = vec![0u8; bundles.len()]; // 0 new, 1 visiting, 2 done
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        order: &mut Vec<usize>,
        path: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                path.push(i);
                return Err(path.clone());
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for &d in &deps[i] {
            visit(d, deps, state, order, path)?;
        }
        path.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..bundles.len() {
        visit(i, &deps, &mut state, &mut order, &mut Vec::new()).map_err(|cycle| {
            let start = cycle.iter().position(|c| Some(c) == cycle.last()).unwrap_or(0);
            let names: Vec<&str> = cycle[start..].iter().map(|&c| bundles[c].0.as_str()).collect();
            format!("dependsOn forms a cycle: {}", names.join(" -> "))
        })?;
    }
    Ok((order, deps))
}

#[cfg(test)]
mod namespace_tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, name: &str, ns: Option<&str>) -> Value {
        let mut o = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}});
        if let Some(ns) = ns {
            o["metadata"]["namespace"] = json!(ns);
        }
        o
    }

    #[test]
    fn a_bundles_target_namespaces_are_created_labelled_as_ours_unless_it_renders_them() {
        // (case, objects, namespaces to create)
        let cases: Vec<(&str, Vec<Value>, Vec<&str>)> = vec![
            (
                "one target namespace",
                vec![obj("ConfigMap", "a", Some("kiosk")), obj("Service", "b", Some("kiosk"))],
                vec!["kiosk"],
            ),
            (
                "several, sorted",
                vec![obj("ConfigMap", "a", Some("zz")), obj("ConfigMap", "b", Some("aa"))],
                vec!["aa", "zz"],
            ),
            (
                "a Namespace the bundle renders is applied, not created",
                vec![obj("Namespace", "kiosk", None), obj("ConfigMap", "a", Some("kiosk"))],
                vec![],
            ),
            ("cluster-scoped objects need none", vec![obj("ClusterRole", "r", None)], vec![]),
            ("nothing", vec![], vec![]),
        ];
        for (case, objects, want) in cases {
            let got = namespaces_to_create(&objects, "store-1", "apps/web");
            let names: Vec<&str> = got.iter().map(|n| n["metadata"]["name"].as_str().unwrap()).collect();
            assert_eq!(names, want, "{case}");
            for n in &got {
                assert_eq!((n["apiVersion"].as_str(), n["kind"].as_str()), (Some("v1"), Some("Namespace")), "{case}");
                assert_eq!(n["metadata"]["labels"][OWNER_LABEL], "store-1", "{case}: labelled as ours");
                assert_eq!(n["metadata"]["annotations"][CREATED_FOR_ANNOTATION], "apps/web", "{case}");
                // Never a bundle's object: no prune, no rollback deletion selects it.
                assert_eq!(ownership(n), None, "{case}");
                assert!(n["metadata"]["labels"].get(BUNDLE_LABEL).is_none(), "{case}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::parse_manifests;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn no_values(name: &str) -> Result<Value, String> {
        Err(format!("{name}: no such file"))
    }

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn spec(marker: Marker, fleet: &str, list: &[&str]) -> Result<BundleSpec, String> {
        let f = if fleet.is_empty() { None } else { Some(crate::fleet::parse(fleet).expect(fleet).0) };
        bundle_spec(&Bundle { dir: "apps/kiosk".into(), marker }, f.as_ref(), &files(list), &labels(&[]), &no_values)
    }

    #[test]
    fn the_renderer_follows_the_bundle_markers() {
        // (marker, fleet.yaml, files, expected renderer description)
        let table: &[(Marker, &str, &[&str], &str)] = &[
            (Marker::Chart, "", &["Chart.yaml", "templates/a.yaml"], "helm . apps-kiosk default"),
            (
                Marker::Fleet,
                "helm: {chart: ./chart/, releaseName: k}\ndefaultNamespace: x\n",
                &["fleet.yaml", "chart/Chart.yaml"],
                "helm chart k x",
            ),
            (Marker::Fleet, "namespace: forced\n", &["fleet.yaml", "Chart.yaml"], "helm . apps-kiosk forced"),
            (Marker::Kustomization, "", &["kustomization.yaml"], "kustomize ."),
            (
                Marker::Fleet,
                "kustomize: {dir: overlays/qa}\n",
                &["fleet.yaml", "overlays/qa/kustomization.yaml"],
                "kustomize overlays/qa",
            ),
            (Marker::Fleet, "defaultNamespace: z\n", &["fleet.yaml", "kustomization.yaml"], "kustomize ."),
            (
                Marker::Fleet,
                "defaultNamespace: z\n",
                &["fleet.yaml", "a.yaml", "sub/b.yml", "README.md"],
                "raw a.yaml,sub/b.yml",
            ),
            (Marker::Raw, "", &["a.yaml", "b.json", "sub/c.yaml"], "raw a.yaml,b.json"),
        ];
        for (marker, fleet, list, want) in table {
            let s = spec(*marker, fleet, list).unwrap_or_else(|e| panic!("{fleet}: {e}"));
            let got = match &s.render {
                RenderSpec::Helm { chart, release_name, namespace, .. } => {
                    format!("helm {chart} {release_name} {namespace}")
                }
                RenderSpec::Kustomize { dir } => format!("kustomize {dir}"),
                RenderSpec::Raw { files } => format!("raw {}", files.join(",")),
            };
            assert_eq!(&got, want, "{marker:?} {fleet}");
        }
    }

    #[test]
    fn bad_renderer_inputs_are_named() {
        let table: &[(&str, &[&str], &str)] = &[
            ("helm: {chart: ../other}\n", &["fleet.yaml"], "helm.chart: \"../other\" leaves the bundle"),
            ("helm: {chart: oci://h/c}\n", &["fleet.yaml"], "helm.chart: \"oci://h/c\" is remote"),
            ("helm: {chart: sub}\n", &["fleet.yaml"], "helm.chart: \"sub\" holds no Chart.yaml"),
            ("kustomize: {dir: k}\n", &["fleet.yaml"], "kustomize.dir: \"k\" holds no kustomization.yaml"),
            (
                "helm: {chart: ./, valuesFiles: [v.yaml]}\n",
                &["fleet.yaml", "Chart.yaml"],
                "values file v.yaml: v.yaml: no such file",
            ),
        ];
        for (fleet, list, want) in table {
            let e = spec(Marker::Fleet, fleet, list).unwrap_err();
            assert!(e.starts_with(want), "{fleet}: {e}");
        }
    }

    #[test]
    fn a_target_can_choose_its_kustomize_overlay_and_is_reported() {
        let fleet = "kustomize: {dir: overlays/prod}\ntargetCustomizations:\n- name: qa\n  clusterSelector: {matchLabels: {env: qa}}\n  kustomize: {dir: overlays/qa}\n";
        let f = crate::fleet::parse(fleet).unwrap().0;
        let list = files(&["fleet.yaml", "overlays/prod/kustomization.yaml", "overlays/qa/kustomization.yaml"]);
        let b = Bundle { dir: "k".into(), marker: Marker::Fleet };
        let qa = bundle_spec(&b, Some(&f), &list, &labels(&[("env", "qa")]), &no_values).unwrap();
        assert_eq!(qa.render, RenderSpec::Kustomize { dir: "overlays/qa".into() });
        assert_eq!(qa.target.as_deref(), Some("qa"));
        let prod = bundle_spec(&b, Some(&f), &list, &labels(&[("env", "prod")]), &no_values).unwrap();
        assert_eq!(prod.render, RenderSpec::Kustomize { dir: "overlays/prod".into() });
        assert_eq!(prod.target, None);
    }

    #[test]
    fn release_names_and_label_values_are_valid_kubernetes_names() {
        assert_eq!(default_release_name("stack-b/helm"), "stack-b-helm");
        assert_eq!(default_release_name("."), "bundle");
        assert_eq!(default_release_name("Apps/My_App"), "apps-my-app");
        assert!(default_release_name(&"x".repeat(80)).len() <= 53);
        assert_eq!(bundle_label_value("stack-b/helm"), "stack-b.helm");
        assert_eq!(bundle_label_value("."), "root");
        let long = format!("{}/a", "x".repeat(70));
        let other = format!("{}/b", "x".repeat(70));
        assert!(bundle_label_value(&long).len() <= 63);
        assert_ne!(bundle_label_value(&long), bundle_label_value(&other));
    }

    const OBJECTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: kiosk, namespace: oops}\n---\n\
apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: other}\n---\n\
apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";

    #[test]
    fn namespaces_are_assigned_as_fleet_does() {
        let namespaced = |v: &str, k: &str| !is_cluster_scoped_builtin(v, k);
        let mut ms = parse_manifests(OBJECTS, "x.yaml").unwrap();
        assign_namespace(&mut ms, "kiosk", false, &namespaced);
        let ids: Vec<String> = ms.iter().map(Manifest::id).collect();
        assert_eq!(ids, ["Namespace/kiosk", "ConfigMap/kiosk/a", "ConfigMap/other/b", "Widget/kiosk/w"]);
        assign_namespace(&mut ms, "forced", true, &namespaced);
        let ids: Vec<String> = ms.iter().map(Manifest::id).collect();
        assert_eq!(ids, ["Namespace/kiosk", "ConfigMap/forced/a", "ConfigMap/forced/b", "Widget/forced/w"]);
    }

    #[test]
    fn ownership_is_written_and_read_back() {
        let mut ms = parse_manifests(OBJECTS, "x.yaml").unwrap();
        label_owned(&mut ms, "store1", "stack-b/helm");
        for m in &ms {
            assert_eq!(ownership(&m.object), Some(("store1".into(), "stack-b/helm".into())), "{}", m.id());
            assert_eq!(m.object["metadata"]["labels"][BUNDLE_LABEL], "stack-b.helm");
        }
        assert_eq!(ownership(&json!({"metadata": {"labels": {"app": "x"}}})), None);
    }

    fn uses(images: &[(&str, bool)]) -> Vec<ImageUse> {
        images
            .iter()
            .enumerate()
            .map(|(i, (image, init))| ImageUse {
                object: format!("Deployment/ns/d{i}"),
                container: "c".into(),
                init: *init,
                image: (*image).to_owned(),
            })
            .collect()
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn policies_match_by_repository_and_registry_alias() {
        let (policy_fleet, _) = crate::fleet::parse(
            "gitopsAgent:\n  images:\n  - repository: harbor.example/library/app\n    policy: {semver: '>=1.0.0'}\n",
        )
        .unwrap();
        let alias = |a: &str, b: &str| a == b || (a == "harbor.example" && b == "10.0.0.5:443");
        let reqs = image_requests(
            &uses(&[
                ("10.0.0.5:443/library/app:1.0.0", false),
                ("10.0.0.5:443/library/other:1", true),
                ("10.0.0.5:443/library/app:1.0.0", true),
            ]),
            &policy_fleet.gitops_agent,
            &alias,
        )
        .unwrap();
        assert_eq!(reqs.len(), 2, "one request per distinct image");
        assert!(reqs[0].policy.is_some() && reqs[0].used_by.len() == 2, "{reqs:?}");
        assert!(reqs[1].policy.is_none());
        let bad = image_requests(&uses(&[("Harbor/App:1", false)]), &BundlePolicy::default(), &alias).unwrap_err();
        assert!(bad[0].contains("\"Harbor/App:1\"") && bad[0].contains("Deployment/ns/d0"), "{bad:?}");
    }

    #[test]
    fn pinning_and_preflight_decisions() {
        let reqs = image_requests(
            &uses(&[("h.example/a:1.0", false), (&format!("h.example/b@{DIGEST}"), false)]),
            &BundlePolicy::default(),
            &|a, b| a == b,
        )
        .unwrap();
        let found = [
            Resolution::Found { tag: Some("1.1".into()), digest: DIGEST.into() },
            Resolution::Found { tag: None, digest: DIGEST.into() },
        ];
        let map = pin_images(&reqs, &found, |_| true).unwrap();
        assert_eq!(map.get("h.example/a:1.0").map(String::as_str), Some(format!("h.example/a:1.1@{DIGEST}").as_str()));
        assert!(!map.contains_key(&format!("h.example/b@{DIGEST}")), "already pinned: unchanged");
        let unpinned = pin_images(&reqs, &found, |_| false).unwrap();
        assert_eq!(unpinned.get("h.example/a:1.0").map(String::as_str), Some("h.example/a:1.1"));
        // `pinDigests: false`, but a policy checks a's signatures: the verified digest is written.
        let verified = pin_images(&reqs, &found, |r| must_pin(false, r.image.repository == "a")).unwrap();
        assert_eq!(
            verified.get("h.example/a:1.0").map(String::as_str),
            Some(format!("h.example/a:1.1@{DIGEST}").as_str())
        );
        for (pin_digests, checked, pinned) in
            [(true, false, true), (false, true, true), (true, true, true), (false, false, false)]
        {
            assert_eq!(
                must_pin(pin_digests, checked),
                pinned,
                "pinDigests {pin_digests}, signatures checked {checked}"
            );
        }

        let other = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let mismatch =
            pin_images(&reqs[1..], &[Resolution::Found { tag: None, digest: other.into() }], |_| true).unwrap_err();
        assert_eq!(mismatch.fault, None, "a digest the registry contradicts is the bundle's problem");
        assert_eq!(
            mismatch.problems,
            [format!(
                "preflight: the registry answers digest {other} for h.example/b@{DIGEST} (used by Deployment/ns/d1 container c)"
            )]
        );

        let blocked = pin_images(
            &reqs,
            &[Resolution::Missing { reference: "h.example/a:1.0".into() }, Resolution::NoTagMatches { tags: 7 }],
            |_| true,
        )
        .unwrap_err();
        assert_eq!(
            blocked.problems,
            [
                "preflight: image h.example/a:1.0 is not in the registry (used by Deployment/ns/d0 container c)",
                "preflight: no tag of h.example/b matches its policy (7 tags considered; used by Deployment/ns/d1 container c)"
            ]
        );
        assert_eq!(blocked.fault, None);
    }

    #[test]
    fn a_registry_that_does_not_answer_is_an_environment_fault_unless_something_else_is_wrong() {
        use crate::fault::Environment::*;
        let reqs = image_requests(
            &uses(&[("h.example/a:1.0", false), ("h.example/b:2.0", false)]),
            &BundlePolicy::default(),
            &|a, b| a == b,
        )
        .unwrap();
        let found = || Resolution::Found { tag: None, digest: DIGEST.into() };
        let down = |status: Option<u16>, message: &str| Resolution::Unavailable { message: message.into(), status };
        let refused =
            || Resolution::Failed { message: "h.example: authentication failed for \"store\" (HTTP 401)".into() };
        let missing = || Resolution::Missing { reference: "h.example/b:2.0".into() };
        // (case, resolutions, the fault behind the refusal: None = blocked for what it is)
        let table: Vec<(&str, Vec<Resolution>, Option<crate::fault::Environment>)> = vec![
            (
                "connection refused",
                vec![found(), down(None, "https://h.example/v2/: cannot connect: refused")],
                Some(Unreachable),
            ),
            (
                "timed out",
                vec![down(None, "https://h.example/v2/: cannot connect: operation timed out"), found()],
                Some(Timeout),
            ),
            (
                "HTTP 503",
                vec![down(Some(503), "https://h.example/v2/a/manifests/1.0: HTTP 503"), found()],
                Some(ServerError),
            ),
            (
                "HTTP 429",
                vec![found(), down(Some(429), "https://h.example/v2/b/manifests/2.0: HTTP 429")],
                Some(RateLimited),
            ),
            ("both down", vec![down(Some(502), "HTTP 502"), down(None, "cannot connect")], Some(ServerError)),
            ("down and a tag not pushed", vec![down(Some(503), "HTTP 503"), missing()], None),
            ("down and refused credentials", vec![refused(), down(Some(503), "HTTP 503")], None),
        ];
        for (case, resolutions, want) in table {
            let err = pin_images(&reqs, &resolutions, |_| true).expect_err(case);
            assert_eq!(err.fault, want, "{case}: {err:?}");
            assert!(err.problems.iter().all(|p| p.starts_with("preflight: ")), "{case}: {err:?}");
        }
    }

    #[test]
    fn unstable_renders_are_named() {
        let a =
            parse_manifests("kind: Secret\napiVersion: v1\nmetadata: {name: s}\ndata: {p: YWJj}\n", "s.yaml").unwrap();
        let b =
            parse_manifests("kind: Secret\napiVersion: v1\nmetadata: {name: s}\ndata: {p: eHl6}\n", "s.yaml").unwrap();
        assert_eq!(unstable_objects(&a, &b), ["Secret/s"]);
        assert!(unstable_objects(&a, &a).is_empty());
    }

    fn m(v: Value) -> Manifest {
        Manifest { source: "t.yaml".into(), object: v }
    }

    #[test]
    fn objects_are_applied_namespaces_and_crds_first_workloads_late() {
        let mut ms = vec![
            m(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"}})),
            m(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}})),
            m(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})),
            m(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})),
            m(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})),
            m(
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "crd"}}),
            ),
            m(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c2"}})),
            m(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}})),
            m(json!({"apiVersion": "example.com/v1", "kind": "Deployment", "metadata": {"name": "not-apps"}})),
        ];
        in_apply_order(&mut ms);
        let ids: Vec<String> = ms.iter().map(Manifest::id).collect();
        assert_eq!(
            ids,
            [
                "Namespace/n",
                "CustomResourceDefinition/crd",
                "ConfigMap/c",
                "ConfigMap/c2",
                "Service/s",
                "Deployment/d",
                "HorizontalPodAutoscaler/h",
                "Widget/w",
                "Deployment/not-apps"
            ]
        );
    }

    #[test]
    fn an_autoscaled_workload_is_applied_without_replicas() {
        let mut ms = vec![
            m(
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "a"}, "spec": {"replicas": 2}}),
            ),
            m(
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "b"}, "spec": {"replicas": 2}}),
            ),
            m(
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "db", "namespace": "a"}, "spec": {"replicas": 1}}),
            ),
            m(
                json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "a"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}),
            ),
        ];
        assert_eq!(release_autoscaled_replicas(&mut ms), ["Deployment/a/web"]);
        assert!(ms[0].object["spec"].get("replicas").is_none());
        assert_eq!(ms[1].object["spec"]["replicas"], 2, "same name, other namespace");
        assert_eq!(ms[2].object["spec"]["replicas"], 1);
    }

    #[test]
    fn the_scope_check_names_each_object_outside_the_blast_radius() {
        let ms = vec![
            m(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "kiosk"}})),
            m(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "extra"}})),
            m(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "extra"}})),
            m(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "kube-system"}})),
            m(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}})),
        ];
        let default = BundlePolicy::default();
        let err = check_scope(&ms, "kiosk", &default).unwrap_err();
        assert_eq!(
            err,
            [
                "ConfigMap/kube-system/c (t.yaml): namespace \"kube-system\" is outside the bundle's namespace \"kiosk\" (set gitopsAgent.allowedNamespaces to widen it)"
            ]
        );
        let narrow = BundlePolicy {
            allowed_namespaces: Some(vec!["kiosk".into()]),
            allowed_kinds: Some(vec!["ConfigMap".into(), "Namespace".into()]),
            ..Default::default()
        };
        let err = check_scope(&ms, "kiosk", &narrow).unwrap_err();
        assert_eq!(err.len(), 4, "{err:#?}");
        assert!(err[0].starts_with(
            "Namespace/extra (t.yaml): namespace \"extra\" is outside gitopsAgent.allowedNamespaces [kiosk]"
        ));
        assert!(err[3].contains(
            "kind rbac.authorization.k8s.io/ClusterRole is not in gitopsAgent.allowedKinds [ConfigMap, Namespace]"
        ));
        let any = BundlePolicy { allowed_namespaces: Some(vec!["*".into()]), ..Default::default() };
        assert_eq!(check_scope(&ms, "kiosk", &any), Ok(()));
    }

    #[test]
    fn bundles_come_after_what_they_depend_on() {
        let b = |dir: &str, on: &[&str]| (dir.to_owned(), on.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (order, deps) = bundle_order(&[b("app", &["infra-crds"]), b("extras", &[]), b("infra/crds", &[])]).unwrap();
        assert_eq!(order, [2, 0, 1]);
        assert_eq!(deps, [vec![2], vec![], vec![]]);
        assert_eq!(
            bundle_order(&[b("a", &["b"]), b("b", &["c"]), b("c", &["a"])]).unwrap_err(),
            "dependsOn forms a cycle: a -> b -> c -> a"
        );
        assert_eq!(
            bundle_order(&[b("a", &["nope"])]).unwrap_err(),
            "bundle a depends on \"nope\", which is not a bundle here"
        );
    }
}
