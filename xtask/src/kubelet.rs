//! The harness kubelet: KWOK pods run no processes, so an e2e test that needs a real workload
//! (WebSocket sessions that must survive a rollout) starts a [`Kubelet`] for its namespace. For
//! every pod annotated [`HARNESS_KUBELET_ANNOTATION`] it runs one `kiosk-app` (the fixture in
//! `fixtures/kiosk-app`) once the pod is bound to a node (the API server deletes an unbound pod at
//! once, without a grace period), and, when the pod is deleted, does what a kubelet does: the first
//! container's preStop hook (`httpGet` on the app, or `sleep`), SIGTERM, SIGKILL when the grace
//! period is over, then removes the pod (grace 0). KWOK leaves annotated pods alone on deletion
//! (`fixtures/kwok/stages.yaml`). The grace period is counted, as a kubelet does, from when the
//! deletion was seen (`deletionGracePeriodSeconds`): the deletion timestamp has whole seconds only
//! and can be up to 1 s early; the SIGKILL never comes before it.
//!
//! The app gets `--grace` = the pod's `terminationGracePeriodSeconds`, unless the container's
//! `args` (passed to the app) name one. The app counts its grace from SIGTERM, while the pod's
//! grace started at the deletion, before the preStop hook: as with a real kubelet, an app whose
//! own drain budget equals the pod's grace period is killed before it ends; a budget below it
//! (e.g. `args: ["--grace", "3s"]` with a grace period of 6) lets the app close its sessions
//! itself.
//!
//! [`Kubelet::proxy_url`] serves `GET /{pod}/{path}` from that pod's app, so a session probe can
//! read `http://127.0.0.1:PORT/{pod}/metrics`. Waits are driven by the pod watch, process exits
//! and timers to deadlines. The kubelet needs a multi-thread runtime: on drop it kills the apps
//! still running, force-deletes the annotated pods being deleted and removes the annotation from
//! the others, so that KWOK removes them when the namespace goes (a Deployment's replacement pod
//! would otherwise stay terminating for ever). It logs to stderr with a `kubelet:` prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::testenv::HARNESS_KUBELET_ANNOTATION;

/// The `kiosk-app` executable, built once per process (`cargo build -p kiosk-app`).
pub fn kiosk_app_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = crate::paths::cargo()
            .args(["build", "-p", "kiosk-app", "--message-format=json"])
            .output()
            .expect("running cargo build -p kiosk-app");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kiosk-app")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from));
        match bin {
            Some(bin) if out.status.success() => bin,
            _ => panic!(
                "cargo build -p kiosk-app failed ({}):\n{}\n{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    })
    .clone()
}

/// What happened to a pod whose app ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub pod: String,
    /// Unix seconds.
    pub sigterm_at: Option<i64>,
    pub exited_at: i64,
    /// SIGKILLed at the end of the grace period (or because the pod vanished or the kubelet
    /// stopped).
    pub killed: bool,
    /// The app's last stdout line (`drained cleanly`, `grace ended: cut N sessions`, ...).
    pub last_line: String,
    /// The end of the grace period (unix seconds), when the pod was deleted; 0 otherwise: when
    /// the kubelet saw the deletion + `deletionGracePeriodSeconds`, never before the deletion
    /// timestamp (which has whole seconds only, so it can be up to 1 s early).
    pub deadline: i64,
}

/// One app run by the kubelet.
struct App {
    uid: String,
    /// Known once the app printed its address.
    addr: Option<SocketAddr>,
    /// Signals for the task that owns (and reaps) the process.
    signals: mpsc::UnboundedSender<Signal>,
    /// Unix seconds of the exit, once the process was reaped.
    exited: watch::Receiver<Option<i64>>,
    log: Vec<String>,
    ended: Option<Ended>,
}

