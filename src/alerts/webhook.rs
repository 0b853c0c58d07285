//! Delivery of alert messages to a Slack-compatible incoming webhook (`{"text": ...}`: Slack,
//! Discord's `/slack` endpoint, Mattermost, ntfy-style receivers), on a thread of its own
//! behind a bounded queue: whoever raises an alert never waits for the receiver.

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const QUEUE: usize = 256;
const ATTEMPTS: u32 = 3;

pub struct Webhook {
    tx: Sender<String>,
}

impl Webhook {
    pub fn start(url: String, stop: Arc<AtomicBool>) -> std::io::Result<Webhook> {
        let (tx, rx) = bounded(QUEUE);
        std::thread::Builder::new()
            .name("alert webhook".into())
            .stack_size(2 << 20)
            .spawn(move || run(&url, &rx, &stop))?;
        Ok(Webhook { tx })
    }

    /// Queues a message; false (and counted) if the queue is full.
    pub fn send(&self, text: String) -> bool {
        match self.tx.try_send(text) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::counter!("rlay_alerts_total", "result" => "dropped").increment(1);
                false
            }
        }
    }
}

fn run(url: &str, rx: &Receiver<String>, stop: &AtomicBool) {
    let agent = crate::util::net::http_agent(true, Duration::from_secs(10));
    while !stop.load(Ordering::Relaxed) {
        let Ok(text) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let body = serde_json::json!({ "text": text }).to_string();
        let mut last = String::new();
        let mut sent = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << attempt));
            }
            match agent
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
            {
                Ok(r) if r.status().is_success() => {
                    sent = true;
                    break;
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
        }
        let result = if sent { "sent" } else { "failed" };
        metrics::counter!("rlay_alerts_total", "result" => result).increment(1);
        if !sent {
            log::warn!(
                "alerts: the webhook (RELAY_ALERT_WEBHOOK_URL) did not take an alert after {ATTEMPTS} attempts ({last}): {:?}",
                text.chars().take(200).collect::<String>()
            );
        }
    }
}
