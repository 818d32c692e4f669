//! `cargo xtask demo`: the agent's real job on the local test environment, end to end.
//!
//! The testenv plays the store node and the pipeline around it: its API server with a KWOK node
//! and a real node is the store's cluster, its git server is Gitea, its registry is Harbor, and
//! this task is CI. Stack B's signalling server runs as real containers on the real node (the
//! kiosk fixture app), the GPU orchestrator and the session store on the KWOK node.
//! The agent runs as the daemon (`agent run`) it is on a node:
//!
//! 1. testenv up, Stack B seeded (chart at images `1.0.0`), the demo store reset; the store's
//!    drain policy for the signalling server committed (sessions read from each pod's gauge,
//!    `waitForIdle`, preStop) and its placement on the real node (selector, toleration, pull
//!    secret), its images the kiosk fixture app;
//! 2. a node config with a Gitea webhook and a free local port;
//! 3. `agent run` rolls Stack B out;
//! 4. a customer opens a WebSocket session on the signalling pod's IP; CI pushes a new signalling
//!    image, bumps its tag in git and sends Gitea's push webhook: the agent defers the rollout
//!    while the customer talks, and rolls it out by itself within seconds of the conversation's
//!    end (no poll), the old pod drained cleanly;
//! 5. CI pushes a broken image the same way: the rollout fails (CrashLoopBackOff) and the agent
//!    rolls back to the last-known-good by itself, quarantining the broken revision;
//! 6. SIGTERM: the agent shuts down cleanly.
//!
//! Every wait has a deadline and ends in an error naming what did not happen (with the end of the
//! agent's log); nothing relies on a fixed sleep. Each run starts from scratch (re-seeded
//! repository, fresh state folder, state Secrets, Lease and store namespace), so the demo can be
//! run again and again.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use xtask::env_info::RealNode;
use xtask::node_support::{self, LogFollower};
use xtask::seed::run;
use xtask::session::Session;
use xtask::testenv::{self, EnvInfo};
use xtask::{paths, seed};

/// The agent identity of the demo node (the config's default), and so its Lease and state labels.
const AGENT_ID: &str = "gitops-agent";
/// The agent's own namespace (`kube.namespace`, its default): state Secrets and the Lease.
const AGENT_NAMESPACE: &str = "gitops-agent";
/// Where Stack B deploys (`defaultNamespace` in `fixtures/stack-b/make-repo.sh`'s fleet.yaml).
const STORE_NAMESPACE: &str = "kiosk";
/// The bundle `git.path: stack-b` holds (the chart's folder, `stack-b/helm`).
const BUNDLE: &str = "helm";
/// The chart's values file, where CI pins image tags.
const VALUES: &str = "stack-b/helm/values.yaml";
/// The image CI changes: Stack B's signalling server. (The orchestrator takes the node's only
/// GPU, so with the chart's default rolling update a new orchestrator pod could not be scheduled
/// next to the old one.)
const IMAGE: &str = "library/u5-signalling";
/// The good release CI ships, and the broken one (its image exits 1 at start on the real node,
/// see `seed::push_stack_b_image`).
const GOOD_TAG: &str = "1.1.1";
const BROKEN_TAG: &str = "1.2.0-broken";

const READY_WITHIN: Duration = Duration::from_secs(60);
const ROLLOUT_WITHIN: Duration = Duration::from_secs(120);
const ROLLBACK_WITHIN: Duration = Duration::from_secs(180);
const STOP_WITHIN: Duration = Duration::from_secs(30);

