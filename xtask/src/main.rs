//! `cargo xtask`: development tasks (test environment, test suite, demo, the agent's image, fuzzing,
//! webhook load, bench).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xtask::{paths, seed, testenv};

mod bench;
mod demo;
mod fuzz;
mod webhook_load;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Development tasks for gitops-agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The local test environment (control plane + KWOK, registry, git server) on 127.0.0.1.
    Testenv {
        #[command(subcommand)]
        cmd: TestenvCmd,
    },
    /// Sets up everything missing, starts the testenv, and runs lints and the whole test suite.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The agent's real job on the local test environment: `agent run` rolls Stack B out, takes
    /// a release on Gitea's webhook, and rolls a broken one back by itself.
    Demo,
    /// Lints and packages the agent's Helm chart (deploy/chart/gitops-agent) into target/chart.
    Chart {
        /// Pushes it as an OCI artifact to `oci://REGISTRY/REPO` in the testenv registry as the
        /// CI robot (`helm push`).
        #[arg(long, value_name = "REPO")]
        push: Option<String>,
    },
    /// Builds the agent's OCI image (static musl agent, helm, kustomize, CA bundle, user 65532;
    /// no shell) as a reproducible layout under target/image/a/layout.
    Image {
        /// Pushes it to `repository:tag` in the testenv registry as the CI robot.
        #[arg(long, value_name = "REF")]
        push: Option<String>,
        /// Builds it twice and checks the digests match, the layer's files and the config.
        #[arg(long)]
        verify: bool,
        /// The `org.opencontainers.image.source` label (default: the `origin` remote).
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// `linux/amd64` (the default), `linux/arm64` (cross-built), or `all`: both and an OCI
        /// image index over them (what `--push` then pushes).
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<String>,
    },
    /// Runs the fuzz targets of `fuzz/` one after another (nightly and cargo-fuzz, installed
    /// when missing); fails on a crash and names its reproducer.
    Fuzz {
        /// Seconds per target.
        #[arg(long, value_name = "SECS")]
        time: Option<u64>,
        /// Inputs per target.
        #[arg(long, value_name = "N")]
        runs: Option<u64>,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// A bounded burst of webhooks (10,000 in 10 s, good and bad signatures) against `agent run`
    /// on the testenv: prints `/healthz` latency, RSS and the reconciles it caused.
    WebhookLoad,
    /// One table of what a poll, a change and a first sync cost (requests at the server side
    /// against the floor, wall times against curl, skopeo and git, CPU, RSS and its slope,
    /// webhook → apply, plan CPU, binary and image size) with 50 bundles (the agent as it ships:
    /// static musl, profile release-image) and Flux's controllers side by side; writes target/bench/report.json.
    Bench {
        /// 10 bundles, small history, no Flux, the debug build (what `cargo xtask test` runs).
        #[arg(long)]
        quick: bool,
        /// The full sizes without Flux's controllers (their first build takes most of an hour).
        #[arg(long, conflicts_with = "quick")]
        without_flux: bool,
    },
}

