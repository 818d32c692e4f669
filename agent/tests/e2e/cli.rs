//! The `agent` command line: what an operator sees from `validate`, `version` and `--help`.

use std::path::Path;
use std::process::{Command, Output};

const CANARY: &str = "canary-5ecr3t-do-not-print";

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent")).args(args).envs(env.iter().copied()).output().expect("running agent")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A valid config in `dir` whose secrets are files holding the canary.
fn write_good_config(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("git-password"), CANARY).unwrap();
    std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        "identity:\n  nodeName: store-node-1\n  labels: {store: store1}\ngit:\n  url: https://git.example/stores/gitops.git\n  \
         caFile: ca.pem\n  auth:\n    username: agent\n    passwordFile: git-password\nregistries:\n- host: harbor.example\n  \
         auth:\n    username: robot$store1+agent\n    passwordEnv: HARBOR_SECRET\n",
    )
    .unwrap();
    cfg
}

#[test]
fn validate_accepts_a_good_config_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_good_config(dir.path());
    let out = agent(&["validate", "--config", cfg.to_str().unwrap()], &[("HARBOR_SECRET", CANARY)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).ends_with("agent.yaml: ok\n"), "{}", text(&out));
    assert!(!text(&out).contains(CANARY));
}

#[test]
fn validate_lists_every_problem_with_field_and_line_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_good_config(dir.path());
    let yaml = std::fs::read_to_string(&cfg).unwrap().replace("https://git.example", "ftp://git.example");
    std::fs::write(&cfg, yaml.replace("passwordFile: git-password", "passwordFile: missing-file")).unwrap();
    // HARBOR_SECRET unset: a second problem, found beside the first.
    let out = agent(&["validate", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines: Vec<String> = text(&out).lines().map(|l| l.split_once(": ").unwrap().1.to_owned()).collect();
    assert_eq!(lines[0], r#"git.url: line 5: unsupported scheme "ftp" (expected one of: https, http, file)"#);
    assert!(lines[1].starts_with("git.auth.passwordFile: line 9: missing-file: cannot read"), "{lines:#?}");
    assert_eq!(lines[2], "registries[0].auth.passwordEnv: line 14: $HARBOR_SECRET is not set");
    assert_eq!(lines[3], "3 problems");
}

#[test]
fn validate_reports_a_missing_required_field_and_every_other_problem_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_good_config(dir.path());
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    let yaml = yaml.replace("identity:\n  nodeName: store-node-1\n  labels: {store: store1}\n", "");
    std::fs::write(&cfg, yaml.replace("https://git.example", "ftp://git.example")).unwrap();
    let out = agent(&["validate", "--config", cfg.to_str().unwrap()], &[("HARBOR_SECRET", CANARY)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines: Vec<String> = text(&out).lines().map(|l| l.split_once(": ").unwrap().1.to_owned()).collect();
    assert_eq!(
        lines,
        [
            "identity: missing field `identity`: it is required",
            r#"git.url: line 2: unsupported scheme "ftp" (expected one of: https, http, file)"#,
            "2 problems",
        ],
        "{}",
        text(&out)
    );
}

#[test]
fn validate_never_prints_a_secret_even_when_it_sits_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_good_config(dir.path());
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, yaml.replace("https://git.example", &format!("https://agent:{CANARY}@git.example"))).unwrap();
    for output in ["human", "json"] {
        let out = agent(&["validate", "-c", cfg.to_str().unwrap(), "-o", output], &[("HARBOR_SECRET", CANARY)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("must not contain credentials"), "{}", text(&out));
        assert!(!text(&out).contains(CANARY), "secret leaked: {}", text(&out));
    }
}

#[test]
fn validate_checks_what_becomes_of_bundles_that_leave_git() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_good_config(dir.path());
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{good}prune:\n  removedBundles: keep\n  maxRemovedPercent: 100\n")).unwrap();
    let out = agent(&["validate", "--config", cfg.to_str().unwrap()], &[("HARBOR_SECRET", CANARY)]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&cfg, format!("{good}prune:\n  maxRemovedPercent: 101\n")).unwrap();
    let out = agent(&["validate", "--config", cfg.to_str().unwrap()], &[("HARBOR_SECRET", CANARY)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("prune.maxRemovedPercent: line 16: 101 is not a percentage (0 to 100)"),
        "{}",
        text(&out)
    );
    std::fs::write(&cfg, format!("{good}prune:\n  removedBundles: purge\n")).unwrap();
    let out = agent(&["validate", "--config", cfg.to_str().unwrap()], &[("HARBOR_SECRET", CANARY)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("line 16") && text(&out).contains("purge"), "{}", text(&out));
}

#[test]
fn validate_json_carries_the_same_problems() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(&cfg, "identity:\n  nodeName: n1\n  lables: {}\ngit:\n  url: https://x.example\n").unwrap();
    let out = agent(&["validate", "-c", cfg.to_str().unwrap(), "--output", "json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["path"], "identity.lables");
    assert_eq!(v["problems"][0]["line"], 3);
}

#[test]
fn validate_of_an_unreadable_file_is_an_error_exit_two() {
    let out = agent(&["validate", "--config", "/nonexistent/agent.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("/nonexistent/agent.yaml: cannot read"), "{}", text(&out));
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = agent(&["version", "--output", "json"], &[]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let commit = v["commit"].as_str().unwrap();
    assert!(!head.is_empty() && commit.starts_with(&head), "built from {commit}, HEAD is {head}");
    let human = text(&agent(&["version"], &[]));
    assert_eq!(human, format!("agent {} (commit {commit})\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_only_commands_that_work() {
    let out = agent(&["--help"], &[]);
    let help = text(&out);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        commands,
        vec![
            "validate",
            "fetch",
            "render",
            "diff",
            "reconcile",
            "rollback",
            "retry",
            "prune",
            "status",
            "run",
            "pause",
            "resume",
            "fleet",
            "policy",
            "state-dir",
            "prepull-helper",
            "version",
            "help"
        ]
    );
}

#[test]
fn policy_test_shows_the_choice_and_why_each_other_tag_lost() {
    let out = agent(
        &["policy", "test", "--policy", "semver: '>=1.0.0 <2.0.0'", "--tags", "1.0.0,1.2.0-broken,1.4.9,2.0.0,latest"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "chosen: 1.4.9\n  1.0.0         eligible, ranks lower\n  1.2.0-broken  dropped: pre-release, and the range names no pre-release\n  \
         1.4.9         chosen\n  2.0.0         dropped: outside the semver range\n  latest        dropped: not a semantic version\n"
    );
}

#[test]
fn policy_test_without_a_match_says_so_and_exits_one() {
    let out = agent(&["policy", "test", "-p", "semver: ~3.1", "--tags", "1.0.0,2.0.0", "-o", "json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chosen"], serde_json::Value::Null);
    assert_eq!(v["candidates"][1]["reason"], "OutOfRange");
}

#[test]
fn policy_test_with_a_bad_policy_names_the_value_and_exits_two() {
    let out = agent(&["policy", "test", "-p", "semver: '>=1.x.3'", "--tags", "1.0.0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: semver range \">=1.x.3\": \"1.x.3\": a number after a wildcard\n"
    );
    assert!(out.stdout.is_empty());
}
