//! Prometheus metrics: requests, errors, latency histograms, tokens and cost per alias,
//! provider and model, rendered in the text exposition format. Labels never hold secrets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use keel_llm::Router;

const BUCKETS: &[f64] = &[
    0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        if let Some(idx) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.counts[idx] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<Labels, u64>,
    errors: BTreeMap<Labels, u64>,
    latency: BTreeMap<Labels, Histogram>,
    ttft: BTreeMap<Labels, Histogram>,
    overhead: BTreeMap<Labels, Histogram>,
    tokens: BTreeMap<Labels, u64>,
    cost: BTreeMap<Labels, f64>,
}

/// What one finished call adds to the metrics.
#[derive(Debug)]
pub struct CallMetrics<'a> {
    pub endpoint: &'a str,
    pub alias: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub status: u16,
    pub error_code: Option<&'a str>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub overhead: Duration,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn record(&self, call: &CallMetrics<'_>) {
        let route: Labels = vec![
            ("endpoint", call.endpoint.to_string()),
            ("alias", call.alias.to_string()),
            ("provider", call.provider.to_string()),
        ];
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut with_status = route.clone();
        with_status.push(("status", call.status.to_string()));
        *inner.requests.entry(with_status).or_default() += 1;
        if let Some(code) = call.error_code {
            let mut labels = route.clone();
            labels.push(("code", code.to_string()));
            *inner.errors.entry(labels).or_default() += 1;
        }
        inner.latency.entry(route.clone()).or_default().observe(call.latency.as_secs_f64());
        if let Some(ttft) = call.ttft {
            inner.ttft.entry(route.clone()).or_default().observe(ttft.as_secs_f64());
        }
        inner.overhead.entry(vec![("endpoint", call.endpoint.to_string())]).or_default().observe(call.overhead.as_secs_f64());
        let model: Labels = vec![
            ("alias", call.alias.to_string()),
            ("provider", call.provider.to_string()),
            ("model", call.model.to_string()),
        ];
        for (kind, n) in [("input", call.input_tokens), ("output", call.output_tokens), ("cached_input", call.cached_tokens)] {
            if n > 0 {
                let mut labels = model.clone();
                labels.push(("kind", kind.to_string()));
                *inner.tokens.entry(labels).or_default() += n;
            }
        }
        if let Some(cost) = call.cost_usd {
            *inner.cost.entry(model).or_default() += cost;
        }
    }

    /// The Prometheus text exposition of every metric, plus live route gauges.
    pub fn render(&self, router: &Router) -> String {
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        counter(&mut out, "keel_requests_total", "Requests served, by endpoint, alias, provider and status.", &inner.requests);
        counter(&mut out, "keel_errors_total", "Requests that ended in an error, by error code.", &inner.errors);
        histogram(&mut out, "keel_request_duration_seconds", "Time from request to full response.", &inner.latency);
        histogram(&mut out, "keel_time_to_first_token_seconds", "Time to the first streamed event.", &inner.ttft);
        histogram(&mut out, "keel_overhead_seconds", "keel's own time per request, upstream waits excluded.", &inner.overhead);
        counter(&mut out, "keel_tokens_total", "Tokens by alias, provider, model and kind.", &inner.tokens);
        let cost: BTreeMap<Labels, String> = inner.cost.iter().map(|(labels, cost)| (labels.clone(), format!("{cost}"))).collect();
        family(&mut out, "keel_cost_usd_total", "counter", "Cost in US dollars by alias, provider and model.", &cost);
        let mut in_flight = BTreeMap::new();
        let mut ewma = BTreeMap::new();
        for alias in router.aliases() {
            for route in &alias.routes {
                let labels: Labels = vec![
                    ("alias", alias.name.clone()),
                    ("provider", route.provider.name.clone()),
                    ("model", route.model.clone()),
                ];
                in_flight.insert(labels.clone(), route.in_flight().to_string());
                ewma.insert(labels, format!("{}", route.ewma().as_secs_f64()));
            }
        }
        family(&mut out, "keel_route_in_flight", "gauge", "Calls in flight per route.", &in_flight);
        family(&mut out, "keel_route_latency_ewma_seconds", "gauge", "Latency EWMA per route (0 before any success).", &ewma);
        out
    }
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
    if let Some((key, value)) = extra {
        parts.push(format!("{key}=\"{value}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, values: &BTreeMap<Labels, u64>) {
    let values: BTreeMap<Labels, String> = values.iter().map(|(labels, n)| (labels.clone(), n.to_string())).collect();
    family(out, name, "counter", help, &values);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, values: &BTreeMap<Labels, String>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in values {
        let _ = writeln!(out, "{name}{} {value}", label_text(labels, None));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, values: &BTreeMap<Labels, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, hist) in values {
        let mut cumulative = 0;
        for (idx, bound) in BUCKETS.iter().enumerate() {
            cumulative += hist.counts.get(idx).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{} {cumulative}", label_text(labels, Some(("le", format!("{bound}")))));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", label_text(labels, Some(("le", "+Inf".into()))), hist.count);
        let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), hist.sum);
        let _ = writeln!(out, "{name}_count{} {}", label_text(labels, None), hist.count);
    }
}
