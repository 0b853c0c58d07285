//! The simulator's side of a relay's admin API: asking a relay to crawl simulated hosts (used by
//! `rlay sim --crawl`, the tests and the benchmarks, so there is one copy of the client).

use std::time::Duration;

/// A loopback port that was free a moment ago (for servers a test or benchmark starts later).
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// An admin client of one relay (`http://host:port`), authenticated with its password.
pub struct RelayAdmin {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl RelayAdmin {
    pub fn new(relay: &str, password: &str) -> RelayAdmin {
        RelayAdmin {
            base: relay.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {password}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
        }
    }

    /// Admin `requestCrawl` of one host; `Err` says what the relay answered.
    pub fn request_crawl(&self, hostname: &str) -> Result<(), String> {
        let url = format!("{}/admin/pds/requestCrawl", self.base);
        match self
            .agent
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(serde_json::json!({ "hostname": hostname }))
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(mut r) => Err(format!(
                "{url} answered {} for {hostname}: {}",
                r.status(),
                r.body_mut().read_to_string().unwrap_or_default()
            )),
            Err(e) => Err(format!("{url} failed for {hostname}: {e}")),
        }
    }

    /// The hostnames the relay is connected to (`getUpstreamConns`); empty when unreachable.
    pub fn connected(&self) -> Vec<String> {
        let url = format!("{}/admin/subs/getUpstreamConns", self.base);
        let Ok(mut r) = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth)
            .call()
        else {
            return Vec::new();
        };
        r.body_mut().read_json::<Vec<String>>().unwrap_or_default()
    }
}
