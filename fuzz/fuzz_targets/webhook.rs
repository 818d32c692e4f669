//! Fuzz target: a webhook's headers and body, authenticated (`shared::webhook::authenticate`),
//! read (`parse`) and matched (`concerns`) as the daemon does.
//!
//! Input: one byte choosing the sender, then `name: value` header lines up to an empty line,
//! then the raw body. Beyond "no panic": the signature the sender would compute always
//! authenticates, and the same signature over a changed body never does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::config::Sender;
use shared::webhook::{self, Headers};

const SECRET: &[u8] = b"fuzz-webhook-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let sender = Sender::ALL[usize::from(pick) % Sender::ALL.len()];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let headers: Headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();

    let _ = webhook::authenticate(sender, &headers, body, SECRET);

    let mut signed = headers.clone();
    let sig = webhook::signature(SECRET, body);
    match sender {
        Sender::Harbor | Sender::Registry => {
            signed.insert("authorization".into(), String::from_utf8_lossy(SECRET).into_owned());
        }
        Sender::Gitea => {
            signed.insert("x-gitea-signature".into(), sig);
        }
        Sender::GitHub => {
            signed.insert("x-hub-signature-256".into(), format!("sha256={sig}"));
        }
        Sender::Generic => {
            signed.insert("x-signature-256".into(), format!("sha256={sig}"));
        }
    }
    assert_eq!(webhook::authenticate(sender, &signed, body, SECRET), Ok(()), "the sender's own signature");
    if !matches!(sender, Sender::Harbor | Sender::Registry) {
        let mut changed = body.to_vec();
        changed.push(b'x');
        assert!(webhook::authenticate(sender, &signed, &changed, SECRET).is_err(), "a changed body authenticated");
    }

    if let Ok(event) = webhook::parse(sender, &headers, body) {
        let known = webhook::known_repositories(&["registry.example:5000/org/app:1.0".to_owned()]);
        let _ = webhook::concerns(&event, "https://git.example/org/repo.git", Some(&known), &[]);
        let _ = webhook::concerns(&event, "https://git.example/org/repo.git", None, &[]);
    }
});
