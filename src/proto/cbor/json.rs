//! DAG-CBOR straight to the atproto data-model JSON, without building a `Value` first.
//!
//! Jetstream renders every record of every commit it sends; decoding each into a `Value` tree
//! (an allocation per string, array and map) and then writing that out was most of its encode
//! cost. This writes the JSON as it reads, with the same strict reader, and gives byte for byte
//! what `Value::decode` then `Value::write_json` give: map keys sorted bytewise (DAG-CBOR's
//! order is length-first, so most maps are re-ordered once written), `{"$link": ...}` for CIDs
//! and `{"$bytes": ...}` (unpadded base64) for byte strings. It writes into a `String`, so the
//! event holding it needs no second UTF-8 check before it is sent as a text message.

use super::decode::{CborError, Kind, MAX_DEPTH, Reader};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use std::fmt::Write as _;

/// Appends the JSON form of exactly one strict DAG-CBOR item to `out`; on an error `out` is left
/// as it was.
pub fn write_json(bytes: &[u8], out: &mut String) -> Result<(), CborError> {
    let start = out.len();
    let mut r = Reader::new(bytes);
    let mut scratch = Scratch::default();
    let done = item(&mut r, MAX_DEPTH, out, &mut scratch).and_then(|()| r.finish());
    if done.is_err() {
        out.truncate(start);
    }
    done
}

/// Reused by every map of one item: the written entries' keys and spans, and room to re-order.
#[derive(Default)]
struct Scratch<'a> {
    /// (key, start, end) in `out` of each entry of the maps being written, innermost last.
    entries: Vec<(&'a str, usize, usize)>,
    copy: String,
}

/// A JSON string, escaped as serde_json escapes it: `"`, `\` and control characters (`\n`,
/// `\r`, `\t`, `\b`, `\f`, else `\u00xx`); everything else, non-ASCII included, as it is.
pub fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    // Most text needs no escape: skip it eight bytes at a time.
    let mut clean = 0;
    let mut from = 0;
    while let Some(word) = bytes.get(from..from + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if needs_escape(u64::from_le_bytes(w)) {
            break;
        }
        from += 8;
    }
    for (i, b) in bytes.iter().copied().enumerate().skip(from) {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `clean..i` lies on character boundaries.
        out.push_str(s.get(clean..i).unwrap_or_default());
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(short);
        }
        clean = i + 1;
    }
    out.push_str(s.get(clean..).unwrap_or_default());
    out.push('"');
}

/// Whether any of the eight bytes is a control character, `"` or `\\` (exact: the classic
/// zero-byte tests, which never report a byte of 0x80 or above).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

fn item<'a>(
    r: &mut Reader<'a>,
    depth: usize,
    out: &mut String,
    scratch: &mut Scratch<'a>,
) -> Result<(), CborError> {
    let h = r.head()?;
    match h.kind {
        Kind::Unsigned | Kind::Negative => {
            let _ = write!(out, "{}", r.take_i64(h)?);
        }
        Kind::Bytes => {
            let b = r.content(h)?;
            out.push_str("{\"$bytes\":\"");
            STANDARD_NO_PAD.encode_string(b, out);
            out.push_str("\"}");
        }
        Kind::Text => string(out, r.take_str(h)?),
        Kind::Bool => out.push_str(if r.bool()? { "true" } else { "false" }),
        Kind::Null => {
            r.try_null()?;
            out.push_str("null");
        }
        Kind::Tag => {
            let cid = r.take_cid(h)?;
            out.push_str("{\"$link\":\"");
            cid.write_text(out);
            out.push_str("\"}");
        }
        Kind::Array => {
            let n = r.take_array(h)?;
            if n > 0 && depth == 0 {
                return Err(CborError::Depth);
            }
            out.push('[');
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                item(r, depth - 1, out, scratch)?;
            }
            out.push(']');
        }
        Kind::Map => {
            let mut keys = r.take_map(h)?;
            if !keys.is_empty() && depth == 0 {
                return Err(CborError::Depth);
            }
            out.push('{');
            let base = scratch.entries.len();
            let mut sorted = true;
            while let Some(k) = keys.next(r)? {
                if scratch.entries.len() > base {
                    out.push(',');
                }
                let start = out.len();
                string(out, k);
                out.push(':');
                item(r, depth - 1, out, scratch)?;
                // Entries of maps inside this value were popped when those maps closed.
                if scratch.entries.len() > base && scratch.entries.last().is_some_and(|p| p.0 > k) {
                    sorted = false;
                }
                scratch.entries.push((k, start, out.len()));
            }
            if !sorted {
                reorder(out, base, scratch);
            }
            scratch.entries.truncate(base);
            out.push('}');
        }
    }
    Ok(())
}

