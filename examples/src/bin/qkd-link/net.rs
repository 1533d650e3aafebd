//! The link between the two pipelines: TCP with length-prefixed frames, or
//! (for `--both --link memory`) an in-process channel.
//!
//! # On the wire
//!
//! After connecting, each side first sends a greeting and reads the peer's:
//!
//! ```text
//! greeting:  "qkd-link" (8 bytes) | version u8 = 1 | role u8 (0 Alice, 1 Bob)
//! frame:     length u32 (big-endian, 1 ..= MAX_FRAME_BYTES) | one pipeline datagram
//! ```
//!
//! The greeting is not authenticated: it only turns a wrong peer (not
//! qkd-link, another version, the same role) into a clear error. Everything
//! after it is the pipeline's own frames, authenticated inside.
//!
//! A frame longer than [`MAX_FRAME_BYTES`](qkd_examples::peer_socket::MAX_FRAME_BYTES) or of length 0 ends the link
//! before anything is allocated for it; so does a peer that sends nothing
//! for the `--timeout`.
//!
//! The event loop reads and writes the socket itself, waiting in one
//! `epoll` wait that the threads around it can end
//! ([`qkd_examples::peer_socket`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use qkd_core::Role;
use qkd_examples::peer_socket::{Inbox, PeerSocket};

use crate::side::Input;

const MAGIC: &[u8; 8] = b"qkd-link";
/// Longest the last queued datagrams may take to go out once a side stops.
const FINAL_WRITE_LIMIT: Duration = Duration::from_secs(5);
const VERSION: u8 = 1;

/// Why the link could not be set up or broke.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// No connection to the peer.
    #[error("cannot reach the peer at {addr}: {source} (gave up after {waited:.1} s)")]
    Unreachable {
        addr: SocketAddr,
        waited: f64,
        source: io::Error,
    },
    /// Nobody connected.
    #[error("no peer connected to {addr} within {waited:.1} s")]
    NoPeer { addr: SocketAddr, waited: f64 },
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// The peer is not a qkd-link of this version with the other role.
    #[error("the peer {0}")]
    WrongPeer(String),
    /// A socket error.
    #[error("connection to the peer failed: {0}")]
    Io(#[from] io::Error),
}

/// Where this side's datagrams go.
pub(crate) enum Outgoing {
    /// A TCP connection the event loop reads and writes itself.
    Tcp(Box<PeerSocket>),
    /// The peer's input queue, in the same process.
    Memory(Inbox<Input>),
    /// Closed: datagrams are discarded.
    Closed,
}

impl Outgoing {
    /// Sends one datagram.
    pub(crate) fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        match self {
            Outgoing::Tcp(s) => s.send(datagram),
            Outgoing::Memory(tx) => {
                // A peer that has gone simply does not read any more.
                let _ = tx.send(Input::Peer(datagram.to_vec()));
                Ok(())
            }
            Outgoing::Closed => Ok(()),
        }
    }

    /// Pushes buffered datagrams out (TCP: as far as the socket takes them
    /// now; the rest goes when it is writable again).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Outgoing::Tcp(s) => s.flush(),
            _ => Ok(()),
        }
    }

    /// Says "nothing more from this side" while the loop goes on reading
    /// (TCP: the write half is shut down once the buffer has gone out, so
    /// the peer reads to the end and then sees end of stream).
    pub(crate) fn close(&mut self) {
        match self {
            Outgoing::Tcp(s) => s.close_when_sent(),
            Outgoing::Memory(tx) => {
                let _ = tx.send(Input::PeerClosed);
                *self = Outgoing::Closed;
            }
            Outgoing::Closed => {}
        }
    }

    /// Closes for good at the end of a run: TCP waits (at most the
    /// `--timeout`) for the buffer to go out, then shuts the write half.
    pub(crate) fn finish(&mut self) {
        match std::mem::replace(self, Outgoing::Closed) {
            Outgoing::Tcp(mut s) => s.finish(FINAL_WRITE_LIMIT),
            Outgoing::Memory(tx) => {
                let _ = tx.send(Input::PeerClosed);
            }
            Outgoing::Closed => {}
        }
    }
}

/// Listens on `addr` and accepts one peer within `wait`.
pub(crate) fn accept(listener: &TcpListener, wait: Duration) -> Result<TcpStream, LinkError> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() >= wait {
                    return Err(LinkError::NoPeer {
                        addr,
                        waited: start.elapsed().as_secs_f64(),
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Binds a listener.
pub(crate) fn listen(addr: SocketAddr) -> Result<TcpListener, LinkError> {
    TcpListener::bind(addr).map_err(|source| LinkError::Listen { addr, source })
}

/// Connects to `addr`, retrying until `wait` has passed (the peer may
/// still be starting).
pub(crate) fn connect(addr: SocketAddr, wait: Duration) -> Result<TcpStream, LinkError> {
    let start = Instant::now();
    loop {
        let left = wait.saturating_sub(start.elapsed());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(10))) {
            Ok(s) => return Ok(s),
            Err(source) => {
                if start.elapsed() + Duration::from_millis(100) >= wait {
                    return Err(LinkError::Unreachable {
                        addr,
                        waited: start.elapsed().as_secs_f64(),
                        source,
                    });
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Sets the socket up, exchanges greetings, checks the peer's.
pub(crate) fn greet(
    stream: &mut TcpStream,
    role: Role,
    timeout: Duration,
) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut hello = [0u8; 10];
    hello[..8].copy_from_slice(MAGIC);
    hello[8] = VERSION;
    hello[9] = role_code(role);
    stream.write_all(&hello)?;
    let mut theirs = [0u8; 10];
    stream.read_exact(&mut theirs).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            LinkError::WrongPeer("closed the connection before greeting".into())
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkError::WrongPeer(format!(
            "sent no greeting within {:.1} s",
            timeout.as_secs_f64()
        )),
        _ => LinkError::Io(e),
    })?;
    if &theirs[..8] != MAGIC {
        return Err(LinkError::WrongPeer("is not a qkd-link".into()));
    }
    if theirs[8] != VERSION {
        return Err(LinkError::WrongPeer(format!(
            "speaks qkd-link version {}, this is version {VERSION}",
            theirs[8]
        )));
    }
    if theirs[9] != role_code(role.peer()) {
        return Err(LinkError::WrongPeer(format!(
            "is not {} (both ends run {})",
            role_name(role.peer()),
            role_name(role)
        )));
    }
    Ok(())
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Alice => 0,
        Role::Bob => 1,
    }
}

/// `"alice"` or `"bob"`.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Alice => "alice",
        Role::Bob => "bob",
    }
}
