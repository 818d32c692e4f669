//! Untrusted kustomizations: what a bundle's `kustomization.yaml` files may reference before
//! `kustomize build` runs.
//!
//! kustomize fetches over the network by itself: a URL among `resources` is downloaded, a
//! `github.com/org/repo//dir?ref=v1` entry is cloned, and every file field it loads through its
//! loader (`patches[].path`, `configMapGenerator[].files`, `crds`, `openapi.path`, ...) accepts an
//! `http(s)://` URL. A directory entry may also lead out of the bundle (`../../elsewhere`), where
//! kustomize's load restrictor does not look. A store renders only what Git holds, so every
//! kustomization of a bundle (the one rendered and each local base, component and generator
//! directory it reaches) is checked here first, and each refusal names the file, the field and its
//! line. Plugins are refused too: KRM functions (exec, container, starlark), external plugins and
//! `helmCharts` (kustomize would run helm, which pulls charts). The agent runs kustomize without
//! `--enable-alpha-plugins`, `--enable-exec` and `--enable-helm`, so kustomize would refuse those
//! as well; refusing them here says where.
//!
//! Pure: the caller passes the bundle's file list and a reader of its files.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::problem::Problem;
use crate::yaml_lines::LineIndex;

/// The file names kustomize looks for in a folder (its `konfig.RecognizedKustomizationFileNames`).
pub const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Annotations that make a generator or transformer config a KRM function (exec, container or
/// starlark): kustomize's `runtimeutil.FunctionAnnotationKey` and its legacy spelling.
const FUNCTION_ANNOTATIONS: [&str; 2] = ["config.kubernetes.io/function", "config.k8s.io/function"];

/// One reference the bundle may not make: the bundle-relative file and what is wrong in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub file: String,
    pub problem: Problem,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

/// Checks the kustomization in `dir` (relative to the bundle, `.` for its root) and every local
/// kustomization it reaches. `files` lists the bundle's files (relative, `/`-separated, as the
/// export wrote them); `read` returns one of them. Returns every refusal; empty means kustomize
/// may run.
pub fn check(dir: &str, files: &[String], read: &dyn Fn(&str) -> Result<String, String>) -> Vec<Refusal> {
    let mut walk = Walk { files, read, seen: BTreeSet::new(), out: Vec::new() };
    let root = normalize(dir);
    if walk.kustomization_files(&root).is_empty() {
        walk.out
            .push(Refusal { file: display(&root), problem: Problem::new("(folder)", "holds no kustomization.yaml") });
    }
    walk.dir(&root, Role::Objects);
    walk.out
}

/// What the files a kustomization lists under `resources` are to kustomize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// Objects to render (the rendered kustomization and its bases).
    Objects,
    /// Generator, transformer or validator configs (a folder listed under `generators`, ...).
    PluginConfigs,
}

/// How kustomize treats an entry of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A file or a folder: kustomize tries a repository URL first, then a file, then a folder
    /// (`resources`, `components`, `bases`).
    FileOrDir(Role),
    /// Like `FileOrDir`, but an entry may also be an inline config (`generators`, ...).
    Plugin,
    /// A file loaded through kustomize's loader (which fetches `http(s)://`).
    File,
    /// A file, or `key=file` (`configMapGenerator[].files`).
    KeyFile,
    /// A file, or an inline patch (`patchesStrategicMerge`).
    FileOrInline,
}

struct Walk<'a> {
    files: &'a [String],
    read: &'a dyn Fn(&str) -> Result<String, String>,
    /// Kustomization folders already checked, in a role (bases are often shared; cycles end).
    seen: BTreeSet<(String, Role)>,
    out: Vec<Refusal>,
}

