//! The KWOK configuration the testenv runs with: the stages in `fixtures/kwok/stages.yaml`.

use std::time::Duration;

/// The stages, with the good-pod readiness delay filled in.
pub fn config(pod_ready_delay: Duration) -> String {
    STAGES.replace("@POD_READY_DELAY_MS@", &pod_ready_delay.as_millis().to_string())
}

const STAGES: &str = include_str!("../../fixtures/kwok/stages.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_delay_is_substituted_and_no_placeholder_is_left() {
        let c = config(Duration::from_millis(1234));
        assert!(c.contains("durationMilliseconds: 1234"));
        assert!(!c.contains("@POD_READY_DELAY_MS@"), "placeholder left in KWOK config");
    }
}
