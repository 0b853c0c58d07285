//! indigo's admin routes (same paths, parameters and answer shapes, so existing operator tools
//! keep working). Authentication happens in dispatch, before any of these run.

use super::routes::Ctx;
use super::server::{
    Req, Resp, internal, json_response, normalized_did, success, with_header, xrpc_error,
};
use crate::ingest::accounts::TAKENDOWN;
use crate::store::HostStatus;
use serde_json::{Value, json};
use std::io::Write;

fn invalid(message: &str) -> Resp {
    xrpc_error(400, "InvalidRequest", message)
}

pub(crate) fn upstream_conns(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let conns: Vec<String> = ctx
        .hosts
        .all()
        .into_iter()
        .filter(|h| h.connected())
        .map(|h| h.hostname().to_owned())
        .collect();
    Ok(json_response(200, &json!(conns)))
}

pub(crate) fn kill_upstream(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let host = r.required("host")?;
    let block = r.param("block") == Some("true");
    match ctx.crawler.kill(host, block).map_err(internal)? {
        true => Ok(success()),
        false => Err(invalid(&format!("{host} is not connected"))),
    }
}

pub(crate) fn get_enabled(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(json_response(
        200,
        &json!({"enabled": ctx.crawler.enabled()}),
    ))
}

pub(crate) fn set_enabled(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    ctx.crawler.set_enabled(r.bool_param("enabled")?);
    Ok(success())
}

pub(crate) fn per_day_limit(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(json_response(
        200,
        &json!({"limit": ctx.crawler.per_day_limit()}),
    ))
}

pub(crate) fn set_per_day_limit(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let n = r
        .param("limit")
        .and_then(|l| l.parse::<u32>().ok())
        .ok_or_else(|| invalid("limit must be a non-negative integer"))?;
    ctx.crawler.set_per_day_limit(n);
    Ok(success())
}

pub(crate) fn list_domain_bans(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Ok(json_response(
        200,
        &json!({"banned_domains": ctx.crawler.domain_bans()}),
    ))
}

pub(crate) fn ban_domain(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let d = r.body_field("Domain")?;
    if d.trim().is_empty() {
        return Err(invalid("Domain is empty"));
    }
    ctx.crawler.ban_domain(&d).map_err(internal)?;
    Ok(success())
}

pub(crate) fn unban_domain(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let d = r.body_field("Domain")?;
    ctx.crawler.unban_domain(&d).map_err(internal)?;
    Ok(success())
}

pub(crate) fn takedowns(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let after = r.int_cursor()?;
    let rows = ctx
        .store
        .list_accounts_by_status(TAKENDOWN, None, after, 500)
        .map_err(internal)?;
    let mut v = json!({"dids": rows.iter().map(|a| a.did.clone()).collect::<Vec<_>>()});
    if rows.len() >= 500
        && let Some(l) = rows.last()
    {
        v["cursor"] = json!(l.uid.to_string());
    }
    Ok(json_response(200, &v))
}

fn did_body(r: &Req) -> Result<String, Resp> {
    normalized_did(&r.body_field("did")?)
}

fn found_account(ok: bool, did: &str) -> Result<Resp, Resp> {
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

pub(crate) fn take_down(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let did = did_body(r)?;
    found_account(ctx.pipeline.take_down(&did, TAKENDOWN), &did)
}

pub(crate) fn reverse_takedown(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let did = did_body(r)?;
    found_account(ctx.pipeline.reverse_take_down(&did), &did)
}

/// One JSON object written field by field: the host list has tens of thousands of objects,
/// and building a `Value` tree for each cost most of the answer's time.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
        // Keys are ASCII literals here: no escaping needed.
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k).extend_from_slice(v.as_bytes());
        self
    }

    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let out = self.key(k);
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(out, v);
        self
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(k, v),
            None => self.raw(k, "null"),
        }
    }

    fn int(&mut self, k: &str, v: i64) -> &mut Self {
        // Writing into a Vec cannot fail.
        let _ = write!(self.key(k), "{v}");
        self
    }

    fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.raw(k, if v { "true" } else { "false" })
    }

    fn float(&mut self, k: &str, v: f64) -> &mut Self {
        let v = if v.is_finite() { v } else { 0.0 };
        let _ = write!(self.key(k), "{v}");
        self
    }

    fn end(&mut self) {
        self.out.push(b'}');
    }
}

