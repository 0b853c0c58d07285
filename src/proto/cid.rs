//! Content identifiers (CIDv1) in binary and base32 string form.
//!
//! atproto only ever *produces* "blessed" CIDs (v1, dag-cbor or raw, sha-256, 36 bytes), but record
//! links inside a repo may carry other codecs or hashes, so the type holds any CIDv1 up to
//! [`MAX_CID_BYTES`] inline. Keeping it `Copy` and allocation-free matters: MST code moves
//! thousands of them per commit.

use sha2::{Digest, Sha256};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Multicodec code for DAG-CBOR (DRISL).
pub const CODEC_DAG_CBOR: u64 = 0x71;
/// Multicodec code for raw bytes (blobs).
pub const CODEC_RAW: u64 = 0x55;
/// Multihash code for sha2-256.
pub const HASH_SHA256: u64 = 0x12;
/// Longest binary CID we accept. Blessed CIDs are 36 bytes; this leaves room for other hashes
/// without letting a hostile length field make us store arbitrary data.
pub const MAX_CID_BYTES: usize = 68;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    #[error("CID is truncated")]
    Truncated,
    #[error("CID version {0} is not supported (only CIDv1)")]
    Version(u64),
    #[error("CID varint is malformed")]
    Varint,
    #[error("CID is longer than {MAX_CID_BYTES} bytes")]
    TooLong,
    #[error("CID string must be base32 lowercase with a 'b' prefix")]
    Multibase,
    #[error("CID has trailing bytes")]
    Trailing,
}

/// A CIDv1, stored inline.
#[derive(Clone, Copy)]
pub struct Cid {
    len: u8,
    bytes: [u8; MAX_CID_BYTES],
}

impl PartialEq for Cid {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Cid {}

impl PartialOrd for Cid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Cid {
    /// The digest is already uniformly random, so its last eight bytes are a perfect hash; this
    /// keeps block maps cheap without a hashing crate.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let b = self.as_bytes();
        let mut tail = [0u8; 8];
        let n = b.len().min(8);
        tail[..n].copy_from_slice(&b[b.len() - n..]);
        state.write_u64(u64::from_le_bytes(tail));
    }
}

/// Reads an unsigned LEB128 varint of at most 9 bytes (multiformats limit) from `input`.
/// Returns the value and the number of bytes consumed. Non-minimal encodings are rejected.
pub fn read_varint(input: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(9) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return None; // non-minimal
            }
            return Some((value, i + 1));
        }
    }
    None
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

impl Cid {
    fn from_parts(codec: u64, hash: u64, digest: &[u8]) -> Cid {
        let mut v = Vec::with_capacity(4 + digest.len());
        v.push(1);
        write_varint(&mut v, codec);
        write_varint(&mut v, hash);
        write_varint(&mut v, digest.len() as u64);
        v.extend_from_slice(digest);
        let mut bytes = [0u8; MAX_CID_BYTES];
        bytes[..v.len()].copy_from_slice(&v);
        Cid {
            len: v.len() as u8,
            bytes,
        }
    }

    /// The blessed sha-256 CID of `data` with the given codec.
    pub fn sha256(codec: u64, data: &[u8]) -> Cid {
        let digest: [u8; 32] = Sha256::digest(data).into();
        Self::from_sha256_digest(codec, &digest)
    }

    /// A blessed CID from an already computed sha-256 digest (avoids a Vec in the hot path).
    pub fn from_sha256_digest(codec: u64, digest: &[u8; 32]) -> Cid {
        let mut bytes = [0u8; MAX_CID_BYTES];
        // Codecs we produce (0x71, 0x55) fit in one varint byte.
        debug_assert!(codec < 0x80);
        bytes[0] = 1;
        bytes[1] = codec as u8;
        bytes[2] = HASH_SHA256 as u8;
        bytes[3] = 32;
        bytes[4..36].copy_from_slice(digest);
        Cid { len: 36, bytes }
    }

    /// CID of a DAG-CBOR block.
    pub fn dag_cbor(data: &[u8]) -> Cid {
        Self::sha256(CODEC_DAG_CBOR, data)
    }

    /// CID of a raw block (blob).
    pub fn raw(data: &[u8]) -> Cid {
        Self::sha256(CODEC_RAW, data)
    }

    /// Parses a binary CIDv1 at the start of `input`, returning it and its length in bytes.
    pub fn read_binary(input: &[u8]) -> Result<(Cid, usize), CidError> {
        // Fast path: blessed CIDs.
        if input.len() >= 36
            && input[0] == 1
            && (input[1] == 0x71 || input[1] == 0x55)
            && input[2] == 0x12
            && input[3] == 0x20
        {
            let mut bytes = [0u8; MAX_CID_BYTES];
            bytes[..36].copy_from_slice(&input[..36]);
            return Ok((Cid { len: 36, bytes }, 36));
        }
        let (version, mut pos) = read_varint(input).ok_or(CidError::Varint)?;
        if version == 0x12 {
            return Err(CidError::Version(0));
        }
        if version != 1 {
            return Err(CidError::Version(version));
        }
        let (_codec, n) = read_varint(&input[pos..]).ok_or(CidError::Varint)?;
        pos += n;
        let (_hash, n) = read_varint(&input[pos..]).ok_or(CidError::Varint)?;
        pos += n;
        let (dlen, n) = read_varint(&input[pos..]).ok_or(CidError::Varint)?;
        pos += n;
        let dlen = usize::try_from(dlen).map_err(|_| CidError::TooLong)?;
        let total = pos.checked_add(dlen).ok_or(CidError::TooLong)?;
        if total > MAX_CID_BYTES {
            return Err(CidError::TooLong);
        }
        if input.len() < total {
            return Err(CidError::Truncated);
        }
        let mut bytes = [0u8; MAX_CID_BYTES];
        bytes[..total].copy_from_slice(&input[..total]);
        Ok((
            Cid {
                len: total as u8,
                bytes,
            },
            total,
        ))
    }

