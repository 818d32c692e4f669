//! `agent status [--explain BUNDLE]`: from the running agent's `/status` (with its sources), or
//! from the records when it is down; exit 4 when a bundle needs a person.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::local::{http_client, local_url};
use super::{EXIT_CRITICAL, Output, runtime};
use crate::cluster::Cluster;
use crate::state::StateStore;

/// The running agent's `/status`, if it is ours and answers.
async fn from_agent(
    config: &shared::config::AgentConfig,
    explain: Option<&str>,
) -> Option<(serde_json::Value, String)> {
    let base = local_url(&config.server.listen)?;
    let client = http_client().ok()?;
    let get = |output: &'static str| {
        let mut url = url::Url::parse(&format!("{base}/status")).expect("a URL from an address");
        url.query_pairs_mut().append_pair("output", output);
        if let Some(b) = explain {
            url.query_pairs_mut().append_pair("explain", b);
        }
        client.get(url).send()
    };
    let text = get("json").await.ok()?.error_for_status().ok()?.text().await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json["agent"]["agentId"] != config.identity.agent_id.as_str() {
        return None;
    }
    let human = get("human").await.ok()?.text().await.ok()?;
    Some((json, human))
}

/// `agent status [--explain BUNDLE]`, from the records (the cluster's state Secrets and the
/// node's files; the newer copy wins). With the API server unreachable, the node's files alone,
/// said so.
pub fn run(config_path: &Path, explain: Option<&str>, output: Output, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (loaded, base) = crate::config::load(config_path)?;
    let config = loaded.config;
    if let Some((json, human)) = runtime()?.block_on(from_agent(&config, explain)) {
        match output {
            Output::Json => writeln!(out, "{json}")?,
            Output::Human => write!(out, "{human}")?,
        }
        let needs_person = json["bundles"]
            .as_array()
            .is_some_and(|b| b.iter().any(|s| matches!(s["state"].as_str(), Some("failed" | "rollback-failed"))));
        return Ok(if needs_person { ExitCode::from(EXIT_CRITICAL) } else { ExitCode::SUCCESS });
    }
    let (records, warning) = runtime()?.block_on(async {
        let (client, warning) = match Cluster::connect(&config.kube, &base).await {
            Ok(c) => (Some(c.client().clone()), None),
            Err(e) => (None, Some(format!("{e}; showing this node's local records only"))),
        };
        let store =
            StateStore::new(&base.join(&config.state_dir), &config.identity.agent_id, &config.kube.namespace, client);
        anyhow::Ok((store.all().await?, warning))
    })?;
    let now = crate::watch::unix_now();
    let mut statuses: Vec<shared::status::BundleStatus> =
        records.iter().map(|r| shared::status::bundle_status(r, now)).collect();
    if let Some(name) = explain {
        let name = name.trim_matches('/');
        statuses.retain(|s| s.bundle == name);
        if statuses.is_empty() {
            anyhow::bail!("no record of bundle {name}: this agent identity never rolled it out");
        }
    }
    match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::json!({"agent": null, "sources": [], "bundles": statuses, "warning": warning})
        )?,
        Output::Human => {
            if let Some(w) = &warning {
                writeln!(out, "warning: {w}")?;
            }
            match explain {
                Some(_) => write!(out, "{}", shared::status::explain(&statuses[0], now))?,
                None => write!(out, "{}", shared::status::table(&statuses, now))?,
            }
        }
    }
    let needs_person = statuses.iter().any(|s| matches!(s.state, "failed" | "rollback-failed"));
    Ok(if needs_person { ExitCode::from(EXIT_CRITICAL) } else { ExitCode::SUCCESS })
}
