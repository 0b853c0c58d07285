//! The tiny_http side of the API port: every request except the firehose upgrade.
//!
//! Public routes follow `spec/atproto-sync.md` §7 (parameters, limits, error names); admin
//! routes follow indigo's paths, parameters and response shapes so existing tools keep working.

use super::auth::AdminAuth;
use super::front::{MAX_BODY, Peers, percent_decode, server_header};
use crate::ingest::accounts::{Account, SUSPENDED, TAKENDOWN, THROTTLED};
use crate::ingest::crawl::{Crawler, parse_hostname};
use crate::ingest::hosts::Hosts;
use crate::ingest::pipeline::Pipeline;
use crate::store::{HostStatus, Store};
use crate::stream::firehose::Hub;
use crate::syntax::{is_normalized_did, is_valid_did};
use serde_json::{Value, json};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response, Server};

pub type Resp = Response<io::Cursor<Vec<u8>>>;

/// What the routes need from the running relay.
pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub pipeline: Arc<Pipeline>,
    pub hosts: Arc<Hosts>,
    pub crawler: Arc<Crawler>,
    pub admin: AdminAuth,
    /// Extra routes (the collection index) tried before "not found".
    pub extensions: Vec<Arc<dyn Extension>>,
}

/// A set of routes living in another module.
pub trait Extension: Send + Sync {
    /// Handles the request if it is one of this extension's routes.
    fn handle(&self, req: &Req, ctx: &Ctx) -> Option<Resp>;
}

/// Shared context for request handlers.
pub struct Api {
    pub peers: Arc<Peers>,
    pub ctx: Option<Arc<Ctx>>,
}

/// Adds a header, keeping only printable ASCII in the value (a bad header is left out rather
/// than failing the response).
fn with_header(resp: Resp, name: &str, value: &str) -> Resp {
    let clean: String = value
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    match Header::from_bytes(name.as_bytes(), clean.as_bytes()) {
        Ok(h) => resp.with_header(h),
        Err(()) => resp,
    }
}

pub fn json_response(status: u16, body: &Value) -> Resp {
    with_header(
        Response::from_data(body.to_string().into_bytes()).with_status_code(status),
        "Content-Type",
        "application/json; charset=utf-8",
    )
}

pub fn xrpc_error(status: u16, error: &str, message: &str) -> Resp {
    json_response(status, &json!({ "error": error, "message": message }))
}

fn empty_ok() -> Resp {
    Response::from_data(Vec::new()).with_status_code(200)
}

fn success() -> Resp {
    json_response(200, &json!({"success": "true"}))
}

/// A parsed request.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub authorization: Option<String>,
    pub remote: Option<SocketAddr>,
}

impl Req {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value, Resp> {
        serde_json::from_slice(&self.body).map_err(|e| {
            xrpc_error(
                400,
                "InvalidRequest",
                &format!("request body is not JSON: {e}"),
            )
        })
    }

    /// `limit` within `[1, max]`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, Resp> {
        match self.param("limit") {
            None => Ok(default),
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(xrpc_error(
                    400,
                    "InvalidRequest",
                    &format!("limit must be an integer from 1 to {max}"),
                )),
            },
        }
    }

    fn did_param(&self) -> Result<String, Resp> {
        let did = self
            .param("did")
            .ok_or_else(|| xrpc_error(400, "InvalidRequest", "did is required"))?;
        if !is_valid_did(did) {
            return Err(xrpc_error(400, "InvalidRequest", "did is not a valid DID"));
        }
        Ok(crate::syntax::normalize_did(did))
    }

    /// An integer cursor (ids and uids); absent means from the start.
    fn int_cursor(&self) -> Result<i64, Resp> {
        match self.param("cursor") {
            None | Some("") => Ok(0),
            Some(c) => c
                .parse::<i64>()
                .map_err(|_| xrpc_error(400, "InvalidRequest", "cursor is not valid")),
        }
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The route template used as a metrics label (bounded cardinality).
fn route_label(path: &str) -> &'static str {
    const KNOWN: [&str; 14] = [
        "/",
        "/_health",
        "/xrpc/_health",
        "/xrpc/com.atproto.sync.listRepos",
        "/xrpc/com.atproto.sync.getRepoStatus",
        "/xrpc/com.atproto.sync.getLatestCommit",
        "/xrpc/com.atproto.sync.getRepo",
        "/xrpc/com.atproto.sync.listHosts",
        "/xrpc/com.atproto.sync.getHostStatus",
        "/xrpc/com.atproto.sync.requestCrawl",
        "/xrpc/com.atproto.sync.notifyOfUpdate",
        "/xrpc/com.atproto.sync.listReposByCollection",
        "/admin",
        "other",
    ];
    if path.starts_with("/admin/") {
        return "/admin";
    }
    KNOWN
        .iter()
        .find(|k| **k == path)
        .copied()
        .unwrap_or("other")
}

