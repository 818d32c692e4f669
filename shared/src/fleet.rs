//! The subset of Fleet's `fleet.yaml` the agent understands, target matching on node labels, and
//! Fleet's values layering. Pure: file contents come in as text, values files through a lookup.
//!
//! Values precedence, lowest to highest (Fleet's `bundlereader`): `helm.values` < each of
//! `helm.valuesFiles` in order < the first matching target's `helm.values` < that target's
//! `helm.valuesFiles`; then `global.fleet.clusterLabels` is injected. Maps deep-merge; lists and
//! scalars replace; a `null` removes the key (Helm's coalescing). The chart's own `values.yaml`
//! sits below all of this and is applied by Helm itself.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::duration::HumanDuration;
use crate::k8s::LabelSelector;
use crate::problem::Problem;
use crate::yaml_lines::LineIndex;

/// A parsed `fleet.yaml`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetYaml {
    #[serde(default)]
    pub default_namespace: Option<String>,
    /// Forces every namespaced object into this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub helm: Option<Helm>,
    #[serde(default)]
    pub kustomize: Option<Kustomize>,
    #[serde(default)]
    pub target_customizations: Vec<Target>,
    #[serde(default)]
    pub depends_on: Vec<DependsOn>,
    /// Our own rollout policy, beside Fleet's keys (Fleet ignores a key it does not know, so one
    /// `fleet.yaml` serves both during a migration). Checked strictly: a typo in a safety policy
    /// must not silently switch it off.
    #[serde(skip)]
    pub gitops_agent: BundlePolicy,
}

/// The `gitopsAgent:` section of `fleet.yaml` (docs/bundles.md). Every field is optional; the
/// node config's `rollout` section gives the defaults.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundlePolicy {
    /// Write every image as `repo:tag@sha256:...` (default true). Off, images keep their tag and
    /// are still checked to exist.
    #[serde(default)]
    pub pin_digests: Option<bool>,
    /// Tag policies per image repository; the chosen tag replaces the rendered one (Git is never
    /// written).
    #[serde(default)]
    pub images: Vec<ImagePolicy>,
    #[serde(default)]
    pub progress_deadline: Option<HumanDuration>,
    #[serde(default)]
    pub verify_window: Option<HumanDuration>,
    /// How long sessions get once a pod is asked to stop, for every workload of the bundle
    /// (`shared::drain`); the default window of `drain[]` entries.
    #[serde(default)]
    pub drain_window: Option<HumanDuration>,
    /// Drain policies per workload (`shared::drain`): surge or one pod at a time, grace period,
    /// preStop, session probe, waiting for idle. Instead of the implicit one of `drainWindow`.
    #[serde(default)]
    pub drain: Vec<crate::drain::DrainSpec>,
    /// Take over fields another field manager owns when applying (default false: a conflict
    /// blocks the bundle and is reported).
    #[serde(default)]
    pub force_conflicts: bool,
    /// Delete objects this agent applied for the bundle once they leave Git (default false).
    #[serde(default)]
    pub prune: bool,
    /// Namespaces the bundle may touch (`*` for any). Default: its own namespace and the
    /// namespaces it creates.
    #[serde(default)]
    pub allowed_namespaces: Option<Vec<String>>,
    /// Kinds the bundle may apply (`Kind` or `group/Kind`). Default: any kind.
    #[serde(default)]
    pub allowed_kinds: Option<Vec<String>>,
    /// HTTP probes that must stay green during the verification window (`shared::probe`).
    #[serde(default)]
    pub health_probes: Vec<crate::probe::ProbeSpec>,
    /// Allow/deny windows for starting a rollout (`shared::window`), beside the node's global
    /// ones (`rollout.windows`). Rollbacks ignore them.
    #[serde(default)]
    pub rollout_windows: Vec<crate::window::WindowSpec>,
    /// Signatures every image of the bundle must carry (`shared::cosign`), beside the node's
    /// per-registry policy, never instead of it; key files are paths inside the bundle.
    #[serde(default)]
    pub verify: Option<crate::cosign::VerifySpec>,
    /// The waves this bundle's releases walk across stores (`shared::waves`), instead of the
    /// repository's `waves.yaml`. Checked on its own, entry by entry, with path and line.
    #[serde(skip)]
    pub waves: Option<Vec<crate::waves::Wave>>,
}

