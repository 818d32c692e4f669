//! The agent running on this node, as `pause`/`resume` and `status` reach it: its address from
//! `server.listen`, and a client with a short timeout.

/// The running agent's address on this node, from `server.listen` (a wildcard means loopback).
pub(super) fn local_url(listen: &str) -> Option<String> {
    let addr: std::net::SocketAddr = listen.parse().ok()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    Some(format!("http://{ip}:{}", addr.port()))
}

pub(super) fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?)
}
