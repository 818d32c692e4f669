//! The render adapter: runs `helm template` and `kustomize build` on a bundle exported from the
//! commit, or reads raw manifests, and hands the output to `shared::render`. What to run with
//! which inputs was decided by `shared::desired::bundle_spec`; this only runs it.
//!
//! Repository content is untrusted, so a renderer runs with nothing of the machine's: an emptied
//! environment (only `PATH`, and a fresh temporary `HOME` holding Helm's cache, config and data
//! folders), a `KUBECONFIG` naming a file that does not exist (Helm's `lookup` can never reach a
//! cluster; `helm template` gives it an empty map), and in its own process group, so a timeout
//! stops whatever it started. Its output is read as it comes and the renderer is stopped once it
//! passes [`MAX_OUTPUT`]. Before kustomize runs, `shared::kustomize::check` has refused URLs,
//! plugins and paths out of the bundle (in `desired`); kustomize itself runs with its plugins,
//! exec functions and Helm off and its load restrictor at the kustomization's root.
//!
//! Helm is run twice and the two outputs compared: a chart using `randAlphaNum`, `now` or
//! `uuidv4` renders differently every time and would roll out on every poll, so it is refused
//! with the objects that differ.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use shared::desired::{RenderSpec, unstable_objects};
use shared::render::{Manifest, ParseError, parse_manifests};

/// The most a renderer may print before it is stopped. Stack B's chart renders to about 20 KiB
/// and a large store bundle to a few MiB; 64 MiB is far above any real bundle and still a bounded
/// amount of memory on a store node (the API server refuses a single object above 1.5 MiB
/// anyway). A chart looping over a huge `range` fills memory long before a timeout would stop it.
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// How much of a renderer's stderr is kept for its error (the first lines are shown).
const MAX_STDERR: usize = 64 * 1024;

/// The external renderers.
#[derive(Debug, Clone)]
pub struct Renderers {
    pub helm: String,
    pub kustomize: String,
    pub timeout: Duration,
    /// Bytes of output after which a renderer is stopped ([`MAX_OUTPUT`]; smaller in tests).
    pub max_output: usize,
}

