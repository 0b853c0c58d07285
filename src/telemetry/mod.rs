//! Metrics: the process-wide Prometheus recorder, the metrics port, and the gauge sampler.

pub mod gauges;

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tiny_http::{Header, Response, Server};

/// The recorder, installed on first use (before any metric handle is made, or that handle
/// would be a no-op forever).
pub fn recorder() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| log::warn!("metrics: recorder not installed ({e})"))
                .ok()
        })
        .clone()
}

/// A metric handle made once per call site, for metrics without labels on a per-event path:
/// `metrics::counter!` and friends look the metric up by name on every call (a hash of the
/// key, a registry read, and an allocation for a histogram), which the validation threads'
/// profile showed at 7% of their time. The recorder is installed first, or the handle would
/// record nothing forever. `once!(histogram!("name"), Histogram).record(x)`.
macro_rules! once {
    ($make:expr, $handle:ty) => {{
        static HANDLE: std::sync::OnceLock<$handle> = std::sync::OnceLock::new();
        HANDLE.get_or_init(|| {
            $crate::telemetry::recorder();
            $make
        })
    }};
}
pub(crate) use once;

/// The Prometheus text of every metric recorded in this process (tests read counters here).
pub fn metrics_text() -> String {
    recorder().map(|h| h.render()).unwrap_or_default()
}

fn prometheus_text(body: String) -> Response<io::Cursor<Vec<u8>>> {
    let resp = Response::from_data(body.into_bytes());
    match Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4"[..]) {
        Ok(h) => resp.with_header(h),
        Err(()) => resp,
    }
}

/// Serves Prometheus text on `/metrics` (and a tiny health check) on its own port.
pub fn serve(
    listen: &str,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> io::Result<SocketAddr> {
    let server = Server::http(listen)
        .map_err(|e| io::Error::other(format!("cannot listen on {listen} for metrics: {e}")))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("metrics listener is not on an IP address"))?;
    let h2 = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .stack_size(1 << 20)
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                h2.run_upkeep();
            }
        })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .stack_size(2 << 20)
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url().starts_with("/metrics") {
                    prometheus_text(handle.render())
                } else {
                    Response::from_data(b"rlay metrics: see /metrics\n".to_vec())
                };
                let _ = req.respond(resp);
            }
        })?;
    Ok(addr)
}
