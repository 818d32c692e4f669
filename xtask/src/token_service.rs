//! A registry token service that behaves like Harbor's `/service/token`: it checks Basic
//! credentials (robot accounts such as `robot$store1+agent`) and issues RS256 JWTs carrying
//! exactly the requested scope that the account is permitted, signed by a certificate chained to
//! the CA the registry trusts (`x5c` header, as distribution's token verifier expects).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::tls;

/// Everything the service needs, written by `testenv up` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenConfig {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub signing_cert: PathBuf,
    pub signing_key: PathBuf,
    pub issuer: String,
    pub service: String,
    pub ttl_seconds: u64,
    pub accounts: Vec<Account>,
    /// One JSON line per request: time, account, scopes asked and granted, status.
    pub access_log: PathBuf,
}

/// A registry account and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub username: String,
    pub password: String,
    /// Repository name prefix (`""` = all) -> allowed actions.
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub repository_prefix: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

struct State {
    cfg: TokenConfig,
    key: jsonwebtoken::EncodingKey,
    x5c: Vec<String>,
    log: Mutex<std::fs::File>,
}

/// Runs the service until the process is killed.
pub async fn serve(cfg: TokenConfig) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&cfg.tls_cert, &cfg.tls_key)?);
    let key_pem = std::fs::read(&cfg.signing_key).with_context(|| format!("reading {}", cfg.signing_key.display()))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).context("parsing the token signing key")?;
    let x5c = tls::certs(&cfg.signing_cert)?
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
        .collect();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&cfg.access_log)?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let state = Arc::new(State { cfg, key, x5c, log: Mutex::new(log) });
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, body, account, granted) = issue(state, &req);
    let line = serde_json::json!({
        "time": now(),
        "path": req.uri().path(),
        "account": account,
        "query": req.uri().query().unwrap_or(""),
        "granted": granted,
        "status": status.as_u16(),
    });
    if let Ok(mut f) = state.log.lock() {
        let _ = writeln!(f, "{line}");
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert("www-authenticate", "Basic realm=\"testenv registry\"".parse().expect("static header"));
    }
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, String, String, Vec<Access>) {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    (status, body, String::new(), vec![])
}

fn issue(state: &State, req: &Request<hyper::body::Incoming>) -> (StatusCode, String, String, Vec<Access>) {
    if req.method() != hyper::Method::GET || req.uri().path() != "/service/token" {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found");
    }
    let query: Vec<(String, String)> = url_pairs(req.uri().query().unwrap_or(""));
    let service = query.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
    if service != Some(state.cfg.service.as_str()) {
        return error(StatusCode::BAD_REQUEST, "INVALID_SERVICE", "unknown or missing service");
    }
    // Anonymous requests get a token with no access, as Harbor does for private projects.
    let account = match req.headers().get("authorization").map(|v| basic_credentials(v.as_bytes())) {
        None => None,
        Some(None) => return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "malformed Basic credentials"),
        Some(Some((user, pass))) => {
            match state.cfg.accounts.iter().find(|a| a.username == user && constant_time_eq(&a.password, &pass)) {
                Some(a) => Some(a),
                None => {
                    let mut e = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid username or password");
                    e.2 = user;
                    return e;
                }
            }
        }
    };
    let mut granted = Vec::new();
    for (_, scope) in query.iter().filter(|(k, _)| k == "scope") {
        // One scope parameter may hold several space-separated scopes.
        for one in scope.split(' ') {
            if let Some(access) = grant(account, one) {
                granted.push(access);
            }
        }
    }
    let now = now();
    let claims = Claims {
        iss: state.cfg.issuer.clone(),
        sub: account.map(|a| a.username.clone()).unwrap_or_default(),
        aud: state.cfg.service.clone(),
        exp: now + state.cfg.ttl_seconds,
        nbf: now,
        iat: now,
        jti: format!("{:032x}", rand::random::<u128>()),
        access: granted,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5c = Some(state.x5c.clone());
    let token = match jsonwebtoken::encode(&header, &claims, &state.key) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "SIGNING", &e.to_string()),
    };
    let issued_at = rfc3339(now);
    let body = serde_json::json!({
        "token": token, "access_token": token, "expires_in": state.cfg.ttl_seconds, "issued_at": issued_at,
    });
    (StatusCode::OK, body.to_string(), claims.sub, claims.access)
}

/// `repository:NAME:ACTIONS` -> the intersection of requested and permitted actions.
fn grant(account: Option<&Account>, scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let account = account?;
    let mut allowed: Vec<String> = actions
        .split(',')
        .filter(|act| {
            account.grants.iter().any(|g| {
                kind == "repository"
                    && name.starts_with(&g.repository_prefix)
                    && g.actions.iter().any(|a| a == act || a == "*")
            })
        })
        .map(str::to_owned)
        .collect();
    allowed.dedup();
    (!allowed.is_empty()).then(|| Access { kind: kind.to_owned(), name: name.to_owned(), actions: allowed })
}

fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?;
    let encoded = text.strip_prefix("Basic ").or_else(|| text.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robot() -> Account {
        Account {
            username: "robot$store1+agent".into(),
            password: "pw".into(),
            grants: vec![Grant { repository_prefix: "stores/".into(), actions: vec!["pull".into()] }],
        }
    }

    #[test]
    fn only_the_permitted_part_of_a_requested_scope_is_granted() {
        let a = robot();
        let got = grant(Some(&a), "repository:stores/kiosk:pull,push").expect("pull is permitted");
        assert_eq!(got.actions, vec!["pull"]);
        assert_eq!(got.name, "stores/kiosk");
        assert!(grant(Some(&a), "repository:other/kiosk:pull").is_none());
        assert!(grant(None, "repository:stores/kiosk:pull").is_none(), "anonymous gets nothing");
    }

    #[test]
    fn robot_names_with_dollar_and_plus_survive_basic_decoding() {
        let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("robot$store1+agent:p:w"));
        assert_eq!(basic_credentials(header.as_bytes()), Some(("robot$store1+agent".into(), "p:w".into())));
    }

    #[test]
    fn query_strings_decode_percent_and_plus() {
        let q = url_pairs(
            "service=harbor-registry&scope=repository%3Astores%2Fkiosk%3Apull&account=robot%24store1%2Bagent",
        );
        assert_eq!(q[1].1, "repository:stores/kiosk:pull");
        assert_eq!(q[2].1, "robot$store1+agent");
    }

    #[test]
    fn issued_at_is_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