impl App {
    fn runs(&self) -> bool {
        self.addr.is_some() && self.exited.borrow().is_none()
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

struct Shared {
    namespace: String,
    apps: Mutex<BTreeMap<String, App>>,
    /// Bumped on every change of `apps`, for the waits.
    changed: watch::Sender<u64>,
    /// Set on drop: no new app starts.
    closing: std::sync::atomic::AtomicBool,
    http: Client<HttpConnector, ProxyBody>,
    pods: Api<Pod>,
    bin: PathBuf,
}

impl Shared {
    fn apps(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, App>> {
        self.apps.lock().expect("kubelet state lock poisoned")
    }

    fn update(&self, pod: &str, f: impl FnOnce(&mut App)) {
        if let Some(app) = self.apps().get_mut(pod) {
            f(app);
        }
        self.changed.send_modify(|g| *g += 1);
    }

    fn log(&self, pod: &str, what: &str) {
        eprintln!("kubelet: {}/{pod}: {what}", self.namespace);
    }
}

/// The harness kubelet of one namespace; see the module docs.
pub struct Kubelet {
    shared: Arc<Shared>,
    proxy_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Kubelet {
    /// Acts as the kubelet for the annotated pods of `namespace` from now on (the pod watch is
    /// established when this returns).
    pub async fn start(client: kube::Client, namespace: &str) -> Kubelet {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        assert_eq!(
            flavor,
            tokio::runtime::RuntimeFlavor::MultiThread,
            "the harness kubelet needs a multi-thread runtime (#[tokio::test(flavor = \"multi_thread\")])"
        );
        let bin = tokio::task::spawn_blocking(kiosk_app_bin).await.expect("building kiosk-app");
        let shared = Arc::new(Shared {
            namespace: namespace.to_owned(),
            apps: Mutex::new(BTreeMap::new()),
            changed: watch::Sender::new(0),
            closing: false.into(),
            http: Client::builder(TokioExecutor::new()).build_http(),
            pods: Api::namespaced(client, namespace),
            bin,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the kubelet proxy");
        let proxy_addr = listener.local_addr().expect("proxy address");
        let (synced_tx, synced) = oneshot::channel();
        let tasks = vec![
            tokio::spawn(watch_pods(shared.clone(), synced_tx)),
            tokio::spawn(serve_proxy(listener, shared.clone())),
        ];
        tokio::time::timeout(Duration::from_secs(30), synced)
            .await
            .expect("the kubelet's pod watch did not sync within 30 s")
            .expect("the kubelet's pod watch ended");
        eprintln!("kubelet: {namespace}: watching pods; proxy on http://{proxy_addr}");
        Kubelet { shared, proxy_addr, tasks }
    }

    /// `http://127.0.0.1:PORT`: `GET /{pod}/{path}` answers from that pod's app `/{path}`
    /// (404 naming the pod when unknown, 502 when its app is gone).
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// `GET {proxy_url}{path}` (e.g. `/{pod}/sessions`): status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.proxy_url());
        let req = Request::get(&url).body(empty()).expect("request to the kubelet proxy");
        let fut = async {
            let resp = self.shared.http.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("GET {url}: {e}"),
            Err(_) => panic!("GET {url}: no answer within 10 s"),
        }
    }

    /// Pods whose app runs now.
    pub fn running(&self) -> Vec<String> {
        self.shared.apps().iter().filter(|(_, a)| a.runs()).map(|(p, _)| p.clone()).collect()
    }

    /// Waits until the app of a pod not in `except` runs, and returns that pod's name.
    pub async fn wait_running(&self, except: &[String], timeout: Duration) -> String {
        self.wait(timeout, "a pod's app to run", || self.running().into_iter().find(|p| !except.contains(p))).await
    }

    /// The app's stdout lines so far (empty for an unknown pod).
    pub fn log(&self, pod: &str) -> Vec<String> {
        self.shared.apps().get(pod).map(|a| a.log.clone()).unwrap_or_default()
    }

    /// Waits until the app's stdout has a line containing `text`.
    pub async fn wait_log(&self, pod: &str, text: &str, timeout: Duration) {
        let what = format!("{pod}'s app to print {text:?}");
        self.wait(timeout, &what, || self.log(pod).iter().any(|l| l.contains(text)).then_some(())).await;
    }

    /// Opens a WebSocket session on the pod's app; it stays open until dropped or closed.
    pub async fn open_session(&self, pod: &str) -> Session {
        self.try_open_session(pod).await.unwrap_or_else(|e| panic!("opening a session on {pod}: {e}"))
    }

    /// [`Kubelet::open_session`] that reports a refusal (e.g. `HTTP 503` while draining).
    pub async fn try_open_session(&self, pod: &str) -> Result<Session, String> {
        let addr = self.shared.apps().get(pod).and_then(|a| a.addr).ok_or_else(|| format!("no app for pod {pod}"))?;
        Session::open(&format!("ws://{addr}/ws")).await
    }

    /// What happened to a pod whose app ended; None while it runs (or for an unknown pod).
    pub fn ended(&self, pod: &str) -> Option<Ended> {
        self.shared.apps().get(pod).and_then(|a| a.ended.clone())
    }

    /// Waits until the pod's app ended and the kubelet is done with the pod.
    pub async fn wait_ended(&self, pod: &str, timeout: Duration) -> Ended {
        self.wait(timeout, &format!("{pod}'s app to end"), || self.ended(pod)).await
    }

    async fn wait<T>(&self, timeout: Duration, what: &str, check: impl Fn() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut changed = self.shared.changed.subscribe();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                let apps: Vec<String> = self
                    .shared
                    .apps()
                    .iter()
                    .map(|(p, a)| format!("{p}: runs {}, ended {:?}, log {:?}", a.runs(), a.ended, a.log))
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; apps: {apps:#?}");
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        shared.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut exits = Vec::new();
        for (pod, app) in shared.apps().iter() {
            if app.exited.borrow().is_none() {
                shared.log(pod, "kubelet stopping: SIGKILL to the app");
                let _ = app.signals.send(Signal::SIGKILL);
                exits.push(app.exited.clone());
            }
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            // The kube client lives on this runtime: block in place while it deletes the pods.
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let exited = futures::future::join_all(exits.iter_mut().map(|e| e.wait_for(Option::is_some)));
                    let _ = tokio::time::timeout(Duration::from_secs(10), exited).await;
                    let _ = tokio::time::timeout(Duration::from_secs(20), release_pods(&shared)).await;
                });
            });
        } else {
            eprintln!("kubelet: {}: dropped outside a multi-thread runtime; pods not deleted", shared.namespace);
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// On drop: force-deletes the annotated pods being deleted and hands the others back to KWOK
/// (without the annotation, KWOK removes them when their grace period ends), so a later
/// namespace deletion, or a Deployment's replacement pod, leaves no pod terminating for ever.
async fn release_pods(shared: &Shared) {
    let pods = match shared.pods.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => return eprintln!("kubelet: {}: listing pods to release: {e}", shared.namespace),
    };
    for pod in pods.into_iter().filter(annotated) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            shared.log(&name, "kubelet stopping: deleting the pod (grace 0)");
            delete_now(shared, &name, pod.metadata.uid.as_deref()).await;
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {HARNESS_KUBELET_ANNOTATION: null}}});
        match shared.pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => shared.log(&name, "kubelet stopping: annotation removed, KWOK removes the pod when deleted"),
            Err(e) => shared.log(&name, &format!("kubelet stopping: removing the annotation: {e}")),
        }
    }
}

