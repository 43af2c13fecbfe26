//! Prometheus metrics: one registry, created at start and shared by every part of the gateway.
//!
//! Counters that mirror stored facts (messages archived, duplicates, conflicts, bytes) are seeded
//! from the index at start, so they survive restarts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Journal reports received, by source (`smtp`, `pop3`), before deduplication.
    pub received: IntCounterVec,
    /// Originals stored as new archive entries, by source.
    pub archived: IntCounterVec,
    /// Arrivals whose original was already archived (recipients merged), by source.
    pub duplicates: IntCounterVec,
    /// Message-IDs reused by a different message (stored as variants).
    pub conflicts: IntCounter,
    /// Ingests that failed (the sender was told to retry), by source.
    pub ingest_errors: IntCounterVec,
    /// Seconds from a complete message to its durable index entry.
    pub ingest_duration: Histogram,
    /// Bytes of newly archived messages, by source.
    pub archive_bytes: IntCounterVec,
    /// SMTP sessions open now.
    pub smtp_sessions_active: IntGauge,
    /// SMTP connections, commands or messages refused, by reason.
    pub smtp_rejected: IntCounterVec,
    /// Failed SMTP AUTH attempts, by mechanism (`plain`, `login`).
    pub smtp_auth_failures: IntCounterVec,
    /// Messages in each journal mailbox at its last poll (the queue on the server).
    pub pop3_queue: IntGaugeVec,
    /// Unix time of each collector's last successful run.
    pub pop3_last_success: IntGaugeVec,
    /// POP3 collection errors, by collector and kind.
    pub pop3_errors: IntCounterVec,
    /// 1 when the collector polls, 0 when inactive or retired.
    pub collector_active: IntGaugeVec,
    /// On a node of a shared archive: 1 while this node holds the collector's lease (it polls
    /// the mailbox), 0 while another node does or it is inactive; no series on a single
    /// gateway. Set when the lease is taken, renewed, lost or released.
    pub collector_lease_held: IntGaugeVec,
    /// Build information (always 1), labelled with the version.
    pub build_info: IntGaugeVec,
    /// Web console logins refused (wrong admin token).
    pub console_logins_refused: IntCounter,
    /// Arrivals whose envelope hit a bound of the parser (a line or value cut at the window, a
    /// header section not read to its end), by source: their recipients may be incomplete.
    pub envelope_truncated: IntCounterVec,
    /// Arrivals that were an NDR around a whole journal report, recovered and archived under the
    /// original's key, by source.
    pub ndr_recovered: IntCounterVec,
    /// Arrivals that were an NDR returning only a journal report's headers, by source: the
    /// original is not in the archive (the NDR is, under its own key) and must be fetched from
    /// Exchange another way.
    pub ndr_unrecoverable: IntCounterVec,
    /// Unix time the served TLS certificate expires (its notAfter), by certificate (`smtp`, and
    /// `http` when `[http] tls_cert` is set); set at start from the loaded certificate.
    pub tls_cert_expiry: IntGaugeVec,
    /// Wrong admin tokens presented, by where (`api`, `console`).
    pub admin_auth_failures: IntCounterVec,
    /// Attempts refused with 429 because their address presented too many wrong tokens, by
    /// where (`api`, `console`).
    pub admin_auth_throttled: IntCounterVec,
    /// Bytes free on the archive's filesystem (for the gateway), at the last check.
    pub archive_free_bytes: IntGauge,
    /// The free space the archive keeps (`[storage] reserve`, in bytes): below it no new mail
    /// is taken.
    pub archive_reserve_bytes: IntGauge,
    /// Messages waiting in each forward target's queue (not failed).
    pub forward_queue: IntGaugeVec,
    /// Age in seconds of the oldest waiting entry of each forward target (0 when empty).
    pub forward_oldest_age: IntGaugeVec,
    /// Queue entries marked failed (5xx, or `max_age` passed), per target.
    pub forward_failed_queued: IntGaugeVec,
    /// Messages the downstream accepted, per target.
    pub forward_delivered: IntCounterVec,
    /// Delivery attempts that failed temporarily (4xx, connection, TLS), per target.
    pub forward_deferred: IntCounterVec,
    /// Entries given up (5xx, or `max_age` passed), per target.
    pub forward_failed: IntCounterVec,
    /// Seconds of one successful delivery (the SMTP transaction, streaming included), per target.
    pub forward_duration: HistogramVec,
    /// Entries in the tamper-evident ledger (the head's sequence number plus one), set at each
    /// scrape.
    pub ledger_entries: IntGauge,
    /// The ledger's head (always 1), labelled with its `seq` and `hash`, set at each scrape:
    /// what an operator records elsewhere (`journal-gateway ledger head`).
    pub ledger_head: IntGaugeVec,
}

