//! The inverse of a scalar modulo secp256k1's group order `n`, in variable time, for the
//! signature check (`s⁻¹`): `k256`'s `invert_vartime` (crypto-bigint's generic safegcd) took
//! about 3.9 µs of each check, about 4% of the relay's CPU per event.
//!
//! The method is Bernstein and Yang's "divsteps" (safegcd), arranged for speed rather than
//! constant time, as Wuille described it for libsecp256k1:
//! - `f` and `g` start at `n` and `x`; each divstep keeps `f` odd and halves `g`, and after
//!   about 600 of them `g` is 0 and `f` is ±gcd = ±1.
//! - Divsteps are taken 62 at a time on the low 64 bits of `f` and `g` alone, giving a 2×2
//!   matrix that is then applied to the full numbers: ten or so full-width updates instead of
//!   hundreds. Within a batch, runs of zero bits are skipped at once, and several steps that
//!   all add `f` are merged into one addition of `f·w`.
//! - `d` and `e` follow `f` and `g` as their multiples of `x` modulo `n` (`f ≡ d·x`,
//!   `g ≡ e·x`); each division by 2⁶² is made exact by adding a multiple of `n`. At the end
//!   `x⁻¹ = ±d`.
//!
//! Numbers are held as five signed 62-bit limbs (`Σ limb[i]·2⁶²ⁱ`; the low four in [0, 2⁶²),
//! the top one signed), so a limb times a matrix entry fits an `i128` with room to carry.

use k256::elliptic_curve::PrimeField;
use k256::{FieldBytes, Scalar};

const M62: i64 = (1 << 62) - 1;

/// Five signed 62-bit limbs, least significant first.
type Limbs = [i64; 5];

/// The group order `n`, big-endian.
pub(super) const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// `n` as limbs.
const N: Limbs = limbs_of(&ORDER);

/// `n⁻¹ mod 2⁶²`, which makes each division of `d` and `e` by 2⁶² exact.
const N_INV62: i64 = inverse_mod_2_64(N[0] as u64) as i64 & M62;

/// Batches of 62 divsteps that always end with g = 0: Bernstein and Yang prove at most
/// ⌊(49·256 + 57) / 17⌋ = 741 divsteps for 256-bit inputs, and each batch is exactly 62.
const MAX_BATCHES: usize = 741_usize.div_ceil(62);

/// `x⁻¹ mod n`; `None` for 0.
pub fn invert(x: &Scalar) -> Option<Scalar> {
    let bytes: [u8; 32] = x.to_bytes().into();
    let (mut f, mut g) = (N, limbs_of(&bytes));
    let (mut d, mut e): (Limbs, Limbs) = ([0; 5], [1, 0, 0, 0, 0]);
    let mut eta: i64 = -1;
    for _ in 0..MAX_BATCHES {
        if g == [0; 5] {
            break;
        }
        let t;
        (eta, t) = divsteps_62(eta, f[0] as u64, g[0] as u64);
        update_de(&mut d, &mut e, &t);
        update_fg(&mut f, &mut g, &t);
    }
    if g != [0; 5] {
        // Past the proven bound, which no input reaches: the caller falls back to k256
        // rather than loop on a value from the network.
        return None;
    }
    // gcd(n, x) is 1 unless x is 0 (n is prime), so f ends as ±1.
    let sign = match f {
        [1, 0, 0, 0, 0] => 1,
        MINUS_ONE => -1,
        _ => return None,
    };
    to_scalar(normalize(d, sign))
}

/// −1 as limbs (the low four canonical).
const MINUS_ONE: Limbs = [M62, M62, M62, M62, -1];

/// The 2×2 matrix of 62 divsteps: `[u v; q r]`, scaled so that the new `f` and `g` are
/// `(u·f + v·g) / 2⁶²` and `(q·f + r·g) / 2⁶²`.
struct Transition {
    u: i64,
    v: i64,
    q: i64,
    r: i64,
}

