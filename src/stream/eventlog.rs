//! The disk event log: append-only segment files of sequenced frames, for cursor replay.
//!
//! Segment `events/<first seq, 20 digits>.log` holds records
//! `len u32 | crc32 u32 | seq u64 | time i64 | did_hash u64 | kind u8 | frame bytes`
//! (little endian; `len` and the CRC cover everything after them). Segments roll at a size or
//! age limit so retention can drop whole files. On open, the tail of the newest segment is
//! checked record by record and anything torn or corrupt after the last good record is cut.
//!
//! Only the sequencer appends. Readers open the files themselves and can follow a segment that
//! is still being written: a record not yet complete reads as "nothing more for now".
//!
//! Sealed segments are compressed in the background into `<first seq>.zlog` files of zstd blocks
//! holding the same records (`logblock`); the newest segment, the one being written, is always
//! raw. Readers take either kind, so logs written before compression stay readable and are
//! compressed in place as they are found.
//!
//! `time` is unix microseconds, unique and increasing (Jetstream's `time_us` is read from it).
//! Segments written before it was microseconds hold milliseconds: any value below
//! `MS_UNTIL` is read as milliseconds, so old segments stay readable as they are.

use super::logblock::{self, BlockWriter, ReadBlock};
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

pub const KIND_COMMIT: u8 = 1;
pub const KIND_SYNC: u8 = 2;
pub const KIND_IDENTITY: u8 = 3;
pub const KIND_ACCOUNT: u8 = 4;

/// Stored times below this are milliseconds (values of year 2286 and earlier in ms; any
/// microsecond time after 1973 is above it).
const MS_UNTIL: i64 = 100_000_000_000_000;

/// A stored time in microseconds, whichever unit it was written in.
fn as_us(t: i64) -> i64 {
    if t < MS_UNTIL {
        t.saturating_mul(1000)
    } else {
        t
    }
}

const PREFIX: usize = 8;
const META: usize = 25;
/// Larger than any legal frame (5 MB) plus metadata; anything bigger is corruption.
const MAX_RECORD: usize = 8 << 20;

/// One sequenced frame, as stored and as broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    pub seq: u64,
    /// When the relay sequenced it, unix µs, strictly increasing across events: an event that
    /// becomes several Jetstream events (a commit's ops) owns that many consecutive values from
    /// here. Retention and Jetstream cursors use this, not the event's own `time`.
    pub time_us: i64,
    /// FNV-1a of the DID, for hiding taken-down accounts from replay without a lookup table.
    pub did_hash: u64,
    pub kind: u8,
    /// The complete WebSocket payload (header + body).
    pub bytes: Bytes,
}

/// A record's head: `len | crc | seq | time | did_hash | kind`; the frame bytes follow it.
fn record_head(f: &LogFrame) -> [u8; PREFIX + META] {
    let mut h = [0u8; PREFIX + META];
    h[0..4].copy_from_slice(&((META + f.bytes.len()) as u32).to_le_bytes());
    h[8..16].copy_from_slice(&f.seq.to_le_bytes());
    h[16..24].copy_from_slice(&f.time_us.to_le_bytes());
    h[24..32].copy_from_slice(&f.did_hash.to_le_bytes());
    h[32] = f.kind;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[PREFIX..]);
    crc.update(&f.bytes);
    h[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Writes every slice, however the kernel splits the writes.
fn write_all_vectored(file: &mut File, mut bufs: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl LogFrame {
    /// A `#commit` or `#sync` (the kinds a takedown hides from replay).
    pub fn is_repo_event(&self) -> bool {
        self.kind == KIND_COMMIT || self.kind == KIND_SYNC
    }
}

/// This boot of the machine (Linux), to tell a process crash from a reboot; read once.
fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (id.len() == 36).then(|| id.to_owned())
    })
    .as_deref()
}

