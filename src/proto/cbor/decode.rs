//! Strict DAG-CBOR (DRISL) reading on top of `minicbor`.
//!
//! `minicbor` happily accepts non-minimal integers, indefinite lengths and any tag; atproto does
//! not, because a non-canonical block would not reproduce its CID when re-encoded (and MST
//! inversion re-encodes). So every item's head is inspected here, and the item is consumed from
//! that inspection: `minicbor`'s decoder keeps the position. (Handing each item back to
//! `minicbor` to consume parsed every head a second time, a fifth of the reader's time.)
//! Nothing is allocated from a length field: lengths are checked against the bytes that remain
//! before anything else happens.

use crate::proto::cid::Cid;
use std::cmp::Ordering;

/// Maximum nesting depth (data-validation guide).
pub const MAX_DEPTH: usize = 32;
/// Maximum elements in one array or map (data-validation guide).
pub const MAX_ITEMS: usize = 131_072;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("unexpected end of input")]
    Eof,
    #[error("indefinite-length item or break byte")]
    Indefinite,
    #[error("non-minimal integer or length encoding")]
    NonMinimal,
    #[error("floating-point value")]
    Float,
    #[error("simple value other than true/false/null")]
    Simple,
    #[error("reserved additional-information value")]
    Reserved,
    #[error("tag {0} (only 42 is allowed)")]
    Tag(u64),
    #[error("malformed CID link: {0}")]
    BadCid(&'static str),
    #[error("CID link is not dag-cbor/sha-256")]
    NotBlessed,
    #[error("map key is not a text string")]
    KeyType,
    #[error("map keys out of canonical order")]
    KeyOrder,
    #[error("duplicate map key")]
    DuplicateKey,
    #[error("invalid UTF-8 in text string")]
    Utf8,
    #[error("integer outside the signed 64-bit range")]
    IntRange,
    #[error("trailing bytes after the top-level item")]
    Trailing,
    #[error("nesting deeper than {MAX_DEPTH}")]
    Depth,
    #[error("container longer than allowed or than the remaining input")]
    TooManyItems,
    #[error("expected {expected}, found {found}")]
    Type {
        expected: &'static str,
        found: &'static str,
    },
}

/// Major types as seen on the wire (7 = simple values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unsigned,
    Negative,
    Bytes,
    Text,
    Array,
    Map,
    Tag,
    Bool,
    Null,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unsigned | Kind::Negative => "integer",
            Kind::Bytes => "bytes",
            Kind::Text => "text",
            Kind::Array => "array",
            Kind::Map => "map",
            Kind::Tag => "tag",
            Kind::Bool => "bool",
            Kind::Null => "null",
        }
    }
}

/// A validated item head: what the reader's typed methods consume, read once. (`json` and
/// `skip` peek at the kind and then consume from the same head, instead of parsing it twice.)
#[derive(Clone, Copy)]
pub(super) struct Head {
    pub(super) kind: Kind,
    arg: u64,
    /// Bytes of the head itself (1 to 9).
    len: usize,
}

