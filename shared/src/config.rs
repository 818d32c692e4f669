//! The node's agent configuration: its YAML schema, environment overrides and validation.
//!
//! Parsing and validation are pure: the caller reads the file and the environment and passes them
//! in. Secrets never live in this file; it names the file or environment variable that holds
//! each one, so a config can be printed, validated and shared without leaking anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::duration::HumanDuration;
use crate::redact;
use crate::yaml_lines::LineIndex;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub identity: Identity,
    pub git: GitSource,
    #[serde(default)]
    pub registries: Vec<Registry>,
    #[serde(default)]
    pub kube: Kube,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub rollout: RolloutDefaults,
    #[serde(default)]
    pub render: Render,
    #[serde(default)]
    pub leader_election: LeaderElection,
    #[serde(default)]
    pub prune: Prune,
    /// Staged rollout across stores (`shared::waves`, docs/waves.md): where this store publishes
    /// its health reports and reads the other stores'. Absent: a bundle with waves is held (a
    /// wave gate with nowhere to read is never silently open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
    /// Images of a waiting bundle pulled onto the node ahead of its rollout (`shared::prepull`);
    /// absent: off.
    #[serde(default)]
    pub prepull: Option<Prepull>,
    /// Local state (last-known-good records, caches).
    #[serde(default = "defaults::state_dir")]
    pub state_dir: String,
}

/// Who this agent is: targets in the repo select on these labels.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    pub node_name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Also take labels from the Kubernetes Node object named `nodeName` (config labels win).
    #[serde(default)]
    pub labels_from_node: bool,
    /// The identity written in the owner label of every object this agent applies. Agents with
    /// the same id share ownership (replicas of one agent); give each node its own id when one
    /// agent runs per node of a multi-node cluster.
    #[serde(default = "defaults::agent_id")]
    pub agent_id: String,
    /// Per-node mode: the agent id is the node's name (`nodeName`), so agents on different nodes
    /// of one cluster own their objects apart and never contend for a Lease. Overrides `agentId`.
    #[serde(default)]
    pub per_node: bool,
}

/// The external renderers, as Argo CD and Fleet run them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Render {
    /// `helm` binary (a name looked up in PATH, or a path).
    #[serde(default = "defaults::helm")]
    pub helm: String,
    #[serde(default = "defaults::kustomize")]
    pub kustomize: String,
    /// A renderer running longer than this is stopped and the bundle reports it.
    #[serde(default = "defaults::render_timeout")]
    pub timeout: HumanDuration,
}

impl Default for Render {
    fn default() -> Self {
        Render { helm: defaults::helm(), kustomize: defaults::kustomize(), timeout: defaults::render_timeout() }
    }
}

/// The GitOps repository.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSource {
    pub url: String,
    /// Branch to follow.
    #[serde(default = "defaults::git_ref", rename = "ref")]
    pub reference: String,
    /// Folder inside the repo that holds the bundles.
    #[serde(default = "defaults::git_path")]
    pub path: String,
    #[serde(default)]
    pub auth: Option<Credentials>,
    /// PEM bundle of extra CAs trusted for this source only.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: HumanDuration,
    /// The tip commit must be signed by an allowed key before anything of it is applied
    /// (`shared::commit_sig`, docs/verification.md).
    #[serde(default)]
    pub verify: Option<crate::commit_sig::GitVerifySpec>,
    /// A poll that finds nothing changed skips render and plan (`shared::replan`); this often,
    /// every bundle is rendered and planned against the cluster anyway.
    #[serde(default = "defaults::resync_interval")]
    pub resync_interval: HumanDuration,
}

/// An OCI registry (Harbor or any distribution-compatible one).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registry {
    /// Host (and port) as written in image references, e.g. `harbor.example:443`.
    pub host: String,
    /// Other names of the same registry (Harbor's external URL vs the host in manifests).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub auth: Option<Credentials>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: u32,
    /// Signatures every image of this registry must carry before it is applied
    /// (`shared::cosign`, docs/verification.md).
    #[serde(default)]
    pub verify: Option<crate::cosign::VerifySpec>,
}

/// Basic credentials; the password comes from a file (re-read when it changes) or a variable.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
}

/// How to reach the API server. No kubeconfig means in-cluster service account.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kube {
    #[serde(default)]
    pub kubeconfig: Option<String>,
    #[serde(default)]
    pub context: Option<String>,
    /// Namespace of the agent's own state (last-known-good Secrets, Lease).
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
}

/// HTTP listener for health, metrics, status and webhooks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// A webhook body larger than this is refused with 413 before it is read further.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Webhook receivers, one per sender: `POST /webhooks/<sender>`.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Per sender: this many webhook requests at once, then one per `webhookEvery`; more get 429.
    #[serde(default = "defaults::webhook_burst")]
    pub webhook_burst: u32,
    #[serde(default = "defaults::webhook_every")]
    pub webhook_every: HumanDuration,
}

/// One webhook sender and the secret it proves itself with (Harbor: the Authorization value;
/// Gitea, GitHub and generic: the HMAC-SHA256 key; registry: the Authorization value).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// `harbor`, `gitea`, `github`, `registry` or `generic`.
    pub sender: Sender,
    #[serde(default)]
    pub secret_file: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// Who sends webhooks; each has its own endpoint (`/webhooks/<name>`) and authentication
/// (`shared::webhook::authenticate`). Part of the config schema, so the config never imports the
/// webhook logic; written by its name (`harbor`, `gitea`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sender {
    /// Harbor: the policy's "Auth Header" sent verbatim as `Authorization`.
    Harbor,
    /// Gitea (and Gogs, Forgejo): HMAC-SHA256 of the body, `X-Gitea-Signature` (hex) or
    /// `X-Hub-Signature-256` (`sha256=<hex>`).
    Gitea,
    /// GitHub: `X-Hub-Signature-256`.
    GitHub,
    /// The distribution registry's notifications: the endpoint's configured `Authorization`.
    Registry,
    /// Anything else (a CI step): `X-Signature-256: sha256=<hex>` over the body. Re-reads all
    /// sources.
    Generic,
}

