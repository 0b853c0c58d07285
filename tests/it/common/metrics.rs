//! Counter assertions. Every test in this binary shares one metrics recorder (and simulated hosts
//! may reuse ports), so tests assert growth since a mark, with the labels that prove the point.

use rlay::telemetry::metrics_text;

/// The sum of a metric's series in `text` that carry every one of `labels`.
pub fn sum_in(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Counters as they were at a point in a test.
pub struct Mark(String);

impl Mark {
    pub fn now() -> Mark {
        Mark(metrics_text())
    }

    /// Growth of the series of `name` carrying every one of `labels` since the mark.
    pub fn delta(&self, name: &str, labels: &[&str]) -> f64 {
        sum_in(&metrics_text(), name, labels) - sum_in(&self.0, name, labels)
    }
}
