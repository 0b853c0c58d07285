//! A sequenced frame as Jetstream v1 events: one JSON event per record operation of a
//! `#commit` (the record rendered in the atproto data-model JSON form), and `identity` and
//! `account` events; nothing for `#sync` or anything else. Each event's JSON, and its zstd frame
//! for compressed consumers, is made once and shared (`Cache`).

use crate::proto::car;
use crate::proto::cbor::json;
use crate::proto::frame::{self, CommitRef, Event, Sequenced};
use crate::stream::batch::Pieces;
use crate::stream::eventlog::LogFrame;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Jetstream v1's zstd dictionary (ID 1612007021), byte for byte: clients hold the same one.
/// MIT-licensed, from Bluesky's Jetstream (LICENSE-MIT.zdict beside it).
pub static DICTIONARY: &[u8] = include_bytes!("legacy_subscribe.zdict");

/// One Jetstream event.
#[derive(Debug)]
pub struct Item {
    pub time_us: i64,
    /// Where the record's collection (commit ops) sits in `json`; `None` for identity and
    /// account events. A range, not a `String`: an allocation per event was measurable.
    collection_at: Option<(u32, u32)>,
    /// `did_hash` of the collection, for filters.
    collection_hash: u64,
    /// The JSON text, sent to every uncompressed consumer from here.
    pub json: String,
    zstd: OnceLock<Vec<u8>>,
}

impl Item {
    /// The collection and its hash, as `Filter::wants_hashed` takes them.
    pub fn collection<'a>(&'a self) -> Option<(u64, impl FnOnce() -> &'a str)> {
        self.collection_at.map(|_| {
            (self.collection_hash, || {
                self.collection_name().unwrap_or("")
            })
        })
    }

    /// The record's collection (commit ops); `None` for identity and account events.
    pub fn collection_name(&self) -> Option<&str> {
        let (from, to) = self.collection_at?;
        self.json.as_str().get(from as usize..to as usize)
    }

    /// The event as one zstd frame with the v1 dictionary, made on first use.
    pub fn zstd(&self, z: &Compressor) -> &[u8] {
        self.zstd.get_or_init(|| z.compress(self.json.as_bytes()))
    }
}

/// A sequenced frame's Jetstream events.
#[derive(Debug)]
pub struct Encoded {
    pub seq: u64,
    pub did: String,
    /// `did_hash` of `did`, for filters.
    pub did_hash: u64,
    pub items: Vec<Item>,
}

/// An event's JSON up to its body (`{"did":…,"time_us":…,"kind":K,"K":`), in the one buffer
/// the body is then written into.
fn head(did: &str, time_us: i64, kind: &str, body_len: usize) -> String {
    let mut out = String::with_capacity(body_len + did.len() + 64);
    out.push_str("{\"did\":");
    json::string(&mut out, did);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        ",\"time_us\":{time_us},\"kind\":\"{kind}\",\"{kind}\":"
    );
    out
}

fn item(time_us: i64, mut out: String, collection_at: Option<(u32, u32)>) -> Item {
    out.push('}');
    let name = collection_at.and_then(|(from, to)| out.get(from as usize..to as usize));
    Item {
        time_us,
        collection_hash: name.map_or(0, crate::util::did_hash),
        collection_at,
        json: out,
        zstd: OnceLock::new(),
    }
}

/// The Jetstream events of one frame (none for `#sync`, `#info` or anything undecodable).
pub fn encode(f: &LogFrame) -> Encoded {
    let mut e = Encoded {
        seq: f.seq,
        did: String::new(),
        did_hash: 0,
        items: Vec::new(),
    };
    match frame::read_sequenced(&f.bytes) {
        Ok(Sequenced::Commit(c)) => encode_commit(&c, f.time_us, &mut e),
        Ok(Sequenced::Other(event)) => encode_event(event, f.time_us, &mut e),
        Err(_) => return e,
    }
    // The sequencer hashed the event's DID into the record already.
    e.did_hash = f.did_hash;
    e
}

