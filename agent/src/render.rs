//! The render adapter: runs `helm template` and `kustomize build` on a bundle exported from the
//! commit, or reads raw manifests, and hands the output to `shared::render`. What to run with
//! which inputs was decided by `shared::desired::bundle_spec`; this only runs it.
//!
//! Helm runs with its cache, config and data folders in a fresh temporary folder, so repositories,
//! plugins and registry logins of the machine never change a render. Helm is run twice and the two
//! outputs compared: a chart using `randAlphaNum`, `now` or `uuidv4` renders differently every
//! time and would roll out on every poll, so it is refused with the objects that differ.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use shared::desired::{RenderSpec, unstable_objects};
use shared::render::{Manifest, ParseError, parse_manifests};

/// The external renderers.
#[derive(Debug, Clone)]
pub struct Renderers {
    pub helm: String,
    pub kustomize: String,
    pub timeout: Duration,
}

impl Renderers {
    pub fn from_config(cfg: &shared::config::AgentConfig) -> Renderers {
        Renderers {
            helm: cfg.render.helm.clone(),
            kustomize: cfg.render.kustomize.clone(),
            timeout: cfg.render.timeout.get(),
        }
    }
}

/// What Helm's `.Capabilities` should say: the live cluster's version and API versions.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// e.g. `v1.33.4`; `None` leaves Helm's built-in default.
    pub kube_version: Option<String>,
    /// `group/version` and `group/version/Kind` entries, as `--api-versions` takes them.
    pub api_versions: Vec<String>,
}

/// Why a bundle could not be rendered. Messages name the bundle-relative file and line where the
/// renderer gives them.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{tool} did not finish within {}s and was stopped", .after.as_secs())]
    Timeout { tool: &'static str, after: Duration },
    #[error("cannot run {tool} ({program}): {reason}")]
    Spawn { tool: &'static str, program: String, reason: String },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(
        "the chart renders differently each time ({}); it would roll out on every poll (randAlphaNum, now, uuidv4, lookup?)",
        .objects.join(", ")
    )]
    Unstable { objects: Vec<String> },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

/// Renders the bundle exported at `dir`.
pub async fn render(
    dir: &Path,
    spec: &RenderSpec,
    caps: &Capabilities,
    renderers: &Renderers,
) -> Result<Vec<Manifest>, RenderError> {
    match spec {
        RenderSpec::Helm { chart, release_name, namespace, values } => {
            let home = tempfile::tempdir().map_err(|e| io_err(Path::new("(temporary folder)"), e))?;
            let values_file = home.path().join("values.json");
            std::fs::write(&values_file, values.to_string()).map_err(|e| io_err(&values_file, e))?;
            let mut args: Vec<String> = vec![
                "template".into(),
                release_name.clone(),
                dir.join(chart).display().to_string(),
                "--namespace".into(),
                namespace.clone(),
                "--values".into(),
                values_file.display().to_string(),
                "--include-crds".into(),
            ];
            if let Some(v) = &caps.kube_version {
                args.extend(["--kube-version".into(), v.clone()]);
            }
            for a in &caps.api_versions {
                args.extend(["--api-versions".into(), a.clone()]);
            }
            let env = [
                ("HELM_CACHE_HOME", home.path().join("cache")),
                ("HELM_CONFIG_HOME", home.path().join("config")),
                ("HELM_DATA_HOME", home.path().join("data")),
            ];
            let first = run("helm", &renderers.helm, &args, &env, dir, renderers.timeout).await?;
            let second = run("helm", &renderers.helm, &args, &env, dir, renderers.timeout).await?;
            let a = parse_manifests(&first, chart)?;
            if first != second {
                let b = parse_manifests(&second, chart)?;
                let objects = unstable_objects(&a, &b);
                return Err(RenderError::Unstable {
                    objects: if objects.is_empty() { vec!["object order".into()] } else { objects },
                });
            }
            Ok(a)
        }
        RenderSpec::Kustomize { dir: kdir } => {
            let args = vec!["build".to_owned(), dir.join(kdir).display().to_string()];
            let out = run("kustomize", &renderers.kustomize, &args, &[], dir, renderers.timeout).await?;
            Ok(parse_manifests(&out, kdir)?)
        }
        RenderSpec::Raw { files } => {
            let mut out = Vec::new();
            for f in files {
                let path = dir.join(f);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| RenderError::Io { path: f.clone(), reason: e.to_string() })?;
                if f.ends_with(".json") {
                    let object: serde_json::Value = serde_json::from_str(&text).map_err(|e| ParseError::Yaml {
                        file: f.clone(),
                        line: e.line(),
                        message: e.to_string(),
                    })?;
                    out.extend(parse_manifests(&serde_json::to_string(&object).unwrap_or_default(), f)?);
                } else {
                    out.extend(parse_manifests(&text, f)?);
                }
            }
            Ok(out)
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> RenderError {
    RenderError::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// Runs a renderer; its stderr becomes the error, with the export folder's path taken out so
/// messages name files as they are in the bundle.
async fn run(
    tool: &'static str,
    program: &str,
    args: &[String],
    env: &[(&str, std::path::PathBuf)],
    dir: &Path,
    timeout: Duration,
) -> Result<String, RenderError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| RenderError::Spawn {
        tool,
        program: program.to_owned(),
        reason: e.to_string(),
    })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| RenderError::Timeout { tool, after: timeout })?
        .map_err(|e| RenderError::Spawn { tool, program: program.to_owned(), reason: e.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let prefix = format!("{}/", dir.display());
        let message: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(8).collect();
        let message = message.join("; ").replace(&prefix, "").replace(&dir.display().to_string(), ".");
        let message = message.trim_start_matches("Error: ").to_owned();
        return Err(RenderError::Tool {
            tool,
            message: if message.is_empty() { format!("exit status {}", output.status) } else { message },
        });
    }
    String::from_utf8(output.stdout).map_err(|_| RenderError::Tool { tool, message: "output is not UTF-8".into() })
}
