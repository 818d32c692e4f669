//! `agent run`: the long-running agent. One worker reconciles, one cycle at a time, what the
//! trigger queue (`shared::trigger`) says is due: the jittered poll timer, webhooks, and CLI
//! requests all feed it, debounced per target. The HTTP server (`server`) answers health,
//! readiness, metrics, status and webhooks beside it. Replicas with one identity elect a leader
//! with a Lease; a standby polls its sources (so it is ready) but applies nothing.
//!
//! The command line's state-changing commands reach the worker over the control socket
//! (`control`, `stateDir/agent.sock`); the worker performs each between cycles, as the Lease
//! holder, and answers with the result. A rollback asked during a rollout waits for that rollout
//! to end (verified or rolled back): stopping it half-way would leave old and new pods mixed and
//! a record mid-step, while a finished one is a clean point to roll back from.
//!
//! Shutdown (SIGTERM, SIGINT): no new cycle starts; the cycle in flight gets `SHUTDOWN_GRACE` to
//! finish. Past that it is dropped: every step was persisted before it began, so the next start
//! (or the new leader) finishes or rolls back from the records.

pub mod control;
mod drift;
pub mod metrics;
mod notify;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, error, info, warn};

use shared::config::AgentConfig;
use shared::config::Sender;
use shared::status::{AgentView, CycleView, SourceView};
use shared::trigger::{Cause, Limiter, Queue, RateLimit, Target, Trigger};

use crate::cluster::Cluster;
use crate::cycle::{Report, Setup};
use crate::session::{Connected, Session};
use crate::source::git::{GitOptions, GitSource};
use crate::source::registry::Registries;
use crate::source::secret::{Secret, SecretSource};
use crate::state::StateStore;
use crate::watch::unix_now;
use metrics::Metrics;
use shared::outcome::Outcome;

/// Triggers closer together than this make one reconcile; the first on a quiet agent starts
/// its reconcile at once (`Queue::leading`).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// A steady stream of triggers still reconciles at least this often.
const MAX_DELAY: Duration = Duration::from_secs(3);
/// How long the cycle in flight may take to finish after SIGTERM (Kubernetes' default
/// terminationGracePeriodSeconds is 30 s; leave room to exit).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// What the server and the worker share.
pub struct Daemon {
    pub config: AgentConfig,
    pub base: PathBuf,
    pub metrics: Metrics,
    pub triggers: mpsc::UnboundedSender<Trigger>,
    pub view: Mutex<View>,
    /// The records, through the cluster once connected (files only before).
    pub store: RwLock<StateStore>,
    pub webhooks: Vec<(Sender, Secret)>,
    pub limiter: Mutex<Limiter>,
    pub agent: AgentView,
    /// The shown git URL (no credentials).
    pub git_url: String,
}

impl Daemon {
    /// What keeps the agent from being ready (`/readyz`, systemd's `READY=1`): git not reached
    /// yet, the API server not answering. Empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let view = self.view.lock().expect("view lock");
        let mut missing = Vec::new();
        if view.git.as_ref().and_then(|g| g.fetched_at).is_none() {
            missing.push(format!("git {} not reached yet", self.git_url));
        }
        if let Err(e) = &view.api {
            missing.push(format!("API server: {e}"));
        }
        missing
    }
}

/// What the running agent knows beyond its records.
#[derive(Debug)]
pub struct View {
    pub git: Option<SourceView>,
    pub registries: BTreeMap<String, SourceView>,
    /// The last reconcile of each bundle.
    pub cycles: BTreeMap<String, CycleView>,
    /// The last progress line of each bundle whose reconcile is running now.
    pub activity: BTreeMap<String, shared::status::Activity>,
    /// `host/repository` of every image the bundles want (to match image webhooks).
    pub known_images: Vec<String>,
    /// The API server answered the last time it was asked.
    pub api: std::result::Result<(), String>,
    pub leader: Option<bool>,
}

impl View {
    fn new() -> View {
        View {
            git: None,
            registries: BTreeMap::new(),
            cycles: BTreeMap::new(),
            activity: BTreeMap::new(),
            known_images: Vec::new(),
            api: Err("not connected yet".into()),
            leader: None,
        }
    }
}

