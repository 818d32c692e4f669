//! Proofs that the testenv is made of real parts: a control plane whose controllers roll out
//! Deployments on KWOK nodes, a registry that enforces Harbor-style token auth, a git server that
//! enforces Basic auth, and a fault proxy whose faults a real client sees.

use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use xtask::fault_proxy::Fault;
use xtask::http;
use xtask::support::{TestEnv, Upstream};

use crate::util::{free_port_block, wait_for, xtask};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                               application/vnd.docker.distribution.manifest.v2+json";

fn deployment(name: &str, image: &str, progress_deadline: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }))
    .expect("static deployment")
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    let c = d.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn first_pod(pods: &Api<Pod>, app: &str) -> Result<Pod, String> {
    let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.map_err(|e| e.to_string())?;
    list.items.into_iter().next().ok_or_else(|| "no pod yet".to_owned())
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

#[tokio::test]
async fn a_deployment_with_a_good_image_becomes_available_on_the_kwok_node() {
    let env = TestEnv::get();
    let ns = env.namespace("good-deploy").await;
    let client = env.client().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let image = format!("{}/library/u5-signalling:1.0.0", env.info.registry);
    deploys.create(&PostParams::default(), &deployment("kiosk", &image, 30)).await.unwrap();

    wait_for("Deployment Available", Duration::from_secs(60), || async {
        let d = deploys.get("kiosk").await.map_err(|e| e.to_string())?;
        let s = d.status.clone().unwrap_or_default();
        match condition(&d, "Available") {
            Some((st, _)) if st == "True" && s.available_replicas == Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let pod = first_pod(&Api::namespaced(client, &ns.name), "kiosk").await.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("store-node-1"), "scheduled by the real scheduler");
}

#[tokio::test]
async fn a_broken_tag_crash_loops_never_becomes_available_and_exceeds_its_progress_deadline() {
    let env = TestEnv::get();
    let ns = env.namespace("broken-deploy").await;
    let client = env.client().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let image = format!("{}/library/u5-signalling:1.2.0-broken", env.info.registry);
    deploys.create(&PostParams::default(), &deployment("kiosk", &image, 5)).await.unwrap();

    let pod = wait_for("pod in CrashLoopBackOff", Duration::from_secs(30), || async {
        let p = first_pod(&pods, "kiosk").await?;
        match waiting_reason(&p).as_deref() {
            Some("CrashLoopBackOff") => Ok(p),
            other => Err(format!("waiting reason {other:?}")),
        }
    })
    .await;
    let ready = pod.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");

    let d = wait_for("ProgressDeadlineExceeded", Duration::from_secs(60), || async {
        let d = deploys.get("kiosk").await.map_err(|e| e.to_string())?;
        match condition(&d, "Progressing") {
            Some((st, reason)) if st == "False" && reason == "ProgressDeadlineExceeded" => Ok(d),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(condition(&d, "Available").map(|c| c.0).as_deref(), Some("False"));
    assert_eq!(d.status.unwrap().available_replicas.unwrap_or(0), 0);
}

#[tokio::test]
async fn a_missing_tag_shows_err_image_pull_then_image_pull_back_off() {
    let env = TestEnv::get();
    let ns = env.namespace("missing-image").await;
    let client = env.client().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let image = format!("{}/library/u5-signalling:9.9.9-missing", env.info.registry);
    deploys.create(&PostParams::default(), &deployment("kiosk", &image, 30)).await.unwrap();
    wait_for("ImagePullBackOff", Duration::from_secs(30), || async {
        let p = first_pod(&pods, "kiosk").await?;
        match (waiting_reason(&p).as_deref(), p.status.as_ref().and_then(|s| s.phase.clone()).as_deref()) {
            (Some("ImagePullBackOff"), Some("Pending")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn deleted_pods_go_away_when_their_grace_period_ends() {
    let env = TestEnv::get();
    let ns = env.namespace("pod-grace").await;
    let pods: Api<Pod> = Api::namespaced(env.client().await, &ns.name);
    let image = format!("{}/library/u5-signalling:1.0.0", env.info.registry);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kwok-kubelet"},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_for("pod Ready", Duration::from_secs(30), || async {
        let p = pods.get("kwok-kubelet").await.map_err(|e| e.to_string())?;
        let ready = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready { Ok(()) } else { Err("not ready".into()) }
    })
    .await;
    let grace = DeleteParams { grace_period_seconds: Some(3), ..DeleteParams::default() };
    pods.delete("kwok-kubelet", &grace).await.unwrap();
    let deletion_at = |p: &Pod| p.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_second()).unwrap();
    let kwok_deadline = deletion_at(&pods.get("kwok-kubelet").await.unwrap());
    wait_for("KWOK to remove the pod", Duration::from_secs(20), || async {
        match pods.get_opt("kwok-kubelet").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
    // Removed no earlier than its deletion timestamp (1 s tolerance for clock granularity).
    assert!(now_secs() + 1 >= kwok_deadline, "removed before the grace period ended");
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn the_audit_log_records_each_write_with_its_body() {
    let env = TestEnv::get();
    let ns = env.namespace("audit").await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns.name);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "flows"}, "data": {"marker": ns.name},
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let ev = wait_for("audit event", Duration::from_secs(10), || async {
        env.audit_events()
            .unwrap()
            .into_iter()
            .find(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "configmaps"
                    && e["objectRef"]["namespace"] == ns.name.as_str()
                    && e["objectRef"]["name"] == "flows"
            })
            .ok_or_else(|| "no event yet".to_owned())
    })
    .await;
    assert_eq!(ev["user"]["username"], "testenv-admin");
    assert_eq!(ev["requestObject"]["data"]["marker"], ns.name.as_str());
    // Reads are not audited, except a service account's (the agent's own pod under its chart's
    // RBAC, whose every request the install test checks): the log proves writes otherwise.
    let settled = env.audit_events_settled(&ns.name).await;
    assert!(settled.iter().any(|e| e["objectRef"]["name"] == "flows"), "the settled log holds the earlier write");
    let service_account = |e: &serde_json::Value| {
        e["user"]["groups"].as_array().is_some_and(|g| g.iter().any(|g| g == "system:serviceaccounts"))
    };
    assert!(settled.iter().filter(|e| !service_account(e)).all(|e| e["verb"] != "get" && e["verb"] != "list"));
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

async fn token(env: &TestEnv, creds: Option<(&str, &str)>, scope: &str) -> http::Reply {
    let url = format!("{}?service={}&scope={}", env.info.token_realm, env.info.registry_service, scope);
    let auth = creds.map(|(u, p)| basic(u, p));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http::get(&url, &env.info.ca_cert, &headers).await.unwrap()
}

async fn head_manifest(env: &TestEnv, repo: &str, tag: &str, bearer: Option<&str>) -> http::Reply {
    let url = format!("https://{}/v2/{repo}/manifests/{tag}", env.info.registry);
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", MANIFEST_ACCEPT)];
    headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
    http::request("HEAD", &url, &env.info.ca_cert, &headers).await.unwrap()
}

fn token_of(reply: &http::Reply) -> String {
    assert_eq!(reply.status, 200, "token service: {}", reply.body);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_registry_answers_anonymous_requests_with_401_and_a_bearer_challenge() {
    let env = TestEnv::get();
    let repo = env.registry_repo("anon");
    env.push_image(&repo, "1.0.0");
    let r = head_manifest(env, &repo, "1.0.0", None).await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").expect("challenge");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&format!("realm=\"{}\"", env.info.token_realm)), "{challenge}");
    assert!(challenge.contains("service=\"harbor-registry\""), "{challenge}");
    assert!(challenge.contains(&format!("scope=\"repository:{repo}:pull\"")), "{challenge}");
    // An anonymous token carries no access, as Harbor's for a private project: still refused.
    let anon = token_of(&token(env, None, &format!("repository:{repo}:pull")).await);
    assert_eq!(head_manifest(env, &repo, "1.0.0", Some(&anon)).await.status, 401);
}

#[tokio::test]
async fn a_wrong_password_gets_401_from_the_token_service() {
    let env = TestEnv::get();
    let user = env.info.registry_agent.username.as_str();
    let r = token(env, Some((user, "not-the-password")), "repository:library/u5-signalling:pull").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.body.contains("token"), "no token on a failed login: {}", r.body);
    let ok = token(env, Some((user, &env.info.registry_agent.password)), "repository:library/u5-signalling:pull").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn a_token_for_repository_a_is_refused_on_repository_b() {
    let env = TestEnv::get();
    let (a, b) = (env.registry_repo("scope-a"), env.registry_repo("scope-b"));
    let digest = env.push_image(&a, "1.0.0");
    env.push_image(&b, "1.0.0");
    let agent = &env.info.registry_agent;
    let tok = token_of(&token(env, Some((&agent.username, &agent.password)), &format!("repository:{a}:pull")).await);
    let on_a = head_manifest(env, &a, "1.0.0", Some(&tok)).await;
    assert_eq!(on_a.status, 200);
    assert_eq!(on_a.header("docker-content-digest"), Some(digest.as_str()), "HEAD resolves the pushed digest");
    assert_eq!(head_manifest(env, &b, "1.0.0", Some(&tok)).await.status, 401);
}

#[tokio::test]
async fn a_token_signed_by_a_foreign_key_is_refused() {
    let env = TestEnv::get();
    let repo = env.registry_repo("foreign");
    env.push_image(&repo, "1.0.0");
    let now = now_secs();
    let claims = serde_json::json!({
        "iss": "gitops-agent-testenv-token-issuer", "sub": "mallory", "aud": env.info.registry_service,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": "forged",
        "access": [{"type": "repository", "name": repo, "actions": ["pull"]}],
    });
    let sign = |cert: &std::path::Path, key: &std::path::Path| {
        let pem = std::fs::read_to_string(cert).unwrap();
        let der = pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5c = Some(vec![der]);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(key).unwrap()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    // Control: the same claims signed with the testenv's own signer are accepted...
    let pki = env.info.pki();
    let genuine = sign(&pki.token_cert(), &pki.token_key());
    assert_eq!(head_manifest(env, &repo, "1.0.0", Some(&genuine)).await.status, 200);
    // ...and signed by a key the registry does not trust, refused.
    let forged = sign(&env.info.foreign_signing_cert, &env.info.foreign_signing_key);
    assert_eq!(head_manifest(env, &repo, "1.0.0", Some(&forged)).await.status, 401);
}

fn authfile(dir: &std::path::Path, registry: &str, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join(format!("auth-{}.json", user.replace(['$', '+'], "_")));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(&path, serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string()).unwrap();
    path
}

#[tokio::test]
async fn skopeo_pushes_with_the_ci_robot_and_pulls_with_the_store_robot_which_cannot_push() {
    let env = TestEnv::get();
    let repo = env.registry_repo("skopeo");
    let digest = env.push_image(&repo, "1.1.0");
    let dir = tempfile::tempdir().unwrap();
    let agent = &env.info.registry_agent;
    let auth = authfile(dir.path(), &env.info.registry, &agent.username, &agent.password);
    let skopeo = |args: &[&str]| {
        std::process::Command::new("skopeo").arg("--insecure-policy").args(args).output().expect("skopeo")
    };
    let src = format!("docker://{}/{repo}:1.1.0", env.info.registry);
    let layout = format!("oci:{}:pulled", dir.path().join("layout").display());
    let cert_dir = env.info.registry_cert_dir.to_str().unwrap();
    let pull = skopeo(&["copy", "--src-cert-dir", cert_dir, "--src-authfile", auth.to_str().unwrap(), &src, &layout]);
    assert!(pull.status.success(), "pull failed: {}", String::from_utf8_lossy(&pull.stderr));
    let index = std::fs::read_to_string(dir.path().join("layout/index.json")).unwrap();
    assert!(index.contains(&digest), "pulled manifest is the pushed one");

    let dest = format!("docker://{}/{repo}:stolen", env.info.registry);
    let push =
        skopeo(&["copy", "--dest-cert-dir", cert_dir, "--dest-authfile", auth.to_str().unwrap(), &layout, &dest]);
    assert!(!push.status.success(), "the pull-only robot pushed");
    let err = String::from_utf8_lossy(&push.stderr).to_lowercase();
    assert!(err.contains("unauthorized") || err.contains("denied"), "{err}");

    // The token service saw the store robot, and granted it pull only.
    let log = std::fs::read_to_string(&env.info.token_access_log).unwrap();
    let asked: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["account"] == agent.username.as_str()
                && v["query"].as_str().unwrap_or("").contains(&repo.replace('/', "%2F"))
        })
        .collect();
    assert!(!asked.is_empty(), "no token request by the store robot for {repo}");
    for v in &asked {
        for g in v["granted"].as_array().unwrap() {
            assert_eq!(g["actions"], serde_json::json!(["pull"]), "{v}");
        }
    }
}

#[tokio::test]
async fn git_ls_remote_over_https_fails_without_credentials_and_works_with_them() {
    let env = TestEnv::get();
    let repo = env.git_repo("ls-remote");
    let work = tempfile::tempdir().unwrap();
    let run = |mut c: std::process::Command| c.output().expect("git");
    let mut init = std::process::Command::new("git");
    init.args(["init", "-q", "-b", "main"]).arg(work.path());
    assert!(run(init).status.success());
    let mut commit = std::process::Command::new("git");
    commit.arg("-C").arg(work.path()).args([
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "first",
    ]);
    assert!(run(commit).status.success());
    let mut push = env.git(Some(&env.info.git_ci));
    push.arg("-C").arg(work.path()).args(["push", "-q", &repo.url, "HEAD:refs/heads/main"]);
    let pushed = run(push);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));

    let mut anon = env.git(None);
    anon.args(["ls-remote", &repo.url]);
    let out = run(anon);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not read Username"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let wrong = xtask::testenv::Creds { username: env.info.git_agent.username.clone(), password: "wrong".into() };
    let mut bad = env.git(Some(&wrong));
    bad.args(["ls-remote", &repo.url]);
    assert!(!run(bad).status.success(), "a wrong password was accepted");

    let mut ok = env.git(Some(&env.info.git_agent));
    ok.args(["ls-remote", &repo.url]);
    let out = run(ok);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refs/heads/main"));

    // The server's own access log (lighttpd flushes it about once a second): the refusals were
    // 401s, and the good ls-remote was served to the agent's account.
    let agent = &env.info.git_agent.username;
    let marker = format!("/git/{}.git/info/refs?service=git-upload-pack", repo.name);
    wait_for("git access log entries", Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(&env.info.git_access_log).map_err(|e| e.to_string())?;
        let refs: Vec<&str> = log.lines().filter(|l| l.contains(&marker)).collect();
        let refused = refs.iter().filter(|l| l.contains("\" 401 ")).count();
        let served = refs.iter().any(|l| l.contains(&format!(" {agent} [")) && l.contains("\" 200 "));
        if refused >= 2 && served { Ok(()) } else { Err(format!("{refs:#?}")) }
    })
    .await;
}

#[tokio::test]
async fn the_fault_proxy_cut_and_429_are_seen_by_a_real_client() {
    let env = TestEnv::get();
    let proxy = env.fault_proxy(Upstream::ApiServer).await;
    let dir = tempfile::tempdir().unwrap();
    let client = xtask::kube::kube_client(&env.kubeconfig_for(&proxy.url(), dir.path())).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let lists =
        |p: &xtask::fault_proxy::FaultProxy| p.count(|s| s.target.starts_with("/api/v1/namespaces/default/pods"));

    pods.list(&ListParams::default()).await.expect("passes through");
    assert_eq!(proxy.count(|s| s.target.starts_with("/api/v1/namespaces/default/pods") && s.status == 200), 1);

    // Two 429s with Retry-After: 1. kube's client honours it and retries, so the call succeeds
    // no sooner than 2 s later, after three requests the proxy counted.
    proxy.reset_seen();
    proxy.set(Fault::Respond { status: 429, retry_after: Some(1), times: Some(2) });
    let started = std::time::Instant::now();
    pods.list(&ListParams::default()).await.expect("retried past the 429s");
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After not honoured: {:?}", started.elapsed());
    assert_eq!(lists(&proxy), 3);
    assert_eq!(proxy.count(|s| s.injected && s.status == 429), 2);

    // A plain client sees the status and header as sent.
    proxy.set(Fault::Respond { status: 503, retry_after: Some(7), times: Some(1) });
    let raw = http::get(&format!("{}/version", proxy.url()), &env.info.ca_cert, &[]).await.unwrap();
    assert_eq!((raw.status, raw.header("retry-after")), (503, Some("7")));

    proxy.set(Fault::Cut);
    let before = proxy.seen().len();
    let cut = http::get(&format!("{}/version", proxy.url()), &env.info.ca_cert, &[]).await;
    assert!(cut.is_err(), "a cut connection must not answer: {cut:?}");
    let err = tokio::time::timeout(Duration::from_secs(30), pods.list(&ListParams::default()))
        .await
        .expect("a cut must fail fast, not hang")
        .expect_err("cut");
    assert!(matches!(err, kube::Error::HyperError(_) | kube::Error::Service(_)), "{err:?}");
    assert_eq!(proxy.seen().len(), before, "no request got through a cut");

    proxy.set(Fault::Pass);
    pods.list(&ListParams::default()).await.expect("passes again");
}

#[tokio::test]
async fn a_fault_proxy_cut_also_ends_an_open_watch() {
    use futures::StreamExt;
    let env = TestEnv::get();
    let ns = env.namespace("watch-cut").await;
    let proxy = env.fault_proxy(Upstream::ApiServer).await;
    let dir = tempfile::tempdir().unwrap();
    let client = xtask::kube::kube_client(&env.kubeconfig_for(&proxy.url(), dir.path())).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let mut stream = cms.watch(&kube::api::WatchParams::default(), "0").await.unwrap().boxed();
    // Control: the watch through the proxy really delivers events before the cut.
    let direct: Api<ConfigMap> = Api::namespaced(env.client().await, &ns.name);
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ping"}}),
    )
    .unwrap();
    direct.create(&PostParams::default(), &cm).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = stream.next().await {
            if let Ok(kube::api::WatchEvent::Added(c)) = ev
                && c.metadata.name.as_deref() == Some("ping")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the proxied watch never delivered the ConfigMap");
    proxy.set(Fault::Cut);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch outlived the cut");
}

#[test]
fn a_taken_port_fails_up_cleanly_and_leaves_nothing_started() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_block(9);
    // Hold the registry's port (base + 6) as something else would.
    let _squatter = TcpListener::bind(("127.0.0.1", base + 6)).expect("test port free");
    let base_text = base.to_string();
    let env = [("GITOPS_TESTENV_DIR", dir.path().to_str().unwrap()), ("GITOPS_TESTENV_PORT_BASE", base_text.as_str())];
    let (ok, out) = xtask(&["testenv", "up"], &env);
    assert!(!ok, "up succeeded on a taken port: {out}");
    let taken = format!("127.0.0.1:{} (registry)", base + 6);
    assert!(out.contains(&taken) && out.contains("nothing was started"), "{out}");
    for port in (base..base + 9).filter(|p| *p != base + 6) {
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} left listening");
    }
    let pids = std::fs::read_dir(dir.path().join("pids")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(pids, 0, "processes recorded as started");
}

#[test]
fn up_is_idempotent_and_down_stops_everything_it_started_leaving_no_port_listening() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_block(9);
    let base_text = base.to_string();
    let env = [("GITOPS_TESTENV_DIR", dir.path().to_str().unwrap()), ("GITOPS_TESTENV_PORT_BASE", base_text.as_str())];
    let (ok, out) = xtask(&["testenv", "up"], &env);
    assert!(ok, "second testenv failed to start: {out}");
    let (ok, status) = xtask(&["testenv", "status"], &env);
    assert!(ok && status.contains("api server /readyz       ok"), "{status}");
    let pids = recorded_pids(dir.path());
    assert_eq!(pids.len(), 8, "one pid per component");

    // `up` again is a no-op: same processes, nothing restarted.
    let (ok, out) = xtask(&["testenv", "up"], &env);
    assert!(ok && out.contains("already up"), "{out}");
    assert_eq!(recorded_pids(dir.path()), pids, "a second up restarted components");

    let (ok, out) = xtask(&["testenv", "down"], &env);
    assert!(ok, "{out}");
    for port in base..base + 9 {
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} still listening after down");
    }
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next().unwrap_or('X')).unwrap_or('X');
        assert!(state == 'X' || state == 'Z', "pid {pid} still running after down");
    }
    // Idempotent the other way too: a second down finds nothing to stop.
    let (ok, out) = xtask(&["testenv", "down"], &env);
    assert!(ok && out.contains("nothing was running"), "{out}");
}

/// The pids `up` recorded in a run dir, sorted.
fn recorded_pids(run_dir: &std::path::Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir(run_dir.join("pids"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().lines().next().unwrap().parse().unwrap())
        .collect();
    pids.sort_unstable();
    pids
}
