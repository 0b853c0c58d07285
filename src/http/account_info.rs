//! `GET /admin/repo/info`: one account as the relay sees it (for the dashboard's account view
//! and for curl), looked up by DID or by a handle the relay has seen in a DID document.

use super::routes::Ctx;
use super::server::{Req, Resp, internal, json_response, normalized_did, xrpc_error};
use crate::proto::syntax::tid_timestamp_us;
use serde_json::json;

pub(crate) fn repo_info(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let q = r
        .param("did")
        .or_else(|| r.param("handle"))
        .or_else(|| r.param("q"))
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .ok_or_else(|| xrpc_error(400, "InvalidRequest", "did or handle is required"))?;
    let resolver = ctx.pipeline.resolver();
    let did = if q.starts_with("did:") {
        normalized_did(q)?
    } else {
        let handle = q.trim_start_matches('@').to_ascii_lowercase();
        resolver.find_handle(&handle).ok_or_else(|| {
            xrpc_error(
                404,
                "HandleNotFound",
                &format!("no DID document the relay holds declares {handle}; look the account up by its DID"),
            )
        })?
    };
    let account = ctx
        .pipeline
        .accounts()
        .lookup(&did)
        .map_err(|e| internal(format!("database error: {e}")))?
        .ok_or_else(|| xrpc_error(404, "RepoNotFound", &format!("no account {did}")))?;
    let (active, status) = account.combined();
    let identity = resolver.peek(&did);
    let ident = identity.as_ref().and_then(|r| r.identity());
    let host = ctx.hosts.get(account.host_id);
    let repo = account.repo.as_ref();
    Ok(json_response(
        200,
        &json!({
            "did": did,
            "handle": ident.and_then(|i| i.handle.clone()),
            "pds": ident.and_then(|i| i.pds.clone()),
            "host": host.as_ref().map(|h| h.hostname().to_owned()),
            "active": active,
            "status": status,
            "local_status": account.local,
            "upstream_status": account.upstream,
            "rev": repo.map(|r| r.rev.clone()),
            "commit": repo.map(|r| r.commit.to_string()),
            "data": repo.map(|r| r.data.to_string()),
            "last_commit_at": repo
                .and_then(|r| tid_timestamp_us(&r.rev))
                .map(|us| crate::logging::format_datetime_ms(us / 1000)),
            "first_seen": crate::logging::format_datetime_ms(account.created_at),
        }),
    ))
}
