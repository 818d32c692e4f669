//! `agent pause BUNDLE` and `agent resume BUNDLE`: a new version of the bundle's record, written
//! by the running agent when one answers on this node (which then reconciles a resumed bundle
//! at once), else here, holding the Lease.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::local::command;
use super::{Output, progress, runtime};
use crate::answer::Answer;
use crate::daemon::control::Command;

/// `agent pause BUNDLE` (with a reason) and `agent resume BUNDLE` (without).
pub fn run(config: &Path, bundle: &str, reason: Option<&str>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    let asked = match reason {
        Some(r) => Command::Pause { bundle: bundle.to_owned(), reason: r.to_owned() },
        None => Command::Resume { bundle: bundle.to_owned() },
    };
    let done = runtime()?.block_on(command(config, asked, async |s| {
        let said = s.driver(false, &progress).pause(bundle, reason).await?;
        Ok(Answer::said(match reason {
            Some(_) => said,
            None => format!("{said}; no agent runs on this node: it rolls out at its next reconcile"),
        }))
    }))?;
    super::rollback::print(done, Output::Human, out)
}
