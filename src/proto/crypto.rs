//! atproto keys and signatures: k256 and p256, Multikey / did:key / legacy multibase encodings,
//! and 64-byte compact ECDSA signatures over SHA-256 with low-S enforced.
//!
//! The RustCrypto verifiers accept high-S signatures on p256 (and only reject them on k256 by a
//! curve flag), while atproto requires rejecting malleable signatures on both, so the check is made
//! here explicitly. DER signatures are rejected simply by demanding exactly 64 bytes.

use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    K256,
    P256,
}

impl Curve {
    /// The JWT `alg` name.
    pub fn jwt_alg(self) -> &'static str {
        match self {
            Curve::K256 => "ES256K",
            Curve::P256 => "ES256",
        }
    }

    /// Multicodec varint prefix used by Multikey / did:key.
    fn multicodec(self) -> &'static [u8] {
        match self {
            Curve::K256 => &[0xe7, 0x01],
            Curve::P256 => &[0x80, 0x24],
        }
    }

    /// The deprecated DID-document verification method type for this curve.
    pub fn legacy_type(self) -> &'static str {
        match self {
            Curve::K256 => "EcdsaSecp256k1VerificationKey2019",
            Curve::P256 => "EcdsaSecp256r1VerificationKey2019",
        }
    }

    pub fn from_legacy_type(t: &str) -> Option<Curve> {
        match t {
            "EcdsaSecp256k1VerificationKey2019" => Some(Curve::K256),
            "EcdsaSecp256r1VerificationKey2019" => Some(Curve::P256),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is not multibase base58btc ('z' prefix)")]
    Multibase,
    #[error("key has an unknown multicodec prefix")]
    Codec,
    #[error("key bytes are not a valid curve point")]
    Point,
    #[error("not a did:key")]
    DidKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("signature is not 64 bytes (compact r||s)")]
    Length,
    #[error("signature scalars are out of range")]
    Encoding,
    #[error("signature has a high S value (malleable)")]
    HighS,
    #[error("signature does not verify")]
    Invalid,
}

/// A verifying key on one of the two atproto curves.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    K256(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_multikey())
    }
}

impl PublicKey {
    /// Parses SEC1 bytes (33-byte compressed or 65-byte uncompressed).
    pub fn from_sec1(curve: Curve, bytes: &[u8]) -> Result<PublicKey, KeyError> {
        match curve {
            Curve::K256 => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(PublicKey::K256)
                .map_err(|_| KeyError::Point),
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(PublicKey::P256)
                .map_err(|_| KeyError::Point),
        }
    }

    /// Parses a Multikey (`z` + base58btc(multicodec ‖ compressed point)).
    pub fn from_multikey(s: &str) -> Result<PublicKey, KeyError> {
        let b58 = s.strip_prefix('z').ok_or(KeyError::Multibase)?;
        if b58.len() > 128 {
            return Err(KeyError::Multibase);
        }
        let raw = bs58::decode(b58)
            .into_vec()
            .map_err(|_| KeyError::Multibase)?;
        for curve in [Curve::K256, Curve::P256] {
            if let Some(point) = raw.strip_prefix(curve.multicodec()) {
                return Self::from_sec1(curve, point);
            }
        }
        Err(KeyError::Codec)
    }

    pub fn from_did_key(s: &str) -> Result<PublicKey, KeyError> {
        Self::from_multikey(s.strip_prefix("did:key:").ok_or(KeyError::DidKey)?)
    }

