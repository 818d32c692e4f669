//! Drain windows against the testenv. The kiosk fixture app runs as real containers on the real
//! node (its kubelet runs the preStop, SIGTERM and the grace period): a rollout waits for idle
//! pods, a clean drain is reported clean, `maxDefer` expires and a session held past the window
//! is really cut and reported as cut (read from the JSON endpoint, the first test reads the
//! Prometheus gauge). On a KWOK node with no room for a second GPU pod the agent replaces one pod
//! at a time and says so in `agent diff` (room is a scheduling question: KWOK suffices there).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use xtask::node_support::LogFollower;
use xtask::session::Session;
use xtask::support::TestEnv;

use crate::daemon::{Daemon, gitea_push, metrics, post, sample, serve, signed};
use crate::real_node::{KioskApp, Release};
use crate::rollout::{App, agent, bundle, text};
use crate::util::wait_for;

/// `gitopsAgent` with one drain entry for `web` (extra lines indented as its fields).
fn fleet(entry: &str) -> String {
    format!("gitopsAgent:\n  drain:\n  - workload: web\n{entry}")
}

/// The session probe on each pod's IP: the Prometheus gauge, or the JSON endpoint.
fn sessions(json: bool) -> String {
    let (path, read) =
        if json { ("sessions", "jsonPointer: /active") } else { ("metrics", "gauge: kiosk_active_sessions") };
    format!("    sessions:\n      url: 'http://{{podIP}}:8080/{path}'\n      {read}\n      interval: 1s\n")
}

async fn live(app: &App, env: &TestEnv) -> Value {
    let api: Api<Deployment> = Api::namespaced(env.client().await, &app.ns.name);
    serde_json::to_value(api.get("web").await.unwrap()).unwrap()
}

