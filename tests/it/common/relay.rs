//! A relay on temp dirs for tests, plus firehose consumer helpers.

use rlay::config::Config;
use rlay::proto::frame::{self, Event};
use rlay::relay::{Parts, Relay};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const ADMIN_PW: &str = "test-admin-pw";

/// Relay configuration for tests; `extra` flags override the defaults.
pub fn config(
    data_dir: &std::path::Path,
    plc: &str,
    database_url: Option<&str>,
    extra: &[(&str, &str)],
) -> Config {
    let mut flags: Vec<(String, String)> = vec![
        ("data-dir".into(), data_dir.display().to_string()),
        ("api-listen".into(), "127.0.0.1:0".into()),
        ("metrics-listen".into(), "".into()),
        ("admin-password".into(), ADMIN_PW.into()),
        ("plc-host".into(), plc.into()),
        ("bootstrap-host".into(), "".into()),
        ("allow-insecure-hosts".into(), "true".into()),
        ("trusted-domains".into(), "localhost".into()),
        ("upstream-stall-timeout".into(), "3s".into()),
        ("idle-host-retry".into(), "2s".into()),
        ("resolver-threads".into(), "2".into()),
        // Every test client is 127.0.0.1.
        ("max-connections-per-address".into(), "100000".into()),
    ];
    if let Some(u) = database_url {
        flags.push(("database-url".into(), u.into()));
    }
    for (k, v) in extra {
        flags.retain(|(f, _)| f != k);
        flags.push(((*k).into(), (*v).into()));
    }
    let mut argv = vec!["rlay".to_owned()];
    for (k, v) in flags {
        argv.push(format!("--{k}={v}"));
    }
    Config::from_args(argv).expect("test config")
}

pub fn start(cfg: &Config) -> Relay {
    Relay::start(cfg, Parts::default()).expect("relay starts")
}

/// Polls `f` until it holds or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Asks the relay to crawl every host and waits until all are connected.
pub fn crawl_all(relay: &Relay, hosts: &[String]) {
    for h in hosts {
        relay.crawl(h).unwrap_or_else(|e| panic!("crawl {h}: {e}"));
    }
    wait_until(30, "every host connected", || {
        hosts
            .iter()
            .all(|h| relay.host(h).is_some_and(|x| x.connected()))
    });
}

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

pub fn subscribe(addr: SocketAddr, cursor: Option<u64>) -> Ws {
    let url = match cursor {
        Some(c) => format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos"),
    };
    let (mut ws, _) = tungstenite::connect(url).expect("subscribe to the relay");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
    }
    ws
}

/// Reads the relay's whole stream from `cursor` up to its current head.
pub fn read_until_head(relay: &Relay, cursor: u64) -> Vec<Event> {
    let head = relay.head_seq();
    let mut ws = subscribe(relay.api_addr(), Some(cursor));
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = cursor;
    while last < head {
        assert!(
            Instant::now() < deadline,
            "stream stalled at {last} of {head}"
        );
        match ws.read() {
            Ok(Message::Binary(b)) => {
                let e = frame::decode(&b).expect("relay frames decode strictly");
                if let Some(s) = e.seq() {
                    last = s as u64;
                }
                out.push(e);
            }
            Ok(_) => {}
            Err(e) if rlay::util::net::ws_timed_out(&e) => {
                // Events of taken-down accounts are skipped on replay: stop once nothing comes.
                if relay.head_seq() == head {
                    break;
                }
            }
            Err(e) => panic!("firehose read failed: {e}"),
        }
    }
    out
}

/// Waits until the relay's head stops moving.
pub fn settle(relay: &Relay) {
    let mut last = relay.head_seq();
    let mut still = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while still < 8 {
        assert!(Instant::now() < deadline, "relay never went quiet");
        std::thread::sleep(Duration::from_millis(100));
        let h = relay.head_seq();
        if h == last && relay.is_idle() {
            still += 1;
        } else {
            still = 0;
            last = h;
        }
    }
}

/// A simulated network with `per_host` accounts on each host, crawled by a relay started on
/// `database_url` (SQLite in the temp dir when `None`) with `extra` flags.
pub fn crawled_network(
    hosts: usize,
    per_host: usize,
    database_url: Option<&str>,
    extra: &[(&str, &str)],
) -> (rlay::sim::Sim, tempfile::TempDir, Relay) {
    let sim = rlay::sim::Sim::start(&rlay::sim::SimConfig {
        hosts,
        accounts_per_host: per_host,
        ..rlay::sim::SimConfig::default()
    })
    .expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let relay = start(&config(
        dir.path(),
        sim.world().plc_url(),
        database_url,
        extra,
    ));
    crawl_all(&relay, &sim.hostnames());
    (sim, dir, relay)
}

/// A simulated network whose accounts are created after the relay crawled every host, so the
/// relay sees each account's whole history. `extra` flags go to the relay.
pub fn live_network(
    hosts: usize,
    per_host: usize,
    extra: &[(&str, &str)],
) -> (rlay::sim::Sim, tempfile::TempDir, Relay) {
    let sim = rlay::sim::Sim::start(&rlay::sim::SimConfig {
        hosts,
        accounts_per_host: 0,
        ..rlay::sim::SimConfig::default()
    })
    .expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let relay = start(&config(dir.path(), sim.world().plc_url(), None, extra));
    crawl_all(&relay, &sim.hostnames());
    for h in 0..hosts {
        for _ in 0..per_host {
            sim.world().create_account(h, None).expect("account");
        }
    }
    (sim, dir, relay)
}

pub fn free_port() -> u16 {
    rlay::sim::admin::free_port().expect("a free loopback port")
}

/// The `rlay serve` command line the tests run on `127.0.0.1:port`: the test defaults, then
/// `extra` flags (`--name=value`).
pub fn serve_command(data: &std::path::Path, port: u16, extra: &[String]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rlay"));
    c.arg("serve")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--api-listen=127.0.0.1:{port}"))
        .arg("--metrics-listen=")
        .arg(format!("--admin-password={ADMIN_PW}"))
        .arg("--bootstrap-host=")
        .arg("--allow-insecure-hosts=true")
        .arg("--trusted-domains=localhost")
        .arg("--upstream-stall-timeout=3s")
        .args(extra)
        .env("RELAY_LOG_LEVEL", "warn");
    c
}

/// `rlay serve` as its own process ([`serve_command`]); returns once it announces its address.
pub fn spawn_serve(data: &std::path::Path, port: u16, extra: &[String]) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = serve_command(data, port, extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start rlay serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("relay announces its address");
    assert!(
        line.contains("listening on"),
        "unexpected first line: {line}"
    );
    child
}
