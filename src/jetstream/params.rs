//! Jetstream v1 subscription options: from the `/subscribe` query string (before the upgrade)
//! and from a client's `options_update` message (which replaces the filter). The rules and the
//! error texts follow the v1 server (see `../shared/spec/jetstream.md` §1, §2).

use crate::proto::syntax::{is_valid_did, is_valid_nsid};
use crate::util::{PrehashedMap, did_hash};

pub const MAX_COLLECTIONS: usize = 100;
pub const MAX_DIDS: usize = 10_000;

/// Values keyed by their `did_hash`, so a check against an event's precomputed hash costs no
/// string hashing (colliding values share a slot).
#[derive(Clone, Default)]
struct HashedSet(PrehashedMap<Vec<String>>);

impl HashedSet {
    fn insert(&mut self, v: &str) {
        let slot = self.0.entry(did_hash(v)).or_default();
        if !slot.iter().any(|x| x == v) {
            slot.push(v.to_owned());
        }
    }
    fn has_hash(&self, hash: u64) -> bool {
        self.0.contains_key(&hash)
    }
    fn contains(&self, hash: u64, v: &str) -> bool {
        self.0.get(&hash).is_some_and(|s| s.iter().any(|x| x == v))
    }
    fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn values(&self) -> impl Iterator<Item = &String> {
        self.0.values().flatten()
    }
}

impl PartialEq for HashedSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .0
                .iter()
                .all(|(h, vs)| vs.iter().all(|v| other.contains(*h, v)))
    }
}

impl Eq for HashedSet {}

impl std::fmt::Debug for HashedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values()).finish()
    }
}

/// Which events a consumer wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact collection NSIDs; empty with no prefixes: every collection.
    collections: HashedSet,
    /// `app.bsky.graph.*` is kept as `app.bsky.graph.` and matched as a prefix.
    prefixes: Vec<String>,
    /// Empty: every DID.
    dids: HashedSet,
    /// Events whose JSON is longer are skipped (0: no cap).
    max_message_size: usize,
}

impl Filter {
    /// Builds a filter from lists as given; `Err` names the first bad value.
    pub fn new(
        collections: &[String],
        dids: &[String],
        max_message_size: usize,
    ) -> Result<Filter, String> {
        let mut f = Filter {
            max_message_size,
            ..Filter::default()
        };
        for c in collections {
            match c.strip_suffix('*') {
                Some(head) if head.ends_with('.') => {
                    if !f.prefixes.iter().any(|p| p == head) {
                        f.prefixes.push(head.to_owned());
                    }
                }
                _ if is_valid_nsid(c) => f.collections.insert(c),
                _ => return Err(format!("invalid collection: {c}")),
            }
        }
        let n = f.collections.len() + f.prefixes.len();
        if n > MAX_COLLECTIONS {
            return Err(format!(
                "too many wanted collections: {n} > {MAX_COLLECTIONS}"
            ));
        }
        for d in dids {
            if !is_valid_did(d) {
                return Err(format!("invalid DID: {d}"));
            }
            f.dids.insert(d);
        }
        if f.dids.len() > MAX_DIDS {
            return Err(format!(
                "too many wanted DIDs: {} > {MAX_DIDS}",
                f.dids.len()
            ));
        }
        Ok(f)
    }

    /// Whether an event of `did` (and, for a commit op, `collection`) passes. Identity and
    /// account events (`collection` None) are not filtered by collection.
    pub fn wants(&self, did: &str, collection: Option<&str>) -> bool {
        self.wants_hashed(
            did_hash(did),
            did,
            collection.map(|c| (did_hash(c), move || c)),
        )
    }

