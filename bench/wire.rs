//! A minimal firehose client for the benchmarks: a fixed WebSocket handshake, then unmasked
//! server frames read straight from a buffered socket, so the reader costs as little as possible
//! and the figures measure the server.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Connects to `addr` and upgrades `subscribeRepos` (no cursor); returns the framed stream.
pub fn subscribe(addr: &str) -> BufReader<TcpStream> {
    subscribe_from(addr, None)
}

/// Like [`subscribe`], replaying from `cursor` when given.
pub fn subscribe_from(addr: &str, cursor: Option<u64>) -> BufReader<TcpStream> {
    // A burst of connections beyond the relay's bound on connections still in their request
    // (512) is refused or reset, by design; clients retry, so these do too.
    for _ in 0..100 {
        match try_subscribe(addr, cursor) {
            Ok(r) => return r,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    panic!("cannot subscribe to {addr} after 100 tries");
}

fn try_subscribe(addr: &str, cursor: Option<u64>) -> io::Result<BufReader<TcpStream>> {
    let mut s = TcpStream::connect(addr.replace("localhost", "127.0.0.1"))?;
    let query = cursor.map_or(String::new(), |c| format!("?cursor={c}"));
    write!(
        s,
        "GET /xrpc/com.atproto.sync.subscribeRepos{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!("upgrade refused: {line}")));
    }
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            return Ok(r);
        }
    }
}

/// Reads one frame's payload into `buf`; returns its opcode (2 = binary) and length.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<(u8, usize)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut e = [0u8; 2];
            r.read_exact(&mut e)?;
            usize::from(u16::from_be_bytes(e))
        }
        127 => {
            let mut e = [0u8; 8];
            r.read_exact(&mut e)?;
            usize::try_from(u64::from_be_bytes(e))
                .map_err(|_| io::Error::other("frame too large"))?
        }
        n => usize::from(n),
    };
    if buf.len() < len {
        buf.resize(len, 0);
    }
    r.read_exact(&mut buf[..len])?;
    Ok((h[0] & 0x0f, len))
}

/// The seq of a firehose frame: the integer after the body's first "seq" key (the key sorts
/// before every byte string in a DAG-CBOR map, so it is found first).
pub fn frame_seq(frame: &[u8]) -> u64 {
    let pos = frame
        .windows(4)
        .position(|w| w == b"cseq")
        .expect("seq key")
        + 4;
    let b = &frame[pos..];
    match b[0] & 0x1f {
        i @ 0..=23 => u64::from(i),
        24 => u64::from(b[1]),
        25 => u64::from(u16::from_be_bytes([b[1], b[2]])),
        26 => u64::from(u32::from_be_bytes([b[1], b[2], b[3], b[4]])),
        _ => u64::from_be_bytes([b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]]),
    }
}

/// The benches' child mode: `n` consumers of `addr` (from `cursor` when given, else live), each
/// reading `count` frames and failing on any gap or duplicate. Prints `connected` per consumer
/// and `done` at the end, which the parent's `feed::Clients` waits for.
pub fn check_consumers(addr: &str, n: usize, cursor: Option<u64>, count: u64) {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_owned();
            std::thread::spawn(move || {
                let mut r = subscribe_from(&addr, cursor);
                println!("connected");
                let mut buf = vec![0u8; 1 << 16];
                // With a cursor the first frame must be the one after it; live, any first seq.
                let mut last = cursor;
                let mut got = 0u64;
                while got < count {
                    let (opcode, len) = read_frame(&mut r, &mut buf).expect("frame");
                    if opcode != 2 {
                        continue; // ping
                    }
                    let seq = frame_seq(&buf[..len]);
                    if let Some(last) = last {
                        assert!(seq == last + 1, "gap or duplicate: {last} -> {seq}");
                    }
                    last = Some(seq);
                    got += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
    println!("done");
}