impl Walk<'_> {
    fn kustomization_files(&self, dir: &str) -> Vec<String> {
        KUSTOMIZATION_FILES.iter().map(|n| join(dir, n)).filter(|p| self.files.contains(p)).collect()
    }

    fn is_dir(&self, dir: &str) -> bool {
        dir.is_empty() || self.files.iter().any(|f| f.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/')))
    }

    fn refuse(&mut self, file: &str, path: &str, line: Option<usize>, message: String) {
        self.out.push(Refusal { file: file.to_owned(), problem: Problem::new(path, message).at_line(line) });
    }

    /// A folder holding a kustomization (a folder without one is kustomize's error to report).
    fn dir(&mut self, dir: &str, role: Role) {
        if !self.seen.insert((dir.to_owned(), role)) {
            return;
        }
        for file in self.kustomization_files(dir) {
            self.kustomization(&file, dir, role);
        }
    }

    fn kustomization(&mut self, file: &str, dir: &str, role: Role) {
        let text = match (self.read)(file) {
            Ok(t) => t,
            Err(e) => return self.refuse(file, "(document)", None, e),
        };
        let lines = LineIndex::new(&text);
        let doc = match parse(&text) {
            Ok(Value::Null) => return,
            Ok(Value::Object(o)) => o,
            Ok(_) => return self.refuse(file, "(document)", Some(1), "expected a mapping".into()),
            Err((line, message)) => return self.refuse(file, "(document)", line, message),
        };
        // Go's encoding/json, under kustomize's YAML decoder, matches field names ignoring case:
        // `Resources:` is `resources:` to kustomize, so it is to this check.
        for (key, value) in &doc {
            let entry = match key.to_ascii_lowercase().as_str() {
                "resources" | "bases" | "components" => Some(Entry::FileOrDir(role)),
                "generators" | "transformers" | "validators" => Some(Entry::Plugin),
                "crds" | "configurations" => Some(Entry::File),
                "patchesstrategicmerge" => Some(Entry::FileOrInline),
                "openapi" => {
                    self.fields(file, dir, value, key, &["path"], &lines);
                    None
                }
                "patches" | "patchesjson6902" | "replacements" => {
                    self.each_item(file, value, key, &lines, |w, item, at| {
                        w.fields(file, dir, item, &at, &["path"], &lines)
                    });
                    None
                }
                "configmapgenerator" | "secretgenerator" => {
                    self.each_item(file, value, key, &lines, |w, item, at| w.generator(file, dir, item, &at, &lines));
                    None
                }
                "helmcharts" | "helmchartinflationgenerator" => {
                    self.helm_charts(file, value, key, &lines);
                    None
                }
                _ => None,
            };
            if let Some(entry) = entry {
                self.list(file, dir, value, key, entry, &lines);
            }
        }
    }

    /// Every item of a list field, each as an object (kustomize would refuse anything else).
    fn each_item(
        &mut self,
        file: &str,
        value: &Value,
        key: &str,
        lines: &LineIndex,
        mut each: impl FnMut(&mut Self, &Value, String),
    ) {
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    each(self, item, format!("{key}[{i}]"));
                }
            }
            _ => self.refuse(file, key, lines.line(key), "expected a list".into()),
        }
    }

    /// The file fields `names` of one object (`path` of a patch, `openapi.path`, ...).
    fn fields(&mut self, file: &str, dir: &str, value: &Value, at: &str, names: &[&str], lines: &LineIndex) {
        let Value::Object(o) = value else { return };
        for (k, v) in o {
            if names.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                let path = format!("{at}.{k}");
                match v {
                    Value::String(s) => self.entry(file, dir, s, &path, Entry::File, lines),
                    Value::Null => {}
                    _ => self.refuse(file, &path, lines.line(&path), "expected a path".into()),
                }
            }
        }
    }

    /// `configMapGenerator[]`/`secretGenerator[]` and their builtin plugin configs: `files`, `envs`,
    /// `env`.
    fn generator(&mut self, file: &str, dir: &str, item: &Value, at: &str, lines: &LineIndex) {
        let Value::Object(o) = item else { return };
        for (k, v) in o {
            let path = format!("{at}.{k}");
            match k.to_ascii_lowercase().as_str() {
                "files" => self.list(file, dir, v, &path, Entry::KeyFile, lines),
                "envs" => self.list(file, dir, v, &path, Entry::File, lines),
                "env" => self.fields(file, dir, item, at, &["env"], lines),
                _ => {}
            }
        }
    }

    fn helm_charts(&mut self, file: &str, value: &Value, key: &str, lines: &LineIndex) {
        let message = |repo: Option<&str>| match repo {
            Some(repo) => format!(
                "refused: kustomize would run helm, which fetches the chart from {repo:?}; a store renders \
                 only what Git holds (render the chart as a Helm bundle from the repository instead)"
            ),
            None => "refused: the agent runs kustomize without --enable-helm (kustomize would run helm); \
                     render the chart as a Helm bundle (Chart.yaml, or fleet.yaml's helm.chart) instead"
                .to_owned(),
        };
        let items: Vec<&Value> = match value {
            Value::Null => return,
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        if items.is_empty() {
            return;
        }
        for (i, item) in items.iter().enumerate() {
            let at = if value.is_array() { format!("{key}[{i}]") } else { key.to_owned() };
            let repo = item.as_object().and_then(|o| {
                o.iter().find(|(k, _)| k.eq_ignore_ascii_case("repo")).map(|(k, v)| (k.clone(), v.as_str()))
            });
            match repo {
                Some((k, repo)) => {
                    let path = format!("{at}.{k}");
                    self.refuse(file, &path, lines.line(&path), message(Some(repo.unwrap_or("?"))))
                }
                None => self.refuse(file, &at, lines.line(&at), message(None)),
            }
        }
    }

    /// A list of entries of one kind.
    fn list(&mut self, file: &str, dir: &str, value: &Value, key: &str, entry: Entry, lines: &LineIndex) {
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{key}[{i}]");
                    match item {
                        Value::String(s) => self.entry(file, dir, s, &path, entry, lines),
                        _ => self.refuse(file, &path, lines.line(&path), "expected a string".into()),
                    }
                }
            }
            _ => self.refuse(file, key, lines.line(key), "expected a list".into()),
        }
    }

    /// One entry, written in `file` (in `dir`) at field `path`.
    fn entry(&mut self, file: &str, dir: &str, text: &str, path: &str, entry: Entry, lines: &LineIndex) {
        let line = lines.line(path);
        let inline = text.contains('\n') || text.trim_start().starts_with('{');
        match entry {
            Entry::Plugin if inline => return self.inline_configs(file, text, path, line),
            Entry::FileOrInline if inline => return,
            _ => {}
        }
        let target = match entry {
            // `key=path`; a URL is refused whole first, its query may hold `=`.
            Entry::KeyFile if !is_remote(text) => text.split_once('=').map_or(text, |(_, p)| p),
            _ => text,
        };
        if is_remote(target) {
            return self.refuse(
                file,
                path,
                line,
                format!(
                    "remote reference {target:?} refused: a store renders only what Git holds, and kustomize \
                     would fetch it"
                ),
            );
        }
        let resolved = match resolve(dir, target) {
            Ok(r) => r,
            Err(Escape::Absolute) => {
                return self.refuse(
                    file,
                    path,
                    line,
                    format!("absolute path {target:?} refused: paths stay inside the bundle"),
                );
            }
            Err(Escape::Parent) => {
                return self.refuse(file, path, line, format!("{target:?} leads outside the bundle"));
            }
        };
        let role = match entry {
            Entry::FileOrDir(role) => role,
            Entry::Plugin => Role::PluginConfigs,
            Entry::File | Entry::KeyFile | Entry::FileOrInline => return,
        };
        if self.files.contains(&resolved) {
            if role == Role::PluginConfigs {
                self.plugin_file(&resolved);
            }
        } else if self.is_dir(&resolved) {
            self.dir(&resolved, role);
        } else {
            self.refuse(file, path, line, format!("{target:?}: no such file or folder in the bundle"));
        }
    }

    fn plugin_file(&mut self, file: &str) {
        let text = match (self.read)(file) {
            Ok(t) => t,
            Err(e) => return self.refuse(file, "(document)", None, e),
        };
        for (start, doc) in documents(&text) {
            let lines = LineIndex::new(doc);
            let at = |l: Option<usize>| l.map(|l| start + l - 1);
            match parse(doc) {
                Ok(v) => {
                    for (path, line, message) in plugin_config(&v, "", &lines) {
                        self.refuse(file, &path, at(line), message);
                    }
                }
                Err((line, message)) => self.refuse(file, "(document)", at(line), message),
            }
        }
    }

    /// An inline config of `generators`/`transformers`/`validators`. `line` is where the string
    /// starts (a block scalar's first line of content), so a field's line in the config counts
    /// from there.
    fn inline_configs(&mut self, file: &str, text: &str, path: &str, line: Option<usize>) {
        for (start, doc) in documents(text) {
            let at = |l: Option<usize>| match (line, l) {
                (Some(line), Some(l)) => Some(line + start + l - 2),
                _ => line,
            };
            match parse(doc) {
                Ok(v) => {
                    let lines = LineIndex::new(doc);
                    for (field, l, message) in plugin_config(&v, path, &lines) {
                        self.refuse(file, &field, at(l), message);
                    }
                }
                Err((l, message)) => self.refuse(file, path, at(l), message),
            }
        }
    }
}