/// A WebSocket session on a pod's app.
pub struct Session {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    pings: u64,
    /// How the server ended the session, when a ping saw it.
    closed: Option<Option<u16>>,
}

impl Session {
    /// Opens a WebSocket session at `url` (`ws://ADDR/ws`), as a customer's kiosk does; a
    /// refusal is reported (e.g. `HTTP 503` while draining).
    pub async fn open(url: &str) -> Result<Session, String> {
        let connect = tokio_tungstenite::connect_async(url);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => Ok(Session { ws, pings: 0, closed: None }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                Err(format!("HTTP {}", resp.status().as_u16()))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no handshake within 10 s".to_owned()),
        }
    }

    /// Closes the session from the client side (1000) and waits for the close to complete.
    pub async fn close(mut self) {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let done = async {
            let _ = self.ws.close(Some(frame)).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        tokio::time::timeout(Duration::from_secs(10), done).await.expect("the session did not close within 10 s");
    }

    /// Waits until the server ends the session: `Some(close code)`, or None when the connection
    /// dropped without a Close frame. Panics after `timeout`.
    pub async fn closed_by_server(&mut self, timeout: Duration) -> Option<u16> {
        if let Some(closed) = self.closed {
            return closed;
        }
        let ws = &mut self.ws;
        let ended = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        // Reading on sends our Close answer and completes the handshake.
                        while let Some(Ok(_)) = ws.next().await {}
                        return Some(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        };
        let closed = tokio::time::timeout(timeout, ended)
            .await
            .unwrap_or_else(|_| panic!("the server did not end the session within {timeout:?}"));
        self.closed = Some(closed);
        closed
    }

    /// Sends a text and waits (up to 5 s) for its echo: whether the session is alive.
    pub async fn ping(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        self.pings += 1;
        let text = format!("ping {}", self.pings);
        let ws = &mut self.ws;
        let echoed = async {
            ws.send(Message::text(text.clone())).await.map_err(|_| None)?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
                    Some(Ok(Message::Close(frame))) => {
                        while let Some(Ok(_)) = ws.next().await {}
                        return Err(Some(frame.map_or(1005, |f| u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Err(None),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), echoed).await {
            Ok(Ok(())) => true,
            Ok(Err(closed)) => {
                self.closed = Some(closed);
                false
            }
            Err(_) => false,
        }
    }
}

fn annotated(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(HARNESS_KUBELET_ANNOTATION))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Deletes the pod at once (grace 0), only if it is still the one with `uid`.
async fn delete_now(shared: &Shared, pod: &str, uid: Option<&str>) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: uid.map(|u| Preconditions { uid: Some(u.to_owned()), resource_version: None }),
        ..DeleteParams::default()
    };
    match shared.pods.delete(pod, &dp).await {
        Ok(_) => shared.log(pod, "pod deleted (grace 0)"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => shared.log(pod, "pod already gone"),
        Err(e) => shared.log(pod, &format!("deleting the pod: {e}")),
    }
}

/// The pod watch: starts apps, hands each app's task the pod's updates (a closed channel when
/// the pod is gone).
async fn watch_pods(shared: Arc<Shared>, synced: oneshot::Sender<()>) {
    let mut synced = Some(synced);
    let mut updates: BTreeMap<String, watch::Sender<Pod>> = BTreeMap::new();
    let mut listed: Option<BTreeSet<String>> = None;
    let mut events = watcher::watcher(shared.pods.clone(), watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(Event::Apply(pod)) => pod,
            Ok(Event::InitApply(pod)) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(pod.metadata.name.clone().unwrap_or_default());
                }
                pod
            }
            Ok(Event::Delete(pod)) => {
                updates.remove(pod.metadata.name.as_deref().unwrap_or_default());
                continue;
            }
            Ok(Event::Init) => {
                listed = Some(BTreeSet::new());
                continue;
            }
            Ok(Event::InitDone) => {
                // Pods that vanished while the watch was down.
                let listed = listed.take().unwrap_or_default();
                updates.retain(|name, _| listed.contains(name));
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            Err(e) => {
                eprintln!("kubelet: {}: pod watch: {e}", shared.namespace);
                continue;
            }
        };
        if !annotated(&pod) || shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if let Some(tx) = updates.get(&name)
            && tx.borrow().metadata.uid.as_deref() == Some(uid.as_str())
        {
            if tx.receiver_count() > 0 {
                // Its app's task runs: it acts on the update.
                tx.send_replace(pod);
                continue;
            }
            // Its app ended on its own earlier.
            if !deleting {
                continue;
            }
            updates.remove(&name);
        } else if !deleting {
            // Bound to a node: a kubelet runs it (the API server deletes an unbound pod at once,
            // without a grace period).
            let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            let ran = shared.apps().get(&name).is_some_and(|a| a.uid == uid);
            if bound && !ran {
                let (tx, rx) = watch::channel(pod);
                updates.insert(name.clone(), tx);
                start_app(&shared, name, uid, rx);
            }
            continue;
        }
        // Deleted, and no app of it runs: nothing to stop.
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.log(&name, "deleted while no app of it runs");
            delete_now(&shared, &name, Some(&uid)).await;
        });
    }
}

