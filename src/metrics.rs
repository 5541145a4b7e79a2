//! The service's own measurements, served as Prometheus text at `/metrics` (by
//! prometheus-client, not formatted by hand). What happens in the process is counted as it
//! happens (messages taken, PDFs read, HTTP requests); what the database holds (cases by
//! state, SLA, outbox, timers) and what the mail sources last saw is read when scraped, so
//! every instance reports the same figures for the shared database.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What became of a message a mail source took.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// `ingested`, `duplicate` (stored before) or `quarantined`.
    pub outcome: &'static str,
}

/// One route's answers.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route's pattern (`/cases/:reference`), never the path itself: one series a route.
    pub route: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: String,
}

/// The counters and histograms the process keeps; cheap to clone (each is shared).
#[derive(Clone)]
pub struct Metrics {
    messages: Family<MessageLabels, Counter>,
    extraction_seconds: Histogram,
    extraction_failures: Counter,
    http_seconds: Family<RouteLabels, Histogram>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            messages: Family::default(),
            extraction_seconds: Histogram::new(seconds_buckets()),
            extraction_failures: Counter::default(),
            http_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
        }
    }
}

impl Metrics {
    pub fn shared() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// A message a mail source took: stored now, stored before, or set aside.
    pub fn message(&self, outcome: &'static str) {
        self.messages.get_or_create(&MessageLabels { outcome }).inc();
    }

    /// A PDF read (in a worker or in process), and whether it could be read.
    pub fn extraction(&self, seconds: f64, failed: bool) {
        self.extraction_seconds.observe(seconds);
        if failed {
            self.extraction_failures.inc();
        }
    }

    /// An HTTP request answered.
    pub fn http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = RouteLabels {
            method: method.to_string(),
            route: route.to_string(),
            status: format!("{}xx", status / 100),
        };
        self.http_seconds.get_or_create(&labels).observe(seconds);
    }

    /// Registers the process's own metrics in `registry` (prefixed `countersign_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "messages",
            "Messages taken from the mail sources, by outcome",
            self.messages.clone(),
        );
        registry.register(
            "pdf_extraction_seconds",
            "Time to read one PDF form, in a worker process",
            self.extraction_seconds.clone(),
        );
        registry.register(
            "pdf_extraction_failures",
            "PDFs that could not be read (damaged, hostile, over a limit, timed out)",
            self.extraction_failures.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            self.http_seconds.clone(),
        );
    }
}

/// Figures read from the database and the mail sources at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (workflow, state, count) of open cases.
    pub open_cases: Vec<(String, String, i64)>,
    pub sla_at_risk: i64,
    pub sla_breached: i64,
    pub sla_paused: i64,
    /// (status, count) of outbound mail.
    pub outbox: Vec<(String, i64)>,
    pub pending_timers: i64,
    /// (source, seconds since its last successful poll, backlog at that poll).
    pub sources: Vec<(String, Option<f64>, i64)>,
    pub pool_size: i64,
    pub pool_idle: i64,
    /// Connections handed back to the pool since the process started.
    pub pool_returns: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaseLabels {
    workflow: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlaLabels {
    sla: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// Every metric as Prometheus text: the process's own and `snapshot`'s.
pub fn render(metrics: &Metrics, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("countersign");
    metrics.register(&mut registry);

    let cases = Family::<CaseLabels, Gauge>::default();
    for (workflow, state, count) in &snapshot.open_cases {
        cases
            .get_or_create(&CaseLabels {
                workflow: workflow.clone(),
                state: state.clone(),
            })
            .set(*count);
    }
    registry.register("open_cases", "Open cases, by workflow and state", cases);

    let sla = Family::<SlaLabels, Gauge>::default();
    for (label, count) in [
        ("at_risk", snapshot.sla_at_risk),
        ("breached", snapshot.sla_breached),
        ("paused", snapshot.sla_paused),
    ] {
        sla.get_or_create(&SlaLabels { sla: label }).set(count);
    }
    registry.register(
        "sla_cases",
        "Open cases whose SLA is at risk (due within a working day), breached, or paused",
        sla,
    );

    let outbox = Family::<StatusLabels, Gauge>::default();
    for (status, count) in &snapshot.outbox {
        outbox
            .get_or_create(&StatusLabels { status: status.clone() })
            .set(*count);
    }
    registry.register(
        "outbox_messages",
        "Outbound mail by status (pending is the backlog, failed the send failures)",
        outbox,
    );

    let timers = Gauge::<i64>::default();
    timers.set(snapshot.pending_timers);
    registry.register("pending_timers", "Durable timers armed and not yet fired", timers);

    let lag = Family::<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let backlog = Family::<SourceLabels, Gauge>::default();
    for (source, seconds, waiting) in &snapshot.sources {
        let labels = SourceLabels { source: source.clone() };
        if let Some(seconds) = seconds {
            lag.get_or_create(&labels).set(*seconds);
        }
        backlog.get_or_create(&labels).set(*waiting);
    }
    registry.register(
        "ingest_lag_seconds",
        "Seconds since each mail source last polled successfully",
        lag,
    );
    registry.register(
        "ingest_backlog_messages",
        "Messages waiting in each mail source at its last poll",
        backlog,
    );

    let pool = Family::<StatusLabels, Gauge>::default();
    pool.get_or_create(&StatusLabels { status: "open".into() })
        .set(snapshot.pool_size);
    pool.get_or_create(&StatusLabels { status: "idle".into() })
        .set(snapshot.pool_idle);
    registry.register(
        "db_pool_connections",
        "Database connections of this instance's pool: open, and idle among them",
        pool,
    );
    let returns = Counter::<u64>::default();
    returns.inc_by(snapshot.pool_returns);
    registry.register(
        "db_pool_returns",
        "Times a database connection was handed back to this instance's pool: one per piece of work that took one",
        returns,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_series_once_with_its_labels() {
        let metrics = Metrics::default();
        metrics.message("ingested");
        metrics.message("ingested");
        metrics.extraction(0.002, true);
        metrics.http("GET", "/cases/:reference", 200, 0.004);
        let snapshot = Snapshot {
            open_cases: vec![("primary_user_gp".into(), "validated".into(), 3)],
            sla_breached: 1,
            ..Snapshot::default()
        };
        let text = render(&metrics, &snapshot).unwrap();
        assert!(
            text.contains("countersign_messages_total{outcome=\"ingested\"} 2"),
            "{text}"
        );
        assert!(text.contains("countersign_pdf_extraction_failures_total 1"), "{text}");
        assert!(
            text.contains("countersign_open_cases{workflow=\"primary_user_gp\",state=\"validated\"} 3"),
            "{text}"
        );
        assert!(text.contains("countersign_sla_cases{sla=\"breached\"} 1"), "{text}");
        assert!(text.contains("route=\"/cases/:reference\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