/// 62 divsteps on the low bits of `f` (odd) and `g`; `eta` is minus the paper's delta.
///
/// Each divstep: if `g` is odd and `eta < 0`, `(f, g) ← (g, (g − f)/2)` and `eta ← −eta − 1`;
/// if `g` is odd otherwise, `g ← (g + f)/2`; if `g` is even, `g ← g/2`; `eta` drops by one in
/// the last two cases. The matrix rows double where `f`'s multiple of the starting values would
/// be halved, so every entry stays an integer and |u| + |v| ≤ 2⁶² (likewise q, r).
fn divsteps_62(mut eta: i64, mut f: u64, mut g: u64) -> (i64, Transition) {
    let (mut u, mut v, mut q, mut r) = (1i64, 0i64, 0i64, 1i64);
    let mut left = 62u32;
    loop {
        // Skip g's zero bits at once (at most the steps left in the batch).
        let zeros = (g | (u64::MAX << left)).trailing_zeros();
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        eta -= i64::from(zeros);
        left -= zeros;
        if left == 0 {
            break;
        }
        // g is odd.
        if eta < 0 {
            // (f, g) ← (g, −f): the next addition then makes g − f.
            eta = -eta;
            (f, g) = (g, f.wrapping_neg());
            (u, q) = (q, -u);
            (v, r) = (r, -v);
        }
        // The next steps all add f while eta stays ≥ 0: as many as eta + 1 (and the batch)
        // allow, up to 8 at once, by adding the multiple of f that clears that many low bits.
        let n = (eta + 1).min(i64::from(left)).min(8) as u32;
        let mask = (1u64 << n) - 1;
        let w = g.wrapping_mul(inverse_mod_2_8(f)).wrapping_neg() & mask;
        g = g.wrapping_add(f.wrapping_mul(w));
        q += u * w as i64;
        r += v * w as i64;
    }
    (eta, Transition { u, v, q, r })
}

/// `(f, g) ← (u·f + v·g, q·f + r·g) / 2⁶²`; exact, since the batch cleared 62 low bits.
fn update_fg(f: &mut Limbs, g: &mut Limbs, t: &Transition) {
    combine(f, g, t, 0, 0);
}

/// `(d, e) ← (u·d + v·e, q·d + r·e) / 2⁶² mod n`, keeping both in (−2n, n).
///
/// A multiple of `n` is added to each so that its low 62 bits vanish and the division is
/// exact; it starts at `u` (or `v`, `q`, `r`) times `n` for each negative input, which is what
/// keeps the result in range.
fn update_de(d: &mut Limbs, e: &mut Limbs, t: &Transition) {
    let (sd, se) = (d[4] >> 63, e[4] >> 63);
    let mut md = (t.u & sd) + (t.v & se);
    let mut me = (t.q & sd) + (t.r & se);
    let low = |a: i64, b: i64| (a as i128 * d[0] as i128 + b as i128 * e[0] as i128) as i64;
    // md ≡ −(u·d + v·e) / n (mod 2⁶²), moved by less than 2⁶² from where it started.
    md -= N_INV62.wrapping_mul(low(t.u, t.v)).wrapping_add(md) & M62;
    me -= N_INV62.wrapping_mul(low(t.q, t.r)).wrapping_add(me) & M62;
    combine(d, e, t, md, me);
}

/// `(a, b) ← (u·a + v·b + ma·n, q·a + r·b + mb·n) / 2⁶²`, the sums' low 62 bits being zero.
fn combine(a: &mut Limbs, b: &mut Limbs, t: &Transition, ma: i64, mb: i64) {
    let (u, v, q, r) = (t.u as i128, t.v as i128, t.q as i128, t.r as i128);
    let (ma, mb) = (ma as i128, mb as i128);
    let (mut ca, mut cb) = (0i128, 0i128);
    for i in 0..5 {
        let n = N[i] as i128;
        ca += u * a[i] as i128 + v * b[i] as i128 + n * ma;
        cb += q * a[i] as i128 + r * b[i] as i128 + n * mb;
        if i == 0 {
            debug_assert!(ca as i64 & M62 == 0 && cb as i64 & M62 == 0);
        } else {
            a[i - 1] = ca as i64 & M62;
            b[i - 1] = cb as i64 & M62;
        }
        ca >>= 62;
        cb >>= 62;
    }
    a[4] = ca as i64;
    b[4] = cb as i64;
}

/// `sign·d` reduced into [0, n), from `d` in (−2n, n).
fn normalize(mut d: Limbs, sign: i64) -> Limbs {
    for l in &mut d {
        *l *= sign;
    }
    carry(&mut d);
    while d[4] < 0 {
        add(&mut d, &N, 1);
    }
    while !less_than_n(&d) {
        add(&mut d, &N, -1);
    }
    d
}