/// One event per op, the k-th at `time + k`.
fn encode_commit(c: &CommitRef<'_>, time: i64, e: &mut Encoded) {
    // A commit holds a handful of blocks: a scan finds each op's record without hashing every
    // CID into a map. The relay checked them before it logged the frame.
    let sections = car::sections(c.blocks).ok().map(|(_, s)| s);
    e.items.reserve_exact(c.op_count());
    for (k, op) in c.ops().enumerate() {
        // A damaged record gives no events, as when the frame does not decode.
        let Ok(op) = op else {
            e.items.clear();
            return;
        };
        let time_us = time + k as i64;
        let Some((collection, rkey)) = op.path.split_once('/') else {
            continue;
        };
        // A create or update whose record block is absent is left out.
        let record = match op.cid {
            _ if op.action == "delete" => None,
            Some(cid) => match sections.clone().and_then(|s| s.find(&cid)) {
                Some(block) => Some((cid, block)),
                None => continue,
            },
            None => continue,
        };
        let mut out = head(
            c.repo,
            time_us,
            "commit",
            record.map_or(128, |r| r.1.len() * 2 + 192),
        );
        out.push_str("{\"rev\":");
        json::string(&mut out, c.rev);
        out.push_str(",\"operation\":");
        json::string(&mut out, op.action);
        out.push_str(",\"collection\":");
        let from = out.len() + 1;
        json::string(&mut out, collection);
        let Some(at) = span(&out, from, collection) else {
            continue;
        };
        out.push_str(",\"rkey\":");
        json::string(&mut out, rkey);
        if let Some((cid, block)) = record {
            out.push_str(",\"record\":");
            if json::write_json(block, &mut out).is_err() {
                continue;
            }
            // A CID's text form needs no escaping.
            out.push_str(",\"cid\":\"");
            cid.write_text(&mut out);
            out.push('"');
        }
        out.push('}');
        e.items.push(item(time_us, out, Some(at)));
    }
    c.repo.clone_into(&mut e.did);
}

/// Where `name`, just written from `from` on, sits in `out`. The relay passed only NSIDs, which
/// need no escaping, so the name sits between its quotes as it is; `None` for anything else,
/// which is left out.
fn span(out: &str, from: usize, name: &str) -> Option<(u32, u32)> {
    let to = from + name.len();
    if out.get(from..to) != Some(name) {
        return None;
    }
    Some((u32::try_from(from).ok()?, u32::try_from(to).ok()?))
}

/// Identity and account events (a `#commit` is rendered in place by `encode_commit`).
fn encode_event(event: Event, time: i64, e: &mut Encoded) {
    match event {
        Event::Identity(i) => {
            let mut body = serde_json::Map::new();
            body.insert("did".into(), i.did.clone().into());
            if let Some(h) = &i.handle {
                body.insert("handle".into(), h.clone().into());
            }
            body.insert("seq".into(), i.seq.into());
            body.insert("time".into(), i.time.clone().into());
            let body = serde_json::Value::Object(body).to_string();
            let mut out = head(&i.did, time, "identity", body.len());
            out.push_str(&body);
            e.items.push(item(time, out, None));
            e.did = i.did;
        }
        Event::Account(a) => {
            let mut body = serde_json::Map::new();
            body.insert("active".into(), a.active.into());
            body.insert("did".into(), a.did.clone().into());
            body.insert("seq".into(), a.seq.into());
            if let Some(s) = &a.status {
                body.insert("status".into(), s.clone().into());
            }
            body.insert("time".into(), a.time.clone().into());
            let body = serde_json::Value::Object(body).to_string();
            let mut out = head(&a.did, time, "account", body.len());
            out.push_str(&body);
            e.items.push(item(time, out, None));
            e.did = a.did;
        }
        _ => {}
    }
}

/// The v1 dictionary, prepared once for the process, at level 1: on events of a few hundred
/// bytes the dictionary does the work, and level 3 cost 25% more time for the same ratio (2.28).
fn prepared() -> &'static zstd::dict::EncoderDictionary<'static> {
    static DICT: OnceLock<zstd::dict::EncoderDictionary<'static>> = OnceLock::new();
    DICT.get_or_init(|| zstd::dict::EncoderDictionary::copy(DICTIONARY, 1))
}

/// The v1 server's zstd window: 128 KiB.
const WINDOW: usize = 128 << 10;

/// Compressor contexts kept for reuse: making one per event was a tenth of a delivery's cost.
const POOLED: usize = 4;

/// Compresses events with the v1 dictionary: one self-contained frame each, with the content
/// size and dictionary ID in its header and a 128 KiB window, as the v1 server wrote them.
#[derive(Default)]
pub struct Compressor {
    pool: Mutex<Vec<zstd::bulk::Compressor<'static>>>,
}

impl Compressor {
    fn context() -> std::io::Result<zstd::bulk::Compressor<'static>> {
        let mut c = zstd::bulk::Compressor::with_prepared_dictionary(prepared())?;
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(WINDOW.ilog2()))?;
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
        Ok(c)
    }

    pub fn compress(&self, json: &[u8]) -> Vec<u8> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let made = pooled
            .map_or_else(Compressor::context, Ok)
            .and_then(|mut c| {
                let out = if json.len() <= WINDOW {
                    // One frame that fits the window needs none of the context's parameters:
                    // the dictionary's own give the same bytes (content size and dictionary ID
                    // in the header, one segment), without compress2 resolving them per event.
                    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(json.len()));
                    c.context_mut()
                        .compress_using_cdict(&mut out, json, prepared().as_cdict())
                        .map(|_| out)
                        .map_err(|code| {
                            std::io::Error::other(zstd::zstd_safe::get_error_name(code))
                        })
                } else {
                    c.compress(json)
                };
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                if pool.len() < POOLED {
                    pool.push(c);
                }
                out
            });
        made.unwrap_or_else(|e| {
            // Compression of a small in-memory buffer does not fail; if it ever did, the
            // consumer gets an empty frame rather than the relay a panic.
            log::error!("jetstream: zstd compression failed: {e}");
            Vec::new()
        })
    }
}