/// One image's tag policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePolicy {
    /// `host/path` as the chart writes it (a configured alias of the host matches too).
    pub repository: String,
    pub policy: crate::policy::PolicySpec,
}

impl BundlePolicy {
    pub fn pin_digests(&self) -> bool {
        self.pin_digests.unwrap_or(true)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Helm {
    /// A local path (relative to the bundle); remote charts are not supported.
    #[serde(default)]
    pub chart: Option<String>,
    #[serde(default)]
    pub release_name: Option<String>,
    #[serde(default)]
    pub values: Option<Value>,
    #[serde(default)]
    pub values_files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kustomize {
    #[serde(default)]
    pub dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default)]
    pub name: Option<String>,
    /// Absent: the target matches no node. `{}`: it matches every node.
    #[serde(default)]
    pub cluster_selector: Option<LabelSelector>,
    #[serde(default)]
    pub helm: Option<Helm>,
    #[serde(default)]
    pub kustomize: Option<Kustomize>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependsOn {
    pub name: String,
}

/// Keys we read, per YAML path pattern (`[]` stands for any list index). Anything else is named
/// in a warning: Fleet knows more keys than we implement, and silence would hide that.
const KNOWN: &[(&str, &[&str])] = &[
    ("", &["defaultNamespace", "namespace", "helm", "kustomize", "targetCustomizations", "dependsOn", "gitopsAgent"]),
    ("helm", &["chart", "releaseName", "values", "valuesFiles"]),
    ("kustomize", &["dir"]),
    ("targetCustomizations[]", &["name", "clusterSelector", "helm", "kustomize"]),
    ("targetCustomizations[].helm", &["values", "valuesFiles"]),
    ("targetCustomizations[].kustomize", &["dir"]),
    ("targetCustomizations[].clusterSelector", &["matchLabels", "matchExpressions"]),
    ("targetCustomizations[].clusterSelector.matchExpressions[]", &["key", "operator", "values"]),
    ("dependsOn[]", &["name"]),
];

/// A key we do not implement, named with its path and line.
pub type Warning = Problem;

/// Parses `fleet.yaml`; an unreadable document or a wrong type is an error, unknown keys are
/// warnings.
pub fn parse(text: &str) -> Result<(FleetYaml, Vec<Warning>), Problem> {
    let lines = LineIndex::new(text);
    let raw: Value = serde_saphyr::from_str(text).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or("invalid YAML").trim_start_matches("error: ").to_owned();
        Problem { path: "(document)".into(), line: e.location().map(|l| l.line() as usize), message: first }
    })?;
    let raw = if raw.is_null() { Value::Object(Map::new()) } else { raw };
    let mut raw = if raw.is_object() {
        raw
    } else {
        return Err(Problem { path: "(document)".into(), line: Some(1), message: "expected a mapping".into() });
    };
    let mut warnings = Vec::new();
    walk_unknown(&raw, "", "", &lines, &mut warnings);
    let policy = raw.as_object_mut().and_then(|o| o.remove(POLICY_KEY));
    let mut parsed: FleetYaml = serde_json::from_value(raw).map_err(|e| Problem {
        path: "(document)".into(),
        line: None,
        message: format!("unexpected structure: {e}"),
    })?;
    if let Some(policy) = policy {
        parsed.gitops_agent = parse_policy(policy, &lines)?;
    }
    let mut templated = Vec::new();
    if let Some(v) = parsed.helm.as_ref().and_then(|h| h.values.as_ref()) {
        find_templating(v, "helm.values", &mut templated);
    }
    for (i, t) in parsed.target_customizations.iter().enumerate() {
        if let Some(v) = t.helm.as_ref().and_then(|h| h.values.as_ref()) {
            find_templating(v, &format!("targetCustomizations[{i}].helm.values"), &mut templated);
        }
    }
    for path in templated {
        warnings.push(Problem {
            line: lines.line(&path),
            path,
            message: "Fleet's `${ ... }` values templating is not evaluated by gitops-agent; the text is passed as is"
                .into(),
        });
    }
    Ok((parsed, warnings))
}

/// The key of our own section in `fleet.yaml`.
pub const POLICY_KEY: &str = "gitopsAgent";

/// The durations of `gitopsAgent`, read as [`HumanDuration`].
const DURATIONS: &[&str] = &["progressDeadline", "verifyWindow", "drainWindow"];

