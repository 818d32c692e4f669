//! The registry source against the testenv's real registry and token service. Request counts are
//! taken at the server side: the fault proxy in front of the registry and the token service's
//! own access log, never the agent's counters.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::source::registry::{Auth, Registry, RegistryError, RegistryOptions, SecretSource};
use shared::image::ImageRef;
use shared::policy::TagPolicy;
use xtask::fault_proxy::Fault;
use xtask::support::{TestEnv, Upstream};

const CANARY: &str = "canary-r3gistry-secret";

fn registry(env: &TestEnv, host: &str, password_file: &Path, ca: bool) -> Registry {
    Registry::new(RegistryOptions {
        host: host.to_owned(),
        auth: Auth::Basic {
            username: env.info.registry_agent.username.clone(),
            password: SecretSource::File(password_file.to_owned()),
        },
        ca_file: ca.then(|| env.info.ca_cert.clone()),
        max_concurrency: 4,
        max_attempts: 4,
    })
    .unwrap()
}

/// Token requests the store robot made for `repo` (the CI robot's pushes do not count).
fn token_requests_for(env: &TestEnv, repo: &str) -> usize {
    let log = std::fs::read_to_string(&env.info.token_access_log).unwrap_or_default();
    let needle = url_encode(repo);
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["account"] == env.info.registry_agent.username.as_str())
        .filter(|v| v["query"].as_str().is_some_and(|q| q.contains(&needle)))
        .count()
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A repository with `1.0.0` pushed, and a store-robot registry client behind a fault proxy.
struct Proxied {
    digest: String,
    proxy: xtask::fault_proxy::FaultProxy,
    reg: Registry,
    image: ImageRef,
    _dir: tempfile::TempDir,
}

async fn proxied(env: &TestEnv, repo: &str) -> Proxied {
    let digest = env.push_image(repo, "1.0.0");
    let proxy = env.fault_proxy(Upstream::Registry).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), &env.info.registry_agent.password);
    let reg = registry(env, &proxy.addr().to_string(), &secret, true);
    let image = ImageRef::parse(&format!("{}/{repo}:1.0.0", proxy.addr())).unwrap();
    Proxied { digest, proxy, reg, image, _dir: dir }
}

fn secret_file(dir: &Path, value: &str) -> std::path::PathBuf {
    let p = dir.join("robot-secret");
    std::fs::write(&p, value).unwrap();
    p
}

#[tokio::test]
async fn a_tag_resolves_to_its_digest_and_a_repeat_poll_costs_one_head_and_no_token() {
    let env = TestEnv::get();
    let repo = env.registry_repo("resolve");
    let Proxied { digest, proxy, reg, image, _dir } = proxied(env, &repo).await;

    assert_eq!(reg.resolve(&image).await.unwrap(), digest);
    assert_eq!(token_requests_for(env, &repo), 1, "one token for the first poll");
    let heads = |p: &xtask::fault_proxy::FaultProxy| p.count(|s| s.method == "HEAD");
    assert_eq!(heads(&proxy), 2, "challenge, then the authorised HEAD");
    // The agent's own accounting (for metrics) agrees with what the server side saw.
    let counts = &reg.counters;
    assert_eq!((counts.get("manifest_head", "challenged"), counts.get("manifest_head", "ok")), (1, 1));
    assert_eq!(counts.get("token", "ok"), 1);

    proxy.reset_seen();
    assert_eq!(reg.resolve(&image).await.unwrap(), digest);
    assert_eq!(proxy.seen().len(), 1, "a no-change poll is exactly one request: {:?}", proxy.seen());
    assert_eq!(heads(&proxy), 1);
    assert_eq!(token_requests_for(env, &repo), 1, "no token request while the token is valid");
}

