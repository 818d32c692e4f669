//! One reconcile cycle, as both `agent reconcile --once` and the daemon (`agent run`) run it:
//! unfinished work from the records first, then sources, render, plan, apply, watch, verify or
//! roll back, a few bundles at once, each once the bundles it depends on (`dependsOn`) are done.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use tracing::Instrument;

use shared::desired::ImageRequest;
use shared::outcome::Outcome;
use shared::removal::Listing;
use shared::replan::{Decision, LastPlan, PlanKey, Replan};
use shared::rollout::Limits;

use crate::cluster::Cluster;
use crate::desired::{BundleError, DesiredBundle};
use crate::reconcile::{BundleResult, Driver};
use crate::session::Session;
use crate::source::git::GitError;
use crate::source::registry::RegistryStats;
use crate::state::StateStore;
use crate::watch::unix_now;

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
    /// Per bundle, the cosign keys that verified each of its images (status `--explain`).
    #[serde(skip)]
    pub verified_images: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// `git.verify`: who signed the tip commit (`commit 1a2b3c signed by ci@... (ssh key ...)`),
    /// or why it is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_signature: Option<String>,
    /// Per registry host: its requests of this cycle by (kind, outcome), and its last error.
    #[serde(skip)]
    pub registries: Vec<RegistryStats>,
    /// Per bundle: when it was last rendered and planned in full (now, or the kept plan's time
    /// for a bundle a no-change poll skipped).
    #[serde(skip)]
    pub planned_at: BTreeMap<String, shared::k8s::Time>,
}

/// A bundle's last plan that found it in sync, with what a poll needs to go on without
/// rendering it: its dependencies, its objects' ids (removals), its images.
#[derive(Debug, Clone)]
pub struct Kept {
    last: LastPlan,
    requests: Vec<ImageRequest>,
    depends_on: Vec<String>,
    objects: Vec<String>,
    images: Vec<String>,
    /// Per running image, the cosign keys that verified it when it was planned in full.
    verified: BTreeMap<String, Vec<String>>,
}

/// A bundle of this cycle: built (rendered, images resolved), or its kept plan still holding.
// One per bundle for one cycle; the rendered objects are on the heap either way.
#[allow(clippy::large_enum_variant)]
enum Built {
    Full(Result<DesiredBundle, BundleError>),
    Unchanged(Kept),
}