fn parse_policy(mut raw: Value, lines: &LineIndex) -> Result<BundlePolicy, Problem> {
    let at = |path: String, message: String| Problem { line: lines.line(&path), path, message };
    if raw.is_null() {
        return Ok(BundlePolicy::default());
    }
    // Drain entries one by one first: serde's error for a misspelt key names neither the entry
    // nor the line.
    for (i, entry) in raw.get("drain").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("{POLICY_KEY}.drain[{i}]");
        if let Some((key, message)) = crate::drain::unknown_key(entry) {
            return Err(at(format!("{path}{key}"), message));
        }
        serde_json::from_value::<crate::drain::DrainSpec>(entry.clone()).map_err(|e| at(path, e.to_string()))?;
    }
    let waves = match raw.as_object_mut().and_then(|o| o.remove("waves")) {
        None | Some(Value::Null) => None,
        Some(list) => Some(crate::waves::parse_list(&list, &format!("{POLICY_KEY}.waves"), lines)?),
    };
    // A bad duration is taken out before serde reads the section (its error would name neither
    // the field nor the line) and reported where it always was: after images, probes and windows.
    let mut bad_duration = None;
    for field in DURATIONS {
        if let Some(Value::String(v)) = raw.get(field)
            && let Err(e) = humantime::parse_duration(v)
        {
            bad_duration
                .get_or_insert_with(|| at(format!("{POLICY_KEY}.{field}"), format!("{v:?} is not a duration: {e}")));
            raw[field] = Value::Null;
        }
    }
    let mut policy: BundlePolicy = serde_json::from_value(raw).map_err(|e| at(POLICY_KEY.into(), e.to_string()))?;
    policy.waves = waves;
    for (i, image) in policy.images.iter().enumerate() {
        let path = format!("{POLICY_KEY}.images[{i}]");
        crate::image::ImageRef::parse(&image.repository)
            .ok()
            .filter(|r| r.tag.is_none() && r.digest.is_none())
            .ok_or_else(|| {
                at(
                    format!("{path}.repository"),
                    format!("{:?} is not an image repository (host/path, no tag or digest)", image.repository),
                )
            })?;
        crate::policy::TagPolicy::new(&image.policy).map_err(|e| at(format!("{path}.policy"), e.to_string()))?;
    }
    for (i, probe) in policy.health_probes.iter().enumerate() {
        crate::probe::Probe::compile(probe).map_err(|e| {
            let e = e.under(&format!("{POLICY_KEY}.healthProbes[{i}]"));
            at(e.path, e.message)
        })?;
    }
    for (i, window) in policy.rollout_windows.iter().enumerate() {
        crate::window::Window::from_spec(window).map_err(|e| {
            let e = e.under(&format!("{POLICY_KEY}.rolloutWindows[{i}]"));
            at(e.path, e.message)
        })?;
    }
    if let Some(verify) = &policy.verify
        && let Some((path, message)) = verify.problems().into_iter().next()
    {
        return Err(at(format!("{POLICY_KEY}.verify.{path}"), message));
    }
    if let Some(problem) = bad_duration {
        return Err(problem);
    }
    crate::drain::check(policy.drain_window, &policy.drain).map_err(|e| at(e.path, e.message))?;
    Ok(policy)
}

/// Paths of string values that use Fleet's `${ .ClusterLabels.x }` templating.
fn find_templating(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.contains("${") => out.push(path.to_owned()),
        Value::Object(map) => map.iter().for_each(|(k, c)| find_templating(c, &format!("{path}.{k}"), out)),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, c)| find_templating(c, &format!("{path}[{i}]"), out))
        }
        _ => {}
    }
}

