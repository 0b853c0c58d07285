//! The whole relay, wired together: store, event stream, identity resolver, ingest pipeline,
//! host connections, write-behind flusher, HTTP API and metrics.

use crate::alerts::Alerts;
use crate::config::Config;
use crate::coverage::Coverage;
use crate::http::auth::{AdminAuth, random_password};
use crate::http::front::Front;
use crate::http::routes::Ctx;
use crate::http::siblings::Siblings;
use crate::identity::{Fetch, HttpFetch, Resolver, ResolverConfig};
use crate::index::CollectionIndex;
use crate::index::backfill::BackfillConfig;
use crate::ingest::accounts::{Accounts, SUSPENDED, TAKENDOWN};
use crate::ingest::crawl::{CrawlConfig, Crawler};
use crate::ingest::crawl_queue::CrawlQueue;
use crate::ingest::dialer::Dialer;
use crate::ingest::discovery::{Discovery, DiscoveryConfig};
use crate::ingest::flusher;
use crate::ingest::hosts::{HostHandle, Hosts};
use crate::ingest::pipeline::{Pipeline, PipelineConfig};
use crate::ingest::resync::{Resync, ResyncConfig};
use crate::ingest::upstream::{Upstream, UpstreamConfig};
use crate::store::HostStatus;
use crate::stream::firehose::{FirehoseConfig, Hub};
use crate::stream::{Stream, StreamConfig};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Optional parts supplied by the caller (tests swap the identity source).
#[derive(Default)]
pub struct Parts {
    pub fetch: Option<Arc<dyn Fetch>>,
}

