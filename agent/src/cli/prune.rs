//! `agent prune BUNDLE [--confirm]`: a bundle that left Git whose removal is held (its folder gone
//! whole, too many bundles at once): shows what would be deleted, and with `--confirm` deletes
//! it through the driver, from the records alone.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::reconcile::line;
use super::{Output, progress, runtime, setup};
use shared::outcome::Outcome;

/// Whether `agent prune` deletes or only shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Yes,
    No,
}

/// Exit code when nothing was deleted because `--confirm` was not given.
const EXIT_NOT_CONFIRMED: u8 = 1;

/// `agent prune BUNDLE [--confirm]`: exit 0 removed; 1 shown, not confirmed; 4 anything else.
pub fn run(
    config: &Path,
    bundle: &str,
    confirm: Confirm,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    let result = runtime()?.block_on(async {
        let s = setup(config).await?;
        let driver = s.driver(false, &progress);
        match confirm {
            Confirm::Yes => driver.confirm_removal(bundle).await,
            Confirm::No => {
                let record =
                    s.store.load(bundle).await?.ok_or_else(|| anyhow::anyhow!("no record of bundle {bundle}"))?;
                let status = shared::status::bundle_status(&record, crate::watch::unix_now());
                anyhow::ensure!(
                    shared::removal::confirmed(&record).is_some(),
                    "bundle {bundle} has no removal held (`agent status` says {}): nothing to confirm",
                    status.state
                );
                Ok(crate::reconcile::BundleResult::new(bundle, Outcome::RemovalHeld, status.next))
            }
        }
    })?;
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string(&result)?)?,
        Output::Human => line(&result, out)?,
    }
    Ok(match result.result {
        Outcome::Removed => ExitCode::SUCCESS,
        Outcome::RemovalHeld => ExitCode::from(EXIT_NOT_CONFIRMED),
        _ => ExitCode::from(super::EXIT_CRITICAL),
    })
}
