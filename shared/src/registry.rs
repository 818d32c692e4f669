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

/// The path and query of the next page of a listing, from a `Link` header as the distribution
/// spec and Harbor send it: `</v2/a/tags/list?n=200&last=x>; rel="next"`. Only a same-host path
/// is followed; a full URL (another host) is refused, so a registry cannot send our credentials
/// elsewhere.
pub fn next_page(link: Option<&str>) -> Option<String> {
    link?.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        (is_next && target.starts_with("/v2/")).then(|| target.to_owned())
    })
}

/// The outcome label of one registry response, for request accounting (metrics labels).
pub fn outcome_label(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        401 => "challenged",
        403 => "forbidden",
        404 => "not_found",
        429 => "throttled",
        500..=599 => "server_error",
        _ => "other",
    }
}

/// Which configured registry serves images named with `host` (`host[:port]` as written in an
/// image reference): the one whose `host` or one of whose `aliases` equals it, ignoring case
/// (host names are case-insensitive; ports must match). Harbor is often known by an external
/// name in manifests and by an internal one on the store's network; aliases map the first to
/// the second, and requests always go to the configured `host`.
pub fn find_registry(host: &str, registries: &[crate::config::Registry]) -> Option<usize> {
    registries
        .iter()
        .position(|r| r.host.eq_ignore_ascii_case(host) || r.aliases.iter().any(|a| a.eq_ignore_ascii_case(host)))
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

    #[test]
    fn images_find_their_registry_by_host_or_alias_ignoring_case_but_not_port() {
        let reg = |host: &str, aliases: &[&str]| crate::config::Registry {
            host: host.into(),
            aliases: aliases.iter().map(|a| (*a).into()).collect(),
            auth: None,
            ca_file: None,
            max_concurrency: 4,
            verify: None,
        };
        let regs = [reg("harbor.internal:8443", &["harbor.example.com"]), reg("ghcr.io", &[])];
        let cases = [
            ("harbor.internal:8443", Some(0)),
            ("HARBOR.internal:8443", Some(0)),
            ("harbor.example.com", Some(0)),
            ("Harbor.Example.com", Some(0)),
            ("harbor.internal", None),
            ("harbor.example.com:443", None),
            ("ghcr.io", Some(1)),
            ("docker.io", None),
        ];
        for (host, want) in cases {
            assert_eq!(find_registry(host, &regs), want, "{host}");
        }
    }

    #[test]
    fn responses_get_bounded_outcome_labels() {
        let cases = [
            (200, "ok"),
            (201, "ok"),
            (401, "challenged"),
            (403, "forbidden"),
            (404, "not_found"),
            (429, "throttled"),
            (503, "server_error"),
            (302, "other"),
        ];
        for (status, want) in cases {
            assert_eq!(outcome_label(status), want, "{status}");
        }
    }

    #[test]
    fn the_next_page_comes_from_the_link_header_and_stays_on_the_host() {
        let cases = [
            (Some(r#"</v2/a/b/tags/list?n=200&last=1.9>; rel="next""#), Some("/v2/a/b/tags/list?n=200&last=1.9")),
            (Some(r#"</v2/a/tags/list?last=x&n=100>;rel=next"#), Some("/v2/a/tags/list?last=x&n=100")),
            (
                Some(r#"</v2/a/tags/list?n=1>; rel="prev", </v2/a/tags/list?last=z>; rel="next""#),
                Some("/v2/a/tags/list?last=z"),
            ),
            (Some(r#"<https://evil.example/v2/a/tags/list?last=x>; rel="next""#), None),
            (Some(r#"</v2/a/tags/list?n=1>; rel="prev""#), None),
            (Some("garbage"), None),
            (None, None),
        ];
        for (link, want) in cases {
            assert_eq!(next_page(link).as_deref(), want, "{link:?}");
        }
    }
}