/// Canonical DAG-CBOR key order: shorter first, then bytewise.
pub fn key_cmp(a: &str, b: &str) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// A strict cursor over one buffer.
pub struct Reader<'a> {
    dec: minicbor::Decoder<'a>,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            dec: minicbor::Decoder::new(bytes),
        }
    }

    pub fn position(&self) -> usize {
        self.dec.position()
    }

    pub fn input(&self) -> &'a [u8] {
        self.dec.input()
    }

    pub fn remaining(&self) -> usize {
        self.dec.input().len() - self.dec.position()
    }

    pub fn is_at_end(&self) -> bool {
        self.remaining() == 0
    }

    /// Fails unless the whole input has been consumed.
    pub fn finish(&self) -> Result<(), CborError> {
        if self.is_at_end() {
            Ok(())
        } else {
            Err(CborError::Trailing)
        }
    }

    /// Decodes and validates the head of the next item without consuming it (for `take_*`).
    pub(super) fn head(&self) -> Result<Head, CborError> {
        let input = self.dec.input();
        let pos = self.dec.position();
        let b = *input.get(pos).ok_or(CborError::Eof)?;
        let major = b >> 5;
        let info = b & 0x1f;
        let arg_bytes = |n: usize| -> Result<u64, CborError> {
            let s = input.get(pos + 1..pos + 1 + n).ok_or(CborError::Eof)?;
            Ok(s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        };
        if major == 7 {
            return match info {
                20 | 21 => Ok(Head {
                    kind: Kind::Bool,
                    arg: u64::from(info - 20),
                    len: 1,
                }),
                22 => Ok(Head {
                    kind: Kind::Null,
                    arg: 0,
                    len: 1,
                }),
                25..=27 => Err(CborError::Float),
                28..=30 => Err(CborError::Reserved),
                31 => Err(CborError::Indefinite),
                _ => Err(CborError::Simple),
            };
        }
        let (arg, len) = match info {
            0..=23 => (u64::from(info), 1),
            24 => {
                let v = arg_bytes(1)?;
                if v < 24 {
                    return Err(CborError::NonMinimal);
                }
                (v, 2)
            }
            25 => {
                let v = arg_bytes(2)?;
                if v <= 0xff {
                    return Err(CborError::NonMinimal);
                }
                (v, 3)
            }
            26 => {
                let v = arg_bytes(4)?;
                if v <= 0xffff {
                    return Err(CborError::NonMinimal);
                }
                (v, 5)
            }
            27 => {
                let v = arg_bytes(8)?;
                if v <= 0xffff_ffff {
                    return Err(CborError::NonMinimal);
                }
                (v, 9)
            }
            28..=30 => return Err(CborError::Reserved),
            _ => return Err(CborError::Indefinite),
        };
        let kind = match major {
            0 => Kind::Unsigned,
            1 => Kind::Negative,
            2 => Kind::Bytes,
            3 => Kind::Text,
            4 => Kind::Array,
            5 => Kind::Map,
            _ => Kind::Tag,
        };
        Ok(Head { kind, arg, len })
    }

    /// Moves past `n` bytes the caller has checked are there.
    fn advance(&mut self, n: usize) {
        let pos = self.dec.position();
        self.dec.set_position(pos + n);
    }

    /// The `h.arg` bytes after head `h` (a byte or text string's), consumed with it; `Eof` if
    /// they are not there.
    pub(super) fn content(&mut self, h: Head) -> Result<&'a [u8], CborError> {
        let pos = self.dec.position();
        let start = pos + h.len;
        let n = usize::try_from(h.arg).map_err(|_| CborError::Eof)?;
        let end = start.checked_add(n).ok_or(CborError::Eof)?;
        let bytes = self.dec.input().get(start..end).ok_or(CborError::Eof)?;
        self.dec.set_position(end);
        Ok(bytes)
    }

    /// The kind of the next item (validating its head).
    pub fn peek_kind(&self) -> Result<Kind, CborError> {
        Ok(self.head()?.kind)
    }

    fn expect(&self, kind: Kind, expected: &'static str) -> Result<Head, CborError> {
        let h = self.head()?;
        if h.kind != kind {
            return Err(CborError::Type {
                expected,
                found: h.kind.name(),
            });
        }
        Ok(h)
    }

    pub fn u64(&mut self) -> Result<u64, CborError> {
        let h = self.expect(Kind::Unsigned, "unsigned integer")?;
        self.advance(h.len);
        Ok(h.arg)
    }

    /// Any integer in the signed 64-bit range.
    pub fn i64(&mut self) -> Result<i64, CborError> {
        let h = self.head()?;
        self.take_i64(h)
    }

    /// The integer of head `h` (any kind: others are a type error).
    pub(super) fn take_i64(&mut self, h: Head) -> Result<i64, CborError> {
        match h.kind {
            Kind::Unsigned | Kind::Negative => {
                let Ok(n) = i64::try_from(h.arg) else {
                    return Err(CborError::IntRange);
                };
                self.advance(h.len);
                // A negative integer's argument n stands for -1 - n.
                Ok(if h.kind == Kind::Negative { -1 - n } else { n })
            }
            k => Err(CborError::Type {
                expected: "integer",
                found: k.name(),
            }),
        }
    }

    pub fn bool(&mut self) -> Result<bool, CborError> {
        let h = self.expect(Kind::Bool, "bool")?;
        self.advance(h.len);
        Ok(h.arg == 1)
    }

    /// Consumes a `null` if one is next.
    pub fn try_null(&mut self) -> Result<bool, CborError> {
        let h = self.head()?;
        if h.kind == Kind::Null {
            self.advance(h.len);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    pub fn str(&mut self) -> Result<&'a str, CborError> {
        let h = self.expect(Kind::Text, "text")?;
        self.take_str(h)
    }

    /// The text of a `Kind::Text` head.
    pub(super) fn take_str(&mut self, h: Head) -> Result<&'a str, CborError> {
        std::str::from_utf8(self.content(h)?).map_err(|_| CborError::Utf8)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let h = self.expect(Kind::Bytes, "bytes")?;
        self.content(h)
    }

    /// Reads an array header, bounding the length by the input that remains.
    pub fn array(&mut self) -> Result<usize, CborError> {
        let h = self.expect(Kind::Array, "array")?;
        self.take_array(h)
    }

    /// The length of a `Kind::Array` head.
    pub(super) fn take_array(&mut self, h: Head) -> Result<usize, CborError> {
        if h.arg > MAX_ITEMS as u64 || h.arg > self.remaining() as u64 {
            return Err(CborError::TooManyItems);
        }
        self.advance(h.len);
        Ok(h.arg as usize)
    }

    /// Reads a map header; use [`MapKeys`] to walk its keys in canonical order.
    pub fn map(&mut self) -> Result<MapKeys<'a>, CborError> {
        let h = self.expect(Kind::Map, "map")?;
        self.take_map(h)
    }

    /// The keys of a `Kind::Map` head.
    pub(super) fn take_map(&mut self, h: Head) -> Result<MapKeys<'a>, CborError> {
        if h.arg > MAX_ITEMS as u64 || h.arg.saturating_mul(2) > self.remaining() as u64 {
            return Err(CborError::TooManyItems);
        }
        self.advance(h.len);
        Ok(MapKeys {
            left: h.arg as usize,
            prev: None,
        })
    }

    /// A CID link: tag 42 over bytes `0x00 ‖ CID`.
    pub fn cid(&mut self) -> Result<Cid, CborError> {
        let h = self.expect(Kind::Tag, "CID link")?;
        self.take_cid(h)
    }

    /// The CID link of a `Kind::Tag` head.
    pub(super) fn take_cid(&mut self, h: Head) -> Result<Cid, CborError> {
        if h.arg != 42 {
            return Err(CborError::Tag(h.arg));
        }
        self.advance(h.len);
        let inner = self.head()?;
        if inner.kind != Kind::Bytes {
            return Err(CborError::BadCid("tag 42 does not wrap a byte string"));
        }
        let b = self.content(inner)?;
        match b.split_first() {
            Some((0, rest)) => Cid::from_bytes(rest).map_err(|_| CborError::BadCid("unparseable")),
            _ => Err(CborError::BadCid("missing 0x00 multibase prefix")),
        }
    }

    /// A structural link (MST, commit): must be dag-cbor/sha-256.
    pub fn blessed_cid(&mut self) -> Result<Cid, CborError> {
        let c = self.cid()?;
        if c.is_blessed_dag_cbor() {
            Ok(c)
        } else {
            Err(CborError::NotBlessed)
        }
    }

    pub fn nullable_cid(&mut self) -> Result<Option<Cid>, CborError> {
        if self.try_null()? {
            Ok(None)
        } else {
            self.cid().map(Some)
        }
    }

    pub fn nullable_blessed_cid(&mut self) -> Result<Option<Cid>, CborError> {
        if self.try_null()? {
            Ok(None)
        } else {
            self.blessed_cid().map(Some)
        }
    }

    pub fn nullable_str(&mut self) -> Result<Option<&'a str>, CborError> {
        if self.try_null()? {
            Ok(None)
        } else {
            self.str().map(Some)
        }
    }

    /// Validates and skips one item of any type, with at most `depth` levels of nesting below it.
    pub fn skip(&mut self, depth: usize) -> Result<(), CborError> {
        let h = self.head()?;
        match h.kind {
            Kind::Unsigned | Kind::Negative => {
                self.take_i64(h)?;
            }
            Kind::Bytes => {
                self.content(h)?;
            }
            Kind::Text => {
                self.take_str(h)?;
            }
            // Their heads are the whole item.
            Kind::Bool | Kind::Null => self.advance(h.len),
            Kind::Tag => {
                self.take_cid(h)?;
            }
            Kind::Array => {
                let n = self.take_array(h)?;
                if n > 0 && depth == 0 {
                    return Err(CborError::Depth);
                }
                for _ in 0..n {
                    self.skip(depth - 1)?;
                }
            }
            Kind::Map => {
                let mut keys = self.take_map(h)?;
                if !keys.is_empty() && depth == 0 {
                    return Err(CborError::Depth);
                }
                while keys.next(self)?.is_some() {
                    self.skip(depth - 1)?;
                }
            }
        }
        Ok(())
    }
}

