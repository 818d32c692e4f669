//! `agent diff [BUNDLE]`: what applying would change, object by object, from the API server's own
//! dry-run of our server-side apply against the live objects.
//!
//! Exit codes: 0 in sync, 1 differences, 2 error before any bundle could be looked at (config,
//! git, cluster), 3 at least one bundle could not be planned (render error, preflight); the other
//! bundles are still shown.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use shared::plan::{Action, ObjectPlan, Summary};

use super::Output;
use crate::desired::{BundleError, ImageChoice, Stage};
use crate::session::{ClusterUse, Session};

pub const EXIT_DIFFERENCES: u8 = 1;
pub const EXIT_BUNDLE_FAILED: u8 = 3;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleDiff {
    pub bundle: String,
    pub target: Option<String>,
    pub warnings: Vec<String>,
    pub images: Vec<ImageChoice>,
    pub summary: Summary,
    pub objects: Vec<ObjectPlan>,
    /// How each drained workload will be replaced (surge, or one pod at a time when the node has
    /// no room), and what the agent writes for it.
    pub drains: Vec<shared::drain::Plan>,
    pub error: Option<BundleError>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub source: String,
    pub commit: String,
    pub in_sync: bool,
    pub bundles: Vec<BundleDiff>,
}

pub struct Args<'a> {
    pub config: &'a Path,
    pub bundle: Option<&'a str>,
    pub output: Output,
    pub color: bool,
}

pub fn run(args: Args<'_>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(report(args.config, args.bundle))?;
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Output::Human => human(&report, args.color, out)?,
    }
    Ok(if report.bundles.iter().any(|b| b.error.is_some()) {
        ExitCode::from(EXIT_BUNDLE_FAILED)
    } else if report.in_sync {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENCES)
    })
}

/// Plans every bundle (or the named one) against the cluster.
pub async fn report(config: &Path, only: Option<&str>) -> anyhow::Result<Report> {
    let session = Session::open(config, ClusterUse::Required, None).await?;
    let bundles = match only {
        Some(name) => vec![session.bundle(name).await?],
        None => session.bundles().await?,
    };
    let cluster = session.cluster.as_ref().expect("ClusterUse::Required connects");
    let namespaced = session.namespaced();
    let build = session.build(&namespaced, true);
    let mut out = Vec::new();
    // The records say what each bundle applied: what left Git since is pruned from that.
    let (_, base) = crate::config::load(config)?;
    let store = crate::state::StateStore::new(
        &base.join(&session.config.state_dir),
        &session.config.identity.agent_id,
        &session.config.kube.namespace,
        Some(cluster.client().clone()),
    );
    let node_drain = session.config.rollout.drain_window.secs();
    for b in &bundles {
        let mut d = BundleDiff {
            bundle: b.dir.clone(),
            target: None,
            warnings: Vec::new(),
            images: Vec::new(),
            summary: Summary::default(),
            objects: Vec::new(),
            drains: Vec::new(),
            error: None,
        };
        match build.bundle(b).await {
            Err(e) => d.error = Some(e),
            Ok(mut desired) => {
                let policy = desired.spec.policy.clone();
                match crate::drain::for_bundle(cluster, &policy, node_drain, &mut desired.manifests).await {
                    Ok(plans) => d.drains = plans,
                    Err(e) => {
                        d.error = Some(BundleError {
                            bundle: b.dir.clone(),
                            stage: Stage::Render,
                            reasons: vec![e],
                            wanted: Vec::new(),
                            fault: None,
                        });
                        out.push(d);
                        continue;
                    }
                }
                d.target = desired.spec.target.clone();
                d.warnings = desired.warnings.clone();
                d.images = desired.images.clone();
                let plan_err = |e: crate::cluster::ClusterError| BundleError {
                    bundle: b.dir.clone(),
                    stage: Stage::Plan,
                    reasons: vec![e.to_string()],
                    wanted: Vec::new(),
                    fault: None,
                };
                let record = match store.load(&b.dir).await {
                    Ok(r) => r.unwrap_or_else(|| shared::state::Record::new(&b.dir)),
                    Err(e) => {
                        d.error = Some(BundleError {
                            bundle: b.dir.clone(),
                            stage: Stage::Plan,
                            reasons: vec![format!("reading the record: {e:#}")],
                            wanted: Vec::new(),
                            fault: None,
                        });
                        out.push(d);
                        continue;
                    }
                };
                match crate::reconcile::plan_objects(
                    cluster,
                    &desired.manifests,
                    &record,
                    &session.node.agent_id,
                    &b.dir,
                )
                .await
                {
                    Ok(objects) => {
                        d.summary = Summary::of(&objects);
                        d.objects = objects;
                    }
                    Err(e) => d.error = Some(plan_err(e)),
                }
            }
        }
        out.push(d);
    }
    let in_sync = out.iter().all(|b| b.error.is_none() && b.summary.in_sync());
    Ok(Report { source: session.shown_url.clone(), commit: session.poll.commit.id.clone(), in_sync, bundles: out })
}

