//! MST key rules: height (fanout 4), shared prefix length, and key syntax.

use sha2::{Digest, Sha256};

/// Maximum MST key length in bytes (TS `isValidMstKey`, indigo `MAX_KEY_BYTES`).
pub const MAX_KEY_BYTES: usize = 1024;

/// Layer of a key: leading zero bits of SHA-256(key), divided by two.
pub fn key_height(key: &[u8]) -> u8 {
    let d: [u8; 32] = Sha256::digest(key).into();
    let mut zeros = 0u32;
    for b in d {
        if b == 0 {
            zeros += 8;
        } else {
            zeros += b.leading_zeros();
            break;
        }
    }
    (zeros / 2) as u8
}

/// Number of leading bytes two keys share.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Exactly two non-empty `/`-separated segments of `[a-zA-Z0-9_~\-:.]`, at most 1024 bytes.
pub fn is_valid_mst_key(key: &[u8]) -> bool {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return false;
    }
    let mut slashes = 0;
    for &c in key {
        match c {
            b'/' => slashes += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'~' | b'-' | b':' | b'.' => {}
            _ => return false,
        }
    }
    slashes == 1 && key[0] != b'/' && key[key.len() - 1] != b'/'
}
