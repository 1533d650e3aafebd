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
//! A frame longer than [`MAX_FRAME_BYTES`] or of length 0 ends the link
//! before anything is allocated; so does a peer that sends nothing for the
//! `--timeout` (the socket's read timeout).

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::{Duration, Instant};

use qkd_core::Role;

use crate::side::Input;

/// Largest frame accepted from the peer (64 MiB): above the largest
/// datagram of a frame of [`crate::flag::MAX_FRAME_SLOTS`] slots (its sift
/// announcement and Toeplitz seed are at most 2^26 / 4 bytes each).
pub(crate) const MAX_FRAME_BYTES: u32 = 64 << 20;

const MAGIC: &[u8; 8] = b"qkd-link";
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
    /// A TCP stream (buffered; flushed after each batch).
    Tcp(BufWriter<TcpStream>),
    /// The peer's input queue, in the same process.
    Memory(Sender<Input>),
    /// Closed: datagrams are discarded.
    Closed,
}

impl Outgoing {
    /// Sends one datagram.
    pub(crate) fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        match self {
            Outgoing::Tcp(w) => {
                let len = u32::try_from(datagram.len())
                    .ok()
                    .filter(|&l| l > 0 && l <= MAX_FRAME_BYTES)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "datagram too long to send")
                    })?;
                w.write_all(&len.to_be_bytes())?;
                w.write_all(datagram)
            }
            Outgoing::Memory(tx) => {
                // A peer that has gone simply does not read any more.
                let _ = tx.send(Input::Peer(datagram.to_vec()));
                Ok(())
            }
            Outgoing::Closed => Ok(()),
        }
    }

    /// Pushes buffered datagrams out.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Outgoing::Tcp(w) => w.flush(),
            _ => Ok(()),
        }
    }

    /// Says "nothing more from this side" (TCP: shuts the write half down,
    /// so the peer reads to the end and then sees end of stream).
    pub(crate) fn close(&mut self) {
        match std::mem::replace(self, Outgoing::Closed) {
            Outgoing::Tcp(mut w) => {
                let _ = w.flush();
                let _ = w.get_ref().shutdown(Shutdown::Write);
            }
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

/// Reads frames from `stream` until it ends, sending each to `input`.
/// Ends with [`Input::PeerClosed`] at a clean end of stream, or
/// [`Input::PeerFailed`] naming what went wrong.
pub(crate) fn spawn_reader(
    stream: TcpStream,
    input: Sender<Input>,
    timeout: Duration,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut stream = io::BufReader::with_capacity(1 << 16, stream);
        let end = match read_frames(&mut stream, &input, timeout) {
            Ok(()) => Input::PeerClosed,
            Err(reason) => Input::PeerFailed(reason),
        };
        let _ = input.send(end);
    })
}

fn read_frames(
    stream: &mut impl Read,
    input: &Sender<Input>,
    timeout: Duration,
) -> Result<(), String> {
    let silent = |e: io::Error| -> String {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "the peer sent nothing for {:.1} s (--timeout)",
                timeout.as_secs_f64()
            ),
            io::ErrorKind::UnexpectedEof => "the peer closed the connection in a frame".into(),
            _ => format!("reading from the peer failed: {e}"),
        }
    };
    loop {
        let mut len = [0u8; 4];
        // A clean end of stream is only allowed between frames.
        match stream.read(&mut len[..1]) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(silent(e)),
        }
        stream.read_exact(&mut len[1..]).map_err(silent)?;
        let len = u32::from_be_bytes(len);
        if len == 0 || len > MAX_FRAME_BYTES {
            return Err(format!(
                "the peer sent a frame of {len} bytes (allowed: 1 to {MAX_FRAME_BYTES})"
            ));
        }
        let mut frame = vec![0u8; len as usize];
        stream.read_exact(&mut frame).map_err(silent)?;
        if input.send(Input::Peer(frame)).is_err() {
            return Ok(());
        }
    }
}
