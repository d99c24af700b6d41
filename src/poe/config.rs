//! How the client reaches Poe and how hard it tries: the `[poe]` section of the daemon's
//! configuration, owned here so the client does not depend on the daemon's config.

use std::time::Duration;

use serde::Deserialize;

use super::Transport;

/// How to reach Poe and how hard to try.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct PoeConfig {
    pub base_url: String,
    pub upload_url: String,
    pub default_transport: Transport,
    pub requests_per_minute: u32,
    pub connect_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub retry_budget_secs: u64,
    pub max_event_bytes: usize,
    pub max_answer_bytes: usize,
    pub models: Vec<ModelConfig>,
}

impl Default for PoeConfig {
    fn default() -> Self {
        PoeConfig {
            base_url: "https://api.poe.com".into(),
            upload_url: "https://www.quora.com/poe_api/file_upload_3RD_PARTY_POST".into(),
            default_transport: Transport::Native,
            requests_per_minute: 500,
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            request_timeout_secs: 1800,
            max_attempts: 4,
            initial_backoff_ms: 250,
            max_backoff_ms: 10_000,
            retry_budget_secs: 60,
            max_event_bytes: 4 * 1024 * 1024,
            max_answer_bytes: 8 * 1024 * 1024,
            models: Vec::new(),
        }
    }
}

impl PoeConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
    pub fn retry_budget(&self) -> Duration {
        Duration::from_secs(self.retry_budget_secs)
    }

    /// The settings for `model` (names are case-insensitive on Poe), if the config has any.
    pub fn model(&self, model: &str) -> Option<&ModelConfig> {
        self.models
            .iter()
            .find(|entry| entry.name.eq_ignore_ascii_case(model))
    }

    /// The transport to use for `model`.
    pub fn transport_for(&self, model: &str) -> Transport {
        self.model(model)
            .and_then(|entry| entry.transport)
            .unwrap_or(self.default_transport)
    }
}

/// Per-model settings: which transport to use and custom parameters sent with every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a model's settings (a table with `name`)"
)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub transport: Option<Transport>,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Points one request costs, for models Poe gives no price for (image, video bots).
    #[serde(default)]
    pub points_per_request: Option<i64>,
}