/// What the session knows of the node and the agent, for plan keys.
fn key_context(session: &Session) -> shared::replan::Context {
    shared::replan::Context {
        agent_id: session.node.agent_id.clone(),
        labels: session.node.labels.clone(),
        kube_version: session.caps.kube_version.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Keeps a fully planned bundle's plan when it found nothing to do (`shared::replan::keeps`);
/// forgets it otherwise, so the next poll plans it in full.
fn keep(s: &Setup, session: &Session, desired: &DesiredBundle, outcome: Outcome, now: shared::k8s::Time) {
    let mut kept = s.kept.lock().expect("kept plans lock");
    let pairs: Vec<_> = desired.resolved.iter().map(|(q, r)| (q, r)).collect();
    match PlanKey::of(Some(&desired.content), &pairs, &key_context(session))
        .ok()
        .filter(|_| shared::replan::keeps(outcome))
    {
        Some(key) => {
            let mut images: Vec<String> = desired.images.iter().map(|i| i.running.clone()).collect();
            images.sort();
            images.dedup();
            kept.insert(
                desired.name.clone(),
                Kept {
                    last: LastPlan { key, at: now },
                    requests: desired.resolved.iter().map(|(q, _)| q.clone()).collect(),
                    depends_on: desired.spec.depends_on.clone(),
                    objects: desired.manifests.iter().map(shared::render::Manifest::id).collect(),
                    images,
                    verified: desired.verified_images(),
                },
            );
        }
        None => {
            kept.remove(&desired.name);
        }
    }
}

/// How many bundles are rendered at once: a renderer is a process (helm: tens of MiB and a core
/// while it runs), and a store node's CPU belongs to its kiosk services.
const RENDERS_AT_ONCE: usize = 4;
/// How many bundles are prepared at once (a kept plan checked: its images asked again, each
/// registry bounding its own requests; or a render, bounded by [`RENDERS_AT_ONCE`]).
const PREPARES_AT_ONCE: usize = 16;
/// How many bundles are planned, applied and watched at once: independent bundles roll out side
/// by side (a first sync of many is bounded by the slowest, not their sum). Most of a rollout
/// is waiting for pods to become ready, which costs the agent nothing; the API server sees a
/// dry run and an apply per object of each.
const ROLLOUTS_AT_ONCE: usize = 16;

/// Each registry's requests made after `before` was taken (counters only grow).
fn since(now: Vec<RegistryStats>, before: &[RegistryStats]) -> Vec<RegistryStats> {
    now.into_iter()
        .map(|mut r| {
            let was = before.iter().find(|b| b.host == r.host);
            r.requests = r
                .requests
                .into_iter()
                .map(|(kind, outcome, n)| {
                    let old = was
                        .and_then(|b| b.requests.iter().find(|(k, o, _)| *k == kind && *o == outcome))
                        .map_or(0, |b| b.2);
                    (kind, outcome, n.saturating_sub(old))
                })
                .filter(|(_, _, n)| *n > 0)
                .collect();
            r
        })
        .collect()
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
    /// Each bundle's last plan that found it in sync (the daemon's cycles share them).
    /// Shared by the copies a `reconcile --once` through the agent makes of the daemon's set-up.
    pub kept: std::sync::Arc<Mutex<BTreeMap<String, Kept>>>,
    /// Health reports of waves (`waves` in the node config), kept across the daemon's cycles.
    pub reports: Option<std::sync::Arc<crate::source::reports::Reports>>,
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
        let reports = config.waves.as_ref().map(|w| std::sync::Arc::new(crate::source::reports::Reports::new(w)));
        Setup {
            config,
            base: base.to_owned(),
            cluster,
            store,
            defaults,
            drain_window,
            ignore_windows: false,
            kept: std::sync::Arc::new(Mutex::new(BTreeMap::new())),
            reports,
        }
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
            waves: None,
            prepull: self.config.prepull.as_ref().filter(|p| p.enabled),
            node_name: &self.config.identity.node_name,
            surge_room: None,
        }
    }
}

