//! `agent retry BUNDLE`: lifts a bundle's quarantine through the driver, so the next reconcile
//! tries the failed revision again.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{progress, runtime, setup};

/// `agent retry BUNDLE`.
pub fn run(config: &Path, bundle: &str, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let message = runtime()?.block_on(async {
        let s = setup(config).await?;
        let driver = s.driver(false, &progress);
        driver.retry(bundle.trim_matches('/')).await
    })?;
    writeln!(out, "{message}")?;
    Ok(ExitCode::SUCCESS)
}
