//! One reconcile cycle, as both `agent reconcile --once` and the daemon (`agent run`) run it:
//! unfinished work from the records first, then sources, render, plan, apply, watch, verify or
//! roll back, bundle by bundle in `dependsOn` order.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::Instrument;

use shared::outcome::Outcome;
use shared::removal::Listing;
use shared::rollout::Limits;

use crate::cluster::Cluster;
use crate::reconcile::{BundleResult, Driver};
use crate::session::Session;
use crate::source::git::GitError;
use crate::source::registry::RegistryStats;
use crate::state::StateStore;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dry_run: bool,
    pub source: Option<String>,
    pub commit: Option<String>,
    /// Work a previous run left unfinished, finished first.
    pub resumed: Vec<BundleResult>,
    pub bundles: Vec<BundleResult>,
    /// Why the cycle stopped before the bundles (git or cluster unreachable).
    pub error: Option<String>,
    /// Per bundle, the images Git wants (as resolved and pinned; as written for a bundle its
    /// preflight blocked), for the daemon's status and the webhooks it answers.
    #[serde(skip)]
    pub desired_images: BTreeMap<String, Vec<String>>,
    /// Per registry host: its requests of this cycle by (kind, outcome), and its last error.
    #[serde(skip)]
    pub registries: Vec<RegistryStats>,
}

/// Which bundles a cycle listed: one asked for, or all (then those that left Git are removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    One,
    All,
    /// `git.path` is not in the commit at all.
    FolderMissing,
}

/// Whether listing the bundles failed because the configured folder is not in the commit.
fn folder_missing(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<GitError>(), Some(GitError::NotFound { .. }))
}

/// What a cycle needs besides the sources: the config, the cluster and the records.
#[derive(Clone)]
pub struct Setup {
    pub config: shared::config::AgentConfig,
    /// The folder relative paths of the config are relative to.
    pub base: PathBuf,
    pub cluster: Cluster,
    pub store: StateStore,
    pub defaults: Limits,
    /// `rollout.drainWindow` in seconds.
    pub drain_window: i64,
    /// `--ignore-windows` (one emergency `reconcile --once`).
    pub ignore_windows: bool,
}

impl Setup {
    /// From a loaded config and a connected cluster.
    pub fn new(config: shared::config::AgentConfig, base: &Path, cluster: Cluster) -> Setup {
        let store = StateStore::new(
            &base.join(&config.state_dir),
            &config.identity.agent_id,
            &config.kube.namespace,
            Some(cluster.client().clone()),
        );
        let defaults = Limits {
            progress_deadline: config.rollout.progress_deadline.secs(),
            verify_window: config.rollout.verify_window.secs(),
            probes: Vec::new(),
            drains: Vec::new(),
        };
        let drain_window = config.rollout.drain_window.secs();
        Setup { config, base: base.to_owned(), cluster, store, defaults, drain_window, ignore_windows: false }
    }

    pub fn driver<'a>(&'a self, dry_run: bool, progress: &'a (dyn Fn(&str, &str) + Sync)) -> Driver<'a> {
        Driver {
            cluster: &self.cluster,
            store: &self.store,
            agent_id: &self.config.identity.agent_id,
            defaults: self.defaults.clone(),
            drain_window: self.drain_window,
            dry_run,
            windows: &self.config.rollout.windows,
            ignore_windows: self.ignore_windows,
            progress,
        }
    }
}

