//! Reading another relay's `listReposByCollection` (backfill and audit).

use std::time::Duration;

/// One page of an upstream's answer.
pub struct RemotePage {
    pub(crate) dids: Vec<String>,
    pub(crate) cursor: Option<String>,
    /// Entries that were not valid DIDs (skipped).
    pub(crate) invalid: usize,
}

pub fn agent() -> ureq::Agent {
    // Operator-chosen upstream: private addresses allowed (a relay next door, or a test).
    crate::util::net::http_agent(true, Duration::from_secs(60))
}

/// Fetches one page of `collection` from `base` (`https://host`).
pub fn fetch_page(
    agent: &ureq::Agent,
    base: &str,
    collection: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<RemotePage, String> {
    let mut url = format!(
        "{base}/xrpc/com.atproto.sync.listReposByCollection?collection={}&limit={limit}",
        crate::util::percent_encode(collection)
    );
    if let Some(c) = cursor {
        url.push_str("&cursor=");
        url.push_str(&crate::util::percent_encode(c));
    }
    let mut r = agent
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("GET {url}: HTTP {status}: {text}"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
    let repos = v["repos"]
        .as_array()
        .ok_or_else(|| format!("GET {url}: no `repos` array in the answer"))?;
    let mut dids = Vec::with_capacity(repos.len());
    let mut invalid = 0;
    for r in repos {
        match r["did"].as_str() {
            Some(d) if crate::proto::syntax::is_valid_did(d) => dids.push(d.to_owned()),
            _ => invalid += 1,
        }
    }
    let cursor = v["cursor"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok(RemotePage {
        dids,
        cursor,
        invalid,
    })
}

/// Every DID of `collection` at `base`, page by page (the audit).
pub fn fetch_all(agent: &ureq::Agent, base: &str, collection: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = fetch_page(agent, base, collection, cursor.as_deref(), 1000)?;
        out.extend(p.dids);
        match p.cursor {
            // An upstream that hands back the cursor it was given has nothing more.
            Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
            _ => return Ok(out),
        }
    }
}
