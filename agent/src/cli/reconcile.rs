//! `agent reconcile --once`: one full cycle through the driver (`crate::cycle`,
//! `crate::reconcile`), with a summary per bundle and an exit code.
//!
//! Exit codes of `reconcile`: 0 every bundle in sync or rolled out; 1 (`--dry-run` only) something
//! would be applied; 2 error before any bundle (config, git, cluster); 3 a bundle was blocked
//! (render, preflight, blast radius, conflict, quarantine), is retrying after an environment
//! fault (`shared::fault`), or rolled back, or a bundle that left Git is held for a confirmation
//! (`agent prune --confirm`); 4 a bundle needs a person (failed with nothing to
//! roll back to, rollback failed, or interrupted).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_CRITICAL, Output, progress, runtime, setup};
pub use crate::cycle::Report;
use shared::outcome::Outcome;

use crate::reconcile::BundleResult;
use crate::session::{ClusterUse, Session};

pub const EXIT_WOULD_APPLY: u8 = 1;
pub const EXIT_BLOCKED: u8 = 3;

pub struct Args<'a> {
    pub config: &'a Path,
    pub bundle: Option<&'a str>,
    pub dry_run: bool,
    pub ignore_windows: bool,
    pub output: Output,
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
    let results: Vec<&Outcome> = all.map(|b| &b.result).collect();
    if results.iter().any(|r| r.is_critical()) {
        EXIT_CRITICAL
    } else if report.error.is_some() {
        super::EXIT_ERROR
    } else if results
        .iter()
        .any(|r| matches!(r, Outcome::Blocked | Outcome::Retrying | Outcome::RolledBack | Outcome::RemovalHeld))
    {
        EXIT_BLOCKED
    } else if results.iter().any(|r| **r == Outcome::WouldApply) {
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
    crate::cycle::run(&s, &progress, session, only, dry_run, shared::replan::Replan::Always).await
}

/// One bundle's result, as `reconcile` and `rollback` print it.
pub(super) fn line(b: &BundleResult, out: &mut dyn Write) -> std::io::Result<()> {
    let rev = b.revision.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
    // The outcome's one word, in capitals where it wants the operator's eye.
    let word = match b.result.needs_attention() {
        true => b.result.word().to_uppercase(),
        false => b.result.word().to_owned(),
    };
    writeln!(out, "bundle {}{rev}: {word}", b.bundle)?;
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
    let count = |f: &dyn Fn(&Outcome) -> bool| report.bundles.iter().filter(|b| f(&b.result)).count();
    writeln!(
        out,
        "{} bundles: {} in sync, {} rolled out, {} rolled back, {} blocked, {} retrying, {} removed, {} held, {} need \
         a person",
        report.bundles.len(),
        count(&|r| matches!(r, Outcome::InSync | Outcome::Verified)),
        count(&|r| *r == Outcome::RolledOut),
        count(&|r| *r == Outcome::RolledBack),
        count(&|r| *r == Outcome::Blocked),
        count(&|r| *r == Outcome::Retrying),
        count(&|r| *r == Outcome::Removed),
        count(&|r| *r == Outcome::RemovalHeld),
        count(&|r| r.is_critical()),
    )
}