/// One cycle. `session` (the git poll and what comes with it) is awaited only after unfinished
/// work is finished, so a broken source never holds up a rollback.
pub async fn run(
    s: &Setup,
    progress: &(dyn Fn(&str, &str) + Sync),
    session: impl Future<Output = anyhow::Result<Session>>,
    only: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Report> {
    let driver = s.driver(dry_run, progress);
    let mut report = Report {
        dry_run,
        source: None,
        commit: None,
        resumed: Vec::new(),
        bundles: Vec::new(),
        error: None,
        desired_images: BTreeMap::new(),
        registries: Vec::new(),
    };
    report.resumed = driver.resume().await?;
    let session = match session.await {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return Ok(report);
        }
    };
    report.source = Some(session.shown_url.clone());
    report.commit = Some(session.poll.commit.id.clone());
    let (bundles, listing) = match only {
        Some(name) => (vec![session.bundle(name).await?], Listed::One),
        None => match session.bundles().await {
            Ok(b) => (b, Listed::All),
            Err(e) if folder_missing(&e) => (Vec::new(), Listed::FolderMissing),
            Err(e) => return Err(e),
        },
    };
    let namespaced = session.namespaced();
    let build = session.build(&namespaced, true);
    let mut built = Vec::new();
    for b in &bundles {
        let d = build.bundle(b).await;
        // The images a bundle wants count whether or not it is blocked: a preflight-blocked
        // bundle waits for a push of exactly these (`shared::webhook::known_repositories`).
        let mut images: Vec<String> = match &d {
            Ok(d) => d.images.iter().map(|i| i.running.clone()).collect(),
            Err(e) => e.wanted.clone(),
        };
        images.sort();
        images.dedup();
        if d.is_ok() || !images.is_empty() {
            report.desired_images.insert(b.dir.clone(), images);
        }
        built.push(d);
    }
    let deps: Vec<(String, Vec<String>)> = bundles
        .iter()
        .zip(&built)
        .map(|(b, d)| (b.dir.clone(), d.as_ref().map(|d| d.spec.depends_on.clone()).unwrap_or_default()))
        .collect();
    let (order, depends_on) = match shared::desired::bundle_order(&deps) {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(e);
            return Ok(report);
        }
    };
    let mut done: BTreeMap<String, Outcome> = BTreeMap::new();
    for i in order {
        let name = bundles[i].dir.clone();
        let failed_dep = depends_on[i].iter().find_map(|&d| {
            let r = done.get(&bundles[d].dir)?;
            (!r.satisfies_dependents()).then(|| format!("{} ({r:?})", bundles[d].dir))
        });
        let result = match (&built[i], failed_dep) {
            (Err(e), _) => {
                BundleResult::new(&name, Outcome::Blocked, format!("{} failed: {}", e.stage, e.reasons.join("; ")))
            }
            (Ok(_), Some(dep)) if !dry_run => {
                BundleResult::new(&name, Outcome::Blocked, format!("waiting for the bundle it depends on: {dep}"))
            }
            (Ok(desired), _) => {
                let commit = &session.poll.commit.id;
                let span = tracing::info_span!("bundle", bundle = %name, revision = %&commit[..12.min(commit.len())]);
                driver.bundle(desired, commit).instrument(span).await
            }
        };
        done.insert(name, result.result);
        report.bundles.push(result);
    }
    if listing != Listed::One {
        let mut still_desired = BTreeSet::new();
        for d in built.iter().flatten() {
            still_desired.extend(d.manifests.iter().map(shared::render::Manifest::id));
        }
        let names: BTreeSet<String> = bundles.iter().map(|b| b.dir.clone()).collect();
        let listing = match listing {
            Listed::FolderMissing => Listing::FolderMissing,
            _ => Listing::Found(&names),
        };
        // Records that cannot be read decide nothing: the next cycle looks again.
        let records = match s.store.all().await {
            Ok(r) => r,
            Err(e) => {
                progress("", &format!("bundles that left Git: not looked for this cycle, reading the records: {e:#}"));
                Vec::new()
            }
        };
        // A bundle back in Git that did not get as far as the driver (a render error, a
        // dependency) is no longer removed either.
        let mut records = records;
        for r in records.iter_mut().filter(|r| r.removal.is_some() && names.contains(&r.bundle)) {
            match driver.back_in_git(r.clone()).await {
                Ok(back) => *r = back,
                // Its own result is already in the report; the next cycle tries again.
                Err(interrupted) => progress(&interrupted.bundle, &interrupted.message),
            }
        }
        let commit = &session.poll.commit.id;
        let decisions = shared::removal::decide(&records, listing, &still_desired, &s.config.prune, &s.config.git.path);
        for decision in decisions {
            let Some(record) = records.iter().find(|r| r.bundle == decision.bundle()) else { continue };
            let span =
                tracing::info_span!("bundle", bundle = %record.bundle, revision = %&commit[..12.min(commit.len())]);
            report.bundles.push(driver.removal(record, decision, commit).instrument(span).await);
        }
    }
    report.registries = session.registries.stats();
    // Report in the repository's order, not the apply order; bundles that left Git last.
    report.bundles.sort_by_key(|b| bundles.iter().position(|x| x.dir == b.bundle).unwrap_or(usize::MAX));
    Ok(report)
}
