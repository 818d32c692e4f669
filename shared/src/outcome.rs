//! What happened to one bundle in a reconcile (`Outcome`): its one word for the CLI, the daemon's
//! logs and status, metrics and Events, whether it needs a person, and whether it lets the
//! bundles that depend on it (`dependsOn`) go ahead.

use serde::Serialize;

use crate::state::OutcomeKind;

/// What happened to one bundle in this reconcile. The serde names (`inSync`, `rolledOut`, ...)
/// are those of `--output json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Live objects equal the last-known-good; nothing was done.
    InSync,
    /// Live objects already matched and were verified healthy: recorded as last-known-good.
    Verified,
    RolledOut,
    RolledBack,
    /// `--dry-run`: this would be applied.
    WouldApply,
    /// Not applied: render, preflight, blast radius, conflict, quarantine, dependency.
    Blocked,
    /// Not applied, or not all of it, because the environment failed (`shared::fault`: a
    /// namespace missing or terminating, 429, 5xx, ...): tried again by itself at `retry_at`,
    /// with backoff; nothing quarantined, nothing rolled back.
    Retrying,
    /// Failed with no last-known-good to return to.
    FailedNoRollback,
    /// The rollback did not become healthy.
    RollbackFailed,
    /// Cut short (API server unreachable); the record says where to resume.
    Interrupted,
    /// The bundle left Git: its objects were deleted, or kept by node config
    /// (`prune.removedBundles`); its record stays as history.
    Removed,
    /// The bundle left Git in a way that looks like an accident (its folder gone whole, too
    /// many bundles at once): nothing deleted until `agent prune --confirm BUNDLE`.
    RemovalHeld,
}

impl Outcome {
    /// The one word for this outcome, wherever it is shown or counted. The words are the
    /// daemon's (its logs' `result` field and `agent status`'s last cycle, which status reads
    /// back, e.g. `blocked`): a single token, lower case, safe as a label value. Each replaced
    /// the CLI's word named beside it.
    pub fn word(&self) -> &'static str {
        match self {
            // CLI: "in sync"
            Outcome::InSync => "in-sync",
            // CLI: "verified" (the same)
            Outcome::Verified => "verified",
            // CLI: "rolled out"
            Outcome::RolledOut => "rolled-out",
            // CLI: "ROLLED BACK"
            Outcome::RolledBack => "rolled-back",
            // CLI: "would apply"
            Outcome::WouldApply => "would-apply",
            // CLI: "blocked" (the same)
            Outcome::Blocked => "blocked",
            // New with the environment retry.
            Outcome::Retrying => "retrying",
            // CLI: "FAILED"; the daemon's "failed" (paired with rollback-failed, and no longer
            // mistaken for the bundle state `failed` of `agent status`)
            Outcome::FailedNoRollback => "rollout-failed",
            // CLI: "ROLLBACK FAILED"
            Outcome::RollbackFailed => "rollback-failed",
            // CLI: "interrupted" (the same)
            Outcome::Interrupted => "interrupted",
            // New with the removal of bundles that left Git.
            Outcome::Removed => "removed",
            Outcome::RemovalHeld => "removal-held",
        }
    }

    /// The same word as a Kubernetes Event reason (UpperCamelCase, as Kubernetes' own reasons
    /// are): `rolled-back` is `RolledBack`.
    pub fn reason(&self) -> String {
        self.word()
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
            })
            .collect()
    }

    /// Needs a person: what runs may be broken.
    pub fn is_critical(&self) -> bool {
        matches!(self, Outcome::FailedNoRollback | Outcome::RollbackFailed | Outcome::Interrupted)
    }

    /// Ends a rollout or a rollback (counted by the `rollouts_total` metric under its word):
    /// rolled out, verified (running objects recorded), rolled back, or failed either way.
    pub fn ends_a_rollout(&self) -> bool {
        matches!(
            self,
            Outcome::RolledOut
                | Outcome::Verified
                | Outcome::RolledBack
                | Outcome::FailedNoRollback
                | Outcome::RollbackFailed
        )
    }

    /// Wants an operator's eye: what runs is not what Git wants (rolled back, a removal held
    /// for confirmation) or may be broken.
    pub fn needs_attention(&self) -> bool {
        matches!(self, Outcome::RolledBack | Outcome::RemovalHeld) || self.is_critical()
    }

    /// The `dependsOn` rule: a dependent bundle goes ahead only when this one ended on Git's
    /// revision running healthy. A rollback, a block, a failure or a dry run's "would apply"
    /// does not say the dependency is in place.
    pub fn satisfies_dependents(&self) -> bool {
        matches!(self, Outcome::InSync | Outcome::Verified | Outcome::RolledOut)
    }
}

