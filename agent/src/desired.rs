//! One bundle's desired objects at a commit: export the bundle from git, decide how to render it
//! (`shared::desired::bundle_spec`), render, set hooks apart, namespace and label the objects, and
//! resolve every image through the registry (tag policy, digest pin, preflight). The sequencing
//! of I/O lives here; every decision is a `shared` function.
//!
//! A failure blocks only its bundle: the error names the bundle and the stage, and the file and
//! line where the renderer gives them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use shared::bundle::{Bundle, Marker};
use shared::desired::{self as decide, BundleSpec, ImageRequest, Resolution};
use shared::image::ImageRef;
use shared::render::{self, Manifest};

use crate::render::{Capabilities, Renderers};
use crate::source::git::GitSource;
use crate::source::registry::{Registries, RegistryError};

/// The node the objects are for.
#[derive(Debug, Clone)]
pub struct Node {
    /// Written in the owner label.
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
}

/// Where to read bundles from.
#[derive(Clone)]
pub struct Checkout {
    pub git: Arc<GitSource>,
    pub commit: String,
    /// `git.path`, without surrounding slashes; empty for the repository root.
    pub root: String,
    /// The repository's `waves.yaml` at the commit (`Checkout::read_waves`).
    pub waves: RepoWaves,
}

/// The repository-level waves (`shared::waves::REPO_FILE` at the root of `git.path`).
#[derive(Debug, Clone, Default)]
pub enum RepoWaves {
    /// No such file: bundles without their own waves roll out as before.
    #[default]
    None,
    /// The waves, and the file's hash (part of every release it governs).
    Some { waves: Vec<shared::waves::Wave>, hash: String },
    /// The file is there but unreadable or invalid: bundles it would govern are held.
    Broken(String),
}

/// The waves that govern one bundle and where they come from, or why none can be known.
#[derive(Debug, Clone)]
pub struct BundleWaves {
    pub waves: Vec<shared::waves::Wave>,
    pub source: shared::waves::Source,
}

impl Checkout {
    /// What each of `bundle_dirs` renders from at this commit, as one id
    /// (`shared::replan::PlanKey`'s `content`): its folder's tree and the repository's waves file
    /// (its hash, or why it is broken). Read together (one open of the git cache); `None` for a
    /// tree that cannot be read (that bundle is then planned in full).
    pub async fn content_ids(&self, bundle_dirs: &[String]) -> BTreeMap<String, Option<String>> {
        let paths: Vec<String> = bundle_dirs.iter().map(|d| self.repo_path(d)).collect();
        let (git, commit) = (self.git.clone(), self.commit.clone());
        let trees = tokio::task::spawn_blocking(move || git.tree_ids(&commit, &paths)).await;
        let trees = match trees {
            Ok(Ok(t)) => t,
            _ => vec![None; bundle_dirs.len()],
        };
        bundle_dirs.iter().cloned().zip(trees.into_iter().map(|t| t.map(|t| self.content_of(&t)))).collect()
    }

    /// [`Checkout::content_ids`] of a bundle whose tree is `tree`.
    fn content_of(&self, tree: &str) -> String {
        let waves = match &self.waves {
            RepoWaves::None => "",
            RepoWaves::Some { hash, .. } => hash.as_str(),
            RepoWaves::Broken(why) => why.as_str(),
        };
        format!("{tree} {waves}")
    }

    /// The repository path of a bundle folder.
    pub fn repo_path(&self, bundle_dir: &str) -> String {
        match (self.root.as_str(), bundle_dir) {
            ("" | ".", d) => d.to_owned(),
            (r, ".") => r.to_owned(),
            (r, d) => format!("{r}/{d}"),
        }
    }