/// The fields of the Deployment's spec that field manager `gitops-agent` owns (server-side apply).
fn owned_by_agent(live: &Value) -> String {
    live["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["manager"] == "gitops-agent" && f["operation"] == "Apply")
        .map(|f| f["fieldsV1"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_waits_for_idle_pods_then_the_old_pod_drains_cleanly() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "drain-idle").await;
    let app = &k.app;
    let policy = fleet(&format!(
        "    window: 20s\n{}    waitForIdle:\n      maxDefer: 10m\n    preStop:\n      httpGet: {{path: /drain, port: 8080}}\n",
        sessions(false)
    ));
    k.release(env, &policy, &Release::good("1.0.0"), "the kiosk, with a drain policy");

    // Nothing runs yet, so nothing to wait for: the first version rolls out at once.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let d = live(app, env).await;
    let spec = &d["spec"];
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0, "surge before unavailable: {spec:#}");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1, "the chart sets none: one pod beside the old one");
    assert_eq!(spec["template"]["spec"]["terminationGracePeriodSeconds"], 20, "raised to the window");
    assert_eq!(spec["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"], "/drain");
    let owned = owned_by_agent(&d);
    for field in ["f:terminationGracePeriodSeconds", "f:maxUnavailable", "f:preStop"] {
        assert!(owned.contains(field), "gitops-agent owns {field} under server-side apply: {owned}");
    }
    let (old_pod, old_ip) = k.ready_pod(env, &[]).await;
    let log = LogFollower::start(&env.client().await, &app.ns.name, &old_pod);
    let mut session = Session::open(&format!("ws://{old_ip}:8080/ws")).await.unwrap();

    // The daemon (polling every hour) gets the change by webhook and defers it: a customer is
    // talking to the old pod.
    let port = serve(app, "", "1h", "15s");
    let dir = app.config.parent().unwrap().to_owned();
    let daemon = Daemon::start(&app.config, dir.join("agent.log"), port, &[]);
    daemon.wait_ready().await;
    daemon.wait_running("web", &app.head(), Duration::from_secs(60)).await;
    k.release(env, &policy, &Release::good("1.1.0"), "web 1.1.0");
    let body = gitea_push(app);
    let (code, _) =
        post(&daemon, "gitea", &[("x-gitea-event", "push".to_owned()), ("x-gitea-signature", signed(&body))], body)
            .await;
    assert_eq!(code, 202);
    let waiting = format!("waiting for idle: 1 session on {old_pod}");
    let web = wait_for("the rollout deferred for the open session", Duration::from_secs(60), || async {
        let s = daemon.status().await;
        let web = s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").cloned().unwrap();
        if web["state"] == "deferred" { Ok(web) } else { Err(format!("{web:#}")) }
    })
    .await;
    assert!(web["next"].as_str().unwrap().contains(&waiting), "{web:#}");
    // It looks again by itself (no poll, no webhook), and keeps waiting while the session lasts.
    let cycles = daemon.cycles().await;
    wait_for("two idle checks more", Duration::from_secs(30), || async {
        let n = daemon.cycles().await;
        if n >= cycles + 2.0 { Ok(()) } else { Err(format!("{n} cycles")) }
    })
    .await;
    assert!(live(app, env).await.to_string().contains(":1.0.0@sha256:"), "nothing applied while a session is open");
    assert!(session.ping().await, "the customer's session is untouched");

    // The conversation ends: the rollout starts by itself, the old pod drains cleanly (the real
    // preStop, then SIGTERM) and its app exits by itself, long before its grace period.
    session.close().await;
    let web = daemon.wait_running("web", &app.head(), Duration::from_secs(60)).await;
    let message = web["last"]["message"].as_str().unwrap();
    assert!(message.contains("Deployment/") && message.contains("drained cleanly (1 pod)"), "{web:#}");
    let lines = log.wait_done(Duration::from_secs(30)).await.unwrap();
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let pre_stop = texts.iter().position(|l| l.starts_with("draining (GET /drain)"));
    let sigterm = texts.iter().position(|l| l.starts_with("SIGTERM: draining, 0 sessions active"));
    assert!(pre_stop.is_some() && pre_stop < sigterm, "preStop, then SIGTERM: {texts:#?}");
    assert_eq!(texts.last().copied(), Some("drained cleanly"), "{texts:#?}");
    let took = lines.last().unwrap().at - lines[sigterm.unwrap()].at;
    assert!(took < 15.0, "it exited by itself {took:.1}s after SIGTERM, before its 20 s grace ended");
    let ev = crate::util::event(env, &app.ns.name, "DrainedCleanly").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("web"));
    let (_, body) = daemon.get("/metrics").await;
    let scrape = metrics(&body);
    assert_eq!(sample(&scrape, "gitops_agent_drains_total", &[("bundle", "web"), ("result", "clean")]), Some(1.0));
    assert_eq!(sample(&scrape, "gitops_agent_sessions_cut_total", &[("bundle", "web")]), None, "{body}");
    let logs = daemon.logs();
    assert!(logs.contains(&waiting) && logs.contains("idle: no sessions on 1 old pod"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_defer_expires_and_a_session_held_past_the_window_is_cut_and_reported() {
    let env = TestEnv::get();
    let k = KioskApp::new(env, "drain-cut").await;
    let app = &k.app;
    let policy = fleet(&format!("    window: 6s\n{}    waitForIdle:\n      maxDefer: 3s\n", sessions(true)));
    k.release(env, &policy, &Release { grace: 6, ..Release::good("1.0.0") }, "the kiosk, with a short drain");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let (old_pod, old_ip) = k.ready_pod(env, &[]).await;
    let log = LogFollower::start(&env.client().await, &app.ns.name, &old_pod);
    let mut session = Session::open(&format!("ws://{old_ip}:8080/ws")).await.unwrap();

    k.release(env, &policy, &Release { grace: 6, ..Release::good("1.1.0") }, "web 1.1.0");
    let before = app.writes(env).await;
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let web = bundle(&doc, "web");
    assert_eq!(web["result"], "blocked", "{human}");
    let message = web["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("deferred: waiting for idle: 1 session on {old_pod}")), "{human}");
    assert!(web["retryAt"].as_i64().is_some(), "says when to look again: {human}");
    assert!(
        app.writes(env)
            .await
            .iter()
            .filter(|w| !w.contains("secrets/"))
            .eq(before.iter().filter(|w| !w.contains("secrets/"))),
        "nothing applied while deferred (only the record was written)"
    );

    // maxDefer passes while the customer still talks: the rollout starts anyway, and the session
    // is cut when the drain window ends (the kubelet ends the pod at its grace period).
    let doc = wait_for("maxDefer to pass and the rollout to run", Duration::from_secs(60), || async {
        let (code, doc, human) = app.reconcile(&[]);
        match bundle(&doc, "web")["result"].as_str() {
            Some("rolledOut") if code == Some(0) => Ok(doc),
            _ => Err(human),
        }
    })
    .await;
    let web = bundle(&doc, "web");
    let drain = &web["drains"][0];
    assert_eq!(drain["cut"], 1, "{web:#}");
    assert_eq!(drain["clean"], false, "{web:#}");
    assert!(web["message"].as_str().unwrap().contains("1 session cut at window end"), "{web:#}");
    // Really cut: the app (whose own grace is 30 s) was killed at the end of the pod's 6 s
    // grace period, so the session dropped without a Close frame, after the whole window.
    assert_eq!(session.closed_by_server(Duration::from_secs(5)).await, None, "killed: no Close frame");
    let lines = log.wait_done(Duration::from_secs(10)).await.unwrap();
    let sigterm = lines
        .iter()
        .find(|l| l.text.starts_with("SIGTERM: draining, 1 sessions active"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(lines.last().map(|l| l.text.as_str()), Some(sigterm.text.as_str()), "killed mid-drain: {lines:#?}");
    let ev = crate::util::event(env, &app.ns.name, "SessionsCut").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.as_deref().unwrap().contains("1 session cut at window end"), "{:?}", ev.note);
    let out = agent(&["status", "-c", app.config.to_str().unwrap(), "--explain", "web"]);
    assert!(text(&out).contains("1 session cut at window end"), "{}", text(&out));
}

/// A KWOK node of this test alone, with one GPU, tainted so that only this test's pods land on it.
struct GpuNode {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl GpuNode {
    async fn new(env: &TestEnv, ns: &str) -> GpuNode {
        let client = env.client().await;
        let name = format!("{ns}-gpu");
        xtask::kube::ensure_node(&client, &name, &[("gitops-agent.test/node", ns)], &[("nvidia.com/gpu", "1")])
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        let taint =
            json!({"spec": {"taints": [{"key": "gitops-agent.test/node", "value": ns, "effect": "NoSchedule"}]}});
        nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&taint)).await.unwrap();
        xtask::kube::wait_node_ready(&client, &name, Duration::from_secs(60)).await.unwrap();
        GpuNode { name, kubeconfig: env.info.kubeconfig.clone() }
    }
}

impl Drop for GpuNode {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let client = xtask::kube::kube_client(&kubeconfig).await.ok()?;
                // Its pods first: once the node is gone KWOK no longer ends them, and the test's
                // namespace would stay Terminating.
                let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
                let on_node = ListParams::default().fields(&format!("spec.nodeName={name}"));
                for p in pods.list(&on_node).await.ok()?.items {
                    let (Some(ns), Some(pod)) = (p.metadata.namespace, p.metadata.name) else { continue };
                    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
                    let _ = api
                        .delete(&pod, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
                        .await;
                }
                Api::<Node>::all(client).delete(&name, &DeleteParams::default()).await.ok()
            })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_room_for_a_second_gpu_pod_one_pod_is_replaced_at_a_time_and_diff_says_so() {
    let env = TestEnv::get();
    let app = App::new(env, "drain-gpu").await;
    let node = GpuNode::new(env, &app.ns.name).await;
    let ns = app.ns.name.clone();
    let deployment = |tag: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    \
             matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      \
             terminationGracePeriodSeconds: 3\n      nodeSelector: {{gitops-agent.test/node: {ns}}}\n      tolerations:\n      \
             - {{key: gitops-agent.test/node, operator: Equal, value: {ns}, effect: NoSchedule}}\n      containers:\n      \
             - name: web\n        image: {image}:{tag}\n        resources:\n          limits: {{nvidia.com/gpu: 1}}\n",
            image = app.image,
        )
    };
    app.write(
        "apps/web/fleet.yaml",
        &format!("defaultNamespace: {ns}\n{}", fleet("    window: 4s\n    preStop:\n      sleep: 1s\n")),
    );
    app.write("apps/web/deployment.yaml", &deployment("1.0.0"));
    app.commit(env, "a GPU workload");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let d = live(&app, env).await;
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": 1}),
        "decided before the pod ran, and the same after: {d:#}"
    );

    app.write("apps/web/deployment.yaml", &deployment("1.1.0"));
    app.commit(env, "web 1.1.0");
    let config = app.config.to_str().unwrap();
    let out = agent(&["diff", "-c", config]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    let line = shown.lines().find(|l| l.trim_start().starts_with("drain ")).unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains("one pod at a time"), "{line}");
    assert!(line.contains(&format!("{} has no room for a second pod", node.name)), "{line}");
    assert!(line.contains("nvidia.com/gpu"), "{line}");
    let out = agent(&["diff", "-c", config, "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let plan = &doc["bundles"][0]["drains"][0];
    assert_eq!((plan["mode"].as_str(), plan["window"].as_i64()), (Some("oneAtATime"), Some(4)), "{doc:#}");

    // The old pod goes first (its GPU is the only one) and drains for its window; then the new
    // one starts. With no session probe, the drain is reported as ended by its grace period.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let web = bundle(&doc, "web");
    assert!(web["drains"][0]["message"].as_str().unwrap().contains("ended by its grace period"), "{human}");
    assert!(human.contains("draining "), "the drain was followed: {human}");
    let d = live(&app, env).await;
    let pod_spec = &d["spec"]["template"]["spec"];
    assert_eq!(pod_spec["terminationGracePeriodSeconds"], 4, "raised to the window: {d:#}");
    assert_eq!(pod_spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"], 1);
    assert!(pod_spec["containers"][0]["image"].as_str().unwrap().contains(":1.1.0@sha256:"));
    let owned = owned_by_agent(&d);
    assert!(owned.contains("f:maxSurge") && owned.contains("f:preStop"), "{owned}");
}
