//! `agent rollback BUNDLE [--to REVISION]`: one hand-made step through the driver, from the
//! records alone; exit 0 rolled back, 4 anything else (a person is needed).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::reconcile::line;
use super::{EXIT_CRITICAL, Output, progress, runtime, setup};
use shared::outcome::Outcome;

/// `agent rollback BUNDLE [--to REVISION]`: from the records alone (no git, no registry).
pub fn run(
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
        Outcome::RolledBack => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_CRITICAL),
    })
}
