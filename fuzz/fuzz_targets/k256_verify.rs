#![no_main]
//! The relay's secp256k1 check (`proto::secp256k1`, through `PublicKey::verify_digest`) against
//! the k256 crate's: a key from the first 32 bytes, a digest from the next 32, then either a
//! real signature of that digest with bytes of the input XORed into it (near-valid cases) or
//! 64 bytes of the input as the signature. Both must give the same answer, always.
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey};
use libfuzzer_sys::fuzz_target;
use rlay::proto::crypto::PublicKey;

fuzz_target!(|data: &[u8]| {
    let (Some(seed), Some(digest), Some((&mode, rest))) = (
        data.get(..32),
        data.get(32..64).and_then(|d| <[u8; 32]>::try_from(d).ok()),
        data.get(64..).and_then(|r| r.split_first()),
    ) else {
        return;
    };
    let Ok(sk) = SigningKey::from_slice(seed) else {
        return;
    };
    let mut sig = [0u8; 64];
    if mode & 1 == 0 {
        let Ok(s) = PrehashSigner::<Signature>::sign_prehash(&sk, &digest) else {
            return;
        };
        sig.copy_from_slice(&s.normalize_s().to_bytes());
        for (i, b) in rest.iter().take(64).enumerate() {
            sig[(i + usize::from(mode >> 1)) % 64] ^= b;
        }
    } else {
        for (i, b) in rest.iter().take(64).enumerate() {
            sig[i] = *b;
        }
    }
    let vk = *sk.verifying_key();
    let Ok(public) = PublicKey::from_sec1(rlay::proto::crypto::Curve::K256, &vk.to_sec1_bytes())
    else {
        return;
    };
    let ours = public.verify_digest(&digest, &sig).is_ok();
    let reference = Signature::from_slice(&sig)
        .ok()
        .filter(|s| s.normalize_s() == *s)
        .is_some_and(|s| vk.verify_prehash(&digest, &s).is_ok());
    assert_eq!(ours, reference, "the relay's check and k256's disagree");
});
