//! `agent policy test`: which tag a policy chooses from a list, and why each other tag lost.

use std::io::Write;
use std::process::ExitCode;

use std::path::Path;

use crate::source::registry::Registries;
use anyhow::Context;
use shared::image::ImageRef;
use shared::policy::{Outcome, TagPolicy};

use super::Output;

/// Exit code when no tag satisfies the policy.
const EXIT_NO_MATCH: u8 = 1;

pub fn test(spec: &str, tags: &[String], output: Output, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    // A bad policy is an error (exit 2, on stderr), not "no match".
    let policy = TagPolicy::parse(spec)?;
    report(&policy, tags, None, output, out)
}

/// The IMAGE form: tags come from the registry (only when the policy needs a list), and the
/// chosen tag is resolved to its digest.
pub fn test_image(
    spec: &str,
    image: &str,
    config: Option<&Path>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let policy = TagPolicy::parse(spec)?;
    let image = ImageRef::parse(image)?;
    let config_path = config.context("IMAGE needs --config (the registry's address, CA and credentials)")?;
    let (loaded, base) = crate::config::load(config_path)?;
    let registries = Registries::from_config(&loaded.config.registries, &base)?;
    let reg = registries.for_image(&image).with_context(|| config_path.display().to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let tags = match policy.tracked_tag() {
            Some(tag) => vec![tag.to_owned()],
            None => reg.list_tags(&image.repository).await?,
        };
        let sel = policy.select(tags.iter().map(String::as_str));
        let digest = match &sel.chosen {
            Some(tag) => {
                let pinned = ImageRef { tag: Some(tag.clone()), digest: None, ..image.clone() };
                Some(reg.resolve(&pinned).await?)
            }
            None => None,
        };
        report(&policy, &tags, digest.as_deref(), output, out)
    })
}

fn report(
    policy: &TagPolicy,
    tags: &[String],
    digest: Option<&str>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let sel = policy.select(tags.iter().map(String::as_str));
    match output {
        Output::Json => {
            let candidates: Vec<_> = sel
                .candidates
                .iter()
                .map(|c| match &c.outcome {
                    Outcome::Chosen => serde_json::json!({"tag": c.tag, "outcome": "chosen"}),
                    Outcome::Eligible => serde_json::json!({"tag": c.tag, "outcome": "eligible"}),
                    Outcome::Dropped(r) => {
                        serde_json::json!({"tag": c.tag, "outcome": "dropped", "reason": r.reason(), "message": r.to_string()})
                    }
                })
                .collect();
            let doc = serde_json::json!({"chosen": sel.chosen, "digest": digest, "candidates": candidates});
            writeln!(out, "{doc}")?;
        }
        Output::Human => {
            match &sel.chosen {
                Some(tag) => match digest {
                    Some(d) => writeln!(out, "chosen: {tag} ({d})")?,
                    None => writeln!(out, "chosen: {tag}")?,
                },
                None => writeln!(out, "no tag satisfies the policy ({} considered)", sel.candidates.len())?,
            }
            let width = sel.candidates.iter().map(|c| c.tag.len()).max().unwrap_or(0);
            for c in &sel.candidates {
                let what = match &c.outcome {
                    Outcome::Chosen => "chosen".to_owned(),
                    Outcome::Eligible => "eligible, ranks lower".to_owned(),
                    Outcome::Dropped(r) => format!("dropped: {r}"),
                };
                writeln!(out, "  {:<width$}  {what}", c.tag)?;
            }
        }
    }
    Ok(if sel.chosen.is_some() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NO_MATCH) })
}
