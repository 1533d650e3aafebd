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
//! before anything is allocated for it; so does a peer that sends nothing
//! for the `--timeout`.
//!
//! # One thread per side
//!
//! The event loop reads and writes the socket itself ([`Socket`], on
//! `mio`): it sleeps in one `epoll` wait that the peer's bytes, a worker's
//! result, a device frame and Ctrl-C all end (the threads that produce
//! those wake it through [`Inbox`]). A peer's message costs one wake-up,
//! as it does between two sides in one process; a reader thread in
//! between would add a second, and Cascade exchanges hundreds of messages
//! per block. The socket is non-blocking: what cannot be written at once
//! waits in a buffer and goes when the socket is writable again, so the
//! two sides never block on each other.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
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
    /// A TCP connection the event loop reads and writes itself.
    Tcp(Box<Socket>),
    /// The peer's input queue, in the same process.
    Memory(Inbox),
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
            Outgoing::Tcp(mut s) => s.finish(),
            Outgoing::Memory(tx) => {
                let _ = tx.send(Input::PeerClosed);
            }
            Outgoing::Closed => {}
        }
    }
}

/// Where the threads around an event loop (device, workers, Ctrl-C, the
/// control surface, the peer in the same process) put its inputs: a queue,
/// and for a TCP side the waker of its `epoll` wait.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: Sender<Input>,
    waker: Option<Arc<Waker>>,
}

impl Inbox {
    /// A queue and its receiving end; `waker` ends the loop's wait on a
    /// socket (none for a side linked in memory, which waits on the queue).
    pub(crate) fn new(waker: Option<Arc<Waker>>) -> (Inbox, Receiver<Input>) {
        let (tx, rx) = mpsc::channel();
        (Inbox { tx, waker }, rx)
    }

