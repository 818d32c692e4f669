//! `agent retry BUNDLE`: lifts a bundle's quarantine through the driver (the running agent's
//! when one answers on this node), so the next reconcile tries the failed revision again; of a
//! release its wave gate holds, a deliberate override, recorded with who asked.

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
    let by = who();
    let asked = Command::Retry { bundle: bundle.to_owned(), by: Some(by.clone()) };
    let done = runtime()?.block_on(command(config, asked, async |s| {
        Ok(Answer::said(s.driver(false, &progress).retry(bundle, &by).await?))
    }))?;
    super::rollback::print(done, Output::Human, out)
}

/// Who runs the command, as this process knows it: the login name and the user id.
fn who() -> String {
    let name = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("{name} (uid {})", nix::unistd::geteuid().as_raw())
}
