//! `agent reconcile --once`, `agent rollback`, `agent retry`: one full cycle, or one hand-made
//! step, through the driver (`crate::reconcile`), with a summary and an exit code.
//!
//! Exit codes of `reconcile`: 0 every bundle in sync or rolled out; 1 (`--dry-run` only) something
//! would be applied; 2 error before any bundle (config, git, cluster); 3 a bundle was blocked
//! (render, preflight, blast radius, conflict, quarantine) or rolled back; 4 a bundle needs a
//! person (failed with nothing to roll back to, rollback failed, or interrupted).

use std::io::Write;

use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;

use super::Output;
use super::session::{ClusterUse, Session};
use crate::cluster::Cluster;
pub use crate::cycle::Report;
use crate::cycle::Setup;
use crate::reconcile::{BundleResult, Result};
use crate::state::StateStore;

pub const EXIT_WOULD_APPLY: u8 = 1;
pub const EXIT_BLOCKED: u8 = 3;
pub const EXIT_CRITICAL: u8 = 4;

pub struct Args<'a> {
    pub config: &'a Path,
    pub bundle: Option<&'a str>,
    pub dry_run: bool,
    pub ignore_windows: bool,
    pub output: Output,
}

async fn setup(config_path: &Path) -> anyhow::Result<Setup> {
    let (loaded, base) = super::load_config(config_path)?;
    let cluster = Cluster::connect(&loaded.config.kube, &base).await?;
    Ok(Setup::new(loaded.config, &base, cluster))
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
    let report = runtime()?.block_on(cycle(args.config, args.bundle, args.dry_run, args.ignore_windows))?;
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

/// One cycle, as `agent reconcile --once` runs it.
pub async fn cycle(
    config_path: &Path,
    only: Option<&str>,
    dry_run: bool,
    ignore_windows: bool,
) -> anyhow::Result<Report> {
    let mut s = setup(config_path).await?;
    s.ignore_windows = ignore_windows;
    let session = Session::open(config_path, ClusterUse::Required, None);
    crate::cycle::run(&s, &progress, session, only, dry_run).await
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
        let driver = s.driver(false, &progress);
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
        let driver = s.driver(false, &progress);
        driver.retry(bundle.trim_matches('/')).await
    })?;
    writeln!(out, "{message}")?;
    Ok(ExitCode::SUCCESS)
}

/// `agent pause BUNDLE` (with a reason) and `agent resume BUNDLE` (without): a new version of
/// the bundle's record; on resume the running agent on this node is asked to reconcile it now.
pub fn pause(config: &Path, bundle: &str, reason: Option<&str>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    let (loaded, _) = super::load_config(config)?;
    let listen = loaded.config.server.listen.clone();
    let said = runtime()?.block_on(async {
        let s = setup(config).await?;
        let record = s.store.load(bundle).await?;
        let known = record.is_some();
        let record = record.unwrap_or_else(|| shared::state::Record::new(bundle));
        if record.phase != shared::state::Phase::Idle && reason.is_some() {
            writeln!(
                out,
                "note: {bundle} is {} now; that finishes first (stopping half-way is never safer)",
                record.phase.name()
            )?;
        }
        let next = match reason {
            Some(r) => record.pause(r, crate::watch::unix_now()),
            None if record.paused.is_none() => {
                anyhow::bail!("{bundle} is not paused")
            }
            None => record.resume(),
        };
        s.store.save(&next).await?;
        let mut said = match reason {
            Some(_) if known => format!("paused {bundle}: no rollout starts until `agent resume {bundle}`"),
            Some(_) => {
                format!("paused {bundle} before its first rollout: nothing starts until `agent resume {bundle}`")
            }
            None => format!("resumed {bundle}"),
        };
        if reason.is_none() {
            said.push_str(&match nudge(&listen, bundle).await {
                Ok(()) => "; the running agent reconciles it now".to_owned(),
                Err(e) => format!("; the agent rolls it out at its next poll (no running agent answered: {e})"),
            });
        }
        anyhow::Ok(said)
    })?;
    writeln!(out, "{said}")?;
    Ok(ExitCode::SUCCESS)
}

/// The running agent's address on this node, from `server.listen` (a wildcard means loopback).
fn local_url(listen: &str) -> Option<String> {
    let addr: std::net::SocketAddr = listen.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    Some(format!("http://{ip}:{}", addr.port()))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?)
}

async fn nudge(listen: &str, bundle: &str) -> anyhow::Result<()> {
    let base = local_url(listen).context("server.listen is not an address")?;
    let mut url = url::Url::parse(&format!("{base}/reconcile"))?;
    url.query_pairs_mut().append_pair("bundle", bundle).append_pair("why", "agent resume");
    let resp = http_client()?.post(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
    Ok(())
}

/// The running agent's `/status`, if it is ours and answers.
async fn from_agent(
    config: &shared::config::AgentConfig,
    explain: Option<&str>,
) -> Option<(serde_json::Value, String)> {
    let base = local_url(&config.server.listen)?;
    let client = http_client().ok()?;
    let get = |output: &'static str| {
        let mut url = url::Url::parse(&format!("{base}/status")).expect("a URL from an address");
        url.query_pairs_mut().append_pair("output", output);
        if let Some(b) = explain {
            url.query_pairs_mut().append_pair("explain", b);
        }
        client.get(url).send()
    };
    let text = get("json").await.ok()?.error_for_status().ok()?.text().await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json["agent"]["agentId"] != config.identity.agent_id.as_str() {
        return None;
    }
    let human = get("human").await.ok()?.text().await.ok()?;
    Some((json, human))
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
    let (loaded, base) = super::load_config(config_path)?;
    let config = loaded.config;
    if let Some((json, human)) = runtime()?.block_on(from_agent(&config, explain)) {
        match output {
            Output::Json => writeln!(out, "{json}")?,
            Output::Human => write!(out, "{human}")?,
        }
        let needs_person = json["bundles"]
            .as_array()
            .is_some_and(|b| b.iter().any(|s| matches!(s["state"].as_str(), Some("failed" | "rollback-failed"))));
        return Ok(if needs_person { ExitCode::from(EXIT_CRITICAL) } else { ExitCode::SUCCESS });
    }
    let (records, warning) = runtime()?.block_on(async {
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
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::json!({"agent": null, "sources": [], "bundles": statuses, "warning": warning})
        )?,
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