/// One cycle. `session` (the git poll and what comes with it) is awaited only after unfinished
/// work is finished, so a broken source never holds up a rollback. With `Replan::IfChanged`, a
/// bundle whose kept plan still holds (`shared::replan::decide`) is neither rendered nor planned.
pub async fn run(
    s: &Setup,
    progress: &(dyn Fn(&str, &str) + Sync),
    session: impl Future<Output = anyhow::Result<Session>>,
    only: Option<&str>,
    dry_run: bool,
    replan: Replan,
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
        verified_images: BTreeMap::new(),
        commit_signature: None,
        registries: Vec::new(),
        planned_at: BTreeMap::new(),
    };
    report.resumed = driver.resume().await?;
    let session = match session.await {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return Ok(report);
        }
    };
    // The registries may outlive the cycle (the daemon keeps them): report this cycle's requests.
    let registries_before = session.registries.stats();
    report.source = Some(session.shown_url.clone());
    report.commit = Some(session.poll.commit.id.clone());
    if let Some(spec) = &s.config.git.verify {
        // Before any bundle is read: nothing of an unverified commit is used, what runs is kept.
        let (git, commit, spec, base) =
            (session.checkout.git.clone(), session.poll.commit.id.clone(), spec.clone(), s.base.clone());
        match tokio::task::spawn_blocking(move || git.verify_commit(&commit, &spec, &base)).await {
            Ok(Ok(line)) => report.commit_signature = Some(line),
            Ok(Err(why)) => {
                report.error = Some(format!("{why}: nothing of it is applied, what runs is kept"));
                report.commit_signature = Some(why);
                return Ok(report);
            }
            Err(e) => {
                report.error = Some(format!("verifying the commit's signature: {e}"));
                return Ok(report);
            }
        }
    }
    let (bundles, listing) = match only {
        Some(name) => (vec![session.bundle(name).await?], Listed::One),
        None => match session.bundles().await {
            Ok(b) => (b, Listed::All),
            Err(e) if folder_missing(&e) => (Vec::new(), Listed::FolderMissing),
            Err(e) => return Err(e),
        },
    };
    let surge_room = tokio::sync::Mutex::new(());
    let driver = crate::reconcile::Driver {
        surge_room: Some(&surge_room),
        waves: s.reports.as_deref().zip(s.config.waves.as_ref()).map(|(reports, config)| crate::reconcile::WavesCtx {
            reports,
            registries: &session.registries,
            config,
            labels: &session.node.labels,
        }),
        ..driver
    };
    let namespaced = session.namespaced();
    let build = session.build(&namespaced, true);
    let now = unix_now();
    let resync = s.config.git.resync_interval.get();
    // What each bundle with a kept plan renders from at this commit, read in one go.
    let with_kept: Vec<String> = if dry_run {
        Vec::new()
    } else {
        let kept = s.kept.lock().expect("kept plans lock");
        bundles.iter().filter(|b| kept.contains_key(&b.dir)).map(|b| b.dir.clone()).collect()
    };
    let contents = session.checkout.content_ids(&with_kept).await;
    // Renders and image resolutions of different bundles do not depend on each other: several at
    // once, results kept in the repository's order.
    let renders = tokio::sync::Semaphore::new(RENDERS_AT_ONCE);
    let prepare = |b: &'_ shared::bundle::Bundle| {
        let (session, build, renders, contents) = (&session, &build, &renders, &contents);
        let dir = b.dir.clone();
        let b = b.clone();
        async move {
            let kept = if dry_run { None } else { s.kept.lock().expect("kept plans lock").get(&dir).cloned() };
            if let Some(kept) = kept {
                // Asked again exactly as the full build would ask: one HEAD per image (tags
                // listed only for a policy that needs them).
                let answers = crate::desired::resolve_again(&session.registries, &kept.requests).await;
                let pairs: Vec<_> = kept.requests.iter().zip(&answers).collect();
                let content = contents.get(&dir).cloned().flatten();
                let key = PlanKey::of(content.as_deref(), &pairs, &key_context(session));
                let decision =
                    shared::replan::decide(Some(&kept.last), key.as_ref().map_err(|u| *u), replan, now, resync);
                match decision {
                    Decision::Unchanged { planned_at } => {
                        let images = Some(kept.images.clone());
                        return (Built::Unchanged(kept), images, planned_at);
                    }
                    Decision::Plan(why) => progress(&dir, &format!("rendering and planning: {}", why.describe())),
                }
            }
            let d = {
                let _slot = renders.acquire().await.expect("the render slots are never closed");
                build.bundle(&b).await
            };
            // The images a bundle wants count whether or not it is blocked: a preflight-blocked
            // bundle waits for a push of exactly these (`shared::webhook::known_repositories`).
            let mut images: Vec<String> = match &d {
                Ok(d) => d.images.iter().map(|i| i.running.clone()).collect(),
                Err(e) => e.wanted.clone(),
            };
            images.sort();
            images.dedup();
            let images = (d.is_ok() || !images.is_empty()).then_some(images);
            (Built::Full(d), images, now)
        }
    };
    let prepared: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffered(
        futures::stream::iter(bundles.iter().map(prepare)),
        PREPARES_AT_ONCE,
    ))
    .await;
    let mut built = Vec::new();
    for (b, (d, images, planned_at)) in bundles.iter().zip(prepared) {
        if let Some(images) = images {
            report.desired_images.insert(b.dir.clone(), images);
        }
        match &d {
            Built::Full(Ok(d)) => {
                report.verified_images.insert(b.dir.clone(), d.verified_images());
            }
            Built::Unchanged(kept) => {
                report.verified_images.insert(b.dir.clone(), kept.verified.clone());
            }
            Built::Full(Err(_)) => {}
        }
        report.planned_at.insert(b.dir.clone(), planned_at);
        built.push(d);
    }
    let deps: Vec<(String, Vec<String>)> = bundles
        .iter()
        .zip(&built)
        .map(|(b, d)| {
            let on = match d {
                Built::Full(d) => d.as_ref().map(|d| d.spec.depends_on.clone()).unwrap_or_default(),
                Built::Unchanged(k) => k.depends_on.clone(),
            };
            (b.dir.clone(), on)
        })
        .collect();
    let (order, depends_on) = match shared::desired::bundle_order(&deps) {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(e);
            return Ok(report);
        }
    };
    // Bundles run concurrently (bounded) once every bundle they depend on has its outcome; in
    // `order` among those ready, so with one slot the order is the sequential one.
    let mut done: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut pending: Vec<usize> = order;
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        let mut k = 0;
        while running.len() < ROLLOUTS_AT_ONCE && k < pending.len() {
            let i = pending[k];
            if !depends_on[i].iter().all(|&d| done.contains_key(&bundles[d].dir)) {
                k += 1;
                continue;
            }
            pending.remove(k);
            let failed_dep = depends_on[i].iter().find_map(|&d| {
                let r = done.get(&bundles[d].dir)?;
                (!r.satisfies_dependents()).then(|| format!("{} ({r:?})", bundles[d].dir))
            });
            let (name, built, session, driver) = (bundles[i].dir.clone(), &built[i], &session, &driver);
            running.push(async move {
                match (built, failed_dep) {
                    (Built::Unchanged(kept), _) => {
                        if !dry_run {
                            driver.refresh_report(&name, now).await;
                        }
                        BundleResult::new(
                            &name,
                            Outcome::InSync,
                            format!(
                                "unchanged since its last full plan {} ago (its content in Git, digests, node and cluster the same)",
                                shared::status::ago(now - kept.last.at)
                            ),
                        )
                    }
                    // The registry did not answer: nothing is wrong with the bundle, and what
                    // runs stays; the next poll tries again by itself.
                    (Built::Full(Err(e)), _) if e.fault.is_some() => BundleResult::new(
                        &name,
                        Outcome::Retrying,
                        format!(
                            "{} failed ({}): {}; the registry is not ready, tried again at the next poll",
                            e.stage,
                            e.fault.map(|f| f.reason()).unwrap_or_default(),
                            e.reasons.join("; ")
                        ),
                    ),
                    (Built::Full(Err(e)), _) => BundleResult::new(
                        &name,
                        Outcome::Blocked,
                        format!("{} failed: {}", e.stage, e.reasons.join("; ")),
                    ),
                    (Built::Full(Ok(_)), Some(dep)) if !dry_run => BundleResult::new(
                        &name,
                        Outcome::Blocked,
                        format!("waiting for the bundle it depends on: {dep}"),
                    ),
                    (Built::Full(Ok(desired)), _) => {
                        let commit = &session.poll.commit.id;
                        let span =
                            tracing::info_span!("bundle", bundle = %name, revision = %&commit[..12.min(commit.len())]);
                        let result = driver.bundle(desired, commit).instrument(span).await;
                        if !dry_run {
                            keep(s, session, desired, result.result, now);
                        }
                        result
                    }
                }
            });
        }
        match futures::StreamExt::next(&mut running).await {
            Some(result) => {
                done.insert(result.bundle.clone(), result.result);
                report.bundles.push(result);
            }
            // Nothing running and nothing ready: all done (`bundle_order` refused cycles).
            None => break,
        }
    }
    if listing != Listed::One {
        let mut still_desired = BTreeSet::new();
        for d in &built {
            match d {
                Built::Full(Ok(d)) => still_desired.extend(d.manifests.iter().map(shared::render::Manifest::id)),
                Built::Unchanged(k) => still_desired.extend(k.objects.iter().cloned()),
                Built::Full(Err(_)) => {}
            }
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
    report.registries = since(session.registries.stats(), &registries_before);
    // Report in the repository's order, not the apply order; bundles that left Git last.
    report.bundles.sort_by_key(|b| bundles.iter().position(|x| x.dir == b.bundle).unwrap_or(usize::MAX));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(host: &str, requests: Vec<(&'static str, &'static str, u64)>) -> RegistryStats {
        RegistryStats { host: host.into(), requests, last_error: None }
    }

    #[test]
    fn a_kept_registry_reports_only_the_requests_of_this_cycle() {
        let before = [stats("a", vec![("manifest_head", "ok", 3), ("token", "ok", 3)])];
        let now = vec![
            stats("a", vec![("manifest_head", "ok", 6), ("token", "ok", 3)]),
            stats("b", vec![("manifest_head", "ok", 1)]),
        ];
        let got: Vec<_> = since(now, &before).into_iter().map(|r| (r.host, r.requests)).collect();
        assert_eq!(
            got,
            vec![
                ("a".to_owned(), vec![("manifest_head", "ok", 3)]),
                ("b".to_owned(), vec![("manifest_head", "ok", 1)])
            ]
        );
    }
}
