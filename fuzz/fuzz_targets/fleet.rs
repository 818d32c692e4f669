//! Fuzz target: `fleet.yaml` with its strict `gitopsAgent:` section (`shared::fleet::parse`:
//! tag policies, drains, probes, windows, durations), then target matching and values layering
//! for a node, as the agent reads a bundle.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((fleet, _warnings)) = shared::fleet::parse(text) else { return };
    let labels: BTreeMap<String, String> =
        [("env", "prod"), ("store", "1"), ("region", "eu")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    let _ = fleet.target_for(&labels);
    let _ = fleet.values_for(&labels, &|_| Ok(serde_json::json!({"from": "file"})));
});