    /// Reads the repository's `waves.yaml` (absent is no error; invalid is kept as the reason
    /// the bundles it governs are held).
    pub async fn read_waves(&mut self) {
        let (git, commit, root) = (self.git.clone(), self.commit.clone(), self.root.clone());
        let path = self.repo_path(shared::waves::REPO_FILE);
        let read = tokio::task::spawn_blocking(move || git.read(&commit, &path, &root)).await;
        self.waves = match read {
            Ok(Err(crate::source::git::GitError::NotFound { .. })) => RepoWaves::None,
            Ok(Err(e)) => RepoWaves::Broken(format!("{}: {e}", shared::waves::REPO_FILE)),
            Err(e) => RepoWaves::Broken(format!("{}: {e}", shared::waves::REPO_FILE)),
            Ok(Ok(bytes)) => match std::str::from_utf8(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|text| shared::waves::parse_file(text).map_err(|p| p.to_string()))
            {
                Ok(waves) => {
                    use sha2::Digest as _;
                    let hash = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
                    RepoWaves::Some { waves, hash }
                }
                Err(e) => RepoWaves::Broken(format!("{}: {e}", shared::waves::REPO_FILE)),
            },
        };
    }

    /// The bundles under `root` at the commit.
    pub async fn bundles(&self) -> anyhow::Result<Vec<Bundle>> {
        let (git, commit, root) = (self.git.clone(), self.commit.clone(), self.root.clone());
        let files =
            tokio::task::spawn_blocking(move || git.list(&commit, if root.is_empty() { "." } else { &root })).await??;
        let prefix = if self.root.is_empty() || self.root == "." { String::new() } else { format!("{}/", self.root) };
        let relative: Vec<&str> = files.iter().map(|f| f.path.strip_prefix(&prefix).unwrap_or(&f.path)).collect();
        Ok(shared::bundle::discover(relative.iter().copied()))
    }
}

/// Where a bundle stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// Reading the bundle from git.
    Source,
    /// `fleet.yaml`, values files, renderer, output parsing.
    Render,
    /// An image missing from the registry, no tag matching a policy, a registry unreachable.
    Preflight,
    /// Asking the API server for the plan.
    Plan,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Source => "source",
            Stage::Render => "render",
            Stage::Preflight => "preflight",
            Stage::Plan => "plan",
        })
    }
}

/// Why a bundle has no desired state this time.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{bundle}: {stage} failed: {}", .reasons.join("; "))]
pub struct BundleError {
    pub bundle: String,
    pub stage: Stage,
    pub reasons: Vec<String>,
    /// The images the bundle renders, as written, when it got as far as rendering (a preflight
    /// failure: a tag not pushed yet): a registry push of one of them concerns this agent.
    pub wanted: Vec<String>,
    /// The environment fault behind a preflight failure when nothing else was wrong (the
    /// registry did not answer, or answered 429/5xx): the bundle is retried, not blocked.
    #[serde(skip)]
    pub fault: Option<shared::fault::Environment>,
}

/// An image as rendered and as it will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageChoice {
    pub written: String,
    pub running: String,
    pub used_by: Vec<String>,
    /// The cosign keys that verified its digest, one per policy that applies (empty: none does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<String>,
}

/// A bundle's desired objects.
#[derive(Debug, Clone)]
pub struct DesiredBundle {
    pub name: String,
    pub spec: BundleSpec,
    pub manifests: Vec<Manifest>,
    pub images: Vec<ImageChoice>,
    /// What was asked of the registries and what they said, so a later poll can ask again
    /// without rendering (`resolve_again`, `shared::replan`).
    pub resolved: Vec<(ImageRequest, Resolution)>,
    /// Unknown `fleet.yaml` keys, Helm hooks left out, images not resolved.
    pub warnings: Vec<String>,
    /// The release (`shared::waves::release_id`): the bundle's tree and the repository's waves.
    pub release: Option<String>,
    /// What it rendered from ([`Checkout::content_ids`]), the key of its kept plan.
    pub content: String,
    /// The waves that govern the bundle (its own, else the repository's); `Err`: the
    /// repository's file is broken and the bundle has none of its own, so it is held.
    pub waves: Option<Result<BundleWaves, String>>,
}

impl DesiredBundle {
    /// Per running image, the cosign keys that verified it (images no policy covers left out).
    pub fn verified_images(&self) -> BTreeMap<String, Vec<String>> {
        self.images.iter().filter(|i| !i.verified.is_empty()).map(|i| (i.running.clone(), i.verified.clone())).collect()
    }
}