    /// Parses a complete binary CID (no trailing bytes).
    pub fn from_bytes(input: &[u8]) -> Result<Cid, CidError> {
        let (cid, n) = Self::read_binary(input)?;
        if n != input.len() {
            return Err(CidError::Trailing);
        }
        Ok(cid)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    fn parts(&self) -> (u64, u64, &[u8]) {
        let b = self.as_bytes();
        // Constructed only through validated paths, so these varints are well formed.
        let mut pos = 1;
        let (codec, n) = read_varint(&b[pos..]).unwrap_or((0, 1));
        pos += n;
        let (hash, n) = read_varint(&b[pos..]).unwrap_or((0, 1));
        pos += n;
        let (_len, n) = read_varint(&b[pos..]).unwrap_or((0, 1));
        pos += n;
        (codec, hash, &b[pos.min(b.len())..])
    }

    pub fn codec(&self) -> u64 {
        self.parts().0
    }

    pub fn hash_code(&self) -> u64 {
        self.parts().1
    }

    pub fn digest(&self) -> &[u8] {
        self.parts().2
    }

    /// Blessed for structural links (MST, commit): dag-cbor + sha-256, 36 bytes.
    pub fn is_blessed_dag_cbor(&self) -> bool {
        self.len == 36 && self.bytes[1] == 0x71 && self.bytes[2] == 0x12 && self.bytes[3] == 0x20
    }

    /// Blessed per DASL: dag-cbor or raw, sha-256.
    pub fn is_blessed(&self) -> bool {
        self.len == 36
            && (self.bytes[1] == 0x71 || self.bytes[1] == 0x55)
            && self.bytes[2] == 0x12
            && self.bytes[3] == 0x20
    }

    /// Whether `data` hashes to this CID. `None` when the hash function is unsupported.
    pub fn verifies(&self, data: &[u8]) -> Option<bool> {
        let (codec, hash, digest) = self.parts();
        if hash != HASH_SHA256 || digest.len() != 32 {
            return None;
        }
        let _ = codec;
        let d: [u8; 32] = Sha256::digest(data).into();
        Some(d[..] == *digest)
    }

    /// Builds a CID with an arbitrary codec from a sha-256 digest (tests and fixtures).
    pub fn with_codec(codec: u64, digest: &[u8; 32]) -> Cid {
        Self::from_parts(codec, HASH_SHA256, digest)
    }
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Lower-case RFC 4648 base32 without padding, into a stack buffer: a CID's text form is written
/// for every record Jetstream sends, and pushing it a `char` at a time was most of its cost.
fn base32_encode(data: &[u8], out: &mut String) {
    let mut text = [0u8; (MAX_CID_BYTES * 8).div_ceil(5)];
    let mut n = 0;
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &b in data.iter().take(MAX_CID_BYTES) {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text[n] = B32[((buf >> bits) & 31) as usize];
            n += 1;
        }
    }
    if bits > 0 {
        text[n] = B32[((buf << (5 - bits)) & 31) as usize];
        n += 1;
    }
    // Every byte of the alphabet is ASCII.
    out.push_str(std::str::from_utf8(&text[..n]).unwrap_or_default());
}

fn base32_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding.
    if bits >= 5 || (buf & ((1 << bits) - 1)) != 0 {
        return None;
    }
    Some(out)
}

impl Cid {
    /// Appends the text form (`b` + base32), as `Display` writes it, without the formatter.
    pub fn write_text(&self, out: &mut String) {
        out.push('b');
        base32_encode(self.as_bytes(), out);
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(1 + (self.len as usize * 8).div_ceil(5));
        self.write_text(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CidError;
    fn from_str(s: &str) -> Result<Cid, CidError> {
        let rest = s.strip_prefix('b').ok_or(CidError::Multibase)?;
        if rest.len() > MAX_CID_BYTES * 2 {
            return Err(CidError::TooLong);
        }
        let bytes = base32_decode(rest.as_bytes()).ok_or(CidError::Multibase)?;
        Cid::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_mst_node_cid() {
        // {e: [], l: null}
        let cid = Cid::dag_cbor(&[0xa2, 0x61, 0x65, 0x80, 0x61, 0x6c, 0xf6]);
        assert_eq!(
            cid.to_string(),
            "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
        );
    }

    #[test]
    fn string_round_trip() {
        let s = "bafyreifynamoq3fty5finpxowgomhl5oy6bdld2vtwwkjxwlo6mui4rk6y";
        let c: Cid = s.parse().unwrap();
        assert!(c.is_blessed_dag_cbor());
        assert_eq!(c.to_string(), s);
        assert!("Bafyrei".parse::<Cid>().is_err());
        assert!(
            "QmQg1v4o9xdT3Q14wh4S7dxZkDjyZ9ssFzFzyep1YrVJBY"
                .parse::<Cid>()
                .is_err()
        );
    }
}
