#![no_main]
//! The relay's inverse modulo secp256k1's order (`proto::scalar_inverse`, which the signature
//! check uses for s⁻¹) against the k256 crate's, on any 32 bytes reduced modulo n. Built with
//! debug assertions, so every batch's exact division is checked too.
use k256::elliptic_curve::ops::Reduce;
use k256::{FieldBytes, Scalar};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..32).and_then(|d| <[u8; 32]>::try_from(d).ok()) else {
        return;
    };
    let x = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(bytes));
    let ours = rlay::proto::scalar_inverse::invert(&x);
    assert_eq!(ours, Option::<Scalar>::from(x.invert()), "inverse of {x:?}");
});
