//! Records written by one writer at a time (issue 18, item 6): two `StateStore`s with a stale
//! `resourceVersion` get a conflict and re-read instead of overwriting; `agent rollback` during
//! a daemon's rollout goes through the daemon's control socket, and every version of the record
//! is kept; with no agent on this node while another replica holds the Lease, the commands that
//! change state are refused.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher;
use shared::state::Record;
use xtask::support::TestEnv;

use agent::state::{StateStore, Superseded, decode_secret_data};

use crate::daemon::{Daemon, post_gitea_push, serve, tail};
use crate::rollout::{App, DEPLOYMENT, agent, text};
use crate::util::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_state_store_writers_with_a_stale_resource_version_get_a_conflict_and_re_read() {
    let env = TestEnv::get();
    let ns = env.namespace("records-cas").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = StateStore::new(dir_a.path(), &ns.name, &ns.name, Some(env.client().await));
    let b = StateStore::new(dir_b.path(), &ns.name, &ns.name, Some(env.client().await));

    let first = Record::new("web").retry();
    assert!(a.save(&first).await.unwrap().secret_error.is_none());
    assert_eq!(b.load("web").await.unwrap().unwrap().seq, 1, "b read version 1");
    let paused = first.pause("paused by a", 10);
    assert!(a.save(&paused).await.unwrap().secret_error.is_none());

    // b decided from version 1: its write carries a stale resourceVersion.
    let err = b.save(&first.retry()).await.expect_err("a stale writer must not overwrite version 2");
    let superseded = err.downcast_ref::<Superseded>().unwrap_or_else(|| panic!("not a conflict: {err:#}"));
    assert_eq!((superseded.stored, superseded.ours), (2, 2), "{err}");
    // b reads again (its file now holds the stored record) and decides again from it.
    let again = b.load("web").await.unwrap().unwrap();
    assert_eq!(again, paused, "the re-read returns a's version, not b's dropped one");
    let resumed = again.resume();
    assert!(b.save(&resumed).await.unwrap().secret_error.is_none());

    // Now a is the stale one.
    let err = a.save(&paused.retry()).await.expect_err("a's resourceVersion is stale now");
    assert_eq!(err.downcast_ref::<Superseded>().map(|s| s.stored), Some(3), "{err:#}");
    assert_eq!(a.load("web").await.unwrap(), Some(resumed.clone()));
    let api: Api<Secret> = Api::namespaced(env.client().await, &ns.name);
    let secret = api.get(&a.secret_name("web")).await.unwrap();
    assert_eq!(decode_secret_data(&secret.data.unwrap()["record.json.gz"].0).unwrap(), resumed);
    assert_eq!(secret.metadata.annotations.unwrap()["gitops-agent.io/seq"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_secret_corrupted_or_deleted_by_hand_is_written_again_by_the_next_save() {
    let env = TestEnv::get();
    let ns = env.namespace("records-heal").await;
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path(), &ns.name, &ns.name, Some(env.client().await));
    let api: Api<Secret> = Api::namespaced(env.client().await, &ns.name);
    let name = store.secret_name("web");
    let stored = || async { decode_secret_data(&api.get(&name).await.unwrap().data.unwrap()["record.json.gz"].0) };

    let first = Record::new("web").retry();
    assert!(store.save(&first).await.unwrap().secret_error.is_none());
    assert_eq!(stored().await.unwrap(), first);

    // Someone edits the Secret by hand: its record no longer decodes. The node's file still
    // holds it, so loading works; the next save replaces the corrupt copy (its resourceVersion
    // is the one read, not a version never seen, so the precondition holds).
    let corrupt = serde_json::json!({"data": {"record.json.gz": "bm90IGd6aXA="}});
    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&corrupt)).await.unwrap();
    assert!(stored().await.is_err(), "the copy in the Secret is corrupt now");
    assert_eq!(store.load("web").await.unwrap(), Some(first.clone()), "the file copy answers");
    let second = first.pause("by hand", 10);
    let saved = store.save(&second).await.unwrap();
    assert!(saved.secret_error.is_none(), "{:?}", saved.secret_error);
    assert_eq!(stored().await.unwrap(), second, "the corrupt copy was replaced");

    // Someone deletes it: the next save (over the resourceVersion it knew) creates it anew.
    api.delete(&name, &Default::default()).await.unwrap();
    let third = second.resume();
    let saved = store.save(&third).await.unwrap();
    assert!(saved.secret_error.is_none(), "{:?}", saved.secret_error);
    assert_eq!(stored().await.unwrap(), third, "the deleted copy was written again");
}

