//! Desired state end to end: `agent render` of the Stack B fixture against golden files, and
//! `agent diff` against the real API server (SSA dry-run), git server and registry.

use crate::util::git;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;
use xtask::support::{GitRepo, TestEnv};

use agent::cluster::Cluster;
use agent::desired::{Build, Checkout, Node};
use agent::render::Renderers;
use agent::source::git::{GitOptions, GitSource};
use agent::source::registry::Registries;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent")).args(args).env("NO_COLOR", "1").output().expect("running agent")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The Stack B repository, built by its script with a fixed commit date, so the commit id (in the
/// render's header) is the same on every machine.
fn make_stack_b(dest: &Path, registry: &str, namespace: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/stack-b/make-repo.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dest)
        .arg(registry)
        .arg(namespace)
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden").join(name)
}

/// `agent render` offline (file:// repository, fixed --kube-version, no registry).
fn render_offline(env: &TestEnv, repo: &Path, labels: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  nodeName: golden\ngit:\n  url: file://{}\nrender:\n  helm: {}\n  kustomize: {}\nstateDir: {}\n",
            repo.display(),
            env.info.helm.display(),
            env.info.kustomize.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut args =
        vec!["render", "stack-b/helm", "-c", cfg.to_str().unwrap(), "--kube-version", "v1.33.0", "--no-resolve"];
    args.extend(["--labels", labels]);
    args.extend(extra);
    agent(&args)
}

fn objects(json_out: &Output) -> BTreeMap<String, Value> {
    let doc: Value = serde_json::from_slice(&json_out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(json_out)));
    doc["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let obj = &o["object"];
            (format!("{}/{}", obj["kind"].as_str().unwrap(), obj["metadata"]["name"].as_str().unwrap()), obj.clone())
        })
        .collect()
}

fn env_value(deploy: &Value, container: &str, name: &str) -> String {
    let c = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap();
    c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap()["value"].as_str().unwrap().to_owned()
}

/// Golden files are written by hand (see fixtures/golden/README.md) and only ever compared here.
fn assert_golden(name: &str, got: &str) {
    let want = std::fs::read_to_string(golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    if want != got {
        let first = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{name} differs from the render at line {}:\n  golden: {:?}\n  render: {:?}",
            first + 1,
            want.lines().nth(first),
            got.lines().nth(first)
        );
    }
}