pub async fn demo() -> Result<()> {
    let started = Instant::now();
    let root = paths::workspace_root();
    let dir = root.join("target/demo");
    std::fs::create_dir_all(&dir)?;
    stop_leftover_agent(&dir)?;

    step(&started, 0, "Building the agent");
    let agent_bin = build_agent()?;
    println!("agent binary: {}", agent_bin.display());

    step(&started, 1, "Test environment, Stack B fixture, a fresh store");
    let info = testenv::up(&testenv::UpOptions::default()).await?;
    let node = info.real_node.clone().context(
        "the demo runs the signalling server on the testenv's real node, and this testenv runs none \
         (GITOPS_TESTENV_REAL_NODE=0?); see docs/testenv.md",
    )?;
    seed::seed(&info)?;
    let client = xtask::kube::kube_client(&info.kubeconfig).await?;
    reset_store(&client).await?;
    node_support::pull_secret(&client, &info, STORE_NAMESPACE).await?;
    let ci = CiWorkspace::clone(&info, &dir.join("ci-work"))?;
    println!(
        "the signalling pods run the kiosk fixture app (WebSocket sessions, gauge kiosk_active_sessions) as \
         real containers on {} (pulled with the pull secret {})",
        node.name,
        node_support::PULL_SECRET
    );
    ci.drain_signalling(&info, &node)?;
    println!("git {}/{}.git at {}", info.git_base, seed::STACK_B_REPO, short(&ci.head()?));

    step(&started, 2, "Node config");
    let port = free_port()?;
    let webhook_secret = format!("{:032x}", rand::random::<u128>());
    let cfg = write_config(&info, &dir, port, &webhook_secret)?;
    println!("$ cat {}", cfg.display());
    print!("{}", std::fs::read_to_string(&cfg)?);
    agent_cmd(&agent_bin, &["validate", "--config"], &cfg, &[0])?;

    step(&started, 3, "Starting the agent daemon");
    let log = dir.join("agent.log");
    let mut agent = Agent::start(&agent_bin, &cfg, &log, port, &dir)?;
    println!("$ agent run --config {}  (pid {}, listening on {})", cfg.display(), agent.pid(), agent.base);
    println!("log: {}", log.display());
    agent.wait_ready().await?;
    let first = ci.head()?;
    let s = agent.wait_bundle("the first rollout of Stack B", ROLLOUT_WITHIN, |b| synced_at(b, &first)).await?;
    println!("Stack B runs commit {} ({})", short(&first), images(&s));
    agent_cmd(&agent_bin, &["status", "--config"], &cfg, &[0])?;

    step(&started, 4, &format!("A customer talks to the kiosk; CI ships {IMAGE}:{GOOD_TAG} with Gitea's push webhook"));
    let (old_pod, old_ip) = signalling_pod(&client, &[], READY_WITHIN).await?;
    let old_log = LogFollower::start(&client, STORE_NAMESPACE, &old_pod);
    let url = format!("ws://{old_ip}:{}/ws", seed::SIGNALLING_PORT);
    let mut session = Session::open(&url).await.map_err(|e| anyhow::anyhow!("opening a session at {url}: {e}"))?;
    println!("a customer's WebSocket session is open on {old_pod} ({url})");
    let digest = seed::push_stack_b_image(&info, IMAGE, GOOD_TAG)?;
    println!("pushed {}/{IMAGE}:{GOOD_TAG} {digest}", info.registry);
    let good = ci.bump(&info, GOOD_TAG)?;
    let sent = Instant::now();
    agent.gitea_push(&info, &webhook_secret, &first, &good).await?;
    let s = agent
        .wait_bundle("the rollout to wait for the customer (waitForIdle)", ROLLOUT_WITHIN, |b| {
            if synced_at(b, &good)? {
                bail!("{GOOD_TAG} was rolled out while a customer talked to {old_pod}");
            }
            Ok(b["state"] == "deferred")
        })
        .await?;
    println!("next: {}", s["next"].as_str().unwrap_or_default());
    agent_cmd(&agent_bin, &["status", "--config"], &cfg, &[0])?;
    if !session.ping().await {
        bail!("the customer's session on {old_pod} stopped answering while the rollout waited");
    }
    session.close().await;
    let goodbye = Instant::now();
    println!("\nthe customer's session was untouched; the conversation ends now");
    let s = agent
        .wait_bundle(&format!("the rollout of {IMAGE}:{GOOD_TAG}"), ROLLOUT_WITHIN, |b| synced_at(b, &good))
        .await?;
    println!(
        "rolled out commit {} {:.1}s after the conversation ended ({:.1}s after the webhook; no poll needed): {}",
        short(&good),
        goodbye.elapsed().as_secs_f64(),
        sent.elapsed().as_secs_f64(),
        images(&s)
    );
    if let Some(m) = s["last"]["message"].as_str() {
        println!("outcome: {m}");
    }
    let lines = old_log.wait_done(READY_WITHIN).await?;
    let last = lines.last().map_or("(no log)", |l| l.text.as_str());
    println!("the old pod's app, after preStop /drain and SIGTERM from the kubelet: {last}");
    println!("(signalling's init container stays at 1.0.0: its tag is pinned on its own, initImage.tag)");
    agent_cmd(&agent_bin, &["status", "--config"], &cfg, &[0])?;

    step(&started, 5, &format!("As CI would, with a broken release: {IMAGE}:{BROKEN_TAG}"));
    let serving = ready_signalling(&client).await?;
    let digest = seed::push_stack_b_image(&info, IMAGE, BROKEN_TAG)?;
    println!("pushed {}/{IMAGE}:{BROKEN_TAG} {digest}", info.registry);
    let broken = ci.bump(&info, BROKEN_TAG)?;
    let sent = Instant::now();
    agent.gitea_push(&info, &webhook_secret, &good, &broken).await?;
    let s = agent
        .wait_bundle(&format!("the automatic rollback of {IMAGE}:{BROKEN_TAG}"), ROLLBACK_WITHIN, |b| {
            rolled_back(b, &good, &broken)
        })
        .await?;
    println!(
        "{BROKEN_TAG} failed and was rolled back {:.1}s after the webhook; commit {} runs again: {}",
        sent.elapsed().as_secs_f64(),
        short(&good),
        images(&s)
    );
    if let Some(m) = s["last"]["message"].as_str() {
        println!("why: {m}");
    }
    print_rollback_events(&client).await?;
    let running = ready_signalling(&client).await?;
    if let Some(gone) = serving.iter().find(|p| !running.contains(p)) {
        bail!("{gone}, which served {GOOD_TAG}, was stopped during the broken rollout");
    }
    println!(
        "the {GOOD_TAG} pod ({}) served throughout: surge before unavailable never stopped it for the broken one",
        serving.join(", ")
    );
    agent_cmd(&agent_bin, &["status", "--config"], &cfg, &[0])?;
    agent_cmd(&agent_bin, &["status", "--explain", BUNDLE, "--config"], &cfg, &[0])?;

    step(&started, 6, "Stopping the agent (SIGTERM)");
    let status = agent.stop(STOP_WITHIN)?;
    println!("agent run exited: {status}");
    if !status.success() {
        bail!("agent run did not shut down cleanly ({status}); see {}", log.display());
    }

    println!();
    println!(
        "Done in {:.0}s. The agent rolled out Stack B, rolled out {IMAGE}:{GOOD_TAG} on Gitea's webhook,",
        started.elapsed().as_secs_f64()
    );
    println!("and rolled {BROKEN_TAG} back by itself, keeping that revision quarantined.");
    println!("The release waited for the customer's conversation to end, and no session was cut.");
    println!("  agent log:     {}   (less {0}; grep -E 'roll|webhook' {0})", log.display());
    println!("  agent config:  {}", cfg.display());
    println!("  run it again:  {} run --config {}", agent_bin.display(), cfg.display());
    println!("  records:       {} status --config {}", agent_bin.display(), cfg.display());
    println!(
        "  the cluster:   eval \"$(cargo xtask testenv env)\"; kubectl -n {STORE_NAMESPACE} describe deployment kiosk-signalling"
    );
    println!("  stop it all:   cargo xtask testenv down");
    Ok(())
}

