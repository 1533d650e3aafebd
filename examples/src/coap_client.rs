//! A small blocking CoAP client over a `UdpSocket`: one confirmable request,
//! retransmitted as RFC 7252 §4.2 describes until answered or out of time,
//! with block-wise answers (Block2) fetched whole. `qpm` proxies the hosts'
//! resources through it; tests and scripts can use it as well.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use qkd_core::control::{Method, Status};

use crate::coap_service::{BlockOption, MAX_DATAGRAM, decode_uint, encode_request};

/// The largest whole body fetched block by block, bytes.
pub const MAX_BODY: usize = 1 << 20;

/// A response as the client got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The response code byte (`0x45` for 2.05).
    pub code: u8,
    /// The content format, when the response has one.
    pub content_format: Option<u16>,
    /// The whole payload (all blocks).
    pub payload: Vec<u8>,
}

impl ClientResponse {
    /// The status, when the code is one [`Status`] knows.
    pub fn status(&self) -> Option<Status> {
        Status::from_code(self.code)
    }

    /// The code written as CoAP writes it (`2.05`).
    pub fn code_text(&self) -> String {
        format!("{}.{:02}", self.code >> 5, self.code & 0x1f)
    }

    /// The payload as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A client on its own socket (an ephemeral port on the wildcard address of
/// the family of the servers it talks to).
#[derive(Debug)]
pub struct CoapClient {
    socket: UdpSocket,
    next_message_id: u16,
    next_token: u64,
    /// How long one request may take, all retransmissions and blocks included.
    pub timeout: Duration,
}

impl CoapClient {
    /// A client bound to an ephemeral loopback port (IPv4).
    ///
    /// # Errors
    /// The socket could not be bound.
    pub fn new(timeout: Duration) -> io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().map_err(io::Error::other)?, timeout)
    }

    /// A client bound to `local`.
    ///
    /// # Errors
    /// The socket could not be bound.
    pub fn bind(local: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let socket = UdpSocket::bind(local)?;
        let seed = u64::from(std::process::id()) ^ socket.local_addr()?.port() as u64;
        Ok(CoapClient {
            socket,
            next_message_id: (seed as u16).wrapping_mul(31),
            next_token: seed << 16,
            timeout,
        })
    }

    /// Sends one request to `to` and waits for its whole answer.
    ///
    /// # Errors
    /// No answer within [`timeout`](Self::timeout) (`TimedOut`), an answer
    /// that is malformed or too long (`InvalidData`), or a socket error.
    pub fn request(
        &mut self,
        to: SocketAddr,
        method: Method,
        path: &str,
        content_format: Option<u16>,
        payload: &[u8],
    ) -> io::Result<ClientResponse> {
        let deadline = Instant::now() + self.timeout;
        let mut body = Vec::new();
        let mut block: Option<BlockOption> = None;
        loop {
            let packet =
                self.exchange(to, method, path, content_format, payload, block, deadline)?;
            let code: u8 = packet.header.code.into();
            let cf = packet
                .get_first_option(CoapOption::ContentFormat)
                .and_then(|v| decode_uint(v))
                .and_then(|v| u16::try_from(v).ok());
            let b2 = packet
                .get_first_option(CoapOption::Block2)
                .and_then(|v| decode_uint(v))
                .map(BlockOption::from_value);
            body.extend_from_slice(&packet.payload);
            if body.len() > MAX_BODY {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "answer too long",
                ));
            }
            match b2 {
                Some(b) if b.more => {
                    block = Some(BlockOption {
                        num: b.num + 1,
                        more: false,
                        szx: b.szx,
                    });
                }
                _ => {
                    return Ok(ClientResponse {
                        code,
                        content_format: cf,
                        payload: body,
                    });
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        to: SocketAddr,
        method: Method,
        path: &str,
        content_format: Option<u16>,
        payload: &[u8],
        block2: Option<BlockOption>,
        deadline: Instant,
    ) -> io::Result<Packet> {
        self.next_message_id = self.next_message_id.wrapping_add(1);
        self.next_token = self.next_token.wrapping_add(1);
        let mid = self.next_message_id;
        let token = self.next_token.to_be_bytes().to_vec();
        let datagram = encode_request(
            MessageType::Confirmable,
            mid,
            &token,
            method,
            path,
            content_format,
            payload,
            block2,
        )?;
        let mut wait = Duration::from_millis(250);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut acknowledged = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from {to}"),
                ));
            }
            if !acknowledged {
                self.socket.send_to(&datagram, to)?;
            }
            let resend_at = (now + wait).min(deadline);
            wait *= 2;
            while Instant::now() < resend_at {
                let left = resend_at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.socket.set_read_timeout(Some(left))?;
                let (n, from) = match self.socket.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    // A signal (EINTR) or an ICMP error of an earlier datagram:
                    // wait on.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if from != to {
                    continue;
                }
                let Ok(p) = Packet::from_bytes(&buf[..n]) else {
                    continue;
                };
                let kind = p.header.get_type();
                if kind == MessageType::Reset && p.header.message_id == mid {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the server reset the request",
                    ));
                }
                if p.header.code == MessageClass::Empty {
                    if kind == MessageType::Acknowledgement && p.header.message_id == mid {
                        // A separate response follows; stop resending.
                        acknowledged = true;
                    }
                    continue;
                }
                if p.get_token() != token.as_slice() {
                    continue;
                }
                if kind == MessageType::Confirmable {
                    let [hi, lo] = p.header.message_id.to_be_bytes();
                    self.socket.send_to(&[0x60, 0, hi, lo], to)?;
                }
                return Ok(p);
            }
        }
    }
}
