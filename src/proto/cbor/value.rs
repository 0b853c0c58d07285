//! A generic owned DAG-CBOR value, with the atproto JSON mapping (`$link`, `$bytes`).
//!
//! The hot path decodes straight into typed structs; this type serves the places that need
//! arbitrary data: test fixtures, the scenario runner (frames captured as JSON) and HTTP bodies.

use super::decode::{CborError, Kind, MAX_DEPTH, Reader, key_cmp};
use super::encode::Writer;
use crate::proto::cid::Cid;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::Value as Json;
use std::io::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Bytes(Vec<u8>),
    Str(String),
    Link(Cid),
    Array(Vec<Value>),
    /// Entries kept in canonical key order.
    Map(Vec<(String, Value)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("numbers must be integers in the signed 64-bit range")]
    Number,
    #[error("invalid $link: {0}")]
    Link(String),
    #[error("invalid $bytes: {0}")]
    Bytes(String),
    #[error("nesting deeper than {MAX_DEPTH}")]
    Depth,
}

impl Value {
    /// Strictly decodes exactly one canonical item.
    pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r, MAX_DEPTH)?;
        r.finish()?;
        Ok(v)
    }

    /// Reads one item from a reader (strict), allowing `depth` levels of nesting below it.
    pub fn read(r: &mut Reader<'_>, depth: usize) -> Result<Value, CborError> {
        Ok(match r.peek_kind()? {
            Kind::Unsigned | Kind::Negative => Value::Int(r.i64()?),
            Kind::Bytes => Value::Bytes(r.bytes()?.to_vec()),
            Kind::Text => Value::Str(r.str()?.to_owned()),
            Kind::Bool => Value::Bool(r.bool()?),
            Kind::Null => {
                r.try_null()?;
                Value::Null
            }
            Kind::Tag => Value::Link(r.cid()?),
            Kind::Array => {
                let n = r.array()?;
                if n > 0 && depth == 0 {
                    return Err(CborError::Depth);
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(Self::read(r, depth - 1)?);
                }
                Value::Array(items)
            }
            Kind::Map => {
                let mut keys = r.map()?;
                if !keys.is_empty() && depth == 0 {
                    return Err(CborError::Depth);
                }
                let mut entries = Vec::with_capacity(keys.len().min(1024));
                while let Some(k) = keys.next(r)? {
                    entries.push((k.to_owned(), Self::read(r, depth - 1)?));
                }
                Value::Map(entries)
            }
        })
    }

    /// Canonical encoding (map keys sorted length-first, then bytewise).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_bytes()
    }

    pub fn write(&self, w: &mut Writer) {
        match self {
            Value::Null => {
                w.null();
            }
            Value::Bool(b) => {
                w.bool(*b);
            }
            Value::Int(i) => {
                w.i64(*i);
            }
            Value::Bytes(b) => {
                w.bytes(b);
            }
            Value::Str(s) => {
                w.str(s);
            }
            Value::Link(c) => {
                w.cid(c);
            }
            Value::Array(items) => {
                w.array(items.len());
                for i in items {
                    i.write(w);
                }
            }
            Value::Map(entries) => {
                let mut sorted: Vec<&(String, Value)> = entries.iter().collect();
                sorted.sort_by(|a, b| key_cmp(&a.0, &b.0));
                w.map(sorted.len());
                for (k, v) in sorted {
                    w.str(k);
                    v.write(w);
                }
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets a map entry (no-op on non-maps).
    pub fn set(&mut self, key: &str, value: Value) {
        if let Value::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(e) => e.1 = value,
                None => {
                    entries.push((key.to_owned(), value));
                    entries.sort_by(|a, b| key_cmp(&a.0, &b.0));
                }
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        if let Value::Map(entries) = self {
            let i = entries.iter().position(|(k, _)| k == key)?;
            return Some(entries.remove(i).1);
        }
        None
    }

    /// Converts from the atproto JSON form.
    pub fn from_json(j: &Json) -> Result<Value, JsonError> {
        Self::from_json_depth(j, MAX_DEPTH)
    }

    fn from_json_depth(j: &Json, depth: usize) -> Result<Value, JsonError> {
        Ok(match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Int(n.as_i64().ok_or(JsonError::Number)?),
            Json::String(s) => Value::Str(s.clone()),
            Json::Array(a) => {
                if depth == 0 && !a.is_empty() {
                    return Err(JsonError::Depth);
                }
                Value::Array(
                    a.iter()
                        .map(|x| Self::from_json_depth(x, depth - 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            Json::Object(o) => {
                if o.len() == 1 {
                    if let Some(l) = o.get("$link") {
                        let s = l
                            .as_str()
                            .ok_or_else(|| JsonError::Link("not a string".into()))?;
                        return s
                            .parse::<Cid>()
                            .map(Value::Link)
                            .map_err(|e| JsonError::Link(e.to_string()));
                    }
                    if let Some(b) = o.get("$bytes") {
                        let s = b
                            .as_str()
                            .ok_or_else(|| JsonError::Bytes("not a string".into()))?;
                        let t = s.trim_end_matches('=');
                        return STANDARD_NO_PAD
                            .decode(t)
                            .map(Value::Bytes)
                            .map_err(|e| JsonError::Bytes(e.to_string()));
                    }
                }
                if depth == 0 && !o.is_empty() {
                    return Err(JsonError::Depth);
                }
                let mut entries = Vec::with_capacity(o.len());
                for (k, v) in o {
                    entries.push((k.clone(), Self::from_json_depth(v, depth - 1)?));
                }
                entries.sort_by(|a, b| key_cmp(&a.0, &b.0));
                Value::Map(entries)
            }
        })
    }

    /// Converts to the atproto JSON form (`$bytes` is unpadded standard base64).
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Str(s) => Json::String(s.clone()),
            Value::Bytes(b) => serde_json::json!({ "$bytes": STANDARD_NO_PAD.encode(b) }),
            Value::Link(c) => serde_json::json!({ "$link": c.to_string() }),
            Value::Array(a) => Json::Array(a.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                let mut o = serde_json::Map::new();
                for (k, v) in m {
                    o.insert(k.clone(), v.to_json());
                }
                Json::Object(o)
            }
        }
    }

    /// Writes the data-model JSON form straight to `out`: the same text as serialising
    /// `to_json()` (keys in byte order, as a JSON object map keeps them) without building the
    /// tree, which was most of the cost of turning a record into Jetstream JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Str(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b"{\"$bytes\":\"");
                out.extend_from_slice(STANDARD_NO_PAD.encode(b).as_bytes());
                out.extend_from_slice(b"\"}");
            }
            Value::Link(c) => {
                let _ = write!(out, "{{\"$link\":\"{c}\"}}");
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write_json(out);
                }
                out.push(b']');
            }
            Value::Map(m) => {
                let mut order: Vec<&(String, Value)> = m.iter().collect();
                order.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'{');
                for (i, (k, v)) in order.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    v.write_json(out);
                }
                out.push(b'}');
            }
        }
    }
}

/// Standard padded base64, for places (HTTP) where consumers expect it.
pub fn base64_padded(b: &[u8]) -> String {
    STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::Value;

    #[test]
    fn write_json_is_the_text_of_to_json() {
        let j = serde_json::json!({
            "text": "héllo \"q\" \u{1F600} \n", "z": [1, -2, [true, null]], "a": {"$bytes": "AAEC/w"},
            "ref": {"$link": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"},
            "bb": {"y": 1, "x": {}}, "aa": [], "n": i64::MIN,
        });
        let v = Value::from_json(&j).expect("data model");
        let mut out = Vec::new();
        v.write_json(&mut out);
        assert_eq!(out, serde_json::to_vec(&v.to_json()).expect("json"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).expect("parses"),
            j
        );
    }
}
