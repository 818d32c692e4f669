//! A per-test fault proxy: a TLS-terminating HTTP/1.1 reverse proxy that a test puts in front of
//! the API server, the registry or the git server, for itself alone. It can cut connections
//! (new and open ones, including watches), delay requests, answer with a status such as 429 or
//! 503 with `Retry-After`, and it records every request it saw, so tests count requests at the
//! server side rather than trusting the client's own counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::pki::Pki;
use crate::tls;

/// What the proxy does to the traffic it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Drop new connections at once and cut the open ones (in-flight requests and watches).
    Cut,
    /// Wait this long before forwarding each request.
    Delay(Duration),
    /// Answer requests with `status` (and `Retry-After: secs` when set) instead of forwarding.
    /// With `times`, only that many requests are answered so; then the proxy passes again.
    Respond { status: u16, retry_after: Option<u64>, times: Option<u32> },
    /// Answer `status` to the applies of a bundle's objects only: server-side apply `PATCH`es
    /// that are no dry run (`dryRun=All` absent), except those of Secrets, Leases and Events
    /// (the agent's own records and bookkeeping). Everything else passes: the plan's dry runs
    /// succeed and the apply that follows meets the fault.
    RejectApplies { status: u16 },
    /// The link dies in the middle of an apply: the first apply of a bundle's object (as
    /// [`is_apply`]) reaches the upstream, and its answer is lost: the proxy cuts every
    /// connection instead of answering and is [`Fault::Cut`] from then on, until set otherwise.
    /// Until that apply, everything passes (the plan's dry runs succeed).
    CutAtApply,
    /// Wait this long before forwarding each apply of a bundle's object ([`is_apply`]);
    /// everything else passes at once.
    DelayApplies(Duration),
}

/// Whether a request is the apply of a bundle's object: a server-side apply `PATCH` that is no
/// dry run (`dryRun=All` absent), except those of Secrets, Leases and Events (the agent's own
/// records and bookkeeping).
pub fn is_apply(method: &str, target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    let own = ["/secrets/", "/leases/", "/events/"].iter().any(|k| path.contains(k));
    method == "PATCH" && target.contains("fieldManager=") && !target.contains("dryRun=All") && !own
}

