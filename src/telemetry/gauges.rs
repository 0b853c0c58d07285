//! Levels (positions, queue lengths, host states) sampled into Prometheus gauges every few
//! seconds by one thread, so the hot paths only ever bump counters.

use crate::ingest::hosts::Hosts;
use crate::ingest::pipeline::Pipeline;
use crate::store::HostStatus;
use crate::stream::firehose::Hub;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(2);

pub struct Sources {
    pub(crate) hub: Arc<Hub>,
    pub(crate) hosts: Arc<Hosts>,
    pub(crate) pipeline: Arc<Pipeline>,
}

fn sample(s: &Sources) {
    metrics::gauge!("rlay_ring_head_seq").set(s.hub.ring.head() as f64);
    metrics::gauge!("rlay_ring_bytes").set(s.hub.ring.bytes() as f64);
    if let Some(oldest) = s.hub.log.oldest_seq() {
        metrics::gauge!("rlay_event_log_oldest_seq").set(oldest as f64);
    }
    metrics::gauge!("rlay_event_log_segments").set(s.hub.log.segment_count() as f64);
    metrics::gauge!("rlay_resolver_pending").set(s.pipeline.resolver().pending() as f64);
    metrics::gauge!("rlay_accounts_in_memory").set(s.pipeline.accounts().len() as f64);
    let mut by_status = [0u64; 5];
    let mut connected = 0u64;
    let all = [
        HostStatus::Active,
        HostStatus::Idle,
        HostStatus::Offline,
        HostStatus::Throttled,
        HostStatus::Banned,
    ];
    for h in s.hosts.all() {
        if let Some(i) = all.iter().position(|st| *st == h.status()) {
            by_status[i] += 1;
        }
        if h.connected() {
            connected += 1;
        }
    }
    for (st, n) in all.iter().zip(by_status) {
        metrics::gauge!("rlay_hosts", "status" => st.as_str()).set(n as f64);
    }
    metrics::gauge!("rlay_hosts_connected").set(connected as f64);
}

pub fn spawn(s: Sources, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gauges".into())
        .stack_size(1 << 20)
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sample(&s);
                let mut slept = Duration::ZERO;
                while slept < EVERY && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
        })?;
    Ok(())
}
