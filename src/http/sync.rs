//! The public routes: health, the `com.atproto.sync.*` queries (spec §7: parameters, limits,
//! error names) and requestCrawl.

use super::routes::Ctx;
use super::server::{Req, Resp, empty_ok, internal, json_response, with_header, xrpc_error};
use crate::ingest::accounts::{Account, SUSPENDED, TAKENDOWN, THROTTLED};
use crate::ingest::crawl::parse_hostname;
use crate::store::HostRow;
use serde_json::{Value, json};
use tiny_http::Response;

pub(crate) fn banner_text() -> Resp {
    let banner = format!(
        "rlay {}: an AT Protocol relay\n\nfirehose: /xrpc/com.atproto.sync.subscribeRepos\nAPI: /xrpc/com.atproto.sync.*  health: /xrpc/_health\n",
        env!("CARGO_PKG_VERSION")
    );
    with_header(
        Response::from_data(banner.into_bytes()),
        "Content-Type",
        "text/plain; charset=utf-8",
    )
}

pub(crate) fn banner(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(banner_text())
}

/// Only reached by a request that is not a WebSocket upgrade (the front takes those).
pub(crate) fn upgrade_required(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Err(xrpc_error(
        426,
        "InvalidRequest",
        "subscribeRepos needs a WebSocket upgrade",
    ))
}

pub(crate) fn health(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    if let Some(e) = ctx.hub.log().write_error() {
        return Ok(json_response(
            503,
            &json!({"status": "error", "msg": format!("the event log cannot be written ({e}); events are held back until it can: check the disk")}),
        ));
    }
    Ok(match ctx.store.ping() {
        Ok(()) => json_response(200, &json!({"status": "ok"})),
        Err(e) => json_response(
            500,
            &json!({"status": "error", "msg": format!("can't connect to database: {e}")}),
        ),
    })
}

/// The error a caller gets for an account that exists but may not be served.
fn inactive_error(a: &Account) -> Option<Resp> {
    let (active, status) = a.combined();
    if active {
        return None;
    }
    let status = status.unwrap_or_default();
    let did = &a.did;
    Some(match status.as_str() {
        TAKENDOWN => xrpc_error(403, "RepoTakendown", &format!("repo {did} is taken down")),
        SUSPENDED => xrpc_error(403, "RepoSuspended", &format!("repo {did} is suspended")),
        "deactivated" => xrpc_error(
            403,
            "RepoDeactivated",
            &format!("repo {did} is deactivated"),
        ),
        "deleted" => xrpc_error(404, "RepoNotFound", &format!("repo {did} was deleted")),
        THROTTLED => xrpc_error(
            403,
            "RepoInactive",
            &format!("repo {did} is throttled (its host is over its account limit)"),
        ),
        other => xrpc_error(
            403,
            "RepoInactive",
            &format!("repo {did} is inactive ({other})"),
        ),
    })
}

/// A host as `listHosts` and `getHostStatus` show it: live state where the host is loaded.
fn host_json(ctx: &Ctx, row: &HostRow) -> Value {
    let live = ctx.hosts.get(row.id);
    let seq = live
        .as_ref()
        .map_or(row.last_seq, |h| h.safe_cursor().max(row.last_seq.min(0)));
    let count = live
        .as_ref()
        .map_or(row.account_count, |h| h.account_count());
    let status = live.as_ref().map_or(row.status, |h| h.status());
    json!({"hostname": row.hostname, "seq": seq, "accountCount": count, "status": status.as_str()})
}

fn account(ctx: &Ctx, did: &str) -> Result<Option<Account>, Resp> {
    ctx.pipeline
        .accounts()
        .lookup(did)
        .map_err(|e| internal(format!("database error: {e}")))
}

fn known_account(ctx: &Ctx, did: &str) -> Result<Account, Resp> {
    account(ctx, did)?.ok_or_else(|| xrpc_error(404, "RepoNotFound", &format!("no repo for {did}")))
}

pub(crate) fn list_repos(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let limit = r.limit(500, 1000)?;
    let mut scanned_to = r.int_cursor()?;
    let mut repos = Vec::new();
    let mut last = scanned_to;
    // Page the store, skipping accounts without a known commit, until the page is full.
    'pages: loop {
        let rows = ctx
            .store
            .list_accounts(scanned_to, limit)
            .map_err(internal)?;
        let Some(end) = rows.last().map(|r| r.uid) else {
            break;
        };
        for row in rows {
            scanned_to = row.uid;
            let a = ctx
                .pipeline
                .accounts()
                .peek(&row.did)
                .flatten()
                .unwrap_or_else(|| Account::from_row(row));
            let Some(repo) = &a.repo else { continue };
            let (active, status) = a.combined();
            let mut v = json!({"did": a.did, "head": repo.commit.to_string(), "rev": repo.rev, "active": active});
            if let Some(s) = status {
                v["status"] = json!(s);
            }
            repos.push(v);
            last = a.uid;
            if repos.len() >= limit {
                break 'pages;
            }
        }
        scanned_to = scanned_to.max(end);
    }
    let full = repos.len() >= limit;
    let mut body = json!({"repos": repos});
    if full {
        body["cursor"] = json!(last.to_string());
    }
    Ok(json_response(200, &body))
}

