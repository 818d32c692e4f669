//! The harness kubelet (`xtask::kubelet`) against the testenv: pods annotated for it run a real
//! kiosk app whose WebSocket sessions live through the drain of a deleted pod (preStop, SIGTERM)
//! until the app's grace ends, and an app that outlives the pod's grace period is killed when
//! that ends, its session cut.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{conditions, wait::await_condition};
use serde_json::{Value, json};
use xtask::kubelet::Kubelet;
use xtask::support::TestEnv;
use xtask::testenv::HARNESS_KUBELET_ANNOTATION;

use crate::util::wait_for;

/// A kiosk pod template: grace period `grace`, preStop `pre_stop`, the app's own `args`.
fn kiosk_template(grace: i64, pre_stop: Value, args: &[&str], image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "kiosk"}, "annotations": {HARNESS_KUBELET_ANNOTATION: "true"}},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "kiosk", "image": image, "args": args, "lifecycle": {"preStop": pre_stop}}],
        },
    })
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Deletes the pod with its own grace period; returns its deletion timestamp (unix seconds) and
/// a task that resolves, watching, to when the pod was gone (unix seconds).
async fn delete_pod(pods: &Api<Pod>, name: &str) -> (i64, tokio::task::JoinHandle<f64>) {
    let pod = pods.delete(name, &DeleteParams::default()).await.unwrap().left().expect("marked for deletion");
    let stamp = pod.metadata.deletion_timestamp.expect("a deletion timestamp").0.as_second();
    let uid = pod.metadata.uid.expect("uid");
    let (pods, name) = (pods.clone(), name.to_owned());
    let gone = tokio::spawn(async move {
        let deleted = await_condition(pods, &name, conditions::is_deleted(&uid));
        tokio::time::timeout(Duration::from_secs(30), deleted).await.expect("pod gone within 30 s").unwrap();
        now()
    });
    (stamp, gone)
}

