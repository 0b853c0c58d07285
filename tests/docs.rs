//! The README stays true: its configuration table lists every variable the relay reads, with
//! the right default, and its API reference shows every route.

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

#[test]
fn configuration_table_lists_every_variable_with_its_default() {
    let text = readme();
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect();
    for (name, default, _) in rlay::config::VARS {
        let row = rows
            .iter()
            .find(|r| r[0] == *name)
            .unwrap_or_else(|| panic!("README's configuration table lacks {name}"));
        assert_eq!(row[1], *default, "README default of {name}");
    }
    for r in &rows {
        assert!(
            rlay::config::VARS.iter().any(|v| v.0 == r[0]),
            "README documents {} which the relay does not read",
            r[0]
        );
    }
}

#[test]
fn api_reference_shows_every_route() {
    let text = readme();
    let routes = [
        "/xrpc/com.atproto.sync.subscribeRepos",
        "/xrpc/com.atproto.sync.listRepos",
        "/xrpc/com.atproto.sync.getRepoStatus",
        "/xrpc/com.atproto.sync.getLatestCommit",
        "/xrpc/com.atproto.sync.getRepo",
        "/xrpc/com.atproto.sync.listHosts",
        "/xrpc/com.atproto.sync.getHostStatus",
        "/xrpc/com.atproto.sync.requestCrawl",
        "/xrpc/com.atproto.sync.notifyOfUpdate",
        "/xrpc/com.atproto.sync.listReposByCollection",
        "/xrpc/_health",
        "$R/_health",
        "/admin/pds/list",
        "/admin/pds/requestCrawl",
        "/admin/pds/changeLimits",
        "/admin/pds/block",
        "/admin/pds/unblock",
        "/admin/subs/getUpstreamConns",
        "/admin/subs/killUpstream",
        "/admin/subs/getEnabled",
        "/admin/subs/setEnabled",
        "/admin/subs/perDayLimit",
        "/admin/subs/setPerDayLimit",
        "/admin/subs/listDomainBans",
        "/admin/subs/banDomain",
        "/admin/subs/unbanDomain",
        "/admin/repo/takeDown",
        "/admin/repo/reverseTakedown",
        "/admin/repo/takedowns",
        "/admin/consumers/list",
        "/admin/collections/list",
        "/admin/collections/backfill",
    ];
    for r in routes {
        assert!(
            text.lines()
                .any(|l| (l.starts_with("curl") || l.starts_with("websocat")) && l.contains(r)),
            "README has no curl example for {r}"
        );
    }
}
