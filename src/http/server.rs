//! The tiny_http side of the API port: parses each forwarded request, dispatches it through the
//! route table, and adds what every answer carries (CORS, `Server`, metrics).

use super::front::{MAX_BODY, Peers, server_header};
use super::routes::{self, Ctx};
use crate::util::percent_decode;
use serde_json::{Value, json};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tiny_http::{Header, Method, Request, Response, Server};

pub type Resp = Response<io::Cursor<Vec<u8>>>;

/// Adds a header, keeping only printable ASCII in the value (a bad header is left out rather
/// than failing the response).
pub fn with_header(resp: Resp, name: &str, value: &str) -> Resp {
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

pub fn internal(e: impl std::fmt::Display) -> Resp {
    xrpc_error(500, "InternalServerError", &e.to_string())
}

pub fn empty_ok() -> Resp {
    Response::from_data(Vec::new()).with_status_code(200)
}

/// indigo's admin answer to a change that worked.
pub fn success() -> Resp {
    json_response(200, &json!({"success": "true"}))
}

/// A DID from a client, normalized, or the 400 that says it is not one.
pub fn normalized_did(s: &str) -> Result<String, Resp> {
    let did = crate::proto::syntax::normalize_did(s);
    if !crate::proto::syntax::is_valid_did(&did) || !crate::proto::syntax::is_normalized_did(&did) {
        return Err(invalid("did is not a valid DID"));
    }
    Ok(did)
}

/// A parsed request.
pub struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    /// The query string as sent (forwarded unchanged by redirects).
    pub(crate) raw_query: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) authorization: Option<String>,
    pub(crate) remote: Option<SocketAddr>,
    /// Accept, User-Agent and Content-Type as sent (what sibling forwarding copies).
    pub(crate) passed_on: Vec<(String, String)>,
    /// `Via` or `User-Agent` names `atproto-relay`: the request came from a relay.
    pub(crate) via_relay: bool,
}

fn invalid(message: &str) -> Resp {
    xrpc_error(400, "InvalidRequest", message)
}

impl Req {
    pub(crate) fn came_from_relay(&self) -> bool {
        self.via_relay
    }

    pub(crate) fn forwardable_headers(&self) -> &[(String, String)] {
        &self.passed_on
    }

    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, k: &str) -> Result<&str, Resp> {
        self.param(k)
            .ok_or_else(|| invalid(&format!("{k} is required")))
    }

    pub fn bool_param(&self, k: &str) -> Result<bool, Resp> {
        match self.param(k) {
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            _ => Err(invalid(&format!("{k} must be true or false"))),
        }
    }

    pub fn json(&self) -> Result<Value, Resp> {
        serde_json::from_slice(&self.body)
            .map_err(|e| invalid(&format!("request body is not JSON: {e}")))
    }

    /// A string field of a JSON object body, its name matched without regard to case (indigo's
    /// admin clients send `Domain` and `domain` alike).
    pub fn body_field(&self, name: &str) -> Result<String, Resp> {
        let v = self.json()?;
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("body must be a JSON object"))?;
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| invalid(&format!("body needs {name}")))
    }

    /// `limit` within `[1, max]`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, Resp> {
        match self.param("limit") {
            None => Ok(default),
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(invalid(&format!(
                    "limit must be an integer from 1 to {max}"
                ))),
            },
        }
    }

    /// The `did` parameter, valid and normalized.
    pub fn did_param(&self) -> Result<String, Resp> {
        let did = self.required("did")?;
        if !crate::proto::syntax::is_valid_did(did) {
            return Err(invalid("did is not a valid DID"));
        }
        Ok(crate::proto::syntax::normalize_did(did))
    }

    /// An integer cursor (ids and uids); absent means from the start.
    pub fn int_cursor(&self) -> Result<i64, Resp> {
        match self.param("cursor") {
            None | Some("") => Ok(0),
            Some(c) => c.parse::<i64>().map_err(|_| invalid("cursor is not valid")),
        }
    }
}

/// Query pairs; a pair with an empty value counts as absent (`?cursor=` from a client that has
/// no cursor yet means "no cursor", as indigo reads it).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| kv.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The request handlers' side of the port: tiny_http workers, each answering one forwarded
/// request at a time. Without a `Ctx` (a firehose-only server) every route is "not found".
pub(crate) struct Api {
    peers: Arc<Peers>,
    ctx: Option<Arc<Ctx>>,
}

impl Api {
    pub(crate) fn new(peers: Arc<Peers>, ctx: Option<Arc<Ctx>>) -> Api {
        Api { peers, ctx }
    }

    fn handle(&self, mut req: Request) {
        let started = Instant::now();
        let url = req.url().to_owned();
        let (path, raw_query) = url.split_once('?').unwrap_or((url.as_str(), ""));
        let method = req.method().clone();
        let mut body = Vec::new();
        let _ = req.as_reader().take(MAX_BODY as u64).read_to_end(&mut body);
        let r = Req {
            method: method.clone(),
            path: path.to_owned(),
            raw_query: raw_query.to_owned(),
            query: parse_query(raw_query),
            body,
            authorization: req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.as_str().to_owned()),
            remote: self.peers.lookup(req.remote_addr().copied()),
            passed_on: req
                .headers()
                .iter()
                .filter(|h| {
                    ["Accept", "User-Agent", "Content-Type"]
                        .iter()
                        .any(|n| h.field.equiv(n))
                })
                .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_owned()))
                .collect(),
            via_relay: req.headers().iter().any(|h| {
                (h.field.equiv("Via") || h.field.equiv("User-Agent"))
                    && h.value.as_str().contains(super::siblings::RELAY_MARK)
            }),
        };
        let (label, resp) = crate::util::isolate::isolate(
            "api-worker",
            || format!("answering {} {:?}", r.method, r.path),
            || routes::dispatch(self.ctx.as_deref(), &r),
        )
        .unwrap_or_else(|| {
            (
                routes::label(&r.path),
                xrpc_error(
                    500,
                    "InternalServerError",
                    "the request failed; this is a bug",
                ),
            )
        });
        let status = resp.status_code().0;
        if status >= 500 {
            log::warn!(
                "api: {} {:?} from {} failed with {status}",
                r.method,
                r.path,
                r.remote.map_or("?".to_owned(), |a| a.to_string())
            );
        }
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
pub(crate) fn start(api: Arc<Api>, workers: usize) -> io::Result<SocketAddr> {
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