#[test]
fn stack_b_renders_as_the_golden_files_with_every_values_layer_winning_a_named_key() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("stack-b");
    make_stack_b(&repo, "registry.test:5000", "kiosk");

    for (labels, file) in [("store=store1,env=qa", "stack-b-store1.yaml"), ("store=store2,env=qa", "stack-b-qa.yaml")] {
        let out = render_offline(env, &repo, labels, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert_golden(file, &String::from_utf8(out.stdout).unwrap());
    }

    // store1 node: chart values.yaml < fleet helm.values < target values < values-qa.yaml < values-store1.yaml.
    let out = render_offline(env, &repo, "store=store1,env=qa", &["-o", "json"]);
    let o = objects(&out);
    let cm = &o["ConfigMap/kiosk-flows"]["data"];
    let hpa = &o["HorizontalPodAutoscaler/kiosk-signalling"]["spec"];
    let signalling = &o["Deployment/kiosk-signalling"];
    assert_eq!(hpa["maxReplicas"], 3, "chart values.yaml: signalling.autoscaling.maxReplicas");
    assert_eq!(cm["timezone"], "Europe/Berlin", "fleet.yaml helm.values: store.timezone (chart: UTC)");
    assert!(
        cm["flows.yaml"].as_str().unwrap().contains("say: \"Willkommen bei Store 1\""),
        "store1 target helm.values: store.greeting"
    );
    assert_eq!(
        env_value(&o["Deployment/kiosk-orchestrator"], "orchestrator", "LOG_LEVEL"),
        "debug",
        "values-qa.yaml over fleet's info"
    );
    assert_eq!(cm["language"], "en", "values-qa.yaml: store.language (chart: de)");
    assert_eq!(cm["store"], "store1", "values-store1.yaml: store.name");
    assert_eq!(
        signalling["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 45,
        "values-store1.yaml: drainSeconds"
    );
    assert_eq!(cm["node-env"], "qa", "global.fleet.clusterLabels.env injected");
    assert_eq!(o["ConfigMap/kiosk-flows"]["metadata"]["namespace"], "kiosk", "defaultNamespace");

    // A qa node of another store: the qa target.
    let out = render_offline(env, &repo, "store=store2,env=qa", &["-o", "json"]);
    let o = objects(&out);
    let cm = &o["ConfigMap/kiosk-flows"]["data"];
    assert_eq!(cm["store"], "default", "chart values.yaml: store.name");
    assert_eq!(o["Deployment/kiosk-signalling"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 30);
    assert_eq!(cm["timezone"], "Europe/Berlin", "fleet.yaml helm.values");
    assert!(cm["flows.yaml"].as_str().unwrap().contains("say: \"QA build\""), "qa target helm.values: store.greeting");
    assert_eq!(cm["language"], "en", "values-qa.yaml");
    assert_eq!(cm["node-env"], "qa", "global.fleet.clusterLabels.env");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["target"], "qa");
}

#[test]
fn a_chart_that_renders_differently_each_time_is_refused_by_name() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("stack-b");
    make_stack_b(&repo, "registry.test:5000", "kiosk");
    std::fs::write(
        repo.join("stack-b/helm/templates/secret.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: session-key\nstringData:\n  key: {{ randAlphaNum 16 | quote }}\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "random secret"]);
    let out = render_offline(env, &repo, "store=store1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("stack-b/helm: render failed: the chart renders differently each time (Secret/session-key)"),
        "{msg}"
    );
}

// ---- agent diff against the testenv ----------------------------------------------------------

/// A test's Stack B: own namespace, own git repository (pushed as CI), own agent identity, and its
/// own registry repository for the init container's image.
struct Store {
    ns: xtask::support::TestNamespace,
    repo: GitRepo,
    work: PathBuf,
    /// Registry repositories of this test: `<prefix>/u5-orchestrator`, ...
    prefix: String,
    init_repo: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Store {
    async fn new(env: &TestEnv, hint: &str) -> Store {
        let ns = env.namespace(hint).await;
        let repo = env.git_repo(hint);
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        make_stack_b(&work, &env.info.registry, &ns.name);
        // Every image lives in registry repositories of this test alone (pushed as CI would),
        // so no test depends on another's pushes or on `testenv seed`.
        let prefix = env.registry_repo(hint).trim_end_matches("/app").to_owned();
        let init_repo = format!("{prefix}/u5-init");
        std::thread::scope(|s| {
            for name in ["u5-orchestrator", "u5-signalling", "session-store", "u5-init"] {
                let repo = format!("{prefix}/{name}");
                s.spawn(move || env.push_image(&repo, "1.0.0"));
            }
        });
        let store = Store {
            ns,
            repo,
            work,
            prefix: prefix.clone(),
            init_repo,
            config: dir.path().join("agent.yaml"),
            _dir: dir,
        };
        store.edit("stack-b/helm/values.yaml", |v| {
            v.replace("repository: library/", &format!("repository: {prefix}/")).replace(
                &format!("    repository: {prefix}/u5-signalling\n    tag: \"1.0.0\"\n  # WebSocket"),
                &format!("    repository: {}\n    tag: \"1.0.0\"\n  # WebSocket", store.init_repo),
            )
        });
        store.commit_and_push(env, "images from the test's own registry repositories");
        let secret = store._dir.path().join("git-token");
        std::fs::write(&secret, &env.info.git_agent.password).unwrap();
        let reg_secret = store._dir.path().join("registry-token");
        std::fs::write(&reg_secret, &env.info.registry_agent.password).unwrap();
        std::fs::write(
            &store.config,
            format!(
                "identity:\n  nodeName: store1-node\n  agentId: {id}\n  labels: {{store: store1, env: qa}}\n\
                 git:\n  url: {url}\n  path: stack-b\n  caFile: {ca}\n  auth:\n    username: {gu}\n    passwordFile: {gs}\n\
                 registries:\n- host: {reg}\n  caFile: {ca}\n  auth:\n    username: {ru:?}\n    passwordFile: {rs}\n\
                 kube:\n  kubeconfig: {kc}\nrender:\n  helm: {helm}\n  kustomize: {kus}\nstateDir: {state}\n",
                id = store.ns.name,
                url = store.repo.url,
                ca = env.info.ca_cert.display(),
                gu = env.info.git_agent.username,
                gs = secret.display(),
                reg = env.info.registry,
                ru = env.info.registry_agent.username,
                rs = reg_secret.display(),
                kc = env.info.kubeconfig.display(),
                helm = env.info.helm.display(),
                kus = env.info.kustomize.display(),
                state = store._dir.path().join("state").display(),
            ),
        )
        .unwrap();
        store
    }

    fn edit(&self, file: &str, f: impl FnOnce(String) -> String) {
        let path = self.work.join(file);
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        let after = f(before.clone());
        assert_ne!(before, after, "{file}: the edit changed nothing");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, after).unwrap();
    }

    fn commit_and_push(&self, env: &TestEnv, message: &str) {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        xtask::seed::git_push(&env.info, &env.info.git_ci, &self.work, &self.repo.name, "main").unwrap();
    }

    fn diff(&self, bundle: Option<&str>) -> (Option<i32>, Value, String) {
        let cfg = self.config.to_str().unwrap();
        let mut args = vec!["diff", "-c", cfg];
        args.extend(bundle);
        let human = agent(&args);
        args.extend(["-o", "json"]);
        let json = agent(&args);
        assert_eq!(human.status.code(), json.status.code(), "human and JSON agree on the exit code");
        let doc = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&json)));
        (json.status.code(), doc, text(&human))
    }

    /// Applies every bundle as the agent will (server-side apply under its field manager), and
    /// records it as its last-known-good.
    async fn apply_all(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let loaded = shared::config::load(&text, &|_| None).unwrap();
        let base = self.config.parent().unwrap();
        let config = loaded.config;
        let git = Arc::new(GitSource::new(GitOptions::from_config(&config, base)).unwrap());
        let g = git.clone();
        let poll = tokio::task::spawn_blocking(move || g.poll()).await.unwrap().unwrap();
        let checkout = Checkout { git, commit: poll.commit.id, root: "stack-b".into(), waves: Default::default() };
        let cluster = Cluster::connect(&config.kube, base).await.unwrap();
        let registries = Registries::from_config(&config.registries, base).unwrap();
        let node = Node { agent_id: config.identity.agent_id.clone(), labels: config.identity.labels.clone() };
        let namespaced = |v: &str, k: &str| cluster.is_namespaced(v, k);
        let build = Build {
            checkout: &checkout,
            node: &node,
            renderers: &Renderers::from_config(&config),
            caps: cluster.capabilities(),
            namespaced: &namespaced,
            registries: Some(&registries),
        };
        let store = agent::state::StateStore::new(
            &base.join(&config.state_dir),
            &config.identity.agent_id,
            &config.kube.namespace,
            Some(cluster.client().clone()),
        );
        for b in checkout.bundles().await.unwrap() {
            let desired = build.bundle(&b).await.unwrap();
            for m in &desired.manifests {
                cluster.apply(m, false, false).await.unwrap_or_else(|e| panic!("{e}"));
            }
            // Recorded as the agent records what it applied: prunes look for what left Git there.
            let objects: Vec<Value> = desired.manifests.iter().map(|m| m.object.clone()).collect();
            let revision = shared::state::Revision {
                commit: checkout.commit.clone(),
                hash: shared::state::rendered_hash(&objects),
                images: Vec::new(),
                verified: Default::default(),
                release: None,
            };
            let snapshot = shared::state::Snapshot { revision, objects, at: 0 };
            let record = shared::state::Record::new(&b.dir).adopted(snapshot, "applied by the test", 0);
            store.save(&record).await.unwrap();
        }
    }
}

