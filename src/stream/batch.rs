//! A consumer's outgoing batch: WebSocket messages written with vectored writes straight from
//! shared buffers (the ring's frames, Jetstream's encoded events).
//!
//! Sending through tungstenite copied every frame into that consumer's write buffer and took a
//! reference on the frame's payload, a count every consumer thread contends for; with 1,000
//! consumers the copy alone was a fifth of a consumer thread's time. Here the two-to-ten-byte
//! header is all a consumer makes of a frame, and the kernel copies the payload from the one
//! shared buffer.
//!
//! tungstenite still owns the connection's other frames (pongs, pings, close); `Outbox` keeps
//! the two apart.

use super::eventlog::LogFrame;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// At most this many slices per `writev` (Linux's `IOV_MAX` is 1024).
const MAX_SLICES: usize = 1024;

/// A message's payload.
pub enum Payload {
    /// A ring (or log) frame, shared with every other consumer.
    Shared(Arc<LogFrame>),
    /// A frame of this consumer's own (`#info`, an error).
    Owned(Vec<u8>),
    /// The `i`-th of several payloads held in one shared value (a frame's Jetstream events).
    Piece(Arc<dyn Pieces>, usize),
}

/// Payloads kept together in one shared value, each sent as its own message: a consumer takes
/// one reference on the value per message, and the payloads need no reference-counted buffer
/// each (making and freeing those, on whichever thread dropped the last reference, was a tenth
/// of a Jetstream thread's time).
pub trait Pieces: Send + Sync {
    /// The `i`-th payload; empty if there is none.
    fn piece(&self, i: usize) -> &[u8];
}

/// A message's WebSocket opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Shared(f) => &f.bytes,
            Payload::Owned(b) => b,
            Payload::Piece(p, i) => p.piece(*i),
        }
    }
}

struct Message {
    header: [u8; 10],
    header_len: usize,
    payload: Payload,
}

impl Message {
    /// A final, unmasked (server-to-client) frame: RFC 6455 §5.2.
    fn new(payload: Payload, kind: Kind) -> Message {
        let len = payload.bytes().len();
        let mut header = [0u8; 10];
        header[0] = match kind {
            Kind::Text => 0x81,
            Kind::Binary => 0x82,
        };
        let header_len = if len < 126 {
            header[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            header[1] = 126;
            header[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Message {
            header,
            header_len,
            payload,
        }
    }

    fn parts(&self) -> [&[u8]; 2] {
        [&self.header[..self.header_len], self.payload.bytes()]
    }
}

/// Messages queued for one consumer, and how much of them the socket has taken.
#[derive(Default)]
pub struct Batch {
    messages: Vec<Message>,
    /// Bytes of all queued messages, headers included.
    len: usize,
    /// Bytes already written.
    written: usize,
}

impl Batch {
    /// Queues a message. A `Text` payload must be UTF-8 (clients close on one that is not).
    pub fn push(&mut self, payload: Payload, kind: Kind) {
        let m = Message::new(payload, kind);
        self.len += m.header_len + m.payload.bytes().len();
        self.messages.push(m);
    }

    /// Nothing queued (or all of it written).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Bytes queued, written or not.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes what is left. `Ok(true)` once all of it is out (the batch is then empty again);
    /// `Ok(false)` when the writer would not take more now (it timed out or would block).
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while self.written < self.len {
            match w.write_vectored(&self.unwritten()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if crate::util::net::timed_out(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.messages.clear();
        self.len = 0;
        self.written = 0;
        Ok(true)
    }

    /// The unwritten bytes as slices, at most [`MAX_SLICES`].
    fn unwritten(&self) -> Vec<IoSlice<'_>> {
        let mut skip = self.written;
        let mut out = Vec::with_capacity((self.messages.len() * 2).min(MAX_SLICES));
        for part in self.messages.iter().flat_map(Message::parts) {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            out.push(IoSlice::new(&part[skip..]));
            skip = 0;
            if out.len() == MAX_SLICES {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};
    use tungstenite::protocol::{Role, WebSocket};

    /// Takes at most 7 bytes a call and refuses every other call, like a full socket.
    #[derive(Default)]
    struct Trickle {
        out: Vec<u8>,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(7);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Pieces for Vec<Vec<u8>> {
        fn piece(&self, i: usize) -> &[u8] {
            self.get(i).map_or(&[], Vec::as_slice)
        }
    }

    /// What a client reads from `wire`.
    fn client_reads(wire: Vec<u8>) -> Vec<Vec<u8>> {
        client_messages(wire)
            .into_iter()
            .map(|m| m.into_data().to_vec())
            .collect()
    }

    fn client_messages(wire: Vec<u8>) -> Vec<tungstenite::Message> {
        struct Duplex(Cursor<Vec<u8>>);
        impl Read for Duplex {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut ws = WebSocket::from_raw_socket(Duplex(Cursor::new(wire)), Role::Client, None);
        let mut got = Vec::new();
        while let Ok(m) = ws.read() {
            got.push(m);
        }
        got
    }

    #[test]
    fn every_length_form_survives_partial_writes() {
        let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
            .collect();
        let mut b = Batch::default();
        for (i, p) in payloads.iter().enumerate() {
            match i % 3 {
                0 => b.push(Payload::Owned(p.clone()), Kind::Binary),
                1 => b.push(
                    Payload::Shared(Arc::new(LogFrame {
                        seq: i as u64,
                        time_us: 0,
                        did_hash: 0,
                        kind: 0,
                        bytes: bytes::Bytes::from(p.clone()),
                    })),
                    Kind::Binary,
                ),
                _ => b.push(Payload::Piece(Arc::new(vec![p.clone()]), 0), Kind::Binary),
            }
        }
        let mut w = Trickle::default();
        let mut rounds = 0;
        while !b.write_to(&mut w).expect("no hard error") {
            rounds += 1;
            assert!(rounds < 1_000_000, "a trickling writer still finishes");
        }
        assert!(b.is_empty());
        assert_eq!(b.len(), 0, "a written batch starts over");
        assert_eq!(client_reads(w.out), payloads);
    }

    #[test]
    fn text_messages_arrive_as_text() {
        let texts = ["{\"did\":\"did:plc:a\"}", "caf\u{e9} \u{1f600}", ""];
        let mut b = Batch::default();
        let shared: Arc<Vec<Vec<u8>>> =
            Arc::new(texts.iter().map(|t| t.as_bytes().to_vec()).collect());
        for i in 0..texts.len() {
            b.push(Payload::Piece(shared.clone(), i), Kind::Text);
        }
        b.push(Payload::Owned(vec![0xff, 0x00]), Kind::Binary);
        let mut w = Trickle::default();
        while !b.write_to(&mut w).expect("no hard error") {}
        let got = client_messages(w.out);
        let want: Vec<tungstenite::Message> = texts
            .iter()
            .map(|t| tungstenite::Message::text(*t))
            .chain([tungstenite::Message::binary(vec![0xff, 0x00])])
            .collect();
        assert_eq!(got, want);
    }
}