/// Whether to colour human output: on a terminal, unless `NO_COLOR` is set to anything non-empty.
pub fn use_color(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.0 { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }
}

/// `repo:tag@sha256:0123456789ab…` — a digest shortened for people (JSON keeps it whole).
fn short_image(image: &str) -> String {
    match image.split_once("@sha256:") {
        Some((name, hex)) if hex.len() > 12 => format!("{name}@sha256:{}", &hex[..12]),
        _ => image.to_owned(),
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) if !s.contains('\n') => format!("{s:?}"),
        Some(Value::String(s)) => format!("{:?}", s.lines().next().unwrap_or_default().to_owned() + " …"),
        Some(other) => {
            let s = other.to_string();
            if s.len() > 80 { format!("{}…", &s[..s.char_indices().nth(79).map_or(s.len(), |(i, _)| i)]) } else { s }
        }
    }
}

fn human(report: &Report, color: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let p = Paint(color);
    writeln!(out, "source {} at {}", report.source, &report.commit[..12.min(report.commit.len())])?;
    for b in &report.bundles {
        writeln!(out)?;
        if let Some(e) = &b.error {
            writeln!(
                out,
                "{} {}",
                p.wrap("1", &format!("bundle {}", b.bundle)),
                p.wrap("31", &format!("{} failed:", e.stage))
            )?;
            for r in &e.reasons {
                writeln!(out, "  {r}")?;
            }
            continue;
        }
        let s = b.summary;
        let state = if s.in_sync() { p.wrap("32", "in sync") } else { p.wrap("33", "differs") };
        writeln!(
            out,
            "{} ({}) {state}: {} to create, {} to update, {} to prune, {} unchanged{}",
            p.wrap("1", &format!("bundle {}", b.bundle)),
            b.target.as_deref().map_or("no target matches".to_owned(), |t| format!("target {t}")),
            s.create,
            s.update,
            s.prune,
            s.unchanged,
            if s.refused > 0 { format!(", {} refused", s.refused) } else { String::new() },
        )?;
        for w in &b.warnings {
            writeln!(out, "  {} {w}", p.wrap("33", "warning:"))?;
        }
        for plan in &b.drains {
            writeln!(out, "  drain {}", shared::drain::describe(plan))?;
        }
        for o in b.objects.iter().filter(|o| o.action != Action::Unchanged) {
            let (mark, code) = match o.action {
                Action::Create => ("+", "32"),
                Action::Update => ("~", "33"),
                Action::Prune => ("-", "31"),
                Action::Refused | Action::Unchanged => ("!", "31"),
            };
            let from = if o.source.is_empty() { String::new() } else { format!("  ({})", o.source) };
            writeln!(out, "  {} {}{from}", p.wrap(code, mark), p.wrap(code, &o.id))?;
            if let Some(n) = &o.note {
                writeln!(out, "      {n}")?;
            }
            for i in &o.images {
                let which = if i.init { "initContainer" } else { "container" };
                let arrow = match (&i.from, &i.to) {
                    (Some(f), Some(t)) => format!("{} -> {}", short_image(f), short_image(t)),
                    (None, Some(t)) => short_image(t),
                    (Some(f), None) => format!("{} (removed)", short_image(f)),
                    (None, None) => String::new(),
                };
                writeln!(out, "      image {which} {}: {arrow}", i.container)?;
            }
            for c in &o.changes {
                writeln!(out, "      {}: {} -> {}", c.path, p.wrap("31", &show(&c.from)), p.wrap("32", &show(&c.to)))?;
            }
        }
    }
    writeln!(out)?;
    let failed = report.bundles.iter().filter(|b| b.error.is_some()).count();
    let differ = report.bundles.iter().filter(|b| b.error.is_none() && !b.summary.in_sync()).count();
    let n = report.bundles.len();
    writeln!(
        out,
        "{n} {}: {} in sync, {differ} differ, {failed} failed",
        if n == 1 { "bundle" } else { "bundles" },
        n - differ - failed
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some("")));
        assert!(!use_color(true, Some("1")));
        assert!(!use_color(false, None));
    }

    #[test]
    fn digests_are_shortened_for_people() {
        let d = "r.example/a:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(short_image(d), "r.example/a:1.0@sha256:0123456789ab");
        assert_eq!(short_image("r.example/a:1.0"), "r.example/a:1.0");
    }
}
