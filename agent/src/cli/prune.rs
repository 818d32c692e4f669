//! `agent prune BUNDLE [--confirm]`: a bundle that left Git whose removal is held (its folder gone
//! whole, too many bundles at once): shows what would be deleted, and with `--confirm` deletes
//! it through the driver, from the records alone.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::local::command;
use super::{Output, progress, runtime, setup};
use crate::answer::Answer;
use crate::daemon::control::Command;
use shared::outcome::Outcome;

/// Whether `agent prune` deletes or only shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Yes,
    No,
}

/// `agent prune BUNDLE [--confirm]`: exit 0 removed; 1 shown, not confirmed; 4 anything else.
/// Confirmed, it is done by the running agent when one answers on this node (else here, holding
/// the Lease), as `rollback` is; shown, it only reads the records.
pub fn run(
    config: &Path,
    bundle: &str,
    confirm: Confirm,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    match confirm {
        Confirm::Yes => {
            let asked = Command::Prune { bundle: bundle.to_owned() };
            let done = runtime()?.block_on(command(config, asked, async |s| {
                let driver = s.driver(false, &progress);
                Ok(Answer::pruned(&driver.confirm_removal(bundle).await?))
            }))?;
            super::rollback::print(done, output, out)
        }
        Confirm::No => {
            let result = runtime()?.block_on(async {
                let s = setup(config).await?;
                let record =
                    s.store.load(bundle).await?.ok_or_else(|| anyhow::anyhow!("no record of bundle {bundle}"))?;
                let status = shared::status::bundle_status(&record, crate::watch::unix_now());
                anyhow::ensure!(
                    shared::removal::confirmed(&record).is_some(),
                    "bundle {bundle} has no removal held (`agent status` says {}): nothing to confirm",
                    status.state
                );
                Ok(crate::reconcile::BundleResult::new(bundle, Outcome::RemovalHeld, status.next))
            })?;
            let a = Answer::pruned(&result);
            match output {
                Output::Json => writeln!(out, "{}", a.json)?,
                Output::Human => write!(out, "{}", a.text)?,
            }
            Ok(ExitCode::from(a.exit))
        }
    }
}
