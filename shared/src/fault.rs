//! Which API errors are the environment's (retried with backoff, never quarantined) and which
//! are the revision's own (the rollout fails as before): `classify`, a pure function of the HTTP
//! status and the API server's message, and the environment retry's backoff (`retry_delay`).
//!
//! Quarantine is for a revision proven unhealthy or refused for what it is (invalid, forbidden,
//! another field manager's fields). A namespace still terminating or not there yet, a write
//! racing another on our own object, a rate limit, a server or webhook that failed, a timeout or
//! an unreachable API server say nothing about the revision: it is tried again later.

use crate::k8s::Time;

/// What an API error says about the revision that was being planned or applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The environment is not ready: retry later with backoff; the revision is not at fault.
    Environment(Environment),
    /// The revision itself was refused (invalid object, forbidden, a field conflict with another
    /// manager, a webhook that denied it, an unknown kind): the rollout fails, as it always did.
    Revision,
}

/// The environment faults, each with a stable `reason()` word (logs, status, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// 403 from the NamespaceLifecycle admission: the namespace is being deleted.
    NamespaceTerminating,
    /// 404 `namespaces "…" not found`: the namespace does not exist (yet).
    NamespaceMissing,
    /// 409 that is no field-manager conflict: another write to our object won the race (the
    /// object has been modified, is being deleted, already exists).
    Conflict,
    /// 429 Too Many Requests (API priority and fairness).
    RateLimited,
    /// An admission webhook that could not be called (down, timing out): the API server answers
    /// 500 "failed calling webhook".
    WebhookUnavailable,
    /// Any other 5xx.
    ServerError,
    /// No answer in time (408, or the client's own timeout).
    Timeout,
    /// No HTTP answer at all: connection refused, reset, TLS, DNS.
    Unreachable,
}

/// First retry after an environment fault, doubled per attempt up to [`RETRY_MAX`]: soon enough
/// that a namespace recreated a moment later is used at once, far enough apart that a fault
/// lasting hours costs a request every five minutes.
pub const RETRY_FIRST: Time = 10;
pub const RETRY_MAX: Time = 5 * 60;

impl Environment {
    /// One lower-case token per fault, stable (a metric label, a log field).
    pub fn reason(&self) -> &'static str {
        match self {
            Environment::NamespaceTerminating => "namespace-terminating",
            Environment::NamespaceMissing => "namespace-missing",
            Environment::Conflict => "conflict",
            Environment::RateLimited => "rate-limited",
            Environment::WebhookUnavailable => "webhook-unavailable",
            Environment::ServerError => "server-error",
            Environment::Timeout => "timeout",
            Environment::Unreachable => "unreachable",
        }
    }
}

/// Classifies one API error: `status` is the HTTP status of the API server's answer (`None`
/// when there was no answer), `message` its text (a `Status` message, or the client's error).
/// The messages matched are the API server's own wording (NamespaceLifecycle, the dispatcher of
/// admission webhooks, server-side apply's conflict report), stable across Kubernetes releases.
pub fn classify(status: Option<u16>, message: &str) -> Cause {
    let env = Cause::Environment;
    let Some(status) = status else {
        let m = message.to_ascii_lowercase();
        let timed_out = ["timed out", "timeout", "deadline exceeded"].iter().any(|w| m.contains(w));
        return env(if timed_out { Environment::Timeout } else { Environment::Unreachable });
    };
    // A webhook that answered and said no judged the revision; one that could not be called did not.
    if message.contains("denied the request") {
        return Cause::Revision;
    }
    if message.contains("failed calling webhook") {
        return env(Environment::WebhookUnavailable);
    }
    match status {
        403 if message.contains("because it is being terminated") => env(Environment::NamespaceTerminating),
        404 if names_missing_namespace(message) => env(Environment::NamespaceMissing),
        // Server-side apply's "Apply failed with N conflict(s): conflict with \"kubectl\" ...":
        // another manager's fields, which only force or a person settles.
        409 if message.contains("Apply failed with") => Cause::Revision,
        409 => env(Environment::Conflict),
        408 => env(Environment::Timeout),
        429 => env(Environment::RateLimited),
        500..=599 => env(Environment::ServerError),
        _ => Cause::Revision,
    }
}