/// The tracing subscriber: JSON lines on stderr (`GITOPS_AGENT_LOG=text` for people),
/// filtered by `RUST_LOG` (default `info`): a level, and `target=level` directives
/// (`info,kube=warn`); a value that does not parse keeps the default and says so.
fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (filter, bad) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let text = std::env::var("GITOPS_AGENT_LOG").is_ok_and(|v| v == "text");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = if text {
        tracing_subscriber::registry().with(fmt.with_ansi(false)).with(filter).try_init()
    } else {
        let json = fmt.json().flatten_event(true).with_current_span(true).with_span_list(true);
        tracing_subscriber::registry().with(json).with(filter).try_init()
    };
    if let Some(bad) = bad {
        warn!("{bad}");
    }
}

/// The log filter `RUST_LOG` asks for (default `info`), and what to say when it does not parse.
fn log_filter(value: Option<&str>) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let default = || Targets::new().with_default(LevelFilter::INFO);
    match value {
        Some(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (default(), Some(format!("RUST_LOG={v:?}: {e}; logging at info"))),
        },
        _ => (default(), None),
    }
}

/// `agent run`: until SIGTERM or SIGINT. Exit 0 after a clean shutdown, 2 when it cannot start
/// (config, listener).
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let (loaded, base) = crate::config::load(config_path)?;
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(loaded.config, base))?;
    Ok(ExitCode::SUCCESS)
}

fn holder_identity(node: &str) -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| node.to_owned());
    format!("{host}/{}", std::process::id())
}

