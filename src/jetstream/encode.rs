//! A sequenced frame as Jetstream v1 events: one JSON event per record operation of a
//! `#commit` (the record rendered in the atproto data-model JSON form), and `identity` and
//! `account` events; nothing for `#sync` or anything else. Each event's JSON, and its zstd frame
//! for compressed consumers, is made once and shared (`Cache`).

use crate::proto::car::Car;
use crate::proto::cbor::value::Value;
use crate::proto::frame::{self, Event};
use crate::stream::eventlog::LogFrame;
use bytes::Bytes;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Jetstream v1's zstd dictionary (ID 1612007021), byte for byte: clients hold the same one.
/// MIT-licensed, from Bluesky's Jetstream (LICENSE-MIT.zdict beside it).
pub static DICTIONARY: &[u8] = include_bytes!("legacy_subscribe.zdict");

/// One Jetstream event.
#[derive(Debug)]
pub struct Item {
    pub time_us: i64,
    /// The record's collection (commit ops); `None` for identity and account events.
    pub collection: Option<String>,
    /// The JSON text, shared by every uncompressed consumer as it is sent.
    pub json: tungstenite::Utf8Bytes,
    zstd: OnceLock<Bytes>,
}

impl Item {
    /// The event as one zstd frame with the v1 dictionary, made on first use.
    pub fn zstd(&self, z: &Compressor) -> &Bytes {
        self.zstd.get_or_init(|| z.compress(self.json.as_bytes()))
    }
}

/// A sequenced frame's Jetstream events.
#[derive(Debug)]
pub struct Encoded {
    pub seq: u64,
    pub did: String,
    pub items: Vec<Item>,
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn item(did: &str, time_us: i64, kind: &str, body: &[u8], collection: Option<String>) -> Item {
    let mut out = Vec::with_capacity(body.len() + did.len() + 64);
    out.extend_from_slice(b"{\"did\":");
    push_str(&mut out, did);
    out.extend_from_slice(
        format!(",\"time_us\":{time_us},\"kind\":\"{kind}\",\"{kind}\":").as_bytes(),
    );
    out.extend_from_slice(body);
    out.push(b'}');
    Item {
        time_us,
        collection,
        // Only serde_json and ASCII went in; the check is the one UTF-8 validation it gets.
        json: tungstenite::Utf8Bytes::try_from(out).unwrap_or_default(),
        zstd: OnceLock::new(),
    }
}

/// The Jetstream events of one frame (none for `#sync`, `#info` or anything undecodable).
pub fn encode(f: &LogFrame) -> Encoded {
    let mut e = Encoded {
        seq: f.seq,
        did: String::new(),
        items: Vec::new(),
    };
    let Ok(event) = frame::decode(&f.bytes) else {
        return e;
    };
    match event {
        Event::Commit(c) => {
            e.did = c.repo.clone();
            let car = Car::parse(&c.blocks).ok();
            for (k, op) in c.ops.iter().enumerate() {
                let time_us = f.time_us + k as i64;
                let Some((collection, rkey)) = op.path.split_once('/') else {
                    continue;
                };
                let mut body = Vec::with_capacity(256);
                body.extend_from_slice(b"{\"rev\":");
                push_str(&mut body, &c.rev);
                body.extend_from_slice(b",\"operation\":");
                push_str(&mut body, &op.action);
                body.extend_from_slice(b",\"collection\":");
                push_str(&mut body, collection);
                body.extend_from_slice(b",\"rkey\":");
                push_str(&mut body, rkey);
                if op.action != "delete" {
                    // A create or update whose record block is absent is left out.
                    let Some(cid) = op.cid else { continue };
                    let Some(block) = car.as_ref().and_then(|car| car.get(&cid)) else {
                        continue;
                    };
                    let Ok(record) = Value::decode(block) else {
                        continue;
                    };
                    body.extend_from_slice(b",\"record\":");
                    let _ = serde_json::to_writer(&mut body, &record.to_json());
                    body.extend_from_slice(b",\"cid\":");
                    push_str(&mut body, &cid.to_string());
                }
                body.push(b'}');
                e.items.push(item(
                    &c.repo,
                    time_us,
                    "commit",
                    &body,
                    Some(collection.to_owned()),
                ));
            }
        }
        Event::Identity(i) => {
            let mut body = serde_json::Map::new();
            body.insert("did".into(), i.did.clone().into());
            if let Some(h) = &i.handle {
                body.insert("handle".into(), h.clone().into());
            }
            body.insert("seq".into(), i.seq.into());
            body.insert("time".into(), i.time.clone().into());
            let body = serde_json::Value::Object(body).to_string();
            e.items
                .push(item(&i.did, f.time_us, "identity", body.as_bytes(), None));
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
            e.items
                .push(item(&a.did, f.time_us, "account", body.as_bytes(), None));
            e.did = a.did;
        }
        _ => {}
    }
    e
}

/// Compresses events with the v1 dictionary: one self-contained frame each, with the content
/// size and dictionary ID in its header and a 128 KiB window, as the v1 server wrote them.
pub struct Compressor {
    dict: zstd::dict::EncoderDictionary<'static>,
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor {
            dict: zstd::dict::EncoderDictionary::copy(DICTIONARY, 3),
        }
    }
}

impl Compressor {
    pub fn compress(&self, json: &[u8]) -> Bytes {
        let made =
            zstd::bulk::Compressor::with_prepared_dictionary(&self.dict).and_then(|mut c| {
                c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(17))?;
                c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
                c.compress(json)
            });
        match made {
            Ok(b) => Bytes::from(b),
            // Compression of a small in-memory buffer does not fail; if it ever did, the
            // consumer gets an empty frame rather than the relay a panic.
            Err(e) => {
                log::error!("jetstream: zstd compression failed: {e}");
                Bytes::new()
            }
        }
    }
}

/// Encoded events by seq, so each frame is turned into JSON (and zstd) once however many
/// consumers read it. Slots are overwritten by newer seqs; a miss just encodes again.
pub struct Cache {
    slots: Vec<Mutex<Option<Arc<Encoded>>>>,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            slots: (0..capacity.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    pub fn get(&self, f: &LogFrame) -> Arc<Encoded> {
        let slot = &self.slots[(f.seq % self.slots.len() as u64) as usize];
        if let Some(e) = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|e| e.seq == f.seq)
        {
            return e.clone();
        }
        let e = Arc::new(encode(f));
        metrics::counter!("rlay_jetstream_frames_encoded_total").increment(1);
        let mut s = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if s.as_ref().is_none_or(|old| old.seq < e.seq) {
            *s = Some(e.clone());
        }
        e
    }
}
