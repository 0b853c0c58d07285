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

/// A ureq resolver that drops non-public addresses.
#[derive(Debug, Default)]
pub struct PublicOnly;

impl Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut out = self.empty();
        for a in all.iter().filter(|a| is_public(a.ip())) {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// How long a resolved name is reused, and how many names are kept (a flood of did:web hosts
/// clears the cache rather than growing it).
const RESOLVED_TTL: Duration = Duration::from_secs(60);
const RESOLVED_MAX: usize = 4096;

/// A ureq resolver that reuses what `inner` answered for a name within the last minute.
///
/// Why: ureq resolves the name before every request, even one that goes out on a pooled
/// connection, and with a timeout set it does so on a thread it spawns for the purpose. Every
/// DID lookup paid a thread's creation and a DNS query: creating threads was 14% of the
/// resolver threads' time in the relay bench. Failures are not kept.
pub struct Cached<R> {
    inner: R,
    seen: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl<R> Cached<R> {
    pub fn new(inner: R) -> Cached<R> {
        Cached {
            inner,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> std::fmt::Debug for Cached<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cached")
    }
}

impl<R: Resolver> Resolver for Cached<R> {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return self.inner.resolve(uri, config, timeout);
        };
        let key = format!("{scheme}://{authority}");
        let lock = || self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, addrs)) = lock().get(&key)
            && at.elapsed() < RESOLVED_TTL
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = lock();
        if cache.len() >= RESOLVED_MAX {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// An HTTP client for talking to arbitrary hosts: public addresses only (unless
/// `allow_private`), a global timeout, no redirects, status codes as values, names resolved
/// at most once a minute ([`Cached`]).
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
    let connector = ureq::unversioned::transport::DefaultConnector::default();
    if allow_private {
        ureq::Agent::with_parts(config, connector, Cached::new(DefaultResolver::default()))
    } else {
        ureq::Agent::with_parts(config, connector, Cached::new(PublicOnly))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real resolver, counting how often it is asked.
    #[derive(Debug, Default)]
    struct Counting<R>(R, std::sync::atomic::AtomicUsize);

    impl<R: Resolver> Resolver for Counting<R> {
        fn resolve(
            &self,
            uri: &ureq::http::Uri,
            config: &ureq::config::Config,
            timeout: ureq::unversioned::transport::NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.resolve(uri, config, timeout)
        }
    }

    fn ask<R: Resolver>(r: &Cached<Counting<R>>, u: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: ureq::http::Uri = u.parse().expect("uri");
        let config = ureq::config::Config::default();
        r.resolve(
            &uri,
            &config,
            ureq::unversioned::transport::NextTimeout::default(),
        )
        .map(|a| a.iter().copied().collect())
    }

    fn asked<R>(r: &Cached<Counting<R>>) -> usize {
        r.inner.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_name_is_resolved_once_then_reused_and_failures_are_not_kept() {
        let cached = Cached::new(Counting::<DefaultResolver>::default());
        let first = ask(&cached, "http://127.0.0.1:8080/a").expect("resolves");
        let again = ask(&cached, "http://127.0.0.1:8080/b").expect("resolves");
        assert_eq!(asked(&cached), 1);
        assert_eq!(first, again);
        assert_eq!(first.first().map(SocketAddr::port), Some(8080));
        ask(&cached, "http://127.0.0.1:9090/").expect("resolves");
        assert_eq!(asked(&cached), 2, "another port is another name");
        // Loopback is refused by the public-only resolver: a failure, asked again each time.
        let public = Cached::new(Counting::<PublicOnly>::default());
        assert!(ask(&public, "http://127.0.0.1:8080/").is_err());
        assert!(ask(&public, "http://127.0.0.1:8080/").is_err());
        assert_eq!(asked(&public), 2);
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
