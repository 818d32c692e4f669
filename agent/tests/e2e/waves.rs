//! Waves across stores against the testenv: five agents as five stores (qa, two canary, two in
//! the last wave), one repository, one registry, each store its own agent id, namespace (Fleet's
//! `${ .ClusterLabels.store }` in `defaultNamespace`) and state. Each store's agent runs
//! `reconcile --once` in turn, as its poll would; reports travel through the registry's reports
//! repository only. Soak times are seconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::Value;
use xtask::support::{GitRepo, TestEnv};

use crate::rollout::{DEPLOYMENT, agent, bundle, text};
use crate::util::{git, wait_for};

struct Store {
    /// The agent id, the store label and the namespace: one name.
    ns: xtask::support::TestNamespace,
    config: PathBuf,
}

/// A fleet of five stores sharing one repository (`apps/web`, `apps/waves.yaml`).
struct Fleet {
    stores: BTreeMap<&'static str, Store>,
    repo: GitRepo,
    work: PathBuf,
    image: String,
    _dir: tempfile::TempDir,
}

/// qa, then canary, then everyone else; `last_share` is the last wave's gate on canary.
fn waves(last_share: &str) -> String {
    format!(
        "waves:\n\
         - name: qa\n  selector: {{matchLabels: {{env: qa}}}}\n  soak: 3s\n\
         - name: canary\n  selector: {{matchLabels: {{ring: canary}}}}\n  soak: 3s\n  gate: {{healthyShare: 100%, reportTimeout: 10m}}\n\
         - name: last\n  selector: {{}}\n  gate: {{healthyShare: {last_share}, reportTimeout: 10m}}\n"
    )
}

/// Store name, its wave labels.
const STORES: [(&str, &str); 5] = [
    ("qa1", "env: qa"),
    ("canary1", "ring: canary"),
    ("canary2", "ring: canary"),
    ("last1", "x: y"),
    ("last2", "x: y"),
];

impl Fleet {
    async fn new(env: &TestEnv, hint: &str, last_share: &str) -> Fleet {
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
        let reports = format!("gitops-reports/{}", image_repo.trim_start_matches("tests/").trim_end_matches("/app"));
        let git_secret = dir.path().join("git-token");
        std::fs::write(&git_secret, &env.info.git_agent.password).unwrap();
        let reg_secret = dir.path().join("registry-token");
        std::fs::write(&reg_secret, &env.info.registry_agent.password).unwrap();
        let mut stores = BTreeMap::new();
        for (name, label) in STORES {
            let ns = env.namespace(&format!("{hint}-{name}")).await;
            let config = dir.path().join(format!("{name}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "identity:\n  nodeName: {node}\n  agentId: {id}\n  labels: {{store: {id}, {label}}}\n\
                     git:\n  url: {url}\n  path: apps\n  caFile: {ca}\n  auth:\n    username: {gu}\n    passwordFile: {gs}\n\
                     registries:\n- host: {reg}\n  caFile: {ca}\n  auth:\n    username: {ru:?}\n    passwordFile: {rs}\n\
                     kube:\n  kubeconfig: {kc}\n  namespace: {id}\nrender:\n  helm: {helm}\n  kustomize: {kus}\n\
                     rollout:\n  progressDeadline: 60s\n\
                     waves:\n  reports: {{registry: {reg}, repository: {reports}}}\n  interval: 1s\n  refresh: 2s\n\
                     stateDir: {state}\n",
                    node = env.info.node_name,
                    id = ns.name,
                    url = repo.url,
                    ca = env.info.ca_cert.display(),
                    gu = env.info.git_agent.username,
                    gs = git_secret.display(),
                    reg = env.info.registry,
                    ru = env.info.registry_agent.username,
                    rs = reg_secret.display(),
                    kc = env.info.kubeconfig.display(),
                    helm = env.info.helm.display(),
                    kus = env.info.kustomize.display(),
                    state = dir.path().join(format!("state-{name}")).display(),
                ),
            )
            .unwrap();
            stores.insert(name, Store { ns, config });
        }
        let fleet = Fleet { stores, repo, work, image: format!("{}/{image_repo}", env.info.registry), _dir: dir };
        fleet.write("apps/waves.yaml", &waves(last_share));
        fleet.write("apps/web/fleet.yaml", "defaultNamespace: ${ .ClusterLabels.store }\n");
        fleet.set_tag("1.0.0");
        fleet.commit(env, "web 1.0.0");
        fleet
    }

