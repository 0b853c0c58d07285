//! The integration tests, as one binary so CI links the relay (and RocksDB) once. One module per
//! area; `common` holds the shared set-up (a relay on temp dirs, PostgreSQL clusters, HTTP and
//! firehose clients).

mod common;
#[path = "../../bench/procstat.rs"]
mod procstat;

mod api;
mod cli;
mod coverage;
mod db_outage;
mod disk_full;
mod docs;
mod edges;
mod index;
mod interop;
mod jetstream;
mod log_compression;
mod mst_props;
mod relay_accounts;
mod relay_e2e;
mod relay_restart;
mod scenarios;
mod sim;
mod stream;
mod verify;
