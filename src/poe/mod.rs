//! The Poe client: turns a request into a stream of events or a typed error.
//!
//! It knows nothing of chats. It owns both transports (native bot protocol and
//! OpenAI-compatible), the usage and model-list endpoints, file upload, retries with backoff,
//! the client-side rate limit shared by every conversation, and timeouts. The API key lives
//! here and nowhere else; it never appears in an error or a log line.

mod config;
mod error;
mod event;
mod lenient;
mod models;
mod native;
mod openai;
mod rate_limit;
mod request;
mod retry;
mod sse;
mod stream;
mod upload;
mod usage;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::time::timeout;

pub use config::{ModelConfig, PoeConfig};
pub use error::{PoeError, TimeoutPhase};
pub use event::{FinishReason, OutputFile, PoeEvent, Usage};
pub use models::{ModelInfo, ModelList, ParameterSpec, Pricing};
pub use native::Attachment;
pub use request::{ChatMessage, ChatRequest, FileSource, InputFile, Role, Transport};
pub use retry::RetryPolicy;
pub use sse::{SseDecoder, SseEvent};
pub use stream::ReplyStream;
pub use usage::{Balance, HistoryEntry, HistoryPage};

use crate::secret::Secret;
use rate_limit::RateLimiter;

/// A handle to Poe. Cheap to clone; clones share the connection pool and the rate limit.
#[derive(Clone)]
pub struct PoeClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    key: Secret,
    config: PoeConfig,
    limiter: RateLimiter,
}

impl std::fmt::Debug for PoeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoeClient")
            .field("base_url", &self.inner.config.base_url)
            .field("key", &self.inner.key)
            .finish()
    }
}

impl PoeClient {
    pub fn new(config: PoeConfig, key: Secret) -> Result<Self, PoeError> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            .user_agent(concat!("poe-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                PoeError::protocol(format!("cannot build the HTTP client: {err}"), false)
            })?;
        let limiter = RateLimiter::per_minute(config.requests_per_minute);
        Ok(PoeClient {
            inner: Arc::new(ClientInner {
                http,
                key,
                config,
                limiter,
            }),
        })
    }

    /// Starts an answer. Nothing is sent until the first [`ReplyStream::next`].
    pub fn stream(&self, request: ChatRequest) -> ReplyStream {
        ReplyStream::new(self.clone(), request)
    }

    /// Poe's model list (`GET /v1/models`).
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, PoeError> {
        let list: ModelList = self.get_json("/v1/models", &[]).await?;
        Ok(list.data)
    }

    /// The account's point balance (`GET /usage/current_balance`).
    pub async fn balance(&self) -> Result<Balance, PoeError> {
        self.get_json("/usage/current_balance", &[]).await
    }

    /// One page of the points history, newest first. `starting_after` is the last
    /// `query_id` of the previous page.
    pub async fn points_history(
        &self,
        limit: u32,
        starting_after: Option<&str>,
    ) -> Result<HistoryPage, PoeError> {
        let mut query = vec![("limit", limit.clamp(1, 100).to_string())];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        self.get_json("/usage/points_history", &query).await
    }

    /// Every history entry created at or after `since_us` (microseconds), walking pages
    /// until an older entry, the end, or `max_pages`.
    pub async fn points_history_since(
        &self,
        since_us: i64,
        max_pages: usize,
    ) -> Result<Vec<HistoryEntry>, PoeError> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let page = self.points_history(100, cursor.as_deref()).await?;
            let mut reached_older = false;
            for entry in page.data {
                if entry.creation_time.is_some_and(|at| at < since_us) {
                    reached_older = true;
                    break;
                }
                cursor = Some(entry.query_id.clone());
                entries.push(entry);
            }
            if reached_older || !page.has_more || cursor.is_none() {
                break;
            }
        }
        Ok(entries)
    }

    pub(crate) fn config(&self) -> &PoeConfig {
        &self.inner.config
    }

    pub(crate) fn key(&self) -> &Secret {
        &self.inner.key
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.config.base_url.trim_end_matches('/'))
    }

    /// `{base}/bot/{model}`, with the model name as one encoded path segment, so a name
    /// like `../v1/models` or `a?b` cannot change where the request goes.
    pub(crate) fn bot_url(&self, model: &str) -> Result<reqwest::Url, PoeError> {
        let mut url = reqwest::Url::parse(&self.url("/bot/")).map_err(|err| {
            PoeError::protocol(format!("poe.base_url is not a URL: {err}"), false)
        })?;
        url.path_segments_mut()
            .map_err(|()| PoeError::protocol("poe.base_url cannot carry a path", false))?
            .pop_if_empty()
            .push(model);
        Ok(url)
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        let config = &self.inner.config;
        RetryPolicy {
            max_attempts: config.max_attempts,
            initial_backoff: config.initial_backoff(),
            max_backoff: config.max_backoff(),
            budget: config.retry_budget(),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy gives up.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
    ) -> Result<T, PoeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, PoeError>>,
    {
        let mut retries = retry::Retries::new(self.retry_policy());
        loop {
            self.limiter().acquire().await;
            retries.begin_attempt();
            let result = timeout(self.config().request_timeout(), attempt())
                .await
                .unwrap_or(Err(PoeError::Timeout {
                    phase: TimeoutPhase::Total,
                }));
            match result.map_err(|error| error.scrubbed(self.key())) {
                Ok(value) => return Ok(value),
                Err(error) => match retries.delay_after(&error) {
                    Some(delay) => {
                        tracing::warn!(what, attempt = retries.attempts(), error = %error, "retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(error),
                },
            }
        }
    }

    /// Sends a one-shot request (anything but a chat stream) and returns its body, or the
    /// typed error for an unsuccessful status.
    pub(crate) async fn send_simple(
        &self,
        request: reqwest::RequestBuilder,
        max_bytes: usize,
    ) -> Result<Vec<u8>, PoeError> {
        let idle = self.config().idle_timeout();
        let response = timeout(idle, request.send())
            .await
            .map_err(|_| PoeError::Timeout {
                phase: TimeoutPhase::Idle,
            })?
            .map_err(|err| stream::transport_error(&err))?;
        let status = response.status();
        let headers = response.headers().clone();
        let deadline = tokio::time::Instant::now() + self.config().request_timeout();
        let body = stream::read_limited(response, max_bytes, idle, deadline).await?;
        if !status.is_success() {
            return Err(error::from_http(
                status.as_u16(),
                &headers,
                &body,
                None,
                self.key(),
            ));
        }
        Ok(body)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, PoeError> {
        let url = self.url(path);
        self.with_retries(path, || async {
            let request = self
                .http()
                .get(&url)
                .query(query)
                .bearer_auth(self.key().expose());
            let body = self.send_simple(request, 64 * 1024 * 1024).await?;
            serde_json::from_slice(&body).map_err(|err| {
                PoeError::protocol(format!("unexpected answer from {path}: {err}"), false)
            })
        })
        .await
    }
}
