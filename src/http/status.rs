//! What the relay says about itself: readiness (`/xrpc/_ready`), the public `/status` summary,
//! and the admin routes for alerts and discovery.

use super::routes::Ctx;
use super::server::{Req, Resp, internal, json_response, success, xrpc_error};
use serde_json::{Value, json};

fn not_configured(what: &str, var: &str) -> Resp {
    xrpc_error(
        404,
        "NotConfigured",
        &format!("{what} is not configured on this relay (set {var})"),
    )
}

/// 200 when ready, 503 with the reasons otherwise (rules: `coverage::readiness`).
pub(crate) fn ready(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let reasons = ctx.coverage.reasons();
    let status = if reasons.is_empty() { 200 } else { 503 };
    Ok(json_response(
        status,
        &json!({"ready": reasons.is_empty(), "reasons": reasons_json(&reasons)}),
    ))
}

fn reasons_json(r: &[crate::coverage::readiness::Reason]) -> Vec<Value> {
    r.iter().map(|x| x.to_json()).collect()
}

fn rate(r: Option<f64>) -> Value {
    r.map_or(Value::Null, |v| json!((v * 10.0).round() / 10.0))
}

pub(crate) fn status(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let reasons = ctx.coverage.reasons();
    let [m1, m5, h1] = ctx.coverage.rates();
    let log = ctx.hub.log();
    let backfill = ctx.store.backfill_totals().ok();
    let index = ctx.index.counts(false).ok();
    let mut v = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": reasons.is_empty(),
        "reasons": reasons_json(&reasons),
        "hosts": ctx.coverage.hosts().to_json(),
        "events_per_sec": {"1m": rate(m1), "5m": rate(m5), "1h": rate(h1)},
        "seq": {
            "head": ctx.hub.ring.head(),
            "oldest": log.oldest_seq(),
            "oldest_time": log.oldest_time_us().map(|t| crate::logging::format_datetime_ms(t / 1000)),
        },
        "consumers": {
            "firehose": ctx.hub.registry.count_kind("firehose"),
            "jetstream": ctx.hub.registry.count_kind("jetstream"),
        },
        "identity": {
            "lookups_pending": ctx.pipeline.resolver().pending(),
        },
        "resync_queued": ctx.resync.queued(),
        "index": index.map(|c| json!({"collections": c.len(), "pairs": c.values().sum::<u64>()})),
        "backfill": backfill.map(|b| json!({
            "collections": b.collections, "done": b.done, "imported": b.imported,
            "running": ctx.index.backfill.is_running(),
        })),
        "history": ctx.coverage.series().iter().map(|(t, r)| json!([t, (r * 10.0).round() / 10.0])).collect::<Vec<_>>(),
    });
    if let Some(d) = &ctx.discovery {
        let s = d.status();
        v["discovery"] = json!({
            "passes": s.passes, "hosts_added": s.hosts_added,
            "hosts_missing": s.hosts_missing,
            "sources": s.sources.iter().map(|x| x.to_json()).collect::<Vec<_>>(),
        });
    }
    Ok(json_response(200, &v))
}

/// Reached only when the front does not take `/subscribe` itself: Jetstream is switched off.
pub(crate) fn jetstream_off(_: &Ctx, _: &Req) -> Result<Resp, Resp> {
    Err(not_configured("Jetstream", "RELAY_JETSTREAM=true"))
}

pub(crate) fn discovery_status(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let d = ctx.discovery.as_ref().ok_or_else(|| {
        not_configured("discovery", "RELAY_BOOTSTRAP_HOST or RELAY_SIBLING_RELAYS")
    })?;
    Ok(json_response(200, &d.status().to_json()))
}

pub(crate) fn discovery_run(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let d = ctx.discovery.as_ref().ok_or_else(|| {
        not_configured("discovery", "RELAY_BOOTSTRAP_HOST or RELAY_SIBLING_RELAYS")
    })?;
    d.run_now();
    Ok(success())
}

pub(crate) fn alerts_list(ctx: &Ctx, _: &Req) -> Result<Resp, Resp> {
    let hosts: Vec<Value> = ctx
        .hosts
        .all()
        .iter()
        .filter_map(|h| {
            let a = ctx.alerts.host_state(h.id());
            let interesting =
                a.silenced || a.limit_state != "ok" || a.offline_sent_at.is_some();
            interesting.then(|| {
                json!({
                    "host": h.hostname(), "silenced": a.silenced,
                    "account_limit_alert_state": a.limit_state,
                    "account_limit_alert_sent_at": a.limit_sent_at.map(crate::logging::format_datetime_ms),
                    "offline_alert_sent_at": a.offline_sent_at.map(crate::logging::format_datetime_ms),
                })
            })
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"recent": ctx.alerts.recent().iter().map(|a| a.to_json()).collect::<Vec<_>>(), "hosts": hosts}),
    ))
}

/// `{"host": ..., "silenced": bool}` (default true).
pub(crate) fn alerts_silence(ctx: &Ctx, r: &Req) -> Result<Resp, Resp> {
    let body = r.json()?;
    let hostname = body
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| xrpc_error(400, "InvalidRequest", "body needs host"))?;
    let on = body
        .get("silenced")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let h = ctx
        .hosts
        .by_name(&hostname.to_ascii_lowercase())
        .ok_or_else(|| xrpc_error(404, "HostNotFound", &format!("{hostname} is not known")))?;
    ctx.alerts.silence(h.id(), on).map_err(internal)?;
    Ok(success())
}