async fn sessions(kubelet: &Kubelet, pod: &str) -> Value {
    let (status, body) = kubelet.get(&format!("/{pod}/sessions")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_kiosk_pod_keeps_its_open_session_until_the_app_grace_ends_and_an_idle_one_goes_at_once() {
    let env = TestEnv::get();
    let ns = env.namespace("kubelet-drain").await;
    let client = env.client().await;
    let kubelet = Kubelet::start(client.clone(), &ns.name).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let image = format!("{}/library/u5-signalling:1.0.0", env.info.registry);
    // The app cuts what is left 3 s after SIGTERM, within the pod's 6 s grace period.
    let pre_stop = json!({"httpGet": {"path": "/drain", "port": 8080}});
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "kiosk"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "kiosk"}},
            "template": kiosk_template(6, pre_stop, &["--grace", "3s"], &image),
        },
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &deployment).await.unwrap();

    let first = kubelet.wait_running(&[], Duration::from_secs(60)).await;
    let mut open = kubelet.open_session(&first).await;
    let closing = kubelet.open_session(&first).await;
    assert!(open.ping().await);
    closing.close().await;
    // Read through the kubelet's proxy, as a session probe would.
    wait_for("one of two sessions left", Duration::from_secs(10), || async {
        let (status, body) = kubelet.get(&format!("/{first}/metrics")).await;
        let expected = status == 200
            && body.contains("# TYPE kiosk_active_sessions gauge\nkiosk_active_sessions 1\n")
            && body.contains("kiosk_sessions_total 2\n");
        if expected { Ok(()) } else { Err(format!("HTTP {status}: {body}")) }
    })
    .await;

    let deleting = Instant::now();
    let (stamp, gone) = delete_pod(&pods, &first).await;
    kubelet.wait_log(&first, "SIGTERM", Duration::from_secs(10)).await;
    let log = kubelet.log(&first);
    let drained = log.iter().position(|l| l.starts_with("draining (GET /drain)"));
    let sigterm = log.iter().position(|l| l.starts_with("SIGTERM: draining, 1 sessions active"));
    assert!(drained.is_some() && drained < sigterm, "preStop GET /drain, then SIGTERM: {log:#?}");
    // Draining: no new session, the open one lives on.
    assert_eq!(kubelet.try_open_session(&first).await.err().as_deref(), Some("HTTP 503"));
    assert_eq!(sessions(&kubelet, &first).await, json!({"active": 1, "draining": true}));
    assert!(open.ping().await, "the open session died during the drain");
    assert_eq!(kubelet.ended(&first), None, "{:#?}", kubelet.log(&first));

    // The app's grace ends: the server closes the session, going away.
    assert_eq!(open.closed_by_server(Duration::from_secs(15)).await, Some(1001));
    assert!(deleting.elapsed() >= Duration::from_secs(3), "cut after {:?}", deleting.elapsed());
    let ended = kubelet.wait_ended(&first, Duration::from_secs(15)).await;
    assert_eq!(ended.last_line, "grace ended: cut 1 sessions", "{ended:?}");
    assert!(!ended.killed, "{ended:?}");
    assert!((stamp..=stamp + 2).contains(&ended.deadline), "{ended:?}, deletion timestamp {stamp}");
    assert!(ended.exited_at - ended.sigterm_at.unwrap() >= 3, "{ended:?}");
    // Removed once the app ended, before the grace period was over.
    let gone = gone.await.unwrap();
    assert!(gone >= ended.exited_at as f64 && gone < stamp as f64, "gone at {gone}, {ended:?}");

    // The replacement has no session: it goes at once, long before its deadline.
    let second = kubelet.wait_running(std::slice::from_ref(&first), Duration::from_secs(60)).await;
    assert_eq!(sessions(&kubelet, &second).await, json!({"active": 0, "draining": false}));
    let (stamp, gone) = delete_pod(&pods, &second).await;
    let ended = kubelet.wait_ended(&second, Duration::from_secs(15)).await;
    assert_eq!(ended.last_line, "drained cleanly", "{ended:?}");
    assert!(!ended.killed && ended.sigterm_at.is_some(), "{ended:?}");
    let gone = gone.await.unwrap();
    assert!(gone + 3.0 < stamp as f64, "gone at {gone}, deletion timestamp {stamp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kiosk_app_that_outlives_the_grace_period_is_killed_at_the_deadline_and_its_session_dropped() {
    let env = TestEnv::get();
    let ns = env.namespace("kubelet-kill").await;
    let client = env.client().await;
    let kubelet = Kubelet::start(client.clone(), &ns.name).await;
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let image = format!("{}/library/u5-signalling:1.0.0", env.info.registry);
    // The app's grace is the pod's 2 s counted from SIGTERM, which comes after a 1 s preStop:
    // the pod's grace period ends first.
    let mut pod = kiosk_template(2, json!({"sleep": {"seconds": 1}}), &[], &image);
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!("kiosk");
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();

    assert_eq!(kubelet.wait_running(&[], Duration::from_secs(60)).await, "kiosk");
    let (status, body) = kubelet.get("/kiosk/health").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "ok"})));
    let mut session = kubelet.open_session("kiosk").await;
    assert!(session.ping().await);

    let deleting = Instant::now();
    let (stamp, gone) = delete_pod(&pods, "kiosk").await;
    kubelet.wait_log("kiosk", "SIGTERM", Duration::from_secs(10)).await;
    assert!(deleting.elapsed() >= Duration::from_secs(1), "SIGTERM before the preStop sleep ended");
    assert!(session.ping().await, "the session died before the deadline");
    assert_eq!(session.closed_by_server(Duration::from_secs(15)).await, None, "a killed app sends no Close");
    let ended = kubelet.wait_ended("kiosk", Duration::from_secs(15)).await;
    assert!(ended.killed, "{ended:?}");
    assert!(ended.last_line.starts_with("SIGTERM: draining, 1 sessions active"), "{ended:?}");
    assert!((stamp..=stamp + 2).contains(&ended.deadline), "{ended:?}, deletion timestamp {stamp}");
    assert!(ended.exited_at >= ended.deadline, "{ended:?}");
    let gone = gone.await.unwrap();
    assert!(gone >= ended.deadline as f64 && gone >= stamp as f64, "gone at {gone}, before its deadline: {ended:?}");

    let (status, body) = kubelet.get("/kiosk/metrics").await;
    assert_eq!(status, 502, "{body}");
    let (status, body) = kubelet.get("/no-such-pod/metrics").await;
    assert!(status == 404 && body.contains("no-such-pod"), "HTTP {status}: {body}");
}
