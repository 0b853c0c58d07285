//! Outbound network safety: dial only public addresses (checked on the resolved IP at dial time,
//! so DNS cannot smuggle in a private address), unless dev mode allows insecure hosts.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};

fn v4_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
        || o[0] >= 240) // reserved
}

fn v6_public(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_public(v4);
    }
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b)) // NAT64 (could reach private v4)
}

/// Whether an address is on the public internet.
/// A read that gave up on its socket timeout (reported as either kind, depending on the OS).
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// [`timed_out`], through tungstenite.
pub fn ws_timed_out(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if timed_out(io))
}

/// Whether bytes (or the peer's close, or an error) wait on the socket, without waiting: a
/// writer that also serves its peer's pings reads only then, instead of a read that sits out
/// its timeout in front of every write.
pub fn has_input(s: &TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(
        recv(s.as_raw_fd(), &mut b, flags),
        Err(nix::errno::Errno::EAGAIN)
    )
}

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v4_public(v),
        IpAddr::V6(v) => v6_public(v),
    }
}

/// Resolves `host:port` and connects to the first acceptable address.
pub fn connect(
    host: &str,
    port: u16,
    allow_private: bool,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    let mut refused_private = false;
    for a in addrs {
        if !allow_private && !is_public(a.ip()) {
            refused_private = true;
            continue;
        }
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    if refused_private {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{host} resolves only to non-public addresses (allowed only with RELAY_ALLOW_INSECURE_HOSTS)"
            ),
        ));
    }
    Err(last)
}

/// How long a resolved name is reused, and how many names are kept (a flood of did:web hosts
/// clears the cache rather than growing it).
const RESOLVED_TTL: Duration = Duration::from_secs(60);
const RESOLVED_MAX: usize = 4096;

/// The agents' ureq resolver: the system's answer, public addresses only unless private ones
/// are allowed, reused for a minute.
///
/// Why reuse: ureq resolves the name before every request, even one that goes out on a pooled
/// connection, and with a timeout set it does so on a thread it spawns for the purpose. Every
/// DID lookup paid a thread's creation and a DNS query: creating threads was 14% of the
/// resolver threads' time in the relay bench. Only what passed the public-address check is
/// kept; failures are not.
pub struct Names {
    public_only: bool,
    seen: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Names {
    pub fn new(public_only: bool) -> Names {
        Names {
            public_only,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Names {{ public_only: {} }}", self.public_only)
    }
}

impl Resolver for Names {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map_or("", |a| a.as_str())
        );
        let lock = || self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, addrs)) = lock().get(&key)
            && at.elapsed() < RESOLVED_TTL
        {
            return Ok(addrs.clone());
        }
        let all = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut out = self.empty();
        for a in all
            .iter()
            .filter(|a| !self.public_only || is_public(a.ip()))
        {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        let mut cache = lock();
        if cache.len() >= RESOLVED_MAX {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), out.clone()));
        Ok(out)
    }
}

/// An HTTP client for talking to arbitrary hosts: public addresses only (unless
/// `allow_private`), a global timeout, no redirects, status codes as values, names resolved
/// at most once a minute ([`Names`]).
pub fn http_agent(allow_private: bool, timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .user_agent(format!(
            "rlay/{} (atproto-relay)",
            env!("CARGO_PKG_VERSION")
        ))
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        Names::new(!allow_private),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(r: &Names, u: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: ureq::http::Uri = u.parse().expect("uri");
        let config = ureq::config::Config::default();
        r.resolve(
            &uri,
            &config,
            ureq::unversioned::transport::NextTimeout::default(),
        )
        .map(|a| a.iter().copied().collect())
    }

    /// An answer for `name` kept `age` ago.
    fn plant(r: &Names, name: &str, addr: &str, age: Duration) {
        let mut addrs = r.empty();
        addrs.push(addr.parse().expect("addr"));
        let at = Instant::now().checked_sub(age).expect("age");
        r.seen
            .lock()
            .expect("lock")
            .insert(name.into(), (at, addrs));
    }

    #[test]
    fn a_name_is_answered_from_the_cache_for_a_minute_and_failures_are_not_kept() {
        let cached = Names::new(false);
        let real = ask(&cached, "http://127.0.0.1:8080/a").expect("resolves");
        assert_eq!(real, vec!["127.0.0.1:8080".parse().expect("addr")]);
        // A planted answer shows whether the resolver is asked again.
        plant(
            &cached,
            "http://127.0.0.1:8080",
            "10.9.8.7:8080",
            Duration::ZERO,
        );
        let kept = ask(&cached, "http://127.0.0.1:8080/b").expect("resolves");
        assert_eq!(kept, vec!["10.9.8.7:8080".parse().expect("addr")]);
        assert_eq!(
            ask(&cached, "http://127.0.0.1:9090/")
                .expect("resolves")
                .len(),
            1
        );
        plant(
            &cached,
            "http://127.0.0.1:8080",
            "10.9.8.7:8080",
            RESOLVED_TTL,
        );
        assert_eq!(
            ask(&cached, "http://127.0.0.1:8080/c").expect("resolves"),
            real
        );
        // Loopback is refused by the public-only resolver: an error, and nothing kept.
        let public = Names::new(true);
        assert!(ask(&public, "http://127.0.0.1:8080/").is_err());
        assert!(public.seen.lock().expect("lock").is_empty());
    }

    #[test]
    fn public_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }
}