/// Every version the state Secret of `ns` went through, as a watch saw them, in order.
async fn watch_versions(env: &TestEnv, ns: &str) -> tokio::sync::mpsc::UnboundedReceiver<Record> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ns = ns.to_owned();
    let client = env.client().await;
    tokio::spawn(async move {
        let api: Api<Secret> = Api::namespaced(client, &ns);
        let config = watcher::Config::default().labels(&format!("gitops-agent.io/state-of={ns}"));
        let mut seen = std::collections::BTreeSet::new();
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            let secret = match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                _ => continue,
            };
            if !seen.insert(secret.metadata.resource_version.clone()) {
                continue;
            }
            let record = decode_secret_data(&secret.data.unwrap()["record.json.gz"].0).unwrap();
            if tx.send(record).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_during_a_daemons_rollout_goes_through_the_daemon_and_loses_no_transition() {
    let env = TestEnv::get();
    let app = App::new(env, "records-rb").await;
    let mut versions = watch_versions(env, &app.ns.name).await;
    let port = serve(&app, "", "1h", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    let first = app.head();
    d.wait_running("web", &first, Duration::from_secs(90)).await;
    let socket = app.state_dir.join("agent.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the control socket is the agent user's only");

    // A slow rollout: the new pod turns ready only after 12 s.
    let slow = DEPLOYMENT.replace("IMAGE", &format!("{}:1.1.0", app.image)).replace(
        "      labels: {app: web}\n    spec:",
        "      labels: {app: web}\n      annotations: {pod-ready.stage.kwok.x-k8s.io/delay: 12s}\n    spec:",
    );
    assert!(slow.contains("delay: 12s"));
    app.write("apps/web/deployment.yaml", &slow);
    app.commit(env, "web 1.1.0, slow to start");
    let second = app.head();
    let (code, answer) = post_gitea_push(&d, &app).await;
    assert_eq!(code, 202, "{answer}");
    wait_for("the daemon mid-rollout of the second commit", Duration::from_secs(60), || async {
        let r = app.file_record();
        match r["phase"]["candidate"]["revision"]["commit"].as_str() {
            Some(c) if c == second && r["phase"]["phase"] == "rollingOut" => Ok(()),
            _ => Err(format!("{r:#}")),
        }
    })
    .await;

    let config = app.config.to_str().unwrap().to_owned();
    let rollback = tokio::task::spawn_blocking(move || agent(&["rollback", "web", "-c", &config]));
    let out = tokio::time::timeout(Duration::from_secs(120), rollback).await.expect("rollback answered").unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}\nlog: {}", tail(&d.logs()));
    assert!(said.contains("asking the running agent on this node"), "{said}");
    assert!(said.contains("rolled-back") || said.contains("ROLLED"), "{said}");
    assert!(d.logs().contains("a command from the control socket"), "{}", tail(&d.logs()));

    // The cluster ends on the rollback target, the second commit quarantined.
    assert!(app.deployment_image(env).await.contains(":1.0.0@sha256:"), "{}", app.deployment_image(env).await);
    let stored = app.secret_record(env).await;
    assert_eq!(stored["phase"]["phase"], "idle", "{stored:#}");
    assert_eq!(stored["lkg"]["revision"]["commit"], first.as_str(), "{stored:#}");
    assert_eq!(stored["quarantine"]["revision"]["commit"], second.as_str(), "{stored:#}");

    // Every version, in order: seq strictly increasing, and the rollout's end (the second commit
    // verified as last-known-good) recorded before the rollback started from it.
    let last_seq = stored["seq"].as_u64().unwrap();
    let mut all: Vec<Record> = Vec::new();
    wait_for("the watch to see the last version", Duration::from_secs(30), || {
        while let Ok(r) = versions.try_recv() {
            all.push(r);
        }
        let done = all.last().is_some_and(|r| r.seq == last_seq);
        let n = all.len();
        async move { if done { Ok(()) } else { Err(format!("{n} versions so far")) } }
    })
    .await;
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq strictly increasing: {seqs:?}");
    let lkg = |r: &Record| r.lkg.as_ref().map(|l| l.revision.commit.clone());
    let verified = all.iter().position(|r| lkg(r).as_deref() == Some(second.as_str()));
    let back = all.iter().position(|r| r.phase.name() == "rolling back");
    match (verified, back) {
        (Some(v), Some(b)) => assert!(v < b, "the rollout ended before the rollback began: {seqs:?}"),
        other => {
            panic!("missing versions {other:?}: {:#?}", all.iter().map(|r| (r.seq, r.phase.name())).collect::<Vec<_>>())
        }
    }

    // `reconcile --once` defers to the daemon too, and prints the daemon's report.
    let out = agent(&["reconcile", "--once", "-c", app.config.to_str().unwrap()]);
    let said = text(&out);
    assert!(said.contains("deferred to the running agent on this node"), "{said}");
    assert!(said.contains("bundle web"), "{said}");
    assert!(app.deployment_image(env).await.contains(":1.0.0@sha256:"), "the quarantined commit stays out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_agent_on_this_node_commands_are_refused_while_another_replica_holds_the_lease() {
    let env = TestEnv::get();
    let app = App::new(env, "records-lease").await;
    let port = serve(&app, "", "1h", "6s");
    // The other replica: same identity and Lease, its own state folder (so no socket here).
    let other = app.config.with_file_name("other.yaml");
    let text_of = std::fs::read_to_string(&app.config).unwrap();
    let here = format!("stateDir: {}\n", app.state_dir.display());
    assert!(text_of.contains(&here));
    let there = app.config.with_file_name("other-state");
    std::fs::write(&other, text_of.replace(&here, &format!("stateDir: {}\n", there.display()))).unwrap();
    let d = Daemon::start(&other, app.config.with_file_name("other.log"), port, &[]);
    d.wait_ready().await;
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;

    let config = app.config.to_str().unwrap().to_owned();
    let c2 = config.clone();
    let rollback = tokio::task::spawn_blocking(move || agent(&["rollback", "web", "-c", &c2]));
    let once = agent(&["reconcile", "--once", "-c", &config]);
    let rollback = rollback.await.unwrap();
    for out in [&rollback, &once] {
        let said = text(out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("another agent holds the Lease"), "{said}");
        assert!(said.contains("nothing was changed"), "{said}");
    }
    let s = d.status().await;
    assert_eq!(s["agent"]["leader"], true, "the replica kept its Lease: {s}");
    let stored = app.secret_record(env).await;
    assert_eq!(stored["phase"]["phase"], "idle", "{stored:#}");
    assert!(stored["quarantine"].is_null(), "no rollback happened: {stored:#}");
}

/// The daemon reads its records from a watch of its state Secrets, not a list per poll: a
/// state Secret deleted by hand while nothing changes is seen gone, and the next cycle writes it
/// again from this node's file, without a list in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_sees_its_state_secret_deleted_through_its_watch_and_writes_it_again() {
    let env = TestEnv::get();
    let app = App::new(env, "records-watch").await;
    let (api_proxy, _kubeconfig_dir) = app.through_api_proxy(env).await;
    let port = serve(&app, "", "1h", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    let first = app.head();
    d.wait_running("web", &first, Duration::from_secs(90)).await;
    let stored = app.secret_record(env).await;
    assert_eq!(stored["lkg"]["revision"]["commit"], first.as_str(), "{stored:#}");

    // A poll that changes nothing: no list of the state Secrets (the watch answers).
    let lists =
        || api_proxy.count(|s| s.method == "GET" && s.target.contains("/secrets?") && !s.target.contains("watch=true"));
    let (lists_before, cycles_before) = (lists(), d.cycles().await);
    let (code, answer) = post_gitea_push(&d, &app).await;
    assert_eq!(code, 202, "{answer}");
    wait_for("a cycle after the webhook", Duration::from_secs(30), || async {
        if d.cycles().await > cycles_before { Ok(()) } else { Err(tail(&d.logs())) }
    })
    .await;
    assert_eq!(lists(), lists_before, "records read from the watch, not listed: {:?}", api_proxy.seen());

    // Deleted by hand: the watch sees it gone, and the next cycle writes it again.
    let secrets: Api<Secret> = Api::namespaced(env.client().await, &app.ns.name);
    let name = secrets
        .list(&kube::api::ListParams::default().labels(&format!("gitops-agent.io/state-of={}", app.ns.name)))
        .await
        .unwrap()
        .items
        .remove(0)
        .metadata
        .name
        .unwrap();
    secrets.delete(&name, &Default::default()).await.unwrap();
    let (code, answer) = post_gitea_push(&d, &app).await;
    assert_eq!(code, 202, "{answer}");
    wait_for("the state Secret written again", Duration::from_secs(30), || async {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                let record = decode_secret_data(&s.data.unwrap()["record.json.gz"].0).unwrap();
                if record.lkg.as_ref().map(|l| l.revision.commit.as_str()) == Some(first.as_str()) {
                    Ok(())
                } else {
                    Err(format!("{record:?}"))
                }
            }
            other => Err(format!("{other:?}\n{}", tail(&d.logs()))),
        }
    })
    .await;
    assert!(d.logs().contains("wrote the state Secret again"), "{}", tail(&d.logs()));
    assert_eq!(lists(), lists_before, "the delete was seen by the watch, not by a list: {:?}", api_proxy.seen());
}
