//! Sources of desired state: the git repository and the registries.

pub mod git;
pub mod registry;
pub mod secret;

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Requests a source made, by kind (`manifest_head`, `token`, `poll`, ...) and outcome (`ok`,
/// `throttled`, `unchanged`, ...): the labels the metrics endpoint exports. Labels are static
/// strings, so the set of series is bounded.
#[derive(Debug, Default)]
pub struct RequestCounts {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl RequestCounts {
    pub fn record(&self, kind: &'static str, outcome: &'static str) {
        *self.counts.lock().expect("request counts lock").entry((kind, outcome)).or_default() += 1;
    }

    /// One count (0 when never recorded).
    pub fn get(&self, kind: &str, outcome: &str) -> u64 {
        self.counts.lock().expect("request counts lock").get(&(kind, outcome)).copied().unwrap_or(0)
    }

    /// Every (kind, outcome, count), sorted.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.counts.lock().expect("request counts lock").iter().map(|(&(k, o), &n)| (k, o, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_kind_and_outcome() {
        let c = RequestCounts::default();
        c.record("manifest_head", "ok");
        c.record("manifest_head", "ok");
        c.record("manifest_head", "throttled");
        c.record("token", "ok");
        assert_eq!(c.get("manifest_head", "ok"), 2);
        assert_eq!(c.get("tag_list", "ok"), 0);
        assert_eq!(
            c.snapshot(),
            vec![("manifest_head", "ok", 2), ("manifest_head", "throttled", 1), ("token", "ok", 1)]
        );
    }
}
