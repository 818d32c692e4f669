//! Environment faults against the testenv (`shared::fault`): a bundle whose namespace is still
//! terminating waits as `retrying` (never failed, never quarantined) and, once the namespace is
//! gone, the daemon creates it (labelled as ours) and rolls out by itself; an API server
//! answering 500 through the fault proxy during an apply keeps the last-known-good and the
//! revision is tried again.

use std::io::Read;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use xtask::fault_proxy::Fault;
use xtask::support::TestEnv;

use crate::daemon::{Daemon, serve, tail};
use crate::rollout::{App, bundle};
use crate::rollout_policy::{expect_line, spawn_reconcile};
use crate::util::wait_for;

/// Holds a namespace in `Terminating`: the namespace controller cannot finish while this
/// ConfigMap's finalizer stays.
const HOLD: &str = "gitops-agent.test/hold";

/// The bundle `web` as the daemon's `/status` shows it.
async fn web(d: &Daemon) -> Value {
    let s = d.status().await;
    s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").cloned().unwrap_or_default()
}

/// Waits until `/status` says `web` is retrying for a reason containing `because`.
async fn wait_retrying(d: &Daemon, because: &str) -> Value {
    wait_for(&format!("web retrying: {because}"), Duration::from_secs(120), || async {
        let b = web(d).await;
        let next = b["next"].as_str().unwrap_or_default();
        // The record says retrying as soon as it is saved; the cycle's own line (`desired`)
        // follows when the cycle ends: wait for both.
        match b["state"] == "retrying" && next.contains(because) && b["desired"]["result"] == "retrying" {
            true => Ok(b),
            false => Err(format!("{b:#}\nlog: {}", tail(&d.logs()))),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_still_terminating_is_retried_not_quarantined_and_once_gone_is_created_and_rolled_out() {
    let env = TestEnv::get();
    let app = App::new(env, "fault-ns").await;
    let client = env.client().await;
    let target = format!("{}-t", app.ns.name);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": target}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let held: Api<ConfigMap> = Api::namespaced(client.clone(), &target);
    let hold: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "hold", "finalizers": [HOLD]}})).unwrap();
    held.create(&PostParams::default(), &hold).await.unwrap();
    namespaces.delete(&target, &DeleteParams::default()).await.unwrap();
    wait_for("the namespace to be terminating", Duration::from_secs(30), || async {
        let phase = namespaces.get(&target).await.unwrap().status.and_then(|s| s.phase);
        if phase.as_deref() == Some("Terminating") { Ok(()) } else { Err(format!("{phase:?}")) }
    })
    .await;

    app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {target}\n"));
    app.commit(env, "web goes to a namespace being deleted");
    // Polling every hour: only the agent's own retry timer can bring the rollout.
    let port = serve(&app, "", "1h", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;

    // Terminating: the API server's 403 is the environment's, so the bundle waits.
    let b = wait_retrying(&d, "being terminated").await;
    assert!(b["next"].as_str().unwrap().starts_with("retrying in "), "{b:#}");
    assert_eq!(b["quarantined"], Value::Null, "not quarantined: {b:#}");
    assert_eq!(b["last"], Value::Null, "no outcome: the revision was never judged: {b:#}");
    assert_eq!(b["desired"]["result"], "retrying", "{b:#}");
    let record = app.file_record();
    assert_eq!(record["phase"]["phase"], "idle", "{record:#}");
    assert_eq!(record["quarantine"], Value::Null, "{record:#}");
    assert_eq!(record["counts"]["failedNoRollback"], 0, "{record:#}");

    // Gone: the namespace controller finishes once the finalizer is removed. The daemon's retry
    // timer tries again, creates the missing namespace as its own (labelled, as Fleet does) and
    // rolls out, with no `agent retry` and no poll.
    let unhold = json!({"metadata": {"finalizers": null}});
    held.patch("hold", &PatchParams::default(), &Patch::Merge(&unhold)).await.unwrap();
    let b = d.wait_running("web", &app.head(), Duration::from_secs(180)).await;
    assert_eq!(b["counts"]["rolledOut"], 1, "{b:#}");
    assert_eq!(b["counts"]["failedNoRollback"], 0, "{b:#}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &target);
    let image = deployments.get("web").await.unwrap().spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert!(image.unwrap().starts_with(&format!("{}:1.0.0@sha256:", app.image)));
    let record = app.file_record();
    assert_eq!(record["retrying"], Value::Null, "a rollout forgets the wait: {record:#}");
    let created = namespaces.get(&target).await.unwrap();
    let labels = created.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("gitops-agent.io/owner"), Some(&app.ns.name), "created as ours: {labels:?}");
    assert!(d.logs().contains(&format!("created the missing Namespace/{target}")), "{}", tail(&d.logs()));
    drop(d);
    namespaces.delete(&target, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_answering_500_during_an_apply_keeps_the_last_known_good_and_retries_the_revision() {
    let env = TestEnv::get();
    let app = App::new(env, "fault-500").await;
    let (proxy, _kubeconfig_dir) = app.through_api_proxy(env).await;
    let (code, _, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    let good = app.head();
    let good_image = app.deployment_image(env).await;

    app.set_tag("1.1.0");
    app.commit(env, "bump to 1.1.0");
    let (mut child, rx) = spawn_reconcile(&app);
    let mut seen = Vec::new();
    expect_line(&rx, "applying", &mut seen);
    // 500, not 503: kube's client retries 429, 503 and 504 itself (15 times, minutes), before
    // the agent's own backoff even sees them.
    proxy.set(Fault::Respond { status: 500, retry_after: None, times: None });
    // The apply's own backoff (two minutes) ends, then the revision waits for its retry time.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let status = loop {
        seen.extend(rx.try_iter());
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the agent did not finish; it said:\n{}", seen.join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    proxy.set(Fault::Pass);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    seen.extend(rx.try_iter());
    let said = seen.join("\n");
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{said}"));
    let b = bundle(&doc, "web");
    assert_eq!((status.code(), b["result"].as_str()), (Some(3), Some("retrying")), "{out}\n{said}");
    let message = b["message"].as_str().unwrap();
    assert!(message.starts_with("retrying in ") && message.contains("HTTP 500"), "{message}");
    assert!(b["retryAt"].is_i64(), "the daemon would wake for it: {b}");
    // The Secret could not be written during the outage; the node's file holds the record.
    let record = app.file_record();
    assert_eq!(record["phase"]["phase"], "idle", "{record:#}");
    assert_eq!(record["quarantine"], Value::Null, "not quarantined: {record:#}");
    assert_eq!(record["lkg"]["revision"]["commit"], good.as_str(), "the last-known-good is kept: {record:#}");
    assert_eq!(record["counts"]["rolledBack"], 0, "nothing rolled back: {record:#}");
    assert_eq!(app.deployment_image(env).await, good_image, "1.1.0 never got applied");

    // The fault is over: once its retry time has come, the revision rolls out, no `agent retry`.
    let rolled = wait_for("the retry to roll out", Duration::from_secs(120), || async {
        let (code, doc, human) = app.reconcile(&[]);
        match bundle(&doc, "web")["result"].as_str() {
            Some("rolledOut") if code == Some(0) => Ok(doc),
            Some("retrying") if code == Some(3) => Err(human),
            _ => panic!("neither retrying nor rolled out: {human}"),
        }
    })
    .await;
    assert!(bundle(&rolled, "web")["revision"].as_str().is_some());
    assert!(app.deployment_image(env).await.starts_with(&format!("{}:1.1.0@sha256:", app.image)));
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["commit"], app.head(), "{record:#}");
    assert_eq!(record["retrying"], Value::Null, "{record:#}");
}
