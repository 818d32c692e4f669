//! `agent rollback BUNDLE [--to REVISION]`: one hand-made step through the driver, from the
//! records alone, done by the running agent when one answers on this node (else here, holding
//! the Lease); exit 0 rolled back, 4 anything else (a person is needed).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::local::{Done, command};
use super::{Output, progress, runtime};
use crate::answer::Answer;
use crate::daemon::control::Command;

/// `agent rollback BUNDLE [--to REVISION]`: from the records alone (no git, no registry).
pub fn run(
    config: &Path,
    bundle: &str,
    to: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    let asked = Command::Rollback { bundle: bundle.to_owned(), to: to.map(str::to_owned) };
    let done = runtime()?.block_on(command(config, asked, async |s| {
        let driver = s.driver(false, &progress);
        Ok(Answer::rolled_back(&driver.rollback(bundle, to, s.defaults.clone()).await?))
    }))?;
    print(done, output, out)
}

/// A command's answer, whoever did it, and its exit code.
pub(super) fn print(done: Done, output: Output, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (Done::ByAgent(a) | Done::Here(a)) = done;
    match output {
        Output::Json => writeln!(out, "{}", a.json)?,
        Output::Human => write!(out, "{}", a.text)?,
    }
    Ok(ExitCode::from(a.exit))
}
