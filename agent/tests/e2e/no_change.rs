//! What a poll costs when nothing changed, counted at the server side: the registry's requests
//! through a fault proxy of the test's own, token requests from the token service's access log,
//! dry-run patches from the API server's audit log, and renderer runs from a wrapper around helm.

use std::time::Duration;

use xtask::support::{TestEnv, Upstream};

use crate::daemon::{Daemon, gitea_push, post, serve, signed, tail};
use crate::rollout::App;
use crate::util::wait_for;

/// Token requests the store robot made for `repo` (the CI robot's pushes do not count).
pub(crate) fn token_requests_for(env: &TestEnv, repo: &str) -> usize {
    let log = std::fs::read_to_string(&env.info.token_access_log).unwrap_or_default();
    let needle: String = url::form_urlencoded::byte_serialize(repo.as_bytes()).collect();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["account"] == env.info.registry_agent.username.as_str())
        .filter(|v| v["query"].as_str().is_some_and(|q| q.contains(&needle)))
        .count()
}

/// A Deployment with one container per image.
fn deployment(images: &[String]) -> String {
    let containers: String =
        images.iter().enumerate().map(|(i, image)| format!("      - name: c{i}\n        image: {image}\n")).collect();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    \
         matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      \
         containers:\n{containers}"
    )
}

/// Cycles finished, once none is in flight (every "reconcile started" has its finished cycle).
pub(crate) async fn settled_cycles(d: &Daemon) -> f64 {
    wait_for("no reconcile in flight", Duration::from_secs(60), || async {
        let started = d.logs().matches("reconcile started").count() as f64;
        let done = d.cycles().await;
        if started == done { Ok(done) } else { Err(format!("{started} started, {done} done\n{}", tail(&d.logs()))) }
    })
    .await
}

