//! Headless Chromium driven through chromedriver (Debian's `chromium` and `chromium-driver`),
//! with the few page helpers the dashboard test needs.

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    driver: Child,
    pub client: Client,
}

fn find_binary(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| {
        let p = std::path::Path::new(n);
        if p.is_absolute() {
            return p.exists().then(|| n.to_string());
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|f| f.exists())
                .map(|f| f.display().to_string())
        })
    })
}

impl Browser {
    /// `None` when chromium or chromedriver is not installed (then the test says so and
    /// passes, unless `RLAY_REQUIRE_BROWSER` is set, as `.ci/run` does).
    pub async fn start() -> Option<Browser> {
        let chromium = find_binary(&["chromium", "chromium-browser", "google-chrome"]);
        let driver = find_binary(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                std::env::var_os("RLAY_REQUIRE_BROWSER").is_none(),
                "RLAY_REQUIRE_BROWSER is set but chromium/chromedriver are not installed (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipping the browser test: chromium and chromedriver are not installed");
            return None;
        };
        let port = rlay::sim::admin::free_port().expect("a free port");
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--disable-extensions", "--no-first-run"],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        Some(Browser {
            driver: child,
            client,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigates");
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls a JavaScript expression until it is truthy.
    pub async fn until(&self, what: &str, expr: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let script = format!("return !!({expr});");
        loop {
            if self.js(&script).await.as_bool() == Some(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self
                    .js("return document.body.innerText.slice(0, 2000);")
                    .await;
                panic!("timed out after {secs}s waiting for {what} ({expr}); page:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// The element's visible text, read in one step in the page: the dashboard re-renders its
    /// rows on every refresh, so an element found first and read after may be gone (stale).
    pub async fn text(&self, css: &str) -> String {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                vec![Value::String(css.to_owned())],
            )
            .await
            .unwrap_or_else(|e| panic!("reading {css}: {e}"));
        v.as_str()
            .unwrap_or_else(|| panic!("no element {css} in the page"))
            .to_owned()
    }

    /// Clicks the element, finding it again if a refresh replaced it between the find and the
    /// click (what a user's click meets too: the button now on screen).
    pub async fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() && tries < 5 => {
                    tries += 1;
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    /// Replaces an input's value by typing, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.expect("clears");
        e.send_keys(text).await.expect("types");
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resizes");
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("screenshot written");
    }

    /// The console entries the page logged since the last call (chromedriver's browser log).
    pub async fn console(&self) -> Vec<(String, String)> {
        let v = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("the browser log");
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_owned(),
                            e["message"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's log endpoint (outside W3C WebDriver, so not among fantoccini's commands).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}
