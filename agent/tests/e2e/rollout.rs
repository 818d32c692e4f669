//! `agent reconcile --once` against the testenv: apply, rollout watch, last-known-good, automatic
//! rollback with an Event, quarantine, preflight, dry-run, a missing target namespace created.
//! "Nothing applied" is proven from the API server's audit log.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams};
use serde_json::Value;
use xtask::fault_proxy::FaultProxy;
use xtask::support::{AUDIT_MARKER_PREFIX, GitRepo, TestEnv, Upstream};

use crate::util::{git, wait_for};

pub(crate) fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent")).args(args).env("NO_COLOR", "1").output().expect("running agent")
}

pub(crate) fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A test's app: a bundle `apps/web` (a Deployment and a ConfigMap, `fleet.yaml` naming the
/// test's namespace) in the test's own git repository, its image in the test's own registry
/// repository (tags `1.0.0`, `1.1.0`, `1.2.0-broken`), and an agent config whose identity,
/// state namespace and state folder are the test's.
pub(crate) struct App {
    pub(crate) ns: xtask::support::TestNamespace,
    pub(crate) repo: GitRepo,
    pub(crate) image: String,
    /// The registry repository of `image` (to push more tags).
    pub(crate) image_repo: String,
    pub(crate) work: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

pub(crate) const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: IMAGE
";

impl App {
    pub(crate) async fn new(env: &TestEnv, hint: &str) -> App {
        let ns = env.namespace(hint).await;
        let repo = env.git_repo(hint);
        let image_repo = env.registry_repo(hint);
        std::thread::scope(|s| {
            for tag in ["1.0.0", "1.1.0", "1.2.0-broken"] {
                let r = image_repo.clone();
                s.spawn(move || env.push_image(&r, tag));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("apps/web")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let app = App {
            image: format!("{}/{image_repo}", env.info.registry),
            image_repo: image_repo.clone(),
            config: dir.path().join("agent.yaml"),
            state_dir: dir.path().join("state"),
            ns,
            repo,
            work,
            _dir: dir,
        };
        app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {}\n", app.ns.name));
        app.write("apps/web/deployment.yaml", &DEPLOYMENT.replace("IMAGE", &format!("{}:1.0.0", app.image)));
        app.write(
            "apps/web/config.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  greeting: hello\n",
        );
        app.write("README.md", "the app\n");
        app.commit(env, "first version");
        let secret = app._dir.path().join("git-token");
        std::fs::write(&secret, &env.info.git_agent.password).unwrap();
        let reg_secret = app._dir.path().join("registry-token");
        std::fs::write(&reg_secret, &env.info.registry_agent.password).unwrap();
        std::fs::write(
            &app.config,
            format!(
                "identity:\n  nodeName: {node}\n  agentId: {id}\n\
                 git:\n  url: {url}\n  path: apps\n  caFile: {ca}\n  auth:\n    username: {gu}\n    passwordFile: {gs}\n\
                 registries:\n- host: {reg}\n  caFile: {ca}\n  auth:\n    username: {ru:?}\n    passwordFile: {rs}\n\
                 kube:\n  kubeconfig: {kc}\n  namespace: {id}\nrender:\n  helm: {helm}\n  kustomize: {kus}\n\
                 rollout:\n  progressDeadline: 60s\nstateDir: {state}\n",
                node = env.info.node_name,
                id = app.ns.name,
                url = app.repo.url,
                ca = env.info.ca_cert.display(),
                gu = env.info.git_agent.username,
                gs = secret.display(),
                reg = env.info.registry,
                ru = env.info.registry_agent.username,
                rs = reg_secret.display(),
                kc = env.info.kubeconfig.display(),
                helm = env.info.helm.display(),
                kus = env.info.kustomize.display(),
                state = app.state_dir.display(),
            ),
        )
        .unwrap();
        app
    }

    pub(crate) fn write(&self, file: &str, content: &str) {
        let path = self.work.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub(crate) fn set_tag(&self, tag: &str) {
        self.write("apps/web/deployment.yaml", &DEPLOYMENT.replace("IMAGE", &format!("{}:{tag}", self.image)));
    }

    pub(crate) fn commit(&self, env: &TestEnv, message: &str) {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        xtask::seed::git_push(&env.info, &env.info.git_ci, &self.work, &self.repo.name, "main").unwrap();
    }

    pub(crate) fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// `agent reconcile --once -o json [extra]`: exit code, report, human-readable text.
    pub(crate) fn reconcile(&self, extra: &[&str]) -> (Option<i32>, Value, String) {
        let mut args = vec!["reconcile", "--once", "-c", self.config.to_str().unwrap(), "-o", "json"];
        args.extend(extra);
        let out = agent(&args);
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out.status.code(), doc, text(&out))
    }

    pub(crate) async fn deployment_image(&self, env: &TestEnv) -> String {
        let api: Api<Deployment> = Api::namespaced(env.client().await, &self.ns.name);
        let d = api.get("web").await.unwrap();
        d.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap()
    }

    /// The record in the state Secret, decoded as an operator would (`kubectl get secret`).
    pub(crate) async fn secret_record(&self, env: &TestEnv) -> Value {
        let api: Api<Secret> = Api::namespaced(env.client().await, &self.ns.name);
        let list = api
            .list(&ListParams::default().labels(&format!("gitops-agent.io/state-of={}", self.ns.name)))
            .await
            .unwrap();
        assert_eq!(list.items.len(), 1, "one state Secret per bundle");
        let data = &list.items[0].data.as_ref().unwrap()["record.json.gz"];
        serde_json::to_value(agent::state::decode_secret_data(&data.0).unwrap()).unwrap()
    }

    /// Writes (not dry-runs) to this test's namespace that the audit log recorded, once it has
    /// caught up (a marker written now shows in it), so "nothing applied" cannot pass on a log
    /// that was late or unreadable.
    pub(crate) async fn writes(&self, env: &TestEnv) -> Vec<String> {
        env.audit_events_settled(&self.ns.name)
            .await
            .into_iter()
            .filter(|e| {
                // The agent's kubeconfig user (controllers write too: the default ServiceAccount).
                e["user"]["username"] == "testenv-admin"
                    && !e["objectRef"]["name"].as_str().is_some_and(|n| n.starts_with(AUDIT_MARKER_PREFIX))
                    && e["objectRef"]["namespace"] == self.ns.name.as_str()
                    && !matches!(e["verb"].as_str(), Some("get" | "list" | "watch"))
                    && !e["requestURI"].as_str().unwrap_or_default().contains("dryRun")
                    && e["objectRef"]["resource"] != "events"
            })
            .map(|e| {
                format!(
                    "{} {}/{}",
                    e["verb"].as_str().unwrap_or(""),
                    e["objectRef"]["resource"].as_str().unwrap_or(""),
                    e["objectRef"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

pub(crate) fn bundle<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bundle"] == name)
        .unwrap_or_else(|| panic!("no bundle {name}: {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_tag_becomes_lkg_a_broken_one_is_rolled_back_with_an_event_and_stays_quarantined() {
    let env = TestEnv::get();
    let app = App::new(env, "rollback").await;
    let ns = &app.ns.name;

    // 1. A good version rolls out and becomes last-known-good, in the Secret and the local file.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "rolledOut", "{human}");
    let good_image = app.deployment_image(env).await;
    assert!(good_image.starts_with(&format!("{}:1.0.0@sha256:", app.image)), "{good_image}");
    let record = app.secret_record(env).await;
    let first_commit = app.head();
    assert_eq!(record["lkg"]["revision"]["commit"], first_commit.as_str());
    assert_eq!(record["phase"]["phase"], "idle");
    let files: Vec<_> = std::fs::read_dir(app.state_dir.join("state")).unwrap().collect();
    assert_eq!(files.len(), 1, "the local copy of the record");

    // Nothing changed: in sync, and nothing written.
    let before = app.writes(env).await.len();
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("inSync")), "{human}");
    assert_eq!(app.writes(env).await.len(), before, "an in-sync reconcile writes nothing");

    // 2. A broken tag, committed with a new ConfigMap: fails fast, rolled back within 30 s, the
    //    ConfigMap it added is deleted, an Event says why.
    app.set_tag("1.2.0-broken");
    app.write("apps/web/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-extra\ndata:\n  a: b\n");
    app.commit(env, "bump to 1.2.0-broken");
    let broken_commit = app.head();
    let started = Instant::now();
    let (code, doc, human) = app.reconcile(&[]);
    let took = started.elapsed();
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "rolledBack", "{human}");
    assert!(b["message"].as_str().unwrap().contains("CrashLoopBackOff"), "{human}");
    assert!(took < Duration::from_secs(30), "rolled back in {took:?}");
    assert_eq!(app.deployment_image(env).await, good_image, "the last-known-good runs again");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, ns);
    assert!(cms.get_opt("web-extra").await.unwrap().is_none(), "what the failed revision added is gone");
    assert!(cms.get_opt("web-config").await.unwrap().is_some());
    let ev = crate::util::event(env, ns, "RolledBack").await;
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("web"));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.as_deref().unwrap().contains("CrashLoopBackOff"), "{:?}", ev.note);
    let record = app.secret_record(env).await;
    assert_eq!(record["quarantine"]["revision"]["commit"], broken_commit.as_str());
    assert_eq!(record["lkg"]["revision"]["commit"], first_commit.as_str(), "the last-known-good is unchanged");
    assert_eq!(record["last"]["result"], "rolledBack");
    assert_eq!((record["counts"]["rolledOut"].as_u64(), record["counts"]["rolledBack"].as_u64()), (Some(1), Some(1)));

    // 3. An unrelated commit renders the same objects: the quarantined revision is not retried.
    app.write("README.md", "the app, documented\n");
    app.commit(env, "docs only");
    let before = app.writes(env).await;
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "blocked");
    assert!(b["message"].as_str().unwrap().contains("quarantined"), "{human}");
    assert_eq!(app.writes(env).await, before, "a quarantined revision is not applied again");
    assert_eq!(app.deployment_image(env).await, good_image);

    // `agent status` tells the operator what runs, what was rolled back and what happens next.
    let config = app.config.to_str().unwrap();
    let out = agent(&["status", "-c", config]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = table.lines().find(|l| l.starts_with("web ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("rolled-back") && row.contains(&first_commit[..12]), "{table}");
    assert!(row.contains(&format!("keeps {} off", &broken_commit[..12])), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");
    let out = agent(&["status", "-c", config, "--explain", "web", "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(doc["bundles"][0]["quarantined"]["commit"], broken_commit.as_str(), "{doc}");
    assert_eq!(doc["bundles"][0]["running"]["commit"], first_commit.as_str(), "{doc}");
    let out = agent(&["status", "-c", config, "--explain", "web"]);
    assert!(text(&out).contains("CrashLoopBackOff") && text(&out).contains("next: keeps"), "{}", text(&out));
    let out = agent(&["status", "-c", config, "--explain", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no record of bundle nope"), "{}", text(&out));

    // 4. A real change is tried, and rolls out.
    app.set_tag("1.1.0");
    app.commit(env, "bump to 1.1.0");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert!(app.deployment_image(env).await.starts_with(&format!("{}:1.1.0@sha256:", app.image)));
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["commit"], app.head());
    assert_eq!(record["quarantine"], Value::Null, "a healthy new revision lifts the quarantine");
    assert_eq!(record["history"][0]["revision"]["commit"], first_commit.as_str(), "the earlier LKG is kept");
    assert_eq!((record["counts"]["rolledOut"].as_u64(), record["counts"]["rolledBack"].as_u64()), (Some(2), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_stopped_by_preflight_and_a_dry_run_writes_nothing() {
    let env = TestEnv::get();
    let app = App::new(env, "preflight").await;

    // A dry run on a fresh namespace: says what it would apply, writes nothing at all.
    let (code, doc, human) = app.reconcile(&["--dry-run"]);
    assert_eq!(code, Some(1), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "wouldApply");
    assert_eq!(b["summary"]["create"], 2, "{human}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "dry run: no write in the namespace");
    assert!(!app.state_dir.join("state").exists(), "dry run: no state file");

    app.set_tag("9.9.9-missing");
    app.commit(env, "a tag CI never pushed");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "blocked");
    assert!(
        b["message"].as_str().unwrap().contains(&format!("image {}:9.9.9-missing is not in the registry", app.image)),
        "{human}"
    );
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "preflight: nothing applied");
}

/// Issue 18, item 2: Fleet creates a bundle's target namespace; so does the agent, labelled as
/// its own, and it is no object of the bundle (a rollback or a prune never deletes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_namespace_that_does_not_exist_is_created_labelled_as_ours_and_the_bundle_rolls_out() {
    let env = TestEnv::get();
    let app = App::new(env, "new-ns").await;
    let target = format!("{}-t", app.ns.name);
    let namespaces: Api<Namespace> = Api::all(env.client().await);
    assert!(namespaces.get_opt(&target).await.unwrap().is_none());
    app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {target}\n"));
    app.commit(env, "web in a namespace nobody made");

    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert!(human.contains(&format!("created the missing Namespace/{target}")), "{human}");
    let ns = namespaces.get(&target).await.unwrap();
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("gitops-agent.io/owner"), Some(&app.ns.name), "{labels:?}");
    assert_eq!(labels.get("gitops-agent.io/bundle"), None, "not one of the bundle's objects: {labels:?}");
    let annotations = ns.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("gitops-agent.io/created-for").map(String::as_str), Some("web"), "{annotations:?}");
    let record = app.secret_record(env).await;
    let kinds: Vec<&str> =
        record["lkg"]["objects"].as_array().unwrap().iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(!kinds.contains(&"Namespace"), "the record holds no Namespace to roll back or prune: {kinds:?}");
    let deployments: Api<Deployment> = Api::namespaced(env.client().await, &target);
    assert!(deployments.get_opt("web").await.unwrap().is_some());
    namespaces.delete(&target, &Default::default()).await.unwrap();
}

// ---- restart safety: SIGKILL at each phase ----------------------------------------------------

impl App {
    /// Starts `agent reconcile --once` paused at `step` (the agent's test seam), waits until it
    /// says so, and SIGKILLs it.
    pub(crate) fn kill_at(&self, step: &str) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args(["reconcile", "--once", "-c", self.config.to_str().unwrap()])
            .env("GITOPS_AGENT_PAUSE_AT", step)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
                seen.push(line.clone());
                if line.starts_with("paused at ") {
                    let _ = tx.send(Ok(line));
                    return;
                }
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(line)) => assert_eq!(line, format!("paused at {step}")),
            Ok(Err(output)) => panic!("the agent ended without reaching {step}:\n{output}"),
            Err(e) => panic!("the agent did not reach {step}: {e}"),
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// The local copy of the record (what survives on the node's disk).
    pub(crate) fn file_record(&self) -> Value {
        let dir = self.state_dir.join("state");
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap()
    }

    /// Points the config's git source at a port nobody listens on.
    pub(crate) fn break_git(&self) {
        self.edit_config(&self.repo.url, "https://127.0.0.1:9/git/unreachable.git");
    }

    /// Points the agent at the API server through a fault proxy of its own: the proxy, and the
    /// folder holding the kubeconfig for it (keep both alive for the test).
    pub(crate) async fn through_api_proxy(&self, env: &TestEnv) -> (FaultProxy, tempfile::TempDir) {
        let proxy = env.fault_proxy(Upstream::ApiServer).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = env.kubeconfig_for(&proxy.url(), dir.path());
        self.edit_config(&env.info.kubeconfig.display().to_string(), &kubeconfig.display().to_string());
        (proxy, dir)
    }

    /// Points the agent's registry at a fault proxy of the test's own: the proxy, and the
    /// app's image as named through it (commit it to use it; the registry behind is the same).
    pub(crate) async fn through_registry_proxy(&self, env: &TestEnv) -> (FaultProxy, String) {
        let proxy = env.fault_proxy(Upstream::Registry).await;
        let host = proxy.addr().to_string();
        self.edit_config(&format!("- host: {}\n", env.info.registry), &format!("- host: {host}\n"));
        let image = format!("{host}/{}", self.image_repo);
        (proxy, image)
    }

    /// Replaces `from` with `to` in the agent's config file.
    pub(crate) fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from:?} is not in the config");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_apply_the_restarted_agent_finishes_the_rollout() {
    let env = TestEnv::get();
    let app = App::new(env, "kill-apply").await;
    assert_eq!(app.reconcile(&[]).0, Some(0));
    let good_image = app.deployment_image(env).await;
    app.set_tag("1.1.0");
    app.commit(env, "bump to 1.1.0");

    app.kill_at("before-apply");
    assert_eq!(app.file_record()["phase"]["phase"], "rollingOut", "persisted before the apply");
    assert_eq!(app.deployment_image(env).await, good_image, "killed before anything was applied");

    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(doc["resumed"][0]["result"], "rolledOut", "{human}");
    assert!(doc["resumed"][0]["message"].as_str().unwrap().contains("resumed after a restart"), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "inSync", "{human}");
    assert!(app.deployment_image(env).await.starts_with(&format!("{}:1.1.0@sha256:", app.image)));
    assert_eq!(app.secret_record(env).await["phase"]["phase"], "idle");

    // `agent rollback` by hand: back to 1.0.0, and 1.1.0 is not re-applied by the next reconcile.
    let out = agent(&["rollback", "web", "-c", app.config.to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(app.deployment_image(env).await, good_image);
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    assert!(bundle(&doc, "web")["message"].as_str().unwrap().contains("rolled back by hand"), "{human}");
    assert_eq!(app.deployment_image(env).await, good_image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_rollout_the_restarted_agent_rolls_back_with_git_unreachable() {
    let env = TestEnv::get();
    let app = App::new(env, "kill-mid").await;
    assert_eq!(app.reconcile(&[]).0, Some(0));
    let good_image = app.deployment_image(env).await;
    app.set_tag("1.2.0-broken");
    app.commit(env, "bump to 1.2.0-broken");

    app.kill_at("mid-rollout");
    assert!(app.deployment_image(env).await.contains(":1.2.0-broken@"), "the broken version was applied");
    app.break_git();

    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(doc["resumed"][0]["result"], "rolledBack", "{human}");
    assert_eq!(app.deployment_image(env).await, good_image, "rolled back from the record alone");
    assert!(doc["error"].as_str().unwrap().contains("127.0.0.1:9"), "the git failure is reported: {human}");
    assert_eq!(code, Some(2), "{human}");
    assert_eq!(app.secret_record(env).await["phase"]["phase"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_rollback_the_restarted_agent_finishes_the_rollback_with_git_unreachable() {
    let env = TestEnv::get();
    let app = App::new(env, "kill-back").await;
    assert_eq!(app.reconcile(&[]).0, Some(0));
    let good_image = app.deployment_image(env).await;
    app.set_tag("1.2.0-broken");
    app.commit(env, "bump to 1.2.0-broken");

    app.kill_at("mid-rollback");
    assert_eq!(app.file_record()["phase"]["phase"], "rollingBack");
    app.break_git();

    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(doc["resumed"][0]["result"], "rolledBack", "{human}");
    assert_eq!(code, Some(2), "git is still down: {human}");
    assert_eq!(app.deployment_image(env).await, good_image);
    let record = app.secret_record(env).await;
    assert_eq!(record["phase"]["phase"], "idle");
    assert!(record["quarantine"]["reason"].as_str().unwrap().contains("CrashLoopBackOff"), "{record}");

    // By hand: `agent rollback` needs an earlier revision; `agent retry` lifts the quarantine.
    let out = agent(&["rollback", "web", "-c", app.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("has no earlier revision than"), "{}", text(&out));
    let out = agent(&["retry", "web", "-c", app.config.to_str().unwrap()]);
    assert!(out.status.success() && text(&out).contains("lifted the quarantine"), "{}", text(&out));
    assert_eq!(app.secret_record(env).await["quarantine"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_found_running_are_adopted_so_the_first_rollout_can_roll_back_to_them() {
    let env = TestEnv::get();
    let app = App::new(env, "adopt").await;
    let ns = &app.ns.name;
    // Deployed before the agent, as Fleet or Helm would have: no owner label of ours.
    let before: Deployment =
        serde_saphyr::from_str(&DEPLOYMENT.replace("IMAGE", &format!("{}:1.0.0", app.image))).unwrap();
    let api: Api<Deployment> = Api::namespaced(env.client().await, ns);
    api.create(&Default::default(), &before).await.unwrap();
    wait_for("the pre-existing Deployment available", Duration::from_secs(60), || async {
        let d = api.get("web").await.map_err(|e| e.to_string())?;
        (d.status.and_then(|s| s.available_replicas) == Some(1)).then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;

    // The first commit the agent sees is broken: it adopts what runs, fails, and rolls back to it.
    app.set_tag("1.2.0-broken");
    app.commit(env, "bump to 1.2.0-broken");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "rolledBack", "{human}");
    assert!(human.contains("adopted the running objects"), "{human}");
    assert_eq!(app.deployment_image(env).await, format!("{}:1.0.0", app.image), "what ran before runs again");
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["commit"], "adopted");
    let d = api.get("web").await.unwrap();
    assert_eq!(d.metadata.labels.unwrap()["gitops-agent.io/owner"], ns.as_str(), "taken over explicitly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_and_daemonset_rollouts_complete() {
    let env = TestEnv::get();
    let app = App::new(env, "sts-ds").await;
    let image = format!("{}:1.0.0", app.image);
    app.write(
        "apps/web/statefulset.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  replicas: 2\n  serviceName: db\n  \
             selector:\n    matchLabels: {{app: db}}\n  template:\n    metadata:\n      labels: {{app: db}}\n    spec:\n      \
             terminationGracePeriodSeconds: 1\n      containers:\n      - name: db\n        image: {image}\n"
        ),
    );
    // Only on the testenv's node: other tests add nodes of their own.
    app.write(
        "apps/web/daemonset.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels: {{app: ds}}\n  \
             template:\n    metadata:\n      labels: {{app: ds}}\n    spec:\n      affinity:\n        nodeAffinity:\n          \
             requiredDuringSchedulingIgnoredDuringExecution:\n            nodeSelectorTerms:\n            \
             - matchFields: [{{key: metadata.name, operator: In, values: [{node}]}}]\n      \
             terminationGracePeriodSeconds: 1\n      containers:\n      - name: ds\n        image: {image}\n",
            node = env.info.node_name
        ),
    );
    app.commit(env, "a StatefulSet and a DaemonSet");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");

    // An update of both completes too (StatefulSet pods are replaced one by one, by ordinal).
    let text = |f: &str| std::fs::read_to_string(app.work.join(f)).unwrap().replace(":1.0.0", ":1.1.0");
    let (sts, ds) = (text("apps/web/statefulset.yaml"), text("apps/web/daemonset.yaml"));
    app.write("apps/web/statefulset.yaml", &sts);
    app.write("apps/web/daemonset.yaml", &ds);
    app.commit(env, "1.1.0 for both");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let client = env.client().await;
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &app.ns.name);
    let s = sts.get("db").await.unwrap().status.unwrap();
    assert_eq!((s.updated_replicas, s.ready_replicas), (Some(2), Some(2)), "{s:?}");
    assert_eq!(s.current_revision, s.update_revision);
    let dss: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client, &app.ns.name);
    let d = dss.get("agent").await.unwrap().status.unwrap();
    assert_eq!((d.desired_number_scheduled, d.updated_number_scheduled, d.number_available), (1, Some(1), Some(1)));
}