pub(crate) fn get_repo_status(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let did = r.did_param()?;
    let a = known_account(ctx, &did)?;
    let (active, status) = a.combined();
    let mut v = json!({"did": did, "active": active});
    if let Some(s) = status {
        v["status"] = json!(s);
    }
    if active && let Some(repo) = &a.repo {
        v["rev"] = json!(repo.rev);
    }
    Ok(json_response(200, &v))
}

pub(crate) fn get_latest_commit(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let did = r.did_param()?;
    let a = known_account(ctx, &did)?;
    if let Some(e) = inactive_error(&a) {
        return Err(e);
    }
    let repo = a
        .repo
        .ok_or_else(|| xrpc_error(404, "RepoNotFound", &format!("no commit of {did} seen yet")))?;
    Ok(json_response(
        200,
        &json!({"cid": repo.commit.to_string(), "rev": repo.rev}),
    ))
}

/// Checks the account first (inactive accounts get their error), then redirects to its PDS: the
/// host it is verified on, or, for an account not seen yet, a cached identity. No lookup runs
/// on an API worker, so a flood of getRepo calls for made-up DIDs costs nothing outbound.
pub(crate) fn get_repo(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let did = r.did_param()?;
    if let Some(since) = r.param("since")
        && !crate::proto::syntax::is_valid_tid(since)
    {
        return Err(xrpc_error(400, "InvalidRequest", "since must be a TID"));
    }
    let known = account(ctx, &did)?;
    if let Some(e) = known.as_ref().and_then(inactive_error) {
        return Err(e);
    }
    let pds = match known.and_then(|a| ctx.hosts.get(a.host_id)) {
        Some(h) => Some(format!(
            "{}://{}",
            if h.no_tls() { "http" } else { "https" },
            h.hostname()
        )),
        None => ctx
            .pipeline
            .resolver()
            .cached(&did)
            .and_then(|res| res.identity().and_then(|i| i.pds.clone())),
    };
    let pds = pds.ok_or_else(|| {
        xrpc_error(
            404,
            "RepoNotFound",
            &format!("{did} is not hosted on any PDS this relay crawls"),
        )
    })?;
    let location = format!("{pds}/xrpc/com.atproto.sync.getRepo?{}", r.raw_query);
    Ok(with_header(
        Response::from_data(Vec::new()).with_status_code(302),
        "Location",
        &location,
    ))
}

pub(crate) fn list_hosts(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let limit = r.limit(200, 1000)?;
    let after = r.int_cursor()?;
    let rows = ctx.store.list_hosts(after, limit).map_err(internal)?;
    let hosts: Vec<Value> = rows.iter().map(|h| host_json(ctx, h)).collect();
    let mut body = json!({"hosts": hosts});
    if rows.len() >= limit
        && let Some(l) = rows.last()
    {
        body["cursor"] = json!(l.id.to_string());
    }
    Ok(json_response(200, &body))
}

pub(crate) fn get_host_status(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let raw = r.required("hostname")?;
    let name = parse_hostname(raw, true, true)
        .map(|(h, _)| h)
        .unwrap_or_else(|_| raw.to_ascii_lowercase());
    let row = ctx
        .store
        .host_by_name(&name)
        .map_err(internal)?
        .ok_or_else(|| {
            xrpc_error(
                404,
                "HostNotFound",
                &format!("{name} is not known to this relay"),
            )
        })?;
    Ok(json_response(200, &host_json(ctx, &row)))
}

/// Public and admin requestCrawl share the checks; admin skips the public limits and waits for
/// the host check, the public route answers at once (see `CrawlQueue`).
pub(crate) fn crawl(ctx: &Ctx, r: &Req, admin: bool) -> Result<Resp, Resp> {
    let body = r.json()?;
    let hostname = body
        .get("hostname")
        .and_then(Value::as_str)
        .ok_or_else(|| xrpc_error(400, "InvalidRequest", "body must be {\"hostname\": ...}"))?;
    let r = if admin {
        ctx.crawler.request_crawl(hostname, true).map(|_| ())
    } else {
        ctx.crawl_queue.submit(hostname, r.remote.map(|a| a.ip()))
    };
    match r {
        Ok(()) if admin => Ok(super::server::success()),
        Ok(()) => Ok(empty_ok()),
        Err(e) => {
            let (status, name) = e.xrpc();
            Err(xrpc_error(status, name, &e.to_string()))
        }
    }
}

pub(crate) fn request_crawl(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    crawl(ctx, r, false)
}
