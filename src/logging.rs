//! A small stderr logger for the `log` facade: one line per record with a UTC timestamp, level
//! and module, so messages from our code and from libraries (ureq, tungstenite) read the same.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Logger {
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // Library chatter only from warn up, ours at the configured level.
        if m.target().starts_with("rlay") {
            m.level() <= self.level
        } else {
            m.level() <= Level::Warn && m.level() <= self.level
        }
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {:5} {}: {}\n",
            timestamp(),
            r.level(),
            r.target(),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for the current time.
pub fn timestamp() -> String {
    let ms = crate::util::now_ms();
    format_datetime_ms(ms)
}

/// Formats unix milliseconds as an RFC 3339 UTC datetime (used for `time` fields too).
pub fn format_datetime_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Formats unix microseconds as an RFC 3339 UTC datetime with six fractional digits.
pub fn format_datetime_us(us: i64) -> String {
    let ms = format_datetime_ms(us.div_euclid(1000));
    format!("{}{:03}Z", &ms[..ms.len() - 1], us.rem_euclid(1000))
}

/// Installs the logger (idempotent).
pub fn init(level: &str) {
    let level = level.parse().unwrap_or(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Logger { level })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn datetime_format() {
        assert_eq!(super::format_datetime_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_datetime_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert!(crate::proto::syntax::is_valid_datetime(&super::timestamp()));
    }
}