/// A finished record's last outcome, as this reconcile's: adopting running objects is
/// verifying them.
impl From<OutcomeKind> for Outcome {
    fn from(kind: OutcomeKind) -> Outcome {
        match kind {
            OutcomeKind::RolledOut => Outcome::RolledOut,
            OutcomeKind::Adopted => Outcome::Verified,
            OutcomeKind::RolledBack => Outcome::RolledBack,
            OutcomeKind::FailedNoRollback => Outcome::FailedNoRollback,
            OutcomeKind::RollbackFailed => Outcome::RollbackFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outcome once: (outcome, word, serde name, critical, satisfies dependents, ends a
    /// rollout, needs attention).
    const TABLE: &[(Outcome, &str, &str, bool, bool, bool, bool)] = &[
        (Outcome::InSync, "in-sync", "inSync", false, true, false, false),
        (Outcome::Verified, "verified", "verified", false, true, true, false),
        (Outcome::RolledOut, "rolled-out", "rolledOut", false, true, true, false),
        (Outcome::RolledBack, "rolled-back", "rolledBack", false, false, true, true),
        (Outcome::WouldApply, "would-apply", "wouldApply", false, false, false, false),
        (Outcome::Blocked, "blocked", "blocked", false, false, false, false),
        (Outcome::Retrying, "retrying", "retrying", false, false, false, false),
        (Outcome::FailedNoRollback, "rollout-failed", "failedNoRollback", true, false, true, true),
        (Outcome::RollbackFailed, "rollback-failed", "rollbackFailed", true, false, true, true),
        (Outcome::Interrupted, "interrupted", "interrupted", true, false, false, true),
        (Outcome::Removed, "removed", "removed", false, false, false, false),
        (Outcome::RemovalHeld, "removal-held", "removalHeld", false, false, false, true),
    ];

    #[test]
    fn each_outcome_has_its_word_its_json_name_its_criticality_and_its_depends_on_rule() {
        for &(outcome, word, json, critical, satisfies, ends, attention) in TABLE {
            assert_eq!(outcome.word(), word, "{outcome:?}");
            assert_eq!(serde_json::to_value(outcome).expect("serializes"), json, "{outcome:?}");
            assert_eq!(outcome.is_critical(), critical, "{outcome:?}");
            assert_eq!(outcome.satisfies_dependents(), satisfies, "{outcome:?}");
            assert_eq!(outcome.ends_a_rollout(), ends, "{outcome:?}");
            assert_eq!(outcome.needs_attention(), attention, "{outcome:?}");
        }
    }

    #[test]
    fn the_event_reason_is_the_word_in_kubernetes_casing() {
        let rows = [
            (Outcome::RolledOut, "RolledOut"),
            (Outcome::RolledBack, "RolledBack"),
            (Outcome::FailedNoRollback, "RolloutFailed"),
            (Outcome::RollbackFailed, "RollbackFailed"),
            (Outcome::InSync, "InSync"),
        ];
        for (outcome, reason) in rows {
            assert_eq!(outcome.reason(), reason, "{outcome:?}");
        }
    }

    #[test]
    fn no_two_outcomes_share_a_word_and_every_word_is_one_lower_case_token() {
        let mut words: Vec<&str> = TABLE.iter().map(|(o, ..)| o.word()).collect();
        assert!(words.iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-')), "{words:?}");
        words.sort();
        words.dedup();
        assert_eq!(words.len(), TABLE.len());
    }

    #[test]
    fn a_recorded_outcome_maps_to_this_reconciles_and_adopting_is_verifying() {
        let rows = [
            (OutcomeKind::RolledOut, Outcome::RolledOut),
            (OutcomeKind::Adopted, Outcome::Verified),
            (OutcomeKind::RolledBack, Outcome::RolledBack),
            (OutcomeKind::FailedNoRollback, Outcome::FailedNoRollback),
            (OutcomeKind::RollbackFailed, Outcome::RollbackFailed),
        ];
        for (kind, outcome) in rows {
            assert_eq!(Outcome::from(kind), outcome, "{kind:?}");
        }
    }
}
