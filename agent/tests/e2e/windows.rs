//! Rollout windows against the testenv: outside them a change waits with nothing applied,
//! `--ignore-windows` rolls out in an emergency, and a rollback runs inside a deny window.

use std::time::Duration;

use xtask::support::TestEnv;

use crate::rollout::{App, bundle};

/// A deny window that never opens: every day from 00:00 UTC for 24 h.
const ALWAYS_DENY: &str = "rollout:\n  windows:\n  - kind: deny\n    schedule: \"0 0 * * *\"\n    duration: 24h\n ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_its_windows_a_change_waits_an_emergency_overrides_and_a_rollback_still_runs() {
    let env = TestEnv::get();
    let app = App::new(env, "windows").await;
    assert_eq!(app.reconcile(&[]).0, Some(0), "the first version, with no window");
    let first = app.deployment_image(env).await;
    let before = app.writes(env).await;

    app.edit_config("rollout:\n ", ALWAYS_DENY);
    app.set_tag("1.1.0");
    app.commit(env, "web 1.1.0");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let web = bundle(&doc, "web");
    assert_eq!(web["result"], "blocked", "{human}");
    assert!(web["message"].as_str().unwrap().starts_with("deferred: inside deny window `0 0 * * *`"), "{human}");
    assert_eq!(app.writes(env).await, before, "nothing applied outside the windows");
    assert_eq!(app.deployment_image(env).await, first);

    let (code, doc, human) = app.reconcile(&["--ignore-windows"]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "rolledOut", "{human}");
    assert!(app.deployment_image(env).await.contains(":1.1.0@sha256:"));

    // A broken rollout killed mid-way (no window then), resumed inside the deny window: the
    // rollback is never deferred.
    app.edit_config(ALWAYS_DENY, "rollout:\n ");
    app.set_tag("1.2.0-broken");
    app.commit(env, "web 1.2.0-broken");
    app.kill_at("mid-rollout");
    app.edit_config("rollout:\n ", ALWAYS_DENY);
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    let resumed = doc["resumed"].as_array().unwrap();
    assert_eq!(resumed.len(), 1, "{human}");
    assert_eq!(resumed[0]["result"], "rolledBack", "{human}");
    crate::util::wait_for("the 1.1.0 pod template back", Duration::from_secs(30), || async {
        let image = app.deployment_image(env).await;
        if image.contains(":1.1.0@sha256:") { Ok(()) } else { Err(image) }
    })
    .await;
}
