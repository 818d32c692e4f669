//! `agent render BUNDLE`: the objects the agent would apply for a node identity, as YAML (with
//! `# Source:` and warnings as comments) or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::Output;
use crate::session::{ClusterUse, Session};

pub struct Args<'a> {
    pub config: &'a Path,
    pub bundle: &'a str,
    pub labels: Option<&'a str>,
    pub kube_version: Option<&'a str>,
    pub no_resolve: bool,
    pub output: Output,
}

pub fn run(args: Args<'_>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let labels = args.labels.map(parse_labels).transpose()?;
        let cluster = match args.kube_version {
            Some(v) => ClusterUse::Offline(v),
            None => ClusterUse::Required,
        };
        let session = Session::open(args.config, cluster, labels).await?;
        let bundle = session.bundle(args.bundle).await?;
        let namespaced = session.namespaced();
        let build = session.build(&namespaced, !args.no_resolve);
        let desired = build.bundle(&bundle).await?;
        match args.output {
            Output::Json => {
                let doc = serde_json::json!({
                    "bundle": desired.name,
                    "commit": session.poll.commit.id,
                    "labels": session.node.labels,
                    "target": desired.spec.target,
                    "render": desired.spec.render,
                    "warnings": desired.warnings,
                    "images": desired.images,
                    "objects": desired.manifests.iter().map(|m| serde_json::json!({"source": m.source, "object": m.object})).collect::<Vec<_>>(),
                });
                writeln!(out, "{doc}")?;
            }
            Output::Human => {
                let labels: Vec<String> = session.node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(out, "# bundle {} at {} for labels {{{}}}", desired.name, session.poll.commit.id, labels.join(","))?;
                writeln!(out, "# target {}", desired.spec.target.as_deref().unwrap_or("(none matches)"))?;
                for w in &desired.warnings {
                    writeln!(out, "# warning: {w}")?;
                }
                for m in &desired.manifests {
                    writeln!(out, "---\n# Source: {}", m.source)?;
                    let yaml = serde_saphyr::to_string_with_options(&m.object, yaml_options())?;
                    write!(out, "{yaml}")?;
                    if !yaml.ends_with('\n') {
                        writeln!(out)?;
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Long single-line strings (pinned image references) stay on one line, as kubectl prints them.
fn yaml_options() -> serde_saphyr::SerializerOptions {
    let mut o = serde_saphyr::SerializerOptions::default();
    o.folded_wrap_chars = 4096;
    o
}

/// `k=v,k2=v2` as given to `--labels`.
fn parse_labels(raw: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').with_context(|| format!("--labels: {pair:?} is not key=value"))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}