/// The error a caller gets for an account that exists but may not be served.
fn inactive_error(a: &Account) -> Option<Resp> {
    let (active, status) = a.combined();
    if active {
        return None;
    }
    let status = status.unwrap_or_default();
    Some(match status.as_str() {
        TAKENDOWN => xrpc_error(
            403,
            "RepoTakendown",
            &format!("repo {} is taken down", a.did),
        ),
        SUSPENDED => xrpc_error(
            403,
            "RepoSuspended",
            &format!("repo {} is suspended", a.did),
        ),
        "deactivated" => xrpc_error(
            403,
            "RepoDeactivated",
            &format!("repo {} is deactivated", a.did),
        ),
        "deleted" => xrpc_error(404, "RepoNotFound", &format!("repo {} was deleted", a.did)),
        THROTTLED => xrpc_error(
            403,
            "RepoInactive",
            &format!(
                "repo {} is throttled (its host is over its account limit)",
                a.did
            ),
        ),
        other => xrpc_error(
            403,
            "RepoInactive",
            &format!("repo {} is inactive ({other})", a.did),
        ),
    })
}

fn host_json(ctx: &Ctx, row: &crate::store::HostRow) -> Value {
    let live = ctx.hosts.get(row.id);
    let seq = live
        .as_ref()
        .map_or(row.last_seq, |h| h.safe_cursor().max(row.last_seq.min(0)));
    let count = live.as_ref().map_or(row.account_count, |h| {
        h.account_count.load(Ordering::Relaxed)
    });
    let status = live.as_ref().map_or(row.status, |h| h.status());
    json!({"hostname": row.hostname, "seq": seq, "accountCount": count, "status": status.as_str()})
}

impl Ctx {
    fn account(&self, did: &str) -> Result<Option<Account>, Resp> {
        self.pipeline
            .accounts
            .lookup(did)
            .map_err(|e| xrpc_error(500, "InternalServerError", &format!("database error: {e}")))
    }

    fn health(&self) -> Resp {
        match self.store.ping() {
            Ok(()) => json_response(200, &json!({"status": "ok"})),
            Err(e) => json_response(
                500,
                &json!({"status": "error", "msg": format!("can't connect to database: {e}")}),
            ),
        }
    }

