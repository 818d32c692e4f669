//! Command-line interface. Only commands that work are listed; each writes to an `impl Write`
//! so tests can read its output, and offers `--output json` where a machine may read it.

pub mod diff;
mod fetch;
mod fleet;
mod local;
mod pause;
mod policy;
mod prune;
pub mod reconcile;
mod render;
mod retry;
mod rollback;
mod state_dir;
mod status;
mod validate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::cluster::Cluster;
use crate::cycle::Setup;

/// Exit code for a usage or I/O error (the config could not even be read).
pub const EXIT_ERROR: u8 = 2;

/// Exit code of `reconcile`, `rollback` and `status` when a bundle needs a person (failed with
/// nothing to roll back to, rollback failed, or interrupted).
pub const EXIT_CRITICAL: u8 = 4;

#[derive(Debug, Parser)]
#[command(name = "agent", version = version_line(), about = "Pull-based GitOps agent for store and edge nodes")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Checks a config file; lists every problem with its field and line; exits 1 if any.
    Validate {
        /// The agent's YAML config file.
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        /// Also check a waves file (the repository's `waves.yaml`) and which wave this node's
        /// configured labels put it in; a node in no wave is a problem.
        #[arg(long)]
        waves: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Polls the git source once (into the cache under stateDir) and shows the commit, how the
    /// branch moved, and the bundles found under git.path.
    Fetch {
        /// The agent's YAML config file.
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Prints the objects a bundle renders to for a node identity, images resolved and pinned as
    /// the agent would apply them (YAML, or JSON with --output json).
    Render {
        /// The bundle's folder under git.path, as `agent fetch` lists it.
        bundle: String,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        /// Node labels to render for, e.g. store=store1,env=qa (default: this node's identity).
        #[arg(long)]
        labels: Option<String>,
        /// Render offline for this Kubernetes version instead of asking the cluster (Helm's
        /// .Capabilities then lists only built-in API versions).
        #[arg(long)]
        kube_version: Option<String>,
        /// Leave images as rendered: no tag policies, no digest pins, no registry requests.
        #[arg(long)]
        no_resolve: bool,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Shows what applying would change, object by object (the API server's dry-run against the
    /// live objects). Exit 0 in sync, 1 differences, 2 error, 3 a bundle could not be planned.
    Diff {
        /// One bundle (default: every bundle under git.path).
        bundle: Option<String>,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Runs reconcile cycles: sources, render, plan, apply, watch the rollout, verify, record
    /// last-known-good or roll back. Exit 0 all in sync or rolled out, 1 (--dry-run) something
    /// would be applied, 2 error, 3 a bundle blocked or rolled back, 4 a bundle needs a person.
    Reconcile {
        /// One cycle, then exit (the long-running daemon is `agent run`).
        #[arg(long, required = true)]
        once: bool,
        /// Plan and report only: nothing is written to the cluster or the state records.
        #[arg(long)]
        dry_run: bool,
        /// An emergency: roll out even outside the rollout windows (rollbacks ignore them anyway).
        #[arg(long)]
        ignore_windows: bool,
        /// One bundle (default: every bundle under git.path).
        bundle: Option<String>,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Rolls a bundle back to its previous last-known-good (or --to a recorded revision), from the
    /// agent's records alone; the current revision is quarantined until Git renders differently.
    Rollback {
        bundle: String,
        /// A recorded revision: a prefix of its commit or rendered hash (`agent status` lists them).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Lifts a bundle's quarantine: the next reconcile tries the failed revision again.
    Retry {
        bundle: String,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// A bundle that left Git whose removal is held (its folder gone whole, too many bundles at
    /// once): shows what would be deleted; with --confirm deletes it, from the records alone.
    Prune {
        bundle: String,
        /// Delete the objects the hold names (without it, only show them; exit 1).
        #[arg(long)]
        confirm: bool,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// What runs (last-known-good), what should run, what happened last, what is quarantined,
    /// and what happens next and why, per bundle: from the running agent (with its sources), or
    /// from the records when it is down. Exit 4 when a bundle needs a person.
    Status {
        /// One bundle in full.
        #[arg(long)]
        explain: Option<String>,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Runs the agent: polls the sources (interval + jitter), takes webhooks, reconciles, and
    /// serves /healthz, /readyz, /metrics and /status on server.listen, until SIGTERM.
    Run {
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Holds a bundle where it is: no rollout starts until `agent resume` (rollbacks and
    /// unfinished work still finish).
    Pause {
        bundle: String,
        /// Said in `agent status`.
        #[arg(long, default_value = "paused by hand")]
        reason: String,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Lets a paused bundle roll out again, and asks the running agent to reconcile it now.
    Resume {
        bundle: String,
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// The fleet seen from the health reports of waves (docs/waves.md).
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Image tag policies (Flux's ImagePolicy language).
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Makes a host folder the agent's state folder: created when missing, owned by --owner,
    /// mode 0700 (the chart's per-node init container, as root with CAP_CHOWN only).
    StateDir {
        path: PathBuf,
        /// UID:GID, numeric.
        #[arg(long)]
        owner: String,
    },
    /// Runs inside a pre-pull pod (docs/prepull.md): with --install PATH copies itself there
    /// (the helper image's init container); alone exits 0 (the app image's container).
    PrepullHelper {
        #[arg(long)]
        install: Option<PathBuf>,
    },
    /// Prints the version and the git commit it was built from.
    Version {
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCmd {
    /// Per bundle, wave and store: the release it is on, its state and the age of its report.
    Status {
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG")]
        config: PathBuf,
        /// One bundle only.
        #[arg(long)]
        bundle: Option<String>,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Shows the tag a policy chooses and why every other tag lost; exits 1 when none matches.
    Test {
        /// The policy in YAML, e.g. 'semver: ">=1.0.0 <2.0.0"' or
        /// '{filterTags: {pattern: "^main-(?P<ts>[0-9]+)$", extract: "$ts"}, numerical: {order: asc}}'.
        #[arg(long, short)]
        policy: String,
        /// Candidate tags, comma-separated (instead of IMAGE).
        #[arg(long, value_delimiter = ',', required_unless_present = "image", conflicts_with = "image")]
        tags: Vec<String>,
        /// An image repository (e.g. harbor.example/library/app): list its tags in the registry,
        /// choose, and resolve the chosen tag's digest. Needs --config for the registry's auth.
        image: Option<String>,
        /// The agent config that names the registry, its CA and credentials.
        #[arg(long, short, env = "GITOPS_AGENT_CONFIG", requires = "image")]
        config: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
}

/// Human text for people, JSON for machines, from the same data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Validate { config, waves, output } => {
            validate::run(&config, waves.as_deref(), output, &|k| std::env::var(k).ok(), out)
        }
        Cmd::Fetch { config, output } => fetch::run(&config, output, out),
        Cmd::Render { bundle, config, labels, kube_version, no_resolve, output } => render::run(
            render::Args {
                config: &config,
                bundle: &bundle,
                labels: labels.as_deref(),
                kube_version: kube_version.as_deref(),
                no_resolve,
                output,
            },
            out,
        ),
        Cmd::Diff { bundle, config, output } => {
            use std::io::IsTerminal;
            let color = diff::use_color(std::io::stdout().is_terminal(), std::env::var("NO_COLOR").ok().as_deref());
            diff::run(diff::Args { config: &config, bundle: bundle.as_deref(), output, color }, out)
        }
        Cmd::Reconcile { once: _, dry_run, ignore_windows, bundle, config, output } => reconcile::run(
            reconcile::Args { config: &config, bundle: bundle.as_deref(), dry_run, ignore_windows, output },
            out,
        ),
        Cmd::Rollback { bundle, to, config, output } => rollback::run(&config, &bundle, to.as_deref(), output, out),
        Cmd::Retry { bundle, config } => retry::run(&config, &bundle, out),
        Cmd::Prune { bundle, confirm, config, output } => {
            let confirm = if confirm { prune::Confirm::Yes } else { prune::Confirm::No };
            prune::run(&config, &bundle, confirm, output, out)
        }
        Cmd::Status { explain, config, output } => status::run(&config, explain.as_deref(), output, out),
        Cmd::Run { config } => crate::daemon::run(&config),
        Cmd::Pause { bundle, reason, config } => pause::run(&config, &bundle, Some(&reason), out),
        Cmd::Resume { bundle, config } => pause::run(&config, &bundle, None, out),
        Cmd::Policy { cmd: PolicyCmd::Test { policy, tags, image: None, output, .. } } => {
            policy::test(&policy, &tags, output, out)
        }
        Cmd::Policy { cmd: PolicyCmd::Test { policy, image: Some(image), config, output, .. } } => {
            policy::test_image(&policy, &image, config.as_deref(), output, out)
        }
        Cmd::Fleet { cmd: FleetCmd::Status { config, bundle, output } } => {
            fleet::status(&config, bundle.as_deref(), output, out)
        }
        Cmd::StateDir { path, owner } => state_dir::run(&path, &owner, out),
        Cmd::PrepullHelper { install } => crate::prepull::helper(install.as_deref(), out),
        Cmd::Version { output } => {
            match output {
                Output::Human => writeln!(out, "agent {}", version_line())?,
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "commit": env!("AGENT_GIT_COMMIT")})
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The driver's set-up for a command that acts through it (`reconcile`, `rollback`, `retry`,
/// `pause`): the config and a connected cluster.
async fn setup(config_path: &Path) -> anyhow::Result<Setup> {
    let (loaded, base) = crate::config::load(config_path)?;
    let cluster = Cluster::connect(&loaded.config.kube, &base).await?;
    Ok(Setup::new(loaded.config, &base, cluster))
}

/// The driver's progress lines, on stderr (stdout is the command's result).
fn progress(bundle: &str, line: &str) {
    if bundle.is_empty() {
        eprintln!("{line}");
    } else {
        eprintln!("{bundle}: {line}");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn version_line() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("AGENT_GIT_COMMIT"), ")")
}
