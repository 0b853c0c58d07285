//! The route table: every HTTP route of the API port, in one place. Dispatch, the metrics
//! label, the 401/404/405/501 answers and the README's route check all read this table, so
//! adding a route is one line here.

use super::auth::AdminAuth;
use super::server::{Req, Resp, json_response, with_header, xrpc_error};
use super::siblings::Siblings;
use super::{account_info, admin, dash, status, sync};
use crate::alerts::Alerts;
use crate::coverage::Coverage;
use crate::index::CollectionIndex;
use crate::index::routes as index;
use crate::ingest::crawl::Crawler;
use crate::ingest::crawl_queue::CrawlQueue;
use crate::ingest::discovery::Discovery;
use crate::ingest::hosts::Hosts;
use crate::ingest::pipeline::Pipeline;
use crate::ingest::resync::Resync;
use crate::store::Store;
use crate::stream::firehose::Hub;
use serde_json::json;
use std::sync::Arc;
use tiny_http::{Method, Response};

/// What the handlers reach of the running relay.
pub(crate) struct Ctx {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) hosts: Arc<Hosts>,
    pub(crate) crawler: Arc<Crawler>,
    pub(crate) crawl_queue: CrawlQueue,
    pub(crate) index: Arc<CollectionIndex>,
    pub(crate) admin: AdminAuth,
    pub(crate) coverage: Arc<Coverage>,
    pub(crate) alerts: Arc<Alerts>,
    pub(crate) discovery: Option<Arc<Discovery>>,
    pub(crate) siblings: Siblings,
    pub(crate) resync: Arc<Resync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Needs the admin password (Basic `admin:pw` or Bearer).
    Admin,
    /// A WebSocket upgrade, answered by the front before tiny_http sees it.
    WebSocket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    fn matches(self, m: &Method) -> bool {
        matches!(
            (self, m),
            (Verb::Get, Method::Get) | (Verb::Post, Method::Post)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }
}

pub(crate) type Handler = fn(&Ctx, &Req) -> Result<Resp, Resp>;

pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    pub access: Access,
    handler: Handler,
}

const fn route(verb: Verb, path: &'static str, access: Access, handler: Handler) -> Route {
    Route {
        verb,
        path,
        access,
        handler,
    }
}

use Access::{Admin, Public, WebSocket};
use Verb::{Get, Post};

/// Every route. The firehose upgrade is listed for completeness (and for 405s); its handler
/// only runs for a request that is not an upgrade.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    route(Get, "/", Public, sync::banner),
    route(Get, "/_health", Public, sync::health),
    route(Get, "/xrpc/_health", Public, sync::health),
    route(Get, "/xrpc/_ready", Public, status::ready),
    route(Get, "/status", Public, status::status),
    route(Get, "/dash", Public, dash::page_bare),
    route(Get, "/dash/", Public, dash::page_slash),
    route(Get, "/dash/app.js", Public, dash::script),
    route(Get, "/dash/app.css", Public, dash::style),
    route(Get, "/xrpc/com.atproto.sync.subscribeRepos", WebSocket, sync::upgrade_required),
    route(Get, "/subscribe", WebSocket, status::jetstream_off),
    route(Get, "/xrpc/com.atproto.sync.listRepos", Public, sync::list_repos),
    route(Get, "/xrpc/com.atproto.sync.getRepoStatus", Public, sync::get_repo_status),
    route(Get, "/xrpc/com.atproto.sync.getLatestCommit", Public, sync::get_latest_commit),
    route(Get, "/xrpc/com.atproto.sync.getRepo", Public, sync::get_repo),
    route(Get, "/xrpc/com.atproto.sync.listHosts", Public, sync::list_hosts),
    route(Get, "/xrpc/com.atproto.sync.getHostStatus", Public, sync::get_host_status),
    route(Post, "/xrpc/com.atproto.sync.requestCrawl", Public, sync::request_crawl),
    route(Post, "/xrpc/com.atproto.sync.notifyOfUpdate", Public, sync::request_crawl),
    route(Get, "/xrpc/com.atproto.sync.listReposByCollection", Public, index::list_repos_by_collection),
    route(Get, "/admin/subs/getUpstreamConns", Admin, admin::upstream_conns),
    route(Post, "/admin/subs/killUpstream", Admin, admin::kill_upstream),
    route(Get, "/admin/subs/getEnabled", Admin, admin::get_enabled),
    route(Post, "/admin/subs/setEnabled", Admin, admin::set_enabled),
    route(Get, "/admin/subs/perDayLimit", Admin, admin::per_day_limit),
    route(Post, "/admin/subs/setPerDayLimit", Admin, admin::set_per_day_limit),
    route(Get, "/admin/subs/listDomainBans", Admin, admin::list_domain_bans),
    route(Post, "/admin/subs/banDomain", Admin, admin::ban_domain),
    route(Post, "/admin/subs/unbanDomain", Admin, admin::unban_domain),
    route(Get, "/admin/repo/takedowns", Admin, admin::takedowns),
    route(Post, "/admin/repo/takeDown", Admin, admin::take_down),
    route(Post, "/admin/repo/reverseTakedown", Admin, admin::reverse_takedown),
    route(Get, "/admin/repo/info", Admin, account_info::repo_info),
    route(Get, "/admin/pds/list", Admin, admin::list_hosts),
    route(Post, "/admin/pds/requestCrawl", Admin, admin::request_crawl),
    route(Post, "/admin/pds/changeLimits", Admin, admin::change_limits),
    route(Post, "/admin/pds/block", Admin, admin::block),
    route(Post, "/admin/pds/unblock", Admin, admin::unblock),
    route(Get, "/admin/consumers/list", Admin, admin::consumers),
    route(Get, "/admin/alerts/list", Admin, status::alerts_list),
    route(Post, "/admin/alerts/silence", Admin, status::alerts_silence),
    route(Get, "/admin/discovery/status", Admin, status::discovery_status),
    route(Post, "/admin/discovery/run", Admin, status::discovery_run),
    route(Get, "/admin/collections/list", Admin, index::list_collections),
    route(Get, "/admin/collections/backfill", Admin, index::backfill_status),
    route(Post, "/admin/collections/backfill", Admin, index::backfill_trigger),
];

