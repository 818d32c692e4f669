//! Pre-pull on KWOK: while a closed rollout window holds a release, `agent run` creates one pod
//! per new image pinned to the node (the pinned digest, `IfNotPresent`, the app's entrypoint
//! replaced), at most `maxConcurrent` pulling at once, says the progress and a failed pull in
//! `/status` and `agent status`, drops the pods of a release Git replaced while it waited, and
//! deletes them all when the rollout starts. KWOK pods do not pull: the real node's proof is
//! `real_node::on_the_real_node_a_pre_pulled_image_is_on_the_node_before_the_window_opens_...`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;
use xtask::support::TestEnv;

use crate::daemon::{Daemon, serve};
use crate::rollout::{App, agent, text};
use crate::util::wait_for;

/// A deny window that never opens: every day from 00:00 UTC for 24 h.
const ALWAYS_DENY: &str = "rollout:\n  windows:\n  - kind: deny\n    schedule: \"0 0 * * *\"\n    duration: 24h\n ";

/// The Deployment with the app and a sidecar, each from its own registry repository.
fn release(app: &App, web: &str, side: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    \
         matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      \
         imagePullSecrets: [{{name: app-pull}}]\n      containers:\n      - name: web\n        image: {web}\n      \
         - name: side\n        image: {side}\n",
    )
    .replace("IMAGE", &app.image)
}

async fn prepull_pods(env: &TestEnv, ns: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client().await, ns);
    api.list(&ListParams::default().labels("gitops-agent.io/prepull=true")).await.unwrap().items
}

/// The web bundle in the daemon's `/status`, once `ok` holds for it.
async fn status_until(d: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(90), || async {
        let s = d.status().await;
        let web = s["bundles"].as_array().and_then(|b| b.iter().find(|b| b["bundle"] == "web").cloned());
        match web {
            Some(w) if ok(&w) => Ok(w),
            other => Err(format!("{other:#?}\nlog: {}", crate::daemon::tail(&d.logs()))),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_window_is_closed_the_new_images_are_pre_pulled_on_the_node_and_the_pods_go_when_the_rollout_starts() {
    let env = TestEnv::get();
    let app = App::new(env, "prepull").await;
    let side_repo = format!("{}-side", app.image_repo);
    for tag in ["1.0.0", "1.1.0", "1.1.0-missing"] {
        env.push_image(&side_repo, tag);
    }
    let side = format!("{}/{side_repo}", env.info.registry);
    app.write("apps/web/deployment.yaml", &release(&app, "IMAGE:1.0.0", &format!("{side}:1.0.0")));
    app.commit(env, "web 1.0.0 with its sidecar");
    assert_eq!(app.reconcile(&[]).0, Some(0), "the first version, with no window");
    let web_image = app.deployment_image(env).await;
    assert!(web_image.contains(":1.0.0@sha256:"), "{web_image}");

    // The window closes and pre-pull is on, one pull at a time; the daemon follows.
    let helper = format!("{}/{}:1.0.0", env.info.registry, app.image_repo);
    app.edit_config("rollout:\n ", ALWAYS_DENY);
    let mut config = std::fs::read_to_string(&app.config).unwrap();
    config.push_str(&format!("prepull:\n  helperImage: {helper}\n  maxConcurrent: 1\n  timeout: 5m\n"));
    std::fs::write(&app.config, config).unwrap();
    let port = serve(&app, "", "5s", "5s");

    // A release whose sidecar image cannot be pulled: the failure is said with its reason.
    app.write("apps/web/deployment.yaml", &release(&app, "IMAGE:1.1.0", &format!("{side}:1.1.0-missing")));
    app.commit(env, "web 1.1.0, sidecar 1.1.0-missing");
    let mut d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    let failed = status_until(&d, "a failed pre-pull said in status", |w| {
        w["desired"]["prepull"]["failed"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    let failure = &failed["desired"]["prepull"]["failed"][0];
    assert!(failure["image"].as_str().unwrap().contains(":1.1.0-missing@sha256:"), "{failed:#}");
    assert!(failure["reason"].as_str().unwrap().contains("ImagePull"), "{failed:#}");
    assert_eq!(failed["state"], "deferred", "{failed:#}");

    // Git moves on while it waits: the failed pull's pod goes, the new images are pulled, one at
    // a time, each pod pinned to the node with the pinned digest.
    app.write("apps/web/deployment.yaml", &release(&app, "IMAGE:1.1.0", &format!("{side}:1.1.0")));
    app.commit(env, "web 1.1.0, sidecar 1.1.0");
    let head = app.head();
    let most_pulling = std::sync::atomic::AtomicU64::new(0);
    let done = wait_for("both new images pre-pulled", Duration::from_secs(120), || async {
        let s = d.status().await;
        let web = s["bundles"].as_array().and_then(|b| b.iter().find(|b| b["bundle"] == "web").cloned());
        let Some(web) = web else { return Err(format!("{s:#}")) };
        if web["desired"]["commit"] != head.as_str() {
            return Err(format!("not at {head} yet: {web:#}"));
        }
        let p = &web["desired"]["prepull"];
        most_pulling.fetch_max(p["pulling"].as_u64().unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        if p["pulled"] == 2 && p["images"] == 2 { Ok(web) } else { Err(format!("{web:#}")) }
    })
    .await;
    assert!(most_pulling.into_inner() <= 1, "maxConcurrent 1: at most one pull at once");
    assert!(done["next"].as_str().unwrap().starts_with(&format!("waits at {}: pre-pulled 2/2 images", &head[..12])));
    let screen = text(&agent(&["status", "-c", app.config.to_str().unwrap()]));
    assert!(screen.lines().any(|l| l.starts_with("web ") && l.contains("pre-pulled 2/2 images")), "{screen}");

    let pods = prepull_pods(env, &app.ns.name).await;
    let images: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.spec.as_ref().unwrap().containers[0].image.clone().unwrap())
        .collect();
    assert_eq!(images.len(), 2, "one pod per new image, the failed one gone: {images:?}");
    assert!(images.iter().any(|i| i.starts_with(&format!("{}:1.1.0@sha256:", app.image))), "{images:?}");
    assert!(images.iter().any(|i| i.starts_with(&format!("{side}:1.1.0@sha256:"))), "{images:?}");
    for p in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(env.info.node_name.as_str()), "pinned to the node");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.command.as_deref(), Some(&["/gitops-prepull/agent".to_owned(), "prepull-helper".to_owned()][..]));
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some(helper.as_str()));
        let secrets: Vec<_> = spec.image_pull_secrets.iter().flatten().map(|s| s.name.clone()).collect();
        assert_eq!(secrets, ["app-pull"], "the workload's pull secrets");
        assert_eq!(p.metadata.labels.as_ref().unwrap()["gitops-agent.io/owner"], app.ns.name);
    }
    d.sigterm(Duration::from_secs(30)).await;

    // The window opens (the agent restarted with it): the rollout starts and the pre-pull pods
    // are deleted.
    app.edit_config(ALWAYS_DENY, "rollout:\n ");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent-2.log"), port, &[]);
    d.wait_running("web", &head, Duration::from_secs(120)).await;
    assert!(d.logs().contains("pre-pull: 2 pod(s) deleted, the images stay on the node"), "{}", d.logs());
    assert!(app.deployment_image(env).await.contains(":1.1.0@sha256:"));
    wait_for("the pre-pull pods gone", Duration::from_secs(30), || async {
        let left = prepull_pods(env, &app.ns.name).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}", left.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()))
        }
    })
    .await;
}
