//! Admin authentication: HTTP Basic with user `admin` (or `Authorization: Bearer <password>`),
//! against one or more passwords, compared in constant time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub struct AdminAuth {
    accepted: Vec<Vec<u8>>,
}

/// Compares without stopping at the first difference.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl AdminAuth {
    pub fn new(passwords: &[String]) -> AdminAuth {
        let mut accepted = Vec::new();
        for pw in passwords.iter().filter(|p| !p.is_empty()) {
            accepted.push(format!("Basic {}", STANDARD.encode(format!("admin:{pw}"))).into_bytes());
            accepted.push(format!("Bearer {pw}").into_bytes());
        }
        AdminAuth { accepted }
    }

    /// Whether an `Authorization` header value grants admin access.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let Some(h) = header else { return false };
        let h = h.trim().as_bytes();
        // Check every candidate so timing does not reveal which one (if any) matched.
        self.accepted.iter().fold(false, |ok, a| ok | ct_eq(a, h))
    }
}

/// A random password for when none is configured (logged once at start-up).
pub fn random_password() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(crate::proto::verify::now_us().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    if let Ok(bytes) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(bytes);
    }
    let d: [u8; 32] = h.finalize().into();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d[..18])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer() {
        let a = AdminAuth::new(&["one".into(), "two".into()]);
        let basic = |pw: &str| format!("Basic {}", STANDARD.encode(format!("admin:{pw}")));
        assert!(a.allows(Some(&basic("one"))));
        assert!(a.allows(Some(&basic("two"))));
        assert!(a.allows(Some("Bearer two")));
        assert!(!a.allows(Some(&basic("three"))));
        assert!(!a.allows(Some(&format!("Basic {}", STANDARD.encode("root:one")))));
        assert!(!a.allows(Some("Bearer on")));
        assert!(!a.allows(None));
        assert!(!AdminAuth::new(&[]).allows(Some("Bearer ")));
    }
}