/// `d += k·a`, limbs made canonical again.
fn add(d: &mut Limbs, a: &Limbs, k: i64) {
    for (x, y) in d.iter_mut().zip(a) {
        *x += k * y;
    }
    carry(d);
}

/// Moves each low limb's overflow up, so the low four are in [0, 2⁶²).
fn carry(d: &mut Limbs) {
    for i in 0..4 {
        let c = d[i] >> 62;
        d[i] &= M62;
        d[i + 1] += c;
    }
}

/// For a canonical, non-negative `d`.
fn less_than_n(d: &Limbs) -> bool {
    for i in (0..5).rev() {
        if d[i] != N[i] {
            return d[i] < N[i];
        }
    }
    false
}

/// A value in [0, n) as a scalar.
fn to_scalar(d: Limbs) -> Option<Scalar> {
    let w = |i: usize| d[i] as u64;
    let words = [
        w(0) | w(1) << 62,
        w(1) >> 2 | w(2) << 60,
        w(2) >> 4 | w(3) << 58,
        w(3) >> 6 | w(4) << 56,
    ];
    let mut bytes = FieldBytes::default();
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words.iter().rev()) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    Option::from(Scalar::from_repr(bytes))
}

/// 32 big-endian bytes as limbs.
const fn limbs_of(bytes: &[u8; 32]) -> Limbs {
    let w = super::secp256k1::limbs(bytes);
    let m = M62 as u64;
    [
        (w[0] & m) as i64,
        ((w[0] >> 62 | w[1] << 2) & m) as i64,
        ((w[1] >> 60 | w[2] << 4) & m) as i64,
        ((w[2] >> 58 | w[3] << 6) & m) as i64,
        (w[3] >> 56) as i64,
    ]
}

/// `a⁻¹ mod 2⁶⁴` for odd `a` (Newton's iteration doubles the correct bits each time).
const fn inverse_mod_2_64(a: u64) -> u64 {
    let mut x = a; // correct to 3 bits: a·a ≡ 1 (mod 8)
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

/// `a⁻¹ mod 2⁸` for odd `a` (two Newton steps from 3 correct bits give 12).
fn inverse_mod_2_8(a: u64) -> u64 {
    let x = a.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(a)));
    x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::ops::Reduce;

    fn scalar(bytes: [u8; 32]) -> Scalar {
        <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(bytes))
    }

    fn check(x: &Scalar) {
        let want = Option::<Scalar>::from(x.invert());
        let got = invert(x);
        assert_eq!(got, want, "inverse of {x:?}");
        if let Some(i) = got {
            assert_eq!(i * x, Scalar::ONE);
        }
    }

    #[test]
    fn limbs_hold_the_order() {
        assert_eq!(to_scalar(N), None, "n itself is not below n");
        let mut n_minus_1 = N;
        n_minus_1[0] -= 1;
        assert_eq!(to_scalar(n_minus_1), Some(-Scalar::ONE));
        assert_eq!(inverse_mod_2_64(N[0] as u64).wrapping_mul(N[0] as u64), 1);
        for a in (1u64..512).step_by(2) {
            assert_eq!(inverse_mod_2_8(a).wrapping_mul(a) & 0xff, 1);
        }
    }

    #[test]
    fn zero_has_no_inverse() {
        assert_eq!(invert(&Scalar::ZERO), None);
    }

    #[test]
    fn edge_values_match_k256() {
        let mut cases = vec![
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(2u64),
            -Scalar::from(2u64),
        ];
        for k in 0..256 {
            let mut b = [0u8; 32];
            b[31 - k / 8] = 1 << (k % 8);
            cases.push(scalar(b)); // 2^k
            cases.push(-scalar(b));
            cases.push(scalar(b) - Scalar::ONE);
        }
        cases.push(scalar([0xff; 32]));
        cases.push(Scalar::from(u64::MAX));
        for x in cases {
            check(&x);
        }
    }

    #[test]
    fn many_values_match_k256() {
        use sha2::Digest;
        for i in 0u32..20_000 {
            let x = scalar(sha2::Sha256::digest(i.to_be_bytes()).into());
            check(&x);
            // Short values take the fewest batches.
            check(&Scalar::from(u64::from(i) + 1));
        }
    }
}