enum ReadOutcome {
    Record(LogFrame, u64),
    /// Clean end of data (possibly a record still being written).
    End,
    /// A record that can never become valid.
    Corrupt(&'static str),
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads one record; on `End` or `Corrupt` the reader may be anywhere (callers seek back).
fn read_record<R: Read>(r: &mut R) -> io::Result<ReadOutcome> {
    let mut prefix = [0u8; PREFIX];
    match read_full(r, &mut prefix)? {
        0 => return Ok(ReadOutcome::End),
        n if n < PREFIX => return Ok(ReadOutcome::End),
        _ => {}
    }
    let (len, crc) = match record_prefix(&prefix) {
        Ok(p) => p,
        Err(why) => return Ok(ReadOutcome::Corrupt(why)),
    };
    let mut payload = vec![0u8; len];
    if read_full(r, &mut payload)? < len {
        return Ok(ReadOutcome::End);
    }
    Ok(match frame_of(Bytes::from(payload), crc) {
        Some(f) => ReadOutcome::Record(f, (PREFIX + len) as u64),
        None => ReadOutcome::Corrupt("checksum mismatch"),
    })
}

/// A record's payload length and CRC, from its prefix.
fn record_prefix(prefix: &[u8]) -> Result<(usize, u32), &'static str> {
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let crc = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if !(META..=MAX_RECORD).contains(&len) {
        return Err("record length out of range");
    }
    Ok((len, crc))
}

/// The frame a record's payload (everything after its prefix) holds, if the CRC matches.
fn frame_of(payload: Bytes, crc: u32) -> Option<LogFrame> {
    if crc32fast::hash(&payload) != crc {
        return None;
    }
    Some(LogFrame {
        seq: le_u64(&payload[0..8]),
        time_us: as_us(le_u64(&payload[8..16]) as i64),
        did_hash: le_u64(&payload[16..24]),
        kind: payload[24],
        bytes: payload.slice(META..),
    })
}

/// The record at `at` in a decompressed block (the frame shares the block's memory) and its
/// length; `Ok(None)` at the block's end.
fn record_at(block: &Bytes, at: usize) -> Result<Option<(LogFrame, usize)>, &'static str> {
    if at >= block.len() {
        return Ok(None);
    }
    let prefix = block
        .get(at..at + PREFIX)
        .ok_or("record cut off in a block")?;
    let (len, crc) = record_prefix(prefix)?;
    let end = at + PREFIX + len;
    if end > block.len() {
        return Err("record cut off in a block");
    }
    let f = frame_of(block.slice(at + PREFIX..end), crc).ok_or("checksum mismatch")?;
    Ok(Some((f, PREFIX + len)))
}

/// Like `read_exact` but reports how much was read instead of failing at EOF.
pub(super) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    first_time_us: i64,
    path: PathBuf,
    /// A `.zlog` of blocks (sealed), not a raw `.log`.
    compressed: bool,
}

const RAW_EXT: &str = "log";
const ZLOG_EXT: &str = "zlog";
/// A compressed segment being written; never read, removed on open.
const TMP_EXT: &str = "zlog.tmp";

/// What compressing sealed segments did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compressed {
    pub segments: usize,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
}

struct Active {
    file: File,
    /// Length up to the last whole record.
    bytes: u64,
    opened: Instant,
    dirty: bool,
    /// A failed write left bytes past `bytes` that could not be cut yet.
    torn: bool,
}

pub struct EventLog {
    dir: PathBuf,
    segments: RwLock<Vec<Segment>>,
    active: Mutex<Option<Active>>,
    /// Held for a whole `sync`.
    sync_turn: Mutex<()>,
    max_segment_bytes: u64,
    max_segment_age: Duration,
    /// Why the last append failed, while appends fail (health reports it).
    write_error: Mutex<Option<String>>,
}

/// Name of the file holding the highest seq that may have been handed out.
const RESERVATION: &str = "seq-reservation";

/// What `open` found.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenReport {
    pub(crate) last_seq: Option<u64>,
    pub(crate) segments: usize,
    /// Bytes cut from a torn or corrupt tail.
    pub(crate) truncated_bytes: u64,
    /// `time_us` of the last record on disk (0: none); new ones continue above it.
    pub(crate) last_time_us: i64,
}

impl OpenReport {
    /// Segments found.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The last seq on disk.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Bytes of a torn or corrupt tail that were cut.
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_bytes
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{RAW_EXT}")
}

