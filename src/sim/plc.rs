//! A PLC directory: `GET /{did}` returns the DID document, 404 for unknown DIDs and 410 for
//! tombstoned ones. Documents change on key rotation and migration. It also accepts `POST /{did}`
//! of PLC operations (unverified: a test directory) and answers `/{did}/log/last` and
//! `/{did}/data`, so a real PDS (Bluesky's reference implementation) can register accounts in it.

use super::server::{self, reply};
use crate::proto::crypto::PublicKey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};

/// A DID document in the shape the PLC directory serves.
pub fn did_document(did: &str, handle: &str, key: &PublicKey, pds: &str) -> Value {
    json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1"
        ],
        "id": did,
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": key.to_multikey()
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds
        }]
    })
}

enum Entry {
    Live(Value),
    Tombstoned,
}

#[derive(Default)]
pub struct Plc {
    docs: RwLock<HashMap<String, Entry>>,
    /// The last operation posted for each DID (only DIDs registered over HTTP have one).
    ops: RwLock<HashMap<String, Value>>,
    /// While set, document lookups over HTTP wait (a slow directory).
    held: Mutex<bool>,
    released: Condvar,
    /// How long a lookup of an unknown DID takes to answer 404 (a slow did:web server, or a
    /// flood of made-up DIDs).
    slow_unknown_ms: std::sync::atomic::AtomicU64,
}

/// The DID document a posted PLC operation describes.
fn document_of_op(did: &str, op: &Value) -> Option<Value> {
    let key = PublicKey::from_did_key(op["verificationMethods"]["atproto"].as_str()?).ok()?;
    let handle = op["alsoKnownAs"][0].as_str()?.strip_prefix("at://")?;
    let pds = op["services"]["atproto_pds"]["endpoint"].as_str()?;
    Some(did_document(did, handle, &key, pds))
}

impl Plc {
    /// Makes HTTP lookups wait (`true`) until called again with `false`; at most 30 s each.
    pub fn hold(&self, on: bool) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = on;
        self.released.notify_all();
    }

    /// Makes lookups of unregistered DIDs take `d` before their 404.
    pub fn slow_unknown(&self, d: std::time::Duration) {
        self.slow_unknown_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn wait_while_held(&self) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .released
            .wait_timeout_while(held, std::time::Duration::from_secs(30), |h| *h);
    }

    pub fn set(&self, did: &str, doc: Value) {
        self.docs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(did.to_owned(), Entry::Live(doc));
    }

    pub fn tombstone(&self, did: &str) {
        self.docs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(did.to_owned(), Entry::Tombstoned);
    }

    pub fn get(&self, did: &str) -> Option<Value> {
        match self
            .docs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(did)
        {
            Some(Entry::Live(v)) => Some(v.clone()),
            _ => None,
        }
    }

    fn post(
        &self,
        s: &mut std::net::TcpStream,
        did: &str,
        head: &crate::http::head::Head,
        buf: &[u8],
    ) {
        let op: Option<Value> =
            server::read_body(s, head, buf, 64 << 10).and_then(|b| serde_json::from_slice(&b).ok());
        let Some(op) = op else {
            return reply(s, 400, &json!({"message": "expected a JSON operation"}));
        };
        if op["type"] == "plc_tombstone" {
            self.tombstone(did);
        } else {
            let Some(doc) = document_of_op(did, &op) else {
                return reply(s, 400, &json!({"message": "unsupported operation"}));
            };
            self.set(did, doc);
        }
        self.ops
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(did.to_owned(), op);
        reply(s, 200, &json!({}));
    }

    /// Serves the directory on `listener`.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let me = self.clone();
        server::serve_kept(
            listener,
            "sim-plc".into(),
            Arc::new(move |s, head, buf| {
                let path = crate::util::percent_decode(head.path().trim_start_matches('/'));
                if head.method == "POST" {
                    me.post(s, &path, &head, &buf);
                    return;
                }
                if let Some((did, what)) = path.split_once('/') {
                    let ops = me.ops.read().unwrap_or_else(PoisonError::into_inner);
                    match (ops.get(did), what) {
                        (Some(op), "log/last") => reply(s, 200, op),
                        (Some(op), "data") => {
                            let mut d = op.clone();
                            d["did"] = json!(did);
                            reply(s, 200, &d)
                        }
                        _ => reply(s, 404, &json!({"message": "not found"})),
                    }
                    return;
                }
                let did = path;
                me.wait_while_held();
                let docs = me.docs.read().unwrap_or_else(PoisonError::into_inner);
                match docs.get(&did) {
                    Some(Entry::Live(doc)) => reply(s, 200, doc),
                    Some(Entry::Tombstoned) => {
                        reply(s, 410, &json!({"message": "DID not available"}))
                    }
                    None => {
                        drop(docs);
                        let slow = me
                            .slow_unknown_ms
                            .load(std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(std::time::Duration::from_millis(slow));
                        reply(
                            s,
                            404,
                            &json!({"message": format!("DID not registered: {did}")}),
                        )
                    }
                }
            }),
        )?;
        Ok(addr)
    }
}
