//! Registry protocol decisions that need no I/O: reading `WWW-Authenticate` challenges, when a
//! cached token must be renewed, and how long a `Retry-After` asks us to wait.

use std::collections::BTreeMap;
use std::time::Duration;

/// A parsed `WWW-Authenticate` challenge (RFC 7235), e.g.
/// `Bearer realm="https://h/service/token",service="harbor-registry",scope="repository:a/b:pull"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased: `bearer` or `basic`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut rest = rest.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
                // Quoted string; `\"` escapes a quote.
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end? + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            params.insert(key, value);
            rest = tail.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Renew a token this long before it expires: a request signed just before expiry must not reach
/// the registry after it (Harbor's tokens live 30 min by default; distribution allows 60 s skew).
pub const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(30);

/// Docker's token spec: a token without `expires_in` lasts 60 s.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// How long a token received now may be reused.
pub fn token_reuse_window(expires_in: Option<u64>) -> Duration {
    let lifetime = expires_in.map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    lifetime.saturating_sub(TOKEN_RENEW_MARGIN)
}

/// The longest `Retry-After` we honour; a registry asking for more is treated as down for now.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Reads a `Retry-After` value in seconds, capped at [`MAX_RETRY_AFTER`]. HTTP-date values are
/// not honoured (None): the caller's exponential backoff applies instead.
pub fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// How long to wait before the next attempt: the backoff's delay, raised to what the server's
/// `Retry-After` asked for; `None` (the backoff is exhausted) stays `None`.
pub fn retry_delay(asked: Option<Duration>, backoff: Option<Duration>) -> Option<Duration> {
    match (asked, backoff) {
        (Some(asked), Some(d)) => Some(asked.max(d)),
        (_, d) => d,
    }
}

/// Statuses worth retrying: throttling and transient server trouble.
pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harbor_and_distribution_challenges_parse() {
        let c = Challenge::parse(
            r#"Bearer realm="https://harbor.example/service/token",service="harbor-registry",scope="repository:library/app:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://harbor.example/service/token"));
        assert_eq!(c.param("service"), Some("harbor-registry"));
        assert_eq!(c.param("scope"), Some("repository:library/app:pull"));
        let b = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((b.scheme.as_str(), b.param("realm")), ("basic", Some("Registry Realm")));
        let odd = Challenge::parse(r#"Bearer realm=unquoted, error="insufficient_scope", x="a\"b""#).unwrap();
        assert_eq!(odd.param("realm"), Some("unquoted"));
        assert_eq!(odd.param("error"), Some("insufficient_scope"));
        assert_eq!(odd.param("x"), Some("a\"b"));
        assert_eq!(Challenge::parse(""), None);
        assert_eq!(Challenge::parse(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(token_reuse_window(Some(1800)), Duration::from_secs(1770));
        assert_eq!(token_reuse_window(None), Duration::from_secs(30));
        assert_eq!(token_reuse_window(Some(10)), Duration::ZERO, "too short to reuse");
    }

    #[test]
    fn retry_after_seconds_are_honoured_and_capped() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        let s = Duration::from_secs;
        assert_eq!(retry_delay(Some(s(7)), Some(s(1))), Some(s(7)), "the server's wait wins when longer");
        assert_eq!(retry_delay(Some(s(1)), Some(s(4))), Some(s(4)), "never sooner than the backoff");
        assert_eq!(retry_delay(None, Some(s(2))), Some(s(2)));
        assert_eq!(retry_delay(Some(s(7)), None), None, "an exhausted budget is not extended");
        assert!(is_transient_status(429) && is_transient_status(503) && !is_transient_status(404));
    }
}
