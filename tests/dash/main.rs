//! The operator dashboard in a real browser (headless Chromium through chromedriver): against a
//! relay fed by the simulator, an operator logs in, reads every view, blocks and unblocks a
//! host, changes a limit and looks up an account; the host table is timed with 10,000 hosts.
//! Screenshots of each view at 1280 px and 390 px go to `target/dash/`.
//!
//! A binary of its own: its browser and its 10,000 host threads stay out of the timing of the
//! integration tests, and the two tests here take turns.

mod browser;
#[path = "../it/common/mod.rs"]
mod common;

use browser::Browser;
use common::http::{Answer, Auth, admin_get, get};
use common::relay::{ADMIN_PW, config, crawled_network, start, subscribe, wait_until};
use rlay::store::{HostStatus, NewHost};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Mutex;

static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dash")
}

fn host_entry(base: &str, host: &str) -> Value {
    let list = admin_get(base, "/admin/pds/list");
    assert_eq!(list.status, 200, "{}", list.text);
    list.json
        .as_array()
        .and_then(|a| a.iter().find(|h| h["Host"] == host).cloned())
        .unwrap_or_else(|| panic!("{host} is not in /admin/pds/list"))
}

/// JavaScript string literal (JSON is one).
fn lit(s: &str) -> String {
    Value::from(s).to_string()
}

async fn log_in(b: &Browser, base: &str, password: &str) {
    b.goto(&format!("{base}/dash")).await;
    b.until(
        "the login form",
        "!document.getElementById('login').hidden",
        10,
    )
    .await;
    b.type_into("#password", password).await;
    b.click("#login-button").await;
}

async fn show(b: &Browser, view: &str, ready: &str) {
    // The overview's chart needs two samples of the relay's history, ten seconds apart.
    b.js(&format!("location.hash = {}; return true;", lit(view)))
        .await;
    b.until(
        &format!("the {view} view"),
        &format!("!document.getElementById('view-{view}').hidden && ({ready})"),
        25,
    )
    .await;
}

/// Clicks a host row's action button and waits for its dialog.
async fn open_dialog(b: &Browser, act: &str, host: &str) {
    b.click(&format!(
        "#hosts-rows button[data-act={act}][data-host={}]",
        lit(host)
    ))
    .await;
    b.until("the dialog", "document.getElementById('dialog').open", 5)
        .await;
}

/// Waits until the host table's count reads `shown` ("3 of 3", …).
async fn host_count(b: &Browser, shown: &str) {
    let expr = format!(
        "document.getElementById('host-count').textContent.startsWith({})",
        lit(shown)
    );
    b.until(&format!("{shown} hosts listed"), &expr, 10).await;
}

/// Sets a field as a user's edit would, firing `event` (clearing a field by WebDriver fires none).
async fn set_field(b: &Browser, id: &str, value: &str, event: &str) {
    b.js(&format!(
        "const f = document.getElementById({}); f.value = {}; f.dispatchEvent(new Event({})); return true;",
        lit(id),
        lit(value),
        lit(event)
    ))
    .await;
}

async fn screenshots(b: &Browser, view: &str) {
    for (w, h) in [(1280, 900), (390, 844)] {
        b.resize(w, h).await;
        // Let layout (and the host table's row height) follow the new width.
        b.js("window.dispatchEvent(new Event('resize')); return true;")
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        b.screenshot(&shots().join(format!("{view}-{w}.png"))).await;
    }
    b.resize(1280, 900).await;
}