impl Sender {
    pub const ALL: [Sender; 5] = [Sender::Harbor, Sender::Gitea, Sender::GitHub, Sender::Registry, Sender::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Sender::Harbor => "harbor",
            Sender::Gitea => "gitea",
            Sender::GitHub => "github",
            Sender::Registry => "registry",
            Sender::Generic => "generic",
        }
    }

    pub fn from_name(name: &str) -> Option<Sender> {
        Sender::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A sender name that is none of [`Sender::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sender {0:?} (expected one of: harbor, gitea, github, registry, generic)")]
pub struct UnknownSender(pub String);

impl std::str::FromStr for Sender {
    type Err = UnknownSender;

    fn from_str(name: &str) -> Result<Sender, UnknownSender> {
        Sender::from_name(name).ok_or_else(|| UnknownSender(name.to_owned()))
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Sender {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Sender {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Several agents with one `identity.agentId` (replicas) elect one leader with a Lease named
/// after that id in `kube.namespace`; only the leader applies. Agents with different ids (one
/// per node) never contend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElection {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// A leader that stops renewing is replaced after this long.
    #[serde(default = "defaults::lease_duration")]
    pub lease_duration: HumanDuration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection { enabled: true, lease_duration: defaults::lease_duration() }
    }
}

/// What becomes of a bundle that leaves Git (`shared::removal`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prune {
    /// `delete` (Fleet's and Flux's behaviour) or `keep`.
    #[serde(default)]
    pub removed_bundles: RemovedBundles,
    /// When more than this share (percent) of the bundles leaves Git in one commit (an
    /// accidental `git rm -r`), nothing is deleted until `agent prune --confirm BUNDLE`.
    #[serde(default = "defaults::max_removed_percent")]
    pub max_removed_percent: u32,
}

impl Default for Prune {
    fn default() -> Self {
        Prune { removed_bundles: RemovedBundles::default(), max_removed_percent: defaults::max_removed_percent() }
    }
}

/// The node's side of waves: the reports' registry repository and how often it is read.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waves {
    pub reports: ReportsRepository,
    /// How often the reports are read while a wave gate waits (never when none waits).
    #[serde(default = "defaults::reports_interval")]
    pub interval: HumanDuration,
    /// A store republishes an unchanged report this often, so readers tell a live store from
    /// a silent one; keep it well below the waves' `gate.reportTimeout` (default 15m).
    #[serde(default = "defaults::reports_refresh")]
    pub refresh: HumanDuration,
}

/// Where reports live: `<registry>/<repository>/<bundle>:<wave>.<store>`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportsRepository {
    /// A host of `registries[]` (its credentials and CA are used; they need push here).
    pub registry: String,
    /// The repository prefix kept for reports, e.g. `gitops-reports/stack-b`.
    pub repository: String,
}

/// Pre-pull (`shared::prepull`, docs/prepull.md): while a bundle waits for its rollout (a
/// window, `waitForIdle`, a gate), one short-lived pod per new image on this node pulls it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prepull {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// The image whose `/agent` copies itself into the pod (the agent's own image): the app
    /// image's container runs that copy, so the app's entrypoint never runs.
    #[serde(default)]
    pub helper_image: String,
    /// At most this many pulls at once on the node, so a store's link is not saturated.
    #[serde(default = "defaults::prepull_max_concurrent")]
    pub max_concurrent: u32,
    /// A pull not done by then is stopped (the pod's `activeDeadlineSeconds`) and reported.
    #[serde(default = "defaults::prepull_timeout")]
    pub timeout: HumanDuration,
}

/// What is done with the objects of a bundle that left Git.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RemovedBundles {
    /// Its recorded objects are deleted (those still carrying the agent's labels).
    #[default]
    Delete,
    /// Its objects keep running, no longer followed.
    Keep,
}

/// Rollout policy used when a bundle does not set its own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutDefaults {
    #[serde(default = "defaults::progress_deadline")]
    pub progress_deadline: HumanDuration,
    #[serde(default = "defaults::verify_window")]
    pub verify_window: HumanDuration,
    #[serde(default = "defaults::drain_window")]
    pub drain_window: HumanDuration,
    /// Allow/deny windows for starting any rollout on this node (`shared::window`); a bundle's
    /// own `rolloutWindows` add to them. Rollbacks ignore them.
    #[serde(default)]
    pub windows: Vec<crate::window::WindowSpec>,
}

mod defaults {
    use crate::duration::HumanDuration;

    pub fn reports_interval() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    pub fn reports_refresh() -> HumanDuration {
        HumanDuration::from_secs(300)
    }

    pub fn prepull_max_concurrent() -> u32 {
        2
    }
    pub fn prepull_timeout() -> HumanDuration {
        HumanDuration::from_secs(30 * 60)
    }
    pub fn agent_id() -> String {
        "gitops-agent".into()
    }
    pub fn helm() -> String {
        "helm".into()
    }
    pub fn kustomize() -> String {
        "kustomize".into()
    }
    pub fn render_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    pub fn state_dir() -> String {
        "/var/lib/gitops-agent".into()
    }
    pub fn git_ref() -> String {
        "main".into()
    }
    pub fn git_path() -> String {
        ".".into()
    }
    /// Argo CD polls every 120 s + jitter, Fleet every 15 s (which exhausted Git hosts, fleet
    /// #3486); with webhooks for latency, 60 s keeps hundreds of stores cheap for one Gitea.
    pub fn poll_interval() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    /// Flux's kustomize-controller re-applies every 10 min by default; a drift watch catches
    /// changes of our objects sooner, this catches what no watch saw.
    pub fn resync_interval() -> HumanDuration {
        HumanDuration::from_secs(600)
    }
    /// Harbor's default per-project pull concurrency is unbounded; 4 keeps a store polite.
    pub fn max_concurrency() -> u32 {
        4
    }
    pub fn namespace() -> String {
        "gitops-agent".into()
    }
    pub fn listen() -> String {
        "0.0.0.0:8080".into()
    }
    /// Harbor and Gitea payloads are a few KiB; a push of many tags stays well under 1 MiB.
    pub fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub fn webhook_burst() -> u32 {
        10
    }
    pub fn webhook_every() -> HumanDuration {
        HumanDuration::from_secs(1)
    }
    pub fn yes() -> bool {
        true
    }
    /// Half: one bundle of two leaving Git is a removal, three of four a hold.
    pub fn max_removed_percent() -> u32 {
        50
    }
    /// Kubernetes' own controllers use 15 s.
    pub fn lease_duration() -> HumanDuration {
        HumanDuration::from_secs(15)
    }
    /// Kubernetes' own default `progressDeadlineSeconds` is 600; stores want to know sooner.
    pub fn progress_deadline() -> HumanDuration {
        HumanDuration::from_secs(300)
    }
    pub fn verify_window() -> HumanDuration {
        HumanDuration::from_secs(0)
    }
    /// Stack B's WebSocket drain: 30 s grace before an old pod terminates.
    pub fn drain_window() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
}

impl Default for Kube {
    fn default() -> Self {
        Kube { kubeconfig: None, context: None, namespace: defaults::namespace() }
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: defaults::listen(),
            max_body_bytes: defaults::max_body_bytes(),
            webhooks: Vec::new(),
            webhook_burst: defaults::webhook_burst(),
            webhook_every: defaults::webhook_every(),
        }
    }
}

impl Default for RolloutDefaults {
    fn default() -> Self {
        RolloutDefaults {
            progress_deadline: defaults::progress_deadline(),
            verify_window: defaults::verify_window(),
            drain_window: defaults::drain_window(),
            windows: Vec::new(),
        }
    }
}

pub use crate::problem::Problem;

/// Environment variables that override deployment-relevant settings (the container image and the
/// systemd unit set these instead of templating the file).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("GITOPS_AGENT_NODE_NAME", "identity.nodeName"),
    ("GITOPS_AGENT_GIT_URL", "git.url"),
    ("GITOPS_AGENT_GIT_REF", "git.ref"),
    ("GITOPS_AGENT_GIT_PATH", "git.path"),
    ("GITOPS_AGENT_POLL_INTERVAL", "git.pollInterval"),
    ("GITOPS_AGENT_KUBECONFIG", "kube.kubeconfig"),
    ("GITOPS_AGENT_NAMESPACE", "kube.namespace"),
    ("GITOPS_AGENT_LISTEN", "server.listen"),
    ("GITOPS_AGENT_STATE_DIR", "stateDir"),
];

/// Every duration field of the config, by dotted path. A value that is no duration is a value
/// problem of its field, reported with the others (see [`parse`]), not a stop of the parse; so
/// is an unknown webhook sender.
const DURATIONS: &[&str] = &[
    "git.pollInterval",
    "git.resyncInterval",
    "server.webhookEvery",
    "leaderElection.leaseDuration",
    "rollout.progressDeadline",
    "rollout.verifyWindow",
    "rollout.drainWindow",
    "render.timeout",
    "waves.interval",
    "waves.refresh",
    "prepull.timeout",
];

/// A parsed config with what is needed to explain it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    /// Field paths whose value came from an environment variable, with that variable's name.
    pub overridden: BTreeMap<String, String>,
    /// Typed fields whose text is no value of their type (a duration, a webhook sender), with
    /// why; their value in `config` is a placeholder, and `validate` reports each one.
    bad_values: BadValues,
    /// Required fields the file lacks, by path: `validate` reports each one, and no problem of
    /// the placeholder put in its place (the field's value, or a whole missing section's).
    missing: Missing,
    lines: LineIndex,
}

/// Parses `text`, applies environment overrides from `env`, and validates the result.
///
/// Returns every problem found. YAML syntax and structural errors (unknown key, wrong type) stop
/// parsing, so they come alone; missing required fields and all value problems are reported
/// together.
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, Vec<Problem>> {
    let loaded = parse(text, env).map_err(|p| vec![p])?;
    let problems = loaded.validate();
    if problems.is_empty() { Ok(loaded) } else { Err(problems) }
}

/// Parses `text` and applies environment overrides, without validating values (for callers that
/// add checks of their own and want every problem in one list: see [`Loaded::validate`]). A
/// missing required field is a placeholder here, which [`Loaded::validate`] reports: a `Loaded`
/// is only a config to use once `validate` found nothing ([`load`] does both).
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, Problem> {
    let lines = LineIndex::new(text);
    let (mut config, mut bad_values, mut missing) = match serde_saphyr::from_str::<AgentConfig>(text) {
        Ok(config) => (config, BTreeMap::new(), BTreeSet::new()),
        Err(e) => with_placeholders(text, &lines).unwrap_or_else(|| Err(structural(&e, &lines)))?,
    };
    let mut overridden = BTreeMap::new();
    for (var, path) in ENV_OVERRIDES {
        if let Some(value) = env(var) {
            match apply_override(&mut config, path, value) {
                Ok(()) => bad_values.remove(*path),
                Err(e) => bad_values.insert((*path).to_owned(), e.to_string()),
            };
            // A variable gives the value the file lacks (and the section around it).
            missing.retain(|m| !(*path == m.as_str() || path.starts_with(&format!("{m}."))));
            overridden.insert((*path).to_owned(), (*var).to_owned());
        }
    }
    if config.identity.per_node {
        config.identity.agent_id = config.identity.node_name.clone();
    }
    Ok(Loaded { config, overridden, bad_values, missing, lines })
}

/// Field paths of typed fields whose text is no value of their type, with why.
type BadValues = BTreeMap<String, String>;

/// Paths of required fields the file lacks (`identity`, `git.url`, `registries[0].host`, ...).
type Missing = BTreeSet<String>;

/// Puts a placeholder where the file lacks a required field (no serde default), so the rest of
/// the file is still read and checked; each is recorded in `missing`. A missing section's
/// placeholder holds its own required fields, which are then not reported again.
fn fill_required(tree: &mut serde_json::Value, missing: &mut Missing) {
    use serde_json::{Value, json};
    fn require(map: Option<&mut Value>, parent: &str, key: &str, placeholder: Value, missing: &mut Missing) {
        let Some(obj) = map.and_then(Value::as_object_mut) else { return };
        if !obj.contains_key(key) {
            obj.insert(key.to_owned(), placeholder);
            missing.insert(if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") });
        }
    }
    if tree.is_null() {
        // An empty file: every section is missing.
        *tree = json!({});
    }
    require(Some(tree), "", "identity", json!({"nodeName": ""}), missing);
    require(tree.get_mut("identity"), "identity", "nodeName", json!(""), missing);
    require(Some(tree), "", "git", json!({"url": ""}), missing);
    require(tree.get_mut("git"), "git", "url", json!(""), missing);
    require(tree.get_mut("git").and_then(|g| g.get_mut("auth")), "git.auth", "username", json!(""), missing);
    let registries = tree.get_mut("registries").and_then(Value::as_array_mut);
    for (i, r) in registries.into_iter().flatten().enumerate() {
        require(Some(r), &format!("registries[{i}]"), "host", json!(""), missing);
        require(r.get_mut("auth"), &format!("registries[{i}].auth"), "username", json!(""), missing);
    }
    let webhooks = tree.get_mut("server").and_then(|s| s.get_mut("webhooks")).and_then(Value::as_array_mut);
    for (i, w) in webhooks.into_iter().flatten().enumerate() {
        require(Some(w), &format!("server.webhooks[{i}]"), "sender", json!(Sender::Generic.name()), missing);
    }
}

/// The config of a text whose typed fields hold text that is no value of their type (a duration,
/// a webhook sender): those become placeholders and are returned as problems by path, so that
/// they are reported together with every other value problem, as when these fields were text.
/// With another structural error beside them, that error, located in `text` (structural errors
/// come alone). `None` when no such field is the trouble.
fn with_placeholders(text: &str, lines: &LineIndex) -> Option<Result<(AgentConfig, BadValues, Missing), Problem>> {
    fn replace<T: std::str::FromStr<Err: ToString>>(
        slot: Option<&mut serde_json::Value>,
        path: String,
        placeholder: &str,
        bad: &mut BadValues,
    ) {
        let Some(slot) = slot else { return };
        let Some(Err(e)) = slot.as_str().map(str::parse::<T>) else { return };
        bad.insert(path, e.to_string());
        *slot = serde_json::Value::from(placeholder);
    }
    let mut tree: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let mut bad = BTreeMap::new();
    let mut missing = BTreeSet::new();
    fill_required(&mut tree, &mut missing);
    for path in DURATIONS {
        let slot = path.split('.').try_fold(&mut tree, |v, k| v.get_mut(k));
        replace::<HumanDuration>(slot, (*path).to_owned(), "0s", &mut bad);
    }
    let webhooks = tree.get_mut("server").and_then(|s| s.get_mut("webhooks")).and_then(|w| w.as_array_mut());
    for (i, w) in webhooks.into_iter().flatten().enumerate() {
        let slot = w.get_mut("sender");
        replace::<Sender>(slot, format!("server.webhooks[{i}].sender"), Sender::Generic.name(), &mut bad);
    }
    if bad.is_empty() && missing.is_empty() {
        return None;
    }
    // Read back as YAML, so the placeholders go through the same deserializer as the file.
    let patched = serde_saphyr::to_string(&tree).ok()?;
    Some(match serde_saphyr::from_str::<AgentConfig>(&patched) {
        Ok(config) => Ok((config, bad, missing)),
        Err(e) => {
            let p = structural(&e, &LineIndex::new(&patched));
            Err(Problem { line: lines.line(&p.path), ..p })
        }
    })
}

fn structural(e: &serde_saphyr::Error, lines: &LineIndex) -> Problem {
    // serde-saphyr's Display is "error: line L column C: MESSAGE" plus a source snippet; keep
    // MESSAGE and name the field written on that line, if any.
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("line ") && prefix.contains(" column ") => rest,
        _ => first,
    };
    let at = e.location().map(|l| (l.line() as usize, l.column() as usize));
    let path = at.and_then(|(l, c)| lines.path_at(l, c)).unwrap_or("(document)").to_owned();
    Problem { path, line: at.map(|(l, _)| l), message: message.to_owned() }
}

/// Sets the field at `path` from an environment variable's `value`; a duration field's value must
/// parse (the caller reports the error against the variable).
fn apply_override(c: &mut AgentConfig, path: &str, value: String) -> Result<(), crate::duration::ParseError> {
    match path {
        "identity.nodeName" => c.identity.node_name = value,
        "git.url" => c.git.url = value,
        "git.ref" => c.git.reference = value,
        "git.path" => c.git.path = value,
        "git.pollInterval" => c.git.poll_interval = value.parse()?,
        "kube.kubeconfig" => c.kube.kubeconfig = Some(value),
        "kube.namespace" => c.kube.namespace = value,
        "server.listen" => c.server.listen = value,
        "stateDir" => c.state_dir = value,
        other => unreachable!("ENV_OVERRIDES names a path apply_override does not know: {other}"),
    }
    Ok(())
}

impl Loaded {
    /// A problem about `path`, located the same way validation locates its own (for checks
    /// the caller makes with I/O, such as "passwordFile is not readable").
    pub fn problem(&self, path: &str, message: String) -> Problem {
        let mut v = Validator { loaded: self, problems: Vec::new() };
        v.push(path, message);
        v.problems.pop().expect("push adds one problem")
    }

    /// Every value problem of the parsed config.
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator { loaded: self, problems: Vec::new() };
        let c = &self.config;

        v.check(c.identity.node_name.trim().is_empty(), "identity.nodeName", || "must not be empty".into());
        if let Err(msg) = dns_subdomain(&c.identity.node_name) {
            v.check(!c.identity.node_name.is_empty(), "identity.nodeName", || msg.clone());
        }
        if let Err(msg) = label_value(&c.identity.agent_id) {
            v.push("identity.agentId", msg);
        }
        v.check(c.identity.agent_id.is_empty(), "identity.agentId", || "must not be empty".into());
        for (k, val) in &c.identity.labels {
            let path = format!("identity.labels.{k}");
            if let Err(msg) = label_key(k) {
                v.push(&path, msg);
            }
            if let Err(msg) = label_value(val) {
                v.push(&path, msg);
            }
        }

        v.url("git.url", &c.git.url, &["https", "http", "file"]);
        v.check(c.git.reference.trim().is_empty(), "git.ref", || "must name a branch".into());
        v.check(c.git.path.split('/').any(|s| s == ".."), "git.path", || {
            format!("{:?} must stay inside the repository (no \"..\")", c.git.path)
        });
        v.duration("git.pollInterval", c.git.poll_interval, Some(Duration::from_secs(5)));
        v.duration("git.resyncInterval", c.git.resync_interval, Some(Duration::from_secs(10)));
        if let Some(auth) = &c.git.auth {
            v.credentials("git.auth", auth);
            if c.git.url.starts_with("http://") {
                v.push("git.auth", "credentials would be sent in clear text over http://; use https://".into());
            }
        }
        if let Some(ca) = &c.git.ca_file {
            v.check(ca.trim().is_empty(), "git.caFile", || "must not be empty".into());
        }
        for (path, message) in c.git.verify.iter().flat_map(|g| g.problems()) {
            v.push(&format!("git.verify.{path}"), message);
        }

        let mut seen_hosts = BTreeMap::new();
        for (i, r) in c.registries.iter().enumerate() {
            let base = format!("registries[{i}]");
            for (j, host) in std::iter::once(&r.host).chain(r.aliases.iter()).enumerate() {
                let path = if j == 0 { format!("{base}.host") } else { format!("{base}.aliases[{}]", j - 1) };
                if let Err(msg) = registry_host(host) {
                    v.push(&path, msg);
                } else if let Some(prev) = seen_hosts.insert(host.to_ascii_lowercase(), path.clone()) {
                    v.push(&path, format!("{host:?} is already configured at {prev}"));
                }
            }
            if let Some(auth) = &r.auth {
                v.credentials(&format!("{base}.auth"), auth);
            }
            v.check(r.max_concurrency == 0, &format!("{base}.maxConcurrency"), || "must be at least 1".into());
            if let Some(verify) = &r.verify {
                for (path, message) in verify.problems() {
                    v.push(&format!("{base}.verify.{path}"), message);
                }
            }
        }

        if let Some(kc) = &c.kube.kubeconfig {
            v.check(kc.trim().is_empty(), "kube.kubeconfig", || {
                "must not be empty (omit it for in-cluster access)".into()
            });
        }
        if let Err(msg) = dns_label(&c.kube.namespace) {
            v.push("kube.namespace", msg);
        }
        if c.server.listen.parse::<std::net::SocketAddr>().is_err() {
            v.push("server.listen", format!("{:?} is not an address:port such as 0.0.0.0:8080", c.server.listen));
        }
        v.check(c.server.max_body_bytes < 1024, "server.maxBodyBytes", || "must be at least 1024".into());
        let mut senders = BTreeMap::new();
        for (i, w) in c.server.webhooks.iter().enumerate() {
            let base = format!("server.webhooks[{i}]");
            let sender = format!("{base}.sender");
            if let Some(why) = self.bad_values.get(&sender) {
                v.push(&sender, why.clone());
            } else if let Some(prev) = senders.insert(w.sender, base.clone()) {
                v.push(&format!("{base}.sender"), format!("{:?} is already configured at {prev}", w.sender.name()));
            }
            match (&w.secret_file, &w.secret_env) {
                (None, None) => {
                    v.push(&base, "needs secretFile or secretEnv: a webhook is never unauthenticated".into())
                }
                (Some(_), Some(_)) => v.push(&base, "set secretFile or secretEnv, not both".into()),
                (Some(f), None) if f.trim().is_empty() => {
                    v.push(&format!("{base}.secretFile"), "must not be empty".into())
                }
                (None, Some(e)) if !is_env_name(e) => {
                    v.push(&format!("{base}.secretEnv"), format!("{e:?} is not an environment variable name"))
                }
                _ => {}
            }
        }
        v.duration("server.webhookEvery", c.server.webhook_every, Some(Duration::from_millis(1)));
        v.duration("leaderElection.leaseDuration", c.leader_election.lease_duration, Some(Duration::from_secs(5)));
        v.duration("rollout.progressDeadline", c.rollout.progress_deadline, Some(Duration::from_secs(1)));
        v.duration("rollout.verifyWindow", c.rollout.verify_window, None);
        v.duration("rollout.drainWindow", c.rollout.drain_window, None);
        for (i, w) in c.rollout.windows.iter().enumerate() {
            if let Err(p) = crate::window::Window::from_spec(w) {
                v.push(&format!("rollout.windows[{i}].{}", p.path), p.message);
            }
        }
        v.check(c.prune.max_removed_percent > 100, "prune.maxRemovedPercent", || {
            format!("{} is not a percentage (0 to 100)", c.prune.max_removed_percent)
        });
        if let Some(p) = c.prepull.as_ref().filter(|p| p.enabled) {
            match crate::image::ImageRef::parse(&p.helper_image) {
                _ if p.helper_image.trim().is_empty() => v.push(
                    "prepull.helperImage",
                    "must name the helper image (the agent's own image) while prepull.enabled is true".into(),
                ),
                Err(e) => v.push("prepull.helperImage", e.to_string()),
                Ok(_) => {}
            }
            v.check(p.max_concurrent == 0, "prepull.maxConcurrent", || "must be at least 1".into());
            v.duration("prepull.timeout", p.timeout, Some(Duration::from_secs(10)));
        }
        v.check(c.render.helm.trim().is_empty(), "render.helm", || "must not be empty".into());
        v.check(c.render.kustomize.trim().is_empty(), "render.kustomize", || "must not be empty".into());
        v.duration("render.timeout", c.render.timeout, Some(Duration::from_secs(1)));
        v.check(c.state_dir.trim().is_empty(), "stateDir", || "must not be empty".into());
        if let Some(w) = &c.waves {
            let known = c.registries.iter().any(|r| r.host.eq_ignore_ascii_case(&w.reports.registry));
            v.check(!known, "waves.reports.registry", || {
                format!(
                    "{:?} is not the host of any registries[] entry (its credentials are needed)",
                    w.reports.registry
                )
            });
            let repo_ok = !w.reports.repository.is_empty()
                && w.reports.repository.split('/').all(|part| {
                    !part.is_empty()
                        && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                });
            v.check(!repo_ok, "waves.reports.repository", || {
                format!("{:?} is not a repository path (lower-case path components)", w.reports.repository)
            });
            v.duration("waves.interval", w.interval, Some(Duration::from_secs(1)));
            v.duration("waves.refresh", w.refresh, Some(Duration::from_secs(1)));
        }
        // A placeholder's problems are not the file's: what is wrong there is that it is missing.
        let under = |path: &str| self.missing.iter().any(|m| path == m || path.starts_with(&format!("{m}.")));
        v.problems.retain(|p| !under(&p.path));
        let mut all: Vec<Problem> = self.missing.iter().map(|m| self.missing_problem(m)).collect();
        all.append(&mut v.problems);
        all
    }

    /// A missing required field, on the line of the section that lacks it (none for a section
    /// missing from the top level).
    fn missing_problem(&self, path: &str) -> Problem {
        let (parent, field) = path.rsplit_once('.').map_or(("", path), |(p, f)| (p, f));
        let line = if parent.is_empty() { None } else { self.lines.line(parent) };
        Problem { path: path.to_owned(), line, message: format!("missing field `{field}`: it is required") }
    }
}

struct Validator<'a> {
    loaded: &'a Loaded,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn push(&mut self, path: &str, message: String) {
        // A value set by an environment variable is reported against that variable: the file's
        // line would point at a value that is not the one in force.
        let (path, line) = match self.loaded.overridden.get(path) {
            Some(var) => (format!("{path} (from ${var})"), None),
            None => (path.to_owned(), self.loaded.lines.line(path)),
        };
        self.problems.push(Problem { path, line, message });
    }

    fn check(&mut self, bad: bool, path: &str, message: impl FnOnce() -> String) {
        if bad {
            self.push(path, message());
        }
    }

    fn url(&mut self, path: &str, raw: &str, schemes: &[&str]) {
        if redact::has_userinfo(raw) {
            // Never echo the value: it holds a secret.
            self.push(path, "must not contain credentials; use the auth section (passwordFile or passwordEnv)".into());
            return;
        }
        match Url::parse(raw) {
            Err(e) => self.push(path, format!("{raw:?} is not a valid URL: {e}")),
            Ok(u) if !schemes.contains(&u.scheme()) => self
                .push(path, format!("unsupported scheme {:?} (expected one of: {})", u.scheme(), schemes.join(", "))),
            Ok(u) if u.scheme() != "file" && u.host_str().is_none_or(str::is_empty) => {
                self.push(path, format!("{raw:?} has no host"))
            }
            Ok(_) => {}
        }
    }

    /// A duration field: no duration at all (found by `parse`), or shorter than its minimum.
    fn duration(&mut self, path: &str, d: HumanDuration, min: Option<Duration>) {
        if let Some(why) = self.loaded.bad_values.get(path) {
            self.push(path, why.clone());
        } else if let Some(min) = min.filter(|m| d.get() < *m) {
            self.push(path, format!("{d} is shorter than the minimum {}", HumanDuration::from(min)));
        }
    }

    fn credentials(&mut self, path: &str, c: &Credentials) {
        self.check(c.username.trim().is_empty(), &format!("{path}.username"), || "must not be empty".into());
        match (&c.password_file, &c.password_env) {
            (None, None) => self.push(path, "needs passwordFile or passwordEnv".into()),
            (Some(_), Some(_)) => self.push(path, "set passwordFile or passwordEnv, not both".into()),
            (Some(f), None) if f.trim().is_empty() => {
                self.push(&format!("{path}.passwordFile"), "must not be empty".into())
            }
            (None, Some(e)) if !is_env_name(e) => {
                self.push(&format!("{path}.passwordEnv"), format!("{e:?} is not an environment variable name"))
            }
            _ => {}
        }
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 1123 label, as Kubernetes requires for namespaces.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{s:?} is not a DNS label (lower case letters, digits, '-', at most 63)")) }
}

/// RFC 1123 subdomain, as Kubernetes requires for node names.
fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok());
    if ok { Ok(()) } else { Err(format!("{s:?} is not a valid node name (DNS subdomain)")) }
}

/// Kubernetes label key: optional DNS-subdomain prefix + '/' + name of at most 63 characters.
fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if prefix.is_some_and(|p| dns_subdomain(p).is_err()) || label_value(name).is_err() || name.is_empty() {
        return Err(format!("{k:?} is not a valid label key"));
    }
    Ok(())
}

/// Kubernetes label value: at most 63 characters, alphanumerics with '-', '_', '.' inside.
fn label_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(format!("{v:?} is not a valid label value")) }
}

/// `host` or `host:port`, as written before the first `/` of an image reference.
fn registry_host(h: &str) -> Result<(), String> {
    if h.contains("://") || h.contains('/') {
        return Err(format!("{h:?} must be a host[:port], without scheme or path"));
    }
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("{h:?} has an invalid port {p:?}"));
    }
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'));
    if host_ok { Ok(()) } else { Err(format!("{h:?} is not a valid registry host")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
identity:
  nodeName: store-node-1
  labels: {store: store1, env: qa}
git:
  url: https://git.example/stores/gitops.git
  auth:
    username: agent
    passwordFile: /run/secrets/git
registries:
  - host: harbor.example
    aliases: [harbor-ext.example:8443]
    auth:
      username: robot$store1+agent
      passwordEnv: HARBOR_SECRET
";

    /// [`GOOD`] with the optional `waves` section.
    const WAVES: &str = "waves:\n  reports: {registry: harbor.example, repository: gitops-reports/stores}\n";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems(text: &str) -> Vec<String> {
        match load(text, &no_env) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn prepull_is_off_when_absent_and_checked_field_by_field_with_its_line_when_on() {
        assert_eq!(load(GOOD, &no_env).expect("valid").config.prepull, None, "absent: off");
        let on = load(&format!("{GOOD}prepull:\n  helperImage: harbor.example/platform/gitops-agent:0.1.0\n"), &no_env)
            .expect("valid");
        let p = on.config.prepull.expect("present");
        assert!(p.enabled, "present: on unless it says otherwise");
        assert_eq!((p.max_concurrent, p.timeout.secs()), (2, 1800), "the defaults");
        let rows = [
            (
                "prepull: {}\n",
                vec![
                    "prepull.helperImage: line 15: must name the helper image (the agent's own image) while prepull.enabled is true",
                ],
            ),
            ("prepull: {enabled: false}\n", vec![]),
            (
                "prepull:\n  helperImage: \"Not An Image\"\n  maxConcurrent: 0\n  timeout: 1s\n",
                vec![
                    "prepull.helperImage: line 16: ",
                    "prepull.maxConcurrent: line 17: must be at least 1",
                    "prepull.timeout: line 18: 1s is shorter than the minimum 10s",
                ],
            ),
            ("prepull:\n  helperImage: a/b:1\n  timeout: soon\n", vec!["prepull.timeout: line 17: "]),
            ("prepull:\n  helperImage: a/b:1\n  bogus: 1\n", vec!["prepull.bogus: line 17: unknown field `bogus`"]),
        ];
        for (section, expected) in rows {
            let got = problems(&format!("{GOOD}{section}"));
            assert_eq!(got.len(), expected.len(), "{section}: {got:#?}");
            for (g, e) in got.iter().zip(&expected) {
                assert!(g.starts_with(e), "{section}: {g} should start with {e}");
            }
        }
    }

    #[test]
    fn a_good_config_loads_with_defaults_filled_in() {
        let l = load(GOOD, &no_env).expect("valid");
        assert_eq!(l.config.git.reference, "main");
        assert_eq!(l.config.git.poll_interval.get(), Duration::from_secs(60));
        assert_eq!(l.config.registries[0].max_concurrency, 4);
        assert_eq!(l.config.identity.labels["env"], "qa");
    }

    #[test]
    fn removed_bundles_are_deleted_by_default_and_the_share_is_a_percentage() {
        let l = load(GOOD, &no_env).expect("valid");
        assert_eq!(l.config.prune, Prune { removed_bundles: RemovedBundles::Delete, max_removed_percent: 50 });
        let keep = load(&format!("{GOOD}prune:\n  removedBundles: keep\n  maxRemovedPercent: 100\n"), &no_env);
        assert_eq!(keep.expect("valid").config.prune.removed_bundles, RemovedBundles::Keep);
        assert_eq!(
            problems(&format!("{GOOD}prune:\n  maxRemovedPercent: 150\n")),
            ["prune.maxRemovedPercent: line 16: 150 is not a percentage (0 to 100)"]
        );
        let unknown = problems(&format!("{GOOD}prune:\n  removedBundles: purge\n"));
        assert!(unknown.len() == 1 && unknown[0].contains("purge") && unknown[0].contains("line 16"), "{unknown:?}");
    }

    #[test]
    fn webhooks_need_a_known_sender_and_exactly_one_secret() {
        let text = format!(
            "{GOOD}server:\n  webhooks:\n  - sender: harbor\n    secretFile: /run/secrets/harbor\n\
             \x20 - sender: gitlab\n    secretEnv: X\n  - sender: gitea\n\
             \x20 - sender: harbor\n    secretEnv: \"1BAD\"\n"
        );
        assert_eq!(
            problems(&text),
            vec![
                r#"server.webhooks[1].sender: line 19: unknown sender "gitlab" (expected one of: harbor, gitea, github, registry, generic)"#,
                "server.webhooks[2]: line 21: needs secretFile or secretEnv: a webhook is never unauthenticated",
                r#"server.webhooks[3].sender: line 22: "harbor" is already configured at server.webhooks[0]"#,
                r#"server.webhooks[3].secretEnv: line 23: "1BAD" is not an environment variable name"#,
            ]
        );
        let good = format!("{GOOD}server:\n  webhooks:\n  - sender: gitea\n    secretEnv: GITEA_HOOK\n");
        let l = load(&good, &no_env).expect("valid");
        assert_eq!(l.config.server.webhooks[0].sender, Sender::Gitea, "a sender is written by its name");
        assert_eq!(l.config.server.max_body_bytes, 1024 * 1024);
        assert_eq!(l.config.server.webhook_every.get(), Duration::from_secs(1));
        assert!(l.config.leader_election.enabled);
        assert_eq!(l.config.leader_election.lease_duration.get(), Duration::from_secs(15));
    }

    #[test]
    fn per_node_mode_makes_the_node_name_the_agent_id() {
        let l = load(GOOD, &no_env).expect("valid");
        assert_eq!(l.config.identity.agent_id, "gitops-agent", "one identity per cluster by default");
        let text = GOOD.replace("  labels: {store", "  perNode: true\n  labels: {store");
        assert_eq!(load(&text, &no_env).expect("valid").config.identity.agent_id, "store-node-1");
    }

    #[test]
    fn an_unsupported_scheme_names_field_line_and_scheme() {
        let text = GOOD.replace("https://git.example/stores/gitops.git", "ftp://git.example/x");
        assert_eq!(
            problems(&text),
            vec![r#"git.url: line 5: unsupported scheme "ftp" (expected one of: https, http, file)"#]
        );
    }

    #[test]
    fn every_value_problem_is_reported_at_once() {
        let text = GOOD
            .replace("store-node-1", "Store_Node")
            .replace("passwordFile: /run/secrets/git", "passwordEnv: 9bad")
            .replace("harbor-ext.example:8443", "harbor.example");
        let p = problems(&(text + "rollout:\n  drainWindow: soon\n"));
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("identity.nodeName: line 2:"), "{p:#?}");
        assert!(p[1].starts_with("git.auth.passwordEnv: line 8:"), "{p:#?}");
        assert!(p[2].starts_with("registries[0].aliases[0]: line 11:"), "{p:#?}");
        assert!(p[3].starts_with("rollout.drainWindow: line 16:"), "{p:#?}");
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_line() {
        let p = problems(&GOOD.replace("  auth:\n    username: agent", "  auht:\n    username: agent"));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].starts_with("git.auht: line 6: unknown field `auht`"), "{p:#?}");
    }

    #[test]
    fn credentials_in_a_url_are_refused_without_echoing_them() {
        let p = problems(&GOOD.replace("https://git.example", "https://agent:hunter2@git.example"));
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].starts_with("git.url: line 5: must not contain credentials"), "{p:#?}");
        assert!(!p[0].contains("hunter2"));
    }

    #[test]
    fn environment_overrides_win_and_their_problems_name_the_variable() {
        let env = |k: &str| match k {
            "GITOPS_AGENT_GIT_URL" => Some("ftp://elsewhere".to_owned()),
            "GITOPS_AGENT_NODE_NAME" => Some("store-node-7".to_owned()),
            _ => None,
        };
        let p: Vec<String> = load(GOOD, &env).expect_err("ftp").iter().map(ToString::to_string).collect();
        assert_eq!(
            p,
            vec![
                r#"git.url (from $GITOPS_AGENT_GIT_URL): unsupported scheme "ftp" (expected one of: https, http, file)"#
            ]
        );

        let env = |k: &str| (k == "GITOPS_AGENT_NODE_NAME").then(|| "store-node-7".to_owned());
        assert_eq!(load(GOOD, &env).expect("valid").config.identity.node_name, "store-node-7");
    }

    #[test]
    fn invalid_yaml_is_located() {
        let p = problems("identity: [unclosed\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].starts_with("identity: line 1:"), "{p:#?}");
    }

    #[test]
    fn an_unknown_key_in_a_line_with_a_flow_mapping_names_that_key() {
        let p = problems("identity:\n  nodeName: n\n  lables: {a: b}\ngit:\n  url: https://x.example\n");
        assert_eq!(
            p,
            vec![
                "identity.lables: line 3: unknown field `lables`, expected one of nodeName, labels, labelsFromNode, agentId, perNode"
            ]
        );
    }

    #[test]
    fn missing_required_sections_are_named() {
        let p = problems("identity:\n  nodeName: n1\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("git"), "{p:#?}");
    }

    #[test]
    fn a_missing_required_field_is_reported_with_every_other_problem_of_the_file() {
        let no_identity = GOOD.replace("identity:\n  nodeName: store-node-1\n  labels: {store: store1, env: qa}\n", "");
        assert_ne!(no_identity, GOOD);
        let ftp = |t: &str| t.replace("url: https://git.example", "url: ftp://git.example");
        // (case, file, every problem in order: missing fields first, then the values')
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            (
                "the issue's file: no identity and an ftp:// git.url",
                ftp(&no_identity),
                vec![
                    "identity: missing field `identity`: it is required",
                    "git.url: line 2: unsupported scheme \"ftp\" (expected one of: https, http, file)",
                ],
            ),
            (
                "a missing value inside a section names the section's line",
                ftp(&GOOD.replace("  nodeName: store-node-1\n", "")),
                vec![
                    "identity.nodeName: line 1: missing field `nodeName`: it is required",
                    "git.url: line 4: unsupported scheme \"ftp\" (expected one of: https, http, file)",
                ],
            ),
            (
                "missing fields in lists and credentials, beside a bad duration",
                GOOD.replace("  - host: harbor.example\n", "  - caFile: ca.pem\n")
                    .replace("    username: agent\n", "")
                    .replace(
                        "url: https://git.example/stores/gitops.git\n",
                        "url: https://git.example/stores/gitops.git\n  pollInterval: soon\n",
                    ),
                vec![
                    "git.auth.username: line 7: missing field `username`: it is required",
                    "registries[0].host: line 10: missing field `host`: it is required",
                    "git.pollInterval: line 6: \"soon\" is not a duration such as 30s or 5m: expected number at 0",
                ],
            ),
            (
                "an empty file lacks both required sections, and nothing else is said",
                String::new(),
                vec!["git: missing field `git`: it is required", "identity: missing field `identity`: it is required"],
            ),
        ];
        for (case, text, want) in cases {
            let got = problems(&text);
            assert_eq!(got, want, "{case}:\n{text}");
        }
        // A structural error beside a missing field still comes alone, located.
        let unknown = problems(&no_identity.replace("git:\n", "git:\n  branch: main\n"));
        assert_eq!(unknown.len(), 1, "{unknown:#?}");
        assert!(unknown[0].starts_with("git.branch: line 2: unknown field `branch`"), "{unknown:#?}");
        // A variable supplies what the file lacks: nothing is missing then.
        let env = |k: &str| (k == "GITOPS_AGENT_GIT_URL").then(|| "https://git.example/x.git".to_owned());
        let no_url = GOOD.replace("  url: https://git.example/stores/gitops.git\n", "");
        assert!(load(&no_url, &env).is_ok(), "{:?}", load(&no_url, &env).err());
        assert_eq!(problems(&no_url), vec!["git.url: line 4: missing field `url`: it is required"]);
    }

    #[test]
    fn every_env_override_maps_to_a_known_field() {
        for (var, path) in ENV_OVERRIDES {
            // A duration field takes only a duration.
            let value = if DURATIONS.contains(path) { "7s" } else { "from-env" };
            let env = |k: &str| (k == *var).then(|| value.to_owned());
            let loaded = parse(GOOD, &env).expect("parses");
            assert_eq!(loaded.overridden.get(*path).map(String::as_str), Some(*var));
            let json = serde_json::to_value(&loaded.config).expect("serialises");
            let field = path.split('.').fold(&json, |v, k| &v[k]);
            assert_eq!(field, value, "{var} did not set {path}");
        }
    }

    #[test]
    fn the_waves_section_names_a_configured_registry_and_a_repository_path() {
        let good = format!("{GOOD}{WAVES}");
        let l = load(&good, &no_env).expect("valid");
        let w = l.config.waves.expect("waves");
        assert_eq!((w.interval.secs(), w.refresh.secs()), (60, 300));
        let bad = good
            .replace("registry: harbor.example", "registry: elsewhere.example")
            .replace("gitops-reports/stores", "Reports//x");
        let got = problems(&bad);
        assert!(
            got.iter().any(|p| p.starts_with("waves.reports.registry: line ") && p.contains("elsewhere.example")),
            "{got:?}"
        );
        assert!(got.iter().any(|p| p.starts_with("waves.reports.repository: line ")), "{got:?}");
        let slow = format!("{good}  interval: soon\n");
        assert!(problems(&slow).iter().any(|p| p.starts_with("waves.interval: line 17: ")), "{:?}", problems(&slow));
    }

    #[test]
    fn every_duration_path_names_a_duration_field() {
        // With every optional section that holds one present.
        let text = format!("{GOOD}{WAVES}prepull:\n  helperImage: harbor.example/platform/gitops-agent:0.1.0\n");
        let json = serde_json::to_value(&load(&text, &no_env).expect("valid").config).expect("serialises");
        for path in DURATIONS {
            let field = path.split('.').fold(&json, |v, k| &v[k]);
            let text = field.as_str().unwrap_or_else(|| panic!("{path} is no text: {field}"));
            text.parse::<HumanDuration>().unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn durations_are_parsed_at_load_and_checked_against_their_minimum() {
        let text = format!("{GOOD}render:\n  timeout: 90s\nleaderElection:\n  leaseDuration: 2s\n");
        assert_eq!(problems(&text), vec!["leaderElection.leaseDuration: line 18: 2s is shorter than the minimum 5s"]);
        let l = load(&text.replace("leaseDuration: 2s", "leaseDuration: 1m"), &no_env).expect("valid");
        assert_eq!(l.config.render.timeout.get(), Duration::from_secs(90));
        assert_eq!(l.config.leader_election.lease_duration.get(), Duration::from_secs(60));
    }

    #[test]
    fn a_structural_error_beside_a_bad_typed_value_comes_alone_with_its_line() {
        for (extra, want) in [
            ("rollout:\n  drainWindow: soon\n  bogus: 1\n", "rollout.bogus: line 17: unknown field `bogus`"),
            ("rollout:\n  bogus: 1\n  drainWindow: soon\n", "rollout.bogus: line 16: unknown field `bogus`"),
            (
                "server:\n  webhooks:\n  - sender: gitlab\n    secretEnv: X\n    extra: 1\n",
                "server.webhooks[0].extra: line 19: unknown field `extra`",
            ),
        ] {
            let p = problems(&format!("{GOOD}{extra}"));
            assert_eq!(p.len(), 1, "{p:#?}");
            assert!(p[0].starts_with(want), "{p:#?}");
        }
    }

    #[test]
    fn a_bad_duration_from_the_environment_names_the_variable() {
        let env = |k: &str| (k == "GITOPS_AGENT_POLL_INTERVAL").then(|| "often".to_owned());
        let p: Vec<String> = load(GOOD, &env).expect_err("no duration").iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with(
                r#"git.pollInterval (from $GITOPS_AGENT_POLL_INTERVAL): "often" is not a duration such as 30s or 5m: "#
            ),
            "{p:#?}"
        );
        // A good variable replaces a bad file value: the value in force is the one checked.
        let text = GOOD.replace("  url: https://git", "  pollInterval: never\n  url: https://git");
        assert!(
            problems(&text)[0].starts_with("git.pollInterval: line 5: \"never\" is not a duration"),
            "{:?}",
            problems(&text)
        );
        let env = |k: &str| (k == "GITOPS_AGENT_POLL_INTERVAL").then(|| "2m".to_owned());
        assert_eq!(load(&text, &env).expect("valid").config.git.poll_interval.get(), Duration::from_secs(120));
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../deploy/examples/agent.yaml");
        let loaded = super::load(text, &|_| None).expect("deploy/examples/agent.yaml must stay valid");
        assert_eq!(loaded.config.registries[0].auth.as_ref().map(|a| a.username.as_str()), Some("robot$store1+agent"));
    }
}
