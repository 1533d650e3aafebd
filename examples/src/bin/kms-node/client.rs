//! A small ETSI 014 client over HTTPS with a client certificate (hyper
//! over tokio-rustls), for the demo: one keep-alive connection per SAE.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::tls;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ClientError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// TLS configuration refused.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// Connecting failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// A request could not be built.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One SAE's connection to its KME.
pub(crate) struct SaeClient {
    send: SendRequest<Full<bytes::Bytes>>,
}

impl SaeClient {
    /// Connects to `addr` as the SAE whose certificate and key are
    /// `cert`/`key`, trusting `ca` for the KME.
    pub(crate) async fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<SaeClient, ClientError> {
        let config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(tls::load_roots(ca)?)
            .with_client_auth_cert(tls::load_certs(cert)?, tls::load_key(key)?)?;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), stream)
            .await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(SaeClient { send })
    }

    /// Sends one request; returns the status and the body (zeroized on drop).
    pub(crate) async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), ClientError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await?.to_bytes();
        Ok((status, Zeroizing::new(collected.to_vec())))
    }
}