/// Options of one build.
pub struct Build<'a> {
    pub checkout: &'a Checkout,
    pub node: &'a Node,
    pub renderers: &'a Renderers,
    pub caps: &'a Capabilities,
    /// Whether an object kind is namespaced (discovery, or the built-in list).
    pub namespaced: &'a (dyn Fn(&str, &str) -> bool + Sync),
    /// `None`: images are left as rendered and policies are not applied (`agent render --no-resolve`).
    pub registries: Option<&'a Registries>,
}

impl Build<'_> {
    pub async fn bundle(&self, bundle: &Bundle) -> Result<DesiredBundle, BundleError> {
        let name = bundle.dir.clone();
        let fail = |stage: Stage, reasons: Vec<String>| BundleError {
            bundle: name.clone(),
            stage,
            reasons,
            wanted: Vec::new(),
            fault: None,
        };
        let export = tempfile::tempdir().map_err(|e| fail(Stage::Source, vec![e.to_string()]))?;
        let dest = export.path().join("bundle");
        let (git, commit, path, d) = (
            self.checkout.git.clone(),
            self.checkout.commit.clone(),
            self.checkout.repo_path(&bundle.dir),
            dest.clone(),
        );
        let files = tokio::task::spawn_blocking(move || git.export(&commit, &path, &d))
            .await
            .map_err(|e| fail(Stage::Source, vec![e.to_string()]))?
            .map_err(|e| fail(Stage::Source, vec![e.to_string()]))?;

        let mut warnings = Vec::new();
        let fleet = if bundle.marker == Marker::Fleet {
            let text = std::fs::read_to_string(dest.join("fleet.yaml"))
                .map_err(|e| fail(Stage::Render, vec![format!("fleet.yaml: {e}")]))?;
            let (fleet, w) =
                shared::fleet::parse(&text).map_err(|p| fail(Stage::Render, vec![format!("fleet.yaml: {p}")]))?;
            warnings.extend(w.iter().map(|p| format!("fleet.yaml: {p}")));
            Some(fleet)
        } else {
            None
        };
        let read_values = |f: &str| read_values(&dest, f);
        let spec = decide::bundle_spec(bundle, fleet.as_ref(), &files, &self.node.labels, &read_values)
            .map_err(|e| fail(Stage::Render, vec![if fleet.is_some() { format!("fleet.yaml: {e}") } else { e }]))?;

        if let decide::RenderSpec::Kustomize { dir } = &spec.render {
            // Before kustomize runs: it would fetch URLs and leave the bundle by itself.
            let read = |f: &str| read_text(&dest, f);
            let refused = shared::kustomize::check(dir, &files, &read);
            if !refused.is_empty() {
                return Err(fail(Stage::Render, refused.iter().map(ToString::to_string).collect()));
            }
        }
        let rendered = crate::render::render(&dest, &spec.render, self.caps, self.renderers)
            .await
            .map_err(|e| fail(Stage::Render, vec![e.to_string()]))?;
        let (mut manifests, hooks) = render::split_hooks(rendered);
        for h in &hooks {
            let hook = h.object["metadata"]["annotations"]["helm.sh/hook"].as_str().unwrap_or_default();
            warnings.push(format!(
                "{} ({}) is a Helm hook ({hook}) and is not applied: gitops-agent applies desired state only",
                h.id(),
                h.source
            ));
        }
        decide::assign_namespace(&mut manifests, &spec.namespace, spec.force_namespace, self.namespaced);
        decide::label_owned(&mut manifests, &self.node.agent_id, &name);
        // Expected, documented behaviour (docs/bundles.md), so not a warning.
        decide::release_autoscaled_replicas(&mut manifests);
        check_unique(&manifests).map_err(|e| fail(Stage::Render, vec![e]))?;

        let mut resolved = Vec::new();
        let images = match self.registries {
            None => {
                warnings.push("images not resolved: tag policies and digest pins are not applied".into());
                Vec::new()
            }
            Some(registries) => {
                let uses = render::images(&manifests);
                let blocked = |problems: Vec<String>| BundleError {
                    wanted: uses.iter().map(|u| u.image.clone()).collect(),
                    ..fail(Stage::Preflight, problems)
                };
                let same = |a: &str, b: &str| registries.same_registry(a, b);
                let requests = decide::image_requests(&uses, &spec.policy, &same).map_err(blocked)?;
                let resolutions = futures::future::join_all(requests.iter().map(|r| resolve(registries, r))).await;
                let bundle_keys = match spec.policy.verify.as_ref().and_then(|v| v.cosign.as_ref()) {
                    None => None,
                    Some(c) => Some(bundle_keys(&dest, &c.public_keys).map_err(|e| blocked(vec![e]))?),
                };
                let checked = |r: &ImageRequest| {
                    bundle_keys.is_some() || registries.for_image(&r.image).is_ok_and(|g| g.keys.is_some())
                };
                let pin = |r: &ImageRequest| decide::must_pin(spec.policy.pin_digests(), checked(r));
                let map = decide::pin_images(&requests, &resolutions, pin)
                    .map_err(|r| BundleError { fault: r.fault, ..blocked(r.problems) })?;
                // Signatures before anything is written: an image that fails blocks the bundle.
                let checks = requests
                    .iter()
                    .zip(&resolutions)
                    .map(|(r, res)| verify_image(registries, r, res, bundle_keys.as_ref()));
                let verdicts = futures::future::join_all(checks).await;
                let mut verified = Vec::with_capacity(verdicts.len());
                let mut problems = Vec::new();
                for v in verdicts {
                    match v {
                        Ok(keys) => verified.push(keys),
                        Err(e) => problems.push(e),
                    }
                }
                if !problems.is_empty() {
                    return Err(blocked(problems));
                }
                render::replace_images(&mut manifests, &map);
                let images = requests
                    .iter()
                    .zip(verified)
                    .map(|(r, verified)| ImageChoice {
                        written: r.written.clone(),
                        running: map.get(&r.written).cloned().unwrap_or_else(|| r.written.clone()),
                        used_by: r.used_by.clone(),
                        verified,
                    })
                    .collect();
                resolved = requests.into_iter().zip(resolutions).collect();
                images
            }
        };
        let (git, commit, path) =
            (self.checkout.git.clone(), self.checkout.commit.clone(), self.checkout.repo_path(&bundle.dir));
        let tree = tokio::task::spawn_blocking(move || git.tree_id(&commit, &path))
            .await
            .map_err(|e| fail(Stage::Source, vec![e.to_string()]))?
            .map_err(|e| fail(Stage::Source, vec![e.to_string()]))?;
        let (waves, repo_hash) = match (&spec.policy.waves, &self.checkout.waves) {
            (Some(own), _) => {
                (Some(Ok(BundleWaves { waves: own.clone(), source: shared::waves::Source::Bundle })), None)
            }
            (None, RepoWaves::Some { waves, hash }) => (
                Some(Ok(BundleWaves { waves: waves.clone(), source: shared::waves::Source::Repository })),
                Some(hash.as_str()),
            ),
            (None, RepoWaves::Broken(why)) => (Some(Err(why.clone())), None),
            (None, RepoWaves::None) => (None, None),
        };
        let inputs: Vec<(&str, &str)> = repo_hash.map(|h| (shared::waves::REPO_FILE, h)).into_iter().collect();
        let release = Some(shared::waves::release_id(&tree, &inputs));
        let content = self.checkout.content_of(&tree);
        Ok(DesiredBundle { name, spec, manifests, images, resolved, warnings, release, content, waves })
    }
}

