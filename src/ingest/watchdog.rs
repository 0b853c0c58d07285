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
    let limit = stall + Duration::from_secs(1);
    std::thread::Builder::new()
        .name("upstream-watchdog".into())
        .stack_size(256 << 10)
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                for h in hosts.all() {
                    let silent = h.silent();
                    if h.connected() && silent > limit {
                        metrics::counter!("rlay_upstream_stalls_cut_total").increment(1);
                        log::warn!(
                            "upstream {}: no complete message for {silent:?}; closing the connection",
                            h.hostname()
                        );
                        h.drop_connection();
                        h.touch();
                    }
                }
            }
        })?;
    Ok(())
}
