//! `agent reconcile --once`, `agent rollback`, `agent retry`: one full cycle, or one hand-made
//! step, through the driver (`crate::reconcile`), with a summary and an exit code.
//!
//! Exit codes of `reconcile`: 0 every bundle in sync or rolled out; 1 (`--dry-run` only) something
//! would be applied; 2 error before any bundle (config, git, cluster); 3 a bundle was blocked
//! (render, preflight, blast radius, conflict, quarantine) or rolled back; 4 a bundle needs a
//! person (failed with nothing to roll back to, rollback failed, or interrupted).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use shared::rollout::Limits;

use super::Output;
use super::session::{ClusterUse, Session};
use crate::cluster::Cluster;
use crate::reconcile::{BundleResult, Driver, Result};
use crate::state::StateStore;

pub const EXIT_WOULD_APPLY: u8 = 1;
pub const EXIT_BLOCKED: u8 = 3;
pub const EXIT_CRITICAL: u8 = 4;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dry_run: bool,
    pub source: Option<String>,
    pub commit: Option<String>,
    /// Work a previous run left unfinished, finished first.
    pub resumed: Vec<BundleResult>,
    pub bundles: Vec<BundleResult>,
    /// Why the cycle stopped before the bundles (git or cluster unreachable).
    pub error: Option<String>,
}

pub struct Args<'a> {
    pub config: &'a Path,
    pub bundle: Option<&'a str>,
    pub dry_run: bool,
    pub output: Output,
}

struct Setup {
    config: shared::config::AgentConfig,
    cluster: Cluster,
    store: StateStore,
    defaults: Limits,
}

async fn setup(config_path: &Path) -> anyhow::Result<Setup> {
    let (loaded, base) = super::load_config(config_path)?;
    let config = loaded.config;
    let cluster = Cluster::connect(&config.kube, &base).await?;
    let store = StateStore::new(
        &base.join(&config.state_dir),
        &config.identity.agent_id,
        &config.kube.namespace,
        Some(cluster.client().clone()),
    );
    let secs = |s: &str, field: &str| {
        humantime::parse_duration(s).map(|d| d.as_secs() as i64).with_context(|| format!("rollout.{field}: {s:?}"))
    };
    let defaults = Limits {
        progress_deadline: secs(&config.rollout.progress_deadline, "progressDeadline")?,
        verify_window: secs(&config.rollout.verify_window, "verifyWindow")?,
        probes: Vec::new(),
    };
    Ok(Setup { config, cluster, store, defaults })
}

impl Setup {
    fn driver(&self, dry_run: bool) -> Driver<'_> {
        Driver {
            cluster: &self.cluster,
            store: &self.store,
            agent_id: &self.config.identity.agent_id,
            defaults: self.defaults.clone(),
            dry_run,
            progress: &progress,
        }
    }
}

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

pub fn run(args: Args<'_>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(cycle(args.config, args.bundle, args.dry_run))?;
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Output::Human => human(&report, out)?,
    }
    Ok(ExitCode::from(exit_code(&report)))
}

/// The exit code of a report (see the module documentation).
pub fn exit_code(report: &Report) -> u8 {
    let all = report.resumed.iter().chain(&report.bundles);
    let results: Vec<&Result> = all.map(|b| &b.result).collect();
    if results.iter().any(|r| r.is_critical()) {
        EXIT_CRITICAL
    } else if report.error.is_some() {
        super::EXIT_ERROR
    } else if results.iter().any(|r| matches!(r, Result::Blocked | Result::RolledBack)) {
        EXIT_BLOCKED
    } else if results.iter().any(|r| **r == Result::WouldApply) {
        EXIT_WOULD_APPLY
    } else {
        0
    }
}

/// One cycle: unfinished work first, then sources, render, plan, apply, watch, verify or roll
/// back, bundle by bundle in `dependsOn` order.
pub async fn cycle(config_path: &Path, only: Option<&str>, dry_run: bool) -> anyhow::Result<Report> {
    let s = setup(config_path).await?;
    let driver = s.driver(dry_run);
    let mut report =
        Report { dry_run, source: None, commit: None, resumed: Vec::new(), bundles: Vec::new(), error: None };
    report.resumed = driver.resume().await?;
    let session = match Session::open(config_path, ClusterUse::Required, None).await {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return Ok(report);
        }
    };
    report.source = Some(session.shown_url.clone());
    report.commit = Some(session.poll.commit.id.clone());
    let bundles = match only {
        Some(name) => vec![session.bundle(name).await?],
        None => session.bundles().await?,
    };
    let namespaced = session.namespaced();
    let build = session.build(&namespaced, true);
    let mut built = Vec::new();
    for b in &bundles {
        built.push(build.bundle(b).await);
    }
    let deps: Vec<(String, Vec<String>)> = bundles
        .iter()
        .zip(&built)
        .map(|(b, d)| (b.dir.clone(), d.as_ref().map(|d| d.spec.depends_on.clone()).unwrap_or_default()))
        .collect();
    let (order, depends_on) = match shared::desired::bundle_order(&deps) {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(e);
            return Ok(report);
        }
    };
    let mut done: BTreeMap<String, Result> = BTreeMap::new();
    let mut owned_cache = BTreeMap::new();
    for i in order {
        let name = bundles[i].dir.clone();
        let failed_dep = depends_on[i].iter().find_map(|&d| {
            let r = done.get(&bundles[d].dir)?;
            let ok = matches!(r, Result::InSync | Result::Verified | Result::RolledOut);
            (!ok).then(|| format!("{} ({r:?})", bundles[d].dir))
        });
        let result = match (&built[i], failed_dep) {
            (Err(e), _) => BundleResult {
                bundle: name.clone(),
                result: Result::Blocked,
                revision: None,
                message: format!("{} failed: {}", e.stage, e.reasons.join("; ")),
                summary: None,
                objects: Vec::new(),
            },
            (Ok(_), Some(dep)) if !dry_run => BundleResult {
                bundle: name.clone(),
                result: Result::Blocked,
                revision: None,
                message: format!("waiting for the bundle it depends on: {dep}"),
                summary: None,
                objects: Vec::new(),
            },
            (Ok(desired), _) => driver.bundle(desired, &session.poll.commit.id, &mut owned_cache).await,
        };
        done.insert(name, result.result.clone());
        report.bundles.push(result);
    }
    // Report in the repository's order, not the apply order.
    report.bundles.sort_by_key(|b| bundles.iter().position(|x| x.dir == b.bundle));
    Ok(report)
}