/// A running relay. It owns every part; callers see it through its ports (the API, the
/// firehose, metrics) and the few accessors below.
pub struct Relay {
    hub: Arc<Hub>,
    pipeline: Arc<Pipeline>,
    hosts: Arc<Hosts>,
    crawler: Arc<Crawler>,
    index: Arc<CollectionIndex>,
    api_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stream: Option<Stream>,
    shutdown: Arc<AtomicBool>,
    flusher: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(cfg: &Config, parts: Parts) -> Result<Relay, String> {
        // First, so every metric handle made from here on (some are cached) is a real one.
        let prometheus = crate::telemetry::recorder();
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
        let store = crate::store::open(cfg.database_url.as_deref(), &cfg.data_dir)
            .map_err(|e| e.to_string())?;
        log::info!("store: {} ready", store.backend());

        let stream = Stream::open(
            &cfg.data_dir.join("events"),
            StreamConfig {
                ring_capacity: cfg.ring_capacity,
                ring_max_bytes: cfg.ring_max_mib.saturating_mul(1 << 20),
                replay_window: cfg.replay_window,
                compress_log: cfg.compress_log,
                replay_rate: cfg.replay_rate,
                initial_seq: cfg.initial_seq.max(1) as u64,
                firehose: FirehoseConfig {
                    stall_timeout: cfg.consumer_stall_timeout,
                    ..FirehoseConfig::default()
                },
                ..StreamConfig::default()
            },
        )
        .map_err(|e| {
            format!(
                "cannot open the event log in {}: {e}",
                cfg.data_dir.join("events").display()
            )
        })?;
        if stream.opened.truncated_bytes > 0 {
            log::warn!(
                "event log: repaired a torn tail ({} bytes cut)",
                stream.opened.truncated_bytes
            );
        }
        log::info!(
            "event log: {} segment(s), last seq {:?}",
            stream.opened.segments,
            stream.opened.last_seq
        );
        let hub = stream.hub.clone();

        let fetch = parts
            .fetch
            .unwrap_or_else(|| Arc::new(HttpFetch::new(&cfg.plc_host, cfg.allow_insecure_hosts)));
        let resolver = Resolver::start(
            fetch,
            ResolverConfig {
                threads: cfg.resolver_threads,
                ..ResolverConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;

        let shutdown = Arc::new(AtomicBool::new(false));
        let index = Arc::new(
            CollectionIndex::open(
                &cfg.data_dir.join("collections"),
                store.clone(),
                BackfillConfig {
                    host: cfg.backfill_host.clone(),
                    collections_file: cfg.backfill_collections_file.clone(),
                    page_size: cfg.backfill_page_size,
                    pause: cfg.backfill_page_pause,
                },
                shutdown.clone(),
            )
            .map_err(|e| e.to_string())?,
        );

        let hosts = Arc::new(Hosts::default());
        let mut after = 0;
        loop {
            let rows = store.list_hosts(after, 1000).map_err(|e| e.to_string())?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for r in &rows {
                hosts.insert(Arc::new(HostHandle::from_row(r)));
            }
        }
        let accounts =
            Accounts::new(store.clone(), cfg.account_cache_size).map_err(|e| e.to_string())?;
        for status in [TAKENDOWN, SUSPENDED] {
            let mut after = 0;
            loop {
                let rows = store
                    .list_accounts_by_status(status, None, after, 1000)
                    .map_err(|e| e.to_string())?;
                let Some(last) = rows.last() else { break };
                after = last.uid;
                for r in rows {
                    hub.hidden.hide(&r.did);
                }
            }
        }
        let pipeline = Pipeline::new(
            accounts,
            resolver,
            stream.sequencer.clone(),
            hosts.clone(),
            hub.hidden.clone(),
            PipelineConfig {
                verify_threads: cfg.verify_threads,
                ..PipelineConfig::new(cfg.lenient_sync_validation, cfg.optimistic_validation)
            },
            Some(index.writer.clone()),
        )
        .map_err(|e| format!("cannot start the identity gate and validation threads: {e}"))?;
        let upstream = Arc::new(Upstream {
            pipeline: pipeline.clone(),
            store: store.clone(),
            cfg: UpstreamConfig {
                stall_timeout: cfg.upstream_stall_timeout,
                ping_after: (cfg.upstream_stall_timeout / 3).max(Duration::from_millis(500)),
                idle_retry: cfg.idle_host_retry,
                base_rate: cfg.host_event_rate,
                ..UpstreamConfig::default()
            },
            shutdown: shutdown.clone(),
            dialer: Dialer::start(cfg.dial_threads, cfg.allow_insecure_hosts)
                .map_err(|e| format!("cannot start the dialer threads: {e}"))?,
        });
        let crawler = Arc::new(
            Crawler::new(
                store.clone(),
                hosts.clone(),
                upstream.clone(),
                CrawlConfig {
                    allow_insecure: cfg.allow_insecure_hosts,
                    default_account_limit: cfg.default_account_limit,
                    trusted_account_limit: cfg.trusted_account_limit,
                    trusted_domains: cfg.trusted_domains.clone(),
                    new_hosts_per_day: cfg.new_hosts_per_day,
                    disable_request_crawl: cfg.disable_request_crawl,
                },
            )
            .map_err(|e| e.to_string())?,
        );
        // Crash recovery: re-apply what the log holds beyond the stored account state.
        let flushed = store
            .get_meta(flusher::FLUSHED_SEQ)
            .map_err(|e| e.to_string())?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match pipeline.recover(&hub.log, flushed) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "recovery: re-applied {n} logged event(s) after seq {flushed} to account state"
            ),
            Err(e) => return Err(format!("cannot read the event log for recovery: {e}")),
        }
        let flusher = flusher::spawn(
            pipeline.clone(),
            store.clone(),
            hosts.clone(),
            hub.ring.clone(),
            Duration::from_secs(1),
            shutdown.clone(),
        )
        .map_err(|e| e.to_string())?;

        let mut passwords = cfg.admin_passwords.clone();
        if passwords.is_empty() {
            let pw = random_password();
            log::warn!("RELAY_ADMIN_PASSWORD is not set; this run's admin password is {pw}");
            passwords.push(pw);
        }
        let resync = Arc::new(Resync::new(
            ResyncConfig {
                per_host_rate: cfg.resync_rate,
                allow_insecure: cfg.allow_insecure_hosts,
            },
            hosts.clone(),
            store.clone(),
        ));
        resync
            .spawn(Arc::downgrade(&pipeline), shutdown.clone())
            .map_err(|e| format!("cannot start the resync threads: {e}"))?;
        pipeline.set_resync(resync.clone());
        let sources: Vec<String> = cfg
            .bootstrap_host
            .iter()
            .chain(&cfg.sibling_relays)
            .cloned()
            .collect();
        let discovery = (!sources.is_empty()).then(|| {
            Arc::new(Discovery::new(
                crawler.clone(),
                hosts.clone(),
                DiscoveryConfig {
                    sources,
                    interval: cfg.discovery_interval,
                    allow_insecure: cfg.allow_insecure_hosts,
                },
            ))
        });
        let alerts = Arc::new(Alerts::load(
            cfg.alerts.clone(),
            store.clone(),
            hosts.clone(),
            shutdown.clone(),
        )?);
        let coverage = Arc::new(Coverage::new(
            hosts.clone(),
            hub.clone(),
            store.clone(),
            discovery.clone(),
            Some(alerts.clone()),
            cfg.readiness.clone(),
        ));
        let ctx = Ctx {
            store: store.clone(),
            hub: hub.clone(),
            pipeline: pipeline.clone(),
            hosts: hosts.clone(),
            crawler: crawler.clone(),
            crawl_queue: CrawlQueue::start(crawler.clone())
                .map_err(|e| format!("cannot start the crawl check threads: {e}"))?,
            index: index.clone(),
            admin: AdminAuth::new(&passwords),
            coverage: coverage.clone(),
            alerts,
            discovery: discovery.clone(),
            siblings: Siblings::start(&cfg.sibling_relays, shutdown.clone())
                .map_err(|e| format!("cannot start the sibling forwarding threads: {e}"))?,
            resync,
        };
        let listener = TcpListener::bind(&cfg.api_listen).map_err(|e| {
            format!(
                "cannot listen on {} (RELAY_API_LISTEN): {e}",
                cfg.api_listen
            )
        })?;
        let jetstream = cfg.jetstream.then(|| {
            Arc::new(crate::jetstream::Jetstream::new(
                hub.clone(),
                cfg.max_jetstream_consumers,
            ))
        });
        let api_addr = Front::start(
            listener,
            hub.clone(),
            Some(ctx),
            jetstream,
            cfg.limits.clone(),
            shutdown.clone(),
        )
        .map_err(|e| format!("cannot start the API threads: {e}"))?;

        let metrics_addr = match prometheus {
            Some(h) if !cfg.metrics_listen.is_empty() => Some(
                crate::telemetry::serve(&cfg.metrics_listen, h)
                    .map_err(|e| format!("{e} (RELAY_METRICS_LISTEN)"))?,
            ),
            _ => None,
        };

        crate::ingest::upstream::spawn_watchdog(
            hosts.clone(),
            cfg.upstream_stall_timeout,
            shutdown.clone(),
        )
        .map_err(|e| format!("cannot start the upstream watchdog thread: {e}"))?;
        for h in hosts.all() {
            if h.status() != HostStatus::Banned {
                upstream.spawn(h);
            }
        }
        if let Some(d) = &discovery {
            d.spawn(shutdown.clone())
                .map_err(|e| format!("cannot start the discovery thread: {e}"))?;
        }
        coverage
            .spawn(shutdown.clone())
            .map_err(|e| format!("cannot start the coverage thread: {e}"))?;
        index.backfill.resume();
        crate::telemetry::gauges::spawn(
            crate::telemetry::gauges::Sources {
                hub: hub.clone(),
                hosts: hosts.clone(),
                pipeline: pipeline.clone(),
            },
            shutdown.clone(),
        )
        .map_err(|e| e.to_string())?;
        log::info!(
            "relay: API and firehose on {api_addr}, metrics {}",
            metrics_addr.map_or("disabled".to_owned(), |a| format!("on {a}"))
        );
        Ok(Relay {
            hub,
            pipeline,
            hosts,
            crawler,
            index,
            api_addr,
            metrics_addr,
            stream: Some(stream),
            shutdown,
            flusher: Some(flusher),
        })
    }

