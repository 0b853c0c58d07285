//! The simulated hosts' HTTP endpoints: `subscribeRepos` and the sync/server XRPC routes a
//! relay calls.

use super::*;

impl World {
    /// Handles one HTTP request to host `h`.
    pub(super) fn handle_host(&self, h: usize, mut s: TcpStream, head: crate::http::head::Head) {
        use server::{respond, respond_json, xrpc_error};
        let host = &self.hosts[h];
        if host.is_down() {
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let path = head.path().to_owned();
        if path == "/xrpc/com.atproto.sync.subscribeRepos" {
            let Some(key) = head.header("sec-websocket-key") else {
                return xrpc_error(&mut s, 400, "InvalidRequest", "WebSocket upgrade required");
            };
            let cursor = match head.query("cursor").map(|c| c.parse::<u64>()) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(_)) => return xrpc_error(&mut s, 400, "InvalidRequest", "bad cursor"),
            };
            let start = host.start_position(cursor);
            let resp = crate::http::head::switching_protocols(key, "rlay-sim-pds");
            if std::io::Write::write_all(&mut s, resp.as_bytes()).is_ok() {
                host.serve_subscriber(s, start);
            }
            return;
        }
        let did = head.query("did").unwrap_or_default();
        let on_host = || -> Option<Arc<Mutex<SimAccount>>> {
            let a = self.account(self.index_of(&did)?)?;
            let ok = lock(&a).host == h;
            ok.then_some(a)
        };
        match path.as_str() {
            "/xrpc/com.atproto.server.describeServer" => respond_json(
                &mut s,
                200,
                &json!({"did": format!("did:web:{}", host.hostname.replace(':', "%3A")), "availableUserDomains": [".test"], "inviteCodeRequired": false, "links": {}}),
            ),
            "/xrpc/com.atproto.sync.getRepoStatus" => match on_host() {
                None => xrpc_error(&mut s, 404, "RepoNotFound", &format!("no repo for {did}")),
                Some(a) => {
                    let a = lock(&a);
                    let (active, status) = a.status.wire();
                    let mut v = json!({"did": did, "active": active});
                    if let Some(st) = status {
                        v["status"] = json!(st);
                    } else if let Some((_, rev)) = a.repo.head() {
                        v["rev"] = json!(rev);
                    }
                    respond_json(&mut s, 200, &v);
                }
            },
            "/xrpc/com.atproto.sync.getLatestCommit" | "/xrpc/com.atproto.sync.getRepo" => {
                match on_host() {
                    None => xrpc_error(&mut s, 404, "RepoNotFound", &format!("no repo for {did}")),
                    Some(a) => {
                        let a = lock(&a);
                        match a.status {
                            Status::Deactivated => {
                                return xrpc_error(
                                    &mut s,
                                    400,
                                    "RepoDeactivated",
                                    "repo is deactivated",
                                );
                            }
                            Status::Takendown => {
                                return xrpc_error(
                                    &mut s,
                                    400,
                                    "RepoTakendown",
                                    "repo is taken down",
                                );
                            }
                            Status::Deleted => {
                                return xrpc_error(&mut s, 404, "RepoNotFound", "repo was deleted");
                            }
                            Status::Active => {}
                        }
                        if path.ends_with("getRepo") {
                            let car = a.repo.export_car();
                            drop(a);
                            respond(&mut s, 200, "application/vnd.ipld.car", &car);
                        } else if let Some((cid, rev)) = a.repo.head() {
                            respond_json(&mut s, 200, &json!({"cid": cid.to_string(), "rev": rev}));
                        }
                    }
                }
            }
            "/xrpc/com.atproto.sync.getBlocks" => match on_host() {
                None => xrpc_error(&mut s, 404, "RepoNotFound", &format!("no repo for {did}")),
                Some(a) => {
                    // One CID is all a relay asks for (the commit); repeated `cids` are not read.
                    let cids: Vec<crate::proto::cid::Cid> = head
                        .query("cids")
                        .and_then(|c| c.parse().ok())
                        .into_iter()
                        .collect();
                    let a = lock(&a);
                    let blocks: Vec<(crate::proto::cid::Cid, &[u8])> = cids
                        .iter()
                        .filter_map(|c| a.repo.block(c).map(|b| (*c, b)))
                        .collect();
                    if blocks.len() < cids.len() || cids.is_empty() {
                        return xrpc_error(
                            &mut s,
                            400,
                            "BlockNotFound",
                            "a block is not in the repo",
                        );
                    }
                    let car = crate::proto::car::write_car(&[], blocks);
                    drop(a);
                    respond(&mut s, 200, "application/vnd.ipld.car", &car);
                }
            },
            "/xrpc/com.atproto.sync.listRepos" => {
                let limit = head
                    .query("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(500)
                    .clamp(1, 1000);
                let after = head.query("cursor").and_then(|c| c.parse::<usize>().ok());
                let list = self
                    .accounts
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let mut repos = Vec::new();
                let mut last = None;
                for (i, a) in list.iter().enumerate() {
                    if after.is_some_and(|c| i <= c) {
                        continue;
                    }
                    let a = lock(a);
                    if a.host != h {
                        continue;
                    }
                    let (active, status) = a.status.wire();
                    let (head_cid, rev) = a
                        .repo
                        .head()
                        .map(|(c, r)| (c.to_string(), r.to_owned()))
                        .unwrap_or_default();
                    let mut v =
                        json!({"did": a.did, "head": head_cid, "rev": rev, "active": active});
                    if let Some(st) = status {
                        v["status"] = json!(st);
                    }
                    repos.push(v);
                    last = Some(i);
                    if repos.len() >= limit {
                        break;
                    }
                }
                let mut body = json!({"repos": repos});
                if let (Some(l), true) = (
                    last,
                    body["repos"].as_array().is_some_and(|r| r.len() >= limit),
                ) {
                    body["cursor"] = json!(l.to_string());
                }
                respond_json(&mut s, 200, &body);
            }
            "/xrpc/com.atproto.identity.resolveHandle" => {
                let handle = head
                    .query("handle")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let list = self
                    .accounts
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match list
                    .iter()
                    .map(|a| lock(a))
                    .find(|a| a.handle == handle && a.host == h)
                    .map(|a| a.did.clone())
                {
                    Some(d) => respond_json(&mut s, 200, &json!({"did": d})),
                    None => xrpc_error(&mut s, 400, "InvalidRequest", "Unable to resolve handle"),
                }
            }
            _ => xrpc_error(
                &mut s,
                404,
                "MethodNotImplemented",
                "not implemented by the simulator",
            ),
        }
    }
}