pub(crate) fn list_hosts(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let mut out = Vec::with_capacity(1 << 16);
    out.push(b'[');
    let (mut after, mut n) = (0, 0usize);
    let now = crate::util::now_ms();
    let when = crate::logging::format_datetime_ms;
    while n < 100_000 {
        let rows = ctx.store.list_hosts(after, 1000).map_err(internal)?;
        let Some(l) = rows.last() else { break };
        after = l.id;
        for row in rows {
            let live = ctx.hosts.get(row.id);
            let live = live.as_deref();
            let connected = live.is_some_and(|h| h.connected());
            let status = live.map_or(row.status, |h| h.status());
            let count = live.map_or(row.account_count, |h| h.account_count());
            let alerts = ctx.alerts.host_state(row.id);
            // indigo's rate-limit settings; rlay does not rate-limit by these.
            let rate = if connected {
                r#"{"Max":0,"Window":0}"#
            } else {
                "-1"
            };
            if n > 0 {
                out.push(b',');
            }
            n += 1;
            Obj::new(&mut out)
                .int("ID", row.id)
                .str("CreatedAt", &when(row.created_at))
                .str("Host", &row.hostname)
                .bool("SSL", !row.no_tls)
                .int("Cursor", live.map_or(row.last_seq, |h| h.safe_cursor()))
                .bool("Registered", status == HostStatus::Active)
                .bool("Blocked", status == HostStatus::Banned)
                .int("CrawlRateLimit", 0)
                .int("RepoCount", count)
                .int(
                    "RepoLimit",
                    live.map_or(row.account_limit, |h| h.account_limit()),
                )
                .bool("HasActiveConnection", connected)
                .int(
                    "EventsSeenSinceStartup",
                    live.map_or(0, |h| h.events_received() as i64),
                )
                .raw("PerSecondEventRate", rate)
                .raw("PerHourEventRate", rate)
                .raw("PerDayEventRate", rate)
                .int("UserCount", count)
                .bool("AccountLimitAlertsSilenced", alerts.silenced)
                .str("AccountLimitAlertState", &alerts.limit_state)
                .opt_str(
                    "AccountLimitAlertSentAt",
                    alerts.limit_sent_at.map(when).as_deref(),
                )
                .str("Status", status.as_str())
                .bool("Trusted", row.trusted)
                .float(
                    "EventsPerSecond",
                    live.map_or(0.0, |h| (h.events_per_sec(now) * 100.0).round() / 100.0),
                )
                .int(
                    "EventsToday",
                    live.map_or(0, |h| h.events_today(now) as i64),
                )
                .opt_str(
                    "ConnectedSince",
                    live.filter(|_| connected)
                        .map(|h| when(h.connected_at_ms()))
                        .as_deref(),
                )
                .opt_str(
                    "LastEventAt",
                    live.map(|h| h.last_message_ms())
                        .filter(|&t| t > 0)
                        .map(when)
                        .as_deref(),
                )
                .end();
        }
    }
    out.push(b']');
    Ok(with_header(
        tiny_http::Response::from_data(out),
        "Content-Type",
        "application/json; charset=utf-8",
    ))
}

pub(crate) fn request_crawl(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    super::sync::crawl(ctx, r, true)
}

fn block_or_unblock(ctx: &Ctx, r: &Req, block: bool) -> Result<Resp, Resp> {
    let host = r.required("host")?;
    let found = if block {
        ctx.crawler.block(host)
    } else {
        ctx.crawler.unblock(host)
    };
    if found.map_err(internal)? {
        Ok(success())
    } else {
        Err(xrpc_error(
            404,
            "HostNotFound",
            &format!("{host} is not known"),
        ))
    }
}

pub(crate) fn block(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    block_or_unblock(ctx, r, true)
}

pub(crate) fn unblock(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    block_or_unblock(ctx, r, false)
}

pub(crate) fn consumers(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let head = ctx.hub.ring.head();
    let list: Vec<Value> = ctx
        .hub
        .consumers()
        .iter()
        .map(|c| {
            let mut v = json!({
                "id": c.id(), "kind": c.kind(), "remote_addr": c.remote_addr(), "user_agent": c.user_agent(),
                "events_consumed": c.events_sent(),
                "cursor": c.cursor(),
                "lag": head.saturating_sub(c.cursor()),
                "bytes_sent": c.bytes_sent(),
                "connected_at": crate::logging::format_datetime_ms(c.connected_at_ms()),
            });
            if let Some(d) = c.detail() {
                v["jetstream"] = d;
            }
            v
        })
        .collect();
    Ok(json_response(200, &json!(list)))
}

/// `changeLimits`: a raised limit releases throttled accounts, oldest first, each with an
/// `#account` event and then a `#sync` once it is made whole; `account_limit_alerts_silenced`
/// silences (or un-silences) the host's account-limit alerts.
pub(crate) fn change_limits(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let body = r.json()?;
    let hostname = body
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("body needs host"))?;
    let h = ctx
        .hosts
        .by_name(&hostname.to_ascii_lowercase())
        .ok_or_else(|| xrpc_error(404, "HostNotFound", &format!("{hostname} is not known")))?;
    if let Some(on) = body
        .get("account_limit_alerts_silenced")
        .and_then(Value::as_bool)
    {
        ctx.alerts.silence(h.id(), on).map_err(internal)?;
    }
    let Some(limit) = body.get("repo_limit").and_then(Value::as_i64) else {
        return Ok(success());
    };
    if limit < 0 {
        return Err(invalid("repo_limit must not be negative"));
    }
    let old = h.set_account_limit(limit);
    ctx.store
        .set_host_account_limit(h.id(), limit)
        .map_err(internal)?;
    if limit <= old {
        return Ok(success());
    }
    let released = ctx
        .pipeline
        .release_throttled(&h, limit.saturating_sub(h.account_count()), &*ctx.store)
        .map_err(internal)?;
    log::info!(
        "admin: {hostname} account limit {old} -> {limit}; released {released} throttled account(s)"
    );
    Ok(success())
}
