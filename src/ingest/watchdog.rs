//! The upstream stall watchdog (one thread for every host).

use super::hosts::Hosts;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Cuts connections that deliver no complete message for the stall timeout, from outside
/// their threads: a host trickling one byte at a time keeps each read alive, so a per-read
/// timeout alone never fires.
pub fn spawn_watchdog(
    hosts: Arc<Hosts>,
    stall: Duration,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let limit = stall.as_millis() as i64 + 1000;
    std::thread::Builder::new()
        .name("upstream-watchdog".into())
        .stack_size(256 << 10)
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                for h in hosts.all() {
                    if h.connected() && h.silent_ms() > limit {
                        metrics::counter!("rlay_upstream_stalls_cut_total").increment(1);
                        log::warn!(
                            "upstream {}: no complete message for {} ms; closing the connection",
                            h.hostname(),
                            h.silent_ms()
                        );
                        h.cut();
                        h.touch();
                    }
                }
            }
        })?;
    Ok(())
}
