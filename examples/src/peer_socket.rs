//! The TCP connection between the two ends of a distillation pipeline,
//! read and written by the side's event loop itself, and the inbox through
//! which that loop's other inputs (device frames, workers' results, a
//! signal) reach it.
//!
//! ```text
//! frame: length u32 (big-endian, 1 ..= MAX_FRAME_BYTES) | one pipeline datagram
//! ```
//!
//! # One wait per side
//!
//! The loop sleeps in one `epoll` wait ([`PeerSocket::wait`], on `mio`)
//! that the peer's bytes end, and so does any thread that puts an input
//! into the loop's [`Inbox`] (it wakes the wait). A peer's message then
//! costs one thread wake-up, as it does between two sides in one process;
//! a reader thread between the socket and the loop adds a second, and
//! Cascade exchanges hundreds of messages per block (measured with
//! `qkd-link` on a quiet machine: two processes went from a median 0.84 of
//! the in-process rate with a reader thread to 0.94 with one wait,
//! BENCHMARKS.md).
//!
//! The socket is non-blocking: what it cannot take at once waits in a
//! buffer and goes when the socket is writable again, so the two sides
//! never block on each other. Reading is bounded: at most one frame plus
//! [`READ_AHEAD`] bytes are held, and a frame's buffer grows with the bytes
//! that arrive, never from the announced length alone.
//!
//! # Example
//!
//! ```
//! use std::net::{TcpListener, TcpStream};
//! use std::time::{Duration, Instant};
//! use qkd_examples::peer_socket::{PeerSocket, Received};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let a = TcpStream::connect(listener.local_addr()?)?;
//! let (b, _) = listener.accept()?;
//! let (mut a, mut b) = (PeerSocket::new(a, None)?, PeerSocket::new(b, None)?);
//! a.send(b"sift announcement")?;
//! a.flush()?;
//! let got = loop {
//!     if let Some(r) = b.receive(Instant::now()) {
//!         break r;
//!     }
//!     b.wait(Duration::from_secs(5), Instant::now())?;
//! };
//! assert_eq!(got, Received::Datagram(b"sift announcement".to_vec()));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use qkd_core::wire::{StreamFrame, put_stream_frame, stream_frame};

/// Largest frame accepted from the peer or sent to it (64 MiB): above the
/// largest datagram the pipeline sends (a sift announcement of a frame of
/// 2^26 slots). The framing is [`qkd_core::wire::stream_frame`]'s.
pub const MAX_FRAME_BYTES: u32 = qkd_core::wire::MAX_STREAM_FRAME;

/// Bytes read ahead of the frame being assembled before reading pauses.
pub const READ_AHEAD: usize = 1 << 20;

/// Bytes queued for a peer that does not read, past which
/// [`PeerSocket::send`] refuses more (256 MiB: four of the largest frames;
/// the pipeline's own windows keep an honest link far below it).
pub const MAX_QUEUED_BYTES: usize = 256 << 20;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 1 << 16;

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// What the peer's side of the connection gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// One datagram.
    Datagram(Vec<u8>),
    /// The peer closed its end cleanly, between two frames.
    Closed,
    /// The connection is unusable: why.
    Failed(PeerFault),
}

/// Why the connection to the peer ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFault {
    /// Nothing arrived for the silence limit given to [`PeerSocket::new`].
    #[error("the peer sent nothing for {:.1} s", .0.as_secs_f64())]
    Silent(Duration),
    /// A frame length of 0 or above [`MAX_FRAME_BYTES`].
    #[error("the peer sent a frame of {0} bytes (allowed: 1 to {MAX_FRAME_BYTES})")]
    FrameLength(u32),
    /// The stream ended inside a frame.
    #[error("the peer closed the connection in a frame")]
    EndedInFrame,
    /// Reading failed.
    #[error("reading from the peer failed: {0}")]
    Read(String),
}

/// A connected peer, read and written by one event loop without blocking.
pub struct PeerSocket {
    stream: mio::net::TcpStream,
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    /// Bytes read and not yet taken as frames: `read[taken..]`.
    read: Vec<u8>,
    taken: usize,
    /// The socket may hold more bytes (no "would block" since its last
    /// readiness, or reading paused at [`READ_AHEAD`]).
    readable: bool,
    /// How reading ended (end of stream, an error, a bad frame length).
    ended: Option<Ending>,
    /// The end was reported (it is reported once).
    told: bool,
    /// Bytes waiting to be written: `write[sent..]`.
    write: Vec<u8>,
    sent: usize,
    /// Writability is registered (only while bytes wait).
    want_write: bool,
    /// Shut the write half down once `write` is empty.
    closing: bool,
    shut: bool,
    last_heard: Instant,
    silence: Option<Duration>,
}