/// Walks map keys, enforcing text keys in strictly increasing canonical order.
pub struct MapKeys<'a> {
    left: usize,
    prev: Option<&'a str>,
}

impl<'a> MapKeys<'a> {
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The next key, or `None` when the map is exhausted. The caller must consume the value.
    pub fn next(&mut self, r: &mut Reader<'a>) -> Result<Option<&'a str>, CborError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let h = r.head()?;
        if h.kind != Kind::Text {
            return Err(CborError::KeyType);
        }
        let k = r.take_str(h)?;
        if let Some(p) = self.prev {
            match key_cmp(p, k) {
                Ordering::Less => {}
                Ordering::Equal => return Err(CborError::DuplicateKey),
                Ordering::Greater => return Err(CborError::KeyOrder),
            }
        }
        self.prev = Some(k);
        Ok(Some(k))
    }
}

/// Checks that `bytes` is exactly one strictly canonical DAG-CBOR item.
pub fn validate(bytes: &[u8]) -> Result<(), CborError> {
    let mut r = Reader::new(bytes);
    r.skip(MAX_DEPTH)?;
    r.finish()
}

/// Checks that `bytes` is one well-formed CBOR item whose top level is a map, tolerating what
/// records may legitimately contain (other CID hashes, non-canonical encodings from old PDSes).
/// The sync spec says to reject a record only when it is grossly corrupt.
pub fn is_wellformed_map(bytes: &[u8]) -> bool {
    fn walk(b: &[u8], pos: &mut usize, depth: usize) -> Option<()> {
        let ib = *b.get(*pos)?;
        *pos += 1;
        let major = ib >> 5;
        let info = ib & 0x1f;
        let arg: Option<u64> = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let n = 1usize << (info - 24);
                let s = b.get(*pos..*pos + n)?;
                *pos += n;
                Some(s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
            }
            31 => None,
            _ => return None,
        };
        match (major, arg) {
            (0 | 1, Some(_)) | (7, Some(_)) => Some(()),
            (7, None) => None, // stray break
            (2 | 3, Some(n)) => {
                let n = usize::try_from(n).ok()?;
                b.get(*pos..pos.checked_add(n)?)?;
                *pos += n;
                Some(())
            }
            (2 | 3, None) => loop {
                if *b.get(*pos)? == 0xff {
                    *pos += 1;
                    return Some(());
                }
                if b[*pos] >> 5 != major || depth == 0 {
                    return None;
                }
                walk(b, pos, depth - 1)?;
            },
            (4 | 5, Some(n)) => {
                let per = if major == 5 { 2 } else { 1 };
                let items = n.checked_mul(per)?;
                if items > (b.len() - *pos) as u64 || (n > 0 && depth == 0) {
                    return None;
                }
                for _ in 0..items {
                    walk(b, pos, depth - 1)?;
                }
                Some(())
            }
            (4 | 5, None) => loop {
                if *b.get(*pos)? == 0xff {
                    *pos += 1;
                    return Some(());
                }
                if depth == 0 {
                    return None;
                }
                walk(b, pos, depth - 1)?;
                if major == 5 {
                    walk(b, pos, depth - 1)?;
                }
            },
            (6, Some(_)) => {
                if depth == 0 {
                    return None;
                }
                walk(b, pos, depth - 1)
            }
            _ => None,
        }
    }
    if bytes.first().map(|b| b >> 5) != Some(5) {
        return false;
    }
    let mut pos = 0;
    walk(bytes, &mut pos, MAX_DEPTH).is_some() && pos == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: &[u8]) -> CborError {
        validate(b).unwrap_err()
    }

    #[test]
    fn rejects_non_canonical_forms() {
        assert_eq!(err(&[0x18, 0x05]), CborError::NonMinimal);
        assert_eq!(err(&[0x19, 0x00, 0xff]), CborError::NonMinimal);
        assert_eq!(err(&[0x9f, 0xff]), CborError::Indefinite);
        assert_eq!(err(&[0x5f, 0xff]), CborError::Indefinite);
        assert_eq!(err(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]), CborError::Float);
        assert_eq!(err(&[0xf9, 0, 0]), CborError::Float);
        assert_eq!(err(&[0xf7]), CborError::Simple);
        assert_eq!(err(&[0xc0, 0x60]), CborError::Tag(0));
        assert_eq!(err(&[0x01, 0x01]), CborError::Trailing);
        assert_eq!(err(&[0xa1, 0x01, 0x01]), CborError::KeyType);
        // {"b":1,"a":2}
        assert_eq!(
            err(&[0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02]),
            CborError::KeyOrder
        );
        // {"a":1,"a":2}
        assert_eq!(
            err(&[0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02]),
            CborError::DuplicateKey
        );
        // {"aa":1,"b":2}: length-first ordering
        assert_eq!(
            err(&[0xa2, 0x62, b'a', b'a', 0x01, 0x61, b'b', 0x02]),
            CborError::KeyOrder
        );
        assert_eq!(err(&[0x62, 0xff, 0xfe]), CborError::Utf8);
        assert_eq!(err(&[0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0]), CborError::IntRange);
        // Array claiming 2^32 items in a 6-byte input: bounded, no allocation.
        assert_eq!(
            err(&[0x9a, 0xff, 0xff, 0xff, 0xff, 0x00]),
            CborError::TooManyItems
        );
    }

    #[test]
    fn depth_limit() {
        let mut ok = vec![0x81u8; 32];
        ok.push(0x01);
        assert!(validate(&ok).is_ok());
        let mut deep = vec![0x81u8; 33];
        deep.push(0x01);
        assert_eq!(validate(&deep).unwrap_err(), CborError::Depth);
    }

    #[test]
    fn cid_links() {
        let mut good = vec![0xd8, 0x2a, 0x58, 0x25, 0x00, 0x01, 0x71, 0x12, 0x20];
        good.extend_from_slice(&[7u8; 32]);
        assert!(validate(&good).is_ok());
        let mut no_prefix = vec![0xd8, 0x2a, 0x58, 0x24, 0x01, 0x71, 0x12, 0x20];
        no_prefix.extend_from_slice(&[7u8; 32]);
        assert!(matches!(
            validate(&no_prefix).unwrap_err(),
            CborError::BadCid(_)
        ));
        assert!(matches!(
            validate(&[0xd8, 0x2a, 0x01]).unwrap_err(),
            CborError::BadCid(_)
        ));
        // Tag 42 encoded non-minimally.
        assert_eq!(
            validate(&[0xd9, 0x00, 0x2a, 0x40]).unwrap_err(),
            CborError::NonMinimal
        );
    }

    #[test]
    fn wellformed_records() {
        assert!(is_wellformed_map(&[
            0xa1, 0x61, b'a', 0xfb, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        assert!(is_wellformed_map(&[0xbf, 0x61, b'a', 0x01, 0xff]));
        assert!(!is_wellformed_map(&[0x80]));
        assert!(!is_wellformed_map(&[0xa1, 0x61]));
        assert!(!is_wellformed_map(&[0xa1, 0x61, b'a', 0x01, 0x00]));
    }
}