#[tokio::test]
async fn wrong_credentials_fail_naming_url_and_account_but_never_the_secret() {
    let env = TestEnv::get();
    let repo = env.registry_repo("wrong-secret");
    env.push_image(&repo, "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(env, &env.info.registry, &secret_file(dir.path(), CANARY), true);
    let err = reg.resolve(&ImageRef::parse(&format!("{}/{repo}:1.0.0", env.info.registry)).unwrap()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(text.contains(&env.info.token_realm) && text.contains("robot$store1+agent"), "{text}");
    assert!(!text.contains(CANARY) && !format!("{err:?}").contains(CANARY), "secret leaked: {err:?}");
}

#[tokio::test]
async fn tls_fails_without_the_ca_and_works_with_it() {
    let env = TestEnv::get();
    let repo = env.registry_repo("tls");
    let digest = env.push_image(&repo, "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), &env.info.registry_agent.password);
    let image = ImageRef::parse(&format!("{}/{repo}:1.0.0", env.info.registry)).unwrap();
    let err = registry(env, &env.info.registry, &secret, false).resolve(&image).await.unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert_eq!(registry(env, &env.info.registry, &secret, true).resolve(&image).await.unwrap(), digest);
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured() {
    let env = TestEnv::get();
    let repo = env.registry_repo("throttle");
    let Proxied { digest, proxy, reg, image, _dir } = proxied(env, &repo).await;
    reg.resolve(&image).await.unwrap();

    proxy.reset_seen();
    proxy.set(Fault::Respond { status: 429, retry_after: Some(2), times: Some(1) });
    let started = Instant::now();
    assert_eq!(reg.resolve(&image).await.unwrap(), digest);
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After not honoured: {:?}", started.elapsed());
    let seen: Vec<(u16, bool)> = proxy.seen().iter().map(|s| (s.status, s.injected)).collect();
    assert_eq!(seen, vec![(429, true), (200, false)]);
}

#[tokio::test]
async fn a_rotated_credential_file_is_picked_up_without_a_restart() {
    let env = TestEnv::get();
    let repo = env.registry_repo("rotate");
    let digest = env.push_image(&repo, "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), CANARY);
    let reg = registry(env, &env.info.registry, &secret, true);
    let image = ImageRef::parse(&format!("{}/{repo}:1.0.0", env.info.registry)).unwrap();
    assert!(matches!(reg.resolve(&image).await, Err(RegistryError::Unauthorized { .. })));
    // Harbor rotated the robot secret and the new one was written to the file.
    std::fs::write(&secret, format!("{}\n", env.info.registry_agent.password)).unwrap();
    assert_eq!(reg.resolve(&image).await.unwrap(), digest);
}

#[tokio::test]
async fn a_missing_tag_is_not_found_and_names_the_image() {
    let env = TestEnv::get();
    let repo = env.registry_repo("missing");
    env.push_image(&repo, "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(env, &env.info.registry, &secret_file(dir.path(), &env.info.registry_agent.password), true);
    let image = format!("{}/{repo}:9.9.9-missing", env.info.registry);
    let err = reg.resolve(&ImageRef::parse(&image).unwrap()).await.unwrap_err();
    assert_eq!(err.to_string(), format!("{image}: not found in the registry"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_newly_pushed_semver_tag_is_chosen_from_the_listed_tags() {
    let env = TestEnv::get();
    let repo = env.registry_repo("semver");
    for tag in ["1.0.0", "1.2.0-broken"] {
        env.push_image(&repo, tag);
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(env, &env.info.registry, &secret_file(dir.path(), &env.info.registry_agent.password), true);
    let policy = TagPolicy::parse("semver: '>=1.0.0 <2.0.0'").unwrap();
    let tags = reg.list_tags(&repo).await.unwrap();
    assert_eq!(policy.select(tags.iter().map(String::as_str)).chosen.as_deref(), Some("1.0.0"));
    env.push_image(&repo, "1.1.0");
    let tags = reg.list_tags(&repo).await.unwrap();
    assert_eq!(policy.select(tags.iter().map(String::as_str)).chosen.as_deref(), Some("1.1.0"));
}

#[tokio::test]
async fn policy_test_with_an_image_lists_the_registry_and_prints_the_digest() {
    let env = TestEnv::get();
    let repo = env.registry_repo("cli-image");
    for tag in ["1.0.0", "1.2.0-broken"] {
        env.push_image(&repo, tag);
    }
    let want = env.push_image(&repo, "1.1.0");
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), &env.info.registry_agent.password);
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  nodeName: store-node-1\ngit:\n  url: https://git.example/x.git\nregistries:\n- host: {}\n  \
             caFile: {}\n  auth:\n    username: {:?}\n    passwordFile: robot-secret\n",
            env.info.registry,
            env.info.ca_cert.display(),
            env.info.registry_agent.username
        ),
    )
    .unwrap();
    let image = format!("{}/{repo}", env.info.registry);
    let run = |policy: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
            .args(["policy", "test", "--policy", policy, &image, "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run("semver: '^1'");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("chosen: 1.1.0 ({want})\n")), "{stdout}");
    assert!(stdout.contains("1.2.0-broken  dropped: pre-release"), "{stdout}");

    let out = run("digest: {tag: '1.0.0'}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("chosen: 1.0.0 (sha256:"));

    let out = run("semver: '>=7'");
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn a_tag_moved_to_a_new_digest_is_detected() {
    let env = TestEnv::get();
    let repo = env.registry_repo("moved");
    let first = env.push_image(&repo, "stable");
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(env, &env.info.registry, &secret_file(dir.path(), &env.info.registry_agent.password), true);
    let image = ImageRef::parse(&format!("{}/{repo}:stable", env.info.registry)).unwrap();
    assert_eq!(reg.resolve(&image).await.unwrap(), first);
    let second = env.repush_image(&repo, "stable", "rebuilt");
    assert_ne!(first, second);
    assert_eq!(reg.resolve(&image).await.unwrap(), second);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_the_registry_recovers() {
    let env = TestEnv::get();
    let repo = env.registry_repo("backoff");
    let Proxied { digest, proxy, reg, image, _dir } = proxied(env, &repo).await;
    reg.resolve(&image).await.unwrap();
    proxy.reset_seen();
    proxy.set(Fault::Respond { status: 503, retry_after: None, times: Some(2) });
    assert_eq!(reg.resolve(&image).await.unwrap(), digest);
    let seen: Vec<u16> = proxy.seen().iter().map(|s| s.status).collect();
    assert_eq!(seen, vec![503, 503, 200]);

    // Past the retry budget the error is transient and names the URL and status.
    proxy.set(Fault::Respond { status: 503, retry_after: None, times: None });
    let err = reg.resolve(&image).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&format!("{}/v2/{repo}/manifests/1.0.0: HTTP 503", proxy.addr())), "{err}");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transient_error_naming_the_url() {
    let env = TestEnv::get();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let host = format!("127.0.0.1:{port}");
    let reg = Registry::new(RegistryOptions {
        host: host.clone(),
        auth: Auth::Anonymous,
        ca_file: Some(env.info.ca_cert.clone()),
        max_concurrency: 1,
        max_attempts: 1,
    })
    .unwrap();
    let err = reg.resolve(&ImageRef::parse(&format!("{host}/a/b:1")).unwrap()).await.unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }) && err.is_transient(), "{err:?}");
    assert!(err.to_string().starts_with(&format!("https://{host}/v2/a/b/manifests/1: cannot connect")), "{err}");
}

#[tokio::test]
async fn the_per_registry_concurrency_limit_holds_at_the_server_side() {
    let env = TestEnv::get();
    let repo = env.registry_repo("concurrency");
    let digest = env.push_image(&repo, "1.0.0");
    let proxy = env.fault_proxy(Upstream::Registry).await;
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::new(RegistryOptions {
        host: proxy.addr().to_string(),
        auth: Auth::Basic {
            username: env.info.registry_agent.username.clone(),
            password: SecretSource::File(secret_file(dir.path(), &env.info.registry_agent.password)),
        },
        ca_file: Some(env.info.ca_cert.clone()),
        max_concurrency: 2,
        max_attempts: 1,
    })
    .unwrap();
    let image = ImageRef::parse(&format!("{}/{repo}:1.0.0", proxy.addr())).unwrap();
    reg.resolve(&image).await.unwrap();
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    proxy.reset_seen();
    let all = futures::future::join_all((0..6).map(|_| reg.resolve(&image))).await;
    assert!(all.iter().all(|r| r.as_ref().is_ok_and(|d| *d == digest)), "{all:?}");
    assert_eq!(proxy.seen().len(), 6);
    assert_eq!(proxy.max_in_flight(), 2, "never more than the limit, and the limit was used");
}

#[tokio::test]
async fn an_image_named_by_an_alias_resolves_through_the_configured_host() {
    let env = TestEnv::get();
    let repo = env.registry_repo("alias");
    let Proxied { digest, proxy, _dir, .. } = proxied(env, &repo).await;
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), &env.info.registry_agent.password);
    let config: shared::config::Registry = serde_saphyr::from_str(&format!(
        "host: {}\naliases: [harbor.example.com]\ncaFile: {}\nauth:\n  username: {:?}\n  passwordFile: robot-secret\n",
        proxy.addr(),
        env.info.ca_cert.display(),
        env.info.registry_agent.username
    ))
    .unwrap();
    let registries = agent::source::registry::Registries::from_config(&[config], dir.path()).unwrap();
    proxy.reset_seen();
    let image = ImageRef::parse(&format!("harbor.example.com/{repo}:1.0.0")).unwrap();
    assert_eq!(registries.for_image(&image).unwrap().resolve(&image).await.unwrap(), digest);
    assert!(proxy.count(|s| s.method == "HEAD" && s.target == format!("/v2/{repo}/manifests/1.0.0")) >= 1);

    let elsewhere = ImageRef::parse(&format!("other.example/{repo}:1.0.0")).unwrap();
    let err = registries.for_image(&elsewhere).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "other.example/{repo}:1.0.0: no registry \"other.example\" is configured (add it, or an alias of it, under registries[])"
        )
    );
}

#[tokio::test]
async fn a_listing_of_more_than_one_page_of_tags_is_complete() {
    let env = TestEnv::get();
    let repo = env.registry_repo("pages");
    let Proxied { proxy, reg, _dir, .. } = proxied(env, &repo).await;
    // 1.0.0 plus 204 more: more than the 200 tags the agent asks for per page.
    let more: Vec<String> = (1..=204).map(|i| format!("1.0.{i}")).collect();
    env.tag_image(&repo, "1.0.0", &more).await.unwrap();
    proxy.reset_seen();
    let tags = reg.list_tags(&repo).await.unwrap();
    assert_eq!(tags.len(), 205);
    assert!(tags.contains(&"1.0.204".to_owned()) && tags.contains(&"1.0.0".to_owned()));
    // Distribution 2.8 ignores `n` and answers in one page without a `Link`; Harbor pages with
    // `Link: <...>; rel="next"` (followed by `shared::registry::next_page`, tested with tables).
    let lists: Vec<_> = proxy.seen().into_iter().filter(|s| s.target.contains("/tags/list")).collect();
    assert!(lists.iter().all(|s| s.target.contains("n=200")), "{lists:?}");
    let policy = TagPolicy::parse("semver: '^1'").unwrap();
    assert_eq!(policy.select(tags.iter().map(String::as_str)).chosen.as_deref(), Some("1.0.204"));
}
