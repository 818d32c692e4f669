//! What the commands that change state answer, as text and JSON from the same data, and their
//! exit codes: printed by the command line, or sent back by the running agent over its control
//! socket (`crate::daemon::control`) when it did the work.

use std::io::Write;

use serde::{Deserialize, Serialize};
use shared::outcome::Outcome;

use crate::cycle::Report;
use crate::reconcile::BundleResult;

/// Exit code of `reconcile --dry-run` when something would be applied.
pub const EXIT_WOULD_APPLY: u8 = 1;
/// Exit code for an error before any bundle.
pub const EXIT_ERROR: u8 = 2;
/// Exit code of `reconcile` when a bundle was blocked, is retrying, or rolled back.
pub const EXIT_BLOCKED: u8 = 3;
/// Exit code when a bundle needs a person (failed with nothing to roll back to, rollback
/// failed, or interrupted).
pub const EXIT_CRITICAL: u8 = 4;

/// A command's result: the exit code, and the output for people and for machines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub exit: u8,
    pub text: String,
    pub json: serde_json::Value,
}

/// `agent prune` without `--confirm`: shown, nothing deleted.
pub const EXIT_NOT_CONFIRMED: u8 = 1;

impl Answer {
    /// A sentence (retry, pause, resume); its JSON is `{"message": ...}`.
    pub fn said(message: String) -> Answer {
        Answer { exit: 0, json: serde_json::json!({ "message": message }), text: format!("{message}\n") }
    }

    /// `agent rollback`: 0 rolled back, 4 anything else (a person is needed).
    pub fn rolled_back(result: &BundleResult) -> Answer {
        let mut text = Vec::new();
        line(result, &mut text).expect("writing to memory");
        Answer {
            exit: if result.result == Outcome::RolledBack { 0 } else { EXIT_CRITICAL },
            text: String::from_utf8_lossy(&text).into_owned(),
            json: serde_json::to_value(result).expect("a result is JSON"),
        }
    }

    /// `agent prune`: 0 removed, 1 shown but not confirmed (the removal still held), 4 anything
    /// else.
    pub fn pruned(result: &BundleResult) -> Answer {
        let mut text = Vec::new();
        line(result, &mut text).expect("writing to memory");
        let exit = match result.result {
            Outcome::Removed => 0,
            Outcome::RemovalHeld => EXIT_NOT_CONFIRMED,
            _ => EXIT_CRITICAL,
        };
        Answer {
            exit,
            text: String::from_utf8_lossy(&text).into_owned(),
            json: serde_json::to_value(result).expect("a result is JSON"),
        }
    }

    /// `agent reconcile --once`.
    pub fn reconciled(report: &Report) -> Answer {
        let mut text = Vec::new();
        human(report, &mut text).expect("writing to memory");
        Answer {
            exit: exit_code(report),
            text: String::from_utf8_lossy(&text).into_owned(),
            json: serde_json::to_value(report).expect("a report is JSON"),
        }
    }
}

/// The exit code of a report (see the module documentation).
pub fn exit_code(report: &Report) -> u8 {
    let all = report.resumed.iter().chain(&report.bundles);
    let results: Vec<&Outcome> = all.map(|b| &b.result).collect();
    if results.iter().any(|r| r.is_critical()) {
        EXIT_CRITICAL
    } else if report.error.is_some() {
        EXIT_ERROR
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

/// One bundle's result, as `reconcile` and `rollback` print it.
pub fn line(b: &BundleResult, out: &mut dyn Write) -> std::io::Result<()> {
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

pub fn human(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    if let (Some(src), Some(commit)) = (&report.source, &report.commit) {
        writeln!(
            out,
            "source {src} at {}{}",
            &commit[..12.min(commit.len())],
            if report.dry_run { " (dry run: nothing written)" } else { "" }
        )?;
    }
    if let Some(signed) = &report.commit_signature {
        writeln!(out, "{signed}")?;
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