/// Encoded events by seq, so each frame is turned into JSON (and zstd) once however many
/// consumers read it. Slots are overwritten by newer seqs; a consumer far behind (reading the
/// disk log) may encode again.
///
/// A slot is a mutex, not an `ArcSwap`: every consumer looks up every frame, and arc_swap's
/// load (a thread-local debt slot) plus its writer's scan of every thread's debts were a sixth
/// of a Jetstream thread's time; an uncontended lock is two atomics.
pub struct Cache {
    slots: Vec<Mutex<Option<Arc<Slot>>>>,
    /// Slot count - 1 (a power of two).
    mask: u64,
}

/// Frames after its own that a consumer may encode while another encodes the one it needs.
const AHEAD: u64 = 64;

/// One seq's events, encoded by whichever consumer claims it first.
pub struct Slot {
    seq: u64,
    claimed: AtomicBool,
    encoded: OnceLock<Encoded>,
}

/// A frame's shared events.
#[derive(Clone)]
pub struct Cached(Arc<Slot>);

impl std::ops::Deref for Cached {
    type Target = Encoded;
    fn deref(&self) -> &Encoded {
        // `Cache::get` initialises the cell before handing a `Cached` out.
        self.0.encoded.get().unwrap_or(&EMPTY)
    }
}

impl Cached {
    /// The frame's events as message payloads: piece `2i` is item `i`'s JSON, `2i + 1` its zstd
    /// frame (once `Item::zstd` has made it).
    pub fn pieces(&self) -> Arc<dyn Pieces> {
        self.0.clone()
    }
}

impl Pieces for Slot {
    fn piece(&self, i: usize) -> &[u8] {
        match self.encoded.get().and_then(|e| e.items.get(i / 2)) {
            Some(item) if i.is_multiple_of(2) => item.json.as_bytes(),
            Some(item) => item.zstd.get().map_or(&[], Vec::as_slice),
            None => &[],
        }
    }
}

static EMPTY: Encoded = Encoded {
    seq: 0,
    did: String::new(),
    did_hash: 0,
    items: Vec::new(),
};

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        let n = capacity.max(1).next_power_of_two();
        Cache {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            mask: n as u64 - 1,
        }
    }

    /// `f`'s events, encoded here unless another consumer has claimed them. `next` looks up
    /// later frames (the ring's, `None` past its head).
    ///
    /// Consumers wake in rounds and reach the same frames together, so one that finds `f`
    /// being encoded does not sleep until it is done: waiting on the claim (a futex wait and
    /// wake, two context switches) was 8% of the Jetstream threads' time in the relay bench.
    /// It encodes the frames after `f` that nobody has claimed yet instead, which the
    /// consumers need next anyway, and encodes `f` itself only if it is still not done then.
    pub fn get(&self, f: &LogFrame, next: impl Fn(u64) -> Option<Arc<LogFrame>>) -> Cached {
        // A reader so far behind that a newer seq holds its place encodes alone.
        let Some(slot) = self.shared(f.seq) else {
            let own = Slot::new(f.seq);
            own.fill(f);
            return Cached(Arc::new(own));
        };
        if slot.encoded.get().is_none() {
            if slot.claim() {
                slot.fill(f);
            } else {
                let mut seq = f.seq;
                while slot.encoded.get().is_none() && seq < f.seq + AHEAD {
                    seq += 1;
                    let Some(later) = next(seq) else { break };
                    match self.shared(later.seq) {
                        Some(s) if s.claim() => s.fill(&later),
                        Some(_) => {}
                        None => break,
                    }
                }
                // Whoever finishes first is kept; the other's events are dropped.
                slot.encoded.get_or_init(|| count_encode(f));
            }
        }
        Cached(slot)
    }

    /// The shared slot of `seq`, made if an older seq (or nothing) holds its place; `None` if
    /// a newer seq does.
    fn shared(&self, seq: u64) -> Option<Arc<Slot>> {
        let at = &self.slots[(seq & self.mask) as usize];
        let mut held = at.lock().unwrap_or_else(PoisonError::into_inner);
        match held.as_ref() {
            Some(s) if s.seq == seq => Some(s.clone()),
            Some(s) if s.seq > seq => None,
            _ => {
                let fresh = Arc::new(Slot::new(seq));
                let replaced = held.replace(fresh.clone());
                drop(held);
                // The old events are freed outside the lock.
                drop(replaced);
                Some(fresh)
            }
        }
    }
}