/// Routes whose successful changes are re-sent to sibling relays (indigo's list, plus silencing).
pub static FORWARDED: &[&str] = &[
    "/xrpc/com.atproto.sync.requestCrawl",
    "/admin/subs/killUpstream",
    "/admin/subs/banDomain",
    "/admin/subs/unbanDomain",
    "/admin/repo/takeDown",
    "/admin/repo/reverseTakedown",
    "/admin/pds/requestCrawl",
    "/admin/pds/changeLimits",
    "/admin/pds/block",
    "/admin/pds/unblock",
    "/admin/alerts/silence",
];

/// The route template used as a metrics label (bounded cardinality: table paths or "other").
pub fn label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| r.path == path)
        .map_or("other", |r| r.path)
}

/// A Bearer caller (the dashboard) is challenged for Bearer: a Basic challenge would make a
/// browser put up its own password prompt over the page.
fn unauthorized(r: &Req) -> Resp {
    let resp = json_response(
        401,
        &json!({"error": "Unauthorized", "message": "admin routes need HTTP Basic auth as user admin, or a Bearer password"}),
    );
    let bearer = r
        .authorization
        .as_deref()
        .is_some_and(|a| a.trim_start().starts_with("Bearer"));
    let scheme = if bearer { "Bearer" } else { "Basic" };
    with_header(
        resp,
        "WWW-Authenticate",
        &format!("{scheme} realm=\"rlay admin\""),
    )
}

fn preflight() -> Resp {
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
}

/// The answer to a path the table has, asked with another method.
fn wrong_method(r: &Req, allowed: &[&Route]) -> Resp {
    let allow: Vec<&str> = allowed.iter().map(|a| a.verb.as_str()).collect();
    let resp = if r.path.starts_with("/xrpc/") && matches!(r.method, Method::Get | Method::Post) {
        // XRPC clients know a method by its name, not its verb: say the call is not here.
        xrpc_error(
            501,
            "MethodNotImplemented",
            &format!("{} takes {} (check the method)", r.path, allow.join(", ")),
        )
    } else {
        xrpc_error(
            405,
            "MethodNotAllowed",
            &format!("{} takes {}", r.path, allow.join(", ")),
        )
    };
    with_header(resp, "Allow", &allow.join(", "))
}

/// Answers one request; returns the metrics label with the response.
pub(crate) fn dispatch(ctx: Option<&Ctx>, r: &Req) -> (&'static str, Resp) {
    let label = label(&r.path);
    if r.method == Method::Options {
        return (label, preflight());
    }
    let admin_area = r.path.starts_with("/admin/");
    if admin_area && !ctx.is_some_and(|c| c.admin.allows(r.authorization.as_deref())) {
        return (label, unauthorized(r));
    }
    let same_path: Vec<&Route> = ROUTES.iter().filter(|x| x.path == r.path).collect();
    let Some(route) = same_path.iter().find(|x| x.verb.matches(&r.method)) else {
        let resp = if !same_path.is_empty() {
            wrong_method(r, &same_path)
        } else if r.path.starts_with("/xrpc/") {
            xrpc_error(
                if matches!(r.method, Method::Get | Method::Post) {
                    501
                } else {
                    405
                },
                "MethodNotImplemented",
                &format!("{} is not implemented (check the method)", r.path),
            )
        } else if admin_area {
            xrpc_error(404, "NotFound", "no such admin route (check the method)")
        } else {
            xrpc_error(404, "NotFound", "no such route")
        };
        return (label, resp);
    };
    let resp = match ctx {
        Some(c) => {
            let resp = (route.handler)(c, r).unwrap_or_else(|e| e);
            if resp.status_code().0 < 300 && FORWARDED.contains(&route.path) {
                c.siblings.forward(r);
            }
            resp
        }
        None if route.path == "/" => sync::banner_text(),
        None => xrpc_error(404, "NotFound", "no such route"),
    };
    (label, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_routes_are_changes_in_the_table() {
        for p in FORWARDED {
            assert!(
                ROUTES.iter().any(|r| r.path == *p && r.verb == Verb::Post),
                "{p} is forwarded but is not a POST route"
            );
        }
    }
}
