//! Prometheus metrics of the control plane, served on `GET /metrics`. The registry is
//! owned by the server (no process-global state), so tests can run servers side by side.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub action: String,
    /// `ok`, or the AWS error code returned.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

/// What the plan appliers did: batches committed, and batches whose compare failed (a host
/// changed under them) and whose jobs were decided again. Conflicts should be rare; a
/// steady stream means the appliers are working from stale host records.
#[derive(Clone, Debug, Default)]
pub struct PlacementCounters {
    pub batches_committed: Counter,
    pub batches_conflicted: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<ActionLabels, Histogram>,
    pub agents_connected: Gauge,
}

impl Metrics {
    pub fn new(placement: &PlacementCounters) -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        registry.register(
            "placement_batches_committed",
            "Placement batches the plan appliers committed",
            placement.batches_committed.clone(),
        );
        registry.register(
            "placement_batch_conflicts",
            "Placement batches that conflicted with a newer host record and were decided again",
            placement.batches_conflicted.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests by action and outcome",
            requests.clone(),
        );
        let latency = Family::<ActionLabels, Histogram>::new_with_constructor(|| {
            // 50 us .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "api_request_duration_seconds",
            "API request latency by action",
            latency.clone(),
        );
        let agents_connected = Gauge::default();
        registry.register(
            "agents_connected",
            "Agents that polled within the disconnect timeout",
            agents_connected.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            agents_connected,
        }
    }

    pub fn observe(&self, action: &str, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&PlacementCounters::default())
    }
}
