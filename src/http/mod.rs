//! The HTTP server shared by the agent and the controller: one listener, GET and HEAD only,
//! with timeouts on every side of a connection and a limit on header size.
//!
//! - reading a request's headers (and waiting for the next one on a kept-alive connection) is
//!   bounded by `header_timeout`;
//! - a handler is bounded by `request_timeout` (routes that stream opt out);
//! - a write that makes no progress for `write_timeout` closes the connection;
//! - headers larger than `max_header_bytes` are refused with 431.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tower::ServiceExt;
use tracing::debug;

/// Limits of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// Time to receive a request's headers, and to wait for the next request.
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// Time a handler may take.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Time a write may make no progress.
    #[serde(with = "secs")]
    pub write_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The peer of a connection, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, router.clone(), config));
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, router: Router, config: ServerConfig) {
    let io = TokioIo::new(WriteTimeout::new(stream, config.write_timeout));
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        router.clone().oneshot(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes.max(8192) * 2)
        .keep_alive(true);
    builder.max_header_size(config.max_header_bytes);
    if let Err(e) = builder.serve_connection(io, service).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Bounds a handler's time; answers 503 when it runs out.
pub async fn request_timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the request took too long"),
    }
}

/// `/healthz`: 200 while `health` is alive (nothing fatal, heartbeat within `max_silence`).
pub fn liveness(health: &crate::health::Health, max_silence: Duration) -> Response {
    if health.alive(max_silence) {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not alive: a long-lived task stopped or the runtime is stalled\n")
            .into_response()
    }
}

/// `/readyz`: 200 once every readiness handle was released, else 503 saying what is awaited.
pub fn readiness(readiness: &crate::health::Readiness) -> Response {
    if readiness.is_ready() {
        "ready\n".into_response()
    } else {
        let waiting = readiness.waiting_for();
        let why = if waiting.is_empty() {
            "a long-lived task stopped".to_owned()
        } else {
            format!("waiting for: {}", waiting.join(", "))
        };
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response()
    }
}

/// A JSON error body: `{"error": {"code": 404, "message": "…"}}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Serialize)]
    struct Inner {
        code: u16,
        message: String,
    }
    let body = Body { error: Inner { code: status.as_u16(), message: message.into() } };
    (status, axum::Json(body)).into_response()
}

/// A true/false query parameter: `true` or `1`, `false` or `0` (a bare `?name` is true);
/// `default` when absent. The error names the parameter.
pub fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, String> {
    match value {
        None => Ok(default),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(format!("{name}: {other:?} is not true or false")),
    }
}

/// 400 for a query string that does not parse, then `allowed`: the parameters the route takes.
pub fn bad_query(rejection: &axum::extract::rejection::QueryRejection, allowed: &str) -> Response {
    error(StatusCode::BAD_REQUEST, format!("{}; {allowed}", rejection.body_text()))
}

/// 404 for paths that do not exist.
pub async fn not_found(request: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such path: {}", request.uri().path()))
}

/// Answer for a path that exists, asked with a method other than GET or HEAD (the router adds
/// `Allow`).
pub async fn method_not_allowed(request: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}: the API is read-only (GET, HEAD)",
            request.method(),
            request.uri().path()
        ),
    )
}

/// `Content-Type` of the Prometheus text format.
pub fn prometheus_text(body: String) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// A sensitive route, as the access review names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sensitive {
    /// Container logs.
    Logs,
    /// The effective configuration.
    Config,
}

impl Sensitive {
    /// The name in a review (`nodes/logs`, `nodes/config` in group `vigil.dev`).
    pub fn as_str(self) -> &'static str {
        match self {
            Sensitive::Logs => "logs",
            Sensitive::Config => "config",
        }
    }
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or credentials that are not valid (401).
    Unauthenticated(String),
    /// Known, but not allowed (403).
    Forbidden(String),
    /// The review could not be made (503); not cached.
    Unavailable(String),
}

/// A boxed review future.
pub type ReviewFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'a>>;

/// Judges a bearer token for a sensitive route (in a cluster: TokenReview and
/// SubjectAccessReview).
pub trait TokenReviewer: Send + Sync + std::fmt::Debug {
    /// Whether the bearer of `token` may read `what`.
    fn review<'a>(&'a self, token: &'a str, what: Sensitive) -> ReviewFuture<'a>;
}

/// Who may call sensitive routes (logs, configuration).
/// - Standalone: callers on loopback, and callers that present the configured bearer token.
/// - In a cluster (a reviewer is set): every caller presents a bearer token that the reviewer
///   accepts, loopback included (on a node, loopback is every pod of the host network); the
///   configured token, when there is one, is accepted too.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    /// The token, when one is configured.
    pub token: Option<String>,
    /// The API server's judgement, in a cluster.
    pub reviewer: Option<std::sync::Arc<dyn TokenReviewer>>,
}

impl AccessPolicy {
    /// Whether a caller presenting `presented` (a bearer token), from loopback or not, may read
    /// `what`.
    pub async fn allows(
        &self,
        presented: Option<&str>,
        loopback: bool,
        what: Sensitive,
    ) -> Result<(), Refusal> {
        if let (Some(p), Some(token)) = (presented, &self.token)
            && constant_time_eq(p.as_bytes(), token.as_bytes())
        {
            return Ok(());
        }
        match &self.reviewer {
            Some(reviewer) => match presented {
                Some(p) => reviewer.review(p, what).await,
                None => Err(Refusal::Unauthenticated(
                    "this route needs a bearer token (Authorization: Bearer …) that the API server accepts"
                        .to_owned(),
                )),
            },
            None => {
                if loopback {
                    return Ok(());
                }
                Err(Refusal::Forbidden(if self.token.is_some() {
                    "this route needs the configured bearer token, or a caller on loopback".to_owned()
                } else {
                    "this route is only served to callers on loopback (configure --api-token-file to allow others)"
                        .to_owned()
                }))
            }
        }
    }
}

/// Middleware refusing callers the policy does not allow to `what`.
pub async fn require_access(policy: AccessPolicy, what: Sensitive, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let loopback = request.extensions().get::<Peer>().is_some_and(|p| p.0.ip().is_loopback());
    match policy.allows(presented.as_deref(), loopback, what).await {
        Ok(()) => next.run(request).await,
        Err(Refusal::Unauthenticated(m)) => {
            let mut response = error(StatusCode::UNAUTHORIZED, m);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Err(Refusal::Forbidden(m)) => error(StatusCode::FORBIDDEN, m),
        Err(Refusal::Unavailable(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fails a write that makes no progress for a while.
#[derive(Debug)]
struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteTimeout { inner, limit, timer: None }
    }

    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write made no progress")))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(&mut self, result: io::Result<T>) -> Poll<io::Result<T>> {
        self.timer = None;
        Poll::Ready(result)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.pending(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
