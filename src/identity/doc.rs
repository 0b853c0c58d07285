//! DID documents: the parts a relay needs (signing key, PDS endpoint, declared handle), extracted
//! exactly as the DID spec says, with every field treated as hostile input.

use crate::proto::crypto::{Curve, PublicKey};
use crate::proto::syntax::is_valid_handle;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub did: String,
    /// First `at://` alias with valid handle syntax, lower-cased (unverified).
    pub handle: Option<String>,
    /// `#atproto` signing key; `None` makes the account "broken" (its commits are ignored).
    pub key: Option<PublicKey>,
    /// `#atproto_pds` endpoint, e.g. `https://pds.example.com` or `http://localhost:2583`.
    pub pds: Option<String>,
}

impl Identity {
    /// `host[:port]` of the PDS endpoint, lower-cased (what relays call the hostname).
    pub fn pds_host(&self) -> Option<String> {
        self.pds.as_deref().and_then(endpoint_host)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("DID document is not a JSON object")]
    NotObject,
    #[error("DID document id {0:?} does not match the DID")]
    IdMismatch(String),
}

/// `host[:port]` of an http(s) URL with no path, query, fragment or userinfo.
pub fn endpoint_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some(rest.to_ascii_lowercase())
}

fn matches_fragment(id: &str, did: &str, fragment: &str) -> bool {
    id == fragment || id.strip_prefix(did).is_some_and(|f| f == fragment)
}

fn key_of(vm: &Value, did: &str) -> Option<PublicKey> {
    if vm.get("controller").and_then(Value::as_str) != Some(did) {
        return None;
    }
    let mb = vm.get("publicKeyMultibase").and_then(Value::as_str)?;
    match vm.get("type").and_then(Value::as_str)? {
        "Multikey" => PublicKey::from_multikey(mb).ok(),
        legacy => PublicKey::from_legacy_multibase(Curve::from_legacy_type(legacy)?, mb).ok(),
    }
}

/// Extracts the identity from a resolved document for `did`.
pub fn parse(did: &str, doc: &Value) -> Result<Identity, DocError> {
    let obj = doc.as_object().ok_or(DocError::NotObject)?;
    let id = obj.get("id").and_then(Value::as_str).unwrap_or("");
    if id != did {
        return Err(DocError::IdMismatch(id.chars().take(200).collect()));
    }
    let handle = obj
        .get("alsoKnownAs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|aka| {
            aka.strip_prefix("at://")
                .filter(|h| is_valid_handle(h))
                .map(str::to_ascii_lowercase)
        });
    let key = obj
        .get("verificationMethod")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|vm| {
            vm.get("id")
                .and_then(Value::as_str)
                .is_some_and(|i| matches_fragment(i, did, "#atproto"))
        })
        .and_then(|vm| key_of(vm, did));
    let pds = obj
        .get("service")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|s| {
            s.get("id")
                .and_then(Value::as_str)
                .is_some_and(|i| matches_fragment(i, did, "#atproto_pds"))
                && s.get("type").and_then(Value::as_str) == Some("AtprotoPersonalDataServer")
        })
        .and_then(|s| s.get("serviceEndpoint").and_then(Value::as_str))
        .filter(|u| endpoint_host(u).is_some())
        .map(|u| u.trim_end_matches('/').to_owned());
    Ok(Identity {
        did: did.to_owned(),
        handle,
        key,
        pds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_plc_documents_and_rejects_junk() {
        let did = "did:plc:vvpy7d6y2li5yo73cgbszibl";
        let doc = json!({
            "id": did,
            "alsoKnownAs": ["at://not valid", "at://Pengua.bsky.social"],
            "verificationMethod": [
                {"id": "#other", "type": "Multikey", "controller": did, "publicKeyMultibase": "zQ3shdADPnggw3JH3JFg2parVSUsf2T9CLKKNBxViuc94PNsm"},
                {"id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": "zQ3shdADPnggw3JH3JFg2parVSUsf2T9CLKKNBxViuc94PNsm"}
            ],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://calocybe.us-west.host.bsky.network"}]
        });
        let id = parse(did, &doc).unwrap();
        assert_eq!(id.handle.as_deref(), Some("pengua.bsky.social"));
        assert!(id.key.is_some());
        assert_eq!(
            id.pds_host().as_deref(),
            Some("calocybe.us-west.host.bsky.network")
        );
        assert_eq!(
            parse("did:plc:other", &doc),
            Err(DocError::IdMismatch(did.into()))
        );
        assert_eq!(
            endpoint_host("http://localhost:2583"),
            Some("localhost:2583".into())
        );
        assert_eq!(endpoint_host("https://a.com/path"), None);
        assert_eq!(endpoint_host("https://user@a.com"), None);
        assert_eq!(endpoint_host("ftp://a.com"), None);
        let broken = json!({"id": did, "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": "did:plc:x", "publicKeyMultibase": "zQ3shdADPnggw3JH3JFg2parVSUsf2T9CLKKNBxViuc94PNsm"}]});
        let b = parse(did, &broken).unwrap();
        assert!(
            b.key.is_none() && b.pds.is_none(),
            "a key controlled by someone else does not count"
        );
    }
}