#[test]
fn an_operator_uses_every_view_of_the_dashboard() {
    let _turn = ONE_BROWSER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (mut sim, _dir, relay) = crawled_network(3, 10, None, &[]);
    sim.start_traffic(30.0, 0);
    let base = format!("http://{}", relay.api_addr());
    let hosts = sim.hostnames();
    wait_until(30, "every host with a measured rate", || {
        hosts
            .iter()
            .all(|h| host_entry(&base, h)["EventsPerSecond"].as_f64() > Some(0.0))
    });
    // A firehose consumer, so the consumers view has one to show.
    let _consumer = subscribe(relay.api_addr(), None);

    let page = get(&base, "/dash", Auth::None);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "strict CSP: {csp}"
    );
    assert!(!page.text.contains("<script>"), "no inline script");

    let rt = runtime();
    rt.block_on(async {
        let Some(b) = Browser::start().await else {
            return;
        };
        b.resize(1280, 900).await;

        // A wrong password: an error, and nothing of the relay.
        log_in(&b, &base, "not-the-password").await;
        b.until(
            "the wrong-password error",
            "!document.getElementById('login-error').hidden",
            10,
        )
        .await;
        assert!(
            b.text("#login-error").await.contains("Wrong password"),
            "{}",
            b.text("#login-error").await
        );
        assert_eq!(
            b.js("return document.getElementById('app').hidden && document.getElementById('hosts-rows').children.length === 0 && sessionStorage.length === 0;").await,
            Value::Bool(true),
            "no data and nothing kept after a wrong password"
        );
        b.screenshot(&shots().join("login-error-1280.png")).await;

        // The right one.
        log_in(&b, &base, ADMIN_PW).await;
        b.until("the app", "!document.getElementById('app').hidden", 10)
            .await;
        assert_eq!(
            b.js("return location.href.includes('test-admin-pw') || document.cookie.length > 0;")
                .await,
            Value::Bool(false),
            "the password is in no URL and no cookie"
        );

        // Overview: numbers and the chart from the relay's own history.
        show(
            &b,
            "overview",
            "document.querySelectorAll('#overview-cards .card').length >= 8 && document.querySelector('#chart polyline')",
        )
        .await;
        let cards = b.text("#overview-cards").await;
        assert!(cards.contains("Head seq") && cards.contains("Coverage"), "{cards}");
        screenshots(&b, "overview").await;

        // Hosts: every simulated host, each with a rate above zero.
        show(
            &b,
            "hosts",
            "document.getElementById('host-count').textContent.startsWith('3 of 3')",
        )
        .await;
        for h in &hosts {
            let rate = b
                .text(&format!("#hosts-rows .row[data-host={}] .c-rate", lit(h)))
                .await;
            let rate: f64 = rate.replace(',', "").parse().unwrap_or(0.0);
            assert!(rate > 0.0, "{h} shows rate {rate}; the API says {}", host_entry(&base, h));
        }
        screenshots(&b, "hosts").await;

        // Filtering by name.
        let (target, other) = (&hosts[0], &hosts[1]);
        b.type_into("#host-filter", target).await;
        host_count(&b, "1 of 3").await;
        b.type_into("#host-filter", "no-such-host").await;
        host_count(&b, "0 of 3").await;
        set_field(&b, "host-filter", "", "input").await;
        host_count(&b, "3 of 3").await;

        // Block, after confirming: banned and disconnected, as the admin API says.
        open_dialog(&b, "block", target).await;
        b.click("#dialog-ok").await;
        b.until(
            "the block notice",
            "document.getElementById('notice').textContent.includes('is blocked')",
            10,
        )
        .await;
        wait_until(10, "the blocked host banned and disconnected", || {
            let e = host_entry(&base, target);
            e["Status"] == "banned" && e["HasActiveConnection"] == false
        });
        // Cancelling a confirmation changes nothing.
        b.until(
            "the unblock button",
            &format!("document.querySelector('#hosts-rows button[data-act=unblock][data-host={}]')", lit(target)),
            10,
        )
        .await;
        open_dialog(&b, "unblock", target).await;
        b.click("#dialog-cancel").await;
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(host_entry(&base, target)["Status"], "banned", "cancel keeps it");
        open_dialog(&b, "unblock", target).await;
        b.click("#dialog-ok").await;
        wait_until(20, "the unblocked host connected again", || {
            let e = host_entry(&base, target);
            e["Status"] != "banned" && e["HasActiveConnection"] == true
        });

        // A new account limit.
        open_dialog(&b, "limit", other).await;
        b.type_into("#dialog-input", "7").await;
        b.click("#dialog-ok").await;
        wait_until(10, "the new limit", || {
            host_entry(&base, other)["RepoLimit"] == 7
        });

        // Accounts: by handle, the DID and its host come back.
        let did = sim.world().dids()[0].clone();
        let info: Answer = admin_get(&base, &format!("/admin/repo/info?did={did}"));
        assert_eq!(info.status, 200, "{}", info.text);
        let handle = info.json["handle"].as_str().expect("a handle").to_owned();
        show(&b, "accounts", "true").await;
        b.type_into("#account-q", &handle).await;
        b.click("#account-form button[type=submit]").await;
        b.until(
            "the account",
            &format!("document.getElementById('account-fields').textContent.includes({})", lit(&did)),
            10,
        )
        .await;
        let fields = b.text("#account-fields").await;
        assert!(fields.contains("active"), "{fields}");
        screenshots(&b, "accounts").await;

        show(
            &b,
            "consumers",
            "document.getElementById('consumers').textContent.includes('firehose')",
        )
        .await;
        screenshots(&b, "consumers").await;
        show(&b, "bans", "document.getElementById('bans').children.length > 0").await;
        screenshots(&b, "bans").await;
        show(
            &b,
            "collections",
            "document.getElementById('collections').textContent.includes('app.bsky.')",
        )
        .await;
        screenshots(&b, "collections").await;

        // Logging out forgets the password.
        b.click("#logout").await;
        b.until("the login form", "!document.getElementById('login').hidden", 5)
            .await;
        assert_eq!(
            b.js("return sessionStorage.length;").await,
            Value::from(0),
            "logged out"
        );

        // No JavaScript error; the one failed request is the wrong password's 401.
        let errors: Vec<(String, String)> = b
            .console()
            .await
            .into_iter()
            .filter(|(level, msg)| level == "SEVERE" && !msg.contains("status of 401"))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        b.close().await;
    });
    sim.stop_traffic();
    relay.shutdown();
}

