//! `/metrics`: the daemon's Prometheus series, all prefixed `gitops_agent_`. Label values are
//! bundle names, sender names and static outcome words: the set of series stays bounded by the
//! number of bundles, never by what a request carried.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleState {
    pub bundle: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Drained {
    pub bundle: String,
    /// `clean`, `cut` or `unconfirmed` (a pod ended by its grace period with no session reading).
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabel {
    pub bundle: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceRequest {
    /// `git` or the registry's host.
    pub source: String,
    pub kind: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookRequest {
    pub sender: String,
    /// `triggered`, `ignored`, `unauthorized`, `rate_limited`, `bad_request`, `too_large`.
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconcile_seconds: Histogram,
    sync_state: Family<BundleState, Gauge>,
    states: Mutex<BTreeMap<String, String>>,
    pub rollouts: Family<Outcome, Counter>,
    pub source_requests: Family<SourceRequest, Counter>,
    pub webhooks: Family<WebhookRequest, Counter>,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub leader: Gauge,
    drains: Family<Drained, Counter>,
    sessions_cut: Family<BundleLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gitops_agent");
        // A cycle takes from a fraction of a second (nothing changed) to the progress deadline.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile cycle took (sources, render, plan, apply, rollout watch)",
            reconcile_seconds.clone(),
        );
        let sync_state = Family::<BundleState, Gauge>::default();
        registry.register(
            "bundle_sync_state",
            "1 for the state each bundle is in (synced, rolling-out, rolled-back, blocked, paused, ...)",
            sync_state.clone(),
        );
        let rollouts = Family::<Outcome, Counter>::default();
        registry.register(
            "rollouts",
            "Rollouts and rollbacks by how they ended (the outcome's word: rolled-out, verified, rolled-back, rollout-failed, rollback-failed)",
            rollouts.clone(),
        );
        let source_requests = Family::<SourceRequest, Counter>::default();
        registry.register(
            "source_requests",
            "Requests to git and the registries by kind and outcome",
            source_requests.clone(),
        );
        let webhooks = Family::<WebhookRequest, Counter>::default();
        registry.register("webhook_requests", "Webhook requests by sender and outcome", webhooks.clone());
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "When a cycle last ended with every bundle in sync or rolled out (Unix time)",
            last_sync.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this process holds the Lease and applies", leader.clone());
        let drains = Family::<Drained, Counter>::default();
        registry.register(
            "drains",
            "Drains of a workload's old pods during a rollout, by bundle and result (clean, cut, unconfirmed)",
            drains.clone(),
        );
        let sessions_cut = Family::<BundleLabel, Counter>::default();
        registry.register(
            "sessions_cut",
            "Sessions still open on an old pod when its drain window ended, by bundle",
            sessions_cut.clone(),
        );
        Metrics {
            registry,
            reconcile_seconds,
            sync_state,
            states: Mutex::new(BTreeMap::new()),
            rollouts,
            source_requests,
            webhooks,
            last_sync,
            leader,
            drains,
            sessions_cut,
        }
    }

    /// Counts how one workload's drain ended.
    pub fn drained(&self, bundle: &str, report: &shared::drain::Report) {
        self.drains.get_or_create(&Drained { bundle: bundle.to_owned(), result: report.result().to_owned() }).inc();
        if report.cut > 0 {
            self.sessions_cut.get_or_create(&BundleLabel { bundle: bundle.to_owned() }).inc_by(report.cut);
        }
    }

    /// Sets a bundle's one current state (the previous state's series is removed).
    pub fn set_state(&self, bundle: &str, state: &str) {
        let mut states = self.states.lock().expect("metrics states lock");
        if let Some(old) = states.insert(bundle.to_owned(), state.to_owned()).filter(|o| o != state) {
            self.sync_state.remove(&BundleState { bundle: bundle.to_owned(), state: old });
        }
        self.sync_state.get_or_create(&BundleState { bundle: bundle.to_owned(), state: state.to_owned() }).set(1);
    }

    pub fn count_webhook(&self, sender: &str, outcome: &str) {
        self.webhooks.get_or_create(&WebhookRequest { sender: sender.to_owned(), outcome: outcome.to_owned() }).inc();
    }

    pub fn count_requests(&self, source: &str, kind: &str, outcome: &str, n: u64) {
        if n > 0 {
            let labels =
                SourceRequest { source: source.to_owned(), kind: kind.to_owned(), outcome: outcome.to_owned() };
            self.source_requests.get_or_create(&labels).inc_by(n);
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_has_one_state_series_at_a_time() {
        let m = Metrics::new();
        m.set_state("web", "rolling-out");
        m.set_state("web", "synced");
        m.set_state("api", "blocked");
        m.rollouts.get_or_create(&Outcome { result: "rolled-out".into() }).inc();
        let text = m.encode();
        assert!(text.contains(r#"gitops_agent_bundle_sync_state{bundle="web",state="synced"} 1"#), "{text}");
        assert!(!text.contains(r#"state="rolling-out""#), "{text}");
        assert!(text.contains(r#"gitops_agent_bundle_sync_state{bundle="api",state="blocked"} 1"#), "{text}");
        assert!(text.contains(r#"gitops_agent_rollouts_total{result="rolled-out"} 1"#), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
