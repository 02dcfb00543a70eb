//! The gRPC prober: `grpc.health.v1.Health/Check`, healthy when the answer is `SERVING`.
//!
//! The connection is made here (resolve, connect, TLS with ALPN `h2`) so that it follows the same
//! address policy and socket options as the other probers, then handed to tonic.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::net::ResetOnClose;
use super::tls::{Alpn, TlsConfigs, server_name};
use super::{Cause, Outcome, PortRef, Reason, Target, Trace, effective_port, net};

/// A validated gRPC health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcSpec {
    /// Port, unless the target gives one.
    pub port: Option<PortRef>,
    /// Service name asked about; empty for the whole server.
    pub service: String,
    /// Connect with TLS.
    pub tls: bool,
    /// With TLS, accept any certificate.
    pub insecure_skip_verify: bool,
}

pub(crate) async fn probe(
    spec: &GrpcSpec,
    target: &Target,
    tls: &TlsConfigs,
    user_agent: &http::HeaderValue,
    trace: &mut Trace,
) -> Outcome {
    let port = match effective_port(target, spec.port.as_ref(), None) {
        Ok(port) => port,
        Err(e) => return Outcome::unknown(Cause::Misconfigured, e),
    };
    let host = net::bare_host(&target.host);
    let addrs = match net::resolve(host, port, target.policy, trace).await {
        Ok(addrs) => addrs,
        Err(outcome) => return outcome,
    };
    let stream = match net::connect(&addrs, trace).await {
        Ok(stream) => ResetOnClose(stream),
        Err(outcome) => return outcome,
    };
    let stream = if spec.tls {
        let config = match tls.get(Alpn::H2, spec.insecure_skip_verify) {
            Ok(config) => config,
            Err(e) => return Outcome::unknown(Cause::Local, e),
        };
        let name = match server_name(host) {
            Ok(name) => name,
            Err(e) => return Outcome::unknown(Cause::Misconfigured, e),
        };
        match TlsConnector::from(config).connect(name, stream).await {
            Ok(stream) => {
                trace.step("tls", || "handshake done".to_owned());
                Stream::Tls(Box::new(stream))
            }
            Err(e) => {
                trace.step("tls", || format!("failed: {e}"));
                return Outcome::unhealthy(Reason::Tls, format!("TLS handshake with {host}:{port}: {e}"));
            }
        }
    } else {
        Stream::Plain(stream)
    };

    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let scheme = if spec.tls { "https" } else { "http" };
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("{scheme}://{authority}")) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            return Outcome::unknown(Cause::Misconfigured, format!("invalid gRPC address {authority}: {e}"));
        }
    };
    let endpoint = match endpoint.user_agent(user_agent.clone()) {
        Ok(endpoint) => endpoint,
        Err(e) => return Outcome::unknown(Cause::Local, format!("invalid user agent: {e}")),
    };
    // tonic asks its connector for a stream; hand it the one made above, once.
    let slot = Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let stream = slot.lock().ok().and_then(|mut s| s.take());
        async move {
            stream.map(TokioIo::new).ok_or_else(|| io::Error::other("the probe connection was already used"))
        }
    });
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(channel) => channel,
        Err(e) => {
            trace.step("h2", || format!("failed: {e}"));
            return Outcome::unhealthy(Reason::Protocol, format!("HTTP/2 set-up with {authority}: {e}"));
        }
    };
    let mut client = HealthClient::new(channel);
    let response = client.check(HealthCheckRequest { service: spec.service.clone() }).await;
    let what =
        if spec.service.is_empty() { "server".to_owned() } else { format!("service {:?}", spec.service) };
    match response {
        Ok(response) => {
            let status = ServingStatus::try_from(response.get_ref().status).unwrap_or(ServingStatus::Unknown);
            trace.step("first-byte", || status.as_str_name().to_string());
            match status {
                ServingStatus::Serving => Outcome::healthy(format!("{what} SERVING")),
                ServingStatus::ServiceUnknown => Outcome::unhealthy(
                    Reason::ServiceUnknown,
                    format!("{what} is unknown to the health service"),
                ),
                other => Outcome::unhealthy(Reason::NotServing, format!("{what} is {}", other.as_str_name())),
            }
        }
        Err(status) => {
            trace.step("first-byte", || format!("gRPC status {:?}", status.code()));
            match status.code() {
                Code::NotFound => Outcome::unhealthy(
                    Reason::ServiceUnknown,
                    format!("{what} is unknown to the health service: {}", status.message()),
                ),
                Code::DeadlineExceeded => Outcome::unhealthy(Reason::Timeout, status.message().to_owned()),
                Code::Unimplemented => Outcome::unhealthy(
                    Reason::GrpcStatus,
                    format!("{authority} does not implement grpc.health.v1.Health: {}", status.message()),
                ),
                code => {
                    Outcome::unhealthy(Reason::GrpcStatus, format!("gRPC {code:?}: {}", status.message()))
                }
            }
        }
    }
}

/// A plain or TLS connection.
enum Stream {
    Plain(ResetOnClose),
    Tls(Box<TlsStream<ResetOnClose>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
