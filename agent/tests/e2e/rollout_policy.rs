//! `agent reconcile --once` and the bundle's rollout policy against the testenv: health probes
//! during the verification window, an API server outage mid-rollout (through a fault proxy),
//! image-pull failures retried with backoff, pruning, the blast radius, `dependsOn`, and fields an
//! HPA owns. Each test has its own namespace, git repo, registry repository and agent identity.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use xtask::support::TestEnv;

use crate::rollout::{App, DEPLOYMENT, bundle};
use crate::util::wait_for;

/// An HTTP server standing in for the app's `/health`: answers every GET with `status`, and
/// records the paths asked for.
struct HealthServer {
    port: u16,
    status: Arc<AtomicU16>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl HealthServer {
    fn start() -> HealthServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(200));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (status.clone(), paths.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                // The rest of the head, up to the blank line.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                p.lock().unwrap().push(first.split(' ').nth(1).unwrap_or_default().to_owned());
                let code = s.load(Ordering::SeqCst);
                let _ = write!(conn, "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        HealthServer { port, status, paths }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

async fn pod_names(env: &TestEnv, ns: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(env.client().await, ns);
    pods.list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_probe_during_verification_rolls_back() {
    let env = TestEnv::get();
    let app = App::new(env, "probe").await;
    let ns = app.ns.name.clone();
    let server = HealthServer::start();
    let fleet = |workload: &str| {
        format!(
            "defaultNamespace: {ns}\ngitopsAgent:\n  verifyWindow: 3s\n  healthProbes:\n  - workload: {workload}\n    \
             url: 'http://127.0.0.1:{port}/health/{{namespace}}/{{pod}}'\n    interval: 1s\n    failureThreshold: 2\n",
            port = server.port
        )
    };
    app.write("apps/web/fleet.yaml", &fleet("web"));
    app.commit(env, "a health probe");

    // Green: the rollout is verified, and the probe really called the running pod.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let good_image = app.deployment_image(env).await;
    let first_pods = pod_names(env, &ns).await;
    let called = server.paths();
    assert!(
        first_pods.iter().any(|p| called.contains(&format!("/health/{ns}/{p}"))),
        "the probe called a pod of the rollout: {called:?} (pods {first_pods:?})"
    );

    // Red: the new version's pods become ready, but their /health fails: rolled back.
    server.status.store(503, Ordering::SeqCst);
    app.set_tag("1.1.0");
    app.commit(env, "bump to 1.1.0");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "rolledBack", "{human}");
    let message = b["message"].as_str().unwrap();
    assert!(message.contains("health probe") && message.contains("failed 2 times in a row: HTTP 503"), "{human}");
    assert_eq!(app.deployment_image(env).await, good_image, "the last-known-good runs again");
    let new_pod_called = server
        .paths()
        .iter()
        .any(|p| p.starts_with(&format!("/health/{ns}/")) && !first_pods.iter().any(|f| p.ends_with(&format!("/{f}"))));
    assert!(new_pod_called, "the new revision's pod was probed: {:?}", server.paths());
    let record = app.secret_record(env).await;
    assert!(record["quarantine"]["reason"].as_str().unwrap().contains("HTTP 503"), "{record}");

    // A probe naming no workload of the bundle is a clear error, before anything is applied.
    app.write("apps/web/fleet.yaml", &fleet("wbe"));
    app.commit(env, "a typo");
    let before = app.writes(env).await;
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "blocked");
    assert!(b["message"].as_str().unwrap().contains("workload \"wbe\": no such workload in the bundle"), "{human}");
    assert_eq!(app.writes(env).await, before, "nothing applied");
}

/// `agent reconcile --once` started in the background, its stderr lines sent as they come.
pub(crate) fn spawn_reconcile(app: &App) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["reconcile", "--once", "-c", app.config.to_str().unwrap(), "-o", "json"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `words`; returns the lines seen until then.
pub(crate) fn expect_line(rx: &Receiver<String>, words: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(words) {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {words:?} from the agent; it said:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_during_a_rollout_is_retried_and_the_rollout_completes() {
    let env = TestEnv::get();
    let app = App::new(env, "outage").await;
    let (proxy, _kubeconfig_dir) = app.through_api_proxy(env).await;
    let (code, _, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");

    // The new pod becomes ready only after 8 s, so the rollout is still being watched when the
    // API server goes away.
    let slow = DEPLOYMENT.replace("IMAGE", &format!("{}:1.1.0", app.image)).replace(
        "      labels: {app: web}\n    spec:",
        "      labels: {app: web}\n      annotations: {pod-ready.stage.kwok.x-k8s.io/delay: 8s}\n    spec:",
    );
    assert!(slow.contains("delay: 8s"));
    app.write("apps/web/deployment.yaml", &slow);
    app.commit(env, "bump to 1.1.0");

    let (mut child, rx) = spawn_reconcile(&app);
    let mut seen = Vec::new();
    // An outage during the apply: retried with backoff.
    expect_line(&rx, "applying", &mut seen);
    proxy.set(xtask::fault_proxy::Fault::Cut);
    expect_line(&rx, "retrying in", &mut seen);
    proxy.set(xtask::fault_proxy::Fault::Pass);
    // An outage during the watch: re-established when the API server is back.
    expect_line(&rx, "watching the rollout", &mut seen);
    proxy.set(xtask::fault_proxy::Fault::Cut);
    expect_line(&rx, "watch interrupted", &mut seen);
    proxy.set(xtask::fault_proxy::Fault::Pass);
    expect_line(&rx, "watch re-established", &mut seen);

    let status = wait_for("the agent to finish", Duration::from_secs(120), || {
        let r = child.try_wait().map_err(|e| e.to_string()).and_then(|s| s.ok_or_else(|| "running".to_owned()));
        async move { r }
    })
    .await;
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    seen.extend(rx.try_iter());
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{}", seen.join("\n")));
    assert_eq!(status.code(), Some(0), "{out}\n{}", seen.join("\n"));
    assert_eq!(bundle(&doc, "web")["result"], "rolledOut", "{}", seen.join("\n"));
    assert!(app.deployment_image(env).await.starts_with(&format!("{}:1.1.0@sha256:", app.image)));
    assert_eq!(app.secret_record(env).await["lkg"]["revision"]["commit"], app.head());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_failure_after_preflight_is_retried_with_backoff() {
    let env = TestEnv::get();
    let app = App::new(env, "pull").await;
    // In the registry (preflight passes), but its pods fail to pull (the testenv's KWOK stages).
    env.push_image(&app.image_repo, "1.3.0-missing");
    assert_eq!(app.reconcile(&[]).0, Some(0));
    let good_image = app.deployment_image(env).await;
    app.set_tag("1.3.0-missing");
    app.commit(env, "bump to 1.3.0-missing");

    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(3), Some("rolledBack")), "{human}");
    assert!(bundle(&doc, "web")["message"].as_str().unwrap().contains("ErrImagePull"), "{human}");
    assert_eq!(app.deployment_image(env).await, good_image);
    let q = &app.secret_record(env).await["quarantine"];
    assert_eq!(q["attempts"], 1, "{q}");
    assert_eq!(q["retryAt"].as_i64().unwrap() - q["at"].as_i64().unwrap(), 60, "first retry after a minute: {q}");

    // Until then: blocked, saying when it is retried, and nothing is written.
    let before = app.writes(env).await;
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    assert!(bundle(&doc, "web")["message"].as_str().unwrap().contains("is quarantined until"), "{human}");
    assert_eq!(app.writes(env).await, before);

    // Then it is tried again (the image might have arrived); failing again doubles the wait.
    let (doc, human) = wait_for("the retry", Duration::from_secs(150), || {
        let (code, doc, human) = app.reconcile(&[]);
        let r = if bundle(&doc, "web")["result"] == "rolledBack" {
            Ok((doc, human))
        } else {
            Err(format!("exit {code:?}: {human}"))
        };
        async move { r }
    })
    .await;
    assert!(bundle(&doc, "web")["message"].as_str().unwrap().contains("ErrImagePull"), "{human}");
    let q = &app.secret_record(env).await["quarantine"];
    assert_eq!(q["attempts"], 2, "{q}");
    assert_eq!(q["retryAt"].as_i64().unwrap() - q["at"].as_i64().unwrap(), 120, "{q}");
    assert_eq!(app.deployment_image(env).await, good_image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_is_opt_in_and_removes_only_our_objects() {
    let env = TestEnv::get();
    let app = App::new(env, "prune").await;
    let ns = app.ns.name.clone();
    app.write("apps/web/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-extra\ndata:\n  a: b\n");
    app.commit(env, "an extra ConfigMap");
    assert_eq!(app.reconcile(&[]).0, Some(0));
    // Someone else's ConfigMap in the same namespace.
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns);
    let foreign: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "not-ours"}, "data": {"x": "y"}})).unwrap();
    cms.create(&PostParams::default(), &foreign).await.unwrap();

    // Without `prune`, an object that left Git stays.
    std::fs::remove_file(app.work.join("apps/web/extra.yaml")).unwrap();
    app.commit(env, "the extra ConfigMap leaves Git");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(bundle(&doc, "web")["summary"]["prune"], 0, "{human}");
    assert!(cms.get_opt("web-extra").await.unwrap().is_some(), "not pruned without prune: true");

    // With it: pruned after a healthy rollout; the foreign object is untouched.
    app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {ns}\ngitopsAgent:\n  prune: true\n"));
    app.commit(env, "prune: true");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    let b = bundle(&doc, "web");
    assert!(b["message"].as_str().unwrap().contains(&format!("pruned ConfigMap/{ns}/web-extra")), "{human}");
    assert!(cms.get_opt("web-extra").await.unwrap().is_none(), "ours, gone from Git: pruned");
    assert!(cms.get_opt("not-ours").await.unwrap().is_some(), "not ours: kept");
    assert!(cms.get_opt("web-config").await.unwrap().is_some(), "still in Git: kept");
    let deletes: Vec<String> = app.writes(env).await.into_iter().filter(|w| w.starts_with("delete ")).collect();
    assert_eq!(deletes, vec!["delete configmaps/web-extra"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_outside_the_blast_radius_are_refused_and_nothing_is_applied() {
    let env = TestEnv::get();
    let app = App::new(env, "blast").await;
    let ns = app.ns.name.clone();
    // Another namespace than the bundle's, not created by it.
    let other = env.namespace("blast-other").await;
    app.write(
        "apps/web/elsewhere.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sneaky\n  namespace: {}\ndata:\n  a: b\n",
            other.name
        ),
    );
    app.commit(env, "an object in another namespace");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "blocked");
    let message = b["message"].as_str().unwrap();
    assert!(message.contains("blast radius") && message.contains(&other.name), "{human}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "nothing applied in the bundle's namespace");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &other.name);
    assert!(cms.get_opt("sneaky").await.unwrap().is_none(), "nothing applied elsewhere");

    // Allowed kinds: a Service is refused when only Deployments and ConfigMaps are allowed.
    std::fs::remove_file(app.work.join("apps/web/elsewhere.yaml")).unwrap();
    app.write(
        "apps/web/fleet.yaml",
        &format!("defaultNamespace: {ns}\ngitopsAgent:\n  allowedKinds: [apps/Deployment, ConfigMap]\n"),
    );
    app.write(
        "apps/web/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - port: 80\n",
    );
    app.commit(env, "a Service");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let message = bundle(&doc, "web")["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("Service/{ns}/web")) && message.contains("kind"), "{human}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "nothing applied");

    // Without the Service, the bundle is inside its radius and rolls out.
    std::fs::remove_file(app.work.join("apps/web/service.yaml")).unwrap();
    app.commit(env, "no Service");
    let (code, _, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_waits_for_the_bundle_it_depends_on() {
    let env = TestEnv::get();
    let app = App::new(env, "depends").await;
    let ns = app.ns.name.clone();
    // `apps/api` depends on `web`, and is applied after it.
    app.write("apps/api/fleet.yaml", &format!("defaultNamespace: {ns}\ndependsOn:\n- name: web\n"));
    app.write(
        "apps/api/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: api-config\ndata:\n  v: '1'\n",
    );
    app.commit(env, "a dependent bundle");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(bundle(&doc, "api")["result"], "rolledOut", "{human}");

    // `web` breaks (and is rolled back): `api`'s change waits, nothing of it is applied.
    app.set_tag("1.2.0-broken");
    app.write(
        "apps/api/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: api-config\ndata:\n  v: '2'\n",
    );
    app.commit(env, "web broken, api changed");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "rolledBack", "{human}");
    let api = bundle(&doc, "api");
    assert_eq!(api["result"], "blocked", "{human}");
    assert!(api["message"].as_str().unwrap().contains("waiting for the bundle it depends on: web"), "{human}");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns);
    assert_eq!(cms.get("api-config").await.unwrap().data.unwrap()["v"], "1", "the dependent change waits");

    // A cycle is an error naming the bundles, and nothing is applied.
    app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {ns}\ndependsOn:\n- name: api\n"));
    app.commit(env, "a cycle");
    let before = app.writes(env).await;
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(2), "{human}");
    let error = doc["error"].as_str().unwrap();
    assert!(error.contains("cycle") && error.contains("api") && error.contains("web"), "{human}");
    assert_eq!(app.writes(env).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_an_hpa_owns_are_left_to_it() {
    let env = TestEnv::get();
    let app = App::new(env, "hpa").await;
    let ns = app.ns.name.clone();
    app.write(
        "apps/web/hpa.yaml",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  \
         scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 3\n",
    );
    app.commit(env, "an HPA for web");
    let (code, _, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");

    // The autoscaler (here: a test writing the scale subresource under its own field manager)
    // scales to 2; the agent neither resets it nor calls it drift.
    let deployments: Api<Deployment> = Api::namespaced(env.client().await, &ns);
    deployments
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("inSync")), "{human}");
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(2), "the HPA's count stays");

    // A rollout of a new version keeps it too.
    app.set_tag("1.1.0");
    app.commit(env, "bump to 1.1.0");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(2));
}
