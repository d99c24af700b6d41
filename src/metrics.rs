//! The daemon's counters, gauges and histograms, and their Prometheus text rendering.
//!
//! A small registry of our own rather than a metrics crate: the set of series is fixed and
//! small, and the text format (version 0.0.4) is a page of code. The core and the adapters
//! record into one shared [`Metrics`]; `/metrics` renders it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every series: name, type and help, in the order `/metrics` lists them.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "poe_relay_requests_total",
        "counter",
        "Conversation turns sent to Poe, by model and outcome.",
    ),
    (
        "poe_relay_tokens_streamed_total",
        "counter",
        "Answer tokens streamed to chats (Poe's count where it gives one, else characters / 4).",
    ),
    (
        "poe_relay_time_to_first_token_seconds",
        "histogram",
        "From asking Poe to the first answer text, by model.",
    ),
    (
        "poe_relay_reply_duration_seconds",
        "histogram",
        "From asking Poe to the final edit, by model.",
    ),
    (
        "poe_relay_edits_total",
        "counter",
        "Message edits sent to chat platforms.",
    ),
    (
        "poe_relay_platform_rate_limited_total",
        "counter",
        "429 answers from chat platforms, by scope (bot: the whole bot or account; channel: one channel or route).",
    ),
    (
        "poe_relay_platform_requests_total",
        "counter",
        "Calls to chat platforms, by kind (send, edit, typing, file, and the adapters' own such as join).",
    ),
    (
        "poe_relay_platform_typing_dropped_total",
        "counter",
        "Typing notices dropped because the platform's request budget was busy.",
    ),
    (
        "poe_relay_platform_budget_wait_seconds",
        "histogram",
        "Time calls waited for the platform's bot-wide request budget.",
    ),
    (
        "poe_relay_platform_budget_tokens",
        "gauge",
        "Calls the platform's request budget allows at once right now.",
    ),
    (
        "poe_relay_platform_budget_rate",
        "gauge",
        "Calls per second the platform's request budget allows now (lowered after a bot-wide 429, climbing back while calls succeed).",
    ),
    (
        "poe_relay_poe_retries_total",
        "counter",
        "Poe requests retried, by the error that caused the retry.",
    ),
    (
        "poe_relay_points_total",
        "counter",
        "Budget points by stage (reserved, settled, reconciled) and model.",
    ),
    (
        "poe_relay_refusals_total",
        "counter",
        "Questions answered with a refusal instead of asking Poe, by reason.",
    ),
    (
        "poe_relay_active_conversations",
        "gauge",
        "Replies being streamed now.",
    ),
    (
        "poe_relay_queue_depth",
        "gauge",
        "Conversation turns waiting for their channel or a free slot.",
    ),
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Clone)]
struct Histogram {
    /// Count per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    values: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The shared registry. Cheap to call from anywhere; one short lock per update.
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, name: &'static str, labels: Labels, amount: f64) {
        *self.lock().values.entry((name, labels)).or_default() += amount;
    }

    fn set(&self, name: &'static str, labels: Labels, value: f64) {
        self.lock().values.insert((name, labels), value);
    }

    fn observe(&self, name: &'static str, labels: Labels, value: Duration) {
        let seconds = value.as_secs_f64();
        let mut registry = self.lock();
        let histogram = registry.histograms.entry((name, labels)).or_default();
        if histogram.counts.is_empty() {
            histogram.counts = vec![0; BUCKETS.len() + 1];
        }
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        histogram.counts[bucket] += 1;
        histogram.sum += seconds;
        histogram.count += 1;
    }

    pub fn request(&self, model: &str, outcome: &str) {
        self.add(
            "poe_relay_requests_total",
            vec![("model", model.to_owned()), ("outcome", outcome.to_owned())],
            1.0,
        );
    }

    pub fn tokens_streamed(&self, model: &str, tokens: u64) {
        self.add(
            "poe_relay_tokens_streamed_total",
            vec![("model", model.to_owned())],
            tokens as f64,
        );
    }

    pub fn time_to_first_token(&self, model: &str, elapsed: Duration) {
        self.observe(
            "poe_relay_time_to_first_token_seconds",
            vec![("model", model.to_owned())],
            elapsed,
        );
    }

    pub fn reply_duration(&self, model: &str, elapsed: Duration) {
        self.observe(
            "poe_relay_reply_duration_seconds",
            vec![("model", model.to_owned())],
            elapsed,
        );
    }

    pub fn edits(&self, platform: &str, edits: u32) {
        self.add(
            "poe_relay_edits_total",
            vec![("platform", platform.to_owned())],
            f64::from(edits),
        );
    }

    /// `scope` is `bot` or `channel`.
    pub fn platform_rate_limited(&self, platform: &str, scope: &'static str, count: u32) {
        self.add(
            "poe_relay_platform_rate_limited_total",
            vec![
                ("platform", platform.to_owned()),
                ("scope", scope.to_owned()),
            ],
            f64::from(count),
        );
    }

    pub fn platform_request(&self, platform: &str, kind: &'static str) {
        self.add(
            "poe_relay_platform_requests_total",
            vec![("platform", platform.to_owned()), ("kind", kind.to_owned())],
            1.0,
        );
    }

    pub fn typing_dropped(&self, platform: &str) {
        self.add(
            "poe_relay_platform_typing_dropped_total",
            vec![("platform", platform.to_owned())],
            1.0,
        );
    }

    pub fn budget_wait(&self, platform: &str, waited: Duration) {
        self.observe(
            "poe_relay_platform_budget_wait_seconds",
            vec![("platform", platform.to_owned())],
            waited,
        );
    }

    pub fn budget_level(&self, platform: &str, tokens: f64, per_second: f64) {
        let labels = vec![("platform", platform.to_owned())];
        self.set("poe_relay_platform_budget_tokens", labels.clone(), tokens);
        self.set("poe_relay_platform_budget_rate", labels, per_second);
    }

    pub fn poe_retry(&self, cause: &str) {
        self.add(
            "poe_relay_poe_retries_total",
            vec![("cause", cause.to_owned())],
            1.0,
        );
    }

    /// `stage` is `reserved`, `settled` or `reconciled`.
    pub fn points(&self, stage: &'static str, model: &str, points: i64) {
        self.add(
            "poe_relay_points_total",
            vec![("stage", stage.to_owned()), ("model", model.to_owned())],
            points as f64,
        );
    }

    /// `reason` is `over_budget`, `question_too_long`, `file_too_large`, `store_error`,
    /// `not_allowed` (the access lists), `bot_loop` or `flood`.
    pub fn refusal(&self, reason: &'static str) {
        self.add(
            "poe_relay_refusals_total",
            vec![("reason", reason.to_owned())],
            1.0,
        );
    }

    pub fn set_active_conversations(&self, count: usize) {
        self.set("poe_relay_active_conversations", Vec::new(), count as f64);
    }

    pub fn set_queue_depth(&self, count: usize) {
        self.set("poe_relay_queue_depth", Vec::new(), count as f64);
    }

    /// The Prometheus text exposition of everything recorded so far. Gauges are always
    /// listed; other series appear once they have a value.
    pub fn render(&self) -> String {
        let registry = self.lock();
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if *kind == "histogram" {
                for ((_, labels), histogram) in
                    registry.histograms.iter().filter(|((n, _), _)| n == name)
                {
                    let mut cumulative = 0;
                    for (index, count) in histogram.counts.iter().enumerate() {
                        cumulative += count;
                        let bound = BUCKETS
                            .get(index)
                            .map(|bound| bound.to_string())
                            .unwrap_or_else(|| "+Inf".into());
                        let mut with_le = labels.clone();
                        with_le.push(("le", bound));
                        let _ =
                            writeln!(out, "{name}_bucket{} {cumulative}", render_labels(&with_le));
                    }
                    let labels = render_labels(labels);
                    let _ = writeln!(out, "{name}_sum{labels} {}", histogram.sum);
                    let _ = writeln!(out, "{name}_count{labels} {}", histogram.count);
                }
                continue;
            }
            let mut any = false;
            for ((_, labels), value) in registry.values.iter().filter(|((n, _), _)| n == name) {
                any = true;
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
            }
            // The budget gauges are per platform: listed once a platform is.
            if !any && *kind == "gauge" && !name.starts_with("poe_relay_platform_") {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

fn render_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(key, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{key}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_gauges_render_as_prometheus_text() {
        let metrics = Metrics::default();
        metrics.request("GPT-5", "ok");
        metrics.request("GPT-5", "ok");
        metrics.request("bad\"model\n", "timeout");
        metrics.time_to_first_token("GPT-5", Duration::from_millis(300));
        metrics.time_to_first_token("GPT-5", Duration::from_secs(500));
        metrics.set_active_conversations(3);
        let text = metrics.render();
        assert!(text.contains("poe_relay_requests_total{model=\"GPT-5\",outcome=\"ok\"} 2\n"));
        assert!(text.contains(
            "poe_relay_requests_total{model=\"bad\\\"model\\n\",outcome=\"timeout\"} 1\n"
        ));
        assert!(text.contains(
            "poe_relay_time_to_first_token_seconds_bucket{model=\"GPT-5\",le=\"0.25\"} 0\n"
        ));
        assert!(text.contains(
            "poe_relay_time_to_first_token_seconds_bucket{model=\"GPT-5\",le=\"0.5\"} 1\n"
        ));
        assert!(text.contains(
            "poe_relay_time_to_first_token_seconds_bucket{model=\"GPT-5\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("poe_relay_time_to_first_token_seconds_count{model=\"GPT-5\"} 2\n"));
        assert!(
            text.contains("poe_relay_time_to_first_token_seconds_sum{model=\"GPT-5\"} 500.3\n")
        );
        assert!(text.contains("poe_relay_active_conversations 3\n"));
        assert!(text.contains("poe_relay_queue_depth 0\n"));
        assert!(text.contains("# TYPE poe_relay_reply_duration_seconds histogram\n"));
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