impl Renderers {
    pub fn from_config(cfg: &shared::config::AgentConfig) -> Renderers {
        Renderers {
            helm: cfg.render.helm.clone(),
            kustomize: cfg.render.kustomize.clone(),
            timeout: cfg.render.timeout.get(),
            max_output: MAX_OUTPUT,
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
    #[error("{tool} wrote more than {} MiB of output and was stopped", .limit / (1024 * 1024))]
    TooMuchOutput { tool: &'static str, limit: usize },
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
            let first = run("helm", &renderers.helm, &args, &env, home.path(), dir, renderers).await?;
            let second = run("helm", &renderers.helm, &args, &env, home.path(), dir, renderers).await?;
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
            let home = tempfile::tempdir().map_err(|e| io_err(Path::new("(temporary folder)"), e))?;
            let args: Vec<String> = ["build", &dir.join(kdir).display().to_string()]
                .into_iter()
                .chain(KUSTOMIZE_FLAGS)
                .map(str::to_owned)
                .collect();
            // Where kustomize would look for plugins (`$XDG_CONFIG_HOME/kustomize/plugin`): empty.
            let env = [("XDG_CONFIG_HOME", home.path().join("config"))];
            let out = run("kustomize", &renderers.kustomize, &args, &env, home.path(), dir, renderers).await?;
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

/// kustomize's flags, each its default today, written out so that a change of default in a later
/// kustomize cannot turn on plugins, exec functions, Helm or loading files above the root.
const KUSTOMIZE_FLAGS: [&str; 5] = [
    "--enable-alpha-plugins=false",
    "--enable-exec=false",
    "--enable-helm=false",
    "--load-restrictor",
    "LoadRestrictionsRootOnly",
];

/// How a renderer's run ended, short of its output.
enum Stopped {
    TooMuchOutput,
    Io(std::io::Error),
}

/// Runs a renderer; its stderr becomes the error, with the export folder's path taken out so
/// messages name files as they are in the bundle. The environment is emptied but for `PATH`,
/// `HOME` (`home`, a fresh folder), `KUBECONFIG` (a file that does not exist) and `env`; the
/// renderer leads its own process group, which is killed when it runs too long or prints too
/// much.
async fn run(
    tool: &'static str,
    program: &str,
    args: &[String],
    env: &[(&str, PathBuf)],
    home: &Path,
    dir: &Path,
    renderers: &Renderers,
) -> Result<String, RenderError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    cmd.env_clear().env("HOME", home).env("KUBECONFIG", home.join("no-kubeconfig"));
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let spawn_err = |e: std::io::Error| RenderError::Spawn { tool, program: program.to_owned(), reason: e.to_string() };
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(spawn_err)?;
    let group = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let limit = renderers.max_output;
    let finished = tokio::time::timeout(renderers.timeout, async {
        let (out, err) = tokio::try_join!(read_limited(stdout, limit), read_kept(stderr))?;
        let status = child.wait().await.map_err(Stopped::Io)?;
        Ok::<_, Stopped>((status, out, err))
    })
    .await;
    let (status, stdout, stderr) = match finished {
        Ok(Ok(done)) => done,
        // Not reaped yet (the wait had not returned), so the group id is still ours to kill.
        Err(_) => {
            kill_group(group);
            return Err(RenderError::Timeout { tool, after: renderers.timeout });
        }
        Ok(Err(Stopped::TooMuchOutput)) => {
            kill_group(group);
            return Err(RenderError::TooMuchOutput { tool, limit });
        }
        Ok(Err(Stopped::Io(e))) => {
            kill_group(group);
            return Err(spawn_err(e));
        }
    };
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let prefix = format!("{}/", dir.display());
        let message: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(8).collect();
        let message = message.join("; ").replace(&prefix, "").replace(&dir.display().to_string(), ".");
        let message = message.trim_start_matches("Error: ").to_owned();
        return Err(RenderError::Tool {
            tool,
            message: if message.is_empty() { format!("exit status {status}") } else { message },
        });
    }
    String::from_utf8(stdout).map_err(|_| RenderError::Tool { tool, message: "output is not UTF-8".into() })
}

/// All of `r`, unless it passes `limit` bytes: then it stops reading at once.
async fn read_limited(mut r: impl AsyncRead + Unpin, limit: usize) -> Result<Vec<u8>, Stopped> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.map_err(Stopped::Io)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(Stopped::TooMuchOutput);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The first [`MAX_STDERR`] bytes of `r`, read to its end (the rest is dropped, so a renderer
/// flooding stderr neither blocks on a full pipe nor fills memory).
async fn read_kept(mut r: impl AsyncRead + Unpin) -> Result<Vec<u8>, Stopped> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await.map_err(Stopped::Io)?;
        if n == 0 {
            return Ok(out);
        }
        let room = MAX_STDERR.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// SIGKILL to the renderer's process group: it and anything it started (helm's plugins,
/// kustomize's helm or git) stop together.
fn kill_group(leader: Option<u32>) {
    let Some(pid) = leader.and_then(|p| i32::try_from(p).ok()) else { return };
    // ESRCH (already gone) is the only expected failure; nothing to do about it.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn renderers(timeout: Duration, max_output: usize) -> Renderers {
        Renderers { helm: "sh".into(), kustomize: "sh".into(), timeout, max_output }
    }

    async fn sh(script: &str, r: &Renderers) -> Result<String, RenderError> {
        let home = tempfile::tempdir().expect("temporary folder");
        let args = vec!["-c".to_owned(), script.to_owned()];
        run("helm", "sh", &args, &[], home.path(), home.path(), r).await
    }

    /// Whether `pid` is gone (or a zombie nobody reaped: it runs no more).
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_renderer_printing_without_end_is_stopped_while_reading_once_past_the_limit() {
        let started = Instant::now();
        let err = sh("yes kind: ConfigMap", &renderers(Duration::from_secs(60), 1024 * 1024)).await.unwrap_err();
        assert!(matches!(err, RenderError::TooMuchOutput { tool: "helm", limit: 1_048_576 }), "{err}");
        assert_eq!(err.to_string(), "helm wrote more than 1 MiB of output and was stopped");
        // Stopped at the limit, not at the timeout.
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        // Output up to the limit passes.
        let ok = sh("head -c 1048576 /dev/zero | tr '\\0' a", &renderers(Duration::from_secs(60), 1024 * 1024)).await;
        assert_eq!(ok.expect("exactly the limit").len(), 1024 * 1024);
    }

    #[tokio::test]
    async fn a_renderer_running_too_long_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let started = Instant::now();
        let err = sh(&script, &renderers(Duration::from_secs(1), MAX_OUTPUT)).await.unwrap_err();
        assert!(matches!(err, RenderError::Timeout { tool: "helm", .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        let pid: u32 = std::fs::read_to_string(&pidfile).expect("the child wrote its pid").trim().parse().unwrap();
        // The grandchild holds no pipe of ours open any more: the process group was killed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(pid) {
            assert!(Instant::now() < deadline, "the renderer's child {pid} still runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_renderer_sees_nothing_of_the_agents_environment_and_no_kubeconfig() {
        let out = sh("env", &renderers(Duration::from_secs(30), MAX_OUTPUT)).await.expect("env runs");
        let names: Vec<&str> = out.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        // cargo test sets CARGO_* in this process; none of it may reach a renderer.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")), "the test runs under cargo");
        for name in &names {
            assert!(
                ["PATH", "HOME", "KUBECONFIG", "PWD", "SHLVL", "_", "OLDPWD"].contains(name),
                "{name} leaked: {out}"
            );
        }
        let kubeconfig = out.lines().find_map(|l| l.strip_prefix("KUBECONFIG=")).expect("KUBECONFIG is set");
        assert!(kubeconfig.ends_with("/no-kubeconfig"), "{kubeconfig}");
        let home = out.lines().find_map(|l| l.strip_prefix("HOME=")).expect("HOME is set");
        assert!(kubeconfig.starts_with(home), "{kubeconfig} under {home}");
    }

    #[tokio::test]
    async fn a_failing_renderer_reports_its_stderr_even_after_a_flood() {
        let err =
            sh("head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 3", &renderers(Duration::from_secs(30), MAX_OUTPUT))
                .await
                .unwrap_err();
        let RenderError::Tool { message, .. } = err else { panic!("{err}") };
        assert!(message.starts_with("xxx") && message.len() <= MAX_STDERR, "{}", message.len());
    }
}
