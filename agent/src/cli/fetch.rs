//! `agent fetch`: one poll of the git source, as the agent would make it: the commit it now
//! follows, how the branch moved, and the bundles found under `git.path` at that commit.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use shared::bundle::{self, Marker};

use super::Output;
use crate::source::git::{Change, GitOptions, GitSource};

pub fn run(config_path: &Path, output: Output, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (loaded, base) = crate::config::load(config_path)?;
    let git = &loaded.config.git;
    let source = GitSource::new(GitOptions::from_config(&loaded.config, &base))?;
    let poll = source.poll()?;
    let root = git.path.trim_matches('/');
    let files = source.list(&poll.commit.id, root)?;
    let prefix = if root.is_empty() || root == "." { String::new() } else { format!("{root}/") };
    let relative: Vec<&str> = files.iter().map(|f| f.path.strip_prefix(&prefix).unwrap_or(&f.path)).collect();
    let bundles = bundle::discover(relative.iter().copied());
    let url = source.shown_url();
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "url": url,
                "branch": git.reference,
                "path": git.path,
                "commit": poll.commit,
                "change": poll.change,
                "previous": poll.previous,
                "recloned": poll.recloned,
                "bundles": bundles.iter().map(|b| serde_json::json!({"dir": b.dir, "kind": kind(b.marker)})).collect::<Vec<_>>(),
            });
            writeln!(out, "{doc}")?;
        }
        Output::Human => {
            let short = |id: &str| id.chars().take(12).collect::<String>();
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(poll.commit.time.max(0).unsigned_abs()),
            );
            writeln!(out, "source   {url} ({})", git.reference)?;
            writeln!(out, "commit   {} {when} {:?}", short(&poll.commit.id), poll.commit.summary)?;
            let moved = match (poll.change, &poll.previous) {
                (Change::Unchanged, _) => "unchanged since the last fetch".to_owned(),
                (Change::New, _) => "first fetch into this cache".to_owned(),
                (Change::FastForward, Some(p)) => format!("fast-forward from {}", short(p)),
                (Change::Forced, Some(p)) => format!("FORCED: history rewritten, was {}", short(p)),
                (_, None) => "new".to_owned(),
            };
            writeln!(out, "change   {moved}{}", if poll.recloned { " (corrupt cache re-cloned)" } else { "" })?;
            writeln!(out, "bundles  {} under {}", bundles.len(), git.path)?;
            for b in &bundles {
                writeln!(out, "  {:<40} {}", b.dir, kind(b.marker))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kind(marker: Marker) -> &'static str {
    match marker {
        Marker::Fleet => "fleet",
        Marker::Chart => "helm",
        Marker::Kustomization => "kustomize",
        Marker::Raw => "raw",
    }
}
