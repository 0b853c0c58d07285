//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port, one cluster per test binary, one fresh database per caller.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` (or `nobody`) user. A small watchdog shell stops the server and deletes the
//! cluster once the test process is gone, so nothing is left behind even after a panic.
//!
//! The watchdog also supervises the server: while a `down` file exists in the cluster
//! directory it keeps PostgreSQL stopped, and starts it again once the file is gone (see
//! [`Switch`], for database outage tests).
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
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("its address").port()
}

/// A running test cluster.
struct Cluster {
    /// `postgres://rlay@127.0.0.1:PORT`, for the databases handed to tests.
    base: String,
    /// How the harness itself connects (over the Unix socket when TCP needs TLS).
    admin: String,
    /// The CA that signed the server certificate, when the cluster only accepts TLS.
    ca: Option<PathBuf>,
    /// The cluster's directory (its `down` file stops the server).
    root: PathBuf,
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, made with `openssl`.
fn make_certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=rlay test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (install the `openssl` package)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn start_cluster(durable: bool, tls: bool) -> Option<Cluster> {
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
    let mut tls_flags = String::new();
    if tls {
        make_certificates(&root);
        let key = root.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("key mode");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&key, Some(uid), Some(gid)).expect("chown key");
        }
        // TCP only with TLS; the harness itself uses the Unix socket.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        tls_flags = format!(
            "-c ssl=on -c ssl_cert_file={root}/server.crt -c ssl_key_file={root}/server.key",
            root = root.display()
        );
    }

    let port = free_port();
    let script = format!(
        r#"up() {{ "{bin}/postgres" -D "{data}" -p {port} -k "{data}" -c listen_addresses=127.0.0.1 {speed} {tls_flags} -c max_connections=300 >> "{root}/log" 2>&1 & P=$!; }}
up
while [ -d /proc/{parent} ]; do
  if [ -e "{root}/down" ]; then
    if [ -n "$P" ]; then kill -INT $P 2>/dev/null; wait $P 2>/dev/null; P=; fi
  elif [ -z "$P" ] || ! kill -0 $P 2>/dev/null; then
    up
  fi
  sleep 0.2
done
if [ -n "$P" ]; then kill -INT $P 2>/dev/null; wait $P 2>/dev/null; fi
rm -rf "{root}""#,
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
    let admin = if tls {
        format!("host={} port={port} user=rlay", data.display())
    } else {
        format!("host=127.0.0.1 port={port} user=rlay")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if postgres::Client::connect(&format!("{admin} dbname=postgres"), postgres::NoTls).is_ok() {
            return Some(Cluster {
                base,
                admin,
                ca: tls.then(|| root.join("ca.crt")),
                root,
            });
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
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    create_database(
        CLUSTER
            .get_or_init(|| start_cluster(false, false))
            .as_ref()?,
    )
}

/// A new database on a cluster that accepts TCP connections only over TLS, and the PEM file of
/// the CA that signed its certificate.
pub fn fresh_tls_database() -> Option<(String, PathBuf)> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    let cluster = CLUSTER
        .get_or_init(|| start_cluster(false, true))
        .as_ref()?;
    Some((create_database(cluster)?, cluster.ca.clone()?))
}

/// Like [`fresh_database`], on a cluster with PostgreSQL's default durability (for benchmarks).
pub fn fresh_durable_database() -> Option<String> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    create_database(
        CLUSTER
            .get_or_init(|| start_cluster(true, false))
            .as_ref()?,
    )
}

/// Stops and starts the PostgreSQL server of a [`fresh_stoppable_database`].
pub struct Switch {
    root: PathBuf,
    admin: String,
}

impl Switch {
    fn answers(&self) -> bool {
        postgres::Client::connect(&format!("{} dbname=postgres", self.admin), postgres::NoTls)
            .is_ok()
    }

    fn wait_for(&self, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.answers() != up {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not {} within 30s",
                if up { "start" } else { "stop" }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shuts the server down (fast shutdown: clients are disconnected) and waits until it
    /// refuses connections.
    pub fn stop(&self) {
        std::fs::write(self.root.join("down"), b"").expect("write the down file");
        self.wait_for(false);
    }

    /// Starts the server again and waits until it answers.
    pub fn start(&self) {
        std::fs::remove_file(self.root.join("down")).expect("remove the down file");
        self.wait_for(true);
    }
}

/// A new database on a cluster of its own, which the test may stop and start.
pub fn fresh_stoppable_database() -> Option<(String, Switch)> {
    let cluster = start_cluster(false, false)?;
    let url = create_database(&cluster)?;
    Some((
        url,
        Switch {
            root: cluster.root,
            admin: cluster.admin,
        },
    ))
}

fn create_database(cluster: &Cluster) -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut c = postgres::Client::connect(
        &format!("{} dbname=postgres", cluster.admin),
        postgres::NoTls,
    )
    .expect("connect to test cluster");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create test database");
    Some(format!("{}/{name}", cluster.base))
}
