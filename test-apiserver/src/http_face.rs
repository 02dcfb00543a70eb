//! The two faces: an in-process `tower::Service` and a plain-HTTP listener on loopback.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server::{Body, Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The in-process face, for `kube::Client::new`.
#[derive(Debug, Clone)]
pub struct InProcess(pub Arc<Server>);

impl<B> tower::Service<http::Request<B>> for InProcess
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            server.handle(http::Request::from_parts(parts, bytes)).await.map_err(|e| Box::new(e) as BoxError)
        })
    }
}

/// Listens on `address` and serves every connection (HTTP/1.1, keep-alive, streamed watches).
pub async fn serve(server: Arc<Server>, address: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    if let Ok(mut a) = server.address.lock() {
        *a = local.to_string();
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let server = server.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| answer(server.clone(), request));
                // A refused request (fault injection) closes the connection without an answer.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn answer(
    server: Arc<Server>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    server.handle(http::Request::from_parts(parts, bytes)).await.map_err(std::io::Error::other)
}
