//! `agent run` against the testenv: webhooks (auth matrix, rate limit, a webhook leads to an
//! apply with polling set to an hour), `/metrics` read by a Prometheus text parser, `/status`,
//! traceparent in the logs, Lease election between two processes with one identity, SIGTERM mid
//! rollout, pause and resume, a registry push a preflight-blocked bundle waits for, systemd's
//! notify protocol against a socket the test binds, and one
//! canary credential that must appear nowhere.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use xtask::support::TestEnv;

use crate::rollout::{App, agent, text};
use crate::util::wait_for;

/// The webhook secret of every test here: it must never be seen again.
const CANARY: &str = "canary-7f3a9c1e5b-never-print-me";

/// A running `agent run`, its log in a file the test reads at any time.
pub(crate) struct Daemon {
    child: Child,
    log: PathBuf,
    url: String,
}

impl Daemon {
    pub(crate) fn start(config: &Path, log: PathBuf, port: u16, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_binary(Path::new(env!("CARGO_BIN_EXE_agent")), config, log, port, env)
    }

    /// `agent run` of another build of the agent (the bench's release build).
    pub(crate) fn start_binary(bin: &Path, config: &Path, log: PathBuf, port: u16, env: &[(&str, &str)]) -> Daemon {
        let child = Command::new(bin)
            .args(["run", "-c", config.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log, url: format!("http://127.0.0.1:{port}") }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn wait_log(&self, what: &str, needle: &str, timeout: Duration) {
        wait_for(what, timeout, || async {
            let l = self.logs();
            if l.contains(needle) { Ok(()) } else { Err(tail(&l)) }
        })
        .await;
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = client().get(format!("{}{path}", self.url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub(crate) async fn status(&self) -> Value {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub(crate) async fn wait_ready(&self) {
        wait_for("/readyz 200", Duration::from_secs(90), || async {
            match client().get(format!("{}/readyz", self.url)).send().await {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(r.text().await.unwrap_or_default()),
                Err(e) => Err(format!("{e}; log: {}", tail(&self.logs()))),
            }
        })
        .await;
    }

    /// Waits until `bundle` runs `commit` (its last-known-good).
    pub(crate) async fn wait_running(&self, bundle: &str, commit: &str, timeout: Duration) -> Value {
        wait_for(&format!("{bundle} running {commit}"), timeout, || async {
            let s = match client().get(format!("{}/status", self.url)).send().await {
                Ok(r) => serde_json::from_str::<Value>(&r.text().await.unwrap_or_default()).unwrap_or_default(),
                Err(e) => return Err(format!("{e}; log: {}", tail(&self.logs()))),
            };
            let Some(bundles) = s["bundles"].as_array() else { return Err(format!("{s}")) };
            let b = bundles.iter().find(|b| b["bundle"] == bundle).cloned();
            match b {
                Some(b) if b["running"]["commit"] == commit && b["state"] == "synced" => Ok(b),
                other => Err(format!("{other:?}\nlog: {}", tail(&self.logs()))),
            }
        })
        .await
    }

    /// Sends SIGTERM and waits for the exit status (within `timeout`).
    pub(crate) async fn sigterm(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout).await
    }

    pub(crate) fn send_sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits for the exit status (within `timeout`).
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "no exit {timeout:?} after SIGTERM: {}", tail(&self.logs()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reconcile cycles finished so far, from /metrics.
    pub(crate) async fn cycles(&self) -> f64 {
        let (_, body) = self.get("/metrics").await;
        sample(&metrics(&body), "gitops_agent_reconcile_duration_seconds_count", &[]).unwrap_or(0.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

pub(crate) fn metrics(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
pub(crate) fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

/// Adds a `server` section (a free port, webhooks whose secret is the canary) and sets the poll
/// interval; returns the port.
pub(crate) fn serve(app: &App, extra_server: &str, poll: &str, lease: &str) -> u16 {
    let port = crate::util::free_port_block(1);
    let secret = app.config.with_file_name("webhook-secret");
    std::fs::write(&secret, CANARY).unwrap();
    app.edit_config("  path: apps\n", &format!("  path: apps\n  pollInterval: {poll}\n"));
    let mut text = std::fs::read_to_string(&app.config).unwrap();
    text.push_str(&format!(
        "server:\n  listen: 127.0.0.1:{port}\n  maxBodyBytes: 4096\n{extra_server}  webhooks:\n\
         \x20 - sender: gitea\n    secretFile: {s}\n  - sender: harbor\n    secretFile: {s}\n\
         \x20 - sender: generic\n    secretFile: {s}\nleaderElection:\n  leaseDuration: {lease}\n",
        s = secret.display()
    ));
    std::fs::write(&app.config, text).unwrap();
    port
}

pub(crate) fn gitea_push(app: &App) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": app.head(),
        "repository": {"full_name": format!("ci/{}", app.repo.name), "clone_url": app.repo.url},
    }))
    .unwrap()
}

pub(crate) async fn post(d: &Daemon, sender: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, String) {
    let mut req = client().post(format!("{}/webhooks/{sender}", d.url)).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

pub(crate) fn signed(body: &[u8]) -> String {
    shared::webhook::signature(CANARY.as_bytes(), body)
}

/// A Gitea push webhook for `app`'s head, signed with the canary secret, as Gitea sends it.
pub(crate) async fn post_gitea_push(d: &Daemon, app: &App) -> (u16, String) {
    let body = gitea_push(app);
    post(d, "gitea", &[("x-gitea-event", "push".to_owned()), ("x-gitea-signature", signed(&body))], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_trigger_applies_with_polling_set_to_an_hour_and_nothing_leaks() {
    let env = TestEnv::get();
    let app = App::new(env, "daemon-hook").await;
    let port = serve(&app, "  webhookBurst: 10\n  webhookEvery: 1s\n", "1h", "15s");
    let dir = app.config.parent().unwrap().to_owned();
    let d = Daemon::start(&app.config, dir.join("agent.log"), port, &[]);
    d.wait_ready().await;
    // The first reconcile runs at start; after it, only webhooks can cause another (1 h poll).
    let first = app.head();
    d.wait_running("web", &first, Duration::from_secs(90)).await;
    let (code, health) = d.get("/healthz").await;
    assert_eq!((code, health.as_str()), (200, "ok\n"));

    // ---- the auth matrix: nothing is triggered by a refused request -------------------------
    let cycles = d.cycles().await;
    let body = gitea_push(&app);
    let push = ("x-gitea-event", "push".to_owned());
    // (case, headers, body, expected status)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("missing signature", vec![push.clone()], body.clone(), 401),
        ("wrong signature", vec![push.clone(), ("x-gitea-signature", "0".repeat(64))], body.clone(), 401),
        (
            "signed with another secret",
            vec![push.clone(), ("x-gitea-signature", shared::webhook::signature(b"other", &body))],
            body.clone(),
            401,
        ),
        ("oversized", vec![push.clone(), ("x-gitea-signature", signed(&[b'x'; 5000]))], vec![b'x'; 5000], 413),
        (
            "an event that is not a push",
            vec![("x-gitea-event", "issues".to_owned()), ("x-gitea-signature", signed(b"{}"))],
            b"{}".to_vec(),
            200,
        ),
        (
            "a push to another repository",
            vec![push.clone(), ("x-gitea-signature", signed(br#"{"repository":{"clone_url":"https://x/y.git"}}"#))],
            br#"{"repository":{"clone_url":"https://x/y.git"}}"#.to_vec(),
            200,
        ),
    ];
    for (name, headers, body, want) in cases {
        let (code, answer) = post(&d, "gitea", &headers, body).await;
        assert_eq!(code, want, "{name}: {answer}");
        assert!(!answer.contains(CANARY), "{name}: {answer}");
    }
    let harbor_for = |repo: &str, tag: &str| {
        serde_json::to_vec(&json!({
            "type": "PUSH_ARTIFACT",
            "event_data": {
                "resources": [{"tag": tag, "resource_url": format!("{}/{repo}:{tag}", env.info.registry)}],
                "repository": {"repo_full_name": repo},
            },
        }))
        .unwrap()
    };
    let (code, answer) =
        post(&d, "harbor", &[("authorization", format!("{CANARY}x"))], harbor_for(&app.image_repo, "1.1.0")).await;
    assert_eq!(code, 401, "harbor with a near-miss secret: {answer}");
    let (code, answer) =
        post(&d, "harbor", &[("authorization", CANARY.to_owned())], harbor_for("library/elsewhere", "9.9.9")).await;
    assert_eq!(code, 200, "harbor push of an image nobody here uses: {answer}");
    assert_eq!(d.cycles().await, cycles, "no refused or foreign webhook caused a reconcile");
    // Every queued trigger is counted as `triggered` when it is sent: none was.
    let (_, body) = d.get("/metrics").await;
    let m = metrics(&body);
    for sender in ["gitea", "harbor"] {
        let n = sample(&m, "gitops_agent_webhook_requests_total", &[("sender", sender), ("outcome", "triggered")]);
        assert_eq!(n.unwrap_or(0.0), 0.0, "{sender}: {body}");
    }
    assert_eq!(
        sample(&m, "gitops_agent_webhook_requests_total", &[("sender", "gitea"), ("outcome", "ignored")]),
        Some(2.0),
        "{body}"
    );

    // ---- a signed Gitea push leads to the apply (the audit log says so, not a clock) --------
    app.set_tag("1.1.0");
    app.commit(env, "web 1.1.0");
    let second = app.head();
    let patches = |writes: Vec<String>| writes.iter().filter(|w| w.starts_with("patch deployments/web")).count();
    let before = patches(app.writes(env).await);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = gitea_push(&app);
    let (code, answer) = post(
        &d,
        "gitea",
        &[
            push.clone(),
            ("x-gitea-signature", signed(&body)),
            ("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01")),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    d.wait_running("web", &second, Duration::from_secs(90)).await;
    let writes = app.writes(env).await;
    assert!(patches(writes.clone()) > before, "the webhook's reconcile patched the Deployment: {writes:?}");
    assert!(app.deployment_image(env).await.contains(":1.1.0@sha256:"));
    // The trace id of the webhook is on the reconcile's log lines, with bundle and revision.
    let applied = d
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("applying ")));
    assert!(applied.is_some(), "{}", d.logs());
    let traced: Vec<Value> = d
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.to_string().contains(trace_id))
        .collect();
    assert!(
        traced.iter().any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("applying"))
            && l["bundle"] == "web"
            && l["span"]["revision"] == second[..12]),
        "the apply carries the webhook's trace id, bundle and revision: {traced:#?}"
    );

    // ---- a replay and a digest-as-tag push: harmless (sources re-read, nothing applied) -----
    let writes = app.writes(env).await;
    let cycles = d.cycles().await;
    let (code, _) = post(&d, "gitea", &[push.clone(), ("x-gitea-signature", signed(&body))], body.clone()).await;
    assert_eq!(code, 202, "a replay is accepted: it only causes a re-read");
    let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let (code, answer) =
        post(&d, "harbor", &[("authorization", CANARY.to_owned())], harbor_for(&app.image_repo, digest)).await;
    assert_eq!(code, 202, "a push by digest to our repository triggers a re-read: {answer}");
    wait_for("the replay's reconcile", Duration::from_secs(60), || async {
        let n = d.cycles().await;
        if n > cycles { Ok(()) } else { Err(format!("{n} cycles")) }
    })
    .await;
    assert_eq!(app.writes(env).await, writes, "nothing applied");
    assert!(app.deployment_image(env).await.contains(":1.1.0@sha256:"), "the payload's digest was not used");

    // ---- per-sender rate limit: 429 with Retry-After past the burst ------------------------
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..14 {
        let r = client()
            .post(format!("{}/webhooks/generic", d.url))
            .header("x-signature-256", format!("sha256={}", signed(b"{}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        }
        codes.push(r.status().as_u16());
    }
    assert!(codes.contains(&202) && codes.contains(&429), "{codes:?}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{codes:?}");

    // ---- /metrics, read as Prometheus would ------------------------------------------------
    let (code, body) = d.get("/metrics").await;
    assert_eq!(code, 200);
    let m = metrics(&body);
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let v = sample(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"));
        assert!(v >= min, "{name} {labels:?} = {v}, expected >= {min}");
    };
    at_least("gitops_agent_reconcile_duration_seconds_count", &[], 3.0);
    at_least("gitops_agent_rollouts_total", &[("result", "rolled-out")], 2.0);
    at_least("gitops_agent_bundle_sync_state", &[("bundle", "web"), ("state", "synced")], 1.0);
    at_least("gitops_agent_source_requests_total", &[("source", "git"), ("kind", "poll"), ("outcome", "fetched")], 2.0);
    at_least("gitops_agent_source_requests_total", &[("source", env.info.registry.as_str()), ("outcome", "ok")], 1.0);
    at_least("gitops_agent_webhook_requests_total", &[("sender", "gitea"), ("outcome", "unauthorized")], 3.0);
    at_least("gitops_agent_webhook_requests_total", &[("sender", "gitea"), ("outcome", "triggered")], 2.0);
    at_least("gitops_agent_webhook_requests_total", &[("sender", "gitea"), ("outcome", "too_large")], 1.0);
    at_least("gitops_agent_webhook_requests_total", &[("sender", "generic"), ("outcome", "rate_limited")], 1.0);
    at_least("gitops_agent_last_successful_sync_timestamp_seconds", &[], 1.7e9);
    at_least("gitops_agent_leader", &[], 1.0);

    // ---- status from the running agent: sources, role, desired images -----------------------
    let s = d.status().await;
    assert_eq!(s["agent"]["leader"], true, "{s:#}");
    assert_eq!(s["sources"][0]["url"], app.repo.url.as_str());
    assert_eq!(s["sources"][0]["commit"], second.as_str());
    assert!(s["sources"][0]["lastError"].is_null());
    let web = s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").unwrap();
    assert!(web["desired"]["images"][0].as_str().unwrap().contains(":1.1.0@sha256:"), "{web:#}");
    let out = agent(&["status", "-c", app.config.to_str().unwrap()]);
    let screen = text(&out);
    assert!(screen.contains("leader: applies") && screen.contains(&format!("git {}", app.repo.url)), "{screen}");
    assert!(screen.lines().any(|l| l.starts_with("web ") && l.contains("synced")), "{screen}");

    // ---- drift: someone edits what the agent applied; the watch puts Git's version back ------
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client().await, &app.ns.name);
    let good = app.deployment_image(env).await;
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "busybox:drift"}]}}}});
    deployments
        .patch(
            "web",
            &kube::api::PatchParams { field_manager: Some("intruder".into()), ..Default::default() },
            &kube::api::Patch::Strategic(edit),
        )
        .await
        .unwrap();
    // The edit took the image field over (an Update), and the bundle does not force conflicts:
    // the drift's reconcile refuses, and status names the field and who holds it.
    let web = wait_for("the drift's reconcile", Duration::from_secs(90), || async {
        let s = d.status().await;
        let web = s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").cloned().unwrap();
        if web["state"] == "blocked" { Ok(web) } else { Err(format!("{web}; log: {}", tail(&d.logs()))) }
    })
    .await;
    assert!(d.logs().contains(&format!("drift: Deployment/{}/web changed by intruder", app.ns.name)), "{}", d.logs());
    let next = web["next"].as_str().unwrap();
    assert!(next.contains(r#"conflict with "intruder""#) && next.contains("forceConflicts"), "{web:#}");
    assert_ne!(app.deployment_image(env).await, good, "a conflict is not overwritten without forceConflicts");

    // ---- one canary credential, and the real ones, appear nowhere ---------------------------
    let events: Api<Event> = Api::namespaced(env.client().await, &app.ns.name);
    let events = serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.client().await, &app.ns.name);
    let records = secrets
        .list(&ListParams::default().labels(&format!("gitops-agent.io/state-of={}", app.ns.name)))
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| {
            serde_json::to_string(
                &agent::state::decode_secret_data(&s.data.as_ref().unwrap()["record.json.gz"].0).unwrap(),
            )
            .unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let surfaces = [
        ("log", d.logs()),
        ("status", d.get("/status").await.1),
        ("human status", screen),
        ("metrics", body),
        ("events", events),
        ("state records", records),
        (
            "local records",
            std::fs::read_dir(app.state_dir.join("state"))
                .unwrap()
                .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect(),
        ),
    ];
    for (name, content) in &surfaces {
        for secret in [CANARY, env.info.git_agent.password.as_str(), env.info.registry_agent.password.as_str()] {
            assert!(!content.contains(secret), "a credential is in the {name}");
        }
    }
}

/// A copy of the app's config listening on another free port (a second replica).
/// A second replica of `app`'s agent: same identity, its own port and state folder (as a second
/// pod has; one state folder serves one agent, whose control socket is in it).
fn replica(app: &App, port: u16) -> (PathBuf, u16) {
    let other = crate::util::free_port_block(1);
    let text = std::fs::read_to_string(&app.config).unwrap();
    let path = app.config.with_file_name("agent-b.yaml");
    let state = format!("stateDir: {}\n", app.state_dir.display());
    assert!(text.contains(&state), "{text}");
    let text = text
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{other}"))
        .replace(&state, &format!("stateDir: {}-b\n", app.state_dir.display()));
    std::fs::write(&path, text).unwrap();
    (path, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_identity_elect_one_leader_and_hand_over_when_it_is_killed() {
    let env = TestEnv::get();
    let app = App::new(env, "daemon-lease").await;
    let port_a = serve(&app, "", "5s", "5s");
    let (config_b, port_b) = replica(&app, port_a);
    let dir = app.config.parent().unwrap().to_owned();
    let configs = [app.config.clone(), config_b];
    let mut replicas = vec![
        Daemon::start(&configs[0], dir.join("a.log"), port_a, &[]),
        Daemon::start(&configs[1], dir.join("b.log"), port_b, &[]),
    ];
    for r in &replicas {
        r.wait_ready().await;
    }
    let head = app.head();
    // Exactly one leads; it rolls out, the other never applies.
    let leader = wait_for("exactly one leader", Duration::from_secs(60), || async {
        let roles = [
            replicas[0].status().await["agent"]["leader"].clone(),
            replicas[1].status().await["agent"]["leader"].clone(),
        ];
        match (roles[0].as_bool(), roles[1].as_bool()) {
            (Some(true), Some(false)) => Ok(0),
            (Some(false), Some(true)) => Ok(1),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let standby = 1 - leader;
    replicas[leader].wait_running("web", &head, Duration::from_secs(90)).await;
    assert!(replicas[leader].logs().contains("applying "), "{}", replicas[leader].logs());
    let s = replicas[standby].status().await;
    assert_eq!(s["sources"][0]["commit"], head.as_str(), "the standby polls its sources too");
    assert!(
        !replicas[standby].logs().contains("reconcile started"),
        "the standby reconciled: {}",
        replicas[standby].logs()
    );
    let screen = text(&agent(&["status", "-c", configs[standby].to_str().unwrap()]));
    assert!(screen.contains("standby: another replica leads"), "{screen}");

    // SIGKILL the leader: its Lease expires and the standby takes over, then follows Git.
    let dead = &mut replicas[leader];
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let survivor = &replicas[standby];
    wait_for("the standby to take the Lease", Duration::from_secs(60), || async {
        let s = survivor.status().await;
        if s["agent"]["leader"] == true { Ok(()) } else { Err(tail(&survivor.logs())) }
    })
    .await;
    assert!(survivor.logs().contains("acquired the Lease: applying"), "{}", survivor.logs());
    app.set_tag("1.1.0");
    app.commit(env, "web 1.1.0");
    survivor.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    assert!(app.deployment_image(env).await.contains(":1.1.0@sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_rollout_persists_the_step_and_the_next_start_finishes_it_then_pause_holds_a_change() {
    let env = TestEnv::get();
    let app = App::new(env, "daemon-term").await;
    let port = serve(&app, "", "1h", "15s");
    let dir = app.config.parent().unwrap().to_owned();
    let mut d = Daemon::start(&app.config, dir.join("first.log"), port, &[("GITOPS_AGENT_PAUSE_AT", "mid-rollout")]);
    d.wait_log("the rollout to be under way", "paused at mid-rollout", Duration::from_secs(90)).await;
    let status = d.sigterm(Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}: {}", tail(&d.logs()));
    assert!(d.logs().contains("the reconcile in flight was stopped"), "{}", d.logs());
    let record = app.file_record();
    assert_eq!(record["phase"]["phase"], "rollingOut", "the step was persisted before it began: {record:#}");
    assert_eq!(app.secret_record(env).await["phase"]["phase"], "rollingOut");

    // The next start finishes it from the record.
    let d = Daemon::start(&app.config, dir.join("second.log"), port, &[]);
    d.wait_ready().await;
    let head = app.head();
    d.wait_running("web", &head, Duration::from_secs(90)).await;
    assert!(d.logs().contains("resuming: rolling out was interrupted"), "{}", d.logs());

    // Paused: a change in Git waits (the webhook is taken, nothing is applied) until resumed.
    let out = agent(&["pause", "web", "--reason", "store opening hours", "-c", app.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    app.set_tag("1.1.0");
    app.commit(env, "web 1.1.0");
    let cycles = d.cycles().await;
    let (code, _) = post_gitea_push(&d, &app).await;
    assert_eq!(code, 202);
    wait_for("the webhook's reconcile", Duration::from_secs(60), || async {
        let n = d.cycles().await;
        if n > cycles { Ok(()) } else { Err(format!("{n} cycles")) }
    })
    .await;
    let s = d.status().await;
    let web = s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").unwrap().clone();
    assert_eq!(web["state"], "paused", "{web:#}");
    assert_eq!(web["running"]["commit"], head.as_str());
    assert!(web["next"].as_str().unwrap().contains("store opening hours"), "{web:#}");
    assert!(app.deployment_image(env).await.contains(":1.0.0@sha256:"), "nothing applied while paused");
    let out = agent(&["resume", "web", "-c", app.config.to_str().unwrap()]);
    assert!(text(&out).contains("the running agent reconciles it now"), "{}", text(&out));
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    assert!(app.deployment_image(env).await.contains(":1.1.0@sha256:"));
}

/// Issue 18, item 7: CI committed a tag before its push finished, so the bundle's preflight
/// blocks it; the registry's webhook for that very push must concern this agent (it was answered
/// 200 "concerns nothing", and the release waited for the next poll, here an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_push_of_the_image_a_blocked_bundle_waits_for_triggers_its_rollout() {
    let env = TestEnv::get();
    let app = App::new(env, "daemon-wait").await;
    // An image repository nothing else uses, its tag not pushed yet.
    let repo = env.registry_repo("daemon-wait-img");
    let image = format!("{}/{repo}", env.info.registry);
    app.write("apps/web/deployment.yaml", &crate::rollout::DEPLOYMENT.replace("IMAGE", &format!("{image}:1.0.0")));
    app.commit(env, "web from a tag CI has not pushed yet");
    let port = serve(&app, "", "1h", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    wait_for("web blocked by its preflight", Duration::from_secs(90), || async {
        let s = d.status().await;
        let web = s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").cloned();
        match web {
            Some(b) if b["state"] == "blocked" => Ok(()),
            other => Err(format!("{other:?}\nlog: {}", tail(&d.logs()))),
        }
    })
    .await;

    env.push_image(&repo, "1.0.0");
    let body = serde_json::to_vec(&json!({
        "type": "PUSH_ARTIFACT",
        "event_data": {
            "resources": [{"tag": "1.0.0", "resource_url": format!("{image}:1.0.0")}],
            "repository": {"repo_full_name": repo},
        },
    }))
    .unwrap();
    let (code, answer) = post(&d, "harbor", &[("authorization", CANARY.to_owned())], body).await;
    assert_eq!(code, 202, "the push the blocked bundle waits for concerns this agent: {answer}");
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    assert!(app.deployment_image(env).await.starts_with(&format!("{image}:1.0.0@sha256:")));
}

/// Receives the next datagram on systemd's notify socket within `timeout`, as text.
async fn notify_message(sock: &tokio::net::UnixDatagram, timeout: Duration, d: &Daemon) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("reading the notify socket: {e}"),
        Err(_) => panic!("no notify message within {timeout:?}; log: {}", tail(&d.logs())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_agent_says_ready_when_readyz_does_pings_the_watchdog_and_says_stopping_on_sigterm() {
    let env = TestEnv::get();
    let app = App::new(env, "daemon-notify").await;
    let port = serve(&app, "", "1h", "15s");
    let dir = app.config.parent().unwrap().to_owned();
    // The socket systemd would listen on, bound by the test.
    let path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
    // WatchdogSec=1s: pings every 500 ms.
    let mut d = Daemon::start(
        &app.config,
        dir.join("agent.log"),
        port,
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")],
    );
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let m = notify_message(&sock, Duration::from_secs(10), &d).await;
        if m.lines().any(|l| l == "READY=1") {
            // READY=1 only once /readyz would say so (it never says unready again on its own).
            let (code, body) = d.get("/readyz").await;
            assert_eq!(code, 200, "READY=1 was sent while /readyz says {body}");
            assert!(m.lines().any(|l| l == "STATUS=ready"), "{m:?}");
            break;
        }
        seen.push(m);
        assert!(std::time::Instant::now() < deadline, "no READY=1 in 90 s; got {seen:?}");
    }
    assert!(
        seen.iter().all(|m| !m.contains("READY=1") && !m.contains("STOPPING=1")),
        "nothing but watchdog pings and status before ready: {seen:?}"
    );
    // Watchdog pings keep coming at about half of WATCHDOG_USEC.
    let start = std::time::Instant::now();
    let mut pings = 0;
    while pings < 4 {
        let m = notify_message(&sock, Duration::from_secs(2), &d).await;
        if m.lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    let took = start.elapsed();
    assert!(took < Duration::from_millis(2600), "4 pings took {took:?} (every 500 ms expected)");
    assert!(took > Duration::from_millis(1000), "4 pings took only {took:?} (every 500 ms expected)");

    // SIGTERM: STOPPING=1 before the process exits.
    d.send_sigterm();
    let stopping = wait_for_stopping(&sock, &d).await;
    assert!(stopping.lines().any(|l| l.starts_with("STATUS=stopping")), "{stopping:?}");
    let status = d.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}: {}", tail(&d.logs()));
}

async fn wait_for_stopping(sock: &tokio::net::UnixDatagram, d: &Daemon) -> String {
    for _ in 0..50 {
        let m = notify_message(sock, Duration::from_secs(10), d).await;
        if m.lines().any(|l| l == "STOPPING=1") {
            return m;
        }
    }
    panic!("no STOPPING=1 after SIGTERM; log: {}", tail(&d.logs()));
}