    fn list_repos(&self, r: &Req) -> Result<Resp, Resp> {
        let limit = r.limit(500, 1000)?;
        let after = r.int_cursor()?;
        let mut repos = Vec::new();
        let mut last = after;
        let mut scanned_to = after;
        // Page the store, skipping accounts without a known commit, until the page is full.
        'pages: loop {
            let rows = self
                .store
                .list_accounts(scanned_to, limit)
                .map_err(|e| xrpc_error(500, "InternalServerError", &e.to_string()))?;
            let Some(end) = rows.last().map(|r| r.uid) else {
                break;
            };
            for row in rows {
                scanned_to = row.uid;
                let a = self
                    .pipeline
                    .accounts
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
        let mut body = json!({"repos": repos});
        if repos_full(&body, limit) {
            body["cursor"] = json!(last.to_string());
        }
        Ok(json_response(200, &body))
    }

    fn get_repo_status(&self, r: &Req) -> Result<Resp, Resp> {
        let did = r.did_param()?;
        let a = self
            .account(&did)?
            .ok_or_else(|| xrpc_error(404, "RepoNotFound", &format!("no repo for {did}")))?;
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

    fn get_latest_commit(&self, r: &Req) -> Result<Resp, Resp> {
        let did = r.did_param()?;
        let a = self
            .account(&did)?
            .ok_or_else(|| xrpc_error(404, "RepoNotFound", &format!("no repo for {did}")))?;
        if let Some(e) = inactive_error(&a) {
            return Err(e);
        }
        let repo = a.repo.ok_or_else(|| {
            xrpc_error(404, "RepoNotFound", &format!("no commit of {did} seen yet"))
        })?;
        Ok(json_response(
            200,
            &json!({"cid": repo.commit.to_string(), "rev": repo.rev}),
        ))
    }

    /// Checks the account first (inactive accounts get their error), then redirects to its PDS.
    fn get_repo(&self, r: &Req, raw_query: &str) -> Result<Resp, Resp> {
        let did = r.did_param()?;
        if let Some(since) = r.param("since")
            && !crate::syntax::is_valid_tid(since)
        {
            return Err(xrpc_error(400, "InvalidRequest", "since must be a TID"));
        }
        if let Some(a) = self.account(&did)?
            && let Some(e) = inactive_error(&a)
        {
            return Err(e);
        }
        let res = self
            .pipeline
            .resolver
            .resolve_blocking(&did, Duration::from_secs(10));
        let pds = res.identity().and_then(|i| i.pds.clone()).ok_or_else(|| {
            xrpc_error(
                404,
                "RepoNotFound",
                &format!("could not resolve a PDS for {did}"),
            )
        })?;
        let location = format!("{pds}/xrpc/com.atproto.sync.getRepo?{raw_query}");
        Ok(with_header(
            Response::from_data(Vec::new()).with_status_code(302),
            "Location",
            &location,
        ))
    }

    fn list_hosts(&self, r: &Req) -> Result<Resp, Resp> {
        let limit = r.limit(200, 1000)?;
        let after = r.int_cursor()?;
        let rows = self
            .store
            .list_hosts(after, limit)
            .map_err(|e| xrpc_error(500, "InternalServerError", &e.to_string()))?;
        let hosts: Vec<Value> = rows.iter().map(|h| host_json(self, h)).collect();
        let mut body = json!({"hosts": hosts});
        if rows.len() >= limit
            && let Some(l) = rows.last()
        {
            body["cursor"] = json!(l.id.to_string());
        }
        Ok(json_response(200, &body))
    }

    fn get_host_status(&self, r: &Req) -> Result<Resp, Resp> {
        let raw = r
            .param("hostname")
            .ok_or_else(|| xrpc_error(400, "InvalidRequest", "hostname is required"))?;
        let name = parse_hostname(raw, true, true)
            .map(|(h, _)| h)
            .unwrap_or_else(|_| raw.to_ascii_lowercase());
        let row = self
            .store
            .host_by_name(&name)
            .map_err(|e| xrpc_error(500, "InternalServerError", &e.to_string()))?
            .ok_or_else(|| {
                xrpc_error(
                    404,
                    "HostNotFound",
                    &format!("{name} is not known to this relay"),
                )
            })?;
        Ok(json_response(200, &host_json(self, &row)))
    }

    fn request_crawl(&self, r: &Req, admin: bool) -> Result<Resp, Resp> {
        let body = r.json()?;
        let hostname = body
            .get("hostname")
            .and_then(Value::as_str)
            .ok_or_else(|| xrpc_error(400, "InvalidRequest", "body must be {\"hostname\": ...}"))?;
        match self.crawler.request_crawl(hostname, admin) {
            Ok(_) => Ok(if admin { success() } else { empty_ok() }),
            Err(e) => {
                let (status, name) = e.xrpc();
                Err(xrpc_error(status, name, &e.to_string()))
            }
        }
    }

    fn admin(&self, r: &Req) -> Result<Resp, Resp> {
        let get = r.method == Method::Get;
        let store_err =
            |e: crate::store::StoreError| xrpc_error(500, "InternalServerError", &e.to_string());
        let host_param = || {
            r.param("host")
                .map(str::to_owned)
                .ok_or_else(|| xrpc_error(400, "InvalidRequest", "host is required"))
        };
        let bool_param = |name: &str| -> Result<bool, Resp> {
            match r.param(name) {
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                _ => Err(xrpc_error(
                    400,
                    "InvalidRequest",
                    &format!("{name} must be true or false"),
                )),
            }
        };
        let body_field = |keys: &[&str]| -> Result<String, Resp> {
            let v = r.json()?;
            let obj = v
                .as_object()
                .ok_or_else(|| xrpc_error(400, "InvalidRequest", "body must be a JSON object"))?;
            obj.iter()
                .find(|(k, _)| keys.iter().any(|want| k.eq_ignore_ascii_case(want)))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    xrpc_error(400, "InvalidRequest", &format!("body needs {}", keys[0]))
                })
        };
        match (r.path.as_str(), get) {
            ("/admin/subs/getUpstreamConns", true) => {
                let conns: Vec<String> = self
                    .hosts
                    .all()
                    .into_iter()
                    .filter(|h| h.connected.load(Ordering::Relaxed))
                    .map(|h| h.hostname.clone())
                    .collect();
                Ok(json_response(200, &json!(conns)))
            }
            ("/admin/subs/killUpstream", false) => {
                let host = host_param()?;
                let block = r.param("block") == Some("true");
                match self.crawler.kill(&host, block).map_err(store_err)? {
                    true => Ok(success()),
                    false => Err(xrpc_error(
                        400,
                        "InvalidRequest",
                        &format!("{host} is not connected"),
                    )),
                }
            }
            ("/admin/subs/getEnabled", true) => Ok(json_response(
                200,
                &json!({"enabled": self.crawler.enabled.load(Ordering::Relaxed)}),
            )),
            ("/admin/subs/setEnabled", false) => {
                self.crawler
                    .enabled
                    .store(bool_param("enabled")?, Ordering::Relaxed);
                Ok(success())
            }
            ("/admin/subs/perDayLimit", true) => Ok(json_response(
                200,
                &json!({"limit": self.crawler.per_day_limit.load(Ordering::Relaxed)}),
            )),
            ("/admin/subs/setPerDayLimit", false) => {
                let n = r
                    .param("limit")
                    .and_then(|l| l.parse::<u32>().ok())
                    .ok_or_else(|| {
                        xrpc_error(
                            400,
                            "InvalidRequest",
                            "limit must be a non-negative integer",
                        )
                    })?;
                self.crawler.per_day_limit.store(n, Ordering::Relaxed);
                Ok(success())
            }
            ("/admin/subs/listDomainBans", true) => Ok(json_response(
                200,
                &json!({"banned_domains": self.crawler.domain_bans()}),
            )),
            ("/admin/subs/banDomain", false) => {
                let d = body_field(&["Domain"])?;
                if d.trim().is_empty() {
                    return Err(xrpc_error(400, "InvalidRequest", "Domain is empty"));
                }
                self.crawler.ban_domain(&d).map_err(store_err)?;
                Ok(success())
            }
            ("/admin/subs/unbanDomain", false) => {
                let d = body_field(&["Domain"])?;
                self.crawler.unban_domain(&d).map_err(store_err)?;
                Ok(success())
            }
            ("/admin/repo/takedowns", true) => {
                let after = r.int_cursor()?;
                let rows = self
                    .store
                    .list_accounts_by_status(TAKENDOWN, None, after, 500)
                    .map_err(store_err)?;
                let mut v = json!({"dids": rows.iter().map(|a| a.did.clone()).collect::<Vec<_>>()});
                if rows.len() >= 500
                    && let Some(l) = rows.last()
                {
                    v["cursor"] = json!(l.uid.to_string());
                }
                Ok(json_response(200, &v))
            }
            ("/admin/repo/takeDown", false) | ("/admin/repo/reverseTakedown", false) => {
                let did = crate::syntax::normalize_did(&body_field(&["did"])?);
                if !is_valid_did(&did) || !is_normalized_did(&did) {
                    return Err(xrpc_error(400, "InvalidRequest", "did is not a valid DID"));
                }
                let ok = if r.path.ends_with("takeDown") {
                    self.pipeline.take_down(&did, TAKENDOWN)
                } else {
                    self.pipeline.reverse_take_down(&did)
                };
                if ok {
                    Ok(success())
                } else {
                    Err(xrpc_error(
                        404,
                        "RepoNotFound",
                        &format!("no account {did}"),
                    ))
                }
            }
            ("/admin/pds/list", true) => {
                let mut out = Vec::new();
                let mut after = 0;
                while out.len() < 10_000 {
                    let rows = self.store.list_hosts(after, 1000).map_err(store_err)?;
                    let Some(l) = rows.last() else { break };
                    after = l.id;
                    for row in rows {
                        let live = self.hosts.get(row.id);
                        let connected = live
                            .as_ref()
                            .is_some_and(|h| h.connected.load(Ordering::Relaxed));
                        let status = live.as_ref().map_or(row.status, |h| h.status());
                        let count = live.as_ref().map_or(row.account_count, |h| {
                            h.account_count.load(Ordering::Relaxed)
                        });
                        let rate = if connected {
                            json!({"Max": 0, "Window": 0})
                        } else {
                            json!(-1)
                        };
                        out.push(json!({
                            "ID": row.id, "CreatedAt": crate::logging::format_datetime_ms(row.created_at), "Host": row.hostname,
                            "SSL": !row.no_tls, "Cursor": live.as_ref().map_or(row.last_seq, |h| h.safe_cursor()),
                            "Registered": status == HostStatus::Active, "Blocked": status == HostStatus::Banned,
                            "CrawlRateLimit": 0, "RepoCount": count, "RepoLimit": live.as_ref().map_or(row.account_limit, |h| h.account_limit.load(Ordering::Relaxed)),
                            "HasActiveConnection": connected,
                            "EventsSeenSinceStartup": live.as_ref().map_or(0, |h| h.events_received.load(Ordering::Relaxed)),
                            "PerSecondEventRate": rate, "PerHourEventRate": rate, "PerDayEventRate": rate,
                            "UserCount": count, "AccountLimitAlertsSilenced": false, "AccountLimitAlertState": "ok", "AccountLimitAlertSentAt": Value::Null,
                            "Status": status.as_str(), "Trusted": row.trusted,
                        }));
                    }
                }
                Ok(json_response(200, &json!(out)))
            }
            ("/admin/pds/requestCrawl", false) => self.request_crawl(r, true),
            ("/admin/pds/changeLimits", false) => self.change_limits(r),
            (path @ ("/admin/pds/block" | "/admin/pds/unblock"), false) => {
                let host = host_param()?;
                let found = if path.ends_with("/block") {
                    self.crawler.block(&host)
                } else {
                    self.crawler.unblock(&host)
                };
                if found.map_err(store_err)? {
                    Ok(success())
                } else {
                    Err(xrpc_error(
                        404,
                        "HostNotFound",
                        &format!("{host} is not known"),
                    ))
                }
            }
            ("/admin/consumers/list", true) => {
                let list: Vec<Value> = self
                    .hub
                    .registry
                    .list()
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id, "remote_addr": c.remote_addr, "user_agent": c.user_agent,
                            "events_consumed": c.events_sent.load(Ordering::Relaxed),
                            "cursor": c.cursor.load(Ordering::Relaxed),
                            "bytes_sent": c.bytes_sent.load(Ordering::Relaxed),
                            "connected_at": crate::logging::format_datetime_ms(c.connected_at_ms),
                        })
                    })
                    .collect();
                Ok(json_response(200, &json!(list)))
            }
            _ => Err(xrpc_error(
                404,
                "NotFound",
                "no such admin route (check the method)",
            )),
        }
    }

    /// `changeLimits`: a raised limit releases throttled accounts, oldest first, each with an
    /// `#account` event.
    fn change_limits(&self, r: &Req) -> Result<Resp, Resp> {
        let body = r.json()?;
        let hostname = body
            .get("host")
            .and_then(Value::as_str)
            .ok_or_else(|| xrpc_error(400, "InvalidRequest", "body needs host"))?;
        let h = self
            .hosts
            .by_name(&hostname.to_ascii_lowercase())
            .ok_or_else(|| xrpc_error(404, "HostNotFound", &format!("{hostname} is not known")))?;
        if let Some(limit) = body.get("repo_limit").and_then(Value::as_i64) {
            if limit < 0 {
                return Err(xrpc_error(
                    400,
                    "InvalidRequest",
                    "repo_limit must not be negative",
                ));
            }
            let old = h.account_limit.swap(limit, Ordering::Relaxed);
            self.store
                .set_host_account_limit(h.id, limit)
                .map_err(|e| xrpc_error(500, "InternalServerError", &e.to_string()))?;
            if limit > old {
                // Throttled accounts, oldest first: the store's, plus any not yet flushed.
                let mut candidates: Vec<(i64, String)> = self
                    .pipeline
                    .accounts
                    .find_in_memory(|a| a.host_id == h.id && a.local == THROTTLED)
                    .into_iter()
                    .map(|a| (a.uid, a.did))
                    .collect();
                let mut after = 0;
                loop {
                    let rows = self
                        .store
                        .list_accounts_by_status(THROTTLED, Some(h.id), after, 1000)
                        .map_err(|e| xrpc_error(500, "InternalServerError", &e.to_string()))?;
                    let Some(l) = rows.last() else { break };
                    after = l.uid;
                    candidates.extend(rows.into_iter().map(|r| (r.uid, r.did)));
                    if candidates.len() as i64 >= limit - old + 1000 {
                        break;
                    }
                }
                candidates.sort();
                candidates.dedup();
                let mut released = 0;
                for (_, did) in candidates {
                    if released >= limit - old {
                        break;
                    }
                    if self.pipeline.unthrottle(&did) {
                        released += 1;
                    }
                }
                log::info!(
                    "admin: {hostname} account limit {old} -> {limit}; released {released} throttled account(s)"
                );
            }
        }
        Ok(success())
    }

    fn route(&self, r: &Req, raw_query: &str) -> Resp {
        let get = r.method == Method::Get;
        let post = r.method == Method::Post;
        let out: Result<Resp, Resp> = match (r.path.as_str(), get, post) {
            ("/_health" | "/xrpc/_health", true, _) => Ok(self.health()),
            ("/xrpc/com.atproto.sync.listRepos", true, _) => self.list_repos(r),
            ("/xrpc/com.atproto.sync.getRepoStatus", true, _) => self.get_repo_status(r),
            ("/xrpc/com.atproto.sync.getLatestCommit", true, _) => self.get_latest_commit(r),
            ("/xrpc/com.atproto.sync.getRepo", true, _) => self.get_repo(r, raw_query),
            ("/xrpc/com.atproto.sync.listHosts", true, _) => self.list_hosts(r),
            ("/xrpc/com.atproto.sync.getHostStatus", true, _) => self.get_host_status(r),
            (
                "/xrpc/com.atproto.sync.requestCrawl" | "/xrpc/com.atproto.sync.notifyOfUpdate",
                _,
                true,
            ) => self.request_crawl(r, false),
            (p, _, _) if p.starts_with("/admin/") => {
                if !self.admin.allows(r.authorization.as_deref()) {
                    let r = json_response(
                        401,
                        &json!({"error": "Unauthorized", "message": "admin routes need HTTP Basic auth as user admin, or a Bearer password"}),
                    );
                    return with_header(r, "WWW-Authenticate", "Basic realm=\"rlay admin\"");
                }
                if let Some(resp) = self.extensions.iter().find_map(|e| e.handle(r, self)) {
                    return resp;
                }
                self.admin(r)
            }
            (p, _, _) => {
                if let Some(resp) = self.extensions.iter().find_map(|e| e.handle(r, self)) {
                    return resp;
                }
                if p.starts_with("/xrpc/") {
                    Err(xrpc_error(
                        if get || post { 501 } else { 405 },
                        "MethodNotImplemented",
                        &format!("{p} is not implemented (check the method)"),
                    ))
                } else {
                    Err(xrpc_error(404, "NotFound", "no such route"))
                }
            }
        };
        out.unwrap_or_else(|e| e)
    }
}

