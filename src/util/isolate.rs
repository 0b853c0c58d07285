//! Panic isolation: a panic in one host session, lookup, gate job or API request costs that
//! unit of work, is counted in `rlay_panics_total{thread}` and logged once with context, and
//! never takes the thread (or the process) down with it.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`; on a panic returns `None` after counting and logging it as `what` on `thread`.
pub fn isolate<R>(
    thread: &'static str,
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> R,
) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".to_owned());
            metrics::counter!("rlay_panics_total", "thread" => thread).increment(1);
            log::error!(
                "{thread}: panic while {} ({}); that work was abandoned and the thread goes on. This is a bug: please report it with this line.",
                what(),
                why.escape_debug()
            );
            None
        }
    }
}
