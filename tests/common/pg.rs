//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port, one cluster per test binary, one fresh database per caller.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` (or `nobody`) user. A small watchdog shell stops the server and deletes the
//! cluster once the test process is gone, so nothing is left behind even after a panic.
//!
//! Missing binaries skip loudly, unless `RLAY_REQUIRE_POSTGRES=1` (set by `.ci/run`), which
//! turns the skip into a failure.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn bindir() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for d in path.split(':') {
            let p = PathBuf::from(d).join("initdb");
            if let Ok(real) = std::fs::canonicalize(&p)
                && let Some(parent) = real.parent()
                && parent.join("postgres").exists()
            {
                return Some(parent.to_path_buf());
            }
        }
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (dir.join("initdb").exists() && dir.join("postgres").exists()).then_some(dir)
}

/// The effective uid, read from /proc (no libc needed).
fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|x| x.parse().ok()))
        })
        .unwrap_or(0)
}

/// uid and gid of the first of these users that exists.
fn unprivileged_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    for name in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == name {
                return Some((f[2].parse().ok()?, f[3].parse().ok()?));
            }
        }
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_cluster(durable: bool) -> Option<String> {
    let Some(bin) = bindir() else {
        if std::env::var("RLAY_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!(
                "RLAY_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries were found (initdb on PATH or `pg_config --bindir`); install the `postgresql` package"
            );
        }
        eprintln!(
            "\n!!! SKIPPING PostgreSQL tests: no initdb/postgres found (install `postgresql`, or set RLAY_REQUIRE_POSTGRES=1 to make this fatal) !!!\n"
        );
        return None;
    };
    let root = tempfile::Builder::new()
        .prefix("rlay-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let data = root.join("data");
    let user = if euid() == 0 {
        let u = unprivileged_user().expect("running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL as");
        std::os::unix::fs::chown(&root, Some(u.0), Some(u.1)).expect("chown cluster dir");
        Some(u)
    } else {
        None
    };
    let as_user = |c: &mut Command| {
        if let Some((uid, gid)) = user {
            c.uid(uid).gid(gid);
        }
    };
    let mut init = Command::new(bin.join("initdb"));
    init.args(["-D"])
        .arg(&data)
        .args(["-U", "rlay", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    as_user(&mut init);
    let out = init.output().expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = free_port();
    let script = format!(
        r#""{bin}/postgres" -D "{data}" -p {port} -k "{data}" -c listen_addresses=127.0.0.1 {speed} -c max_connections=300 > "{root}/log" 2>&1 &
P=$!
while [ -d /proc/{parent} ] && kill -0 $P 2>/dev/null; do sleep 0.5; done
kill -INT $P 2>/dev/null; wait $P 2>/dev/null; rm -rf "{root}""#,
        bin = bin.display(),
        data = data.display(),
        root = root.display(),
        parent = std::process::id(),
        speed = if durable {
            ""
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        },
    );
    let mut watchdog = Command::new("sh");
    watchdog
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_user(&mut watchdog);
    // Deliberately detached: the watchdog outlives this process to clean up after it.
    #[allow(clippy::zombie_processes)]
    watchdog.spawn().expect("start postgres");

    let base = format!("postgres://rlay@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if postgres::Client::connect(&format!("{base}/postgres"), postgres::NoTls).is_ok() {
            return Some(base);
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(root.join("log")).unwrap_or_default();
            panic!("PostgreSQL did not start within 30s; server log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A URL to a new, empty database, or `None` when PostgreSQL is unavailable (and allowed to be).
/// The cluster trades durability for speed (`fsync=off`); see [`fresh_durable_database`].
pub fn fresh_database() -> Option<String> {
    static CLUSTER: OnceLock<Option<String>> = OnceLock::new();
    create_database(CLUSTER.get_or_init(|| start_cluster(false)).as_ref()?)
}

/// Like [`fresh_database`], on a cluster with PostgreSQL's default durability (for benchmarks).
pub fn fresh_durable_database() -> Option<String> {
    static CLUSTER: OnceLock<Option<String>> = OnceLock::new();
    create_database(CLUSTER.get_or_init(|| start_cluster(true)).as_ref()?)
}

fn create_database(base: &str) -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut c = postgres::Client::connect(&format!("{base}/postgres"), postgres::NoTls)
        .expect("connect to test cluster");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create test database");
    Some(format!("{base}/{name}"))
}