/// Spawns the pod's app and the task that takes it through the pod's life.
fn start_app(shared: &Arc<Shared>, name: String, uid: String, pod: watch::Receiver<Pod>) {
    let (grace, args) = {
        let p = pod.borrow();
        let spec = p.spec.as_ref();
        let grace = spec.and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        let args = spec.and_then(|s| s.containers.first()).and_then(|c| c.args.clone()).unwrap_or_default();
        (grace, args)
    };
    let mut cmd = tokio::process::Command::new(&shared.bin);
    cmd.args(["--listen", "127.0.0.1:0"]);
    if !args.iter().any(|a| a == "--grace" || a.starts_with("--grace=")) {
        cmd.arg("--grace").arg(format!("{grace}s"));
    }
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true);
    let (signals, signals_rx) = mpsc::unbounded_channel();
    let (exited_tx, exited) = watch::channel(None);
    let app = App { uid, addr: None, signals, exited, log: Vec::new(), ended: None };
    shared.apps().insert(name.clone(), app);
    match cmd.spawn() {
        Ok(mut child) => {
            let stdout = child.stdout.take().expect("piped stdout");
            shared.log(&name, &format!("started kiosk-app (pid {:?}, pod grace {grace}s, args {args:?})", child.id()));
            tokio::spawn(supervise(child, signals_rx, exited_tx));
            tokio::spawn(run_pod(shared.clone(), name, pod, stdout));
        }
        Err(e) => {
            shared.log(&name, &format!("starting kiosk-app: {e}"));
            exited_tx.send_replace(Some(unix_now()));
            let ended = Ended {
                pod: name.clone(),
                sigterm_at: None,
                exited_at: unix_now(),
                killed: false,
                last_line: format!("not started: {e}"),
                deadline: 0,
            };
            shared.update(&name, |a| a.ended = Some(ended));
        }
    }
}

