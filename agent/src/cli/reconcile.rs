//! `agent reconcile --once`: one full cycle through the driver (`crate::cycle`,
//! `crate::reconcile`), with a summary per bundle and an exit code; run by the agent on this
//! node when one answers on its control socket, else here holding the Lease.
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

use super::local::{Done, command};
use super::{Output, progress, runtime, setup};
use crate::answer::{Answer, human};
pub use crate::answer::{EXIT_BLOCKED, EXIT_WOULD_APPLY, exit_code};
pub use crate::cycle::Report;
use crate::daemon::control::Command;
use crate::session::{ClusterUse, Session};

pub struct Args<'a> {
    pub config: &'a Path,
    pub bundle: Option<&'a str>,
    pub dry_run: bool,
    pub ignore_windows: bool,
    pub output: Output,
}

/// A dry run writes nothing, so it runs here. Anything else is deferred to the agent running on
/// this node when its control socket answers (it runs the cycle between its own and sends the
/// report back), and otherwise runs here holding the Lease: refused while another agent holds it.
pub fn run(args: Args<'_>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if !args.dry_run {
        let asked = Command::Reconcile { bundle: args.bundle.map(str::to_owned), ignore_windows: args.ignore_windows };
        let done = runtime()?.block_on(command(args.config, asked, async |s| {
            let mut s = s.clone();
            s.ignore_windows = args.ignore_windows;
            let session = Session::open(args.config, ClusterUse::Required, None);
            Ok(Answer::reconciled(
                &crate::cycle::run(&s, &progress, session, args.bundle, false, shared::replan::Replan::Always).await?,
            ))
        }))?;
        if let Done::ByAgent(_) = done {
            eprintln!("deferred to the running agent on this node: it ran this cycle");
        }
        return super::rollback::print(done, args.output, out);
    }
    let report = runtime()?.block_on(cycle(args.config, args.bundle, args.dry_run, args.ignore_windows))?;
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Output::Human => human(&report, out)?,
    }
    Ok(ExitCode::from(exit_code(&report)))
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
