//! Syntax validators for the identifiers a relay touches: DID, handle, NSID, TID, record key,
//! repo path, datetime and CID string. Hand-written (no regex engine) because they run on every
//! event and every op path.

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$`, at most 2048 characters.
pub fn is_valid_did(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 2048 || !s.starts_with("did:") {
        return false;
    }
    let rest = &b[4..];
    let Some(colon) = rest.iter().position(|&c| c == b':') else {
        return false;
    };
    let method = &rest[..colon];
    let id = &rest[colon + 1..];
    if method.is_empty() || !method.iter().all(|c| c.is_ascii_lowercase()) {
        return false;
    }
    let Some(&last) = id.last() else {
        return false;
    };
    id.iter()
        .all(|&c| is_alnum(c) || matches!(c, b'.' | b'_' | b':' | b'%' | b'-'))
        && (is_alnum(last) || matches!(last, b'.' | b'_' | b'-'))
}

/// did:plc identifiers: 24 lowercase base32 characters.
pub fn is_valid_plc_did(s: &str) -> bool {
    s.strip_prefix("did:plc:").is_some_and(|id| {
        id.len() == 24
            && id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
    })
}

/// One DNS-style label: 1–63 of `[a-zA-Z0-9-]`, not starting or ending with `-`.
fn is_label(l: &[u8]) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.iter().all(|&c| is_alnum(c) || c == b'-')
        && l[0] != b'-'
        && l[l.len() - 1] != b'-'
}

/// Handle syntax: at most 253 characters, at least two labels, TLD not starting with a digit.
pub fn is_valid_handle(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 253 {
        return false;
    }
    let labels: Vec<&[u8]> = b.split(|&c| c == b'.').collect();
    if labels.len() < 2 || !labels.iter().all(|l| is_label(l)) {
        return false;
    }
    labels
        .last()
        .is_some_and(|tld| tld[0].is_ascii_alphabetic())
}

/// TLDs that pass syntax but must never resolve.
pub fn is_disallowed_tld(handle: &str) -> bool {
    const BAD: [&str; 8] = [
        ".alt",
        ".arpa",
        ".example",
        ".internal",
        ".invalid",
        ".local",
        ".localhost",
        ".onion",
    ];
    let h = handle.to_ascii_lowercase();
    BAD.iter().any(|t| h.ends_with(t))
}

/// NSID: reversed domain (first segment starts with a letter) plus a name segment
/// `[a-zA-Z][a-zA-Z0-9]{0,62}`; at least three segments; at most 317 characters.
pub fn is_valid_nsid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 317 {
        return false;
    }
    let segs: Vec<&[u8]> = b.split(|&c| c == b'.').collect();
    if segs.len() < 3 {
        return false;
    }
    let (name, domain) = match segs.split_last() {
        Some(x) => x,
        None => return false,
    };
    if !domain.iter().all(|l| is_label(l)) || !domain[0][0].is_ascii_alphabetic() {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name[0].is_ascii_alphabetic()
        && name.iter().all(|&c| is_alnum(c))
}

const TID_CHARS: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// `^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$`
pub fn is_valid_tid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && matches!(b[0], b'2'..=b'7' | b'a'..=b'j')
        && b.iter().all(|&c| matches!(c, b'2'..=b'7' | b'a'..=b'z'))
}

/// The 64-bit value of a TID (`None` if the syntax is wrong).
pub fn tid_to_u64(s: &str) -> Option<u64> {
    if !is_valid_tid(s) {
        return None;
    }
    let mut v = 0u64;
    for &c in s.as_bytes() {
        let d = TID_CHARS.iter().position(|&x| x == c)? as u64;
        v = (v << 5) | d;
    }
    Some(v)
}

/// Microseconds since the UNIX epoch encoded in a TID.
pub fn tid_timestamp_us(s: &str) -> Option<i64> {
    tid_to_u64(s).map(|v| (v >> 10) as i64)
}

/// Encodes a TID from a timestamp (µs) and a 10-bit clock id.
pub fn tid_from_parts(micros: u64, clock_id: u16) -> String {
    let v = ((micros & ((1 << 53) - 1)) << 10) | u64::from(clock_id & 0x3ff);
    let mut out = [0u8; 13];
    for (i, o) in out.iter_mut().enumerate() {
        let shift = 5 * (12 - i);
        *o = TID_CHARS[((v >> shift) & 31) as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Record key: 1–512 of `[A-Za-z0-9.\-_:~]`, not `.` or `..`.
pub fn is_valid_record_key(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 512
        && s != "."
        && s != ".."
        && b.iter()
            .all(|&c| is_alnum(c) || matches!(c, b'.' | b'-' | b'_' | b':' | b'~'))
}

/// Splits `collection/rkey` if both halves are valid.
pub fn parse_repo_path(s: &str) -> Option<(&str, &str)> {
    let (c, r) = s.split_once('/')?;
    (is_valid_nsid(c) && is_valid_record_key(r)).then_some((c, r))
}

/// CID string syntax as the lexicon validators check it (not a full parse): 8–256 characters of
/// `[a-zA-Z0-9+=]`, and not a CIDv0 (`Qmb...`).
pub fn is_valid_cid_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    (8..=256).contains(&b.len())
        && b.iter().all(|&c| is_alnum(c) || c == b'+' || c == b'=')
        && !s.starts_with("Qmb")
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            let leap =
                (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
            if leap { 29 } else { 28 }
        }
    }
}

/// atproto datetime: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, uppercase `T`/`Z`, no `-00:00`, a real
/// calendar date, not before year 0 once normalised to UTC.
pub fn is_valid_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 64 {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        digits(&b[0..4]),
        digits(&b[5..7]),
        digits(&b[8..10]),
        digits(&b[11..13]),
        digits(&b[14..16]),
        digits(&b[17..19]),
    ) else {
        return false;
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return false;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    let offset_min: i64 = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (Some(oh), Some(om)) = (digits(&[*h1, *h2]), digits(&[*m1, *m2])) else {
                return false;
            };
            if oh > 23 || om > 59 || (*sign == b'-' && oh == 0 && om == 0) {
                return false;
            }
            let v = i64::from(oh * 60 + om);
            if *sign == b'+' { v } else { -v }
        }
        _ => return false,
    };
    if year == 0 {
        // Minutes since 0000-01-01T00:00 in local time, normalised to UTC, must not be negative.
        let mut doy = day - 1;
        for m in 1..month {
            doy += days_in_month(0, m);
        }
        let local = i64::from(doy) * 1440 + i64::from(hour * 60 + min);
        if local - offset_min < 0 {
            return false;
        }
    }
    true
}

/// Lower-cases the method-specific part of did:plc and did:web (indigo's normalisation).
pub fn normalize_did(did: &str) -> String {
    if did.starts_with("did:plc:") || did.starts_with("did:web:") {
        did.to_ascii_lowercase()
    } else {
        did.to_owned()
    }
}

/// Whether a DID is already in normal form (strictly normalised DIDs are required on the wire).
pub fn is_normalized_did(did: &str) -> bool {
    !(did.starts_with("did:plc:") || did.starts_with("did:web:"))
        || !did.bytes().any(|c| c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_round_trip() {
        let t = tid_from_parts(1_700_000_000_000_000, 5);
        assert!(is_valid_tid(&t));
        assert_eq!(tid_timestamp_us(&t), Some(1_700_000_000_000_000));
        assert_eq!(tid_from_parts(0, 0), "2222222222222");
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse_repo_path("app.bsky.feed.post/3k2"),
            Some(("app.bsky.feed.post", "3k2"))
        );
        assert_eq!(parse_repo_path("app.bsky.feed.post/a/b"), None);
        assert_eq!(parse_repo_path("A0/374913"), None);
    }
}