/// Two objects with one id would be applied over each other.
fn check_unique(manifests: &[Manifest]) -> Result<(), String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for m in manifests {
        if let Some(first) = seen.insert(m.id(), &m.source) {
            return Err(format!("{} is rendered twice ({first} and {})", m.id(), m.source));
        }
    }
    Ok(())
}

/// A file of the exported bundle, by its bundle-relative path (as the export listed it).
fn read_text(dir: &Path, name: &str) -> Result<String, String> {
    shared::tree::check_path(name).map_err(|e| e.to_string())?;
    std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"))
}

fn read_values(dir: &Path, name: &str) -> Result<Value, String> {
    shared::tree::check_path(name.trim_start_matches("./")).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(dir.join(name)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file in the bundle".to_owned(),
        _ => e.to_string(),
    })?;
    let v: Value = serde_saphyr::from_str(&text).map_err(|e| {
        let line = e.location().map(|l| format!("line {}: ", l.line())).unwrap_or_default();
        format!("{line}{}", e.to_string().lines().next().unwrap_or("invalid YAML"))
    })?;
    Ok(if v.is_null() { Value::Object(Default::default()) } else { v })
}

/// The bundle's own trusted keys (`gitopsAgent.verify`), files inside the bundle.
fn bundle_keys(dir: &Path, specs: &[shared::cosign::KeySpec]) -> Result<shared::cosign::KeySet, String> {
    let keys = specs
        .iter()
        .map(|k| {
            let named = |e: String| format!("gitopsAgent.verify: cosign key {} ({}): {e}", k.name, k.file);
            shared::tree::check_path(&k.file).map_err(|e| named(e.to_string()))?;
            let pem = std::fs::read_to_string(dir.join(&k.file)).map_err(|e| named(e.to_string()))?;
            shared::cosign::TrustedKey::from_pem(&k.name, &pem).map_err(named)
        })
        .collect::<Result<_, _>>()?;
    Ok(shared::cosign::KeySet { keys })
}

