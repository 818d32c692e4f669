//! `agent fleet status`: the fleet on one screen, from the health reports of waves (what every
//! store published to the reports repository): per bundle with reports, per wave and store,
//! what it is on, its state and how old its report is. Reads only; decides nothing.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{Output, runtime};
use crate::source::git::{GitError, GitOptions, GitSource};
use crate::source::registry::Registries;
use crate::source::reports::Reports;
use crate::watch::unix_now;

/// `agent fleet status --config FILE [--bundle B] [--output json]`.
pub fn status(config_path: &Path, only: Option<&str>, output: Output, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (loaded, base) = crate::config::load(config_path)?;
    let config = loaded.config;
    let waves =
        config.waves.clone().context("waves: not configured in the node config: there are no reports to read")?;
    let source = GitSource::new(GitOptions::from_config(&config, &base))?;
    let poll = source.poll()?;
    let root = config.git.path.trim_matches('/').to_owned();
    let root = if root == "." { String::new() } else { root };
    let listed = source.list(&poll.commit.id, if root.is_empty() { "." } else { &root })?;
    let prefix = if root.is_empty() { String::new() } else { format!("{root}/") };
    let relative: Vec<&str> = listed.iter().map(|f| f.path.strip_prefix(&prefix).unwrap_or(&f.path)).collect();
    let mut bundles: Vec<String> =
        shared::bundle::discover(relative.iter().copied()).into_iter().map(|b| b.dir).collect();
    if let Some(b) = only {
        bundles.retain(|d| d == b.trim_matches('/'));
        anyhow::ensure!(!bundles.is_empty(), "no bundle {b:?} under {} at this commit", config.git.path);
    }
    // The repository's waves give the order of the screen; without them, waves sort by name.
    let file = if root.is_empty() {
        shared::waves::REPO_FILE.to_owned()
    } else {
        format!("{root}/{}", shared::waves::REPO_FILE)
    };
    let order: Vec<String> = match source.read(&poll.commit.id, &file, &root) {
        Ok(bytes) => shared::waves::parse_file(&String::from_utf8_lossy(&bytes))
            .map(|w| w.into_iter().map(|w| w.name).collect())
            .map_err(|p| anyhow::anyhow!("{file}: {p}"))?,
        Err(GitError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let registries = Registries::from_config(&config.registries, &base)?;
    let reports = Reports::new(&waves);
    let now = unix_now();
    let read = runtime()?.block_on(async {
        let mut all = Vec::new();
        for b in &bundles {
            let (found, problems) = reports.read_all(&registries, b).await;
            all.push((b.clone(), found, problems));
        }
        all
    });
    let read: Vec<_> =
        read.into_iter().filter(|(_, found, problems)| !found.is_empty() || !problems.is_empty()).collect();
    match output {
        Output::Json => {
            let doc: Vec<serde_json::Value> = read
                .iter()
                .map(|(b, found, problems)| {
                    let mut v = shared::report::fleet_json(b, found, now);
                    v["problems"] = serde_json::json!(problems);
                    v
                })
                .collect();
            writeln!(out, "{}", serde_json::json!({"commit": poll.commit.id, "bundles": doc}))?;
        }
        Output::Human if read.is_empty() => writeln!(out, "no reports yet under {}", waves.reports.repository)?,
        Output::Human => {
            for (b, found, problems) in &read {
                write!(out, "{}", shared::report::fleet_table(b, &order, found, now))?;
                for p in problems {
                    writeln!(out, "  not read: {p}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