enum Ending {
    Clean,
    Failed(PeerFault),
}

impl PeerSocket {
    /// Takes a connected (and greeted) stream over. With `silence`, a peer
    /// that sends nothing for that long ends the connection
    /// ([`PeerFault::Silent`]).
    ///
    /// # Errors
    /// The socket cannot be made non-blocking or registered for waiting.
    pub fn new(stream: TcpStream, silence: Option<Duration>) -> io::Result<PeerSocket> {
        stream.set_read_timeout(None)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut stream, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(PeerSocket {
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
            silence,
        })
    }

    /// The waker of this socket's wait, for the loop's [`Inbox`].
    #[must_use]
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Queues one datagram (nothing after [`close_when_sent`](Self::close_when_sent)).
    ///
    /// # Errors
    /// `InvalidInput` for an empty datagram or one above [`MAX_FRAME_BYTES`];
    /// `WouldBlock` when more than [`MAX_QUEUED_BYTES`] wait for a peer
    /// that does not read (the datagram is not queued).
    pub fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if self.closing {
            return Ok(());
        }
        if self.write.len() - self.sent + datagram.len() > MAX_QUEUED_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the peer has not read the last {} MiB sent to it",
                    (self.write.len() - self.sent) >> 20
                ),
            ));
        }
        put_stream_frame(&mut self.write, datagram).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a datagram of {} bytes cannot be sent", datagram.len()),
            )
        })
    }

    /// Writes what the socket takes now; the rest goes when it is writable
    /// again (the wait watches for that while bytes are left). Once all is
    /// out after [`close_when_sent`](Self::close_when_sent), shuts the
    /// write half down.
    ///
    /// # Errors
    /// A write error other than "would block".
    pub fn flush(&mut self) -> io::Result<()> {
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

    /// "Nothing more from this side": later datagrams are dropped, and the
    /// write half is shut down once the queued bytes have gone, while
    /// reading goes on (the peer sees end of stream after the last frame).
    pub fn close_when_sent(&mut self) {
        self.closing = true;
        let _ = self.flush();
    }

    /// Closes for good once the loop has stopped: waits at most `limit` for
    /// the queued bytes to go (blocking; nobody reads any more), then shuts
    /// the write half down.
    pub fn finish(&mut self, limit: Duration) {
        self.closing = true;
        if self.sent < self.write.len() {
            let _ = self.poll.registry().deregister(&mut self.stream);
            if let Some(mut s) = blocking_handle(&self.stream)
                && s.set_nonblocking(false).is_ok()
                && s.set_write_timeout(Some(limit.max(Duration::from_millis(1))))
                    .is_ok()
            {
                let _ = s.write_all(&self.write[self.sent..]);
            }
            self.write.clear();
            self.sent = 0;
        }
        if !self.shut {
            self.shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// The next thing the peer gave: a whole datagram, or the end of the
    /// connection (reported once); reads what the socket holds if the
    /// buffer has no whole frame. `None`: nothing yet. Never blocks.
    pub fn receive(&mut self, now: Instant) -> Option<Received> {
        loop {
            if let Some(datagram) = self.take_frame() {
                return Some(Received::Datagram(datagram));
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
        if self.ended.is_none()
            && let Some(limit) = self.silence
            && now.duration_since(self.last_heard) >= limit
        {
            self.ended = Some(Ending::Failed(PeerFault::Silent(limit)));
        }
        let received = match self.ended.as_ref()? {
            Ending::Clean if self.taken == self.read.len() => Received::Closed,
            Ending::Clean => Received::Failed(PeerFault::EndedInFrame),
            Ending::Failed(fault) => Received::Failed(fault.clone()),
        };
        self.told = true;
        Some(received)
    }

    /// A whole frame from the buffer; a bad length ends the connection.
    fn take_frame(&mut self) -> Option<Vec<u8>> {
        let have = &self.read[self.taken..];
        let range = match stream_frame(have) {
            StreamFrame::Whole(range) => range,
            StreamFrame::Partial => return None,
            StreamFrame::BadLength(len) => {
                if !matches!(self.ended, Some(Ending::Failed(_))) {
                    self.ended = Some(Ending::Failed(PeerFault::FrameLength(len)));
                }
                // Nothing after a bad length is read as a frame.
                self.read.clear();
                self.taken = 0;
                return None;
            }
        };
        let datagram = have[range.clone()].to_vec();
        self.taken += range.end;
        if self.taken == self.read.len() {
            self.read.clear();
            self.taken = 0;
        }
        Some(datagram)
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
            let got = *result.as_ref().unwrap_or(&0);
            self.read.truncate(at + got);
            match result {
                Ok(0) => {
                    self.ended = Some(Ending::Clean);
                    self.readable = false;
                    return;
                }
                Ok(_) => self.last_heard = now,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return;
                }
                Err(e) => {
                    self.ended = Some(Ending::Failed(PeerFault::Read(e.to_string())));
                    self.readable = false;
                    return;
                }
            }
        }
        // Paused at the limit: `readable` stays set and reading goes on
        // once frames have been taken.
    }

    /// Waits until the peer's bytes arrive, the socket becomes writable
    /// (while bytes wait), or the [`Inbox`]'s waker is woken; at most
    /// `wait`, and never past the silence limit.
    ///
    /// # Errors
    /// The wait itself failed, or a write it set off failed.
    pub fn wait(&mut self, wait: Duration, now: Instant) -> io::Result<()> {
        let wait = match self.silence {
            Some(limit) if self.ended.is_none() => {
                wait.min((self.last_heard + limit).saturating_duration_since(now))
            }
            _ => wait,
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

/// Where a loop's next input came from.
#[derive(Debug)]
pub enum Next<T> {
    /// The peer's connection.
    Peer(Received),
    /// The loop's [`Inbox`].
    Inbox(T),
}

/// The next input of an event loop that waits on `socket` and on the
/// receiving end of its [`Inbox`]: what the socket holds first, then what
/// the inbox holds; with `wait`, waits at most that long (once) when
/// neither holds anything, without, only takes what is there. An inbox
/// whose senders have all gone is not an error: the socket is still an
/// input.
///
/// # Errors
/// The wait failed ([`PeerSocket::wait`]).
pub fn next_input<T>(
    socket: &mut PeerSocket,
    inbox: &Receiver<T>,
    wait: Option<Duration>,
) -> io::Result<Option<Next<T>>> {
    let mut waited = false;
    loop {
        let now = Instant::now();
        if let Some(r) = socket.receive(now) {
            return Ok(Some(Next::Peer(r)));
        }
        match inbox.try_recv() {
            Ok(i) => return Ok(Some(Next::Inbox(i))),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        match wait {
            Some(wait) if !waited => {
                socket.wait(wait, now)?;
                waited = true;
            }
            _ => return Ok(None),
        }
    }
}

/// A blocking std handle on the same socket (for the final write), or
/// `None` where the descriptor cannot be duplicated.
fn blocking_handle(stream: &mio::net::TcpStream) -> Option<TcpStream> {
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

/// Where the threads around an event loop (device, workers, a signal, the
/// control surface, a peer in the same process) put its inputs: a queue,
/// and for a loop that waits on a [`PeerSocket`] the waker of that wait.
pub struct Inbox<T> {
    tx: Sender<T>,
    waker: Option<Arc<Waker>>,
}

impl<T> Clone for Inbox<T> {
    fn clone(&self) -> Self {
        Inbox {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> Inbox<T> {
    /// A queue and its receiving end; `waker` ends the loop's socket wait
    /// (none for a loop that waits on the queue itself).
    #[must_use]
    pub fn new(waker: Option<Arc<Waker>>) -> (Inbox<T>, Receiver<T>) {
        let (tx, rx) = mpsc::channel();
        (Inbox { tx, waker }, rx)
    }

    /// Queues `input` and wakes the loop.
    ///
    /// # Errors
    /// The input back when the loop has gone.
    pub fn send(&self, input: T) -> Result<(), T> {
        self.tx.send(input).map_err(|e| e.0)?;
        if let Some(w) = &self.waker {
            // A failed wake leaves the input queued: the loop takes it at
            // its next turn (its waits are bounded).
            let _ = w.wake();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    /// Takes everything `s` receives until its end (or 20 s).
    fn drain(s: &mut PeerSocket) -> Vec<Received> {
        let start = Instant::now();
        let mut got = Vec::new();
        while start.elapsed() < Duration::from_secs(20) {
            match s.receive(Instant::now()) {
                Some(r @ (Received::Closed | Received::Failed(_))) => {
                    got.push(r);
                    return got;
                }
                Some(r) => got.push(r),
                None => s.wait(Duration::from_millis(200), Instant::now()).unwrap(),
            }
        }
        panic!("no end after 20 s: {} received", got.len());
    }

    /// Datagrams larger than the socket buffers, both ways at once, with
    /// neither side reading until it has queued everything: nothing
    /// blocks, everything arrives in order, then a clean end.
    #[test]
    fn large_datagrams_both_ways_arrive_whole_and_in_order() {
        let (a, b) = pair();
        fn make(tag: u8) -> Vec<Vec<u8>> {
            [1usize, 3 << 20, 17, 1 << 20, 65_536, 5]
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (j as u8) ^ tag ^ (i as u8)).collect())
                .collect()
        }
        let run = move |stream: TcpStream, tag: u8, other: u8| {
            let mut s = PeerSocket::new(stream, None).unwrap();
            for d in make(tag) {
                s.send(&d).unwrap();
            }
            s.close_when_sent();
            let mut got = Vec::new();
            loop {
                match s.receive(Instant::now()) {
                    Some(Received::Datagram(d)) => got.push(d),
                    Some(Received::Closed) => break,
                    Some(Received::Failed(f)) => panic!("{f}"),
                    None => s.wait(Duration::from_millis(200), Instant::now()).unwrap(),
                }
            }
            // Whatever is still queued goes out while waiting above; the
            // peer's end came after its last frame.
            s.finish(Duration::from_secs(5));
            assert_eq!(got, make(other));
        };
        let t = thread::spawn(move || run(b, 2, 1));
        run(a, 1, 2);
        t.join().unwrap();
    }

    #[test]
    fn bad_lengths_a_cut_frame_and_silence_end_the_connection() {
        use std::io::Write as _;
        let cases: [(&[u8], bool, PeerFault); 3] = [
            (&[0, 0, 0, 0], false, PeerFault::FrameLength(0)),
            (
                &[0x04, 0, 0, 1, 9, 9],
                false,
                PeerFault::FrameLength((64 << 20) + 1),
            ),
            (&[0, 0, 0, 9, 1, 2, 3], true, PeerFault::EndedInFrame),
        ];
        for (bytes, close, fault) in cases {
            let (mut a, b) = pair();
            let mut s = PeerSocket::new(b, None).unwrap();
            a.write_all(&[0, 0, 0, 2, 7, 7]).unwrap();
            a.write_all(bytes).unwrap();
            if close {
                a.shutdown(Shutdown::Write).unwrap();
            }
            let got = drain(&mut s);
            assert_eq!(
                got,
                vec![Received::Datagram(vec![7, 7]), Received::Failed(fault)]
            );
            // Reported once.
            assert_eq!(s.receive(Instant::now()), None);
        }
        let (_a, b) = pair();
        let limit = Duration::from_millis(300);
        let mut s = PeerSocket::new(b, Some(limit)).unwrap();
        let start = Instant::now();
        assert_eq!(
            drain(&mut s),
            vec![Received::Failed(PeerFault::Silent(limit))]
        );
        assert!(start.elapsed() >= limit);
    }

    #[test]
    fn an_inbox_send_ends_the_wait() {
        let (_a, b) = pair();
        let mut s = PeerSocket::new(b, None).unwrap();
        let (inbox, rx) = Inbox::new(Some(s.waker()));
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            inbox.send(42u32).unwrap();
        });
        let start = Instant::now();
        s.wait(Duration::from_secs(20), Instant::now()).unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
        t.join().unwrap();
        assert_eq!(rx.try_recv(), Ok(42));
    }

    /// A peer that never reads: the queue stops at its bound with an
    /// error instead of growing, and nothing blocks.
    #[test]
    fn a_peer_that_does_not_read_is_refused_at_the_bound() {
        let (_a, b) = pair();
        let mut s = PeerSocket::new(b, None).unwrap();
        let datagram = vec![5u8; 32 << 20];
        let mut queued = 0usize;
        let err = loop {
            match s.send(&datagram) {
                Ok(()) => queued += datagram.len(),
                Err(e) => break e,
            }
            s.flush().unwrap();
            assert!(queued <= MAX_QUEUED_BYTES + (64 << 20), "no bound");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("has not read"), "{err}");
    }

    #[test]
    fn oversized_and_empty_datagrams_are_not_sent() {
        let (_a, b) = pair();
        let mut s = PeerSocket::new(b, None).unwrap();
        assert!(s.send(&[]).is_err());
        assert!(s.send(&vec![0u8; MAX_FRAME_BYTES as usize + 1]).is_err());
        assert!(s.send(&[1]).is_ok());
    }
}