impl EventLog {
    /// Opens (creating) the log in `dir`, repairing a torn tail.
    pub fn open(dir: &Path) -> io::Result<(EventLog, OpenReport)> {
        Self::open_with(dir, 64 << 20, Duration::from_secs(3600))
    }

    pub fn open_with(
        dir: &Path,
        max_segment_bytes: u64,
        max_segment_age: Duration,
    ) -> io::Result<(EventLog, OpenReport)> {
        fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, bool, PathBuf)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(TMP_EXT) {
                // Compression stopped part way (a crash): the raw segment is still there.
                fs::remove_file(&p)?;
                continue;
            }
            let (stem, compressed) = match name.rsplit_once('.') {
                Some((stem, RAW_EXT)) => (stem, false),
                Some((stem, ZLOG_EXT)) => (stem, true),
                _ => continue,
            };
            if let Ok(seq) = stem.parse::<u64>() {
                found.push((seq, compressed, p));
            }
        }
        // Raw before compressed for the same seq; a raw one left beside its compressed copy
        // (a crash between the rename and the delete) goes.
        found.sort();
        let mut kept: Vec<(u64, bool, PathBuf)> = Vec::with_capacity(found.len());
        for f in found {
            if let Some(prev) = kept.last()
                && prev.0 == f.0
            {
                fs::remove_file(&prev.2)?;
                kept.pop();
            }
            kept.push(f);
        }
        let mut found = kept;
        let mut report = OpenReport::default();
        // Repair from the newest segment backwards until one holds a valid record.
        while let Some((_, compressed, path)) = found.last() {
            let (last, good_len, file_len, why) = if *compressed {
                scan_blocks(path)?
            } else {
                scan_segment(path)?
            };
            if good_len < file_len {
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(good_len)?;
                report.truncated_bytes += file_len - good_len;
                log::warn!(
                    "event log: cut {} bytes from the end of {} ({why}; usually a crash during a write)",
                    file_len - good_len,
                    path.display()
                );
            }
            match last {
                Some((seq, time_us)) => {
                    report.last_seq = Some(seq);
                    report.last_time_us = time_us;
                    break;
                }
                None => {
                    fs::remove_file(path)?;
                    found.pop();
                }
            }
        }
        let mut segments = Vec::with_capacity(found.len());
        for (first_seq, compressed, path) in found {
            let first_time_us = first_record_time(&path, compressed)?.unwrap_or(0);
            segments.push(Segment {
                first_seq,
                first_time_us,
                path,
                compressed,
            });
        }
        report.segments = segments.len();
        Ok((
            EventLog {
                dir: dir.to_owned(),
                segments: RwLock::new(segments),
                active: Mutex::new(None),
                sync_turn: Mutex::new(()),
                max_segment_bytes,
                max_segment_age,
                write_error: Mutex::new(None),
            },
            report,
        ))
    }

    fn segments(&self) -> Vec<Segment> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Appends frames (strictly increasing seqs) with one write. Called by the sequencer only.
    pub fn append(&self, frames: &[LogFrame]) -> io::Result<()> {
        let r = self.append_records(frames);
        // Every failure (a roll, a write, a cut) is what health reports until one succeeds.
        *self
            .write_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = r.as_ref().err().map(|e| e.to_string());
        r
    }

    fn append_records(&self, frames: &[LogFrame]) -> io::Result<()> {
        let Some(first) = frames.first() else {
            return Ok(());
        };
        // One head per record, and the frames written from where they already are.
        let heads: Vec<[u8; PREFIX + META]> = frames.iter().map(record_head).collect();
        let total: u64 = frames
            .iter()
            .map(|f| (PREFIX + META + f.bytes.len()) as u64)
            .sum();
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let roll = match active.as_ref() {
            None => true,
            Some(a) => {
                a.bytes >= self.max_segment_bytes || a.opened.elapsed() >= self.max_segment_age
            }
        };
        if roll {
            if let Some(old) = active.take() {
                old.file.sync_data()?;
            }
            *active = Some(self.start_segment(first)?);
        }
        let a = active
            .as_mut()
            .ok_or_else(|| io::Error::other("no active segment"))?;
        if a.torn {
            // The cut after the last failed write did not happen: make it before appending.
            a.file.set_len(a.bytes)?;
            a.torn = false;
        }
        // At most IOV_MAX (1024) slices per call: two per record.
        let written = heads
            .chunks(512)
            .zip(frames.chunks(512))
            .try_for_each(|(hs, fs)| {
                let mut slices: Vec<io::IoSlice<'_>> = hs
                    .iter()
                    .zip(fs)
                    .flat_map(|(h, f)| [io::IoSlice::new(h), io::IoSlice::new(&f.bytes)])
                    .collect();
                write_all_vectored(&mut a.file, &mut slices)
            });
        if let Err(e) = written {
            // A partial batch (a full disk, say) is cut back to the last whole record, so a
            // retry appends cleanly and no good record ever sits behind a torn one.
            a.torn = a.file.set_len(a.bytes).is_err();
            return Err(e);
        }
        a.bytes += total;
        a.dirty = true;
        Ok(())
    }

    /// Why appends are failing, while they are.
    pub fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The highest seq a previous run may have broadcast that the log might not hold: only
    /// after a reboot (0 otherwise). Frames are written to the OS before they are broadcast,
    /// so a process that died without a reboot left every broadcast frame in the log; a power
    /// loss can drop the unsynced tail, and then the reservation says how far to skip.
    pub fn reserved_seq(&self) -> io::Result<u64> {
        match fs::read(self.dir.join(RESERVATION)) {
            Ok(b) if b.len() >= 8 => {
                let same_boot = boot_id().is_some_and(|id| b[8..] == *id.as_bytes());
                Ok(if same_boot { 0 } else { le_u64(&b[..8]) })
            }
            Ok(_) => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Records (durably) that seqs up to `seq` may be handed out in this boot. Written in
    /// place at a fixed size, so it works on a full disk too.
    pub fn reserve_seq(&self, seq: u64) -> io::Result<()> {
        let mut rec = seq.to_le_bytes().to_vec();
        rec.extend_from_slice(boot_id().unwrap_or_default().as_bytes());
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.dir.join(RESERVATION))?;
        f.write_all(&rec)?;
        f.set_len(rec.len() as u64)?;
        f.sync_data()
    }

    /// Continues the newest segment after a restart if it is still small and young, otherwise
    /// starts a new one named after `first`.
    fn start_segment(&self, first: &LogFrame) -> io::Result<Active> {
        let mut segs = self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = segs.last().filter(|l| !l.compressed) {
            let meta = fs::metadata(&last.path)?;
            let young = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age < self.max_segment_age);
            if meta.len() < self.max_segment_bytes && young {
                let file = OpenOptions::new().append(true).open(&last.path)?;
                return Ok(Active {
                    file,
                    bytes: meta.len(),
                    opened: Instant::now(),
                    dirty: false,
                    torn: false,
                });
            }
        }
        let path = self.dir.join(segment_name(first.seq));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        segs.push(Segment {
            first_seq: first.seq,
            first_time_us: as_us(first.time_us),
            path,
            compressed: false,
        });
        // Make the new file's directory entry durable too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(Active {
            file,
            bytes: 0,
            opened: Instant::now(),
            dirty: false,
            torn: false,
        })
    }

    /// fdatasync of the active segment if anything was written since the last sync. The disk
    /// is waited for outside the append lock, so appends (and with them broadcast) go on
    /// meanwhile; syncs run one at a time, so one that returns covers every append before it.
    pub fn sync(&self) -> io::Result<()> {
        let _one = self
            .sync_turn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let file = {
            let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
            match active.as_mut() {
                Some(a) if a.dirty => {
                    a.dirty = false;
                    a.file.try_clone()?
                }
                _ => return Ok(()),
            }
        };
        file.sync_data().inspect_err(|_| {
            if let Some(a) = self
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            {
                a.dirty = true;
            }
        })
    }

    /// Seq of the oldest retained event.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .map(|s| s.first_seq)
    }

    /// When the oldest retained event was sequenced (unix µs), from the segment list.
    pub fn oldest_time_us(&self) -> Option<i64> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .map(|s| s.first_time_us)
    }

    pub fn segment_count(&self) -> usize {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes whole segments whose every event is older than `cutoff_ms` (a segment's events are
    /// all older than the next segment's first event). The newest segment is never deleted.
    pub fn remove_older_than(&self, cutoff_ms: i64) -> io::Result<usize> {
        let mut segs = self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        while segs.len() > 1 && segs[1].first_time_us / 1000 < cutoff_ms {
            let s = segs.remove(0);
            fs::remove_file(&s.path)?;
            n += 1;
        }
        Ok(n)
    }

    /// The seq of the last event sequenced at or before `time_us`; `None` if the oldest retained
    /// event is later. Reads one segment at most (segments are found by their first time).
    pub fn last_at_or_before(&self, time_us: i64) -> io::Result<Option<u64>> {
        let segs = self.segments();
        let i = segs.partition_point(|s| s.first_time_us <= time_us);
        let Some(seg) = i.checked_sub(1).and_then(|i| segs.get(i)) else {
            return Ok(None);
        };
        let mut r = self.reader(seg.first_seq.saturating_sub(1));
        let mut last = None;
        while let Some(f) = r.next_frame()? {
            if f.time_us > time_us {
                break;
            }
            last = Some(f.seq);
        }
        Ok(last)
    }

    /// Compresses every sealed raw segment (all but the newest) into a `.zlog` of blocks, one
    /// after another, and swaps each into the segment list before its raw file goes. Readers
    /// that have the raw file open read on from it; new ones open the compressed file.
    pub fn compress_sealed(&self) -> io::Result<Compressed> {
        let segs = self.segments();
        let sealed = segs.split_last().map_or(&[][..], |(_, rest)| rest);
        let mut done = Compressed::default();
        for s in sealed.iter().filter(|s| !s.compressed) {
            let tmp = s.path.with_extension(TMP_EXT);
            let zlog = s.path.with_extension(ZLOG_EXT);
            let Some((raw, z)) = compress_segment(&s.path, &tmp)? else {
                let _ = fs::remove_file(&tmp);
                continue;
            };
            fs::rename(&tmp, &zlog)?;
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            let swapped = {
                let mut list = self
                    .segments
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                match list
                    .iter_mut()
                    .find(|x| x.first_seq == s.first_seq && x.path == s.path)
                {
                    Some(x) => {
                        x.path = zlog.clone();
                        x.compressed = true;
                        true
                    }
                    None => false,
                }
            };
            if swapped {
                fs::remove_file(&s.path)?;
                done.segments += 1;
                done.raw_bytes += raw;
                done.compressed_bytes += z;
            } else {
                // Retention removed the segment meanwhile.
                fs::remove_file(&zlog)?;
            }
        }
        Ok(done)
    }

    /// Bytes the log's segments take on disk, and how many of them are compressed.
    pub fn disk_usage(&self) -> (u64, usize) {
        self.segments().iter().fold((0, 0), |(b, z), s| {
            let len = fs::metadata(&s.path).map_or(0, |m| m.len());
            (b + len, z + usize::from(s.compressed))
        })
    }

    /// A reader positioned after `after_seq` (0 reads everything).
    pub fn reader(&self, after_seq: u64) -> LogReader<'_> {
        LogReader {
            log: self,
            after: after_seq,
            current: None,
        }
    }
}