fn step(started: &Instant, n: u32, title: &str) {
    println!("\n==> {n}/6 {title}  [{:.0}s]", started.elapsed().as_secs_f64());
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn images(bundle: &Value) -> String {
    let list: Vec<&str> = bundle["running"]["images"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // `host/repo:tag@sha256:...`: the repository's last segment and the tag are enough here.
    list.iter()
        .map(|i| {
            let i = i.split('@').next().unwrap_or(i);
            i.rsplit('/').next().unwrap_or(i).to_owned()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn synced_at(b: &Value, commit: &str) -> Result<bool> {
    let done = b["state"] == "synced" && b["running"]["commit"] == commit;
    // A failure of the revision being waited for is final: say so now rather than at the deadline.
    if b["last"]["commit"] == commit && !matches!(b["last"]["result"].as_str(), Some("rolledOut" | "adopted")) {
        bail!(
            "the agent did not roll out {}: {} ({})",
            short(commit),
            b["last"]["result"],
            b["last"]["message"].as_str().unwrap_or_default()
        );
    }
    Ok(done)
}

fn rolled_back(b: &Value, good: &str, broken: &str) -> Result<bool> {
    if b["last"]["commit"] == broken {
        match b["last"]["result"].as_str() {
            Some("rolledBack") => {}
            Some("rolledOut" | "adopted") => bail!("the broken revision {} was rolled out as healthy", short(broken)),
            other => bail!(
                "the broken revision ended in {other:?}, not a rollback: {}",
                b["last"]["message"].as_str().unwrap_or_default()
            ),
        }
    }
    Ok(b["state"] == "rolled-back" && b["last"]["result"] == "rolledBack" && b["running"]["commit"] == good)
}

/// `cargo build -p agent`; the path of the binary it built.
fn build_agent() -> Result<PathBuf> {
    let out = paths::cargo()
        .args(["build", "--package", "agent", "--bin", "agent", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --package agent failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "agent")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not name the agent executable")
}

/// Runs `agent ARGS CONFIG`, its output shown as is; fails on an exit code not in `ok`.
fn agent_cmd(bin: &Path, args: &[&str], cfg: &Path, ok: &[i32]) -> Result<()> {
    let shown: Vec<&str> = args.iter().copied().filter(|a| *a != "--config").collect();
    println!("\n$ agent {} --config {}", shown.join(" "), cfg.display());
    let status = clean_env(Command::new(bin)).args(args).arg(cfg).status().context("running the agent")?;
    if !status.code().is_some_and(|c| ok.contains(&c)) {
        bail!("agent {} failed ({status}) with {}", args.join(" "), cfg.display());
    }
    Ok(())
}

/// The agent without `GITOPS_AGENT_*` overrides from the caller's shell: the demo config rules.
fn clean_env(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GITOPS_AGENT_") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    Ok(l.local_addr()?.port())
}

/// The node config: the old demo's sources, plus the daemon's server (a free local port, the Gitea
/// webhook), a 30 s poll, and a state folder of its own for this run.
fn write_config(info: &EnvInfo, dir: &Path, port: u16, webhook_secret: &str) -> Result<PathBuf> {
    let state = dir.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    let git_secret = dir.join("git-password");
    write_secret(&git_secret, &info.git_agent.password)?;
    let registry_secret = dir.join("registry-password");
    write_secret(&registry_secret, &info.registry_agent.password)?;
    let hook_secret = dir.join("webhook-secret");
    write_secret(&hook_secret, webhook_secret)?;
    let config = dir.join("agent.yaml");
    let text = format!(
        "identity:\n  nodeName: {node}\n  labels: {{store: store1, env: qa}}\n\
         git:\n  url: {git}\n  path: stack-b\n  pollInterval: 30s\n  caFile: {ca}\n  auth:\n    username: {git_user}\n    \
         passwordFile: {git_secret}\n\
         registries:\n- host: {registry}\n  caFile: {ca}\n  auth:\n    username: {reg_user:?}\n    passwordFile: {registry_secret}\n\
         kube:\n  kubeconfig: {kubeconfig}\n  namespace: {AGENT_NAMESPACE}\n\
         server:\n  listen: 127.0.0.1:{port}\n  webhooks:\n  - sender: gitea\n    secretFile: {hook_secret}\n\
         leaderElection:\n  enabled: true\n\
         render:\n  helm: {helm}\n  kustomize: {kustomize}\n\
         stateDir: {state}\n",
        node = info.node_name,
        git = git_url(info),
        ca = info.ca_cert.display(),
        git_user = info.git_agent.username,
        git_secret = git_secret.display(),
        registry = info.registry,
        reg_user = info.registry_agent.username,
        registry_secret = registry_secret.display(),
        kubeconfig = info.kubeconfig.display(),
        hook_secret = hook_secret.display(),
        helm = info.helm.display(),
        kustomize = info.kustomize.display(),
        state = state.display(),
    );
    std::fs::write(&config, text)?;
    Ok(config)
}

fn write_secret(path: &Path, value: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, value).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn git_url(info: &EnvInfo) -> String {
    format!("{}/{}.git", info.git_base, seed::STACK_B_REPO)
}

/// Makes the demo start from a store that runs nothing and an agent that remembers nothing:
/// the Stack B namespace is deleted (what an earlier demo left there) and created again, the
/// agent's namespace exists, and its state Secrets and Lease of an earlier run are gone.
/// The Ready signalling pods (names), as the store's cluster runs them.
async fn ready_signalling(client: &kube::Client) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), STORE_NAMESPACE);
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=signalling")).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Waits for a Ready signalling pod not in `except`; returns its name and IP.
async fn signalling_pod(client: &kube::Client, except: &[String], within: Duration) -> Result<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), STORE_NAMESPACE);
    let deadline = Instant::now() + within;
    loop {
        for name in ready_signalling(client).await? {
            if !except.contains(&name)
                && let Some(ip) = pods.get(&name).await?.status.and_then(|s| s.pod_ip)
            {
                return Ok((name, ip));
            }
        }
        if Instant::now() > deadline {
            bail!("no signalling pod became Ready on the real node within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reset_store(client: &kube::Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(STORE_NAMESPACE).await?.is_some() {
        println!("deleting namespace {STORE_NAMESPACE} (left by an earlier run)");
        // An already terminating namespace answers 409: fine, it is going.
        let _ = namespaces.delete(STORE_NAMESPACE, &DeleteParams::background()).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), STORE_NAMESPACE);
        let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // KWOK removes a pod when its grace period (45 s for signalling) ends; no need to
            // wait for that here. No controller can create pods in a terminating namespace.
            let _ = pods.delete_collection(&now, &ListParams::default()).await;
            if namespaces.get_opt(STORE_NAMESPACE).await?.is_none() {
                break;
            }
            if Instant::now() > deadline {
                bail!("namespace {STORE_NAMESPACE} was not deleted within 90s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for ns in [STORE_NAMESPACE, AGENT_NAMESPACE] {
        if namespaces.get_opt(ns).await?.is_none() {
            let obj: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
            }))?;
            namespaces
                .create(&PostParams::default(), &obj)
                .await
                .with_context(|| format!("creating namespace {ns}"))?;
            println!("created namespace {ns}");
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let mine = ListParams::default().labels(&format!("gitops-agent.io/state-of={AGENT_ID}"));
    let old = secrets.list_metadata(&mine).await?.items.len();
    if old > 0 {
        secrets.delete_collection(&DeleteParams::default(), &mine).await?;
        println!("deleted {old} state Secret(s) of an earlier run from {AGENT_NAMESPACE}");
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let lease = format!("gitops-agent-{AGENT_ID}");
    if leases.get_opt(&lease).await?.is_some() {
        leases.delete(&lease, &DeleteParams::default()).await?;
        println!("deleted Lease {AGENT_NAMESPACE}/{lease} of an earlier run");
    }
    Ok(())
}

/// An agent an interrupted earlier demo left running (its pid file names it) is stopped: it would
/// compete for the Lease.
fn stop_leftover_agent(dir: &Path) -> Result<()> {
    let pid_file = dir.join("agent.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else { return Ok(()) };
    let _ = std::fs::remove_file(&pid_file);
    let Ok(pid) = text.trim().parse::<i32>() else { return Ok(()) };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cfg = dir.join("agent.yaml");
    let ours = String::from_utf8_lossy(&cmdline).contains(&*cfg.to_string_lossy());
    if !ours {
        return Ok(());
    }
    eprintln!("stopping the agent an earlier demo left running (pid {pid})");
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_WITHIN;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            bail!("the agent an earlier demo left running (pid {pid}) did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// CI's clone of the Stack B repository.
struct CiWorkspace {
    dir: PathBuf,
}

impl CiWorkspace {
    fn clone(info: &EnvInfo, dir: &Path) -> Result<CiWorkspace> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        let mut cmd = Command::new("git");
        cmd.args(["clone", "-q", &git_url(info)]).arg(dir);
        seed::git_auth_env(&mut cmd, info, &info.git_ci);
        run(&mut cmd)?;
        Ok(CiWorkspace { dir: dir.to_path_buf() })
    }

    fn git(&self, args: &[&str]) -> Result<String> {
        run(Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(["-c", "user.name=ci", "-c", "user.email=ci@example.invalid"])
            .args(args))
    }

    fn head(&self) -> Result<String> {
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }

    /// The store's drain policy for the signalling server, as an operator would commit it: its
    /// sessions read from the gauge of each pod's app (on the pod's IP), a rollout waits until no
    /// customer talks to the old pod (at most 2 minutes), preStop tells the app to refuse new
    /// sessions. The chart's values place the signalling pods on the real node (its label and
    /// taint) and give them the pull secret.
    fn drain_signalling(&self, info: &EnvInfo, node: &RealNode) -> Result<String> {
        let fleet = self.dir.join("stack-b/helm/fleet.yaml");
        let mut text = std::fs::read_to_string(&fleet).with_context(|| format!("reading {}", fleet.display()))?;
        write!(
            text,
            "gitopsAgent:\n  drain:\n  - workload: kiosk-signalling\n    sessions:\n      \
             url: 'http://{{podIP}}:{port}/metrics'\n      gauge: kiosk_active_sessions\n      interval: 1s\n    \
             waitForIdle:\n      maxDefer: 2m\n    preStop:\n      httpGet: {{path: /drain, port: ws}}\n",
            port = seed::SIGNALLING_PORT
        )?;
        std::fs::write(&fleet, text)?;
        let values = self.dir.join(VALUES);
        let text = std::fs::read_to_string(&values).with_context(|| format!("reading {}", values.display()))?;
        let annotated = format!(
            "\nsignalling:\n  nodeSelector: {{{}: {}}}\n  tolerations:\n  - {{key: {}, operator: Equal, value: \"{}\", \
             effect: NoSchedule}}\n  imagePullSecrets:\n  - {{name: {}}}\n",
            node.label_key,
            node.label_value,
            node.taint_key,
            node.taint_value,
            node_support::PULL_SECRET
        );
        if !text.contains("\nsignalling:\n") {
            bail!("{VALUES} has no top-level signalling: section");
        }
        std::fs::write(&values, text.replacen("\nsignalling:\n", &annotated, 1))?;
        self.git(&[
            "commit",
            "-qam",
            "signalling: drain customers' sessions on rollouts (gitopsAgent.drain), on the real node",
        ])?;
        seed::git_push(info, &info.git_ci, &self.dir, seed::STACK_B_REPO, "main")?;
        let head = self.head()?;
        println!("pushed commit {}: fleet.yaml: gitopsAgent.drain for kiosk-signalling", short(&head));
        Ok(head)
    }

    fn bump(&self, info: &EnvInfo, tag: &str) -> Result<String> {
        let path = self.dir.join(VALUES);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let (text, old) = set_image_tag(&text, IMAGE, tag)?;
        std::fs::write(&path, text)?;
        self.git(&["commit", "-qam", &format!("signalling: {IMAGE} {old} -> {tag}")])?;
        seed::git_push(info, &info.git_ci, &self.dir, seed::STACK_B_REPO, "main")?;
        let head = self.head()?;
        println!("pushed commit {} to main: {VALUES}: {IMAGE} tag {old:?} -> {tag:?}", short(&head));
        Ok(head)
    }
}

/// In a values file, the `tag:` of the `image:` block whose `repository:` is `repo` becomes `tag`;
/// returns the new text and the old tag.
fn set_image_tag(text: &str, repo: &str, tag: &str) -> Result<(String, String)> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = lines
        .windows(3)
        .position(|w| {
            w[0].trim() == "image:"
                && w[1].trim() == format!("repository: {repo}")
                && w[2].trim_start().starts_with("tag:")
        })
        .with_context(|| format!("no image block for {repo} in {VALUES}"))?;
    let line = &mut lines[at + 2];
    let indent = &line[..line.len() - line.trim_start().len()];
    let old = line.trim_start().trim_start_matches("tag:").trim().trim_matches('"').to_owned();
    *line = format!("{indent}tag: \"{tag}\"");
    Ok((lines.join("\n") + "\n", old))
}

async fn print_rollback_events(client: &kube::Client) -> Result<()> {
    let events: Api<Event> = Api::namespaced(client.clone(), STORE_NAMESPACE);
    let list = events.list(&ListParams::default().fields("reason=RolledBack")).await?;
    for e in list.items {
        println!(
            "event: {} {}/{}: {} {}",
            e.type_.as_deref().unwrap_or(""),
            e.involved_object.kind.as_deref().unwrap_or(""),
            e.involved_object.name.as_deref().unwrap_or(""),
            e.reason.as_deref().unwrap_or(""),
            e.message.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// The `agent run` child process and its HTTP endpoint.
struct Agent {
    child: Child,
    base: String,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Agent {
    fn start(bin: &Path, cfg: &Path, log: &Path, port: u16, dir: &Path) -> Result<Agent> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = clean_env(Command::new(bin))
            .args(["run", "--config"])
            .arg(cfg)
            .env("GITOPS_AGENT_LOG", "text")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting agent run")?;
        let pid_file = dir.join("agent.pid");
        std::fs::write(&pid_file, child.id().to_string())?;
        Ok(Agent { child, base: format!("http://127.0.0.1:{port}"), log: log.to_path_buf(), pid_file })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, when the agent has exited.
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("agent run exited ({status}); the end of {}:\n{}", self.log.display(), self.log_tail(30));
        }
        Ok(())
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn failed(&self, what: &str, within: Duration, last: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{what} did not happen within {within:?} (last seen: {last}); the end of {}:\n{}",
            self.log.display(),
            self.log_tail(30)
        )
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let url = format!("{}{path}", self.base);
        let mut req = hyper::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let fut = async {
            let resp = client.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .with_context(|| format!("{method} {url}: timed out"))?
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.alive()?;
            let last = match self.request("GET", "/readyz", &[], Vec::new()).await {
                Ok((200, _)) => break,
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                return Err(self.failed("GET /readyz 200", READY_WITHIN, &last));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!("GET {}/readyz: 200 ready (git reached, API server answers)", self.base);
        Ok(())
    }

    /// Polls `/status` until `done` says the bundle is there; prints each new state on the way.
    async fn wait_bundle(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> Result<bool>,
    ) -> Result<Value> {
        println!("waiting for {what} (at most {within:?})");
        let start = Instant::now();
        let mut shown = String::new();
        loop {
            let last;
            self.alive()?;
            match self.request("GET", "/status", &[], Vec::new()).await {
                Ok((200, body)) => {
                    let doc: Value = serde_json::from_str(&body).context("GET /status: not JSON")?;
                    let bundle = doc["bundles"].as_array().and_then(|a| a.iter().find(|b| b["bundle"] == BUNDLE));
                    if let Some(b) = bundle {
                        let seen = format!(
                            "{} (running {}, last {} {})",
                            b["state"].as_str().unwrap_or("?"),
                            b["running"]["commit"].as_str().map_or("-", short),
                            b["last"]["result"].as_str().unwrap_or("-"),
                            b["last"]["commit"].as_str().map_or("-", short),
                        );
                        if seen != shown {
                            println!("  {:>5.1}s  {BUNDLE}: {seen}", start.elapsed().as_secs_f64());
                            shown.clone_from(&seen);
                        }
                        last = seen;
                        if done(b)? {
                            return Ok(b.clone());
                        }
                    } else {
                        last = format!("no bundle {BUNDLE} in /status yet");
                    }
                }
                Ok((code, body)) => last = format!("GET /status: HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("GET /status: {e:#}"),
            }
            if start.elapsed() > within {
                return Err(self.failed(what, within, &last));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// What Gitea sends on a push to the repository: signed with the shared secret.
    async fn gitea_push(&self, info: &EnvInfo, secret: &str, before: &str, after: &str) -> Result<()> {
        use hmac::Mac;
        let url = git_url(info);
        let html = url.trim_end_matches(".git").to_owned();
        let full_name = html.rsplit('/').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("/");
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "repository": {"full_name": full_name, "clone_url": url, "html_url": html},
            "pusher": {"login": info.git_ci.username},
        }))?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).context("HMAC key")?;
        mac.update(&body);
        let mut signature = String::new();
        for b in mac.finalize().into_bytes() {
            let _ = write!(signature, "{b:02x}");
        }
        let headers = [
            ("content-type", "application/json"),
            ("x-gitea-event", "push"),
            ("x-gitea-signature", signature.as_str()),
        ];
        let (status, answer) = self.request("POST", "/webhooks/gitea", &headers, body).await?;
        println!("POST {}/webhooks/gitea (X-Gitea-Event: push, signed): HTTP {status} {}", self.base, answer.trim());
        if status != 202 {
            bail!("the agent did not accept the Gitea webhook: HTTP {status} {answer}");
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        if self.child.try_wait()?.is_none() {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("sending SIGTERM to the agent")?;
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let _ = std::fs::remove_file(&self.pid_file);
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.failed("the agent's exit after SIGTERM", within, "still running"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    /// The demo failed half-way: the agent goes too (SIGTERM, then SIGKILL).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Err(e) = self.stop(STOP_WITHIN) {
                eprintln!("{e:#}");
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            eprintln!("stopped the agent (pid {}); its log: {}", self.child.id(), self.log.display());
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signalling_tag_changes_and_only_it() -> Result<()> {
        let values = "signalling:\n  image:\n    repository: library/u5-signalling\n    tag: \"1.0.0\"\n  \
                      initImage:\n    repository: library/u5-signalling\n    tag: \"1.0.0\"\n";
        let (text, old) = set_image_tag(values, IMAGE, "1.1.1")?;
        assert_eq!(old, "1.0.0");
        assert_eq!(
            text,
            "signalling:\n  image:\n    repository: library/u5-signalling\n    tag: \"1.1.1\"\n  \
             initImage:\n    repository: library/u5-signalling\n    tag: \"1.0.0\"\n"
        );
        Ok(())
    }
}
