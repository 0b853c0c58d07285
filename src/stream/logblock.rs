//! The compressed segment format: a sealed segment's records, unchanged, in zstd blocks.
//!
//! A file `<first seq>.zlog` is `MAGIC` and then blocks
//! `zlen u32 | crc32 u32 | raw_len u32 | records u32 | first_seq u64 | last_seq u64 | zstd`
//! (little endian; the CRC covers the header after itself and the compressed bytes). A block
//! decompresses to exactly the bytes the raw segment held for its records (each with its own
//! length and CRC), so frames leave the relay byte for byte as they came in, and replay reads
//! one block after another, in order. A reader looking for a seq skips whole blocks by their
//! header without decompressing them.
//!
//! Only sealed segments are compressed, written to a temporary file and renamed into place, so a
//! crash leaves either the raw segment or the whole compressed one. A block that does not check
//! is where the segment ends, as a torn record ends a raw one.

use bytes::Bytes;
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"rlayzlg1";
pub const HEAD: usize = 32;
/// Raw bytes gathered before a block is compressed: large enough for zstd to find what
/// records share (keys, DIDs, CID prefixes), small enough that seeking into a segment
/// decompresses little.
pub const BLOCK_RAW: usize = 256 << 10;
/// A block holds whole records: at most one oversized record (8 MiB) beyond the target.
pub const MAX_BLOCK_RAW: usize = BLOCK_RAW + (9 << 20);
/// zstd never expands incompressible data by more than a small margin.
const MAX_BLOCK_Z: usize = MAX_BLOCK_RAW + (64 << 10);
/// zstd's level: compaction runs in the background, and level 3 compresses these frames within
/// a few percent of much slower levels.
pub const LEVEL: i32 = 3;

/// A block's header, as read.
#[derive(Debug, Clone, Copy)]
pub struct BlockHead {
    pub zlen: usize,
    pub crc: u32,
    pub raw_len: usize,
    pub records: u32,
    pub first_seq: u64,
    pub last_seq: u64,
}

pub enum ReadBlock {
    /// A header whose length fields are in range, its CRC and data still to be checked.
    Head(BlockHead),
    /// The end of the blocks (possibly a torn last one).
    End,
    Corrupt(&'static str),
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads the next block header; the caller then reads `zlen` bytes and calls [`open_block`].
pub fn read_head<R: Read>(r: &mut R) -> io::Result<ReadBlock> {
    let mut h = [0u8; HEAD];
    if super::eventlog::read_full(r, &mut h)? < HEAD {
        return Ok(ReadBlock::End);
    }
    let head = BlockHead {
        zlen: le_u32(&h[0..4]) as usize,
        crc: le_u32(&h[4..8]),
        raw_len: le_u32(&h[8..12]) as usize,
        records: le_u32(&h[12..16]),
        first_seq: le_u64(&h[16..24]),
        last_seq: le_u64(&h[24..32]),
    };
    if head.zlen == 0 || head.zlen > MAX_BLOCK_Z {
        return Ok(ReadBlock::Corrupt("block length out of range"));
    }
    if head.raw_len == 0 || head.raw_len > MAX_BLOCK_RAW || head.first_seq > head.last_seq {
        return Ok(ReadBlock::Corrupt("block header out of range"));
    }
    Ok(ReadBlock::Head(head))
}

fn head_bytes(head: &BlockHead) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[0..4].copy_from_slice(&(head.zlen as u32).to_le_bytes());
    h[4..8].copy_from_slice(&head.crc.to_le_bytes());
    h[8..12].copy_from_slice(&(head.raw_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&head.records.to_le_bytes());
    h[16..24].copy_from_slice(&head.first_seq.to_le_bytes());
    h[24..32].copy_from_slice(&head.last_seq.to_le_bytes());
    h
}

fn crc_of(h: &[u8; HEAD], z: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[8..]);
    c.update(z);
    c.finalize()
}

/// Checks a block's compressed bytes against its header and decompresses them (into at most
/// `raw_len` bytes, itself bounded).
pub fn open_block(head: &BlockHead, z: &[u8]) -> Result<Bytes, &'static str> {
    if crc_of(&head_bytes(head), z) != head.crc {
        return Err("block checksum mismatch");
    }
    let raw = zstd::bulk::decompress(z, head.raw_len).map_err(|_| "block does not decompress")?;
    if raw.len() != head.raw_len {
        return Err("block shorter than its header says");
    }
    Ok(Bytes::from(raw))
}

/// Writes a compressed segment: records go in with [`BlockWriter::push`], whole.
pub struct BlockWriter<W: Write> {
    out: W,
    z: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    records: u32,
    first_seq: u64,
    last_seq: u64,
    /// Bytes written so far (magic and blocks).
    written: u64,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(mut out: W) -> io::Result<BlockWriter<W>> {
        out.write_all(MAGIC)?;
        Ok(BlockWriter {
            out,
            z: zstd::bulk::Compressor::new(LEVEL)?,
            raw: Vec::with_capacity(BLOCK_RAW + (64 << 10)),
            records: 0,
            first_seq: 0,
            last_seq: 0,
            written: MAGIC.len() as u64,
        })
    }

    /// One record, as the raw segment holds it (head and frame).
    pub fn push(&mut self, seq: u64, head: &[u8], frame: &[u8]) -> io::Result<()> {
        if self.records == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.records += 1;
        self.raw.extend_from_slice(head);
        self.raw.extend_from_slice(frame);
        if self.raw.len() >= BLOCK_RAW {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.records == 0 {
            return Ok(());
        }
        let z = self.z.compress(&self.raw)?;
        let mut head = BlockHead {
            zlen: z.len(),
            crc: 0,
            raw_len: self.raw.len(),
            records: self.records,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
        };
        head.crc = crc_of(&head_bytes(&head), &z);
        self.out.write_all(&head_bytes(&head))?;
        self.out.write_all(&z)?;
        self.written += (HEAD + z.len()) as u64;
        self.raw.clear();
        self.records = 0;
        Ok(())
    }

    /// Writes the last block; returns the output and the bytes written to it.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.flush_block()?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}