/// Owns (and reaps) the app process: signals go through here, so none reaches a reused pid.
async fn supervise(
    mut child: tokio::process::Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exited: watch::Sender<Option<i64>>,
) {
    loop {
        tokio::select! {
            _ = child.wait() => break,
            Some(sig) = signals.recv() => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        }
    }
    exited.send_replace(Some(unix_now()));
}

/// The pod's life: the app's address and log, then deletion -> preStop, SIGTERM, SIGKILL at the
/// deadline, pod removed.
async fn run_pod(
    shared: Arc<Shared>,
    name: String,
    mut pod: watch::Receiver<Pod>,
    stdout: tokio::process::ChildStdout,
) {
    let (signals, mut exited) = {
        let apps = shared.apps();
        let app = apps.get(&name).expect("app entry");
        (app.signals.clone(), app.exited.clone())
    };
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let addr = match &first {
        Ok(Ok(Some(line))) => line.strip_prefix("listening on http://").and_then(|a| a.parse::<SocketAddr>().ok()),
        _ => None,
    };
    let first = match first {
        Ok(Ok(Some(line))) => line,
        other => format!("no first line: {other:?}"),
    };
    shared.log(&name, &format!("app: {first}"));
    shared.update(&name, |a| {
        a.addr = addr;
        a.log.push(first);
    });
    let pump = {
        let (shared, name) = (shared.clone(), name.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                shared.log(&name, &format!("app: {line}"));
                shared.update(&name, |a| a.log.push(line));
            }
        })
    };
    if addr.is_none() {
        let _ = signals.send(Signal::SIGKILL);
    }

    // Until the pod is deleted (or vanishes, or the app ends on its own).
    let deleted = async { pod.wait_for(|p| p.metadata.deletion_timestamp.is_some()).await.map(|p| p.clone()).ok() };
    let deleted = tokio::select! {
        d = deleted => d,
        () = exit(&mut exited) => {
            shared.log(&name, "the app exited while its pod was not being deleted");
            return finish(&shared, &name, pump, None, false, 0).await;
        }
    };
    let Some(deleted) = deleted else {
        shared.log(&name, "the pod is gone: SIGKILL to the app");
        let _ = signals.send(Signal::SIGKILL);
        exit(&mut exited).await;
        return finish(&shared, &name, pump, None, true, 0).await;
    };
    let uid = deleted.metadata.uid.clone();
    let stamp = deleted.metadata.deletion_timestamp.as_ref().expect("deleted").0;
    // The deletion timestamp has whole seconds (up to 1 s before the true end of the grace
    // period): like a kubelet, count the grace period from when the deletion was seen.
    let seen = SystemTime::now();
    let grace = deleted.metadata.deletion_grace_period_seconds.and_then(|g| u64::try_from(g).ok());
    let deadline_at = grace.map_or(SystemTime::from(stamp), |g| (seen + Duration::from_secs(g)).max(stamp.into()));
    let left = deadline_at.duration_since(seen).unwrap_or_default();
    let deadline = Instant::now() + left;
    let deadline_secs = deadline_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    shared.log(
        &name,
        &format!("pod deleted (deletion timestamp {stamp}); SIGKILL in {:.1}s at the latest", left.as_secs_f64()),
    );

    // preStop, within the grace period.
    let hook = deleted
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.clone());
    let pre_stop = async {
        let Some(hook) = hook else { return };
        if let Some(get) = hook.http_get {
            let path = get.path.unwrap_or_else(|| "/".to_owned());
            let Some(addr) = addr else { return };
            let url = format!("http://{addr}{}{path}", if path.starts_with('/') { "" } else { "/" });
            let req = Request::get(&url).body(empty()).expect("preStop request");
            match shared.http.request(req).await {
                Ok(resp) => shared.log(&name, &format!("preStop GET {path}: HTTP {}", resp.status().as_u16())),
                Err(e) => shared.log(&name, &format!("preStop GET {path} failed: {e}")),
            }
        } else if let Some(sleep) = hook.sleep {
            shared.log(&name, &format!("preStop sleep {}s", sleep.seconds));
            tokio::time::sleep(Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0))).await;
        } else {
            shared.log(&name, "preStop: only httpGet and sleep are supported; skipped");
        }
    };
    if tokio::time::timeout_at(deadline, pre_stop).await.is_err() {
        shared.log(&name, "preStop still running at the end of the grace period");
    }

    // SIGTERM, then SIGKILL if the app outlives the deadline.
    shared.log(&name, "SIGTERM to the app");
    let _ = signals.send(Signal::SIGTERM);
    let sigterm_at = unix_now();
    let killed = tokio::select! {
        () = exit(&mut exited) => false,
        () = tokio::time::sleep_until(deadline) => {
            shared.log(&name, "grace period over: SIGKILL to the app");
            let _ = signals.send(Signal::SIGKILL);
            exit(&mut exited).await;
            true
        }
    };
    delete_now(&shared, &name, uid.as_deref()).await;
    finish(&shared, &name, pump, Some(sigterm_at), killed, deadline_secs).await;
}

