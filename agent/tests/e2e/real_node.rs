//! On the testenv's real node (kubelet + containerd): real images pulled with a pull secret, real
//! probes, preStop, SIGTERM and grace periods, real crash loops and pull failures, and the agent's
//! rollouts, drains and rollbacks against them. The pods select and tolerate the node through the
//! bundle's own manifests.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use xtask::env_info::RealNode;
use xtask::images::{Kiosk, push_kiosk};
use xtask::node_support::{LogFollower, PULL_SECRET, placement, pod_routes, pull_secret, real_node};
use xtask::session::Session;
use xtask::support::TestEnv;

use crate::rollout::{App, bundle};
use crate::util::wait_for;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A test's app whose image is the kiosk fixture, in its own registry repository: `1.0.0` and
/// `1.1.0` (the app), `1.2.0-crash` (exits 1 at start); the namespace has the pull secret.
pub(crate) struct KioskApp {
    pub(crate) app: App,
    pub(crate) image: String,
    node: RealNode,
}

/// How the test's Deployment differs between releases.
pub(crate) struct Release<'a> {
    pub(crate) tag: &'a str,
    pub(crate) grace: u32,
    pub(crate) pull_secret: bool,
    pub(crate) ready_path: &'a str,
}

impl Release<'_> {
    pub(crate) fn good(tag: &str) -> Release<'_> {
        Release { tag, grace: 5, pull_secret: true, ready_path: "/ready" }
    }
}

impl KioskApp {
    pub(crate) async fn new(env: &'static TestEnv, hint: &str) -> KioskApp {
        let node = real_node(&env.info).clone();
        let app = App::new(env, hint).await;
        let repo = format!("{}-kiosk", app.image_repo);
        std::thread::scope(|s| {
            for (tag, kind) in [("1.0.0", Kiosk::App), ("1.1.0", Kiosk::App), ("1.2.0-crash", Kiosk::CrashAtStart)] {
                let repo = repo.clone();
                s.spawn(move || push_kiosk(&env.info, &repo, tag, kind).expect("pushing a kiosk image"));
            }
        });
        pull_secret(&env.client().await, &env.info, &app.ns.name).await.unwrap();
        let image = format!("{}/{repo}", env.info.registry);
        KioskApp { app, image, node }
    }

    fn deployment(&self, r: &Release) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    \
             matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      \
             terminationGracePeriodSeconds: {grace}\n{placement}{secret}      containers:\n      - name: web\n        \
             image: {image}:{tag}\n        ports:\n        - containerPort: 8080\n        readinessProbe:\n          \
             httpGet: {{path: {ready}, port: 8080}}\n          periodSeconds: 1\n",
            grace = r.grace,
            placement = placement(&self.node, 6),
            secret = if r.pull_secret {
                format!("      imagePullSecrets: [{{name: {PULL_SECRET}}}]\n")
            } else {
                String::new()
            },
            image = self.image,
            tag = r.tag,
            ready = r.ready_path,
        )
    }

    pub(crate) fn release(&self, env: &TestEnv, fleet: &str, r: &Release, message: &str) {
        self.app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {}\n{fleet}", self.app.ns.name));
        self.app.write("apps/web/deployment.yaml", &self.deployment(r));
        self.app.commit(env, message);
    }

    /// `agent reconcile --once` on a blocking thread, so the test can act while it runs.
    fn reconcile_in_background(&self) -> tokio::task::JoinHandle<(Option<i32>, Value, String)> {
        let config = self.app.config.to_str().unwrap().to_owned();
        tokio::task::spawn_blocking(move || {
            let out = crate::rollout::agent(&["reconcile", "--once", "-c", &config, "-o", "json"]);
            let doc =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", crate::rollout::text(&out)));
            (out.status.code(), doc, crate::rollout::text(&out))
        })
    }

    async fn pods(&self, env: &TestEnv) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(env.client().await, &self.app.ns.name);
        api.list(&ListParams::default().labels("app=web")).await.unwrap().items
    }

    /// The one Ready pod not in `except`, on the real node: (name, IP).
    pub(crate) async fn ready_pod(&self, env: &TestEnv, except: &[String]) -> (String, String) {
        wait_for("a Ready pod on the real node", Duration::from_secs(60), || async {
            let pods = self.pods(env).await;
            pods.iter()
                .filter(|p| {
                    !except.contains(p.metadata.name.as_ref().unwrap()) && p.metadata.deletion_timestamp.is_none()
                })
                .find(|p| ready(p))
                .map(|p| {
                    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some(self.node.name.as_str()));
                    (p.metadata.name.clone().unwrap(), p.status.as_ref().unwrap().pod_ip.clone().unwrap())
                })
                .ok_or_else(|| format!("{:?}", pods.iter().map(summary).collect::<Vec<_>>()))
        })
        .await
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn summary(p: &Pod) -> Value {
    let s = serde_json::to_value(p.status.as_ref()).unwrap();
    json!({"pod": p.metadata.name, "phase": s["phase"], "containers": s["containerStatuses"]})
}

