//! A PLC directory: `GET /{did}` returns the DID document, 404 for unknown DIDs and 410 for
//! tombstoned ones. Documents change on key rotation and migration.

use super::server::{self, respond_json};
use crate::crypto::PublicKey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, PoisonError, RwLock};

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
}

impl Plc {
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

    /// Serves the directory on `listener`.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let me = self.clone();
        server::serve(
            listener,
            "sim-plc".into(),
            Arc::new(move |mut s, head, _| {
                let did = crate::http::front::percent_decode(head.path().trim_start_matches('/'));
                let docs = me.docs.read().unwrap_or_else(PoisonError::into_inner);
                match docs.get(&did) {
                    Some(Entry::Live(doc)) => respond_json(&mut s, 200, doc),
                    Some(Entry::Tombstoned) => {
                        respond_json(&mut s, 410, &json!({"message": "DID not available"}))
                    }
                    None => respond_json(
                        &mut s,
                        404,
                        &json!({"message": format!("DID not registered: {did}")}),
                    ),
                }
            }),
        )?;
        Ok(addr)
    }
}
