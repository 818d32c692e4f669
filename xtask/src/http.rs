//! A minimal HTTPS client for readiness checks and tests (trusts only the testenv CA).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request with `headers` and reads the whole answer (10 s timeout).
pub async fn request(method: &str, url: &str, ca: &Path, headers: &[(&str, &str)]) -> Result<Reply> {
    request_with_body(method, url, ca, headers, Bytes::new()).await
}

/// [`request`] with a body.
pub async fn request_with_body(
    method: &str,
    url: &str,
    ca: &Path,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*crate::tls::client_config(ca)?).clone())
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).with_context(|| format!("building request to {url}"))?;
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.with_context(|| format!("{method} {url}: timed out"))?
}

pub async fn get(url: &str, ca: &Path, headers: &[(&str, &str)]) -> Result<Reply> {
    request("GET", url, ca, headers).await
}