fn count_encode(f: &LogFrame) -> Encoded {
    crate::telemetry::once!(
        metrics::counter!("rlay_jetstream_frames_encoded_total"),
        metrics::Counter
    )
    .increment(1);
    encode(f)
}

impl Slot {
    fn new(seq: u64) -> Slot {
        Slot {
            seq,
            claimed: AtomicBool::new(false),
            encoded: OnceLock::new(),
        }
    }

    /// True for the first caller only.
    fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    fn fill(&self, f: &LogFrame) {
        debug_assert_eq!(f.seq, self.seq);
        // Fails only if a consumer that could not wait encoded it meanwhile.
        let _ = self.encoded.set(count_encode(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn identity_frame(seq: u64) -> LogFrame {
        let event = Event::Identity(frame::IdentityEvent {
            seq: seq as i64,
            did: format!("did:plc:cache{seq}"),
            time: "2026-12-03T00:00:00.000Z".into(),
            handle: None,
        });
        LogFrame {
            seq,
            time_us: 1_000 + seq as i64,
            did_hash: 0,
            kind: 0,
            bytes: Bytes::from(frame::encode(&event)),
        }
    }

    #[test]
    fn events_compress_to_frames_with_the_dictionary_id_and_content_size() {
        let z = Compressor::default();
        let mut dict = zstd::bulk::Decompressor::with_dictionary(DICTIONARY).expect("dictionary");
        let small = br#"{"did":"did:plc:abc","time_us":1,"kind":"commit"}"#.to_vec();
        // Past the window, where the context's own parameters are used instead.
        let big: Vec<u8> = (0..WINDOW + 5_000).map(|i| b'a' + (i % 23) as u8).collect();
        for json in [small, big] {
            let frame = z.compress(&json);
            assert_eq!(
                zstd::zstd_safe::get_dict_id_from_frame(&frame),
                Some(std::num::NonZeroU32::new(1_612_007_021).expect("nonzero")),
                "the v1 dictionary's ID is in the header"
            );
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&frame).ok(),
                Some(Some(json.len() as u64))
            );
            let back = dict.decompress(&frame, json.len()).expect("decodes");
            assert_eq!(back, json);
        }
    }

    fn none(_: u64) -> Option<Arc<LogFrame>> {
        None
    }

    #[test]
    fn a_consumer_that_finds_its_frame_claimed_encodes_the_next_ones_then_its_own() {
        let cache = Cache::new(8);
        let frames: Vec<Arc<LogFrame>> = (1..=9).map(|s| Arc::new(identity_frame(s))).collect();
        let next = |seq: u64| frames.get(seq as usize - 1).cloned();
        // Another consumer claimed seq 1 and has not finished (it never will here).
        assert!(cache.shared(1).expect("shared").claim());
        let own = cache.get(&frames[0], next);
        assert!(own.items[0].json.as_str().contains("did:plc:cache1"));
        for seq in 2..=8 {
            let s = cache.shared(seq).expect("shared");
            assert!(s.encoded.get().is_some(), "seq {seq} was encoded ahead");
            assert!(!s.claim(), "seq {seq} is claimed");
        }
        // Seq 9 took seq 1's slot, as a newer seq does; the look-ahead stopped where `next`
        // ends.
        assert!(cache.shared(9).expect("shared").encoded.get().is_some());
        let again = cache.get(&frames[3], none);
        assert!(again.items[0].json.as_str().contains("did:plc:cache4"));
    }

    #[test]
    fn a_frame_is_encoded_once_and_a_far_behind_reader_does_not_evict_newer_ones() {
        let cache = Cache::new(3); // 4 slots
        let (f1, f5) = (identity_frame(1), identity_frame(5));
        let a = cache.get(&f1, none);
        let b = cache.get(&f1, none);
        assert!(
            Arc::ptr_eq(&a.0, &b.0),
            "the second reader shares the first's events"
        );
        assert_eq!(a.items.len(), 1);
        assert!(a.items[0].json.as_str().contains("did:plc:cache1"));
        // Seq 5 takes seq 1's slot; a reader still on seq 1 then encodes for itself.
        let c = cache.get(&f5, none);
        assert!(c.items[0].json.as_str().contains("did:plc:cache5"));
        let late = cache.get(&f1, none);
        assert!(!Arc::ptr_eq(&late.0, &a.0));
        assert!(late.items[0].json.as_str().contains("did:plc:cache1"));
        assert!(
            Arc::ptr_eq(&cache.get(&f5, none).0, &c.0),
            "seq 5 kept its slot"
        );
    }
}
