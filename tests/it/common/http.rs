//! Plain HTTP against a running relay, as curl would do it.

use serde_json::Value;
use std::time::Duration;

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub json: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn error(&self) -> Option<&str> {
        self.json["error"].as_str()
    }
}

#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

fn auth_header(a: Auth<'_>) -> Option<String> {
    use base64::Engine;
    match a {
        Auth::None => None,
        Auth::Bearer(p) => Some(format!("Bearer {p}")),
        Auth::Basic(u, p) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )),
    }
}

fn answer(mut r: ureq::http::Response<ureq::Body>) -> Answer {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

pub fn get(base: &str, path: &str, auth: Auth<'_>) -> Answer {
    let mut req = agent().get(&format!("{base}{path}"));
    if let Some(h) = auth_header(auth) {
        req = req.header("Authorization", &h);
    }
    answer(req.call().expect("GET"))
}

pub fn post(base: &str, path: &str, auth: Auth<'_>, body: Option<Value>) -> Answer {
    let mut req = agent().post(&format!("{base}{path}"));
    if let Some(h) = auth_header(auth) {
        req = req.header("Authorization", &h);
    }
    answer(match body {
        Some(b) => req.send_json(b).expect("POST"),
        None => req.send_empty().expect("POST"),
    })
}

pub fn admin_get(base: &str, path: &str) -> Answer {
    get(base, path, Auth::Bearer(super::relay::ADMIN_PW))
}

pub fn admin_post(base: &str, path: &str, body: Option<Value>) -> Answer {
    post(base, path, Auth::Bearer(super::relay::ADMIN_PW), body)
}