    /// `wants`, given each value's `did_hash` as computed once when the event was encoded. The
    /// collection's name is asked for only when a collection filter needs it: it is read from
    /// the event's JSON, memory a compressed or DID-filtered consumer need not touch.
    pub fn wants_hashed<'a>(
        &self,
        did_h: u64,
        did: &str,
        collection: Option<(u64, impl FnOnce() -> &'a str)>,
    ) -> bool {
        if !self.dids.is_empty() && !self.dids.contains(did_h, did) {
            return false;
        }
        let Some((ch, name)) = collection else {
            return true;
        };
        if self.collections.is_empty() && self.prefixes.is_empty() {
            return true;
        }
        // Most events miss an exact filter on the hash alone.
        if self.prefixes.is_empty() && !self.collections.has_hash(ch) {
            return false;
        }
        let c = name();
        self.collections.contains(ch, c) || self.prefixes.iter().any(|p| c.starts_with(p.as_str()))
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// For the admin consumer list: (collections and prefixes, DID count).
    pub fn describe(&self) -> (Vec<String>, usize) {
        let mut c: Vec<String> = self.collections.values().cloned().collect();
        c.extend(self.prefixes.iter().map(|p| format!("{p}*")));
        c.sort();
        (c, self.dids.len())
    }
}

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Live,
    /// The first event with `time_us >=` this.
    From(i64),
}

/// Everything the query string says.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub filter: Filter,
    pub cursor: Cursor,
    pub compress: bool,
    pub require_hello: bool,
}

/// `maxMessageSizeBytes`: anything that is not a plain non-negative integer below 2^32 is 0.
fn lenient_size(s: &str) -> usize {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    s.parse::<u64>()
        .ok()
        .filter(|&v| v < (1 << 32))
        .map_or(0, |v| v as usize)
}

/// Parses the query (`pairs` already percent-decoded, repeated keys kept) and the
/// `Socket-Encoding` header. `Err` is the 400 text.
pub fn from_query(
    pairs: &[(String, String)],
    socket_encoding: Option<&str>,
) -> Result<Options, String> {
    let all = |k: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let one = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let filter = Filter::new(
        &all("wantedCollections"),
        &all("wantedDids"),
        one("maxMessageSizeBytes").map_or(0, lenient_size),
    )
    .map_err(|e| format!("invalid options: {e}"))?;
    let cursor = match one("cursor") {
        None | Some("") => Cursor::Live,
        Some(c) => match c.parse::<i64>() {
            Ok(v) if v < 0 => return Err(format!("invalid cursor: negative value {v}")),
            Ok(v) => Cursor::From(v),
            Err(_) => return Err(format!("invalid cursor: {c:?}")),
        },
    };
    Ok(Options {
        filter,
        cursor,
        compress: one("compress") == Some("true")
            || socket_encoding.is_some_and(|e| e.contains("zstd")),
        require_hello: one("requireHello") == Some("true"),
    })
}

/// Why a client message was refused: the close code and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: String,
}

/// What a client's text message asks for.
#[derive(Debug, PartialEq)]
pub enum ClientMessage {
    Update(Filter),
    /// Another `type`: ignored.
    Other,
}