/// The signature checks of one resolved image: its registry's policy and the bundle's, each
/// verified (or found in the cache); the names of the keys that verified it, or the line that
/// blocks the bundle.
async fn verify_image(
    registries: &Registries,
    req: &ImageRequest,
    res: &Resolution,
    bundle: Option<&shared::cosign::KeySet>,
) -> Result<Vec<String>, String> {
    let Resolution::Found { digest, .. } = res else {
        return Ok(Vec::new());
    };
    let registry = registries.for_image(&req.image).map_err(|e| format!("preflight: {e}"))?;
    let mut verdicts = Vec::new();
    for keys in registry.keys.iter().chain(bundle) {
        let verdict = registries
            .verify(registry, &req.image.repository, digest, keys)
            .await
            .map_err(|e| format!("preflight: {}: reading its cosign signatures: {e}", req.written))?;
        verdicts.push(verdict);
    }
    shared::cosign::judge(&req.written, digest, &req.used_by, &verdicts)
}

/// The registries asked again what a build asked them, with its requests (policies included),
/// without rendering: the same requests a full build of the same render would make.
pub async fn resolve_again(registries: &Registries, requests: &[ImageRequest]) -> Vec<Resolution> {
    futures::future::join_all(requests.iter().map(|r| resolve(registries, r))).await
}

async fn resolve(registries: &Registries, req: &ImageRequest) -> Resolution {
    let registry = match registries.for_image(&req.image) {
        Ok(r) => r,
        Err(e) => return Resolution::Failed { message: e.to_string() },
    };
    let tag = match &req.policy {
        None => None,
        Some(p) => match p.tracked_tag() {
            Some(t) => Some(t.to_owned()),
            None => {
                let tags = match registry.list_tags(&req.image.repository).await {
                    Ok(t) => t,
                    Err(e) => return failed(e),
                };
                match p.select(tags.iter().map(String::as_str)).chosen {
                    Some(t) => Some(t),
                    None => return Resolution::NoTagMatches { tags: tags.len() },
                }
            }
        },
    };
    let asked = match &tag {
        Some(t) => ImageRef { tag: Some(t.clone()), digest: None, ..req.image.clone() },
        None => req.image.clone(),
    };
    match registry.resolve(&asked).await {
        Ok(digest) => Resolution::Found { tag, digest },
        Err(e) => failed(e),
    }
}

fn failed(e: RegistryError) -> Resolution {
    match e {
        RegistryError::NotFound { image } => Resolution::Missing { reference: image },
        other if other.is_transient() => Resolution::Unavailable { message: other.to_string(), status: other.status() },
        other => Resolution::Failed { message: other.to_string() },
    }
}