    /// The API and firehose address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The metrics address, when metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    // Test accessors: what a test needs to know about the relay that its ports do not say
    // precisely enough (exact positions, idleness). They read; they change nothing.

    /// The last sequenced seq.
    pub fn head_seq(&self) -> u64 {
        self.hub.ring.head()
    }

    /// No identity lookup under way and no event waiting for one.
    pub fn is_idle(&self) -> bool {
        self.pipeline.is_idle()
    }

    /// Accounts held in memory.
    pub fn accounts_in_memory(&self) -> usize {
        self.pipeline.accounts().len()
    }

    /// Downstream consumers connected now.
    pub fn consumer_count(&self) -> usize {
        self.hub.registry.count()
    }

    /// A host's live state, by hostname.
    pub fn host(&self, hostname: &str) -> Option<Arc<HostHandle>> {
        self.hosts.by_name(hostname)
    }

    /// The hostname the relay has an account on.
    pub fn account_host(&self, did: &str) -> Option<String> {
        let acct = self.pipeline.accounts().get(did).ok().flatten()?;
        Some(self.hosts.get(acct.host_id)?.hostname().to_owned())
    }

    /// Admin requestCrawl, in-process (tests use it to connect many hosts quickly).
    pub fn crawl(&self, hostname: &str) -> Result<(), String> {
        self.crawler
            .request_crawl(hostname, true)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Stops reading upstreams, flushes account state and cursors, syncs the log, and closes
    /// consumers.
    pub fn shutdown(mut self) {
        log::info!("relay: shutting down");
        self.shutdown.store(true, Ordering::SeqCst);
        // Wake the API acceptor so it sees the flag and releases the port.
        let _ = std::net::TcpStream::connect_timeout(&self.api_addr, Duration::from_secs(1));
        for h in self.hosts.all() {
            h.kill();
        }
        // Give host threads a moment to leave their read loops.
        for _ in 0..30 {
            if self.hosts.all().iter().all(|h| !h.running()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        self.index.stop();
        if let Some(s) = self.stream.take() {
            s.shutdown();
        }
        log::info!("relay: stopped");
    }
}