/// Until the app process was reaped.
async fn exit(exited: &mut watch::Receiver<Option<i64>>) {
    let _ = exited.wait_for(Option::is_some).await;
}

/// Records how the app ended, once its last output is read.
async fn finish(
    shared: &Shared,
    name: &str,
    pump: tokio::task::JoinHandle<()>,
    sigterm_at: Option<i64>,
    killed: bool,
    deadline: i64,
) {
    if tokio::time::timeout(Duration::from_secs(5), pump).await.is_err() {
        shared.log(name, "the app's stdout stayed open after it exited");
    }
    shared.update(name, |a| {
        let ended = Ended {
            pod: name.to_owned(),
            sigterm_at,
            exited_at: a.exited.borrow().unwrap_or_else(unix_now),
            killed,
            last_line: a.log.last().cloned().unwrap_or_default(),
            deadline,
        };
        eprintln!("kubelet: {}/{name}: done: {ended:?}", shared.namespace);
        a.ended = Some(ended);
    });
}

/// The reverse proxy: `GET /{pod}/{path}` -> that pod's app `/{path}`.
async fn serve_proxy(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

async fn proxy(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let answer = |status: StatusCode, msg: String| {
        let mut resp = Response::new(Full::new(Bytes::from(msg)).map_err(|never| match never {}).boxed());
        *resp.status_mut() = status;
        resp
    };
    let path = req.uri().path().trim_start_matches('/');
    let (pod, rest) = path.split_once('/').unwrap_or((path, ""));
    let pod = pod.to_owned();
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let target = match shared.apps().get(&pod) {
        None => return answer(StatusCode::NOT_FOUND, format!("kubelet: no pod {pod} in {}\n", shared.namespace)),
        Some(app) if !app.runs() => {
            return answer(StatusCode::BAD_GATEWAY, format!("kubelet: the app of pod {pod} is not running\n"));
        }
        Some(app) => format!("http://{}/{rest}{query}", app.addr.expect("a running app has an address")),
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = match target.parse() {
        Ok(uri) => uri,
        Err(e) => return answer(StatusCode::BAD_REQUEST, format!("kubelet: {target}: {e}\n")),
    };
    parts.headers.remove(hyper::header::HOST);
    match shared.http.request(Request::from_parts(parts, body.boxed())).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(e) => answer(StatusCode::BAD_GATEWAY, format!("kubelet: the app of pod {pod}: {e}\n")),
    }
}
