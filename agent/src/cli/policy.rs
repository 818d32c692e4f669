//! `agent policy test`: which tag a policy chooses from a list, and why each other tag lost.

use std::io::Write;
use std::process::ExitCode;

use shared::policy::{Outcome, TagPolicy};

use super::Output;

/// Exit code when no tag satisfies the policy.
const EXIT_NO_MATCH: u8 = 1;

pub fn test(spec: &str, tags: &[String], output: Output, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    // A bad policy is an error (exit 2, on stderr), not "no match".
    let policy = TagPolicy::parse(spec)?;
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
            writeln!(out, "{}", serde_json::json!({"chosen": sel.chosen, "candidates": candidates}))?;
        }
        Output::Human => {
            match &sel.chosen {
                Some(tag) => writeln!(out, "chosen: {tag}")?,
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
