//! CAR v1 over a byte slice: the header, the roots and hash-verified blocks.
//!
//! Blocks are borrowed from the input, never copied. Any block order, duplicates and unreferenced
//! blocks are tolerated; a block whose bytes do not match its CID fails the whole CAR, and blocks
//! with a hash function we cannot check are left out (so they count as missing if needed).

use crate::proto::cbor::{CborError, Reader, Writer};
use crate::proto::cid::{Cid, read_varint, write_varint};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    #[error("CAR header length is missing, zero or larger than the input")]
    HeaderLength,
    #[error("CAR header is not valid DAG-CBOR: {0}")]
    Header(CborError),
    #[error("CAR header version is not 1")]
    Version,
    #[error("CAR header has no roots array")]
    Roots,
    #[error("CAR block section is truncated or has a bad length")]
    Section,
    #[error("CAR block CID is malformed")]
    BlockCid,
    #[error("CAR block {0} does not match its hash")]
    BlockHash(Cid),
}

/// Anything that can hand out blocks by CID (a parsed CAR, a repo store).
pub trait BlockSource {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]>;
}

impl BlockSource for HashMap<Cid, Vec<u8>> {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid).map(Vec::as_slice)
    }
}

/// A CAR's roots and its blocks in file order, unchecked and unindexed: for a reader that wants
/// a few blocks of a CAR the relay verified before (Jetstream finds each record by a scan of a
/// commit's handful of blocks, cheaper than hashing every CID into a map).
pub fn sections(bytes: &[u8]) -> Result<(Vec<Cid>, Sections<'_>), CarError> {
    let (hlen, n) = read_varint(bytes).ok_or(CarError::HeaderLength)?;
    let hlen = usize::try_from(hlen).map_err(|_| CarError::HeaderLength)?;
    if hlen == 0 || hlen > bytes.len() - n {
        return Err(CarError::HeaderLength);
    }
    let roots = parse_header(&bytes[n..n + hlen])?;
    Ok((
        roots,
        Sections {
            bytes,
            pos: n + hlen,
        },
    ))
}

/// The block sections after a CAR's header; a malformed one ends the walk with its error.
#[derive(Clone)]
pub struct Sections<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Sections<'a> {
    /// The next section whole: its CID's bytes, then the block.
    fn raw_section(&mut self) -> Result<&'a [u8], CarError> {
        let bytes = self.bytes;
        let (slen, n) = read_varint(&bytes[self.pos..]).ok_or(CarError::Section)?;
        let pos = self.pos + n;
        let slen = usize::try_from(slen).map_err(|_| CarError::Section)?;
        if slen == 0 || slen > bytes.len() - pos {
            return Err(CarError::Section);
        }
        self.pos = pos + slen;
        Ok(&bytes[pos..pos + slen])
    }

    fn section(&mut self) -> Result<(Cid, &'a [u8]), CarError> {
        let section = self.raw_section()?;
        let (cid, clen) = Cid::read_binary(section).map_err(|_| CarError::BlockCid)?;
        Ok((cid, &section[clen..]))
    }

    /// The block of `cid`, found by comparing each section's leading bytes with the CID's binary
    /// form (a CID is self-delimiting, so a section that starts with it is that CID's), without
    /// parsing every section's CID: Jetstream looks up each op's record this way. `None` if it
    /// is absent or a malformed section comes first.
    pub fn find(mut self, cid: &Cid) -> Option<&'a [u8]> {
        let want = cid.as_bytes();
        // A digest's last bytes tell two CIDs apart at once; they are compared first.
        let tail = want.len().saturating_sub(8)..want.len();
        while self.pos < self.bytes.len() {
            let section = self.raw_section().ok()?;
            if section.get(tail.clone()) == want.get(tail.clone()) && section.starts_with(want) {
                return section.get(want.len()..);
            }
        }
        None
    }
}

impl<'a> Iterator for Sections<'a> {
    type Item = Result<(Cid, &'a [u8]), CarError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let next = self.section();
        if next.is_err() {
            // Nothing after a bad section can be framed.
            self.pos = self.bytes.len();
        }
        Some(next)
    }
}