/// What is wrong with one generator, transformer or validator config: `(field path, line in the
/// document, message)`. Only kustomize's builtin plugins may run, and their file fields are
/// checked like a kustomization's.
fn plugin_config(v: &Value, prefix: &str, lines: &LineIndex) -> Vec<(String, Option<usize>, String)> {
    let under = |p: &str| if prefix.is_empty() { p.to_owned() } else { format!("{prefix}.{p}") };
    let mut out = Vec::new();
    let Value::Object(o) = v else {
        if !v.is_null() {
            out.push((under("(document)"), Some(1), "expected a plugin config (a mapping)".into()));
        }
        return out;
    };
    let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or("?");
    let annotations = v["metadata"]["annotations"].as_object();
    for key in FUNCTION_ANNOTATIONS {
        if let Some(spec) = annotations.and_then(|a| a.get(key)) {
            let runtime = ["exec", "container", "starlark"]
                .into_iter()
                .find(|r| spec.as_str().unwrap_or_default().contains(&format!("{r}:")))
                .unwrap_or("function");
            let field = format!("metadata.annotations.{key}");
            out.push((
                under(&field),
                lines.line(&field),
                format!(
                    "{kind} is a KRM function ({runtime}); refused: the agent runs no kustomize plugins, only \
                     what Git holds is rendered"
                ),
            ));
        }
    }
    if !out.is_empty() {
        return out;
    }
    if api_version != "builtin" {
        out.push((
            under("apiVersion"),
            lines.line("apiVersion"),
            format!(
                "{api_version}/{kind} is an external kustomize plugin; refused: the agent runs only kustomize's \
                 builtin generators and transformers (apiVersion: builtin)"
            ),
        ));
        return out;
    }
    if kind == "HelmChartInflationGenerator" {
        out.push((
            under("kind"),
            lines.line("kind"),
            "HelmChartInflationGenerator refused: kustomize would run helm, which fetches charts; render the \
             chart as a Helm bundle instead"
                .into(),
        ));
        return out;
    }
    // Builtin configs load files through the same loader as a kustomization (PatchTransformer's
    // `path`, the generators' `files`/`envs`/`env`, ReplacementTransformer's `replacements[].path`).
    let mut file_fields: Vec<(String, String)> = Vec::new();
    for (k, val) in o {
        match (k.to_ascii_lowercase().as_str(), val) {
            ("path" | "env", Value::String(s)) => file_fields.push((k.clone(), s.clone())),
            ("paths" | "envs", Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = item.as_str().filter(|s| !s.contains('\n')) {
                        file_fields.push((format!("{k}[{i}]"), s.to_owned()));
                    }
                }
            }
            ("files", Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = item.as_str() {
                        let p = if is_remote(s) { s } else { s.split_once('=').map_or(s, |(_, p)| p) };
                        file_fields.push((format!("{k}[{i}]"), p.to_owned()));
                    }
                }
            }
            ("replacements", Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = item.get("path").and_then(Value::as_str) {
                        file_fields.push((format!("{k}[{i}].path"), s.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    for (field, target) in file_fields {
        let message = if is_remote(&target) {
            format!(
                "remote reference {target:?} refused: a store renders only what Git holds, and kustomize would fetch it"
            )
        } else if target.starts_with('/') {
            format!("absolute path {target:?} refused: paths stay inside the bundle")
        } else {
            continue;
        };
        out.push((under(&field), lines.line(&field), message));
    }
    out
}

/// Whether kustomize would take `entry` for something to fetch: any `scheme://` (`http`,
/// `https`, `ssh`, `file`, `oci`), go-getter's `git::` prefix, scp-style `user@host:`, the bare
/// `github.com/` and `gh:` forms, the `//` root separator and the `?ref=`/`?version=` query
/// (kustomize's `git.NewRepoSpecFromURL`).
fn is_remote(entry: &str) -> bool {
    let lower = entry.trim().to_ascii_lowercase();
    let s = lower.strip_prefix("git::").unwrap_or(&lower);
    let user_at = {
        // kustomize's `^([a-zA-Z][a-zA-Z0-9-]*)@`
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.split_once('@').is_some_and(|(user, _)| user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    lower.starts_with("git::")
        || s.contains("://")
        || s.contains("//")
        || s.starts_with("gh:")
        || s.starts_with("github.com/")
        || s.starts_with("github.com:")
        || user_at
        || s.contains("?ref=")
        || s.contains("?version=")
}

enum Escape {
    Absolute,
    Parent,
}

/// `entry` written in the kustomization in `dir`, as a bundle-relative path (`""` for the root).
fn resolve(dir: &str, entry: &str) -> Result<String, Escape> {
    if entry.starts_with('/') || entry.starts_with('\\') || entry.get(1..3) == Some(":\\") {
        return Err(Escape::Absolute);
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for component in entry.split(['/', '\\']) {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(Escape::Parent)?;
            }
            name => parts.push(name),
        }
    }
    Ok(parts.join("/"))
}

fn normalize(dir: &str) -> String {
    dir.split('/').filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("/")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

fn display(dir: &str) -> String {
    if dir.is_empty() { ".".into() } else { dir.to_owned() }
}

/// One YAML document parsed; an error is `(line, message)`.
fn parse(text: &str) -> Result<Value, (Option<usize>, String)> {
    serde_saphyr::from_str(text).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or("invalid YAML").trim_start_matches("error: ").to_owned();
        (e.location().map(|l| l.line() as usize), first)
    })
}

/// The documents of a multi-document YAML text, each with the line it starts at.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut start_byte, mut start_line) = (0, 1);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            out.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start_byte..]));
    out.into_iter()
        .filter(|(_, d)| !d.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Checks the kustomization in `dir` of a bundle holding `files` (path, content).
    fn run(dir: &str, files: &[(&str, &str)]) -> Vec<String> {
        let map: BTreeMap<String, String> = files.iter().map(|(p, c)| ((*p).to_owned(), (*c).to_owned())).collect();
        let list: Vec<String> = map.keys().cloned().collect();
        let read = |p: &str| map.get(p).cloned().ok_or_else(|| format!("{p}: not in the bundle"));
        check(dir, &list, &read).iter().map(ToString::to_string).collect()
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";
    const BUILTIN: &str = "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: l\nlabels: {a: b}\n";

    #[test]
    fn legitimate_kustomizations_pass() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            // The e2e suite's overlay (desired_state.rs).
            (
                ".",
                &[
                    (
                        "kustomization.yaml",
                        "namespace: ns\nnamePrefix: qa-\nresources:\n- settings.yaml\ncommonLabels:\n  tier: kiosk\n",
                    ),
                    ("settings.yaml", CM),
                ],
            ),
            // An overlay over a base inside the bundle, with patches, generators and a component.
            (
                "overlays/qa",
                &[
                    ("base/kustomization.yaml", "resources:\n- cm.yaml\n- ./deploy/\n"),
                    ("base/cm.yaml", CM),
                    ("base/deploy/kustomization.yml", "resources: [d.yaml]\n"),
                    ("base/deploy/d.yaml", CM),
                    (
                        "components/extra/kustomization.yaml",
                        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [x.yaml]\n",
                    ),
                    ("components/extra/x.yaml", CM),
                    (
                        "overlays/qa/kustomization.yaml",
                        "resources:\n- ../../base\ncomponents:\n- ../../components/extra\npatches:\n- path: patch.yaml\n  target: {kind: ConfigMap}\n- patch: |-\n    - op: add\n      path: /data/a\n      value: b\npatchesStrategicMerge:\n- |-\n  apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: x}\nconfigMapGenerator:\n- name: settings\n  files:\n  - app.properties\n  - key=other.txt\n  envs: [vars.env]\n  literals:\n  - URL=https://api.example.com/v1?ref=main\nimages:\n- name: web\n  newTag: 1.2.3\nreplacements:\n- path: repl.yaml\nopenapi:\n  version: v1.33.0\ncommonAnnotations:\n  docs: https://example.com/docs\n",
                    ),
                    ("overlays/qa/patch.yaml", CM),
                    ("overlays/qa/app.properties", "a=b\n"),
                    ("overlays/qa/other.txt", "x\n"),
                    ("overlays/qa/vars.env", "A=B\n"),
                    ("overlays/qa/repl.yaml", "- source: {kind: ConfigMap}\n"),
                ],
            ),
            // Builtin generators and transformers, as files, inline, and through a folder.
            (
                ".",
                &[
                    (
                        "kustomization.yaml",
                        "resources: [cm.yaml]\ngenerators:\n- gen.yaml\n- gens\ntransformers:\n- |-\n  apiVersion: builtin\n  kind: PrefixSuffixTransformer\n  metadata: {name: p}\n  prefix: a-\n  fieldSpecs: [{path: metadata/name}]\n",
                    ),
                    ("cm.yaml", CM),
                    (
                        "gen.yaml",
                        "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: g\nfiles:\n- f.txt\n---\napiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: t}\npath: patch.yaml\n",
                    ),
                    ("gens/kustomization.yaml", "resources: [sec.yaml]\n"),
                    (
                        "gens/sec.yaml",
                        "apiVersion: builtin\nkind: SecretGenerator\nmetadata: {name: s}\nliterals: [a=b]\n",
                    ),
                    ("f.txt", "x"),
                    ("patch.yaml", CM),
                ],
            ),
            // An empty kustomization, `Kustomization` as the file name, a base shared twice.
            (".", &[("Kustomization", "")]),
            (
                "a",
                &[
                    ("a/kustomization.yaml", "resources: [../b, ../c]\n"),
                    ("b/kustomization.yaml", "resources: [../c]\n"),
                    ("c/kustomization.yaml", "resources: [cm.yaml]\n"),
                    ("c/cm.yaml", CM),
                ],
            ),
        ];
        for (dir, files) in cases {
            assert_eq!(run(dir, files), Vec::<String>::new(), "{files:?}");
        }
    }

    #[test]
    fn remote_references_are_refused_with_file_field_and_line() {
        // (field written in kustomization.yaml, the entry, the path named)
        let cases = [
            ("resources", "http://127.0.0.1:8080/cm.yaml", "resources[1]"),
            ("resources", "https://raw.example.com/org/repo/main/cm.yaml", "resources[1]"),
            ("resources", "github.com/org/repo//deploy?ref=v1.0.0", "resources[1]"),
            ("resources", "GitHub.com:org/repo", "resources[1]"),
            ("resources", "git@gitea.example.com:org/repo.git", "resources[1]"),
            ("resources", "git::https://gitea.example.com/org/repo", "resources[1]"),
            ("resources", "ssh://git@gitea.example.com/org/repo", "resources[1]"),
            ("resources", "file:///srv/other-repo", "resources[1]"),
            ("resources", "oci://registry.example.com/manifests/app:1", "resources[1]"),
            ("resources", "gh:org/repo", "resources[1]"),
            ("resources", "example.com/org/repo?ref=main", "resources[1]"),
            ("resources", "base//sub", "resources[1]"),
            ("Resources", "http://127.0.0.1/cm.yaml", "Resources[1]"),
            ("bases", "https://example.com/org/repo.git", "bases[1]"),
            ("components", "https://github.com/org/repo/components/x", "components[1]"),
            ("crds", "https://example.com/crd.yaml", "crds[1]"),
            ("configurations", "http://127.0.0.1/config.yaml", "configurations[1]"),
            ("generators", "https://example.com/gen.yaml", "generators[1]"),
            ("transformers", "github.com/org/repo/transformers", "transformers[1]"),
            ("validators", "https://example.com/v.yaml", "validators[1]"),
            ("patchesStrategicMerge", "https://example.com/patch.yaml", "patchesStrategicMerge[1]"),
        ];
        for (field, entry, path) in cases {
            let plugin = matches!(field, "generators" | "transformers" | "validators");
            let first = if plugin { "builtin.yaml" } else { "cm.yaml" };
            let k = format!("namespace: a\n{field}:\n- {first}\n- {entry}\n");
            let got = run(".", &[("kustomization.yaml", &k), ("cm.yaml", CM), ("builtin.yaml", BUILTIN)]);
            assert_eq!(got.len(), 1, "{field}: {entry}: {got:?}");
            assert!(
                got[0].starts_with(&format!("kustomization.yaml: {path}: line 4: remote reference {entry:?} refused")),
                "{got:?}"
            );
        }
    }

    #[test]
    fn remote_file_fields_are_refused_at_their_field() {
        let cases = [
            ("patches:\n- path: http://127.0.0.1/p.yaml\n", "patches[0].path: line 2"),
            ("patchesJson6902:\n- target: {kind: X}\n  path: https://e.x/p.json\n", "patchesJson6902[0].path: line 3"),
            ("replacements:\n- path: https://e.x/r.yaml\n", "replacements[0].path: line 2"),
            ("openapi:\n  path: http://127.0.0.1/schema.json\n", "openapi.path: line 2"),
            (
                "configMapGenerator:\n- name: a\n  files:\n  - http://127.0.0.1/cm.yaml\n",
                "configMapGenerator[0].files[0]: line 4",
            ),
            (
                "configMapGenerator:\n- name: a\n  files:\n  - key=https://e.x/f?a=b\n",
                "configMapGenerator[0].files[0]: line 4",
            ),
            ("secretGenerator:\n- name: a\n  envs: [https://e.x/.env]\n", "secretGenerator[0].envs[0]: line 3"),
            ("secretGenerator:\n- name: a\n  env: https://e.x/.env\n", "secretGenerator[0].env: line 3"),
        ];
        for (k, at) in cases {
            let got = run(".", &[("kustomization.yaml", k)]);
            assert_eq!(got.len(), 1, "{k}: {got:?}");
            assert!(got[0].starts_with(&format!("kustomization.yaml: {at}: remote reference")), "{got:?}");
        }
    }

    #[test]
    fn paths_that_leave_the_bundle_or_are_absolute_or_missing_are_refused() {
        let cases = [
            ("overlays/qa", "resources:\n- ../../../outside\n", "\"../../../outside\" leads outside the bundle"),
            (".", "resources:\n- ../sibling-bundle\n", "\"../sibling-bundle\" leads outside the bundle"),
            (".", "resources:\n- /etc/kubernetes\n", "absolute path \"/etc/kubernetes\" refused"),
            (".", "components:\n- ..\\..\\x\n", "leads outside the bundle"),
            (".", "patches:\n- path: ../../secret.yaml\n", "\"../../secret.yaml\" leads outside the bundle"),
            (
                ".",
                "configMapGenerator:\n- files: [k=/etc/shadow]\n  name: a\n",
                "absolute path \"/etc/shadow\" refused",
            ),
            (".", "resources:\n- nothere.yaml\n", "\"nothere.yaml\": no such file or folder in the bundle"),
        ];
        for (dir, k, want) in cases {
            let file = if dir == "." { "kustomization.yaml".to_owned() } else { format!("{dir}/kustomization.yaml") };
            let got = run(dir, &[(&file, k)]);
            assert_eq!(got.len(), 1, "{k}: {got:?}");
            assert!(got[0].starts_with(&format!("{file}: ")) && got[0].contains(want), "{got:?}");
            assert!(got[0].contains(": line 2: "), "{got:?}");
        }
    }

    #[test]
    fn a_remote_reference_in_a_nested_base_names_the_base_file() {
        let got = run(
            "overlays/qa",
            &[
                ("overlays/qa/kustomization.yaml", "resources:\n- ../../base\n"),
                ("base/kustomization.yaml", "resources:\n- inner\n"),
                ("base/inner/kustomization.yaml", "# the hostile one\nresources:\n- cm.yaml\n- https://e.x/cm.yaml\n"),
                ("base/inner/cm.yaml", CM),
            ],
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("base/inner/kustomization.yaml: resources[1]: line 4: remote reference"), "{got:?}");
    }

    #[test]
    fn plugins_are_refused_in_files_inline_and_folders() {
        let exec = "apiVersion: example.com/v1\nkind: Gen\nmetadata:\n  name: g\n  annotations:\n    config.kubernetes.io/function: |\n      exec:\n        path: ./gen.sh\n";
        let container = "apiVersion: example.com/v1\nkind: Fn\nmetadata:\n  name: f\n  annotations:\n    config.k8s.io/function: |\n      container:\n        image: example.com/fn:1\n";
        let external = "apiVersion: someteam.example.com/v1\nkind: ChartInflator\nmetadata:\n  name: c\n";
        let helm = "apiVersion: builtin\nkind: HelmChartInflationGenerator\nmetadata:\n  name: h\nrepo: https://charts.example.com\n";
        let remote_patch =
            "apiVersion: builtin\nkind: PatchTransformer\nmetadata:\n  name: p\npath: http://127.0.0.1/p.yaml\n";
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (
                vec![("kustomization.yaml", "generators:\n- gen.yaml\n".into()), ("gen.yaml", exec.into())],
                "gen.yaml: metadata.annotations.config.kubernetes.io/function: line 6: Gen is a KRM function (exec)",
            ),
            (
                vec![
                    ("kustomization.yaml", "transformers:\n- fn.yaml\n".into()),
                    ("fn.yaml", format!("{BUILTIN}---\n{container}")),
                ],
                "fn.yaml: metadata.annotations.config.k8s.io/function: line 12: Fn is a KRM function (container)",
            ),
            (
                vec![("kustomization.yaml", "validators:\n- v.yaml\n".into()), ("v.yaml", external.into())],
                "v.yaml: apiVersion: line 1: someteam.example.com/v1/ChartInflator is an external kustomize plugin",
            ),
            (
                vec![("kustomization.yaml", "generators:\n- h.yaml\n".into()), ("h.yaml", helm.into())],
                "h.yaml: kind: line 2: HelmChartInflationGenerator refused",
            ),
            (
                vec![("kustomization.yaml", "transformers:\n- p.yaml\n".into()), ("p.yaml", remote_patch.into())],
                "p.yaml: path: line 5: remote reference \"http://127.0.0.1/p.yaml\" refused",
            ),
            (
                vec![
                    ("kustomization.yaml", "generators:\n- gens\n".into()),
                    ("gens/kustomization.yaml", "resources: [g.yaml]\n".into()),
                    ("gens/g.yaml", exec.into()),
                ],
                "gens/g.yaml: metadata.annotations.config.kubernetes.io/function: line 6: Gen is a KRM function (exec)",
            ),
            (
                vec![(
                    "kustomization.yaml",
                    format!(
                        "resources: []\ngenerators:\n- |-\n{}",
                        exec.lines().map(|l| format!("  {l}\n")).collect::<String>()
                    ),
                )],
                "kustomization.yaml: generators[0].metadata.annotations.config.kubernetes.io/function: line 9: Gen is a KRM function (exec)",
            ),
            (
                vec![(
                    "kustomization.yaml",
                    format!(
                        "transformers:\n- |-\n{}",
                        remote_patch.lines().map(|l| format!("  {l}\n")).collect::<String>()
                    ),
                )],
                "kustomization.yaml: transformers[0].path: line 7: remote reference",
            ),
        ];
        for (files, want) in cases {
            let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
            let got = run(".", &files);
            assert_eq!(got.len(), 1, "{files:?}: {got:?}");
            assert!(got[0].starts_with(want), "want {want}\n got {}", got[0]);
        }
    }

    #[test]
    fn helm_charts_are_refused_naming_a_remote_repository() {
        let k = "helmCharts:\n- name: kiosk\n  version: 1.0.0\n  repo: https://charts.example.com\n- name: local\n";
        let got = run(".", &[("kustomization.yaml", k)]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("kustomization.yaml: helmCharts[0].repo: line 4: refused: kustomize would run helm, which fetches the chart from \"https://charts.example.com\""),
            "{got:?}"
        );
        assert!(
            got[1].starts_with(
                "kustomization.yaml: helmCharts[1]: line 5: refused: the agent runs kustomize without --enable-helm"
            ),
            "{got:?}"
        );
        let got = run(
            ".",
            &[("kustomization.yaml", "helmChartInflationGenerator:\n- chartName: x\n  chartRepoUrl: https://e.x\n")],
        );
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn yaml_tricks_do_not_hide_a_reference() {
        // A merge key and an anchor: kustomize's YAML decoder resolves both, so must the check.
        let merged = "x: &r\n  resources:\n  - https://e.x/cm.yaml\n<<: *r\n";
        let got = run(".", &[("kustomization.yaml", merged)]);
        assert!(got.iter().any(|g| g.contains("remote reference \"https://e.x/cm.yaml\"")), "{got:?}");
        let anchored = "a: &u https://e.x/cm.yaml\nresources:\n- *u\n";
        let got = run(".", &[("kustomization.yaml", anchored)]);
        assert!(got.iter().any(|g| g.contains("resources[0]") && g.contains("remote reference")), "{got:?}");
        // JSON is YAML too.
        let got = run(".", &[("kustomization.yaml", r#"{"resources": ["http://127.0.0.1/cm.yaml"]}"#)]);
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn unreadable_or_wrongly_shaped_kustomizations_are_refused_not_skipped() {
        let cases = [
            ("resources: [unclosed\n", "kustomization.yaml: (document): line "),
            ("- a\n- b\n", "kustomization.yaml: (document): line 1: expected a mapping"),
            ("resources: cm.yaml\n", "kustomization.yaml: resources: line 1: expected a list"),
            ("resources:\n- {a: 1}\n", "kustomization.yaml: resources[0]: line 2: expected a string"),
        ];
        for (k, want) in cases {
            let got = run(".", &[("kustomization.yaml", k)]);
            assert_eq!(got.len(), 1, "{k}: {got:?}");
            assert!(got[0].starts_with(want), "{got:?}");
        }
        assert_eq!(run("k", &[("other.yaml", CM)]), ["k: (folder): holds no kustomization.yaml"]);
    }

    #[test]
    fn the_remote_forms_of_kustomize_are_recognized_and_plain_paths_are_not() {
        for remote in [
            "https://x/y",
            "HTTP://x",
            "git::x",
            "git@host:org/repo",
            "user-1@host:repo",
            "github.com/o/r",
            "gh:o/r",
            "a//b",
            "o/r?ref=v1",
            "o/r?version=v1",
            "oci://r/x",
            "file:///x",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["cm.yaml", "../base", "./a/b.yaml", "github.com.yaml", "a/b", "key=value.txt", "1@x"] {
            assert!(!is_remote(local), "{local}");
        }
    }
}
