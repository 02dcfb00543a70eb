//! Real servers on loopback for probe tests: an HTTP target whose behaviour can be changed while
//! it runs (optionally over TLS), a gRPC health server, and a TCP server that answers garbage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// How the HTTP target answers.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// `Location` header.
    pub location: Option<String>,
    /// Delay before answering.
    pub delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { status: 200, body: "ok".into(), location: None, delay: Duration::ZERO }
    }
}

/// What the target saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `Connection`.
    pub connection: Option<String>,
    /// `Host`.
    pub host: Option<String>,
    /// Other headers, lowercased names.
    pub headers: Vec<(String, String)>,
}

/// An HTTP target on loopback.
#[derive(Clone)]
pub struct HttpTarget {
    /// Its address.
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Per-path behaviour overriding the default one.
    routes: Arc<Mutex<Vec<(String, Behaviour)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    requests: Arc<AtomicU64>,
}

impl HttpTarget {
    /// Starts a plain HTTP target.
    pub async fn start() -> HttpTarget {
        HttpTarget::start_with(None).await
    }

    /// Starts a target, over TLS when a server config is given.
    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> HttpTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = HttpTarget {
            addr: listener.local_addr().unwrap(),
            behaviour: Arc::new(Mutex::new(Behaviour::default())),
            routes: Arc::new(Mutex::new(Vec::new())),
            seen: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let t = target.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let t = t.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let t = t.clone();
                        async move { Ok::<_, std::convert::Infallible>(t.answer(req).await) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new());
                    match tls {
                        Some(config) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        target
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            user_agent: header("user-agent"),
            connection: header("connection"),
            host: header("host"),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
        });
        let behaviour = {
            let routes = self.routes.lock().unwrap();
            routes
                .iter()
                .find(|(p, _)| *p == req.uri().path())
                .map(|(_, b)| b.clone())
                .unwrap_or_else(|| self.behaviour.lock().unwrap().clone())
        };
        if !behaviour.delay.is_zero() {
            tokio::time::sleep(behaviour.delay).await;
        }
        let mut response = Response::new(Full::new(Bytes::from(behaviour.body.clone())));
        *response.status_mut() = StatusCode::from_u16(behaviour.status).unwrap();
        if let Some(location) = &behaviour.location {
            response.headers_mut().insert("location", location.parse().unwrap());
        }
        response
    }

    /// Changes how every path answers.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Sets only the status code.
    pub fn set_status(&self, status: u16) {
        self.behaviour.lock().unwrap().status = status;
    }

    /// Makes one path answer differently.
    pub fn route(&self, path: &str, behaviour: Behaviour) {
        self.routes.lock().unwrap().push((path.to_owned(), behaviour));
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, as a rustls server config.
pub fn self_signed_tls() -> Arc<rustls::ServerConfig> {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    Arc::new(config)
}

/// A TCP server that writes `reply` to every connection and closes it.
pub async fn garbage_server(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = stream.write_all(reply).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    addr
}

/// A port on loopback where nothing listens.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A gRPC server with the standard health service; the reporter changes what it says.
pub async fn grpc_health() -> (SocketAddr, tonic_health::server::HealthReporter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    (addr, reporter)
}

/// Sockets in TIME-WAIT with `port` at either end, from /proc/net/tcp and tcp6.
pub fn time_wait_sockets(port: u16) -> usize {
    let mut count = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != "06" {
                continue;
            }
            let port_of = |s: &str| s.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port) {
                count += 1;
            }
        }
    }
    count
}