/// `namespaces "store-1" not found`, the API server's NotFound for a namespace.
fn names_missing_namespace(message: &str) -> bool {
    message
        .split("namespaces \"")
        .skip(1)
        .any(|rest| rest.split_once('"').is_some_and(|(_, tail)| tail.starts_with(" not found")))
}

/// Delay before attempt `attempts + 1` after `attempts` (1-based) environment faults in a row.
pub fn retry_delay(attempts: u32) -> Time {
    let doublings = attempts.saturating_sub(1).min(16);
    (RETRY_FIRST << doublings).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Environment::*;

    /// (status, message as the API server or the client says it, cause).
    const TABLE: &[(Option<u16>, &str, Cause)] = &[
        (
            Some(403),
            "configmaps \"web-config\" is forbidden: unable to create new content in namespace store-1 because it \
             is being terminated",
            Cause::Environment(NamespaceTerminating),
        ),
        (Some(404), "namespaces \"store-1\" not found", Cause::Environment(NamespaceMissing)),
        (
            Some(409),
            "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply \
             your changes to the latest version and try again",
            Cause::Environment(Conflict),
        ),
        (Some(409), "object is being deleted: deployments.apps \"web\" already exists", Cause::Environment(Conflict)),
        (Some(429), "Too many requests, please try again later.", Cause::Environment(RateLimited)),
        (Some(500), "Internal error occurred: etcdserver: request timed out", Cause::Environment(ServerError)),
        (Some(503), "service unavailable", Cause::Environment(ServerError)),
        (Some(504), "Timeout: request did not complete within requested timeout", Cause::Environment(ServerError)),
        (
            Some(500),
            "Internal error occurred: failed calling webhook \"validate.kiosk.example\": failed to call webhook: Post \
             \"https://kiosk-webhook.kiosk.svc:443/validate\": dial tcp 10.43.0.9:443: connect: connection refused",
            Cause::Environment(WebhookUnavailable),
        ),
        (Some(408), "request timeout", Cause::Environment(Timeout)),
        (None, "operation timed out", Cause::Environment(Timeout)),
        (None, "error sending request: context deadline exceeded", Cause::Environment(Timeout)),
        (
            None,
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
            Cause::Environment(Unreachable),
        ),
        // The revision's own faults: as before, the rollout fails.
        (
            Some(409),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas",
            Cause::Revision,
        ),
        (
            Some(400),
            "admission webhook \"validate.kiosk.example\" denied the request: image tag latest is not allowed",
            Cause::Revision,
        ),
        (
            Some(500),
            "admission webhook \"validate.kiosk.example\" denied the request: internal policy",
            Cause::Revision,
        ),
        (
            Some(422),
            "Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].image: Required value",
            Cause::Revision,
        ),
        (
            Some(403),
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:gitops:agent\" cannot patch resource",
            Cause::Revision,
        ),
        (Some(404), "the server could not find the requested resource", Cause::Revision),
        (Some(404), "deployments.apps \"namespaces\" not found", Cause::Revision),
        (
            Some(400),
            "the namespace of the provided object does not match the namespace sent on the request",
            Cause::Revision,
        ),
    ];

    #[test]
    fn environment_errors_are_told_from_the_revisions_own() {
        for (status, message, cause) in TABLE {
            assert_eq!(classify(*status, message), *cause, "{status:?} {message}");
        }
    }

    #[test]
    fn every_environment_fault_has_its_own_reason_word() {
        let all = [
            NamespaceTerminating,
            NamespaceMissing,
            Conflict,
            RateLimited,
            WebhookUnavailable,
            ServerError,
            Timeout,
            Unreachable,
        ];
        let mut words: Vec<&str> = all.iter().map(Environment::reason).collect();
        assert!(words.iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-')), "{words:?}");
        words.sort();
        words.dedup();
        assert_eq!(words.len(), all.len());
    }

    #[test]
    fn the_environment_retry_backs_off_from_ten_seconds_doubling_up_to_five_minutes() {
        let delays: Vec<Time> = (1..=8).map(retry_delay).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(0), 10, "a zeroth attempt waits like the first");
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