/// The first container's waiting reason and message.
fn waiting(p: &Pod) -> Option<(String, String)> {
    let s = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.as_ref()?;
    Some((s.reason.clone()?, s.message.clone().unwrap_or_default()))
}

fn drain_policy(window: &str, sessions_path: &str, read: &str, pre_stop: bool) -> String {
    let pre_stop = if pre_stop { "    preStop:\n      httpGet: {path: /drain, port: 8080}\n" } else { "" };
    format!(
        "gitopsAgent:\n  drain:\n  - workload: web\n    window: {window}\n    sessions:\n      \
         url: 'http://{{podIP}}:8080{sessions_path}'\n      {read}\n      interval: 1s\n{pre_stop}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_kiosk_image_runs_on_the_real_node_with_a_pull_secret_and_the_host_reaches_its_pod_ip() {
    let env = TestEnv::get();
    let node = real_node(&env.info).clone();
    let ns = env.namespace("real-pod").await;
    let client = env.client().await;
    pull_secret(&client, &env.info, &ns.name).await.unwrap();
    let repo = env.registry_repo("real-pod");
    push_kiosk(&env.info, &repo, "1.0.0", Kiosk::App).unwrap();
    push_kiosk(&env.info, &repo, "1.0.0-crash", Kiosk::CrashAtStart).unwrap();
    // Its own tag, never pulled on the node: a cached image would run without any credentials.
    push_kiosk(&env.info, &repo, "1.0.1", Kiosk::App).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = |name: &str, tag: &str, secret: bool| -> Pod {
        let mut spec = json!({
            "nodeSelector": {node.label_key.clone(): node.label_value},
            "tolerations": [{"key": node.taint_key, "operator": "Equal", "value": node.taint_value, "effect": "NoSchedule"}],
            "containers": [{
                "name": "kiosk",
                "image": format!("{}/{repo}:{tag}", env.info.registry),
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
            }],
        });
        if secret {
            spec["imagePullSecrets"] = json!([{"name": PULL_SECRET}]);
        }
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}))
            .unwrap()
    };

    // Pulled over TLS with the pull secret (containerd holds no registry credentials), Ready by
    // its readiness probe.
    let created = Instant::now();
    pods.create(&PostParams::default(), &pod("kiosk", "1.0.0", true)).await.unwrap();
    let p = wait_for("the kiosk pod Ready", Duration::from_secs(60), || async {
        let p = pods.get("kiosk").await.map_err(|e| e.to_string())?;
        if ready(&p) { Ok(p) } else { Err(format!("{:#}", summary(&p))) }
    })
    .await;
    eprintln!("pod create -> Ready in {:.1}s (fresh pull)", created.elapsed().as_secs_f64());
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some(node.name.as_str()));
    let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(ip.starts_with("10.254.1."), "an address of the pod subnet {}: {ip}", node.pod_subnet);

    // The host reaches the pod's IP; the pod has no default route.
    let (status, body) = get(&format!("http://{ip}:8080/health")).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "ok"})));
    let (status, body) = get(&format!("http://{ip}:8080/metrics")).await;
    assert!(status == 200 && body.contains("kiosk_active_sessions 0\n"), "HTTP {status}: {body}");
    let routes = pod_routes(&ip).unwrap();
    assert!(!routes.is_empty() && routes.iter().all(|r| !r.starts_with("default")), "no default route: {routes:?}");
    assert!(routes.iter().any(|r| r.starts_with(&node.pod_subnet)), "{routes:?}");

    // `kubectl logs` through the API server (which reaches the kubelet at the node's InternalIP).
    let logs = pods.logs("kiosk", &Default::default()).await.unwrap();
    assert!(logs.starts_with("listening on http://0.0.0.0:8080"), "{logs}");

    // Without the pull secret the registry refuses the pull: ErrImagePull, then ImagePullBackOff.
    pods.create(&PostParams::default(), &pod("no-secret", "1.0.1", false)).await.unwrap();
    let (reason, message) = wait_for("the pull to fail", Duration::from_secs(60), || async {
        let p = pods.get("no-secret").await.map_err(|e| e.to_string())?;
        waiting(&p).filter(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff").ok_or(format!("{:#}", summary(&p)))
    })
    .await;
    assert!(message.contains("pull access denied") && message.contains("authorization failed"), "{reason}: {message}");

    // The crash variant really exits 1, and the kubelet backs off restarting it.
    pods.create(&PostParams::default(), &pod("crash", "1.0.0-crash", true)).await.unwrap();
    let p = wait_for("CrashLoopBackOff", Duration::from_secs(60), || async {
        let p = pods.get("crash").await.map_err(|e| e.to_string())?;
        match waiting(&p) {
            Some((r, _)) if r == "CrashLoopBackOff" => Ok(p),
            _ => Err(format!("{:#}", summary(&p))),
        }
    })
    .await;
    let status = &p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
    let last = status.last_state.as_ref().and_then(|s| s.terminated.as_ref()).expect("a terminated last state");
    assert_eq!(last.exit_code, 1, "{status:?}");
    assert!(status.restart_count >= 1 && !status.ready, "{status:?}");
}

/// A plain-HTTP GET from the host to a pod (HTTP/1.0: the answer ends with the connection).
async fn get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, path) = url.strip_prefix("http://").and_then(|r| r.split_once('/')).unwrap();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .unwrap_or_else(|_| panic!("connecting to {host} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    conn.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut reply)).await.unwrap().unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_real_node_a_customer_session_survives_the_rollout_and_the_old_pod_drains_cleanly() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-drain").await;
    let policy = drain_policy("30s", "/metrics", "gauge: kiosk_active_sessions", true);
    k.release(env, &policy, &Release::good("1.0.0"), "the kiosk on the real node, with a drain policy");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let (old, old_ip) = k.ready_pod(env, &[]).await;
    let log = LogFollower::start(&env.client().await, &k.app.ns.name, &old);
    let mut session = Session::open(&format!("ws://{old_ip}:8080/ws")).await.unwrap();
    assert!(session.ping().await);

    // A new release while the customer talks: the new pod starts, the old one gets the real
    // preStop (GET /drain), then SIGTERM, and keeps serving the open session.
    k.release(env, &policy, &Release::good("1.1.0"), "web 1.1.0");
    let reconcile = k.reconcile_in_background();
    let sigterm = log.wait_line("SIGTERM: draining, 1 sessions active", Duration::from_secs(60)).await.unwrap();
    let texts = log.texts();
    let pre_stop = texts.iter().position(|l| l.starts_with("draining (GET /drain)"));
    let term = texts.iter().position(|l| l.starts_with("SIGTERM"));
    assert!(pre_stop.is_some() && pre_stop < term, "preStop, then SIGTERM: {texts:#?}");
    let (new, _) = k.ready_pod(env, std::slice::from_ref(&old)).await;
    assert_ne!(new, old);
    assert!(session.ping().await, "the customer's session lives through the rollout");
    assert_eq!(Session::open(&format!("ws://{old_ip}:8080/ws")).await.err().as_deref(), Some("HTTP 503"));
    assert!(!reconcile.is_finished(), "the agent follows the drain while a session is open");

    // The conversation ends: the old pod's app exits by itself, well before its grace period.
    session.close().await;
    let lines = log.wait_done(Duration::from_secs(30)).await.unwrap();
    let last = lines.last().unwrap();
    assert_eq!(last.text, "drained cleanly", "{lines:#?}");
    assert!(last.at - sigterm.at < 25.0, "exited before the 30 s window: {lines:#?}");
    let (code, doc, human) = reconcile.await.unwrap();
    let web = bundle(&doc, "web");
    assert_eq!((code, web["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert!(web["message"].as_str().unwrap().contains("drained cleanly (1 pod)"), "{human}");
    assert!(k.app.deployment_image(env).await.starts_with(&format!("{}:1.1.0@sha256:", k.image)));
    let ev = crate::util::event(env, &k.app.ns.name, "DrainedCleanly").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_real_node_a_session_held_past_the_window_is_cut_when_the_grace_period_ends_and_reported() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-cut").await;
    // The app would wait 30 s (its own default grace) for the session; the window is 6 s.
    let policy = drain_policy("6s", "/sessions", "jsonPointer: /active", false);
    k.release(env, &policy, &Release::good("1.0.0"), "the kiosk with a short drain window");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let (old, old_ip) = k.ready_pod(env, &[]).await;
    let log = LogFollower::start(&env.client().await, &k.app.ns.name, &old);
    let mut session = Session::open(&format!("ws://{old_ip}:8080/ws")).await.unwrap();
    assert!(session.ping().await);

    k.release(env, &policy, &Release::good("1.1.0"), "web 1.1.0");
    let reconcile = k.reconcile_in_background();
    let sigterm = log.wait_line("SIGTERM: draining, 1 sessions active", Duration::from_secs(60)).await.unwrap();
    // The kubelet's SIGKILL at the end of the grace period drops the session (no Close frame).
    let closed = session.closed_by_server(Duration::from_secs(30)).await;
    let cut_at = now();
    assert_eq!(closed, None, "the app was killed, so it sent no Close");
    assert!(cut_at - sigterm.at >= 5.0, "cut {:.1}s after SIGTERM, before the 6 s grace period", cut_at - sigterm.at);
    let lines = log.wait_done(Duration::from_secs(30)).await.unwrap();
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.last().unwrap().starts_with("SIGTERM: draining, 1 sessions active"), "killed mid-drain: {texts:#?}");

    let (code, doc, human) = reconcile.await.unwrap();
    let web = bundle(&doc, "web");
    assert_eq!((code, web["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let drain = &web["drains"][0];
    assert_eq!((drain["cut"].as_u64(), drain["clean"].as_bool()), (Some(1), Some(false)), "{web:#}");
    assert!(web["message"].as_str().unwrap().contains("1 session cut at window end"), "{web:#}");
    let ev = crate::util::event(env, &k.app.ns.name, "SessionsCut").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_node_a_release_that_really_crash_loops_is_rolled_back() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-crash").await;
    k.release(env, "", &Release::good("1.0.0"), "the kiosk");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let good = k.app.deployment_image(env).await;
    let (first, _) = k.ready_pod(env, &[]).await;

    k.release(env, "", &Release::good("1.2.0-crash"), "web 1.2.0-crash");
    let started = Instant::now();
    let (code, doc, human) = k.app.reconcile(&[]);
    let took = started.elapsed();
    let web = bundle(&doc, "web");
    assert_eq!((code, web["result"].as_str()), (Some(3), Some("rolledBack")), "{human}");
    assert!(web["message"].as_str().unwrap().contains("CrashLoopBackOff"), "{human}");
    assert!(took < Duration::from_secs(60), "rolled back in {took:?}");
    assert_eq!(k.app.deployment_image(env).await, good, "the last-known-good runs again");
    let (running, _) = k.ready_pod(env, &[]).await;
    assert_eq!(running, first, "the good pod was never replaced (surge first)");
    let ev = crate::util::event(env, &k.app.ns.name, "RolledBack").await;
    assert!(ev.note.as_deref().unwrap().contains("CrashLoopBackOff"), "{:?}", ev.note);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_node_a_release_whose_pods_cannot_pull_is_rolled_back_fast() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-pull").await;
    k.release(env, "", &Release::good("1.0.0"), "the kiosk");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let good = k.app.deployment_image(env).await;

    // The image exists (the agent's preflight finds it) but the release lost its pull secret:
    // the registry refuses the node's pull.
    k.release(env, "", &Release { pull_secret: false, ..Release::good("1.1.0") }, "web 1.1.0, no pull secret");
    let started = Instant::now();
    let (code, doc, human) = k.app.reconcile(&[]);
    let took = started.elapsed();
    let web = bundle(&doc, "web");
    assert_eq!((code, web["result"].as_str()), (Some(3), Some("rolledBack")), "{human}");
    let message = web["message"].as_str().unwrap();
    assert!(message.contains("ErrImagePull") || message.contains("ImagePullBackOff"), "{human}");
    assert!(took < Duration::from_secs(60), "failed fast: {took:?}");
    assert_eq!(k.app.deployment_image(env).await, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_node_a_readiness_probe_that_never_passes_ends_at_the_progress_deadline() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-unready").await;
    let fleet = "gitopsAgent:\n  progressDeadline: 8s\n";
    k.release(env, fleet, &Release::good("1.0.0"), "the kiosk");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let good = k.app.deployment_image(env).await;

    // The new release probes a path the app does not serve: running, never Ready.
    k.release(env, fleet, &Release { ready_path: "/not-served", ..Release::good("1.1.0") }, "web 1.1.0, bad probe");
    let started = Instant::now();
    let (code, doc, human) = k.app.reconcile(&[]);
    let took = started.elapsed();
    let web = bundle(&doc, "web");
    assert_eq!((code, web["result"].as_str()), (Some(3), Some("rolledBack")), "{human}");
    assert!(web["message"].as_str().unwrap().contains("progress deadline"), "{human}");
    // The agent counts the deadline in whole seconds of its clock: it may end up to 1 s early.
    assert!(took >= Duration::from_secs(7) && took < Duration::from_secs(40), "ended at the deadline: {took:?}");
    assert_eq!(k.app.deployment_image(env).await, good);
}

#[test]
fn a_second_instance_that_wants_the_real_node_is_refused_naming_the_holder_and_starts_nothing() {
    let env = TestEnv::get();
    real_node(&env.info);
    let dir = tempfile::tempdir().unwrap();
    let base = crate::util::free_port_block(9).to_string();
    let vars = [
        ("GITOPS_TESTENV_DIR", dir.path().to_str().unwrap()),
        ("GITOPS_TESTENV_PORT_BASE", base.as_str()),
        ("GITOPS_TESTENV_REAL_NODE", "1"),
    ];
    let (ok, out) = crate::util::xtask(&["testenv", "up"], &vars);
    assert!(!ok, "{out}");
    let holder = env.info.run_dir.display().to_string();
    assert!(out.contains("the real node is held by the testenv at") && out.contains(&holder), "{out}");
    assert!(out.contains("GITOPS_TESTENV_REAL_NODE=0"), "says how to do without: {out}");
    let pids = dir.path().join("pids");
    let started: Vec<_> = std::fs::read_dir(&pids).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(started.is_empty(), "nothing started: {started:?}");
}

/// Run alone by `cargo xtask test` once the parallel suite is done (it stops the testenv's real
/// node under everyone's feet): `down` restores the host as `up` recorded it, checked here
/// independently of `down`'s own checks, `down` twice is harmless, and a second `up` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the shared testenv: run alone, after the suite (cargo xtask test does)"]
async fn down_undoes_every_host_change_of_the_real_node_and_a_second_up_works() {
    use std::collections::BTreeSet;
    let env = TestEnv::get();
    let node = real_node(&env.info).clone();
    let run = env.info.run_dir.clone();
    // A running pod, so there are containers, shims, mounts and a network namespace to undo.
    let ns = env.namespace("real-down").await;
    let client = env.client().await;
    pull_secret(&client, &env.info, &ns.name).await.unwrap();
    let repo = env.registry_repo("real-down");
    push_kiosk(&env.info, &repo, "1.0.0", Kiosk::App).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kiosk"},
        "spec": {
            "nodeSelector": {node.label_key.clone(): node.label_value},
            "tolerations": [{"key": node.taint_key, "operator": "Exists"}],
            "imagePullSecrets": [{"name": PULL_SECRET}],
            "containers": [{"name": "kiosk", "image": format!("{}/{repo}:1.0.0", env.info.registry)}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_for("the pod running", Duration::from_secs(60), || async {
        let p = pods.get("kiosk").await.map_err(|e| e.to_string())?;
        if ready(&p) { Ok(()) } else { Err(format!("{:#}", summary(&p))) }
    })
    .await;

    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(xtask::node::record_path(&run)).unwrap()).unwrap();
    let pid_of = |name: &str| -> i32 {
        let text = std::fs::read_to_string(run.join(format!("pids/{name}.pid"))).unwrap();
        text.lines().next().unwrap().parse().unwrap()
    };
    let socket = node.containerd_socket.display().to_string();
    let mut pids: Vec<i32> = vec![pid_of("kubelet"), pid_of("containerd")];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default()).into_owned();
        if cmdline.contains(&socket) {
            pids.push(pid);
        }
    }
    assert!(pids.len() >= 3, "the kubelet, containerd and at least one shim: {pids:?}");
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"))
    };
    let mounts = || -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&run.display().to_string()) || m.starts_with("/run/netns/"))
            .collect()
    };
    assert!(!mounts().is_empty(), "the pod's mounts are there before down");
    let chains = |prog: &str, table: &str| -> BTreeSet<String> {
        let out = std::process::Command::new(prog).args(["-w", "-t", table, "-S"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("-N ").or_else(|| l.strip_prefix("-P ")))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };

    let (ok, out) = crate::util::xtask(&["testenv", "down"], &[]);
    assert!(ok, "{out}");
    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of the node still run: {left:?}");
    assert_eq!(mounts(), Vec::<String>::new(), "no mount under the run dir or /run/netns");
    assert!(!std::path::Path::new("/sys/class/net/gitops-br0").exists(), "the bridge is gone");
    let lo = std::process::Command::new("ip").args(["-o", "addr", "show", "dev", "lo"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&lo.stdout).contains(&node.ip), "the lo alias is gone");
    for (key, before) in record["chains"].as_object().unwrap() {
        let (family, table) = key.split_once(':').unwrap();
        let now = chains(if family == "6" { "ip6tables" } else { "iptables" }, table);
        let before: BTreeSet<String> =
            before.as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
        assert_eq!(now, before, "{key} chains as before up");
    }
    let sysctls = record["sysctls"].as_object().unwrap();
    assert!(sysctls.contains_key("vm/overcommit_memory") && sysctls.contains_key("net/ipv4/ip_forward"));
    for (name, before) in sysctls {
        let now = std::fs::read_to_string(format!("/proc/sys/{name}")).unwrap();
        assert_eq!(now.trim(), before.as_str().unwrap(), "sysctl {name} restored");
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let kubepods = controller.path().join("kubepods");
        let recorded = record["cgroups"].as_array().unwrap().iter().any(|c| c == &kubepods.display().to_string());
        assert!(recorded || !kubepods.exists(), "{} removed", kubepods.display());
    }
    for (path, before) in record["fixed"].as_object().unwrap() {
        if before.is_null() {
            assert!(!std::path::Path::new(path).exists(), "{path} did not exist before up, and is gone");
        }
    }
    assert!(!std::path::Path::new("/run/gitops-agent-testenv-real-node.json").exists(), "the claim is released");

    let (ok, out) = crate::util::xtask(&["testenv", "down"], &[]);
    assert!(ok && out.contains("nothing was running"), "down twice is harmless: {out}");
    let (mut ok, mut out) = crate::util::xtask(&["testenv", "up"], &[]);
    if !ok && out.contains("Address already in use") {
        // The testenv's ports lie in Linux's ephemeral range: between down and up, another
        // process's outgoing connection may take one for a moment. `up` failed cleanly, naming
        // the port; an operator runs it again, and so does this test (once).
        eprintln!("up found a port taken, trying once more: {out}");
        (ok, out) = crate::util::xtask(&["testenv", "up"], &[]);
    }
    assert!(ok, "a second up works: {out}");
    let (ok, out) = crate::util::xtask(&["testenv", "status"], &[]);
    assert!(ok && out.contains(&format!("{} Ready", node.name)), "{out}");
}

/// Pre-pull on the real node (docs/prepull.md): while a closed window holds a large release
/// (256 MiB), the agent's pre-pull pod (helper: the agent's own image, built and pushed as CI
/// does) pulls it with the bundle's pull secret; containerd holds the image before the window
/// opens, and the rollout's pod then starts without pulling (kubelet: "already present on
/// machine", no `Pulling`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_node_a_pre_pulled_image_is_there_before_the_window_opens_and_the_rollout_pulls_nothing() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-prepull").await;
    k.release(env, "", &Release::good("1.0.0"), "the kiosk 1.0.0");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let (old, _) = k.ready_pod(env, &[]).await;

    // CI: the agent's image, the helper of the pre-pull pods.
    let home = tempfile::tempdir().unwrap();
    let inputs = xtask::agent_image::inputs(Some("https://git.example.invalid/gitops-agent")).unwrap();
    let built = xtask::agent_image::build(&inputs, &home.path().join("image")).unwrap();
    let helper_repo = format!("{}-agent", k.app.image_repo);
    xtask::images::push_layout(&env.info, &built.dir, &built.tag, &format!("{helper_repo}:{}", built.tag)).unwrap();
    let helper = format!("{}/{helper_repo}:{}", env.info.registry, built.tag);

    // The agent is the real node's, the window closes, pre-pull is on.
    let always_deny = "rollout:\n  windows:\n  - kind: deny\n    schedule: \"0 0 * * *\"\n    duration: 24h\n ";
    k.app.edit_config(&format!("nodeName: {}\n", env.info.node_name), &format!("nodeName: {}\n", k.node.name));
    k.app.edit_config("rollout:\n ", always_deny);
    let mut config = std::fs::read_to_string(&k.app.config).unwrap();
    config.push_str(&format!("prepull:\n  helperImage: {helper}\n  timeout: 5m\n"));
    std::fs::write(&k.app.config, config).unwrap();
    // The new release is a large image (as a GPU app's is): 256 MiB that cannot be compressed.
    let large = "2.0.0-large";
    xtask::images::push_large_kiosk(&env.info, &format!("{}-kiosk", k.app.image_repo), large, 256).unwrap();
    k.release(env, "", &Release::good(large), "the kiosk 2.0.0, a large image");

    // Each reconcile is one pre-pull step: until the image is pulled.
    let pulled = wait_for("2.0.0-large pre-pulled", Duration::from_secs(300), || async {
        let (code, doc, human) = k.app.reconcile(&[]);
        let web = bundle(&doc, "web").clone();
        assert_eq!((code, web["result"].as_str()), (Some(3), Some("blocked")), "{human}");
        if web["prepull"]["pulled"] == 1 && web["prepull"]["images"] == 1 { Ok(web) } else { Err(human) }
    })
    .await;
    assert!(pulled["message"].as_str().unwrap().starts_with("deferred: inside deny window"), "{pulled:#}");
    assert!(k.app.deployment_image(env).await.starts_with(&format!("{}:1.0.0@sha256:", k.image)), "still 1.0.0");

    // The pre-pull pod: on the real node, ended Succeeded (the app never started), and the
    // kubelet reports the pinned digest as its image.
    // (The kubelet reports the container's image as soon as it exists; the pod's phase follows
    // when the no-op has exited.)
    let pods: Api<Pod> = Api::namespaced(env.client().await, &k.app.ns.name);
    let pp = wait_for("the pre-pull pod Succeeded", Duration::from_secs(60), || async {
        let pp = pods.list(&ListParams::default().labels("gitops-agent.io/prepull=true")).await.unwrap().items;
        let done = pp.len() == 1 && pp[0].status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
        if done { Ok(pp) } else { Err(format!("{:?}", pp.iter().map(summary).collect::<Vec<_>>())) }
    })
    .await;
    let spec = pp[0].spec.as_ref().unwrap();
    let wanted = spec.containers[0].image.clone().unwrap();
    assert!(wanted.starts_with(&format!("{}:{large}@sha256:", k.image)), "{wanted}");
    assert_eq!(spec.node_name.as_deref(), Some(k.node.name.as_str()));
    let status = pp[0].status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "{:#}", summary(&pp[0]));
    let digest = wanted.split_once('@').unwrap().1;
    let image_id = status.container_statuses.as_ref().unwrap()[0].image_id.clone();
    assert!(image_id.ends_with(digest), "{image_id} is {digest}");

    // containerd holds it before the window opens.
    let by_digest = format!("{}@{digest}", k.image);
    let out = std::process::Command::new("ctr")
        .args(["--address", k.node.containerd_socket.to_str().unwrap(), "-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listed.lines().any(|l| l == by_digest), "{by_digest} in containerd:\n{listed}");

    // The window opens: the rollout starts, the pre-pull pod goes, and the new pod pulls nothing.
    k.app.edit_config(always_deny, "rollout:\n ");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert!(human.contains("pre-pull: 1 pod(s) deleted"), "{human}");
    let (new, _) = k.ready_pod(env, std::slice::from_ref(&old)).await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(env.client().await, &k.app.ns.name);
    let about = ListParams::default().fields(&format!("involvedObject.name={new}"));
    let seen = wait_for("the new pod's Pulled event", Duration::from_secs(30), || async {
        let list = events.list(&about).await.unwrap().items;
        let lines: Vec<(String, String)> = list
            .iter()
            .map(|e| (e.reason.clone().unwrap_or_default(), e.message.clone().unwrap_or_default()))
            .collect();
        if lines.iter().any(|(r, _)| r == "Pulled") { Ok(lines) } else { Err(format!("{lines:?}")) }
    })
    .await;
    assert!(!seen.iter().any(|(r, _)| r == "Pulling"), "no pull at the rollout: {seen:?}");
    let pulled = seen.iter().find(|(r, _)| r == "Pulled").unwrap();
    assert!(pulled.1.contains("already present on machine"), "{seen:?}");
    wait_for("the pre-pull pod gone", Duration::from_secs(30), || async {
        let left = pods.list(&ListParams::default().labels("gitops-agent.io/prepull=true")).await.unwrap().items;
        if left.is_empty() { Ok(()) } else { Err(format!("{}", left.len())) }
    })
    .await;
}

/// A second testenv on the host (the suite starts throwaway ones; so does every engineer's own)
/// leaves the real node's pods alone: its `up` and `down` never kill the processes of a node it
/// does not hold. The kiosk's pod keeps its container, its IP and its open session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_testenv_s_up_and_down_leave_the_real_node_s_pods_running() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "real-second-env").await;
    k.release(env, "", &Release::good("1.0.0"), "the kiosk 1.0.0");
    let (code, doc, human) = k.app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let (name, ip) = k.ready_pod(env, &[]).await;
    let container = |p: &Pod| {
        let s = p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
        s.first().map(|c| (c.container_id.clone(), c.restart_count)).unwrap_or_default()
    };
    let pods: Api<Pod> = Api::namespaced(env.client().await, &k.app.ns.name);
    let before = container(&pods.get(&name).await.unwrap());
    let mut session = Session::open(&format!("ws://{ip}:8080/ws")).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let base = crate::util::free_port_block(9).to_string();
    let second = [
        ("GITOPS_TESTENV_DIR", dir.path().to_str().unwrap()),
        ("GITOPS_TESTENV_PORT_BASE", base.as_str()),
        ("GITOPS_TESTENV_REAL_NODE", "0"),
    ];
    for verb in ["up", "down"] {
        let (ok, out) = crate::util::xtask(&["testenv", verb], &second);
        assert!(ok, "the second testenv's {verb}: {out}");
    }

    let after = pods.get(&name).await.unwrap();
    assert_eq!(container(&after), before, "the same container, never restarted");
    assert_eq!(after.status.as_ref().and_then(|s| s.pod_ip.clone()), Some(ip), "the same sandbox and IP");
    assert!(session.ping().await, "the customer's session is untouched");
}