fn repos_full(body: &Value, limit: usize) -> bool {
    body["repos"].as_array().is_some_and(|r| r.len() >= limit)
}

impl Api {
    fn handle(&self, mut req: Request) {
        let started = Instant::now();
        let url = req.url().to_owned();
        let (path, raw_query) = url.split_once('?').unwrap_or((url.as_str(), ""));
        let method = req.method().clone();
        let resp = if method == Method::Options {
            let r = with_header(
                Response::from_data(Vec::new()).with_status_code(204),
                "Access-Control-Allow-Methods",
                "GET, POST, OPTIONS",
            );
            with_header(
                r,
                "Access-Control-Allow-Headers",
                "Origin, Content-Type, Accept, Authorization",
            )
        } else if path == "/" {
            let banner = format!(
                "rlay {}: an AT Protocol relay\n\nfirehose: /xrpc/com.atproto.sync.subscribeRepos\nAPI: /xrpc/com.atproto.sync.*  health: /xrpc/_health\n",
                env!("CARGO_PKG_VERSION")
            );
            with_header(
                Response::from_data(banner.into_bytes()),
                "Content-Type",
                "text/plain; charset=utf-8",
            )
        } else if let Some(ctx) = &self.ctx {
            let mut body = Vec::new();
            let _ = req.as_reader().take(MAX_BODY as u64).read_to_end(&mut body);
            let r = Req {
                method: method.clone(),
                path: path.to_owned(),
                query: parse_query(raw_query),
                body,
                authorization: req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.as_str().to_owned()),
                remote: self.peers.lookup(req.remote_addr().copied()),
            };
            ctx.route(&r, raw_query)
        } else {
            xrpc_error(404, "NotFound", "no such route")
        };
        let status = resp.status_code().0;
        let label = route_label(path);
        metrics::counter!("http_requests_total", "code" => status.to_string(), "method" => method.as_str().to_owned(), "path" => label).increment(1);
        metrics::histogram!("http_request_duration_seconds", "path" => label)
            .record(started.elapsed().as_secs_f64());
        let resp = with_header(
            with_header(resp, "Server", &server_header()),
            "Access-Control-Allow-Origin",
            "*",
        );