/// Rewrites the entries from `scratch.entries[base..]` (the tail of `out`) in bytewise key order.
fn reorder(out: &mut String, base: usize, scratch: &mut Scratch<'_>) {
    let entries = &mut scratch.entries[base..];
    let Some(from) = entries.first().map(|e| e.1) else {
        return;
    };
    // Entries start and end at ASCII bytes (a quote, a closing bracket, a digit...), so every
    // span lies on character boundaries.
    scratch.copy.clear();
    scratch.copy.push_str(out.get(from..).unwrap_or_default());
    out.truncate(from);
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (i, &(_, start, end)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(
            scratch
                .copy
                .get(start - from..end - from)
                .unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cbor::Value;
    use crate::proto::cid::Cid;

    fn via_value(bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        Value::decode(bytes).ok()?.write_json(&mut out);
        Some(out)
    }

    fn streamed(bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = "prefix".to_string();
        match write_json(bytes, &mut out) {
            Ok(()) => Some(out.split_off(6).into_bytes()),
            Err(_) => {
                assert_eq!(out, "prefix", "a failed item leaves the buffer as it was");
                None
            }
        }
    }

    fn record() -> Value {
        let s = |v: &str| Value::Str(v.into());
        let cid = Cid::dag_cbor(b"\xa0");
        let map = |e: Vec<(&str, Value)>| {
            let mut e: Vec<(String, Value)> = e.into_iter().map(|(k, v)| (k.into(), v)).collect();
            e.sort_by(|a, b| crate::proto::cbor::key_cmp(&a.0, &b.0));
            Value::Map(e)
        };
        map(vec![
            ("$type", s("app.bsky.feed.post")),
            ("text", s("héllo \"wörld\" \n\u{1F600} \u{7}")),
            ("createdAt", s("2026-12-03T00:00:00.000Z")),
            ("langs", Value::Array(vec![s("en"), s("de")])),
            ("n", Value::Int(-42)),
            ("big", Value::Int(i64::MAX)),
            ("ok", Value::Bool(true)),
            ("none", Value::Null),
            ("raw", Value::Bytes(vec![0, 1, 2, 255])),
            ("empty", map(vec![])),
            (
                "embed",
                map(vec![
                    ("$type", s("app.bsky.embed.images")),
                    (
                        "images",
                        Value::Array(vec![map(vec![
                            ("alt", s("")),
                            (
                                "image",
                                map(vec![
                                    ("$type", s("blob")),
                                    ("ref", Value::Link(cid)),
                                    ("mimeType", s("image/jpeg")),
                                    ("size", Value::Int(1234)),
                                ]),
                            ),
                        ])]),
                    ),
                ]),
            ),
            (
                "nested",
                Value::Array(vec![Value::Array(vec![Value::Array(vec![])]), map(vec![])]),
            ),
        ])
    }

    #[test]
    fn streams_what_the_value_tree_writes() {
        let bytes = record().encode();
        let want = via_value(&bytes).expect("valid record");
        assert_eq!(streamed(&bytes), Some(want.clone()));
        let json: serde_json::Value = serde_json::from_slice(&want).expect("JSON");
        assert_eq!(
            json["embed"]["images"][0]["image"]["mimeType"],
            "image/jpeg"
        );
        // Keys come out bytewise: `$type` before `big`, `createdAt` before `text`.
        let text = String::from_utf8(want).expect("UTF-8");
        assert!(text.starts_with("{\"$type\":\"app.bsky.feed.post\",\"big\":"));
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every: String = (0u8..0x80).map(char::from).collect();
        every.push_str("é✓日本語\u{1F600}\u{7f}\u{2028}");
        for s in [every.as_str(), "", "plain", "\"", "a\\b\u{0}c", "end\n"] {
            let mut out = String::from("x");
            string(&mut out, s);
            let want = serde_json::to_string(s).expect("a str serialises");
            assert_eq!(out, format!("x{want}"), "{s:?}");
        }
        // Every ASCII byte at every offset of a long string, past the eight-byte skip too, among
        // plain and multi-byte text.
        for fill in ["abcdefgh", "ééé日本"] {
            for at in 0..20 {
                for b in 0u8..0x80 {
                    let mut s: String = fill.repeat(3);
                    let at = (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    s.insert(at, char::from(b));
                    let mut out = String::new();
                    string(&mut out, &s);
                    let want = serde_json::to_string(&s).expect("a str serialises");
                    assert_eq!(out, want, "{s:?}");
                }
            }
        }
    }

    #[test]
    fn refuses_what_the_strict_decoder_refuses() {
        let bytes = record().encode();
        for cut in 0..bytes.len() {
            assert_eq!(streamed(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(streamed(&trailing), None);
        // Keys out of canonical order, a float, an indefinite-length map.
        for bad in [
            &b"\xa2\x62bb\x01\x61a\x02"[..],
            b"\xfb\x3f\xf0\0\0\0\0\0\0",
            b"\xbf\x61a\x01\xff",
        ] {
            assert_eq!(streamed(bad), None);
            assert_eq!(via_value(bad), None);
        }
        // Every single-byte corruption agrees with the tree's answer.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x41;
            assert_eq!(streamed(&b), via_value(&b), "byte {i} flipped");
        }
    }
}