/// One poll asked for by a signed Gitea push webhook (a hint: the agent re-reads its sources);
/// returns how many cycles ran meanwhile (at least one). `git_url`: the repository URL the
/// agent's config names, when it is not the app's own (a fault proxy in front of git).
pub(crate) async fn poll_once(d: &Daemon, app: &App, git_url: Option<&str>) -> f64 {
    let before = settled_cycles(d).await;
    let mut body: serde_json::Value = serde_json::from_slice(&gitea_push(app)).unwrap();
    if let Some(url) = git_url {
        body["repository"]["clone_url"] = url.into();
    }
    let body = serde_json::to_vec(&body).unwrap();
    let headers = [("x-gitea-event", "push".to_owned()), ("x-gitea-signature", signed(&body))];
    let (code, answer) = post(d, "gitea", &headers, body).await;
    assert_eq!(code, 202, "{answer}");
    wait_for("the webhook's cycle", Duration::from_secs(60), || async {
        let done = settled_cycles(d).await;
        if done > before { Ok(done - before) } else { Err(format!("{done} cycles")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_poll_of_three_images_costs_three_heads_and_no_token_request() {
    let env = TestEnv::get();
    let app = App::new(env, "reuse").await;
    let proxy = env.fault_proxy(Upstream::Registry).await;
    let mut repos = vec![app.image_repo.clone()];
    for i in 1..3 {
        let repo = env.registry_repo(&format!("reuse-{i}"));
        env.push_image(&repo, "1.0.0");
        repos.push(repo);
    }
    let images: Vec<String> = repos.iter().map(|r| format!("{}/{r}:1.0.0", proxy.addr())).collect();
    app.write("apps/web/deployment.yaml", &deployment(&images));
    app.commit(env, "three images through the registry proxy");
    app.edit_config(&format!("host: {}\n", env.info.registry), &format!("host: {}\n", proxy.addr()));
    let port = serve(&app, "  webhookBurst: 10\n  webhookEvery: 1s\n", "1h", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    let tokens: Vec<usize> = repos.iter().map(|r| token_requests_for(env, r)).collect();
    assert!(tokens.iter().all(|&n| n >= 1), "the first poll fetched a token per repository: {tokens:?}");

    settled_cycles(&d).await;
    proxy.reset_seen();
    let polls = poll_once(&d, &app, None).await;
    let heads = proxy.count(|s| s.method == "HEAD" && s.status == 200);
    assert_eq!(
        proxy.seen().len(),
        3 * polls as usize,
        "one HEAD per image and poll, nothing else, over {polls} poll(s): {:?}",
        proxy.seen()
    );
    assert_eq!(heads, 3 * polls as usize, "each HEAD carried a valid token: {:?}", proxy.seen());
    let after: Vec<usize> = repos.iter().map(|r| token_requests_for(env, r)).collect();
    assert_eq!(after, tokens, "no token request while the tokens are valid");
}

/// Dry-run patches of the agent's kubeconfig user in `ns`, once the audit log caught up (the
/// testenv's audit policy logs writes, and a server-side dry-run apply is a PATCH).
async fn dry_run_patches(env: &TestEnv, ns: &str) -> usize {
    env.audit_events_settled(ns)
        .await
        .iter()
        .filter(|e| {
            e["user"]["username"] == "testenv-admin"
                && e["objectRef"]["namespace"] == ns
                && e["verb"] == "patch"
                && e["requestURI"].as_str().is_some_and(|u| u.contains("dryRun"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_change_poll_renders_nothing_and_plans_nothing_and_a_forced_one_does_both() {
    let env = TestEnv::get();
    let app = App::new(env, "skip").await;
    // A Helm bundle beside the raw one, helm wrapped so that each run leaves a line.
    app.write("apps/chart/Chart.yaml", "apiVersion: v2\nname: chart\nversion: 0.1.0\n");
    app.write("apps/chart/fleet.yaml", &format!("defaultNamespace: {}\n", app.ns.name));
    app.write(
        "apps/chart/templates/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: chart-config\ndata:\n  zone: {{ .Values.zone | quote }}\n",
    );
    app.write("apps/chart/values.yaml", "zone: eu\n");
    app.commit(env, "a chart beside the raw bundle");
    let runs = app.config.with_file_name("helm-runs");
    let wrapper = app.config.with_file_name("helm-wrapper");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\necho run >> {}\nexec {} \"$@\"\n", runs.display(), env.info.helm.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    app.edit_config(&format!("helm: {}\n", env.info.helm.display()), &format!("helm: {}\n", wrapper.display()));
    let helm_runs = || std::fs::read_to_string(&runs).unwrap_or_default().lines().count();

    let port = serve(&app, "  webhookBurst: 10\n  webhookEvery: 1s\n", "1h", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    d.wait_running("chart", &app.head(), Duration::from_secs(90)).await;
    // One poll plans both bundles in full and keeps the plans (they found nothing to do).
    poll_once(&d, &app, None).await;

    let (patches, renders) = (dry_run_patches(env, &app.ns.name).await, helm_runs());
    assert!(renders >= 1, "the chart was rendered by the wrapper");
    let polls = poll_once(&d, &app, None).await;
    assert_eq!(helm_runs(), renders, "no helm run in {polls} no-change poll(s)");
    assert_eq!(dry_run_patches(env, &app.ns.name).await, patches, "no dry-run patch between two polls");
    let status = d.status().await;
    for b in ["web", "chart"] {
        let s = status["bundles"].as_array().unwrap().iter().find(|s| s["bundle"] == b).unwrap();
        assert_eq!(s["desired"]["result"], "in-sync", "{s}");
        assert!(s["desired"]["message"].as_str().unwrap().starts_with("unchanged since its last full plan"), "{s}");
        let (at, planned) = (s["desired"]["at"].as_i64().unwrap(), s["desired"]["plannedAt"].as_i64().unwrap());
        assert!(planned <= at, "the last full resync is shown, before this poll: {s}");
    }

    // A commit that changes the raw bundle alone, and a file of no bundle: the raw bundle is
    // planned and rolled out, the chart is neither rendered nor planned (its kept plan holds).
    app.write("README.md", "# the store's repository\n");
    app.write(
        "apps/web/extra.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-extra\n  namespace: {}\ndata:\n  k: v\n",
            app.ns.name
        ),
    );
    app.commit(env, "one object more in web, and a README");
    poll_once(&d, &app, None).await;
    d.wait_running("web", &app.head(), Duration::from_secs(60)).await;
    assert_eq!(helm_runs(), renders, "a commit that left the chart's folder alone ran no helm");
    let status = d.status().await;
    let chart = status["bundles"].as_array().unwrap().iter().find(|s| s["bundle"] == "chart").unwrap();
    let message = chart["desired"]["message"].as_str().unwrap();
    assert!(message.starts_with("unchanged since its last full plan"), "{chart}");

    // The command line forces a full plan: the same counters move, so they can.
    settled_cycles(&d).await;
    // `agent reconcile --once` beside the running agent: sent over its control socket.
    let config = app.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::rollout::agent(&["reconcile", "--once", "-c", config.to_str().unwrap()])
    })
    .await
    .unwrap();
    let said = crate::rollout::text(&out);
    assert!(said.contains("deferred to the running agent"), "{said}");
    wait_for("a forced render", Duration::from_secs(60), || async {
        if helm_runs() > renders { Ok(()) } else { Err(tail(&d.logs())) }
    })
    .await;
    settled_cycles(&d).await;
    assert!(dry_run_patches(env, &app.ns.name).await > patches, "a forced cycle plans against the API server");
}