async fn serve(config: AgentConfig, base: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let socket = control::socket_path(&base, &config.state_dir);
    let control_listener = control::bind(&socket).await?;
    let git = Arc::new(GitSource::new(GitOptions::from_config(&config, &base))?);
    let webhooks = config
        .server
        .webhooks
        .iter()
        .map(|w| {
            let source = SecretSource::from_parts(w.secret_file.as_deref(), w.secret_env.as_deref(), &base);
            (w.sender, Secret::new(source))
        })
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let agent = AgentView {
        agent_id: config.identity.agent_id.clone(),
        node: config.identity.node_name.clone(),
        holder: holder_identity(&config.identity.node_name),
        leader: None,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let store = StateStore::new(&base.join(&config.state_dir), &config.identity.agent_id, &config.kube.namespace, None);
    let limiter =
        Limiter::new(RateLimit { burst: config.server.webhook_burst, every: config.server.webhook_every.get() });
    let d = Arc::new(Daemon {
        git_url: git.shown_url(),
        metrics: Metrics::new(),
        triggers: tx,
        view: Mutex::new(View::new()),
        store: RwLock::new(store),
        webhooks,
        limiter: Mutex::new(limiter),
        agent,
        config,
        base,
    });
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    info!(listen = %addr, agent_id = %d.agent.agent_id, holder = %d.agent.holder, "agent started");
    let server = tokio::spawn(server::serve(d.clone(), listener, stop.clone()));
    // Commands wait here until the worker takes them, between cycles.
    let (command_tx, commands) = mpsc::channel(16);
    let control = tokio::spawn(control::serve(control_listener, socket, command_tx, stop.clone()));
    tokio::spawn(notify::run(d.clone(), stop.clone()));

    let Some(cluster) = connect(&d, stop.clone()).await else {
        info!("stopped before the API server was reached");
        // Commands still waiting are answered "stopping" once their channel is gone.
        drop(commands);
        let _ = server.await;
        let _ = control.await;
        return Ok(());
    };
    let mut setup = Setup::new(d.config.clone(), &d.base, cluster.clone());
    // One store for the cycles and the status server, its records read from one watch.
    setup.store.watch();
    *d.store.write().expect("store lock") = setup.store.clone();
    // Keep the sender alive as long as the worker runs: a dropped sender would wake
    // `changed()` in a loop.
    let (leader, _lease_guard) = elect(&d, &cluster).await;
    worker(d.clone(), rx, commands, stop, leader, setup, Sources { git, registries: Mutex::new(None) }).await;
    info!("stopped");
    let _ = server.await;
    let _ = control.await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
}

/// Connects to the API server, retrying with backoff until it answers or shutdown.
async fn connect(d: &Daemon, mut stop: watch::Receiver<bool>) -> Option<Cluster> {
    let mut delay = Duration::from_secs(1);
    loop {
        match Cluster::connect(&d.config.kube, &d.base).await {
            Ok(c) => {
                d.view.lock().expect("view lock").api = Ok(());
                info!(api = %c.url(), "connected to the API server");
                return Some(c);
            }
            Err(e) => {
                warn!(error = %e, "API server unreachable; retrying in {}s", delay.as_secs());
                d.view.lock().expect("view lock").api = Err(e.to_string());
            }
        }
        tokio::select! {
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The Lease the replicas of one agent identity (and its command line, acting alone) hold.
pub fn lease_name(agent_id: &str) -> String {
    format!("gitops-agent-{agent_id}")
}

/// Leadership as a watch channel: the Lease when election is on, always `true` when off.
/// The second value keeps the channel's sender (or the Lease task) alive.
async fn elect(d: &Arc<Daemon>, cluster: &Cluster) -> (watch::Receiver<bool>, Box<dyn std::any::Any + Send>) {
    if !d.config.leader_election.enabled {
        let (tx, rx) = watch::channel(true);
        d.metrics.leader.set(1);
        return (rx, Box::new(tx));
    }
    let secs = d.config.leader_election.lease_duration.get().as_secs().max(5);
    let lease_name = lease_name(&d.config.identity.agent_id);
    let mut delay = Duration::from_secs(1);
    loop {
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(cluster.client().clone());
        if let Ok(None) = namespaces.get_opt(&d.config.kube.namespace).await {
            warn!(
                "kube.namespace {:?} does not exist (the Lease and the state Secrets live there); \
                 waiting for it, retrying in {}s",
                d.config.kube.namespace,
                delay.as_secs()
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
            continue;
        }
        let built = kube_lease_manager::LeaseManagerBuilder::new(cluster.client().clone(), &lease_name)
            .with_namespace(&d.config.kube.namespace)
            .with_identity(&d.agent.holder)
            .with_duration(secs)
            .with_grace((secs / 3).max(1))
            .build()
            .await;
        match built {
            Ok(manager) => {
                let (rx, task) = manager.watch().await;
                info!(lease = %lease_name, namespace = %d.config.kube.namespace, "competing for the Lease");
                d.view.lock().expect("view lock").leader = Some(false);
                return (rx, Box::new(task));
            }
            Err(e) => {
                warn!(error = %e, lease = %lease_name, "cannot set up the Lease; retrying in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The sources the daemon keeps between cycles: the git cache and the registries, so a Bearer
/// token fetched in one poll serves the next ones until its reuse window ends
/// (`shared::registry::token_reuse_window`).
struct Sources {
    git: Arc<GitSource>,
    /// Set up at the first cycle that can (a CA file may appear after the start); until then
    /// each cycle tries again and reports why it cannot.
    registries: Mutex<Option<Arc<Registries>>>,
}

impl Sources {
    fn registries(&self, d: &Daemon) -> Option<Arc<Registries>> {
        let mut kept = self.registries.lock().expect("registries lock");
        if kept.is_none() {
            *kept = Registries::from_config(&d.config.registries, &d.base).ok().map(Arc::new);
        }
        kept.clone()
    }
}

async fn worker(
    d: Arc<Daemon>,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
    mut commands: mpsc::Receiver<control::Request>,
    mut stop: watch::Receiver<bool>,
    mut leader: watch::Receiver<bool>,
    setup: Setup,
    sources: Sources,
) {
    let mut queue = Queue::leading(DEBOUNCE, MAX_DELAY);
    let watches = drift::Watches::default();
    let interval = d.config.git.poll_interval.get();
    let mut failures: u32 = 0;
    let mut next_poll = Instant::now();
    let mut leading = *leader.borrow_and_update();
    note_leadership(&d, leading);
    // Deferred bundles and when to look at them again (a window opens, an idle check is due).
    let mut deferred: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let soonest = deferred.values().min().map_or(next_poll, |t| (*t).min(next_poll));
        let wake = queue.next_due().map_or(soonest, |due| due.min(soonest));
        // `reconcile --once` through the socket: its cycle, and where its report goes.
        let mut asked = None;
        tokio::select! {
            _ = stop.changed() => return,
            Some(t) = rx.recv() => {
                queue.push(t, Instant::now());
                continue;
            }
            Ok(()) = leader.changed() => {
                leading = *leader.borrow_and_update();
                note_leadership(&d, leading);
                if leading {
                    queue.push(Trigger { target: Target::All, cause: Cause::Cli { what: "became leader".into() } }, Instant::now());
                }
                continue;
            }
            Some(request) = commands.recv() => {
                let control::Request { command, reply } = request;
                if !leading {
                    let _ = reply.send(Err(STANDBY.to_owned()));
                    continue;
                }
                match command {
                    control::Command::Reconcile { bundle, ignore_windows } => {
                        asked = Some((bundle, ignore_windows, reply));
                    }
                    command => {
                        info!(?command, "a command from the control socket");
                        let resume = match &command {
                            control::Command::Resume { bundle } => Some(bundle.clone()),
                            _ => None,
                        };
                        let work = by_hand(&setup, command);
                        let ran = while_leading(work, true, &mut rx, &mut queue, &mut stop, &mut leader).await;
                        let answer = match ran {
                            Ran::Done(a) => a,
                            Ran::LostLease => {
                                leading = false;
                                note_leadership(&d, false);
                                Err(LOST_LEASE.to_owned())
                            }
                            Ran::Stopped => return,
                        };
                        if let (Some(bundle), Ok(_)) = (resume, &answer) {
                            let cause = Cause::Cli { what: "agent resume".into() };
                            queue.push(Trigger { target: Target::Bundle(bundle), cause }, Instant::now());
                        }
                        let _ = reply.send(answer);
                        continue;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if now >= next_poll {
            queue.push(Trigger { target: Target::All, cause: Cause::Poll }, now);
            next_poll = now + interval;
        }
        deferred.retain(|bundle, at| {
            let due = *at <= now;
            if due {
                queue.push(Trigger { target: Target::Bundle(bundle.clone()), cause: Cause::Deferred }, now);
            }
            !due
        });
        let (target, causes, once, reply) = match asked {
            Some((bundle, ignore_windows, reply)) => {
                let target = bundle.map_or(Target::All, |b| Target::Bundle(b.trim_matches('/').to_owned()));
                let mut once = setup.clone();
                once.ignore_windows = ignore_windows;
                (target, vec![Cause::Cli { what: "agent reconcile --once".into() }], Some(once), Some(reply))
            }
            None => {
                let Some((target, causes)) = queue.pop_due(now) else { continue };
                (target, causes, None, None)
            }
        };
        let cycle = cycle(&d, once.as_ref().unwrap_or(&setup), &sources, target, causes, leading);
        let git_ok = match while_leading(cycle, leading, &mut rx, &mut queue, &mut stop, &mut leader).await {
            Ran::Done((ok, retries, report)) => {
                let (wall, mono) = (unix_now(), Instant::now());
                for (bundle, at) in retries {
                    let after = Duration::from_secs(u64::try_from(at - wall).unwrap_or(0));
                    deferred.insert(bundle, mono + after);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(report.map(|r| crate::answer::Answer::reconciled(&r)));
                }
                Some(ok)
            }
            Ran::LostLease => {
                leading = false;
                note_leadership(&d, false);
                warn!("lost the Lease during a reconcile: stopped it; the new leader resumes from the records");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(LOST_LEASE.to_owned()));
                }
                None
            }
            Ran::Stopped => return,
        };
        if leading {
            let store = d.store.read().expect("store lock").clone();
            if let Ok(records) = store.all().await {
                let objects: Vec<serde_json::Value> =
                    records.iter().filter_map(|r| r.lkg.as_ref()).flat_map(|l| l.objects.iter().cloned()).collect();
                watches.ensure(&d, &setup.cluster, &objects);
            }
        }
        match git_ok {
            Some(true) => failures = 0,
            Some(false) => failures = failures.saturating_add(1),
            None => {}
        }
        let delay = shared::trigger::poll_delay(interval, failures, rand::random::<f64>());
        next_poll = Instant::now() + delay;
    }
}

/// What a command learns when the Lease was lost while it ran.
const LOST_LEASE: &str = "lost the Lease while doing it: stopped; the new leader finishes it from the records";

/// What a standby answers a command.
const STANDBY: &str = "this agent is a standby: another replica holds the Lease; run the command where the leader runs";

/// How work run as the Lease holder ended.
enum Ran<T> {
    Done(T),
    /// The Lease was lost: the work was dropped (the new leader finishes it from the records).
    LostLease,
    /// Shutdown: the work got `SHUTDOWN_GRACE` to finish first.
    Stopped,
}

/// Runs `work`, queueing triggers that arrive meanwhile; stopped when the Lease is lost (if
/// `leading`: a standby's git poll leaves a change of leadership to the worker's loop).
async fn while_leading<T>(
    work: impl std::future::Future<Output = T>,
    leading: bool,
    rx: &mut mpsc::UnboundedReceiver<Trigger>,
    queue: &mut Queue,
    stop: &mut watch::Receiver<bool>,
    leader: &mut watch::Receiver<bool>,
) -> Ran<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ran::Done(out),
            Some(t) = rx.recv() => queue.push(t, Instant::now()),
            _ = stop.changed() => {
                info!("letting the reconcile in flight finish (up to {}s)", SHUTDOWN_GRACE.as_secs());
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await.is_err() {
                    warn!("the reconcile in flight was stopped; its record says where the next start resumes");
                }
                return Ran::Stopped;
            }
            Ok(()) = leader.changed(), if leading => {
                if !*leader.borrow_and_update() {
                    return Ran::LostLease;
                }
            }
        }
    }
}

/// A state-changing command from the control socket, done through the driver.
async fn by_hand(setup: &Setup, command: control::Command) -> Result<crate::answer::Answer, String> {
    use crate::answer::Answer;
    use control::Command;
    let driver = setup.driver(false, &progress);
    let done = match command {
        Command::Rollback { bundle, to } => {
            driver.rollback(&bundle, to.as_deref(), setup.defaults.clone()).await.map(|r| Answer::rolled_back(&r))
        }
        Command::Retry { bundle, by } => {
            driver.retry(&bundle, by.as_deref().unwrap_or("an unnamed user")).await.map(Answer::said)
        }
        Command::Pause { bundle, reason } => driver.pause(&bundle, Some(&reason)).await.map(Answer::said),
        Command::Resume { bundle } => {
            driver.pause(&bundle, None).await.map(|s| Answer::said(format!("{s}; the running agent reconciles it now")))
        }
        Command::Prune { bundle } => driver.confirm_removal(&bundle).await.map(|r| Answer::pruned(&r)),
        Command::Reconcile { .. } => unreachable!("the worker runs a reconcile as a cycle"),
    };
    done.map_err(|e| format!("{e:#}"))
}

fn note_leadership(d: &Daemon, leading: bool) {
    let mut view = d.view.lock().expect("view lock");
    if view.leader.is_some() {
        if view.leader != Some(leading) {
            info!(
                leader = leading,
                "{}",
                if leading { "acquired the Lease: applying" } else { "standby: another replica holds the Lease" }
            );
        }
        view.leader = Some(leading);
        d.metrics.leader.set(i64::from(leading));
    }
}

fn describe(causes: &[Cause]) -> String {
    let words: Vec<String> = causes
        .iter()
        .map(|c| match c {
            Cause::Poll => "poll".to_owned(),
            Cause::Webhook { sender, .. } => format!("webhook:{sender}"),
            Cause::Drift { object } => format!("drift:{object}"),
            Cause::Cli { what } => what.clone(),
            Cause::Deferred => "deferred".to_owned(),
        })
        .collect();
    words.join(",")
}

/// The driver's progress lines; failures, rollbacks and warnings at WARN, so an operator's
/// `level=WARN` filter shows every rollout that went wrong.
fn progress(bundle: &str, line: &str) {
    let bad = line.starts_with("warning:")
        || line.starts_with("rolling back")
        || line.starts_with("failed")
        || (line.starts_with("rollout of") && line.contains(" failed"));
    match (bundle.is_empty(), bad) {
        (true, false) => info!("{line}"),
        (true, true) => warn!("{line}"),
        (false, false) => info!(bundle, "{line}"),
        (false, true) => warn!(bundle, "{line}"),
    }
}

/// One reconcile: polls git, then (as leader) the cycle. Returns whether git answered, the
/// deferred bundles with when to look at them again, and the cycle's report.
async fn cycle(
    d: &Daemon,
    setup: &Setup,
    sources: &Sources,
    target: Target,
    causes: Vec<Cause>,
    leading: bool,
) -> (bool, Vec<(String, shared::k8s::Time)>, Result<Report, String>) {
    let trace = causes.iter().find_map(|c| match c {
        Cause::Webhook { trace: Some(t), .. } => Some(t.clone()),
        _ => None,
    });
    let only = match &target {
        Target::All => None,
        Target::Bundle(b) => Some(b.clone()),
    };
    let span = tracing::info_span!(
        "reconcile",
        target = only.as_deref().unwrap_or("all"),
        causes = %describe(&causes),
        trace_id = trace.as_ref().map(|t| t.trace_id.as_str()),
        parent_id = trace.as_ref().map(|t| t.parent_id.as_str()),
    );
    let git = &sources.git;
    async move {
        let started = Instant::now();
        let before = git.counters.snapshot();
        let poller = git.clone();
        let polled = tokio::task::spawn_blocking(move || poller.poll()).await;
        for (kind, outcome, n) in git.counters.snapshot() {
            let was = before.iter().find(|(k, o, _)| *k == kind && *o == outcome).map_or(0, |b| b.2);
            d.metrics.count_requests("git", kind, outcome, n - was);
        }
        let now = unix_now();
        let polled = match polled {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the git poll task failed: {e}")),
        };
        let git_ok = polled.is_ok();
        {
            let mut view = d.view.lock().expect("view lock");
            let s = view.git.get_or_insert_with(|| SourceView::new("git", &d.git_url, Some(&d.config.git.reference)));
            if let Err(e) = &polled {
                warn!(source = %d.git_url, error = %e, "git poll failed; what runs is kept");
            }
            s.observe(polled.as_ref().map(|p| Some(p.commit.id.as_str())).map_err(String::as_str), now);
        }
        if !leading {
            return (git_ok, Vec::new(), Err(STANDBY.to_owned()));
        }
        let session = async {
            let poll = polled.map_err(anyhow::Error::msg)?;
            let cluster = Connected::Yes(setup.cluster.clone());
            let registries = sources.registries(d);
            Session::assemble(d.config.clone(), &d.base, git.clone(), poll, cluster, None, registries).await
        };
        info!("reconcile started");
        let replan = shared::replan::Replan::for_causes(&causes);
        // Each line is logged, and kept as the bundle's activity until its reconcile ends, so
        // status says what a long step (an apply retried for minutes) is doing now.
        let noted = |bundle: &str, line: &str| {
            progress(bundle, line);
            if !bundle.is_empty() {
                let activity = shared::status::Activity { line: line.to_owned(), at: crate::watch::unix_now() };
                d.view.lock().expect("view lock").activity.insert(bundle.to_owned(), activity);
            }
        };
        let report = crate::cycle::run(setup, &noted, session, only.as_deref(), false, replan).await;
        d.view.lock().expect("view lock").activity.clear();
        d.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        let mut retries = Vec::new();
        let report = match report {
            Ok(report) => {
                record(d, &report, now);
                retries = report.bundles.iter().filter_map(|b| Some((b.bundle.clone(), b.retry_at?))).collect();
                Ok(report)
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "reconcile failed before the bundles");
                d.view.lock().expect("view lock").api = Err(format!("{e:#}"));
                Err(format!("{e:#}"))
            }
        };
        (git_ok, retries, report)
    }
    .instrument(span)
    .await
}

/// Takes a cycle's report into the view and the metrics.
fn record(d: &Daemon, report: &Report, now: shared::k8s::Time) {
    let mut view = d.view.lock().expect("view lock");
    if let Some(git) = view.git.as_mut().filter(|_| report.commit.is_some()) {
        git.signature = report.commit_signature.clone();
    }
    let interrupted = report.resumed.iter().chain(&report.bundles).any(|b| b.result == Outcome::Interrupted);
    view.api = match (&report.error, interrupted) {
        (_, true) => Err("a step was interrupted: the API server did not answer".into()),
        _ => Ok(()),
    };
    for b in report.resumed.iter().chain(&report.bundles) {
        if b.result.ends_a_rollout() {
            d.metrics.rollouts.get_or_create(&metrics::Outcome { result: b.result.word().to_owned() }).inc();
        }
        for drain in &b.drains {
            d.metrics.drained(&b.bundle, drain);
            if drain.cut > 0 {
                warn!(bundle = %b.bundle, sessions_cut = drain.cut, "{}", drain.message);
            }
        }
        let revision = b.revision.as_deref().unwrap_or("");
        let result = b.result.word();
        match b.result {
            Outcome::InSync | Outcome::Verified | Outcome::RolledOut | Outcome::WouldApply => {
                info!(bundle = %b.bundle, result, revision, "{}", b.message)
            }
            _ => warn!(bundle = %b.bundle, result, revision, "{}", b.message),
        }
    }
    if let Some(commit) = &report.commit {
        for b in &report.bundles {
            let images = report.desired_images.get(&b.bundle).cloned().unwrap_or_default();
            view.cycles.insert(
                b.bundle.clone(),
                CycleView {
                    commit: commit.clone(),
                    images,
                    verified: report.verified_images.get(&b.bundle).cloned().unwrap_or_default(),
                    result: b.result.word().to_owned(),
                    message: b.message.clone(),
                    at: now,
                    planned_at: report.planned_at.get(&b.bundle).copied(),
                    prepull: b.prepull.clone(),
                },
            );
        }
        view.known_images = shared::webhook::known_repositories(report.desired_images.values().flatten());
    }
    for r in &report.registries {
        for (kind, outcome, n) in &r.requests {
            d.metrics.count_requests(&r.host, kind, outcome, *n);
        }
        if r.requests.is_empty() {
            continue;
        }
        view.registries
            .entry(r.host.clone())
            .or_insert_with(|| SourceView::new("registry", &format!("https://{}", r.host), None))
            .observe(r.last_error.as_deref().map_or(Ok(None), Err), now);
    }
    let all_good = report.error.is_none() && report.bundles.iter().all(|b| b.result.satisfies_dependents());
    if all_good {
        d.metrics.last_sync.set(now as f64);
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::log_filter;

    #[test]
    fn rust_log_takes_a_level_and_target_directives_and_a_bad_value_keeps_info_and_says_so() {
        // (RUST_LOG, target, level, enabled)
        let cases: &[(Option<&str>, &str, Level, bool)] = &[
            (None, "agent", Level::INFO, true),
            (None, "agent", Level::DEBUG, false),
            (Some(""), "kube_client", Level::INFO, true),
            (Some("debug"), "agent", Level::DEBUG, true),
            (Some("info,kube=warn"), "kube_client::client", Level::INFO, false),
            (Some("info,kube=warn"), "kube", Level::WARN, true),
            (Some("info,kube=warn"), "agent::cycle", Level::INFO, true),
            (Some("warn,agent=debug"), "agent::daemon", Level::DEBUG, true),
            (Some("warn,agent=debug"), "gix", Level::INFO, false),
        ];
        for (value, target, level, enabled) in cases {
            let (filter, bad) = log_filter(*value);
            assert_eq!(bad, None, "{value:?}");
            assert_eq!(filter.would_enable(target, level), *enabled, "RUST_LOG={value:?}: {target} at {level}");
        }
        let (filter, bad) = log_filter(Some("agent=loudest"));
        assert!(bad.as_deref().is_some_and(|b| b.starts_with("RUST_LOG=\"agent=loudest\": ")), "{bad:?}");
        assert!(filter.would_enable("agent", &Level::INFO) && !filter.would_enable("agent", &Level::DEBUG));
    }
}