#[test]
fn the_host_table_loads_10000_hosts_fast() {
    let _turn = ONE_BROWSER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = rlay::store::open(None, dir.path()).expect("store");
        for i in 0..10_000u32 {
            let row = store
                .insert_host(&NewHost {
                    hostname: format!("localhost:{}", 20_000 + i),
                    account_limit: 100 + i64::from(i % 900),
                    trusted: false,
                    no_tls: true,
                })
                .expect("a host");
            // Most banned: 200 hosts get connection threads that fail and back off. (With
            // thousands failing at once, their reconnect storm, not the page, sets the time.)
            if i % 50 != 0 {
                store
                    .set_host_status(row.id(), HostStatus::Banned)
                    .expect("status");
            }
        }
    }
    let relay = start(&config(dir.path(), "http://127.0.0.1:9", None, &[]));
    let base = format!("http://{}", relay.api_addr());
    let t = std::time::Instant::now();
    let list = admin_get(&base, "/admin/pds/list");
    println!(
        "dash_hosts_10000_api_ms: {} ({} KiB)",
        t.elapsed().as_millis(),
        list.text.len() / 1024
    );
    assert_eq!(list.json.as_array().map(Vec::len), Some(10_000));

    let rt = runtime();
    rt.block_on(async {
        let Some(b) = Browser::start().await else {
            return;
        };
        b.resize(1280, 900).await;
        log_in(&b, &base, ADMIN_PW).await;
        b.until("the app", "!document.getElementById('app').hidden", 10)
            .await;
        // A fresh load straight into the host table, as an operator's bookmark would.
        b.goto(&format!("{base}/dash/#hosts")).await;
        b.until(
            "10,000 hosts listed",
            "performance.getEntriesByName('hosts-rendered').length > 0",
            30,
        )
        .await;
        let ms = b
            .js("return performance.getEntriesByName('hosts-rendered')[0].startTime;")
            .await
            .as_f64()
            .expect("a time");
        println!("dash_hosts_10000_ms: {}", ms.round());
        assert!(
            b.text("#host-count").await.starts_with("10,000 of 10,000"),
            "{}",
            b.text("#host-count").await
        );
        // Only the rows in view exist; scrolling to the end shows the last ones.
        let rows = b
            .js("return document.querySelectorAll('#hosts-rows .row').length;")
            .await;
        assert!(rows.as_u64() < Some(100), "{rows} rows in the page");
        b.js("const v = document.getElementById('hosts-viewport'); v.scrollTop = v.scrollHeight; v.dispatchEvent(new Event('scroll')); return true;").await;
        b.until(
            "the last rows",
            "[...document.querySelectorAll('#hosts-rows .row')].some(r => r.dataset.host === 'localhost:29999' || r.dataset.host === 'localhost:20000')",
            5,
        )
        .await;
        // Filtering 10,000 rows by status answers at once.
        set_field(&b, "host-status", "banned", "change").await;
        host_count(&b, "9,800 of 10,000").await;
        b.screenshot(&shots().join("hosts-10000-1280.png")).await;
        assert!(ms < 3000.0, "the host table took {ms} ms with 10,000 hosts");
        b.close().await;
    });
    relay.shutdown();
}