fn plans(doc: &Value, bundle: &str) -> Vec<(String, String)> {
    let b = doc["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == bundle).unwrap();
    b["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["id"].as_str().unwrap().to_owned(), o["action"].as_str().unwrap().to_owned()))
        .collect()
}

fn changed(doc: &Value, bundle: &str) -> Vec<Value> {
    let b = doc["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == bundle).unwrap();
    b["objects"].as_array().unwrap().iter().filter(|o| o["action"] != "unchanged").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_is_empty_right_after_an_apply_and_shows_a_configmap_change_and_an_init_image_change() {
    let env = TestEnv::get();
    let store = Store::new(env, "diff").await;
    let ns = &store.ns.name;

    // Nothing applied yet: every object is a create, images pinned to the registry's digests.
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(1), "{human}");
    let p = plans(&doc, "helm");
    assert_eq!(p.len(), 6, "{p:?}");
    assert!(p.iter().all(|(_, a)| a == "create"), "{p:?}");
    let signalling =
        changed(&doc, "helm").into_iter().find(|o| o["id"] == format!("Deployment/{ns}/kiosk-signalling")).unwrap();
    let init = &signalling["images"][0];
    assert_eq!(init["init"], true);
    assert!(
        init["to"].as_str().unwrap().starts_with(&format!("{}/{}:1.0.0@sha256:", env.info.registry, store.init_repo)),
        "{init}"
    );
    // The dry-run wrote nothing, and no credential shows in either output.
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(env.client().await, ns);
    assert!(
        deployments.list(&Default::default()).await.unwrap().items.is_empty(),
        "agent diff must not create anything"
    );
    for secret in [&env.info.git_agent.password, &env.info.registry_agent.password] {
        assert!(!human.contains(secret.as_str()) && !doc.to_string().contains(secret.as_str()));
    }

    store.apply_all().await;
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(0), "in sync right after the apply (API defaults are not differences):\n{human}");
    assert!(doc["inSync"].as_bool().unwrap());
    assert!(
        human.contains("bundle helm (target store1) in sync: 0 to create, 0 to update, 0 to prune, 6 unchanged"),
        "{human}"
    );

    // A values change that only touches the ConfigMap.
    store.edit("stack-b/helm/values-store1.yaml", |v| v.replace("branding: store1-blue", "branding: store1-green"));
    store.commit_and_push(env, "store1: green branding");
    let (code, doc, human) = store.diff(Some("helm"));
    assert_eq!(code, Some(1), "{human}");
    let c = changed(&doc, "helm");
    assert_eq!(c.len(), 1, "only the ConfigMap changes: {c:?}");
    assert_eq!(c[0]["id"], format!("ConfigMap/{ns}/kiosk-flows"));
    assert_eq!(c[0]["action"], "update");
    assert_eq!(
        c[0]["changes"],
        serde_json::json!([{"path": "data.branding", "from": "store1-blue", "to": "store1-green"}])
    );
    assert!(human.contains(&format!("  ~ ConfigMap/{ns}/kiosk-flows  (kiosk/templates/configmap.yaml)")), "{human}");
    assert!(human.contains("      data.branding: \"store1-blue\" -> \"store1-green\""), "{human}");
    store.apply_all().await;

    // CI pushes a new init image and bumps its tag: only that initContainer's image changes.
    let new_digest = env.push_image(&store.init_repo, "1.1.0");
    store.edit("stack-b/helm/values.yaml", |v| {
        v.replacen(
            &format!("    repository: {}\n    tag: \"1.0.0\"", store.init_repo),
            &format!("    repository: {}\n    tag: \"1.1.0\"", store.init_repo),
            1,
        )
    });
    store.commit_and_push(env, "bump the init image");
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(1), "{human}");
    let c = changed(&doc, "helm");
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["id"], format!("Deployment/{ns}/kiosk-signalling"));
    assert_eq!(c[0]["changes"], serde_json::json!([]), "the image is the only change: {}", c[0]);
    let img = &c[0]["images"];
    assert_eq!(img.as_array().unwrap().len(), 1, "{img}");
    assert_eq!(img[0]["container"], "wait-for-flows");
    assert_eq!(img[0]["init"], true);
    assert!(img[0]["from"].as_str().unwrap().contains(":1.0.0@sha256:"), "{img}");
    assert_eq!(img[0]["to"], format!("{}/{}:1.1.0@{new_digest}", env.info.registry, store.init_repo));
    assert!(human.contains("      image initContainer wait-for-flows: "), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_bundle_or_a_missing_image_blocks_only_itself_and_names_the_file_or_image() {
    let env = TestEnv::get();
    let store = Store::new(env, "broken").await;
    let ns = &store.ns.name;
    // A second, raw bundle beside the chart.
    store.edit("stack-b/extras/cm.yaml", |_| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extras\n  namespace: {ns}\ndata:\n  a: b\n")
    });
    // And a kustomize bundle (rendered by the real `kustomize build`).
    store.edit("stack-b/overlay/kustomization.yaml", |_| {
        format!("namespace: {ns}\nnamePrefix: qa-\nresources:\n- settings.yaml\ncommonLabels:\n  tier: kiosk\n")
    });
    store.edit("stack-b/overlay/settings.yaml", |_| {
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  x: y\n".into()
    });
    store.commit_and_push(env, "extras and an overlay");
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(1), "{human}");
    assert_eq!(plans(&doc, "extras"), [(format!("ConfigMap/{ns}/extras"), "create".to_owned())]);
    assert_eq!(plans(&doc, "overlay"), [(format!("ConfigMap/{ns}/qa-settings"), "create".to_owned())]);

    // Broken YAML in a raw manifest: its file and line; the chart is still planned.
    store.edit("stack-b/extras/cm.yaml", |v| v.replace("  a: b\n", "  a: b\n   c: [unclosed\n"));
    store.commit_and_push(env, "broken yaml");
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(3), "{human}");
    let extras = doc["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "extras").unwrap();
    assert_eq!(extras["error"]["stage"], "render");
    let reason = extras["error"]["reasons"][0].as_str().unwrap();
    assert_eq!(reason, "cm.yaml: line 8: mapping values are not allowed in this context");
    assert_eq!(plans(&doc, "helm").len(), 6, "the chart is still planned: {human}");
    assert!(human.contains("bundle extras render failed:\n  cm.yaml: line 8: mapping values"), "{human}");

    // A failing chart template: helm's message names the template and line.
    store.edit("stack-b/helm/templates/hpa.yaml", |v| {
        v.replace(
            "{{ .Values.signalling.autoscaling.maxReplicas }}",
            "{{ .Values.signalling.autoscaling.maxReplicas | nosuchfunction }}",
        )
    });
    store.edit("stack-b/extras/cm.yaml", |v| v.replace("   c: [unclosed\n", ""));
    store.commit_and_push(env, "broken template");
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(3), "{human}");
    let helm = doc["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "helm").unwrap();
    let reason = helm["error"]["reasons"][0].as_str().unwrap();
    assert!(reason.contains("kiosk/templates/hpa.yaml:") && reason.contains("nosuchfunction"), "{reason}");
    assert_eq!(plans(&doc, "extras"), [(format!("ConfigMap/{ns}/extras"), "create".to_owned())]);

    // An image that is not in the registry: preflight names it, nothing else of the bundle runs.
    store.edit("stack-b/helm/templates/hpa.yaml", |v| v.replace(" | nosuchfunction", ""));
    store.edit("stack-b/helm/values.yaml", |v| v.replacen("tag: \"1.0.0\"", "tag: \"9.9.9-missing\"", 1));
    store.commit_and_push(env, "a tag CI never pushed");
    let (code, doc, human) = store.diff(None);
    assert_eq!(code, Some(3), "{human}");
    let helm = doc["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "helm").unwrap();
    assert_eq!(helm["error"]["stage"], "preflight");
    let reason = helm["error"]["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("preflight: image {}/{}/u5-orchestrator:9.9.9-missing is not in the registry (used by Deployment/{ns}/kiosk-orchestrator container orchestrator)", env.info.registry, store.prefix)),
        "{reason}"
    );
    assert!(helm["objects"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_policy_replaces_the_rendered_tag_and_prune_lists_only_this_agents_objects() {
    let env = TestEnv::get();
    let store = Store::new(env, "policy").await;
    let ns = &store.ns.name;
    env.push_image(&store.init_repo, "1.2.0");
    env.push_image(&store.init_repo, "2.0.0");
    store.edit("stack-b/helm/fleet.yaml", |v| {
        format!(
            "{v}gitopsAgent:\n  images:\n  - repository: {}/{}\n    policy:\n      semver: \">=1.0.0 <2.0.0\"\n",
            env.info.registry, store.init_repo
        )
    });
    // A Helm hook: reported, not applied.
    store.edit("stack-b/helm/templates/smoke-test.yaml", |_| {
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: smoke\n  annotations:\n    helm.sh/hook: test\nspec:\n  containers:\n  - {name: t, image: busybox}\n".into()
    });
    store.commit_and_push(env, "follow 1.x of the init image");
    let (_, doc, human) = store.diff(Some("helm"));
    let helm = &doc["bundles"][0];
    let warnings: Vec<&str> = helm["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(
        warnings,
        [
            "Pod/smoke (kiosk/templates/smoke-test.yaml) is a Helm hook (test) and is not applied: gitops-agent applies desired state only"
        ],
        "{human}"
    );
    assert!(!plans(&doc, "helm").iter().any(|(id, _)| id.contains("smoke")));
    let choice = helm["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["written"].as_str().unwrap().contains(&store.init_repo))
        .unwrap();
    assert!(choice["written"].as_str().unwrap().ends_with(":1.0.0"), "{choice}");
    assert!(
        choice["running"].as_str().unwrap().contains(":1.2.0@sha256:"),
        "the policy's choice, pinned: {choice}\n{human}"
    );

    // Applied, then a manifest leaves Git: the diff prunes it, and only it.
    store.apply_all().await;
    store.edit("stack-b/helm/templates/hpa.yaml", |_| String::new());
    store.commit_and_push(env, "no HPA");
    // Another agent's object in the same namespace is never listed.
    let client = env.client().await;
    let other: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "someone-else", "namespace": ns, "labels": {"gitops-agent.io/owner": "another-agent", "gitops-agent.io/bundle": "helm"}, "annotations": {"gitops-agent.io/bundle": "helm"}},
    }))
    .unwrap();
    let ar = kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
    kube::Api::<kube::api::DynamicObject>::namespaced_with(client, ns, &ar)
        .create(&Default::default(), &other)
        .await
        .unwrap();
    let (code, doc, human) = store.diff(Some("helm"));
    assert_eq!(code, Some(1), "{human}");
    let c: Vec<(String, String)> = changed(&doc, "helm")
        .iter()
        .map(|o| (o["id"].as_str().unwrap().to_owned(), o["action"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(c, [(format!("HorizontalPodAutoscaler/{ns}/kiosk-signalling"), "prune".to_owned())], "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_labels_come_from_the_node_object_with_configured_labels_winning() {
    let env = TestEnv::get();
    let store = Store::new(env, "nodelabels").await;
    let node_name = xtask::support::unique("labelled-node");
    let client = env.client().await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name, "labels": {"store": "store1", "env": "prod"}},
        // Only its labels matter: no pod of another test may land on it.
        "spec": {"unschedulable": true, "taints": [{"key": "gitops-agent.test/labels-only", "effect": "NoSchedule"}]},
    }))
    .unwrap();
    nodes.create(&Default::default(), &node).await.unwrap();
    let config = std::fs::read_to_string(&store.config)
        .unwrap()
        .replace("  nodeName: store1-node\n", &format!("  nodeName: {node_name}\n  labelsFromNode: true\n"));
    // The config keeps env=qa and drops its store label: store comes from the Node only.
    let config = config.replace("labels: {store: store1, env: qa}", "labels: {env: qa}");
    std::fs::write(&store.config, config).unwrap();
    let out = agent(&["render", "helm", "-c", store.config.to_str().unwrap(), "--no-resolve", "-o", "json"]);
    let _ = nodes.delete(&node_name, &Default::default()).await;
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["labels"]["store"], "store1", "from the Node");
    assert_eq!(doc["labels"]["env"], "qa", "the config wins over the Node's env=prod");
    assert_eq!(doc["target"], "store1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_by_another_field_manager_shows_as_drift_with_the_conflict_named() {
    let env = TestEnv::get();
    let store = Store::new(env, "drift").await;
    let ns = &store.ns.name;
    store.apply_all().await;
    // Someone takes the field over with their own server-side apply (as `kubectl apply
    // --server-side --force-conflicts` would).
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(env.client().await, ns);
    let patch = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kiosk-flows"}, "data": {"branding": "hand-edited"}});
    cms.patch(
        "kiosk-flows",
        &kube::api::PatchParams::apply("store-technician").force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let (code, doc, human) = store.diff(Some("helm"));
    assert_eq!(code, Some(1), "{human}");
    let c = changed(&doc, "helm");
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["id"], format!("ConfigMap/{ns}/kiosk-flows"));
    assert_eq!(
        c[0]["changes"],
        serde_json::json!([{"path": "data.branding", "from": "hand-edited", "to": "store1-blue"}])
    );
    let note = c[0]["note"].as_str().unwrap();
    assert!(
        note.starts_with("conflict: ") && note.contains("store-technician") && note.contains("data.branding"),
        "{note}"
    );
}