    fn write(&self, file: &str, content: &str) {
        let path = self.work.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn set_tag(&self, tag: &str) {
        self.write("apps/web/deployment.yaml", &DEPLOYMENT.replace("IMAGE", &format!("{}:{tag}", self.image)));
    }

    fn commit(&self, env: &TestEnv, message: &str) {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        xtask::seed::git_push(&env.info, &env.info.git_ci, &self.work, &self.repo.name, "main").unwrap();
    }

    /// One poll of `store`'s agent: the bundle's result and message.
    fn poll(&self, store: &str) -> (String, String) {
        let config = self.stores[store].config.to_str().unwrap();
        let out = agent(&["reconcile", "--once", "-c", config, "-o", "json"]);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{store}: {e}: {}", text(&out)));
        let web = bundle(&doc, "web");
        (web["result"].as_str().unwrap_or_default().to_owned(), web["message"].as_str().unwrap_or_default().to_owned())
    }

    /// The tag `store` runs (`-` before its first rollout).
    async fn tag(&self, env: &TestEnv, store: &str) -> String {
        let api: Api<Deployment> = Api::namespaced(env.client().await, &self.stores[store].ns.name);
        let Ok(d) = api.get("web").await else { return "-".into() };
        let image = d.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap();
        let named = image.split('@').next().unwrap_or_default();
        named.rsplit_once(':').map_or(image.clone(), |(_, t)| t.to_owned())
    }

    fn id(&self, store: &str) -> &str {
        &self.stores[store].ns.name
    }

    /// Polls `stores` in rounds until `done` holds for what every store of the fleet runs;
    /// calls `each` with every round's tags and messages. Panics at the deadline.
    async fn rounds(
        &self,
        env: &TestEnv,
        what: &str,
        stores: &[&str],
        timeout: Duration,
        mut each: impl FnMut(&BTreeMap<String, String>, &BTreeMap<String, (String, String)>),
        done: impl Fn(&BTreeMap<String, String>) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut said = BTreeMap::new();
            for s in stores {
                said.insert((*s).to_owned(), self.poll(s));
            }
            let mut tags = BTreeMap::new();
            for (s, _) in STORES {
                tags.insert(s.to_owned(), self.tag(env, s).await);
            }
            each(&tags, &said);
            if done(&tags) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: timed out; runs {tags:?}; said {said:#?}");
        }
    }
}

const ALL: [&str; 5] = ["last2", "last1", "canary2", "canary1", "qa1"];

/// The last wave first in each round, so a gate that let it through too early would show.
async fn first_release_everywhere(env: &TestEnv, fleet: &Fleet) {
    fleet
        .rounds(
            env,
            "1.0.0 everywhere",
            &ALL,
            Duration::from_secs(240),
            |_, _| {},
            |t| t.values().all(|t| t == "1.0.0"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_walks_the_waves_in_order_and_a_stopped_canary_holds_a_full_gate() {
    let env = TestEnv::get();
    let fleet = Fleet::new(env, "waves-good", "100%").await;
    first_release_everywhere(env, &fleet).await;

    // canary2's agent is stopped: it is polled no more.
    fleet.set_tag("1.1.0");
    fleet.commit(env, "web 1.1.0");
    let started: std::cell::RefCell<BTreeMap<String, Instant>> = Default::default();
    let polled = ["last2", "last1", "canary1", "qa1"];
    fleet
        .rounds(
            env,
            "1.1.0 at qa1 and canary1, the last wave waiting on canary2",
            &polled,
            Duration::from_secs(240),
            |tags, said| {
                let mut started = started.borrow_mut();
                for (s, t) in tags {
                    if t == "1.1.0" {
                        started.entry(s.clone()).or_insert_with(Instant::now);
                    }
                }
                // The order holds in every round: canary only after qa, the last wave never.
                if tags["canary1"] == "1.1.0" {
                    assert_eq!(tags["qa1"], "1.1.0", "canary before qa: {tags:?}");
                }
                assert_eq!(tags["last1"], "1.0.0", "the last wave started without canary2: {tags:?} {said:#?}");
                assert_eq!(tags["last2"], "1.0.0", "the last wave started without canary2: {tags:?} {said:#?}");
                if let Some((result, message)) = said.get("canary1")
                    && tags["canary1"] == "1.0.0"
                    && tags["qa1"] == "1.1.0"
                {
                    assert_eq!(result, "blocked", "{message}");
                    assert!(message.starts_with("wave canary: waits for wave qa: "), "{message}");
                }
            },
            |t| t["qa1"] == "1.1.0" && t["canary1"] == "1.1.0",
        )
        .await;
    let (qa, canary) = {
        let s = started.borrow();
        (s["qa1"], s["canary1"])
    };
    assert!(canary.duration_since(qa) >= Duration::from_secs(3), "canary started within qa's 3s soak");

    // A few more polls: the last wave keeps waiting on canary2 and says so.
    let needs = "wave last: waits for wave canary: 1/2 healthy, needs 2";
    wait_for("the last wave to say it waits on canary2", Duration::from_secs(60), || async {
        let (result, message) = fleet.poll("last1");
        assert_eq!(fleet.tag(env, "last1").await, "1.0.0");
        if result == "blocked" && message.starts_with(needs) { Ok(()) } else { Err(format!("{result}: {message}")) }
    })
    .await;

    // canary2's agent is back: it rolls out, and then the last wave follows.
    fleet
        .rounds(
            env,
            "1.1.0 everywhere",
            &ALL,
            Duration::from_secs(240),
            |_, _| {},
            |t| t.values().all(|t| t == "1.1.0"),
        )
        .await;

    // The fleet on one screen: five stores, each healthy on the release.
    let out = agent(&["fleet", "status", "-c", fleet.stores["qa1"].config.to_str().unwrap(), "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let stores = doc["bundles"][0]["stores"].as_array().unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(stores.len(), 5, "{doc}");
    let releases: std::collections::BTreeSet<&str> = stores.iter().map(|s| s["release"].as_str().unwrap()).collect();
    assert_eq!(releases.len(), 1, "one release everywhere: {doc}");
    assert!(stores.iter().all(|s| s["state"] == "healthy"), "{doc}");
    let screen = text(&agent(&["fleet", "status", "-c", fleet.stores["qa1"].config.to_str().unwrap()]));
    let qa_line = screen.lines().find(|l| l.starts_with("qa ")).unwrap_or_else(|| panic!("{screen}"));
    assert!(qa_line.contains(fleet.id("qa1")) && qa_line.contains("healthy"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_release_is_rolled_back_at_qa_and_held_everywhere_after_it() {
    let env = TestEnv::get();
    let fleet = Fleet::new(env, "waves-broken", "100%").await;
    first_release_everywhere(env, &fleet).await;

    fleet.set_tag("1.2.0-broken");
    fleet.commit(env, "web 1.2.0-broken");
    wait_for("qa1 to roll the broken release back", Duration::from_secs(120), || async {
        match fleet.poll("qa1") {
            (r, _) if r == "rolledBack" => Ok(()),
            (r, m) => Err(format!("{r}: {m}")),
        }
    })
    .await;
    assert_eq!(fleet.tag(env, "qa1").await, "1.0.0", "rolled back");
    let held = format!("held: wave qa failed at {}: ", fleet.id("qa1"));
    for store in ["canary1", "canary2", "last1", "last2"] {
        wait_for(&format!("{store} to hold the broken release"), Duration::from_secs(60), || async {
            let (result, message) = fleet.poll(store);
            if result == "blocked" && message.starts_with(&held) { Ok(()) } else { Err(format!("{result}: {message}")) }
        })
        .await;
        assert_eq!(fleet.tag(env, store).await, "1.0.0", "{store} never started the broken release");
    }
    let status = agent(&["status", "-c", fleet.stores["last1"].config.to_str().unwrap(), "--explain", "web"]);
    let shown = text(&status);
    assert!(shown.contains("held since") && shown.contains(&held), "{shown}");

    // A new release starts again from the first wave.
    fleet.set_tag("1.1.0");
    fleet.commit(env, "web 1.1.0");
    fleet
        .rounds(
            env,
            "1.1.0 everywhere after the hold",
            &ALL,
            Duration::from_secs(240),
            |_, _| {},
            |t| t.values().all(|t| t == "1.1.0"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_canary_passes_a_half_gate_and_the_store_robot_may_push_reports_only() {
    let env = TestEnv::get();
    let fleet = Fleet::new(env, "waves-half", "50%").await;
    first_release_everywhere(env, &fleet).await;
    fleet.set_tag("1.1.0");
    fleet.commit(env, "web 1.1.0");
    // canary2 stopped; 1 of 2 canaries healthy is enough for a 50% gate.
    fleet
        .rounds(
            env,
            "1.1.0 everywhere but canary2",
            &["last2", "last1", "canary1", "qa1"],
            Duration::from_secs(240),
            |tags, _| {
                if tags["last1"] == "1.1.0" || tags["last2"] == "1.1.0" {
                    assert_eq!(tags["canary1"], "1.1.0", "the last wave before canary1: {tags:?}");
                }
            },
            |t| t.iter().all(|(s, t)| if s == "canary2" { t == "1.0.0" } else { t == "1.1.0" }),
        )
        .await;

    // The reports went where the store robot may push; an app image it may not.
    let agent_robot = &env.info.registry_agent;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", agent_robot.username, agent_robot.password));
    std::fs::write(&auth, serde_json::json!({"auths": {&env.info.registry: {"auth": basic}}}).to_string()).unwrap();
    let cert_dir = env.info.registry_cert_dir.to_str().unwrap();
    let skopeo = |args: &[&str]| {
        std::process::Command::new("skopeo").arg("--insecure-policy").args(args).output().expect("skopeo")
    };
    let layout = format!("oci:{}:pulled", dir.path().join("layout").display());
    let src = format!("docker://{}:1.0.0", fleet.image);
    let pull = skopeo(&["copy", "--src-cert-dir", cert_dir, "--src-authfile", auth.to_str().unwrap(), &src, &layout]);
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    let push_to = |dest: &str| {
        skopeo(&["copy", "--dest-cert-dir", cert_dir, "--dest-authfile", auth.to_str().unwrap(), &layout, dest])
    };
    let app = push_to(&format!("docker://{}:stolen", fleet.image));
    assert!(!app.status.success(), "the store robot pushed an app image");
    let err = String::from_utf8_lossy(&app.stderr).to_lowercase();
    assert!(err.contains("unauthorized") || err.contains("denied"), "{err}");
    let reports = text(&agent(&["status", "-c", fleet.stores["qa1"].config.to_str().unwrap(), "-o", "json"]));
    assert!(!reports.contains(&agent_robot.password), "no credential in status");
}

#[test]
fn validate_tells_a_node_that_matches_no_wave_and_names_a_bad_wave_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "identity:\n  nodeName: n1\n  labels: {store: s9}\ngit:\n  url: https://git.example/x.git\n",
    )
    .unwrap();
    let waves = dir.path().join("waves.yaml");
    std::fs::write(&waves, "waves:\n- name: qa\n  selector: {matchLabels: {env: qa}}\n").unwrap();
    let run = || agent(&["validate", "-c", config.to_str().unwrap(), "--waves", waves.to_str().unwrap()]);
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("identity.labels: line 3: ")
            && text(&out).contains("held: this node matches no wave (qa) with labels {store=s9}"),
        "{}",
        text(&out)
    );
    std::fs::write(&waves, "waves:\n- name: qa\n  selector: {}\n  soak: later\n").unwrap();
    let out = run();
    assert!(text(&out).contains("waves[0].soak: line 4: "), "{}", text(&out));
    std::fs::write(&waves, "waves:\n- name: all\n  selector: {}\n").unwrap();
    assert_eq!(run().status.code(), Some(0), "{}", text(&run()));
}
