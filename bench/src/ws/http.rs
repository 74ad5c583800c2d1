//! A lean HTTP/1.1 client for the gateway's plain HTTP routes: `/v1/publish`, `/readyz`,
//! `/metrics`.
//!
//! Why not reqwest: at 10 000 publishes per second the client shares two cores with the server
//! it measures, so each request should cost as little as possible. hyper's connection-level
//! client is one keep-alive TCP connection with no pool, no redirects and no per-request
//! allocation beyond the request itself; the publisher opens several and keeps one request in
//! flight on each.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, StatusCode,
    client::conn::http1::{self, SendRequest},
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct HttpConnection {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl HttpConnection {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs on its own task and ends when `sender` is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    /// Sends one request and reads the whole answer (so the connection can carry the next).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        authorization: Option<&HeaderValue>,
        json: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone());
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value.clone());
        }
        let body = match json {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(body)
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body)?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// `GET path` on a connection of its own, for the occasional probe.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    HttpConnection::connect(addr)
        .await?
        .send(Method::GET, path, None, None)
        .await
}
