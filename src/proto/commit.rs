//! The signed repo commit object (repo format v3).
//!
//! Verification hashes the commit *without* its `sig` entry. Because the decoder only accepts
//! canonical bytes, the unsigned form is the original bytes with the `sig` key/value cut out and
//! the map header decremented (`a6` → `a5`); hashing those slices directly avoids re-encoding.

use crate::proto::cbor::{CborError, Reader, Writer};
use crate::proto::cid::Cid;
use crate::proto::crypto::{PrivateKey, PublicKey, SigError};
use crate::proto::syntax::{is_normalized_did, is_valid_did, is_valid_tid};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("commit is not canonical DAG-CBOR: {0}")]
    Cbor(#[from] CborError),
    #[error("commit is missing field `{0}`")]
    Missing(&'static str),
    #[error("commit has unexpected field `{0}`")]
    Unknown(String),
    #[error("commit version {0} is not 3")]
    Version(i64),
    #[error("commit did is not a valid normalised DID")]
    Did,
    #[error("commit rev is not a TID")]
    Rev,
    #[error("commit sig is not 64 bytes")]
    SigLength,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub did: String,
    pub version: i64,
    pub data: Cid,
    pub rev: String,
    pub prev: Option<Cid>,
    pub sig: [u8; 64],
}

/// A decoded commit plus the location of its signature in the original bytes.
#[derive(Debug, Clone)]
pub struct SignedCommit<'a> {
    pub commit: Commit,
    bytes: &'a [u8],
    sig_start: usize,
    sig_end: usize,
}

impl<'a> SignedCommit<'a> {
    /// Strictly decodes a commit block: exactly the six v3 fields, nothing else.
    pub fn decode(bytes: &'a [u8]) -> Result<SignedCommit<'a>, CommitError> {
        let mut r = Reader::new(bytes);
        let mut keys = r.map()?;
        let (mut did, mut version, mut data, mut rev, mut prev, mut sig) =
            (None, None, None, None, None, None);
        let mut prev_seen = false;
        let (mut sig_start, mut sig_end) = (0, 0);
        loop {
            let key_pos = r.position();
            let Some(k) = keys.next(&mut r)? else { break };
            match k {
                "did" => did = Some(r.str()?),
                "rev" => rev = Some(r.str()?),
                "sig" => {
                    sig_start = key_pos;
                    sig = Some(r.bytes()?);
                    sig_end = r.position();
                }
                "data" => data = Some(r.blessed_cid()?),
                "prev" => {
                    prev = r.nullable_blessed_cid()?;
                    prev_seen = true;
                }
                "version" => version = Some(r.i64()?),
                other => return Err(CommitError::Unknown(other.to_owned())),
            }
        }
        r.finish()?;
        let did = did.ok_or(CommitError::Missing("did"))?;
        let rev = rev.ok_or(CommitError::Missing("rev"))?;
        let sig = sig.ok_or(CommitError::Missing("sig"))?;
        let data = data.ok_or(CommitError::Missing("data"))?;
        let version = version.ok_or(CommitError::Missing("version"))?;
        if !prev_seen {
            return Err(CommitError::Missing("prev"));
        }
        if version != 3 {
            return Err(CommitError::Version(version));
        }
        if !is_valid_did(did) || !is_normalized_did(did) {
            return Err(CommitError::Did);
        }
        if !is_valid_tid(rev) {
            return Err(CommitError::Rev);
        }
        let sig: [u8; 64] = sig.try_into().map_err(|_| CommitError::SigLength)?;
        Ok(SignedCommit {
            commit: Commit {
                did: did.to_owned(),
                version,
                data,
                rev: rev.to_owned(),
                prev,
                sig,
            },
            bytes,
            sig_start,
            sig_end,
        })
    }

    /// SHA-256 of the unsigned commit, computed over slices of the original bytes.
    pub fn unsigned_digest(&self) -> [u8; 32] {
        // Exactly six entries were decoded, so the map header is the single byte 0xa6.
        let mut h = Sha256::new();
        h.update([0xa5]);
        h.update(&self.bytes[1..self.sig_start]);
        h.update(&self.bytes[self.sig_end..]);
        h.finalize().into()
    }

    pub fn verify(&self, key: &PublicKey) -> Result<(), SigError> {
        key.verify_digest(&self.unsigned_digest(), &self.commit.sig)
    }
}

impl Commit {
    fn write(&self, with_sig: bool) -> Vec<u8> {
        let mut w = Writer::with_capacity(200);
        w.map(if with_sig { 6 } else { 5 });
        w.str("did").str(&self.did);
        w.str("rev").str(&self.rev);
        if with_sig {
            w.str("sig").bytes(&self.sig);
        }
        w.str("data").cid(&self.data);
        w.str("prev").nullable_cid(self.prev.as_ref());
        w.str("version").i64(self.version);
        w.into_bytes()
    }

    /// The canonical bytes that are signed.
    pub fn unsigned_bytes(&self) -> Vec<u8> {
        self.write(false)
    }

    /// The canonical block bytes (with `sig`).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.write(true)
    }

    /// Builds and signs a commit; returns it with its block bytes and CID.
    pub fn sign(
        key: &PrivateKey,
        did: &str,
        rev: &str,
        data: Cid,
        prev: Option<Cid>,
    ) -> (Commit, Vec<u8>, Cid) {
        let mut c = Commit {
            did: did.to_owned(),
            version: 3,
            data,
            rev: rev.to_owned(),
            prev,
            sig: [0; 64],
        };
        c.sig = key.sign(&c.unsigned_bytes());
        let bytes = c.to_bytes();
        let cid = Cid::dag_cbor(&bytes);
        (c, bytes, cid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crypto::Curve;

    #[test]
    fn sign_decode_verify() {
        let key = PrivateKey::from_seed(Curve::K256, b"c");
        let data = Cid::dag_cbor(b"x");
        let (c, bytes, _) = Commit::sign(&key, "did:plc:abc", "3lhhxizu5wr2d", data, None);
        let sc = SignedCommit::decode(&bytes).unwrap();
        assert_eq!(sc.commit, c);
        assert!(sc.verify(&key.public()).is_ok());
        let other = PrivateKey::from_seed(Curve::K256, b"d");
        assert!(sc.verify(&other.public()).is_err());
        // Missing `prev` is an error even though it is usually null.
        let mut w = Writer::new();
        w.map(5)
            .str("did")
            .str("did:plc:abc")
            .str("rev")
            .str("3lhhxizu5wr2d")
            .str("sig")
            .bytes(&[0; 64])
            .str("data")
            .cid(&data)
            .str("version")
            .i64(3);
        assert_eq!(
            SignedCommit::decode(&w.into_bytes()).unwrap_err(),
            CommitError::Missing("prev")
        );
    }
}