const NS: &str = "journal_gateway";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    ///
    /// # Panics
    /// Never in practice: metric names are fixed and unique (a duplicate would be a bug).
    #[must_use]
    pub fn new() -> Metrics {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
                    .expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help).namespace(NS), labels)
                    .expect("valid metric"),
            )
        };
        let m = Metrics {
            received: counter_vec(
                "messages_received_total",
                "Messages received, before deduplication.",
                &["source"],
            ),
            archived: counter_vec(
                "messages_archived_total",
                "Messages stored in the archive (new keys).",
                &["source"],
            ),
            duplicates: counter_vec(
                "messages_duplicate_total",
                "Messages whose original was already archived (recipients unioned).",
                &["source"],
            ),
            conflicts: reg(
                &registry,
                IntCounter::with_opts(
                    Opts::new(
                        "messageid_conflicts_total",
                        "Message-IDs reused by a different message (stored as variants).",
                    )
                    .namespace(NS),
                )
                .expect("valid metric"),
            ),
            ingest_errors: counter_vec(
                "ingest_errors_total",
                "Ingests that failed (answered with a temporary error).",
                &["source"],
            ),
            ingest_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ingest_duration_seconds",
                        "Time from a complete message to a durable archive entry.",
                    )
                    .namespace(NS)
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            archive_bytes: counter_vec(
                "archive_bytes_total",
                "Bytes written to the archive.",
                &["source"],
            ),
            smtp_sessions_active: reg(
                &registry,
                IntGauge::with_opts(
                    Opts::new("smtp_sessions_active", "Open SMTP sessions.").namespace(NS),
                )
                .expect("valid metric"),
            ),
            smtp_rejected: counter_vec(
                "smtp_rejected_total",
                "SMTP commands or connections refused, by reason.",
                &["reason"],
            ),
            smtp_auth_failures: counter_vec(
                "smtp_auth_failures_total",
                "Failed SMTP AUTH attempts (wrong user name or password), by mechanism.",
                &["mechanism"],
            ),
            pop3_queue: gauge_vec(
                "pop3_queue_messages",
                "Messages in the POP3 journal mailbox at the last poll.",
                &["collector"],
            ),
            pop3_last_success: gauge_vec(
                "pop3_last_success_timestamp_seconds",
                "Unix time of the last collection run that ended without error.",
                &["collector"],
            ),
            pop3_errors: counter_vec(
                "pop3_errors_total",
                "POP3 collection errors, by kind.",
                &["collector", "kind"],
            ),
            collector_active: gauge_vec(
                "collector_active",
                "1 when the collector polls, 0 when inactive or retired.",
                &["collector"],
            ),
            collector_lease_held: gauge_vec(
                "collector_lease_held",
                "On a node of a shared archive: 1 while this node holds the collector's lease (it polls), 0 otherwise.",
                &["collector"],
            ),
            build_info: gauge_vec("build_info", "Build information (always 1).", &["version"]),
            console_logins_refused: reg(
                &registry,
                IntCounter::with_opts(
                    Opts::new(
                        "console_logins_refused_total",
                        "Web console logins refused (wrong admin token).",
                    )
                    .namespace(NS),
                )
                .expect("valid metric"),
            ),
            envelope_truncated: counter_vec(
                "envelope_truncated_total",
                "Arrivals whose journal envelope hit a parser bound (recipients may be incomplete).",
                &["source"],
            ),
            ndr_recovered: counter_vec(
                "ndr_recovered_total",
                "Arrivals that were an NDR around a journal report, unwrapped and archived as that report.",
                &["source"],
            ),
            ndr_unrecoverable: counter_vec(
                "ndr_unrecoverable_total",
                "Arrivals that were an NDR returning only a journal report's headers (original not recoverable).",
                &["source"],
            ),
            tls_cert_expiry: gauge_vec(
                "tls_cert_expiry_timestamp_seconds",
                "Unix time the served TLS certificate expires (notAfter).",
                &["certificate"],
            ),
            admin_auth_failures: counter_vec(
                "admin_auth_failures_total",
                "Wrong admin tokens presented (API calls and console logins).",
                &["via"],
            ),
            admin_auth_throttled: counter_vec(
                "admin_auth_throttled_total",
                "Admin attempts refused with 429: too many wrong tokens from their address.",
                &["via"],
            ),
            archive_free_bytes: reg(
                &registry,
                IntGauge::with_opts(
                    Opts::new(
                        "archive_free_bytes",
                        "Bytes free on the archive's filesystem at the last check.",
                    )
                    .namespace(NS),
                )
                .expect("valid metric"),
            ),
            archive_reserve_bytes: reg(
                &registry,
                IntGauge::with_opts(
                    Opts::new(
                        "archive_reserve_bytes",
                        "Free space the archive keeps: below it SMTP answers 452 and collectors pause.",
                    )
                    .namespace(NS),
                )
                .expect("valid metric"),
            ),
            forward_queue: gauge_vec(
                "forward_queue_messages",
                "Messages waiting in the forward target's queue (failed ones excluded).",
                &["target"],
            ),
            forward_oldest_age: gauge_vec(
                "forward_oldest_age_seconds",
                "Age of the oldest waiting entry of the forward target's queue (0 when empty).",
                &["target"],
            ),
            forward_failed_queued: gauge_vec(
                "forward_failed_messages",
                "Queue entries marked failed (5xx or max_age), kept until retried.",
                &["target"],
            ),
            forward_delivered: counter_vec(
                "forward_delivered_total",
                "Messages the downstream archive accepted.",
                &["target"],
            ),
            forward_deferred: counter_vec(
                "forward_deferred_total",
                "Delivery attempts that failed temporarily (4xx, connection or TLS failure).",
                &["target"],
            ),
            forward_failed: counter_vec(
                "forward_failed_total",
                "Queue entries given up (5xx, or max_age passed).",
                &["target"],
            ),
            forward_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "forward_duration_seconds",
                        "Time of one successful delivery to the downstream.",
                    )
                    .namespace(NS)
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0,
                    ]),
                    &["target"],
                )
                .expect("valid metric"),
            ),
            ledger_entries: reg(
                &registry,
                IntGauge::with_opts(
                    Opts::new(
                        "ledger_entries",
                        "Entries in the tamper-evident ingest ledger (hash chain).",
                    )
                    .namespace(NS),
                )
                .expect("valid metric"),
            ),
            ledger_head: gauge_vec(
                "ledger_head_info",
                "The ingest ledger's head (always 1): its sequence number and SHA-256.",
                &["seq", "hash"],
            ),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for mechanism in ["plain", "login"] {
            m.smtp_auth_failures.with_label_values(&[mechanism]);
        }
        for via in ["api", "console"] {
            m.admin_auth_failures.with_label_values(&[via]);
            m.admin_auth_throttled.with_label_values(&[via]);
        }
        for source in ["smtp", "pop3"] {
            m.received.with_label_values(&[source]);
            m.archived.with_label_values(&[source]);
            m.duplicates.with_label_values(&[source]);
            m.ingest_errors.with_label_values(&[source]);
            m.archive_bytes.with_label_values(&[source]);
            m.envelope_truncated.with_label_values(&[source]);
            m.ndr_recovered.with_label_values(&[source]);
            m.ndr_unrecoverable.with_label_values(&[source]);
        }
        m
    }

    /// Sets the ledger gauges from `status` (the head label replaced, never accumulated).
    pub fn set_ledger(&self, status: &crate::index::LedgerStatus) {
        self.ledger_entries
            .set(i64::try_from(status.entries).unwrap_or(i64::MAX));
        self.ledger_head.reset();
        if let Some(head) = status.head {
            self.ledger_head
                .with_label_values(&[head.seq.to_string(), head.hash.to_string()])
                .set(1);
        }
    }

    /// The text exposition format, for `GET /metrics`.
    ///
    /// # Panics
    /// Never in practice: the text encoder writes UTF-8 into memory.
    #[must_use]
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition format is UTF-8")
    }
}