fn result_word(r: &Result) -> &'static str {
    match r {
        Result::InSync => "in sync",
        Result::Verified => "verified",
        Result::RolledOut => "rolled out",
        Result::RolledBack => "ROLLED BACK",
        Result::WouldApply => "would apply",
        Result::Blocked => "blocked",
        Result::FailedNoRollback => "FAILED",
        Result::RollbackFailed => "ROLLBACK FAILED",
        Result::Interrupted => "interrupted",
    }
}

fn line(b: &BundleResult, out: &mut dyn Write) -> std::io::Result<()> {
    let rev = b.revision.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
    writeln!(out, "bundle {}{rev}: {}", b.bundle, result_word(&b.result))?;
    if !b.message.is_empty() {
        writeln!(out, "  {}", b.message)?;
    }
    for o in &b.objects {
        writeln!(out, "  {:?} {}", o.action, o.id)?;
    }
    Ok(())
}

fn human(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    if let (Some(src), Some(commit)) = (&report.source, &report.commit) {
        writeln!(
            out,
            "source {src} at {}{}",
            &commit[..12.min(commit.len())],
            if report.dry_run { " (dry run: nothing written)" } else { "" }
        )?;
    }
    for b in &report.resumed {
        write!(out, "resumed ")?;
        line(b, out)?;
    }
    for b in &report.bundles {
        line(b, out)?;
    }
    if let Some(e) = &report.error {
        writeln!(out, "error: {e}")?;
    }
    let count = |f: &dyn Fn(&Result) -> bool| report.bundles.iter().filter(|b| f(&b.result)).count();
    writeln!(
        out,
        "{} bundles: {} in sync, {} rolled out, {} rolled back, {} blocked, {} need a person",
        report.bundles.len(),
        count(&|r| matches!(r, Result::InSync | Result::Verified)),
        count(&|r| *r == Result::RolledOut),
        count(&|r| *r == Result::RolledBack),
        count(&|r| *r == Result::Blocked),
        count(&|r| r.is_critical()),
    )
}

/// `agent rollback BUNDLE [--to REVISION]`: from the records alone (no git, no registry).
pub fn rollback(
    config: &Path,
    bundle: &str,
    to: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let result = runtime()?.block_on(async {
        let s = setup(config).await?;
        let driver = s.driver(false);
        driver.rollback(bundle.trim_matches('/'), to, s.defaults.clone()).await
    })?;
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string(&result)?)?,
        Output::Human => line(&result, out)?,
    }
    Ok(match result.result {
        Result::RolledBack => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_CRITICAL),
    })
}

/// `agent retry BUNDLE`.
pub fn retry(config: &Path, bundle: &str, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let message = runtime()?.block_on(async {
        let s = setup(config).await?;
        let driver = s.driver(false);
        driver.retry(bundle.trim_matches('/')).await
    })?;
    writeln!(out, "{message}")?;
    Ok(ExitCode::SUCCESS)
}

/// `agent status [--explain BUNDLE]`, from the records (the cluster's state Secrets and the
/// node's files; the newer copy wins). With the API server unreachable, the node's files alone,
/// said so.
pub fn status(
    config_path: &Path,
    explain: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (records, warning) = runtime()?.block_on(async {
        let (loaded, base) = super::load_config(config_path)?;
        let config = loaded.config;
        let (client, warning) = match Cluster::connect(&config.kube, &base).await {
            Ok(c) => (Some(c.client().clone()), None),
            Err(e) => (None, Some(format!("{e}; showing this node's local records only"))),
        };
        let store =
            StateStore::new(&base.join(&config.state_dir), &config.identity.agent_id, &config.kube.namespace, client);
        anyhow::Ok((store.all().await?, warning))
    })?;
    let now = crate::watch::unix_now();
    let mut statuses: Vec<shared::status::BundleStatus> =
        records.iter().map(|r| shared::status::bundle_status(r, now)).collect();
    if let Some(name) = explain {
        let name = name.trim_matches('/');
        statuses.retain(|s| s.bundle == name);
        if statuses.is_empty() {
            anyhow::bail!("no record of bundle {name}: this agent identity never rolled it out");
        }
    }
    match output {
        Output::Json => writeln!(out, "{}", serde_json::json!({"bundles": statuses, "warning": warning}))?,
        Output::Human => {
            if let Some(w) = &warning {
                writeln!(out, "warning: {w}")?;
            }
            match explain {
                Some(_) => write!(out, "{}", shared::status::explain(&statuses[0], now))?,
                None => write!(out, "{}", shared::status::table(&statuses, now))?,
            }
        }
    }
    let needs_person = statuses.iter().any(|s| matches!(s.state, "failed" | "rollback-failed"));
    Ok(if needs_person { ExitCode::from(EXIT_CRITICAL) } else { ExitCode::SUCCESS })
}