fn walk_unknown(v: &Value, path: &str, pattern: &str, lines: &LineIndex, out: &mut Vec<Warning>) {
    match v {
        Value::Object(map) => {
            let Some((_, known)) = KNOWN.iter().find(|(p, _)| *p == pattern) else { return };
            for (k, child) in map {
                let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                if !known.contains(&k.as_str()) {
                    out.push(Problem {
                        line: lines.line(&child_path),
                        path: child_path,
                        message: format!("{k:?} is not supported by gitops-agent and is ignored"),
                    });
                    continue;
                }
                let child_pattern = if pattern.is_empty() { k.clone() } else { format!("{pattern}.{k}") };
                walk_unknown(child, &child_path, &child_pattern, lines, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_unknown(item, &format!("{path}[{i}]"), &format!("{pattern}[]"), lines, out);
            }
        }
        _ => {}
    }
}

impl FleetYaml {
    /// The first target whose selector matches `labels` (Fleet uses the first match only).
    pub fn target_for(&self, labels: &BTreeMap<String, String>) -> Option<&Target> {
        self.target_customizations.iter().find(|t| t.cluster_selector.as_ref().is_some_and(|s| s.matches(labels)))
    }

    /// The layered Helm values for a node with `labels`; `read` returns a values file's parsed
    /// content (paths as written, relative to the bundle), or an error naming the problem.
    pub fn values_for(
        &self,
        labels: &BTreeMap<String, String>,
        read: &dyn Fn(&str) -> Result<Value, String>,
    ) -> Result<Value, String> {
        let mut out = Value::Object(Map::new());
        let mut layer = |helm: &Helm| -> Result<(), String> {
            if let Some(v) = &helm.values {
                merge(&mut out, v.clone());
            }
            for f in &helm.values_files {
                merge(&mut out, read(f).map_err(|e| format!("values file {f}: {e}"))?);
            }
            Ok(())
        };
        if let Some(h) = &self.helm {
            layer(h)?;
        }
        if let Some(h) = self.target_for(labels).and_then(|t| t.helm.as_ref()) {
            layer(h)?;
        }
        let cluster_labels: Map<String, Value> =
            labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        merge(&mut out, serde_json::json!({"global": {"fleet": {"clusterLabels": cluster_labels}}}));
        Ok(out)
    }
}

/// Fleet's templating of `defaultNamespace`/`namespace` by the node's labels: each
/// `${ .ClusterLabels.<key> }` becomes that label's value (so one bundle gives each store its own
/// namespace). Any other `${ ... }`, or a label the node lacks, is an error naming it.
pub fn expand_cluster_labels(text: &str, labels: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("{text:?}: `${{` without a closing `}}`"))?;
        let expr = after[..end].trim();
        let key = expr
            .strip_prefix(".ClusterLabels.")
            .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace))
            .ok_or_else(|| format!("{text:?}: only `${{ .ClusterLabels.<key> }}` is evaluated, not {expr:?}"))?;
        let value = labels.get(key).ok_or_else(|| format!("{text:?}: this node has no label {key:?}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Deep-merges `overlay` into `base`: maps merge key by key, anything else replaces, and a
/// `null` in the overlay removes the key.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) = b.get_mut(&k) {
                    merge(existing, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const FLEET: &str = "\
defaultNamespace: kiosk
helm:
  chart: ./
  values:
    orchestrator: {logLevel: info, replicas: 1}
    list: [a, b]
  valuesFiles: [values-base.yaml]
targetCustomizations:
- name: store1
  clusterSelector:
    matchLabels: {store: store1}
  helm:
    values:
      store: {name: from-target-values}
    valuesFiles: [values-store1.yaml]
- name: qa
  clusterSelector:
    matchExpressions: [{key: env, operator: In, values: [qa]}]
  helm:
    valuesFiles: [values-qa.yaml]
- name: nobody
  helm:
    values: {never: true}
";

    fn files(name: &str) -> Result<Value, String> {
        match name {
            "values-base.yaml" => {
                Ok(json!({"orchestrator": {"logLevel": "warn"}, "store": {"name": "base", "lang": "de"}}))
            }
            "values-store1.yaml" => Ok(json!({"store": {"name": "store1"}, "list": ["c"]})),
            "values-qa.yaml" => Ok(json!({"store": {"lang": "en"}})),
            other => Err(format!("{other}: no such file")),
        }
    }

    #[test]
    fn every_values_layer_wins_the_keys_it_sets_in_fleet_order() {
        let (f, warnings) = parse(FLEET).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let v = f.values_for(&labels(&[("store", "store1"), ("env", "qa")]), &files).unwrap();
        // helm.values alone: replicas. valuesFiles over helm.values: logLevel, store.lang.
        assert_eq!(v["orchestrator"], json!({"logLevel": "warn", "replicas": 1}));
        assert_eq!(v["store"]["lang"], "de", "store1 target is first; qa's file is not applied");
        // Target values over base files, then the target's files over its values.
        assert_eq!(v["store"]["name"], "store1");
        // Lists replace rather than merge.
        assert_eq!(v["list"], json!(["c"]));
        assert_eq!(v["global"]["fleet"]["clusterLabels"], json!({"store": "store1", "env": "qa"}));
        assert!(v.get("never").is_none(), "a target without selector matches nothing");
    }

    #[test]
    fn the_first_matching_target_is_used() {
        let (f, _) = parse(FLEET).unwrap();
        assert_eq!(f.target_for(&labels(&[("env", "qa")])).and_then(|t| t.name.as_deref()), Some("qa"));
        assert_eq!(f.target_for(&labels(&[("env", "prod")])), None);
        let v = f.values_for(&labels(&[("env", "qa")]), &files).unwrap();
        assert_eq!(v["store"], json!({"name": "base", "lang": "en"}));
    }

    #[test]
    fn a_bundle_s_signature_policy_is_read_and_a_bad_one_names_its_field_and_line() {
        let good =
            "gitopsAgent:\n  verify:\n    cosign:\n      publicKeys:\n      - {name: ci-2026, file: keys/ci.pub}\n";
        let (f, _) = parse(good).unwrap();
        let keys = &f.gitops_agent.verify.expect("verify").cosign.expect("cosign").public_keys;
        assert_eq!((keys[0].name.as_str(), keys[0].file.as_str()), ("ci-2026", "keys/ci.pub"));
        let empty = "gitopsAgent:\n  verify:\n    cosign:\n      publicKeys: []\n";
        let p = parse(empty).unwrap_err();
        assert_eq!((p.path.as_str(), p.line), ("gitopsAgent.verify.cosign.publicKeys", Some(4)), "{p}");
        assert!(parse("gitopsAgent:\n  verify:\n    notation: {}\n").is_err(), "only cosign is known");
    }

    #[test]
    fn a_bundle_s_waves_are_read_and_a_bad_one_names_its_field_and_line() {
        let good = "gitopsAgent:\n  waves:\n  - name: qa\n    selector: {matchLabels: {env: qa}}\n    soak: 5m\n  - name: all\n    selector: {}\n";
        let (f, _) = parse(good).unwrap();
        let waves = f.gitops_agent.waves.expect("waves");
        assert_eq!((waves[0].name.as_str(), waves[0].soak, waves[1].name.as_str()), ("qa", 300, "all"));
        let bad = "defaultNamespace: x\ngitopsAgent:\n  waves:\n  - name: qa\n    selector: {}\n    soak: later\n";
        let p = parse(bad).unwrap_err();
        assert_eq!((p.path.as_str(), p.line), ("gitopsAgent.waves[0].soak", Some(6)), "{p}");
        assert_eq!(parse("gitopsAgent: {}\n").unwrap().0.gitops_agent.waves, None);
    }

    #[test]
    fn a_namespace_is_templated_by_the_node_s_labels() {
        let l = labels(&[("store", "store7")]);
        assert_eq!(expand_cluster_labels("kiosk-${ .ClusterLabels.store }", &l), Ok("kiosk-store7".into()));
        assert_eq!(expand_cluster_labels("kiosk", &l), Ok("kiosk".into()));
        assert!(expand_cluster_labels("${ .ClusterLabels.ring }", &l).unwrap_err().contains("no label \"ring\""));
        assert!(expand_cluster_labels("${ .Values.x }", &l).unwrap_err().contains("only `${ .ClusterLabels"));
    }

    #[test]
    fn null_removes_a_key_as_helm_does() {
        let mut base = json!({"a": {"b": 1, "c": 2}});
        merge(&mut base, json!({"a": {"b": null}}));
        assert_eq!(base, json!({"a": {"c": 2}}));
    }

    #[test]
    fn a_missing_values_file_names_the_file() {
        let (f, _) = parse("helm:\n  valuesFiles: [nope.yaml]\n").unwrap();
        let err = f.values_for(&BTreeMap::new(), &files).unwrap_err();
        assert_eq!(err, "values file nope.yaml: nope.yaml: no such file");
    }

    #[test]
    fn unknown_keys_are_warnings_that_name_path_and_line() {
        let text = "defaultNamespace: x\nhelm:\n  repo: https://charts.example\n  chart: kiosk\n\
                    targetCustomizations:\n- name: a\n  clusterGroup: stores\n  clusterSelector: {}\nrolloutStrategy: {}\n";
        let (_, w) = parse(text).unwrap();
        let got: Vec<String> = w.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            vec![
                r#"helm.repo: line 3: "repo" is not supported by gitops-agent and is ignored"#,
                r#"rolloutStrategy: line 9: "rolloutStrategy" is not supported by gitops-agent and is ignored"#,
                r#"targetCustomizations[0].clusterGroup: line 7: "clusterGroup" is not supported by gitops-agent and is ignored"#,
            ]
        );
    }

    #[test]
    fn the_gitops_agent_section_is_parsed_and_checked_strictly() {
        let text = "helm:\n  chart: ./\ngitopsAgent:\n  pinDigests: false\n  drainWindow: 45s\n  images:\n  \
                    - repository: harbor.example/library/app\n    policy: {semver: \">=1.0.0 <2.0.0\"}\n";
        let (f, w) = parse(text).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert!(!f.gitops_agent.pin_digests());
        assert_eq!(f.gitops_agent.drain_window, Some(HumanDuration::from_secs(45)));
        assert_eq!(f.gitops_agent.images[0].repository, "harbor.example/library/app");
        assert!(FleetYaml::default().gitops_agent.pin_digests(), "pinning is on by default");

        // (text, path named, words in the message)
        let bad: &[(&str, &str, &str)] = &[
            ("gitopsAgent:\n  pinDigest: false\n", "gitopsAgent", "unknown field `pinDigest`"),
            ("gitopsAgent:\n  drainWindow: soon\n", "gitopsAgent.drainWindow", "\"soon\" is not a duration"),
            (
                "gitopsAgent:\n  drainWindow: later\n  drain:\n  - workload: web\n",
                "gitopsAgent.drainWindow",
                "\"later\" is not a duration",
            ),
            ("gitopsAgent:\n  progressDeadline: 5\n", "gitopsAgent", "invalid type: integer `5`, expected a string"),
            (
                "gitopsAgent:\n  images:\n  - repository: h.example/app:1.0\n    policy: {semver: '1'}\n",
                "gitopsAgent.images[0].repository",
                "not an image repository",
            ),
            (
                "gitopsAgent:\n  images:\n  - repository: h.example/app\n    policy: {semver: '>=banana'}\n",
                "gitopsAgent.images[0].policy",
                "semver range",
            ),
            (
                "gitopsAgent:\n  healthProbes:\n  - workload: web\n    url: 'http://{podIp}:80/health'\n",
                "gitopsAgent.healthProbes[0].url",
                "unknown variable {podIp}",
            ),
            (
                "gitopsAgent:\n  healthProbes:\n  - url: /health\n    interval: often\n",
                "gitopsAgent.healthProbes[0].interval",
                "\"often\" is not a duration",
            ),
            (
                "gitopsAgent:\n  rolloutWindows:\n  - kind: deny\n    schedule: '0 22 * * 1-5'\n    duration: 2h\n    timeZone: Europe/Berlni\n",
                "gitopsAgent.rolloutWindows[0].timeZone",
                "Europe/Berlni",
            ),
            (
                "gitopsAgent:\n  drain:\n  - workload: web\n    sessions:\n      url: /metrics\n      gauges: kiosk_active_sessions\n",
                "gitopsAgent.drain[0].sessions.gauges",
                "unknown field `gauges`",
            ),
            (
                "gitopsAgent:\n  drain:\n  - workload: web\n    windw: 45s\n",
                "gitopsAgent.drain[0].windw",
                "unknown field `windw`",
            ),
            ("gitopsAgent:\n  drain:\n  - replace: sometimes\n", "gitopsAgent.drain[0]", "unknown variant `sometimes`"),
            (
                "gitopsAgent:\n  drain:\n  - workload: web\n  - workload: db\n    window: soon\n",
                "gitopsAgent.drain[1].window",
                "\"soon\" is not a duration",
            ),
        ];
        for (text, path, words) in bad {
            let e = parse(text).unwrap_err();
            assert_eq!(e.path, *path, "{text}");
            assert!(e.message.contains(words), "{text}: {e}");
            assert!(e.line.is_some(), "{text}: {e}");
        }
    }

    #[test]
    fn fleet_values_templating_is_a_warning_not_silence() {
        let text = "helm:\n  values:\n    store: ${ .ClusterLabels.store }\n";
        let (_, w) = parse(text).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].path, "helm.values.store");
        assert_eq!(w[0].line, Some(3));
    }

    #[test]
    fn broken_yaml_is_an_error_with_a_line() {
        let e = parse("helm:\n  values: [unclosed\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
        let e = parse("helm:\n  valuesFiles: 7\n").unwrap_err();
        assert!(e.message.contains("unexpected structure"), "{e}");
    }
}