/// What scanning a segment found: the last good record's (seq, time), the length of the valid
/// prefix, the file's length, and why the scan stopped.
type Scan = (Option<(u64, i64)>, u64, u64, &'static str);

fn scan_segment(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut good = 0u64;
    let mut last = None;
    let why = loop {
        match read_record(&mut r)? {
            ReadOutcome::Record(f, n) => {
                if last.is_some_and(|(l, _)| f.seq <= l) {
                    break "sequence numbers go backwards";
                }
                last = Some((f.seq, f.time_us));
                good += n;
            }
            ReadOutcome::End => break "incomplete record",
            ReadOutcome::Corrupt(why) => break why,
        }
    };
    Ok((last, good, file_len, why))
}

fn first_record_time(path: &Path, compressed: bool) -> io::Result<Option<i64>> {
    let mut r = BufReader::new(File::open(path)?);
    if compressed {
        let mut blocks = Blocks::start(r)?;
        return Ok(match blocks.next_record(0)? {
            BlockRecord::Frame(f) => Some(f.time_us),
            BlockRecord::Stop(_) => None,
        });
    }
    Ok(match read_record(&mut r)? {
        ReadOutcome::Record(f, _) => Some(f.time_us),
        _ => None,
    })
}

/// Copies a raw segment's records into a compressed file at `dst` (synced); returns the raw
/// and compressed byte counts, or `None` for a segment without records.
fn compress_segment(src: &Path, dst: &Path) -> io::Result<Option<(u64, u64)>> {
    let src_len = fs::metadata(src)?.len();
    let mut r = BufReader::with_capacity(1 << 20, File::open(src)?);
    let out = BufWriter::with_capacity(1 << 20, File::create(dst)?);
    let mut w = BlockWriter::new(out)?;
    let mut raw = 0u64;
    let mut last = 0u64;
    let why = loop {
        match read_record(&mut r)? {
            ReadOutcome::Record(f, n) => {
                if raw > 0 && f.seq <= last {
                    break Some("sequence numbers go backwards");
                }
                last = f.seq;
                w.push(f.seq, &record_head(&f), &f.bytes)?;
                raw += n;
            }
            ReadOutcome::End => break (raw < src_len).then_some("incomplete record"),
            ReadOutcome::Corrupt(why) => break Some(why),
        }
    };
    if let Some(why) = why {
        // The same records a reader of the raw file gets: those before the bad one.
        log::warn!(
            "event log: {} ends early ({why}) after {raw} of {src_len} bytes; compressing what precedes it",
            src.display()
        );
    }
    if raw == 0 {
        return Ok(None);
    }
    let (out, z) = w.finish()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(Some((raw, z)))
}

/// What scanning a compressed segment found, as [`scan_segment`] reports it for a raw one. A
/// block is the unit: the valid prefix ends after the last block that checks.
fn scan_blocks(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut blocks = Blocks::start(BufReader::with_capacity(1 << 20, file))?;
    let mut last: Option<(u64, i64)> = None;
    let why = loop {
        match blocks.next_record(0)? {
            BlockRecord::Frame(f) => {
                if last.is_some_and(|(l, _)| f.seq <= l) {
                    break "sequence numbers go backwards";
                }
                last = Some((f.seq, f.time_us));
            }
            BlockRecord::Stop(why) => break why,
        }
    };
    Ok((last, blocks.pos, file_len, why))
}

/// Reads a compressed segment's records in order, a block at a time.
struct Blocks {
    reader: BufReader<File>,
    /// File offset after the last whole block read: where reading resumes after a stop.
    pos: u64,
    magic_ok: bool,
    block: Bytes,
    at: usize,
}

enum BlockRecord {
    Frame(LogFrame),
    /// No more records: the end of the file, or why not.
    Stop(&'static str),
}

impl Blocks {
    fn start(mut reader: BufReader<File>) -> io::Result<Blocks> {
        let mut magic = [0u8; 8];
        let magic_ok =
            read_full(&mut reader, &mut magic)? == magic.len() && magic == *logblock::MAGIC;
        Ok(Blocks {
            reader,
            pos: if magic_ok { magic.len() as u64 } else { 0 },
            magic_ok,
            block: Bytes::new(),
            at: 0,
        })
    }

    /// The next record with a seq above `after`; whole blocks at or below it are skipped
    /// without being read.
    fn next_record(&mut self, after: u64) -> io::Result<BlockRecord> {
        if !self.magic_ok {
            return Ok(BlockRecord::Stop("not a compressed segment"));
        }
        loop {
            match record_at(&self.block, self.at) {
                Ok(Some((f, n))) => {
                    self.at += n;
                    if f.seq > after {
                        return Ok(BlockRecord::Frame(f));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(why) => return Ok(BlockRecord::Stop(why)),
            }
            let head = match logblock::read_head(&mut self.reader)? {
                ReadBlock::Head(h) => h,
                ReadBlock::End => return self.stop("incomplete block"),
                ReadBlock::Corrupt(why) => return self.stop(why),
            };
            let next = self.pos + (logblock::HEAD + head.zlen) as u64;
            if head.last_seq <= after {
                self.reader.seek_relative(head.zlen as i64)?;
                self.pos = next;
                continue;
            }
            let mut z = vec![0u8; head.zlen];
            if read_full(&mut self.reader, &mut z)? < head.zlen {
                return self.stop("incomplete block");
            }
            match logblock::open_block(&head, &z) {
                Ok(b) => {
                    self.block = b;
                    self.at = 0;
                    self.pos = next;
                }
                Err(why) => return self.stop(why),
            }
        }
    }

    fn stop(&mut self, why: &'static str) -> io::Result<BlockRecord> {
        self.reader.seek(SeekFrom::Start(self.pos))?;
        Ok(BlockRecord::Stop(why))
    }
}

/// The segment a reader has open.
struct Open {
    first_seq: u64,
    source: Source,
}

enum Source {
    Raw { reader: BufReader<File>, pos: u64 },
    Blocks(Blocks),
}

/// Reads frames with seq greater than a starting point, across segments, in order.
pub struct LogReader<'a> {
    log: &'a EventLog,
    after: u64,
    current: Option<Open>,
}

impl LogReader<'_> {
    /// The next frame, or `None` when everything written so far has been read (call again later
    /// to continue). A segment removed by retention under a reader is skipped.
    pub fn next_frame(&mut self) -> io::Result<Option<LogFrame>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let Some(cur) = self.current.as_mut() else {
                return Ok(None);
            };
            let got = match &mut cur.source {
                Source::Raw { reader, pos } => match read_record(reader)? {
                    ReadOutcome::Record(f, n) => {
                        *pos += n;
                        Some(f)
                    }
                    ReadOutcome::End | ReadOutcome::Corrupt(_) => {
                        // Rewind to the record boundary (the writer may finish it).
                        reader.seek(SeekFrom::Start(*pos))?;
                        None
                    }
                },
                Source::Blocks(b) => match b.next_record(self.after)? {
                    BlockRecord::Frame(f) => Some(f),
                    BlockRecord::Stop(_) => None,
                },
            };
            if let Some(f) = got {
                if f.seq > self.after {
                    self.after = f.seq;
                    return Ok(Some(f));
                }
                continue;
            }
            // Move on only if a later segment exists.
            let first = cur.first_seq;
            let Some(next) = self
                .log
                .segments()
                .iter()
                .find(|s| s.first_seq > first)
                .map(|s| s.first_seq)
            else {
                return Ok(None);
            };
            // A sealed segment is complete; whatever follows a corrupt record in it is lost.
            self.current = None;
            self.after = self.after.max(next - 1);
        }
    }

    /// Opens the segment that can hold `after + 1`. A segment whose file is gone was either
    /// removed by retention (go on to the next) or compressed meanwhile (open it again, under
    /// its new name).
    fn open_next(&mut self) -> io::Result<bool> {
        let want = self.after.saturating_add(1);
        'list: for _ in 0..4 {
            let segs = self.log.segments();
            let idx = match segs.iter().rposition(|s| s.first_seq <= want) {
                Some(i) => i,
                None => match segs.first() {
                    Some(_) => 0,
                    None => return Ok(false),
                },
            };
            for s in &segs[idx..] {
                match File::open(&s.path) {
                    Ok(f) => {
                        let source = if s.compressed {
                            Source::Blocks(Blocks::start(BufReader::with_capacity(256 << 10, f))?)
                        } else {
                            Source::Raw {
                                reader: BufReader::with_capacity(256 << 10, f),
                                pos: 0,
                            }
                        };
                        self.current = Some(Open {
                            first_seq: s.first_seq,
                            source,
                        });
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let renamed = self
                            .log
                            .segments()
                            .iter()
                            .any(|x| x.first_seq == s.first_seq && x.path != s.path);
                        if renamed {
                            continue 'list;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(false);
        }
        Ok(false)
    }

    /// Seq of the last frame returned (or the starting point).
    pub fn position(&self) -> u64 {
        self.after
    }
}