/// A parsed CAR whose blocks have all been hash-checked.
#[derive(Debug)]
pub struct Car<'a> {
    pub roots: Vec<Cid>,
    blocks: HashMap<Cid, &'a [u8]>,
    /// Blocks skipped because their hash function is not sha-256.
    pub unverifiable: usize,
}

impl BlockSource for Car<'_> {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]> {
        self.blocks.get(cid).copied()
    }
}

fn parse_header(h: &[u8]) -> Result<Vec<Cid>, CarError> {
    let mut r = Reader::new(h);
    let mut keys = r.map().map_err(CarError::Header)?;
    let mut roots = None;
    let mut version = None;
    while let Some(k) = keys.next(&mut r).map_err(CarError::Header)? {
        match k {
            "roots" => {
                let n = r.array().map_err(CarError::Header)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(r.cid().map_err(CarError::Header)?);
                }
                roots = Some(v);
            }
            "version" => version = Some(r.i64().map_err(CarError::Header)?),
            _ => r.skip(4).map_err(CarError::Header)?,
        }
    }
    r.finish().map_err(CarError::Header)?;
    if version != Some(1) {
        return Err(CarError::Version);
    }
    roots.ok_or(CarError::Roots)
}

impl<'a> Car<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Car<'a>, CarError> {
        let (roots, sections) = sections(bytes)?;
        // Every block costs at least 37 bytes; size the map from the input, not a length field.
        let mut blocks = HashMap::with_capacity((bytes.len() / 256).clamp(4, 1024));
        let mut unverifiable = 0;
        for section in sections {
            let (cid, data) = section?;
            match cid.verifies(data) {
                Some(true) => {
                    blocks.entry(cid).or_insert(data);
                }
                Some(false) => return Err(CarError::BlockHash(cid)),
                None => unverifiable += 1,
            }
        }
        Ok(Car {
            roots,
            blocks,
            unverifiable,
        })
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn get(&self, cid: &Cid) -> Option<&'a [u8]> {
        self.blocks.get(cid).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Cid, &&'a [u8])> {
        self.blocks.iter()
    }
}

/// Writes a CAR v1 with the given roots and blocks, in the order given.
pub fn write_car<'b>(roots: &[Cid], blocks: impl IntoIterator<Item = (Cid, &'b [u8])>) -> Vec<u8> {
    let mut h = Writer::with_capacity(64);
    h.map(2).str("roots").array(roots.len());
    for r in roots {
        h.cid(r);
    }
    h.str("version").u64(1);
    let h = h.into_bytes();
    let mut out = Vec::with_capacity(h.len() + 1024);
    write_varint(&mut out, h.len() as u64);
    out.extend_from_slice(&h);
    for (cid, data) in blocks {
        let c = cid.as_bytes();
        write_varint(&mut out, (c.len() + data.len()) as u64);
        out.extend_from_slice(c);
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let a = b"\xa1\x61a\x01".to_vec();
        let b = b"\xa1\x61b\x02".to_vec();
        let ca = Cid::dag_cbor(&a);
        let cb = Cid::dag_cbor(&b);
        let car = write_car(&[ca], [(cb, &b[..]), (ca, &a[..]), (ca, &a[..])]);
        let p = Car::parse(&car).unwrap();
        assert_eq!(p.roots, vec![ca]);
        assert_eq!(p.get(&ca), Some(&a[..]));
        assert_eq!(p.get(&cb), Some(&b[..]));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn rejects_bad_hash_and_truncation() {
        let a = b"\xa1\x61a\x01".to_vec();
        let ca = Cid::dag_cbor(b"other");
        let car = write_car(&[ca], [(ca, &a[..])]);
        assert_eq!(Car::parse(&car).unwrap_err(), CarError::BlockHash(ca));
        let good = write_car(&[Cid::dag_cbor(&a)], [(Cid::dag_cbor(&a), &a[..])]);
        for cut in 1..good.len() {
            // Cutting inside the header or a section must fail cleanly, never panic.
            let r = Car::parse(&good[..cut]);
            if cut < good.len() {
                assert!(r.is_err() || r.unwrap().is_empty());
            }
        }
        assert_eq!(Car::parse(&[0]).unwrap_err(), CarError::HeaderLength);
        assert_eq!(Car::parse(&[]).unwrap_err(), CarError::HeaderLength);
    }
}