    /// Parses the deprecated DID-document form: `z` + base58btc of the bare point.
    pub fn from_legacy_multibase(curve: Curve, s: &str) -> Result<PublicKey, KeyError> {
        let b58 = s.strip_prefix('z').ok_or(KeyError::Multibase)?;
        if b58.len() > 128 {
            return Err(KeyError::Multibase);
        }
        let raw = bs58::decode(b58)
            .into_vec()
            .map_err(|_| KeyError::Multibase)?;
        Self::from_sec1(curve, &raw)
    }

    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::K256(_) => Curve::K256,
            PublicKey::P256(_) => Curve::P256,
        }
    }

    /// The 33-byte compressed point.
    pub fn compressed(&self) -> Vec<u8> {
        match self {
            PublicKey::K256(k) => k.to_sec1_point(true).as_bytes().to_vec(),
            PublicKey::P256(k) => k.to_sec1_point(true).as_bytes().to_vec(),
        }
    }

    pub fn to_multikey(&self) -> String {
        let mut raw = self.curve().multicodec().to_vec();
        raw.extend_from_slice(&self.compressed());
        format!("z{}", bs58::encode(raw).into_string())
    }

    pub fn to_did_key(&self) -> String {
        format!("did:key:{}", self.to_multikey())
    }

    /// Verifies a compact signature over `SHA-256(msg)`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SigError> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        self.verify_digest(&digest, sig)
    }

    /// Verifies a compact signature over an already computed SHA-256 digest.
    pub fn verify_digest(&self, digest: &[u8; 32], sig: &[u8]) -> Result<(), SigError> {
        if sig.len() != 64 {
            return Err(SigError::Length);
        }
        match self {
            PublicKey::K256(k) => {
                let s = k256::ecdsa::Signature::from_slice(sig).map_err(|_| SigError::Encoding)?;
                if s.normalize_s() != s {
                    return Err(SigError::HighS);
                }
                // The relay's own verifier (1.45x faster); k256's if it cannot decide.
                let key = super::secp256k1::Key::new(k);
                match super::secp256k1::verify(&key, digest, s.r().as_ref(), s.s().as_ref()) {
                    Some(true) => Ok(()),
                    Some(false) => Err(SigError::Invalid),
                    None => k.verify_prehash(digest, &s).map_err(|_| SigError::Invalid),
                }
            }
            PublicKey::P256(k) => {
                let s = p256::ecdsa::Signature::from_slice(sig).map_err(|_| SigError::Encoding)?;
                if s.normalize_s() != s {
                    return Err(SigError::HighS);
                }
                k.verify_prehash(digest, &s).map_err(|_| SigError::Invalid)
            }
        }
    }
}

/// A signing key (the simulated network and tests sign real commits with it).
#[derive(Clone)]
pub enum PrivateKey {
    K256(k256::ecdsa::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?})", self.public().curve())
    }
}

impl PrivateKey {
    /// A key from 32 secret bytes; `None` if they are not a valid scalar.
    pub fn from_bytes(curve: Curve, bytes: &[u8]) -> Option<PrivateKey> {
        match curve {
            Curve::K256 => k256::ecdsa::SigningKey::from_slice(bytes)
                .ok()
                .map(PrivateKey::K256),
            Curve::P256 => p256::ecdsa::SigningKey::from_slice(bytes)
                .ok()
                .map(PrivateKey::P256),
        }
    }

    /// Deterministically derives a key from a seed (simulation and tests).
    pub fn from_seed(curve: Curve, seed: &[u8]) -> PrivateKey {
        let mut counter = 0u32;
        loop {
            let mut h = Sha256::new();
            h.update(b"rlay-key");
            h.update(seed);
            h.update(counter.to_le_bytes());
            let bytes: [u8; 32] = h.finalize().into();
            if let Some(k) = Self::from_bytes(curve, &bytes) {
                return k;
            }
            counter += 1;
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PrivateKey::K256(k) => k.to_bytes().to_vec(),
            PrivateKey::P256(k) => k.to_bytes().to_vec(),
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::K256(k) => PublicKey::K256(*k.verifying_key()),
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
        }
    }

    /// Signs `SHA-256(msg)`, returning a low-S compact signature.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        let mut out = [0u8; 64];
        // Signing a 32-byte prehash with a valid key cannot fail; fall back to zeros (which never
        // verify) rather than panic if a library ever says otherwise.
        match self {
            PrivateKey::K256(k) => {
                let s: Result<k256::ecdsa::Signature, _> = k.sign_prehash(&digest);
                if let Ok(s) = s {
                    out.copy_from_slice(&s.normalize_s().to_bytes());
                }
            }
            PrivateKey::P256(k) => {
                let s: Result<p256::ecdsa::Signature, _> = k.sign_prehash(&digest);
                if let Ok(s) = s {
                    out.copy_from_slice(&s.normalize_s().to_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_both_curves() {
        for curve in [Curve::K256, Curve::P256] {
            let k = PrivateKey::from_seed(curve, b"x");
            let sig = k.sign(b"hello");
            let pk = k.public();
            assert!(pk.verify(b"hello", &sig).is_ok());
            assert_eq!(pk.verify(b"hellp", &sig), Err(SigError::Invalid));
            let mk = pk.to_multikey();
            assert_eq!(PublicKey::from_multikey(&mk).unwrap(), pk);
            assert_eq!(PublicKey::from_did_key(&pk.to_did_key()).unwrap(), pk);
        }
        assert!(
            PublicKey::from_multikey("zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc").is_ok()
        );
        assert!(
            PublicKey::from_multikey("zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo").is_ok()
        );
    }
}
