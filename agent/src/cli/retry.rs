//! `agent retry BUNDLE`: lifts a bundle's quarantine through the driver (the running agent's
//! when one answers on this node), so the next reconcile tries the failed revision again.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::local::command;
use super::{Output, progress, runtime};
use crate::answer::Answer;
use crate::daemon::control::Command;

/// `agent retry BUNDLE`.
pub fn run(config: &Path, bundle: &str, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    let done = runtime()?.block_on(command(config, Command::Retry { bundle: bundle.to_owned() }, async |s| {
        Ok(Answer::said(s.driver(false, &progress).retry(bundle).await?))
    }))?;
    super::rollback::print(done, Output::Human, out)
}
