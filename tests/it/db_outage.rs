//! PostgreSQL stopped under load, with most accounts not in memory (as in production): ingestion
//! waits for the store instead of dropping events, health says the database is down, and once
//! it is back every valid event arrives exactly once and in order (no chain break).

use crate::common;
use crate::relay_e2e::{assert_delivered_exactly, run_traffic};

use common::http::{Auth, get};
use common::metrics::Mark;
use common::relay::{crawled_network, read_until_head, settle, wait_until};
use rlay::sim::LedgerEntry;

#[test]
fn a_database_outage_pauses_ingestion_and_loses_nothing() {
    let Some((url, pg)) = common::pg::fresh_stoppable_database() else {
        return;
    };
    // 200 accounts over 64 shards with room for one each: most are evicted after each flush,
    // so most events must load their account from the store.
    let (sim, _dir, relay) = crawled_network(10, 20, Some(&url), &[("account-cache-size", "1")]);
    let base = format!("http://{}", relay.api_addr());
    let before = sim.world().ledger().len();
    run_traffic(&sim, 100, 31);
    wait_until(60, "the first events sequenced", || {
        relay.head_seq() as usize >= sim.world().ledger().len() - before
    });
    settle(&relay);

    let mark = Mark::now();
    pg.stop();
    run_traffic(&sim, 400, 32);
    wait_until(30, "ingestion waiting for the store", || {
        mark.delta("rlay_store_retries_total", &[""]) >= 3.0
    });
    let h = get(&base, "/xrpc/_health", Auth::None);
    assert_ne!(h.status, 200, "health while the database is down");
    assert!(h.text.contains("database"), "{}", h.text);
    let expected: Vec<LedgerEntry> = sim.world().ledger()[before..].to_vec();
    assert!(
        (relay.head_seq() as usize) < expected.len(),
        "events wait for the store rather than pass"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    pg.start();

    wait_until(90, "every valid event sequenced", || {
        relay.head_seq() as usize >= expected.len()
    });
    settle(&relay);
    let out = read_until_head(&relay, 0);
    assert_delivered_exactly(&out, &expected);
    // Counters are shared with concurrent tests: count this network's hosts only.
    for host in sim.hostnames() {
        let pds = format!("pds=\"{host}\"");
        let dropped = mark.delta("rlay_events_dropped_total", &[&pds]);
        assert_eq!(dropped, 0.0, "events from {host} dropped");
    }
    wait_until(10, "health recovers", || {
        get(&base, "/xrpc/_health", Auth::None).status == 200
    });
    relay.shutdown();
}