#[derive(Subcommand)]
enum TestenvCmd {
    /// Builds what is missing (cached), then starts everything; does nothing if already up.
    Up {
        /// How long KWOK takes to make a good pod Ready.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        pod_ready_delay: Duration,
    },
    /// Stops exactly what `up` started and checks nothing is left listening.
    Down,
    /// Shows which components run.
    Status,
    /// Prints shell exports for the endpoints and credentials (`eval "$(cargo xtask testenv env)"`).
    Env,
    /// Pushes the Stack B fixture images and git repository.
    Seed,
    /// Runs the registry token service (started by `up`).
    #[command(hide = true)]
    ServeToken {
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    xtask::tls::install_crypto_provider();
    match cli.cmd {
        Cmd::Testenv { cmd } => match cmd {
            TestenvCmd::Up { pod_ready_delay } => {
                let info = testenv::up(&testenv::UpOptions { pod_ready_delay }).await?;
                eprintln!("testenv: KUBECONFIG={}  (more: cargo xtask testenv env)", info.kubeconfig.display());
            }
            TestenvCmd::Down => testenv::down()?,
            TestenvCmd::Status => {
                let ok = testenv::status(&mut std::io::stdout()).await?;
                if !ok {
                    return Ok(ExitCode::FAILURE);
                }
            }
            TestenvCmd::Env => {
                let info = testenv::EnvInfo::load(&paths::run_dir())?;
                print!("{}", testenv::env_exports(&info));
            }
            TestenvCmd::Seed => {
                let info = testenv::running(&paths::run_dir())
                    .context("the testenv is not up: run `cargo xtask testenv up` first")?;
                seed::seed(&info)?;
            }
            TestenvCmd::ServeToken { config } => {
                let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
                xtask::token_service::serve(serde_json::from_str(&text)?).await?;
            }
        },
        Cmd::Test { args } => return test(&args).await,
        Cmd::Demo => demo::demo().await?,
        Cmd::Chart { push } => xtask::chart::chart(push.as_deref())?,
        Cmd::Image { push, verify, source, platform } => {
            xtask::agent_image::image(platform.as_deref(), push.as_deref(), verify, source.as_deref())?;
        }
        Cmd::Fuzz { time, runs, targets } => {
            fuzz::fuzz(&fuzz::Options { time: time.map(Duration::from_secs), runs, targets })?;
        }
        Cmd::WebhookLoad => webhook_load::webhook_load().await?,
        Cmd::Bench { quick, without_flux } => {
            bench::bench(if quick { bench::Size::Quick } else { bench::Size::Full { without_flux } }).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Lints, then the whole suite against the testenv (started here, and stopped again if it was not
/// running before).
async fn test(extra: &[String]) -> Result<ExitCode> {
    let was_up = testenv::running(&paths::run_dir()).is_some();
    testenv::up(&testenv::UpOptions::default()).await?;
    let steps: Vec<(&str, Vec<&str>)> = vec![
        ("format", vec!["fmt", "--all", "--check"]),
        ("clippy", vec!["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    ];
    let mut failed = Vec::new();
    for (name, args) in steps {
        eprintln!("xtask test: {name}");
        if !paths::cargo().args(&args).status()?.success() {
            failed.push(name);
        }
    }
    eprintln!("xtask test: cargo test --workspace");
    let status = paths::cargo().args(["test", "--workspace"]).args(extra).status()?;
    if !status.success() {
        failed.push("tests");
    }
    eprintln!("xtask test: fuzz targets, {} s each", fuzz::TEST_TIME_BOX.as_secs());
    if let Err(e) = fuzz::fuzz(&fuzz::Options { time: Some(fuzz::TEST_TIME_BOX), ..Default::default() }) {
        eprintln!("xtask test: {e:#}");
        failed.push("fuzz");
    }
    // Alone, once the parallel suite is done, so that the bench keeps working (its figures are
    // not asserted; its request counts are).
    eprintln!("xtask test: cargo xtask bench --quick");
    if let Err(e) = bench::bench(bench::Size::Quick).await {
        eprintln!("xtask test: {e:#}");
        failed.push("bench --quick");
    }
    // Alone, once the parallel suite is done: it takes the real node down and up again.
    if testenv::running(&paths::run_dir()).is_some_and(|i| i.real_node.is_some()) {
        eprintln!("xtask test: the real node's down/up check");
        let status = paths::cargo()
            .args(["test", "-p", "agent", "--test", "e2e", "--", "--ignored", "--exact"])
            .arg("real_node::down_undoes_every_host_change_of_the_real_node_and_a_second_up_works")
            .status()?;
        if !status.success() {
            failed.push("real node down/up");
        }
    }
    if !was_up {
        testenv::down()?;
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask test: failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