    /// Queues `input` and wakes the loop; `Err` when the loop has gone.
    pub(crate) fn send(&self, input: Input) -> Result<(), Input> {
        self.tx.send(input).map_err(|e| e.0)?;
        if let Some(w) = &self.waker {
            // A failed wake leaves the input queued: the loop still takes
            // it at its next turn (its waits are bounded).
            let _ = w.wake();
        }
        Ok(())
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

/// Bytes read ahead of the frame being assembled before reading pauses
/// (so a peer that floods the socket cannot grow the buffer without
/// bound: at most one frame plus this).
const READ_AHEAD: usize = 1 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 1 << 16;

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// A connected peer, read and written by the event loop without blocking.
pub(crate) struct Socket {
    stream: mio::net::TcpStream,
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    /// Bytes read and not yet taken as frames: `read[taken..]`.
    read: Vec<u8>,
    taken: usize,
    /// The socket may hold more bytes (it has not said "would block" since
    /// its last readiness, or reading paused at [`READ_AHEAD`]).
    readable: bool,
    /// The peer's end of stream, a read error or a bad frame was seen.
    ended: Option<Ending>,
    /// Reported to the loop already (the end is reported once).
    told: bool,
    /// Bytes waiting to be written: `write[sent..]`.
    write: Vec<u8>,
    sent: usize,
    /// Interest in writability is registered (only while bytes wait).
    want_write: bool,
    /// Shut the write half down once `write` is empty.
    closing: bool,
    shut: bool,
    last_heard: Instant,
    timeout: Duration,
}

enum Ending {
    Clean,
    Failed(String),
}

impl Socket {
    /// Takes a greeted stream over; `timeout` is the `--timeout` after
    /// which a silent peer ends the link.
    pub(crate) fn new(stream: TcpStream, timeout: Duration) -> io::Result<Socket> {
        stream.set_read_timeout(None)?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut stream, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(Socket {
            stream,
            poll,
            events: Events::with_capacity(8),
            waker,
            read: Vec::new(),
            taken: 0,
            readable: true,
            ended: None,
            told: false,
            write: Vec::new(),
            sent: 0,
            want_write: false,
            closing: false,
            shut: false,
            last_heard: Instant::now(),
            timeout,
        })
    }

    /// The waker for this socket's [`Inbox`].
    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if self.closing {
            return Ok(());
        }
        let len = u32::try_from(datagram.len())
            .ok()
            .filter(|&l| l > 0 && l <= MAX_FRAME_BYTES)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "datagram too long to send")
            })?;
        self.write.extend_from_slice(&len.to_be_bytes());
        self.write.extend_from_slice(datagram);
        Ok(())
    }

    /// Writes what the socket takes now; registers for writability if
    /// bytes are left, and shuts the write half once all went when closing.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.write.len() {
            match self.stream.write(&self.write[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let left = self.sent < self.write.len();
        if !left {
            self.write.clear();
            self.sent = 0;
        } else if self.sent > self.write.len() / 2 {
            self.write.drain(..self.sent);
            self.sent = 0;
        }
        if left != self.want_write {
            let interest = if left {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll
                .registry()
                .reregister(&mut self.stream, SOCKET, interest)?;
            self.want_write = left;
        }
        if !left && self.closing && !self.shut {
            self.shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn close_when_sent(&mut self) {
        self.closing = true;
        let _ = self.flush();
    }

    /// Waits (at most the `--timeout`) for the buffer to go out, then shuts
    /// the write half down. Used once the loop has stopped: nobody reads
    /// any more, so the socket goes back to blocking writes.
    fn finish(&mut self) {
        self.closing = true;
        if self.sent < self.write.len() {
            let _ = self.poll.registry().deregister(&mut self.stream);
            let std = std_stream(&self.stream);
            if let Some(mut s) = std {
                let ok = s.set_nonblocking(false).is_ok()
                    && s.set_write_timeout(Some(self.timeout)).is_ok();
                if ok {
                    let _ = s.write_all(&self.write[self.sent..]);
                }
            }
            self.write.clear();
            self.sent = 0;
        }
        if !self.shut {
            self.shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// The next input the socket holds (a frame, or the end of the link),
    /// reading what the socket has if the buffer holds no whole frame;
    /// `None` if nothing is there yet. Never blocks.
    pub(crate) fn next_input(&mut self, now: Instant) -> Option<Input> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            if self.ended.is_none() && self.readable {
                self.fill(now);
                continue;
            }
            break;
        }
        if self.told {
            return None;
        }
        if self.ended.is_none() && now.duration_since(self.last_heard) >= self.timeout {
            self.ended = Some(Ending::Failed(format!(
                "the peer sent nothing for {:.1} s (--timeout)",
                self.timeout.as_secs_f64()
            )));
        }
        let input = match self.ended.as_ref()? {
            Ending::Clean if self.taken == self.read.len() => Input::PeerClosed,
            Ending::Clean => Input::PeerFailed("the peer closed the connection in a frame".into()),
            Ending::Failed(reason) => Input::PeerFailed(reason.clone()),
        };
        self.told = true;
        Some(input)
    }

    /// A whole frame from the buffer, or the end of the link on a bad length.
    fn take_frame(&mut self) -> Option<Input> {
        let have = &self.read[self.taken..];
        let len = u32::from_be_bytes(have.get(..4)?.try_into().ok()?);
        if len == 0 || len > MAX_FRAME_BYTES {
            if self.ended.is_none() || matches!(self.ended, Some(Ending::Clean)) {
                self.ended = Some(Ending::Failed(format!(
                    "the peer sent a frame of {len} bytes (allowed: 1 to {MAX_FRAME_BYTES})"
                )));
            }
            // Nothing after a bad length is read as a frame.
            self.taken = self.read.len();
            return None;
        }
        let end = 4 + len as usize;
        let frame = have.get(4..end)?.to_vec();
        self.taken += end;
        if self.taken == self.read.len() {
            self.read.clear();
            self.taken = 0;
        }
        Some(Input::Peer(frame))
    }

    /// Reads until the socket would block, the peer's end, or
    /// [`READ_AHEAD`] bytes beyond the frame being assembled.
    fn fill(&mut self, now: Instant) {
        if self.taken > 0 {
            self.read.drain(..self.taken);
            self.taken = 0;
        }
        let need = self.read.get(..4).map_or(4, |l| {
            4 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize
        });
        let limit = need.min(4 + MAX_FRAME_BYTES as usize) + READ_AHEAD;
        while self.read.len() < limit {
            let at = self.read.len();
            self.read.resize(at + READ_CHUNK, 0);
            let result = self.stream.read(&mut self.read[at..]);
            match result {
                Ok(0) => {
                    self.read.truncate(at);
                    self.ended = Some(Ending::Clean);
                    self.readable = false;
                    return;
                }
                Ok(n) => {
                    self.read.truncate(at + n);
                    self.last_heard = now;
                }
                Err(e) => {
                    self.read.truncate(at);
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => {
                            self.readable = false;
                            return;
                        }
                        _ => {
                            self.ended =
                                Some(Ending::Failed(format!("reading from the peer failed: {e}")));
                            self.readable = false;
                            return;
                        }
                    }
                }
            }
        }
        // Paused at the limit: `readable` stays set, the loop reads on
        // once frames have been taken.
    }

    /// Waits until the peer's bytes, writability (while bytes wait) or the
    /// waker, at most `wait` and never past the silence deadline.
    pub(crate) fn wait(&mut self, wait: Duration, now: Instant) -> io::Result<()> {
        let silence = (self.last_heard + self.timeout).saturating_duration_since(now);
        let wait = if self.ended.is_some() {
            wait
        } else {
            wait.min(silence)
        };
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut writable = false;
        for event in &self.events {
            if event.token() == SOCKET {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.readable = true;
                }
                if event.is_writable() || event.is_write_closed() {
                    writable = true;
                }
            }
        }
        if writable {
            self.flush()?;
        }
        Ok(())
    }
}

/// A second handle on the socket as a std stream (for the blocking final
/// write), or `None` if the descriptor cannot be duplicated.
fn std_stream(stream: &mio::net::TcpStream) -> Option<TcpStream> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let fd = stream.as_fd().try_clone_to_owned().ok()?;
        Some(TcpStream::from(fd))
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        None
    }
}