impl Fault {
    /// Whether this fault answers the request itself.
    fn answers(&self, method: &str, target: &str) -> Option<(u16, Option<u64>)> {
        match self {
            Fault::Respond { status, retry_after, .. } => Some((*status, *retry_after)),
            Fault::RejectApplies { status } => is_apply(method, target).then_some((*status, None)),
            Fault::Pass | Fault::Cut | Fault::Delay(_) | Fault::CutAtApply | Fault::DelayApplies(_) => None,
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The status the client got (0 when the connection was cut before an answer).
    pub status: u16,
    /// Whether the proxy answered itself instead of forwarding.
    pub injected: bool,
    /// The first bytes of the request body (lossy UTF-8), e.g. to tell a git `ls-refs` from a
    /// `fetch` command, which share one URL.
    pub body_head: String,
    /// When the request arrived, and how long until its answer's head went back (the bench's
    /// wall times of a poll, measured where the server is).
    pub at: std::time::Instant,
    pub took: std::time::Duration,
}

/// How much of a request body `Seen::body_head` keeps.
const BODY_HEAD: usize = 512;

struct Shared {
    fault: Mutex<Fault>,
    seen: Mutex<Vec<Seen>>,
    cut: watch::Sender<u64>,
    /// Requests being handled now, and the most there ever were at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BoxBody<Bytes, hyper::Error>>,
    upstream: String,
    /// In the upstream's answers, `(from, to)` replaced in every header value (e.g. the
    /// registry's token realm pointed at another proxy).
    rewrite: Mutex<Option<(String, String)>>,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("addr", &self.addr).field("upstream", &self.shared.upstream).finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `upstream` (`https://127.0.0.1:PORT`).
    /// It serves the testenv's certificate, so clients trust it with the testenv CA.
    pub async fn start(upstream: &str, pki: &Pki) -> Result<FaultProxy> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&pki.server_cert(), &pki.server_key())?);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls::client_config(&pki.ca_cert())?).clone())
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            seen: Mutex::new(Vec::new()),
            cut,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            client,
            upstream: upstream.trim_end_matches('/').to_owned(),
            rewrite: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(FaultProxy { addr, shared, task })
    }

    /// `https://127.0.0.1:PORT`, to use in place of the upstream's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the fault from now on; `Cut` also cuts every open connection.
    pub fn set(&self, fault: Fault) {
        let cut = fault == Fault::Cut;
        *self.shared.fault.lock().expect("fault lock poisoned") = fault;
        if cut {
            self.shared.cut.send_modify(|g| *g += 1);
        }
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen lock poisoned").clone()
    }

    /// How many requests matched `pred`.
    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.shared.seen.lock().expect("seen lock poisoned").iter().filter(|s| pred(s)).count()
    }

    /// The most requests the proxy was handling at one time (a client's concurrency limit, seen
    /// from the server side).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Replaces `from` by `to` in every header value of the upstream's answers, e.g. the token
    /// realm in a registry's `WWW-Authenticate`, so its clients meet a proxy of the test's own
    /// in front of the token service.
    pub fn rewrite_headers(&self, from: &str, to: &str) {
        *self.shared.rewrite.lock().expect("rewrite lock poisoned") = Some((from.to_owned(), to.to_owned()));
    }

    /// Forgets the requests seen so far.
    pub fn reset_seen(&self) {
        self.shared.seen.lock().expect("seen lock poisoned").clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.cut.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        if *shared.fault.lock().expect("fault lock poisoned") == Fault::Cut {
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut cut = shared.cut.subscribe();
        tokio::spawn(async move {
            let serve = async {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(|req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(forward(&shared, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            };
            tokio::select! {
                () = serve => {}
                _ = cut.changed() => {}
            }
        });
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

async fn forward(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let resp = forward_counted(shared, req).await;
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    resp
}

async fn forward_counted(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<ProxyBody> {
    let at = std::time::Instant::now();
    let method = req.method().to_string();
    let target = req.uri().path_and_query().map_or("/".to_owned(), |p| p.to_string());
    // Bodies through the proxy are small (API objects, git negotiation): buffer them to record
    // their head. A body that fails to arrive is a cut connection.
    let (mut parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body_head = String::from_utf8_lossy(&body[..body.len().min(BODY_HEAD)]).into_owned();
    let fault = {
        let mut f = shared.fault.lock().expect("fault lock poisoned");
        let current = f.clone();
        if let Fault::Respond { status, retry_after, times: Some(n) } = &*f {
            *f = if *n <= 1 {
                Fault::Pass
            } else {
                Fault::Respond { status: *status, retry_after: *retry_after, times: Some(n - 1) }
            };
        }
        current
    };
    let record = |status: u16, injected: bool| {
        shared.seen.lock().expect("seen lock poisoned").push(Seen {
            method: method.clone(),
            target: target.clone(),
            status,
            injected,
            body_head: body_head.clone(),
            at,
            took: at.elapsed(),
        });
    };
    if let Some((status, retry_after)) = fault.answers(&method, &target) {
        {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let body = format!(
                "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"injected by fault proxy\",\"code\":{status}}}"
            );
            let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
            *resp.status_mut() = code;
            resp.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
            if let Some(secs) = retry_after {
                resp.headers_mut().insert("retry-after", secs.into());
            }
            record(status, true);
            return resp;
        }
    }
    match fault {
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::DelayApplies(d) if is_apply(&method, &target) => tokio::time::sleep(d).await,
        _ => {}
    }
    let cut_after = fault == Fault::CutAtApply && is_apply(&method, &target);
    let uri = format!("{}{}", shared.upstream, target);
    parts.uri = match uri.parse() {
        Ok(u) => u,
        Err(_) => return bad_gateway(&record, "bad upstream URI"),
    };
    parts.version = hyper::Version::HTTP_11;
    let up_req = Request::from_parts(parts, Full::new(body).map_err(|never| match never {}).boxed());
    match shared.client.request(up_req).await {
        Ok(_) if cut_after => {
            // The upstream applied it; the client never hears so. Cut everything (this
            // connection too: its serve future ends with the cut) and refuse new connections.
            record(0, true);
            *shared.fault.lock().expect("fault lock poisoned") = Fault::Cut;
            shared.cut.send_modify(|g| *g += 1);
            std::future::pending().await
        }
        Ok(mut resp) => {
            record(resp.status().as_u16(), false);
            if let Some((from, to)) = shared.rewrite.lock().expect("rewrite lock poisoned").as_ref() {
                for value in resp.headers_mut().values_mut() {
                    if let Ok(text) = value.to_str()
                        && text.contains(from.as_str())
                        && let Ok(v) = text.replace(from.as_str(), to).parse()
                    {
                        *value = v;
                    }
                }
            }
            resp.map(BodyExt::boxed)
        }
        Err(e) => bad_gateway(&record, &format!("upstream: {e}")),
    }
}

fn bad_gateway(record: &dyn Fn(u16, bool), msg: &str) -> Response<ProxyBody> {
    record(502, true);
    let mut resp = Response::new(Full::new(Bytes::from(msg.to_owned())).map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
