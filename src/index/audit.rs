//! `rlay audit-collections`: compares what this relay answers for `listReposByCollection` with
//! what another relay answers, for a sample of collections, and reports every difference.

use super::remote;
use std::collections::BTreeSet;

pub struct CollectionDiff {
    pub(crate) collection: String,
    pub(crate) ours: usize,
    pub(crate) theirs: usize,
    pub(crate) only_ours: Vec<String>,
    pub(crate) only_theirs: Vec<String>,
}

pub struct Report {
    pub(crate) total_collections: usize,
    pub(crate) diffs: Vec<CollectionDiff>,
}

impl Report {
    pub fn differences(&self) -> usize {
        self.diffs
            .iter()
            .map(|d| d.only_ours.len() + d.only_theirs.len())
            .sum()
    }

    /// The human-readable report: one line per collection, then each differing DID.
    pub fn render(&self, show: usize) -> String {
        let mut s = format!(
            "sampled {} of {} collections\n",
            self.diffs.len(),
            self.total_collections
        );
        for d in &self.diffs {
            s.push_str(&format!(
                "{}: ours {} theirs {} only_ours {} only_theirs {}\n",
                d.collection,
                d.ours,
                d.theirs,
                d.only_ours.len(),
                d.only_theirs.len()
            ));
            for (label, list) in [("only ours", &d.only_ours), ("only theirs", &d.only_theirs)] {
                for did in list.iter().take(show) {
                    s.push_str(&format!("  {label}: {did}\n"));
                }
                if list.len() > show {
                    s.push_str(&format!("  {label}: ... {} more\n", list.len() - show));
                }
            }
        }
        s.push_str(&format!("differences: {}\n", self.differences()));
        s
    }
}

/// This relay's collections, through its admin API.
fn our_collections(
    agent: &ureq::Agent,
    relay: &str,
    password: &str,
) -> Result<Vec<String>, String> {
    let url = format!("{relay}/admin/collections/list?fresh=true");
    let mut r = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {password}"))
        .call()
        .map_err(|e| format!("GET {url}: {e} (is `rlay serve` running there? set --relay)"))?;
    let status = r.status().as_u16();
    if status == 401 {
        return Err(format!(
            "GET {url}: 401, the admin password was refused (set RELAY_ADMIN_PASSWORD to the relay's)"
        ));
    }
    let v: serde_json::Value = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_json()
        .map_err(|e| format!("GET {url}: HTTP {status}, unreadable answer: {e}"))?;
    let map = v["collections"]
        .as_object()
        .ok_or_else(|| format!("GET {url}: HTTP {status}, no `collections` in the answer"))?;
    Ok(map.keys().cloned().collect())
}

/// Picks `n` of `all`, spread by a seeded shuffle (every collection when `n` covers them all).
fn sample(mut all: Vec<String>, n: usize, seed: u64) -> Vec<String> {
    if n >= all.len() {
        return all;
    }
    let mut x = seed | 1;
    for i in (1..all.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    all.truncate(n);
    all.sort();
    all
}

pub fn run(
    relay: &str,
    against: &str,
    n: usize,
    password: &str,
    seed: u64,
) -> Result<Report, String> {
    let agent = remote::agent();
    let all = our_collections(&agent, relay, password)?;
    let total = all.len();
    let mut diffs = Vec::new();
    for c in sample(all, n, seed) {
        let ours: BTreeSet<String> = remote::fetch_all(&agent, relay, &c)?.into_iter().collect();
        let theirs: BTreeSet<String> = remote::fetch_all(&agent, against, &c)?
            .into_iter()
            .collect();
        diffs.push(CollectionDiff {
            only_ours: ours.difference(&theirs).cloned().collect(),
            only_theirs: theirs.difference(&ours).cloned().collect(),
            ours: ours.len(),
            theirs: theirs.len(),
            collection: c,
        });
    }
    Ok(Report {
        total_collections: total,
        diffs,
    })
}
