//! Credential stripping for anything that may reach a log, a status, an error or an Event.

use url::Url;

/// Returns `raw` with any `user:password@` part of a URL replaced by `***@`; text that is not a
/// URL is returned unchanged. Query parameters named like credentials are masked too.
pub fn url(raw: &str) -> String {
    let Ok(mut u) = Url::parse(raw) else { return raw.to_owned() };
    if !u.username().is_empty() || u.password().is_some() {
        // Setting these only fails for cannot-be-a-base URLs, which have no userinfo anyway.
        let _ = u.set_password(None);
        let _ = u.set_username("***");
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let secret = ["token", "password", "secret", "sig", "signature"]
                    .iter()
                    .any(|s| k.to_ascii_lowercase().contains(s));
                (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Whether a URL carries userinfo (credentials must come from files or the environment instead).
pub fn has_userinfo(raw: &str) -> bool {
    Url::parse(raw).is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked_and_the_rest_kept() {
        assert_eq!(url("https://agent:s3cr3t@git.example/org/repo.git"), "https://***@git.example/org/repo.git");
        assert_eq!(url("https://git.example/org/repo.git"), "https://git.example/org/repo.git");
    }

    #[test]
    fn credential_like_query_parameters_are_masked() {
        let out = url("https://h.example/x?token=abc&ref=main");
        assert!(!out.contains("abc"), "{out}");
        assert!(out.contains("ref=main"), "{out}");
    }

    #[test]
    fn non_urls_pass_through() {
        assert_eq!(url("not a url"), "not a url");
        assert!(!has_userinfo("not a url"));
        assert!(has_userinfo("https://u@h.example"));
    }
}
