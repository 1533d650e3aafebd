//! The SAE-facing HTTPS server: hyper (HTTP/1.1, keep-alive) over
//! tokio-rustls, one task per connection.
//!
//! The caller's SAE ID is read once per connection from the verified
//! client certificate ([`SaeMap`]). A certificate of the right CA whose
//! identity is not an SAE of this KME completes the TLS handshake and gets
//! `401` with an Error body on every request (the message names the
//! identity), so that a misconfigured client sees why; a client without a
//! certificate, or with one of another CA, is refused in the TLS handshake.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use qkd_etsi014::RequestId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::node::Node;
use crate::tls::{IdentityError, SaeMap};

/// How long a client has for the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A response body: the handler's (zeroized when dropped) or one of ours.
pub(crate) enum Payload {
    /// The ETSI 014 handler's JSON.
    Etsi(qkd_etsi014::Body, usize),
    /// A message of the server itself.
    Plain(bytes::Bytes),
}

impl Buf for Payload {
    fn remaining(&self) -> usize {
        match self {
            Payload::Etsi(b, pos) => b.as_bytes().len() - pos,
            Payload::Plain(b) => b.remaining(),
        }
    }
    fn chunk(&self) -> &[u8] {
        match self {
            Payload::Etsi(b, pos) => &b.as_bytes()[*pos..],
            Payload::Plain(b) => b.chunk(),
        }
    }
    fn advance(&mut self, cnt: usize) {
        match self {
            Payload::Etsi(b, pos) => *pos = (*pos + cnt).min(b.as_bytes().len()),
            Payload::Plain(b) => b.advance(cnt),
        }
    }
}

type HttpResponse = hyper::Response<Full<Payload>>;

/// A JSON Error body of the server itself.
fn error(status: u16, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut r = hyper::Response::new(Full::new(Payload::Plain(body.into())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Serves `listener` until `shutdown` resolves; connections in progress
/// are given `grace` to finish.
pub(crate) async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    saes: Arc<SaeMap>,
    max_body: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{}: accept failed: {e}", node.name());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, node, saes) = (acceptor.clone(), node.clone(), saes.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                // No certificate, another CA, a failed or slow handshake:
                // rustls has sent its alert.
                return;
            };
            let identity = Arc::new(saes.sae_id(tls.get_ref().1.peer_certificates()));
            let svc = service_fn(move |req| {
                let (node, identity) = (node.clone(), identity.clone());
                async move { Ok::<_, Infallible>(handle(&node, &identity, max_body, req).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// Cancels a request in the handler if its client goes away first.
struct Pending<'a> {
    node: &'a Node,
    id: RequestId,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.node.cancel(self.id);
        }
    }
}

async fn handle(
    node: &Node,
    identity: &Result<String, IdentityError>,
    max_body: usize,
    req: hyper::Request<Incoming>,
) -> HttpResponse {
    let caller = match identity {
        Ok(id) => id.as_str(),
        Err(e) => return error(401, &format!("unauthorized: {e}")),
    };
    let (parts, mut body) = req.into_parts();
    // Read at most one byte more than allowed: the handler answers 400 to
    // that, and the rest is never buffered.
    let limit = max_body.saturating_add(1);
    let mut data = Vec::new();
    while data.len() < limit {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    let take = chunk.len().min(limit - data.len());
                    data.extend_from_slice(&chunk[..take]);
                }
            }
            Some(Err(_)) => return error(400, "the request body could not be read"),
        }
    }
    let (id, rx) = node.submit(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &data,
        caller,
    );
    let mut pending = Pending {
        node,
        id,
        answered: false,
    };
    let Ok(r) = rx.await else {
        return error(503, "the request was dropped by the key manager");
    };
    pending.answered = true;
    let status = r.status();
    let allow = r.allow();
    let mut out = hyper::Response::new(Full::new(Payload::Etsi(r.into_body(), 0)));
    *out.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = out.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(qkd_etsi014::CONTENT_TYPE),
    );
    if let Some(allow) = allow
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        h.insert(ALLOW, v);
    }
    out
}
