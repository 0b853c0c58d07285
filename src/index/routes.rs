//! The index's HTTP routes: the public `listReposByCollection`, and admin routes to list
//! collections and drive the backfill.

use super::backfill::{DONE, FAILED, PENDING, RUNNING};
use crate::http::routes::Ctx;
use crate::http::server::{Req, Resp, internal, json_response, xrpc_error};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

/// Most index keys one request reads while skipping inactive accounts.
const MIN_SCAN_BUDGET: usize = 20_000;

pub(crate) fn list_repos_by_collection(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let collection = r.param("collection").unwrap_or("");
    if !crate::proto::syntax::is_valid_nsid(collection) {
        return Err(xrpc_error(
            400,
            "BadRequest",
            "collection must be a valid NSID, like app.bsky.feed.post",
        ));
    }
    let limit = r.limit(500, 2000)?;
    let after = match r.param("cursor") {
        None | Some("") => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|d| crate::proto::syntax::is_valid_did(d))
                .ok_or_else(|| {
                    xrpc_error(400, "InvalidRequest", "cursor is not one this relay issued")
                })?,
        ),
    };
    // Accounts the relay knows to be inactive are left out (looked up a page at a time);
    // DIDs known only from a backfill are listed, as the upstream listed them. A run of
    // inactive accounts is skipped, but at most `scan_budget` keys per request.
    let scan_budget = (limit * 10).max(MIN_SCAN_BUDGET);
    let mut dids: Vec<String> = Vec::with_capacity(limit);
    let mut scanned = 0;
    let mut from = after;
    let next = loop {
        let want = limit - dids.len();
        let page = ctx
            .index
            .db
            .page(collection, from.as_deref(), want)
            .map_err(internal)?;
        scanned += page.dids.len();
        let known = ctx
            .pipeline
            .accounts()
            .lookup_many(&page.dids)
            .map_err(internal)?;
        dids.extend(
            page.dids
                .into_iter()
                .filter(|d| known.get(d).is_none_or(|a| a.combined().0)),
        );
        match page.next {
            Some(n) if dids.len() < limit && scanned < scan_budget => from = Some(n),
            other => break other,
        }
    };
    let repos: Vec<_> = dids.iter().map(|d| json!({ "did": d })).collect();
    let mut body = json!({ "repos": repos });
    if let Some(next) = next {
        body["cursor"] = json!(URL_SAFE_NO_PAD.encode(next.as_bytes()));
    }
    Ok(json_response(200, &body))
}

pub(crate) fn list_collections(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let counts = ctx
        .index
        .counts(r.param("fresh") == Some("true"))
        .map_err(internal)?;
    Ok(json_response(
        200,
        &json!({ "collections": *counts, "count": counts.len() }),
    ))
}

pub(crate) fn backfill_status(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let rows = ctx.store.backfill_list().map_err(internal)?;
    let count = |s: &str| rows.iter().filter(|r| r.state == s).count();
    let list: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "collection": r.collection, "state": r.state, "imported": r.imported,
                "cursor": r.cursor,
                "updatedAt": crate::logging::format_datetime_ms(r.updated_at),
            })
        })
        .collect();
    let b = &ctx.index.backfill;
    Ok(json_response(
        200,
        &json!({
            "running": b.is_running(),
            "host": b.host(),
            "lastError": b.last_error(),
            "pending": count(PENDING), "inProgress": count(RUNNING),
            "done": count(DONE), "failed": count(FAILED),
            "imported": rows.iter().map(|r| r.imported).sum::<i64>(),
            "collections": list,
        }),
    ))
}

pub(crate) fn backfill_trigger(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let restart = if r.body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        r.json()?["restart"].as_bool().unwrap_or(false)
    };
    let queued = ctx
        .index
        .backfill
        .trigger(restart)
        .map_err(|e| xrpc_error(500, "BackfillFailed", &e.to_string()))?;
    Ok(json_response(
        200,
        &json!({ "queued": queued, "running": ctx.index.backfill.is_running(), "host": ctx.index.backfill.host() }),
    ))
}
