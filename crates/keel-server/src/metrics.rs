//! Prometheus metrics: requests, errors, latency histograms, tokens and cost per alias,
//! provider and model, rendered in the text exposition format. Labels never hold secrets.

use std::collections::{BTreeMap, HashMap};
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

/// What one (endpoint, alias, provider) has recorded.
#[derive(Debug, Default)]
struct RouteSeries {
    by_status: Vec<(u16, u64)>,
    by_error: Vec<(&'static str, u64)>,
    latency: Histogram,
    ttft: Histogram,
}

/// What one (alias, provider, model) has used.
#[derive(Debug, Default)]
struct ModelSeries {
    input: u64,
    output: u64,
    cached: u64,
    cost: Option<f64>,
}

/// What one virtual key has done (its id and team label it; never the key).
#[derive(Debug, Default)]
struct KeySeries {
    team: String,
    by_status: Vec<(u16, u64)>,
    tokens: u64,
    cost: f64,
}

/// The series, found on the hot path by borrowed lookups: a call allocates only the first
/// time its labels are seen. Rendering turns them into labelled families.
#[derive(Debug, Default)]
struct Inner {
    /// endpoint → alias → provider.
    routes: HashMap<&'static str, HashMap<String, HashMap<String, RouteSeries>>>,
    overhead: HashMap<&'static str, Histogram>,
    /// alias → provider → model.
    models: HashMap<String, HashMap<String, HashMap<String, ModelSeries>>>,
    /// key id → what calls made with it did.
    keys: HashMap<String, KeySeries>,
}

/// The entry for `key`, made the first time only.
fn slot<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

fn bump<K: PartialEq>(counts: &mut Vec<(K, u64)>, key: K) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

/// What one finished call adds to the metrics.
#[derive(Debug)]
pub struct CallMetrics<'a> {
    pub endpoint: &'static str,
    pub alias: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub overhead: Duration,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: Option<f64>,
    /// The virtual key's id and team, when the call came with one.
    pub key: Option<(&'a str, &'a str)>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn record(&self, call: &CallMetrics<'_>) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = &mut *inner;
        let route = slot(slot(inner.routes.entry(call.endpoint).or_default(), call.alias), call.provider);
        bump(&mut route.by_status, call.status);
        if let Some(code) = call.error_code {
            bump(&mut route.by_error, code);
        }
        route.latency.observe(call.latency.as_secs_f64());
        if let Some(ttft) = call.ttft {
            route.ttft.observe(ttft.as_secs_f64());
        }
        inner.overhead.entry(call.endpoint).or_default().observe(call.overhead.as_secs_f64());
        if let Some((id, team)) = call.key {
            let series = slot(&mut inner.keys, id);
            if series.team.is_empty() {
                series.team = team.to_string();
            }
            bump(&mut series.by_status, call.status);
            series.tokens += call.input_tokens + call.output_tokens;
            series.cost += call.cost_usd.unwrap_or(0.0);
        }
        if call.input_tokens + call.output_tokens + call.cached_tokens > 0 || call.cost_usd.is_some() {
            let model = slot(slot(slot(&mut inner.models, call.alias), call.provider), call.model);
            model.input += call.input_tokens;
            model.output += call.output_tokens;
            model.cached += call.cached_tokens;
            if let Some(cost) = call.cost_usd {
                *model.cost.get_or_insert(0.0) += cost;
            }
        }
    }

    /// The Prometheus text exposition of every metric, plus live route gauges.
    pub fn render(&self, router: &Router) -> String {
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut requests, mut errors, mut latency, mut ttft) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (endpoint, aliases) in &inner.routes {
            for (alias, providers) in aliases {
                for (provider, series) in providers {
                    let route: Labels =
                        vec![("endpoint", endpoint.to_string()), ("alias", alias.clone()), ("provider", provider.clone())];
                    for (status, n) in &series.by_status {
                        let mut labels = route.clone();
                        labels.push(("status", status.to_string()));
                        requests.insert(labels, *n);
                    }
                    for (code, n) in &series.by_error {
                        let mut labels = route.clone();
                        labels.push(("code", code.to_string()));
                        errors.insert(labels, *n);
                    }
                    if series.latency.count > 0 {
                        latency.insert(route.clone(), series.latency.clone());
                    }
                    if series.ttft.count > 0 {
                        ttft.insert(route, series.ttft.clone());
                    }
                }
            }
        }
        let overhead: BTreeMap<Labels, Histogram> =
            inner.overhead.iter().map(|(endpoint, hist)| (vec![("endpoint", endpoint.to_string())], hist.clone())).collect();
        let (mut tokens, mut cost) = (BTreeMap::new(), BTreeMap::new());
        for (alias, providers) in &inner.models {
            for (provider, models) in providers {
                for (model, series) in models {
                    let labels: Labels = vec![("alias", alias.clone()), ("provider", provider.clone()), ("model", model.clone())];
                    for (kind, n) in [("input", series.input), ("output", series.output), ("cached_input", series.cached)] {
                        if n > 0 {
                            let mut labels = labels.clone();
                            labels.push(("kind", kind.to_string()));
                            tokens.insert(labels, n);
                        }
                    }
                    if let Some(usd) = series.cost {
                        cost.insert(labels, format!("{usd}"));
                    }
                }
            }
        }
        let (mut key_requests, mut key_tokens, mut key_cost) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (id, series) in &inner.keys {
            let labels: Labels = vec![("key_id", id.clone()), ("team", series.team.clone())];
            for (status, n) in &series.by_status {
                let mut labels = labels.clone();
                labels.push(("status", status.to_string()));
                key_requests.insert(labels, *n);
            }
            key_tokens.insert(labels.clone(), series.tokens);
            key_cost.insert(labels, format!("{}", series.cost));
        }
        let mut out = String::new();
        counter(&mut out, "keel_requests_total", "Requests served, by endpoint, alias, provider and status.", &requests);
        counter(&mut out, "keel_errors_total", "Requests that ended in an error, by error code.", &errors);
        histogram(&mut out, "keel_request_duration_seconds", "Time from request to full response.", &latency);
        histogram(&mut out, "keel_time_to_first_token_seconds", "Time to the first streamed event.", &ttft);
        histogram(&mut out, "keel_overhead_seconds", "keel's own time per request, upstream waits excluded.", &overhead);
        counter(&mut out, "keel_tokens_total", "Tokens by alias, provider, model and kind.", &tokens);
        family(&mut out, "keel_cost_usd_total", "counter", "Cost in US dollars by alias, provider and model.", &cost);
        counter(&mut out, "keel_key_requests_total", "Requests by virtual key id, team and status.", &key_requests);
        counter(&mut out, "keel_key_tokens_total", "Input and output tokens by virtual key id and team.", &key_tokens);
        family(&mut out, "keel_key_cost_usd_total", "counter", "Cost in US dollars by virtual key id and team.", &key_cost);
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