/// A client text message: `{"type": "options_update", "payload": {...}}`.
pub fn client_message(text: &str) -> Result<ClientMessage, Refused> {
    let bad = |code: u16, reason: &str| Refused {
        code,
        reason: reason.to_owned(),
    };
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| bad(1007, "bad SubscriberSourcedMessage envelope"))?;
    let Some(obj) = v.as_object() else {
        return Err(bad(1007, "bad SubscriberSourcedMessage envelope"));
    };
    if obj.get("type").and_then(|t| t.as_str()) != Some("options_update") {
        return Ok(ClientMessage::Other);
    }
    let payload = match obj.get("payload") {
        None => return Err(bad(1007, "bad options_update payload")),
        Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad(1007, "bad options_update payload")),
    };
    let list = |k: &str| -> Result<Vec<String>, Refused> {
        match payload.get(k) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(1007, "bad options_update payload"))
                })
                .collect(),
            Some(_) => Err(bad(1007, "bad options_update payload")),
        }
    };
    let size = match payload.get("maxMessageSizeBytes") {
        None | Some(serde_json::Value::Null) => 0,
        Some(v) => match (v.as_i64(), v.as_u64()) {
            (Some(i), _) if i < 0 => 0,
            (_, Some(u)) => (u % (1 << 32)) as usize,
            _ => return Err(bad(1007, "bad options_update payload")),
        },
    };
    Filter::new(&list("wantedCollections")?, &list("wantedDids")?, size)
        .map(ClientMessage::Update)
        .map_err(|e| {
            let mut reason = format!("invalid options: {e}");
            if reason.len() > 120 {
                let mut cut = 117;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push_str("...");
            }
            Refused { code: 1008, reason }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Options, String> {
        let pairs: Vec<(String, String)> = s
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        from_query(&pairs, None)
    }

    #[test]
    fn query_parameters() {
        let o = q("").unwrap();
        assert_eq!(o.cursor, Cursor::Live);
        assert!(!o.compress && !o.require_hello);
        assert!(o.filter.wants("did:plc:a", Some("app.bsky.feed.post")));
        let o = q("wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.graph.*&wantedDids=did:plc:abc").unwrap();
        assert!(o.filter.wants("did:plc:abc", Some("app.bsky.feed.post")));
        assert!(o.filter.wants("did:plc:abc", Some("app.bsky.graph.follow")));
        assert!(
            !o.filter
                .wants("did:plc:abc", Some("app.bsky.graphx.follow"))
        );
        assert!(!o.filter.wants("did:plc:abc", Some("app.bsky.feed.like")));
        assert!(!o.filter.wants("did:plc:other", Some("app.bsky.feed.post")));
        // Identity and account events pass the collection filter, not the DID filter.
        assert!(o.filter.wants("did:plc:abc", None));
        assert!(!o.filter.wants("did:plc:other", None));
        for bad in [
            "wantedCollections=app.bsky.fo*",
            "wantedCollections=*",
            "wantedCollections=",
            "wantedCollections=app.bsky.feed.post,app.bsky.feed.like",
            "wantedDids=",
            "wantedDids=plc:abc",
            "cursor=abc",
            "cursor=1.5",
            "cursor=-5",
        ] {
            assert!(q(bad).is_err(), "{bad}");
        }
        assert!(
            q("wantedCollections=app.bsky.fo*")
                .unwrap_err()
                .contains("invalid collection: app.bsky.fo*")
        );
        let many: Vec<String> = (0..101)
            .map(|i| format!("wantedCollections=com.example.c{i}"))
            .collect();
        assert!(
            q(&many.join("&"))
                .unwrap_err()
                .contains("too many wanted collections")
        );
        assert_eq!(
            q("cursor=1700000000000000").unwrap().cursor,
            Cursor::From(1_700_000_000_000_000)
        );
        assert_eq!(q("cursor=").unwrap().cursor, Cursor::Live);
        assert!(q("compress=true").unwrap().compress);
        assert!(!q("compress=True").unwrap().compress);
        assert!(q("requireHello=true").unwrap().require_hello);
        assert!(!q("requireHello=1").unwrap().require_hello);
        for (v, n) in [
            ("100", 100),
            ("1e6", 0),
            ("-1", 0),
            ("4294967296", 0),
            ("", 0),
        ] {
            assert_eq!(
                q(&format!("maxMessageSizeBytes={v}"))
                    .unwrap()
                    .filter
                    .max_message_size(),
                n,
                "{v}"
            );
        }
        let pairs = vec![];
        assert!(from_query(&pairs, Some("zstd")).unwrap().compress);
    }

    #[test]
    fn options_update_messages() {
        let m = client_message(r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.post"],"maxMessageSizeBytes":1000}}"#).unwrap();
        let ClientMessage::Update(f) = m else {
            panic!()
        };
        assert!(f.wants("did:plc:x", Some("app.bsky.feed.post")));
        assert!(!f.wants("did:plc:x", Some("app.bsky.feed.like")));
        assert_eq!(f.max_message_size(), 1000);
        let ClientMessage::Update(f) =
            client_message(r#"{"type":"options_update","payload":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(f, Filter::default());
        assert_eq!(
            client_message(r#"{"type":"heartbeat"}"#),
            Ok(ClientMessage::Other)
        );
        assert_eq!(client_message(r#"{}"#), Ok(ClientMessage::Other));
        for (text, code) in [
            ("not json", 1007),
            ("[]", 1007),
            (r#""x""#, 1007),
            (r#"{"type":"options_update"}"#, 1007),
            (r#"{"type":"options_update","payload":"x"}"#, 1007),
            (
                r#"{"type":"options_update","payload":{"wantedDids":[1]}}"#,
                1007,
            ),
            (
                r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.fo*"]}}"#,
                1008,
            ),
        ] {
            assert_eq!(client_message(text).unwrap_err().code, code, "{text}");
        }
    }
}