        let _ = req.respond(resp);
    }
}

/// Starts tiny_http on a loopback port with `workers` handler threads; returns its address.
pub fn start(api: Arc<Api>, workers: usize) -> io::Result<SocketAddr> {
    let server = Server::http("127.0.0.1:0").map_err(|e| io::Error::other(e.to_string()))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("tiny_http is not on an IP address"))?;
    let server = Arc::new(server);
    for i in 0..workers.max(1) {
        let s = server.clone();
        let a = api.clone();
        std::thread::Builder::new()
            .name(format!("api-worker-{i}"))
            .stack_size(2 << 20)
            .spawn(move || {
                for req in s.incoming_requests() {
                    a.handle(req);
                }
            })?;
    }
    Ok(addr)
}

/// Serves Prometheus text on `/metrics` (and a tiny health check) on its own port.
pub fn start_metrics(
    listen: &str,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> io::Result<SocketAddr> {
    let server = Server::http(listen)
        .map_err(|e| io::Error::other(format!("cannot listen on {listen} for metrics: {e}")))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("metrics listener is not on an IP address"))?;
    let h2 = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .stack_size(1 << 20)
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                h2.run_upkeep();
            }
        })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .stack_size(2 << 20)
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url().starts_with("/metrics") {
                    with_header(
                        Response::from_data(handle.render().into_bytes()),
                        "Content-Type",
                        "text/plain; version=0.0.4",
                    )
                } else {
                    Response::from_data(b"rlay metrics: see /metrics\n".to_vec())
                };
                let _ = req.respond(resp);
            }
        })?;
    Ok(addr)
}
