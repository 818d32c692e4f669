//! `agent pause BUNDLE` and `agent resume BUNDLE`: a new version of the bundle's record, and on
//! resume a nudge to the agent running on this node.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::local::{http_client, local_url};
use super::{runtime, setup};

/// `agent pause BUNDLE` (with a reason) and `agent resume BUNDLE` (without): a new version of
/// the bundle's record; on resume the running agent on this node is asked to reconcile it now.
pub fn run(config: &Path, bundle: &str, reason: Option<&str>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let bundle = bundle.trim_matches('/');
    let (loaded, _) = crate::config::load(config)?;
    let listen = loaded.config.server.listen.clone();
    let said = runtime()?.block_on(async {
        let s = setup(config).await?;
        let record = s.store.load(bundle).await?;
        let known = record.is_some();
        let record = record.unwrap_or_else(|| shared::state::Record::new(bundle));
        if record.phase != shared::state::Phase::Idle && reason.is_some() {
            writeln!(
                out,
                "note: {bundle} is {} now; that finishes first (stopping half-way is never safer)",
                record.phase.name()
            )?;
        }
        let next = match reason {
            Some(r) => record.pause(r, crate::watch::unix_now()),
            None if record.paused.is_none() => {
                anyhow::bail!("{bundle} is not paused")
            }
            None => record.resume(),
        };
        s.store.save(&next).await?;
        let mut said = match reason {
            Some(_) if known => format!("paused {bundle}: no rollout starts until `agent resume {bundle}`"),
            Some(_) => {
                format!("paused {bundle} before its first rollout: nothing starts until `agent resume {bundle}`")
            }
            None => format!("resumed {bundle}"),
        };
        if reason.is_none() {
            said.push_str(&match nudge(&listen, bundle).await {
                Ok(()) => "; the running agent reconciles it now".to_owned(),
                Err(e) => format!("; the agent rolls it out at its next poll (no running agent answered: {e})"),
            });
        }
        anyhow::Ok(said)
    })?;
    writeln!(out, "{said}")?;
    Ok(ExitCode::SUCCESS)
}

async fn nudge(listen: &str, bundle: &str) -> anyhow::Result<()> {
    let base = local_url(listen).context("server.listen is not an address")?;
    let mut url = url::Url::parse(&format!("{base}/reconcile"))?;
    url.query_pairs_mut().append_pair("bundle", bundle).append_pair("why", "agent resume");
    let resp = http_client()?.post(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
    Ok(())
}
