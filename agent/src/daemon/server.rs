//! The daemon's HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status`, the webhook
//! receivers `/webhooks/<sender>`. Nothing here changes state: the command line's commands go
//! over the control socket (`control`), since a peer address is no identity.
//!
//! A webhook is authenticated over the raw body before anything is parsed, then rate-limited per
//! sender, and only ever triggers a re-read of the sources: tags and digests in a payload are
//! never used, so a forged or replayed payload can at most cause one more poll.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use shared::config::Sender;
use shared::status::{BundleStatus, Report};
use shared::trigger::{Cause, Target, TraceParent, Trigger};
use shared::webhook::Event;

use super::Daemon;
use crate::watch::unix_now;

pub async fn serve(d: Arc<Daemon>, listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
    let limit = d.config.server.max_body_bytes;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/webhooks/{sender}", post(webhook))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(d);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    if let Err(e) = served {
        warn!(error = %e, "the HTTP server stopped");
    }
}

/// Ready once every source was reached at least once and the API server answers.
async fn readyz(State(d): State<Arc<Daemon>>) -> Response {
    let missing = d.not_ready();
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", missing.join("; "))).into_response()
    }
}

/// The status document: the records (through the cluster, or the node's files), with what this
/// process knows beyond them (sources, the last reconcile of each bundle, leadership).
pub async fn report(d: &Daemon) -> Report {
    let store = d.store.read().expect("store lock").clone();
    let (records, warning) = match store.all().await {
        Ok(r) => (r, None),
        Err(e) => (store.local(), Some(format!("reading the records: {e:#}; shown from this node's copies"))),
    };
    let now = unix_now();
    let view = d.view.lock().expect("view lock");
    let mut bundles: Vec<BundleStatus> = records
        .iter()
        .map(|r| {
            let s = shared::status::bundle_status(r, now);
            let s = match view.cycles.get(&r.bundle) {
                Some(c) => shared::status::with_cycle(s, c.clone()),
                None => s,
            };
            match view.activity.get(&r.bundle) {
                Some(a) => shared::status::with_activity(s, a.clone(), now),
                None => s,
            }
        })
        .collect();
    for (name, c) in &view.cycles {
        if !bundles.iter().any(|b| &b.bundle == name) {
            bundles.push(shared::status::with_cycle(shared::status::unrecorded(name), c.clone()));
        }
    }
    bundles.sort_by(|a, b| a.bundle.cmp(&b.bundle));
    let mut agent = d.agent.clone();
    agent.leader = view.leader;
    let mut sources: Vec<_> = view.git.iter().cloned().collect();
    sources.extend(view.registries.values().cloned());
    let api = view.api.as_ref().err().map(|e| format!("API server: {e}"));
    let warning = match (warning, api) {
        (Some(w), Some(a)) => Some(format!("{a}; {w}")),
        (w, a) => w.or(a),
    };
    Report { agent: Some(agent), sources, bundles, warning }
}

async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    for b in report(&d).await.bundles {
        d.metrics.set_state(&b.bundle, b.state);
    }
    let mut resp = d.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

#[derive(Deserialize)]
struct StatusQuery {
    /// `json` (default) or `human`.
    output: Option<String>,
    explain: Option<String>,
}

async fn status(State(d): State<Arc<Daemon>>, Query(q): Query<StatusQuery>) -> Response {
    let mut r = report(&d).await;
    let now = unix_now();
    if let Some(name) = &q.explain {
        let name = name.trim_matches('/');
        r.bundles.retain(|b| b.bundle == name);
        if r.bundles.is_empty() {
            return (StatusCode::NOT_FOUND, format!("no bundle {name} known to this agent\n")).into_response();
        }
    }
    match (q.output.as_deref(), &q.explain) {
        (Some("human"), Some(_)) => {
            let mut text = shared::status::sources(&r.sources, now);
            text.push_str(&shared::status::explain(&r.bundles[0], now));
            text.into_response()
        }
        (Some("human"), None) => shared::status::screen(&r, now).into_response(),
        _ => axum::Json(r).into_response(),
    }
}

fn answer(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(json!({ "message": message }))).into_response()
}

async fn webhook(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let Some(sender) = Sender::from_name(&name) else {
        return answer(StatusCode::NOT_FOUND, &format!("no webhook sender {name:?}"));
    };
    let Some((_, secret)) = d.webhooks.iter().find(|(s, _)| *s == sender) else {
        return answer(StatusCode::NOT_FOUND, &format!("no {name} webhook is configured (server.webhooks)"));
    };
    let sender_name = sender.name();
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            d.metrics.count_webhook(sender_name, "too_large");
            warn!(sender = sender_name, "webhook refused: {e}");
            return answer(e.status(), &e.body_text());
        }
    };
    let secret = match secret.read() {
        Ok(s) => s.value,
        Err(e) => {
            warn!(sender = sender_name, error = %e, "webhook secret unavailable");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "the webhook secret cannot be read; see the agent's log");
        }
    };
    let lower: shared::webhook::Headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned())))
        .collect();
    if let Err(refusal) = shared::webhook::authenticate(sender, &lower, &body, secret.as_bytes()) {
        d.metrics.count_webhook(sender_name, "unauthorized");
        warn!(sender = sender_name, "webhook refused: {refusal}");
        return answer(StatusCode::UNAUTHORIZED, &refusal.to_string());
    }
    if let Err(retry) = d.limiter.lock().expect("limiter lock").check(sender_name, Instant::now()) {
        d.metrics.count_webhook(sender_name, "rate_limited");
        let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = answer(StatusCode::TOO_MANY_REQUESTS, &format!("rate limited; retry in {secs}s"));
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let event = match shared::webhook::parse(sender, &lower, &body) {
        Ok(e) => e,
        Err(why) => {
            d.metrics.count_webhook(sender_name, "bad_request");
            return answer(StatusCode::BAD_REQUEST, &why.to_string());
        }
    };
    let concerns = {
        let view = d.view.lock().expect("view lock");
        let known = (!view.cycles.is_empty()).then_some(view.known_images.as_slice());
        shared::webhook::concerns(&event, &d.config.git.url, known, &d.config.registries)
    };
    if let Event::Ignored(why) = &event {
        d.metrics.count_webhook(sender_name, "ignored");
        return answer(StatusCode::OK, &format!("ignored: {why}"));
    }
    if !concerns {
        d.metrics.count_webhook(sender_name, "ignored");
        info!(sender = sender_name, "webhook concerns nothing this agent deploys");
        return answer(StatusCode::OK, "concerns nothing this agent deploys");
    }
    let trace = lower.get("traceparent").and_then(|t| TraceParent::parse(t));
    info!(
        sender = sender_name,
        trace_id = trace.as_ref().map(|t| t.trace_id.as_str()),
        "webhook accepted: re-reading the sources"
    );
    let _ = d
        .triggers
        .send(Trigger { target: Target::All, cause: Cause::Webhook { sender: sender_name.to_owned(), trace } });
    d.metrics.count_webhook(sender_name, "triggered");
    answer(StatusCode::ACCEPTED, "reconcile triggered: the sources are re-read")
}
