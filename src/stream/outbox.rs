//! A consumer's connection as it sends, for the firehose and Jetstream alike: stream messages go
//! out as a [`Batch`] straight from shared buffers, tungstenite's own frames (pongs, pings,
//! close) only between batches. A batch starts only once tungstenite's buffer is flushed, and
//! tungstenite is touched (read, written, flushed) only while no batch is under way, because it
//! may write as it reads (a pong): so a partial write of one never splits the other.

use super::batch::{Batch, Kind, Payload};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The socket as tungstenite and the batch see it: counts bytes sent, and bounds how long one
/// round of writes may run. tungstenite retries partial writes in a loop, so against a client
/// whose window opens a few bytes at a time a single flush could otherwise last forever.
pub struct Counted {
    inner: TcpStream,
    written: u64,
    deadline: Option<Instant>,
}

impl Read for Counted {
    /// Never waits. A consumer reads only to see whether the client sent something, then parks
    /// on the ring; a socket read timeout would hold every idle turn (and the next event) for a
    /// whole scheduler tick, since the kernel rounds it up to one (4 ms at HZ=250). It is one
    /// `recv(MSG_DONTWAIT)`: writes must keep blocking, and switching the socket to
    /// non-blocking and back around each read cost two more syscalls per wake-up.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsRawFd;
        recv(self.inner.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }
}

impl Counted {
    /// One write to the socket, refused once the deadline has passed, and counted.
    fn counted(
        &mut self,
        w: impl FnOnce(&mut TcpStream) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = w(&mut self.inner)?;
        self.written += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.counted(|s| s.write(buf))
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.counted(|s| s.write_vectored(bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The connection is gone (a write or read failed for a reason other than a full socket).
#[derive(Debug)]
pub struct Lost;

/// One consumer's connection.
pub struct Outbox {
    ws: WebSocket<Counted>,
    batch: Batch,
    /// tungstenite holds bytes the socket has not taken yet.
    own_pending: bool,
}

impl Outbox {
    /// `config` bounds what the client may send. A write blocks at most `write_timeout`.
    pub fn new(stream: TcpStream, config: WebSocketConfig, write_timeout: Duration) -> Outbox {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(write_timeout));
        let ws = WebSocket::from_raw_socket(
            Counted {
                inner: stream,
                written: 0,
                deadline: None,
            },
            Role::Server,
            Some(config),
        );
        Outbox {
            ws,
            batch: Batch::default(),
            own_pending: false,
        }
    }

    /// Every write from now on must start within `within`; what does not fit stays queued.
    pub fn set_deadline(&mut self, within: Duration) {
        self.ws.get_mut().deadline = Some(Instant::now() + within);
    }

    /// The largest client message accepted (0: no limit).
    pub fn max_message_size(&self) -> usize {
        self.ws.get_config().max_message_size.unwrap_or(0)
    }

    /// Bytes the socket has taken so far.
    pub fn bytes_written(&self) -> u64 {
        self.ws.get_ref().written
    }

    /// While no batch is under way, writes what tungstenite holds (costs no syscall when it
    /// holds nothing). `Ok(true)` if that finished bytes that had been waiting.
    pub fn flush_own(&mut self) -> Result<bool, Lost> {
        if !self.batch.is_empty() {
            return Ok(false);
        }
        match self.ws.flush() {
            Ok(()) => Ok(std::mem::take(&mut self.own_pending)),
            Err(e) if crate::util::net::ws_timed_out(&e) => {
                self.own_pending = true;
                Ok(false)
            }
            Err(_) => Err(Lost),
        }
    }

    /// Whether a new batch may be filled: nothing of ours or tungstenite's is waiting.
    pub fn ready(&self) -> bool {
        self.batch.is_empty() && !self.own_pending
    }

    /// Whether a batch is under way (queued and not all written).
    pub fn writing(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Queues a message for the batch being filled.
    pub fn push(&mut self, payload: Payload, kind: Kind) {
        self.batch.push(payload, kind);
    }

    /// Bytes queued in the batch, written or not.
    pub fn queued(&self) -> usize {
        self.batch.len()
    }

    /// Writes what is left of the batch. `Ok(true)` once a batch has gone out whole; `Ok(false)`
    /// if there was none or the socket would take no more now.
    pub fn write(&mut self) -> Result<bool, Lost> {
        if self.batch.is_empty() {
            return Ok(false);
        }
        self.batch.write_to(self.ws.get_mut()).map_err(|_| Lost)
    }

    /// The next message the client sent, without waiting; `None` when there is none now or a
    /// batch is under way. Pings are answered (tungstenite queues the pong).
    pub fn read(&mut self) -> Result<Option<Message>, tungstenite::Error> {
        if !self.batch.is_empty() {
            return Ok(None);
        }
        match self.ws.read() {
            Ok(m) => Ok(Some(m)),
            Err(e) if crate::util::net::ws_timed_out(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a ping, unless a batch is under way (then the stream itself shows the connection
    /// lives).
    pub fn ping(&mut self) -> Result<(), Lost> {
        if !self.batch.is_empty() {
            return Ok(());
        }
        match self.ws.send(Message::Ping(bytes::Bytes::new())) {
            Ok(()) => Ok(()),
            Err(e) if crate::util::net::ws_timed_out(&e) => {
                self.own_pending = true;
                Ok(())
            }
            Err(_) => Err(Lost),
        }
    }

    /// Ends the connection, best effort within `within`: what is queued, then `last` (a
    /// message saying why), then `close`. The client may still be draining its buffer, so it
    /// can yet read why it was dropped.
    pub fn finish(
        &mut self,
        last: Option<(Payload, Kind)>,
        close: Option<CloseFrame>,
        within: Duration,
    ) {
        let give_up = Instant::now() + within;
        self.ws.get_mut().deadline = Some(give_up);
        if let Some((p, kind)) = last {
            // A batch is empty while tungstenite's bytes wait, so this follows them in order.
            self.batch.push(p, kind);
        }
        while Instant::now() < give_up {
            if self.own_pending {
                match self.ws.flush() {
                    Ok(()) => self.own_pending = false,
                    Err(e) if crate::util::net::ws_timed_out(&e) => {}
                    Err(_) => return,
                }
                continue;
            }
            match self.batch.write_to(self.ws.get_mut()) {
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return,
            }
        }
        if self.batch.is_empty() && !self.own_pending {
            let _ = self.ws.close(close);
            let _ = self.ws.flush();
        }
    }
}
