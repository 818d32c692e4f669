//! Image signatures verified before anything is applied, with images signed by the real `cosign`
//! CLI (a key pair the test generates, no transparency log, nothing beyond loopback): signed
//! rolls out; unsigned, another key's, another digest's and a tampered payload are blocked at
//! preflight naming the image, with nothing applied (from the audit log); a signature pushed
//! after the commit is found on the next reconcile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use xtask::support::TestEnv;

use crate::rollout::{App, agent, bundle, text};
use crate::util::wait_for;

/// The real cosign, run offline against the testenv registry as the CI robot.
struct Cosign {
    bin: PathBuf,
    /// DOCKER_CONFIG (the robot's credentials), key pairs, payloads.
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Cosign {
    fn new(env: &TestEnv) -> Cosign {
        let bin = xtask::tools::ensure_cosign().expect("building cosign");
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", env.info.registry_ci.username, env.info.registry_ci.password));
        let config = serde_json::json!({"auths": {env.info.registry.clone(): {"auth": auth}}});
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        Cosign { bin, dir, ca: env.info.ca_cert.clone() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs cosign in its own folder; panics with its output when it fails.
    fn run(&self, args: &[&str]) -> String {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Command::new(&self.bin)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .env("DOCKER_CONFIG", self.dir.path())
            .env("SSL_CERT_FILE", &self.ca)
            .env("COSIGN_PASSWORD", "test-only")
            .env("HOME", self.dir.path())
            .env("TUF_ROOT", self.path("tuf"))
            .env("SIGSTORE_NO_CACHE", "1")
            .output()
            .expect("running cosign");
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "cosign {}: {all}", args.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cosign generate-key-pair` as `<prefix>.key` and `<prefix>.pub`; the public key's path.
    fn key_pair(&self, prefix: &str) -> PathBuf {
        self.run(&["generate-key-pair", "--output-key-prefix", prefix]);
        self.path(&format!("{prefix}.pub"))
    }

    /// An Ed25519 key made by openssl and imported with `cosign import-key-pair`, as `<prefix>.key`
    /// and `<prefix>.pub`; the public key's path.
    fn imported_ed25519(&self, prefix: &str) -> PathBuf {
        let pem = self.path(&format!("{prefix}-openssl.pem"));
        let out = Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&pem).output();
        assert!(out.expect("running openssl").status.success(), "openssl genpkey ed25519");
        self.run(&["import-key-pair", "--key", pem.to_str().unwrap(), "--output-key-prefix", prefix]);
        self.path(&format!("{prefix}.pub"))
    }

    /// `cosign sign` of `image@digest` with `<prefix>.key`, uploading to no transparency log.
    fn sign(&self, prefix: &str, image: &str) {
        let key = format!("{prefix}.key");
        self.run(&["sign", "--key", &key, "--tlog-upload=false", "-y", image]);
    }

    /// `cosign sign` storing the signature as an OCI 1.1 referrer of `image@digest` (on a
    /// registry without the referrers API, in the index at the tag `sha256-<hex>`), not at the
    /// classic `.sig` tag.
    fn sign_as_referrer(&self, prefix: &str, image: &str) {
        let key = format!("{prefix}.key");
        let args = ["sign", "--key", &key, "--tlog-upload=false", "--registry-referrers-mode=oci-1-1", "-y", image];
        self.run_with(&args, &[("COSIGN_EXPERIMENTAL", "1")]);
    }

    /// A payload for `image@digest` signed with `<prefix>.key`, then changed before cosign attaches
    /// it with the original signature: what a registry-side forger would store.
    fn attach_tampered(&self, prefix: &str, image: &str) {
        let payload = self.run(&["generate", image]);
        let original = self.path("payload.json");
        std::fs::write(&original, &payload).unwrap();
        let key = format!("{prefix}.key");
        let signature =
            self.run(&["sign-blob", "--key", &key, "--tlog-upload=false", "-y", original.to_str().unwrap()]);
        let mut doc: serde_json::Value = serde_json::from_str(&payload).unwrap();
        doc["optional"] = serde_json::json!({"note": "changed after signing"});
        let tampered = self.path("tampered.json");
        std::fs::write(&tampered, doc.to_string()).unwrap();
        let sig_file = self.path("payload.sig");
        std::fs::write(&sig_file, signature.trim()).unwrap();
        self.run(&[
            "attach",
            "signature",
            "--payload",
            tampered.to_str().unwrap(),
            "--signature",
            sig_file.to_str().unwrap(),
            image,
        ]);
    }
}

/// The app's config (`config`, as `App` wrote it) with `verify.cosign` on its registry,
/// trusting `keys` (name, file).
fn require_signatures(app: &App, config: &str, keys: &[(&str, &Path)]) {
    let mut verify = "  verify:\n    cosign:\n      publicKeys:\n".to_owned();
    for (name, file) in keys {
        verify.push_str(&format!("      - name: {name}\n        file: {}\n", file.display()));
    }
    let (head, tail) = config.split_once("kube:\n").expect("the app's config has a kube section");
    std::fs::write(&app.config, format!("{head}{verify}kube:\n{tail}")).unwrap();
}

/// A new app whose registry requires images signed by `key` (named `ci-2026`).
async fn app_trusting(env: &TestEnv, hint: &str, key: &Path) -> App {
    let app = App::new(env, hint).await;
    let config = std::fs::read_to_string(&app.config).unwrap();
    require_signatures(&app, &config, &[("ci-2026", key)]);
    app
}

fn blocked_message(app: &App, reason: &str) -> String {
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["result"], "blocked", "{reason}: {human}");
    b["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_images_signed_by_a_trusted_cosign_key_for_exactly_their_digest_are_applied() {
    let env = TestEnv::get();
    let cosign = Cosign::new(env);
    let trusted = cosign.key_pair("ci");
    assert!(std::fs::read_to_string(&trusted).unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    cosign.key_pair("stranger");
    let ed25519 = cosign.imported_ed25519("ed");
    let app = App::new(env, "cosign").await;

    // A key file that is not a public key is refused by `agent validate`, with field and line.
    let not_a_key = cosign.path("stranger.key");
    let config = std::fs::read_to_string(&app.config).unwrap();
    require_signatures(&app, &config, &[("ci-2026", &not_a_key)]);
    let out = agent(&["validate", "-c", app.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "registries[0].verify.cosign.publicKeys[0].file: line 21: {}: not a PEM public key of ECDSA P-256 or Ed25519",
            not_a_key.display()
        )),
        "{}",
        text(&out)
    );
    require_signatures(&app, &config, &[("ci-2026", &trusted), ("ed-2026", &ed25519)]);
    let out = agent(&["validate", "-c", app.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let digest = |tag: &str| env.push_image(&app.image_repo, tag);
    let pinned = |tag: &str, d: &str| format!("{}:{tag}@{d}", app.image);
    let at = |d: &str| format!("{}@{d}", app.image);

    // 1. Unsigned (App committed 1.0.0): blocked at preflight naming the image, nothing applied.
    let d100 = digest("1.0.0");
    let message = blocked_message(&app, "unsigned");
    assert!(message.contains(&format!("image {}:1.0.0 ({d100})", app.image)), "{message}");
    assert!(message.contains("unsigned: no cosign signature"), "{message}");
    assert!(message.contains("preflight"), "{message}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "unsigned: nothing applied");

    // 2. Signed after the commit: the next reconcile finds the signature and rolls out.
    cosign.sign("ci", &at(&d100));
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert_eq!(app.deployment_image(env).await, pinned("1.0.0", &d100));
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["verified"][pinned("1.0.0", &d100)][0], "ci-2026", "{record}");
    let out = agent(&["status", "-c", app.config.to_str().unwrap(), "--explain", "web"]);
    let explain = text(&out);
    assert!(explain.contains(&format!("image {}  verified: cosign key ci-2026", pinned("1.0.0", &d100))), "{explain}");
    let applied = app.writes(env).await;
    assert!(!applied.is_empty(), "the signed revision was applied");

    // 3. Another key signed 1.1.0: blocked, "unknown key"; 1.0.0 keeps running, nothing written.
    let d110 = digest("1.1.0");
    cosign.sign("stranger", &at(&d110));
    app.set_tag("1.1.0");
    app.commit(env, "bump to 1.1.0, signed by a stranger");
    let message = blocked_message(&app, "wrong key");
    assert!(message.contains(&format!("image {}:1.1.0 ({d110})", app.image)), "{message}");
    assert!(message.contains("signed by an unknown key"), "{message}");
    assert!(message.contains("(ci-2026, ed-2026)"), "names the keys it trusts: {message}");

    // 4. The trusted signature of 1.0.0 copied to 1.3.0's signature tag: another digest's.
    let d130 = digest("1.3.0");
    let sig_tag = |d: &str| format!("sha256-{}.sig", d.trim_start_matches("sha256:"));
    env.tag_image(&app.image_repo, &sig_tag(&d100), &[sig_tag(&d130)]).await.unwrap();
    app.set_tag("1.3.0");
    app.commit(env, "bump to 1.3.0, with a signature copied from 1.0.0");
    let message = blocked_message(&app, "another digest");
    assert!(message.contains(&format!("image {}:1.3.0 ({d130})", app.image)), "{message}");
    assert!(
        message.contains(&format!("signed for another digest: the signature by cosign key ci-2026 names {d100}")),
        "{message}"
    );

    // 5. A trusted key's signature over a payload changed afterwards: no key verifies it.
    let d140 = digest("1.4.0");
    cosign.attach_tampered("ci", &at(&d140));
    app.set_tag("1.4.0");
    app.commit(env, "bump to 1.4.0, its payload changed after signing");
    let message = blocked_message(&app, "tampered payload");
    assert!(message.contains(&format!("image {}:1.4.0 ({d140})", app.image)), "{message}");
    assert!(message.contains("(or its payload was altered)"), "{message}");
    assert_eq!(app.writes(env).await, applied, "no blocked revision wrote anything");
    assert_eq!(app.deployment_image(env).await, pinned("1.0.0", &d100), "the verified revision keeps running");

    // 6. 1.4.0 signed properly after the commit, with the trusted Ed25519 key: the good
    //    signature beside the tampered one is found on the next reconcile.
    cosign.sign("ed", &at(&d140));
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert_eq!(app.deployment_image(env).await, pinned("1.4.0", &d140));
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["verified"][pinned("1.4.0", &d140)][0], "ed-2026", "{record}");
}

/// An SSH key pair made by `ssh-keygen` (no passphrase), as git signs with it; the private key's
/// path and the public key's line.
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("{name}@example.test"), "-f"])
        .arg(&key)
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

/// `SHA256:...` of a public key, as `ssh-keygen -l` prints it.
fn ssh_fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(key.with_extension("pub")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_owned()
}

/// Commits everything, signed by real git with `gpg.format=ssh` and `key` (unsigned: `None`),
/// and pushes.
fn commit_signed(app: &App, env: &TestEnv, key: Option<&Path>, message: &str, amend: bool) {
    crate::util::git(&app.work, &["add", "-A"]);
    let signing;
    let mut args = vec!["-c", "gpg.format=ssh"];
    if let Some(k) = key {
        signing = format!("user.signingKey={}", k.display());
        args.extend(["-c", &signing, "commit", "-S"]);
    } else {
        args.extend(["-c", "commit.gpgSign=false", "commit"]);
    }
    if amend {
        args.extend(["--amend", "--no-edit"]);
    }
    args.extend(["-qm", message]);
    crate::util::git(&app.work, &args);
    xtask::seed::git_push(&env.info, &env.info.git_ci, &app.work, &app.repo.name, "main").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_tip_commit_signed_by_an_allowed_ssh_key_is_applied() {
    let env = TestEnv::get();
    let app = App::new(env, "sshsig").await;
    let keys = tempfile::tempdir().unwrap();
    let (ci, ci_public) = ssh_key(keys.path(), "ci");
    let (stranger, _) = ssh_key(keys.path(), "stranger");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("ci@example.test namespaces=\"git\" {ci_public}\n")).unwrap();
    let config = std::fs::read_to_string(&app.config).unwrap();
    let verify = format!("  verify:\n    mode: head\n    sshAllowedSigners: {}\nregistries:\n", allowed.display());
    std::fs::write(&app.config, config.replacen("registries:\n", &verify, 1)).unwrap();
    let error = |doc: &serde_json::Value| doc["error"].as_str().unwrap_or_default().to_owned();

    // A file that is not an allowed-signers file is refused by `agent validate`, naming the field.
    let good = std::fs::read_to_string(&allowed).unwrap();
    std::fs::write(&allowed, "ci@example.test ssh-ed25519 not-base64!\n").unwrap();
    let out = agent(&["validate", "-c", app.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("git.verify.sshAllowedSigners: line "), "the config's field and line: {said}");
    assert!(said.contains(&format!("{}: line 1: not an SSH public key", allowed.display())), "{said}");
    std::fs::write(&allowed, good).unwrap();
    let out = agent(&["validate", "-c", app.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // 1. The tip App pushed is unsigned: nothing of it is applied.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(2), "{human}");
    let short = &app.head()[..12];
    assert_eq!(error(&doc), format!("commit {short} unsigned: nothing of it is applied, what runs is kept"), "{human}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "unsigned: nothing applied");

    // 2. Signed by a key the allowed signers do not list.
    app.write("README.md", "signed by a stranger\n");
    commit_signed(&app, env, Some(&stranger), "a stranger's commit", false);
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(2), "{human}");
    let short = &app.head()[..12];
    let want = format!("commit {short} signed by an unknown key {}", ssh_fingerprint(&stranger));
    assert!(error(&doc).starts_with(&want), "{want:?}: {human}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "unknown key: nothing applied");

    // 3. Signed by CI's key (the signature added to the commit afterwards, and force-pushed):
    //    applied, and the report says who signed.
    commit_signed(&app, env, Some(&ci), "signed by CI", true);
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let short = &app.head()[..12];
    let signed = format!("commit {short} signed by ci@example.test (ssh key {})", ssh_fingerprint(&ci));
    assert_eq!(doc["commitSignature"], signed.as_str(), "{human}");
    let running = app.deployment_image(env).await;
    let applied = app.writes(env).await;

    // 4. An unsigned commit on top bumps the tag: refused, the signed revision keeps running.
    app.set_tag("1.1.0");
    commit_signed(&app, env, None, "bump to 1.1.0, unsigned", false);
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(2), "{human}");
    assert!(error(&doc).starts_with(&format!("commit {} unsigned", &app.head()[..12])), "{human}");
    assert_eq!(app.deployment_image(env).await, running, "what runs is kept");
    assert_eq!(app.writes(env).await, applied, "nothing of the unsigned commit was applied");

    // 5. CI signs 1.1.0; someone rewrites that commit object to name 1.2.0-broken, keeping CI's
    //    signature header (a new object id, the same `gpgsig`): its signature no longer verifies.
    commit_signed(&app, env, Some(&ci), "bump to 1.1.0, signed", true);
    let object = crate::util::git(&app.work, &["cat-file", "commit", "HEAD"]);
    let tree_of = |tag: &str| {
        app.set_tag(tag);
        crate::util::git(&app.work, &["add", "-A"]);
        crate::util::git(&app.work, &["write-tree"]).trim().to_owned()
    };
    let (signed_tree, forged_tree) = (tree_of("1.1.0"), tree_of("1.2.0-broken"));
    assert!(object.starts_with(&format!("tree {signed_tree}\n")) && object.contains("gpgsig "), "{object}");
    let forged = object.replacen(&signed_tree, &forged_tree, 1);
    let path = keys.path().join("forged-commit");
    std::fs::write(&path, &forged).unwrap();
    let id = crate::util::git(&app.work, &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()]);
    crate::util::git(&app.work, &["update-ref", "refs/heads/main", id.trim()]);
    crate::util::git(&app.work, &["reset", "-q", "--hard"]);
    xtask::seed::git_push(&env.info, &env.info.git_ci, &app.work, &app.repo.name, "main").unwrap();
    assert_eq!(app.head(), id.trim());
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(2), "{human}");
    let want = format!(
        "commit {}: its signature by {} does not verify (changed after signing)",
        &id.trim()[..12],
        ssh_fingerprint(&ci)
    );
    assert!(error(&doc).starts_with(&want), "{want:?}: {human}");
    assert_eq!(app.deployment_image(env).await, running, "what runs is kept");
    assert_eq!(app.writes(env).await, applied, "nothing of the forged commit was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_applies_once_commit_and_image_are_signed_and_its_status_says_by_whom() {
    use crate::daemon::{Daemon, serve, tail};
    let env = TestEnv::get();
    let cosign = Cosign::new(env);
    let trusted = cosign.key_pair("ci");
    let app = app_trusting(env, "sig-daemon", &trusted).await;
    let keys = tempfile::tempdir().unwrap();
    let (ci, ci_public) = ssh_key(keys.path(), "ci");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("ci@example.test {ci_public}\n")).unwrap();
    app.edit_config(
        "registries:\n",
        &format!("  verify:\n    mode: head\n    sshAllowedSigners: {}\nregistries:\n", allowed.display()),
    );
    let port = serve(&app, "", "5s", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    let git_signature = || async {
        let s = d.status().await;
        let git = s["sources"].as_array().and_then(|a| a.iter().find(|s| s["kind"] == "git").cloned());
        git.and_then(|g| g["signature"].as_str().map(str::to_owned)).unwrap_or_default()
    };

    // The tip App pushed is unsigned: the git source says so, nothing is applied.
    let unsigned = format!("commit {} unsigned", &app.head()[..12]);
    wait_for("the unsigned tip reported", Duration::from_secs(60), || async {
        let got = git_signature().await;
        if got == unsigned { Ok(()) } else { Err(format!("{got:?}\nlog: {}", tail(&d.logs()))) }
    })
    .await;

    // CI signs the commit (amended, force-pushed): the image is still unsigned, so the bundle
    // is blocked at preflight, naming the image.
    commit_signed(&app, env, Some(&ci), "signed by CI", true);
    let signed = format!("commit {} signed by ci@example.test (ssh key {})", &app.head()[..12], ssh_fingerprint(&ci));
    wait_for("web blocked on its unsigned image", Duration::from_secs(60), || async {
        let s = d.status().await;
        let web = s["bundles"].as_array().unwrap().iter().find(|b| b["bundle"] == "web").cloned();
        let blocked = web.as_ref().is_some_and(|b| {
            b["state"] == "blocked"
                && b["desired"]["message"].as_str().unwrap_or_default().contains("unsigned: no cosign")
        });
        if blocked && git_signature().await == signed {
            Ok(())
        } else {
            Err(format!("{web:?}\nlog: {}", tail(&d.logs())))
        }
    })
    .await;
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "nothing applied before the image is signed");

    // CI signs the image a while after the commit: the next poll finds it and rolls out.
    let digest = env.push_image(&app.image_repo, "1.0.0");
    cosign.sign("ci", &format!("{}@{digest}", app.image));
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    let (code, explain) = d.get("/status?explain=web&output=human").await;
    assert_eq!(code, 200, "{explain}");
    // A line too long for the screen goes on two at " (ssh key": joined back, it is the whole line.
    assert!(explain.replace("\n    (ssh key", " (ssh key").contains(&format!("  {signed}\n")), "{explain}");
    assert!(
        explain.contains(&format!("image {}:1.0.0@{digest}  verified: cosign key ci-2026", app.image)),
        "{explain}"
    );

    // Verified digests are cached: a signed commit that changes the bundle but not its image is
    // rendered and planned again, and reads no signature again.
    let signature_reads = || async {
        let (_, body) = d.get("/metrics").await;
        let scrape = crate::daemon::metrics(&body);
        let kinds = ["signature_manifest", "signature_referrers", "signature_blob"];
        let of = |s: &&prometheus_parse::Sample| {
            s.metric == "gitops_agent_source_requests_total" && s.labels.get("kind").is_some_and(|k| kinds.contains(&k))
        };
        let value = |s: &prometheus_parse::Sample| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        };
        scrape.samples.iter().filter(of).map(value).sum::<f64>()
    };
    let reads = signature_reads().await;
    assert!(reads >= 3.0, "the signatures were read (manifest, referrers, blob): {reads}");
    let deployment = std::fs::read_to_string(app.work.join("apps/web/deployment.yaml")).unwrap();
    let annotated = deployment.replace("  name: web\n", "  name: web\n  annotations: {team: kiosk}\n");
    assert_ne!(annotated, deployment);
    app.write("apps/web/deployment.yaml", &annotated);
    commit_signed(&app, env, Some(&ci), "an annotation, same image", false);
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    assert_eq!(signature_reads().await, reads, "a verified digest is not read again");

    // A webhook only makes the agent read its sources again: a signed Gitea push for an
    // unsigned tip (its image signed, so only the commit is wrong) applies nothing.
    let d110 = env.push_image(&app.image_repo, "1.1.0");
    cosign.sign("ci", &format!("{}@{d110}", app.image));
    app.set_tag("1.1.0");
    app.commit(env, "1.1.0, commit unsigned");
    let writes = app.writes(env).await;
    let (code, answer) = crate::daemon::post_gitea_push(&d, &app).await;
    assert_eq!(code, 202, "{answer}");
    let unsigned = format!("commit {} unsigned", &app.head()[..12]);
    wait_for("the unsigned tip reported after the webhook", Duration::from_secs(60), || async {
        let got = git_signature().await;
        if got == unsigned { Ok(()) } else { Err(format!("{got:?}\nlog: {}", tail(&d.logs()))) }
    })
    .await;
    assert_eq!(app.deployment_image(env).await, format!("{}:1.0.0@{digest}", app.image), "1.0.0 keeps running");
    assert_eq!(app.writes(env).await, writes, "nothing of the unsigned tip applied");
}

/// A rollback re-applies a last-known-good that was verified when it was applied: it needs no
/// new verification, so it works with the registry unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_verified_last_known_good_needs_no_registry() {
    use xtask::fault_proxy::Fault;
    let env = TestEnv::get();
    let cosign = Cosign::new(env);
    let trusted = cosign.key_pair("ci");
    let app = app_trusting(env, "sig-rollback", &trusted).await;
    // The agent reaches the registry through a proxy of the test's own.
    let (proxy, image) = app.through_registry_proxy(env).await;
    let release = |tag: &str| {
        let digest = env.push_image(&app.image_repo, tag);
        cosign.sign("ci", &format!("{}@{digest}", app.image));
        app.write("apps/web/deployment.yaml", &crate::rollout::DEPLOYMENT.replace("IMAGE", &format!("{image}:{tag}")));
        app.commit(env, &format!("{tag}, signed"));
        digest
    };
    let d100 = release("1.0.0");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let d110 = release("1.1.0");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert_eq!(app.deployment_image(env).await, format!("{image}:1.1.0@{d110}"));

    proxy.set(Fault::Cut);
    proxy.reset_seen();
    let out = agent(&["rollback", "web", "-c", app.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(app.deployment_image(env).await, format!("{image}:1.0.0@{d100}"), "back on the verified 1.0.0");
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["verified"][format!("{image}:1.0.0@{d100}")][0], "ci-2026", "{record}");
    assert_eq!(proxy.count(|s| s.status != 0), 0, "no registry request was answered during the rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_s_own_cosign_policy_with_a_key_file_in_the_bundle_blocks_until_the_image_is_signed() {
    let env = TestEnv::get();
    let cosign = Cosign::new(env);
    let trusted = cosign.key_pair("team");
    let app = App::new(env, "sig-bundle").await;
    let fleet = |file: &str| {
        format!(
            "defaultNamespace: {}\ngitopsAgent:\n  verify:\n    cosign:\n      publicKeys:\n      - name: kiosk-team\n        \
             file: {file}\n",
            app.ns.name
        )
    };

    // A key file outside the bundle is refused by name, nothing applied.
    app.write("apps/web/fleet.yaml", &fleet("../team.pub"));
    app.commit(env, "a key from outside the bundle");
    let message = blocked_message(&app, "key outside the bundle");
    assert!(message.contains("gitopsAgent.verify: cosign key kiosk-team (../team.pub)"), "{message}");

    // The key in the bundle: the unsigned image is blocked, then signed it rolls out.
    app.write("apps/web/keys/team.pub", &std::fs::read_to_string(&trusted).unwrap());
    app.write("apps/web/fleet.yaml", &fleet("keys/team.pub"));
    app.commit(env, "the team's key in the bundle");
    let message = blocked_message(&app, "unsigned, bundle policy");
    assert!(message.contains(&format!("image {}:1.0.0", app.image)) && message.contains("unsigned"), "{message}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "nothing applied");
    let digest = env.push_image(&app.image_repo, "1.0.0");
    cosign.sign("team", &format!("{}@{digest}", app.image));
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let record = app.secret_record(env).await;
    let pinned = format!("{}:1.0.0@{digest}", app.image);
    assert_eq!(record["lkg"]["revision"]["verified"][pinned.as_str()][0], "kiosk-team", "{record}");

    // A commit cannot turn the pin off: with `pinDigests: false` the tag alone would let the
    // kubelet pull whatever it points at later, signed or not. The verified digest still runs,
    // and a new unsigned push to the same tag is blocked, not run.
    app.write("apps/web/fleet.yaml", &format!("{}  pinDigests: false\n", fleet("keys/team.pub")));
    app.set_tag("1.1.0");
    app.commit(env, "1.1.0, pinning off");
    let unsigned = env.repush_image(&app.image_repo, "1.1.0", "pinning off");
    assert_ne!(unsigned, digest, "1.1.0 is another image than the signed 1.0.0");
    let message = blocked_message(&app, "unsigned 1.1.0, pinning off");
    assert!(message.contains(&format!("image {}:1.1.0", app.image)) && message.contains("unsigned"), "{message}");
    assert_eq!(app.deployment_image(env).await, pinned, "the verified 1.0.0 keeps running");
    cosign.sign("team", &format!("{}@{unsigned}", app.image));
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    assert_eq!(
        app.deployment_image(env).await,
        format!("{}:1.1.0@{unsigned}", app.image),
        "signatures checked: pinned to the verified digest though pinDigests is false"
    );
}

/// The CI robot's Bearer header for `repo` (pull and push).
async fn ci_bearer(env: &TestEnv, repo: &str) -> String {
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", env.info.registry_ci.username, env.info.registry_ci.password));
    let token_url =
        format!("{}?service={}&scope=repository:{repo}:pull,push", env.info.token_realm, env.info.registry_service);
    let basic = format!("Basic {basic}");
    let reply = xtask::http::get(&token_url, &env.info.ca_cert, &[("authorization", &basic)]).await.unwrap();
    let token: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    format!("Bearer {}", token["token"].as_str().unwrap())
}

/// The answer of a GET of `reference`'s manifest in `repo`, as the CI robot (any of `accept`).
async fn get_manifest(env: &TestEnv, repo: &str, reference: &str, accept: &str) -> xtask::http::Reply {
    let bearer = ci_bearer(env, repo).await;
    let url = format!("https://{}/v2/{repo}/manifests/{reference}", env.info.registry);
    xtask::http::get(&url, &env.info.ca_cert, &[("authorization", &bearer), ("accept", accept)]).await.unwrap()
}

async fn manifest_status(env: &TestEnv, repo: &str, reference: &str, accept: &str) -> u16 {
    get_manifest(env, repo, reference, accept).await.status
}

/// Signatures stored as OCI 1.1 referrers (`cosign sign --registry-referrers-mode=oci-1-1`,
/// where a registry's CI is set up so): the testenv's registry has no referrers API, so cosign
/// keeps them in the index at the fallback tag `sha256-<hex>`, which the agent reads after the
/// referrers API answers 404. A stranger's referrer is an unknown key, the trusted one verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_stored_as_an_oci_1_1_referrer_verifies_and_a_strangers_does_not() {
    let env = TestEnv::get();
    let cosign = Cosign::new(env);
    let trusted = cosign.key_pair("ci");
    cosign.key_pair("stranger");
    let app = app_trusting(env, "sig-referrer", &trusted).await;
    let digest = env.push_image(&app.image_repo, "1.0.0");
    let at = format!("{}@{digest}", app.image);
    let hex = digest.trim_start_matches("sha256:");

    cosign.sign_as_referrer("stranger", &at);
    let index = "application/vnd.oci.image.index.v1+json";
    assert_eq!(
        manifest_status(env, &app.image_repo, &format!("sha256-{hex}"), index).await,
        200,
        "the referrers index"
    );
    let classic = "application/vnd.oci.image.manifest.v1+json";
    assert_eq!(manifest_status(env, &app.image_repo, &format!("sha256-{hex}.sig"), classic).await, 404, "no .sig tag");
    let message = blocked_message(&app, "a stranger's referrer");
    assert!(message.contains(&format!("image {}:1.0.0 ({digest})", app.image)), "{message}");
    assert!(message.contains("signed by an unknown key"), "{message}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "nothing applied");

    cosign.sign_as_referrer("ci", &at);
    assert_eq!(manifest_status(env, &app.image_repo, &format!("sha256-{hex}.sig"), classic).await, 404, "still none");
    // The index also lists, as a signature, a manifest that is none (the image's own: no
    // subject): skipped, it does not hide the good signature beside it.
    let tag = format!("sha256-{hex}");
    let mut listed: serde_json::Value =
        serde_json::from_str(&get_manifest(env, &app.image_repo, &tag, index).await.body).unwrap();
    let own = get_manifest(env, &app.image_repo, &digest, classic).await;
    assert_eq!(own.status, 200, "{}", own.body);
    listed["manifests"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"mediaType": classic, "size": own.body.len(), "digest": digest,
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}),
    );
    let url = format!("https://{}/v2/{}/manifests/{tag}", env.info.registry, app.image_repo);
    let bearer = ci_bearer(env, &app.image_repo).await;
    let put = xtask::http::request_with_body(
        "PUT",
        &url,
        &env.info.ca_cert,
        &[("authorization", &bearer), ("content-type", index)],
        listed.to_string().into(),
    )
    .await
    .unwrap();
    assert_eq!(put.status, 201, "{}", put.body);
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let pinned = format!("{}:1.0.0@{digest}", app.image);
    assert_eq!(app.deployment_image(env).await, pinned);
    let record = app.secret_record(env).await;
    assert_eq!(record["lkg"]["revision"]["verified"][pinned.as_str()][0], "ci-2026", "{record}");
}

/// A throw-away gpg home; its agent is stopped when the test ends.
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Gpg {
        Gpg { home: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> String {
        let out =
            Command::new("gpg").args(["--batch", "--quiet"]).args(args).env("GNUPGHOME", self.home.path()).output();
        let out = out.expect("running gpg");
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new Ed25519 signing key without a passphrase; its fingerprint.
    fn key(&self, user: &str) -> String {
        self.run(&["--passphrase", "", "--quick-gen-key", user, "ed25519", "sign", "never"]);
        let listing = self.run(&["--with-colons", "--list-keys", user]);
        listing.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_owned()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf").args(["--kill", "gpg-agent"]).env("GNUPGHOME", self.home.path()).status();
    }
}

/// Commits everything signed by real git with gpg and `key`, and pushes.
fn commit_gpg_signed(app: &App, env: &TestEnv, gpg: &Gpg, key: &str, message: &str) {
    crate::util::git(&app.work, &["add", "-A"]);
    let signing = format!("user.signingKey={key}");
    crate::util::git_with_env(
        &app.work,
        &["-c", "gpg.format=openpgp", "-c", "gpg.program=gpg", "-c", &signing, "commit", "-S", "-qm", message],
        &[("GNUPGHOME", gpg.home.path())],
    );
    xtask::seed::git_push(&env.info, &env.info.git_ci, &app.work, &app.repo.name, "main").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tip_commit_signed_with_gpg_passes_only_with_an_allowed_openpgp_key() {
    let env = TestEnv::get();
    let app = App::new(env, "pgpsig").await;
    let gpg = Gpg::new();
    let ci = gpg.key("CI <ci@example.test>");
    let stranger = gpg.key("Stranger <stranger@example.test>");
    let keys = app.config.with_file_name("openpgp-keys.asc");
    std::fs::write(&keys, gpg.run(&["--armor", "--export", &ci])).unwrap();
    app.edit_config(
        "registries:\n",
        &format!("  verify:\n    mode: head\n    openpgpKeys: {}\nregistries:\n", keys.display()),
    );
    let error = |doc: &serde_json::Value| doc["error"].as_str().unwrap_or_default().to_owned();

    // Signed with gpg by a key the file does not hold: refused, naming the issuer.
    app.write("README.md", "signed by a stranger\n");
    commit_gpg_signed(&app, env, &gpg, &stranger, "a stranger's commit");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(2), "{human}");
    let want = format!("commit {} signed by an unknown key openpgp key {stranger}", &app.head()[..12]);
    assert!(error(&doc).starts_with(&want), "{want:?}: {human}");
    assert_eq!(app.writes(env).await, Vec::<String>::new(), "nothing applied");

    // Signed by CI's key: applied, and the report names the key.
    app.write("README.md", "signed by CI\n");
    commit_gpg_signed(&app, env, &gpg, &ci, "signed by CI");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!((code, bundle(&doc, "web")["result"].as_str()), (Some(0), Some("rolledOut")), "{human}");
    let signed = format!("commit {} signed by CI <ci@example.test> (openpgp key {ci})", &app.head()[..12]);
    assert_eq!(doc["commitSignature"], signed.as_str(), "{human}");
}
