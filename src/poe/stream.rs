//! One answer being streamed from Poe, with retries that stay invisible to the caller.
//!
//! A [`ReplyStream`] connects lazily, decodes either transport into [`PoeEvent`]s, and on a
//! retryable failure reconnects and starts over, but only while no text has been handed to
//! the caller: after that a retry could show the user the same words twice, so the error is
//! returned instead and the caller keeps the partial answer.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::{Instant, timeout, timeout_at};

use super::PoeClient;
use super::error::{self, PoeError, TimeoutPhase};
use super::event::PoeEvent;
use super::native::{self, NativeDecoder};
use super::openai::{self, OpenAiDecoder};
use super::request::{ChatRequest, Transport};
use super::retry::Retries;
use super::sse::{SseDecoder, SseEvent};

/// Largest non-streamed answer read into memory.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Largest error body read; the rest is not needed to classify the error.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The events of one answer. Call [`ReplyStream::next`] until it returns `None`.
pub struct ReplyStream {
    client: PoeClient,
    request: ChatRequest,
    transport: Transport,
    body: Option<Vec<u8>>,
    live: Option<LiveResponse>,
    retries: Retries,
    deadline: Instant,
    pending: VecDeque<PoeEvent>,
    pending_error: Option<PoeError>,
    output_seen: bool,
    answer_bytes: usize,
    finished: bool,
    retry_causes: Vec<&'static str>,
}

struct LiveResponse {
    response: reqwest::Response,
    sse: SseDecoder,
    protocol: Protocol,
}

enum Protocol {
    Native(NativeDecoder),
    OpenAi(OpenAiDecoder),
}

impl ReplyStream {
    pub(super) fn new(client: PoeClient, request: ChatRequest) -> Self {
        let config = client.config();
        let transport = request
            .transport
            .unwrap_or_else(|| config.transport_for(&request.model));
        let deadline = Instant::now() + config.request_timeout();
        let retries = Retries::new(client.retry_policy());
        ReplyStream {
            client,
            request,
            transport,
            body: None,
            live: None,
            retries,
            deadline,
            pending: VecDeque::new(),
            pending_error: None,
            output_seen: false,
            answer_bytes: 0,
            finished: false,
            retry_causes: Vec::new(),
        }
    }

    /// Why the request was retried, one [`PoeError::kind`] per retry.
    pub fn retry_causes(&self) -> &[&'static str] {
        &self.retry_causes
    }

    /// The transport this answer travels on.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// How many times the request was sent (1 when no retry was needed).
    pub fn attempts(&self) -> u32 {
        self.retries.attempts()
    }

    /// The next event, an error (after which the stream is over), or `None` at the end.
    pub async fn next(&mut self) -> Option<Result<PoeEvent, PoeError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if event.is_output() && !self.output_seen {
                    self.output_seen = true;
                    // No retry can come now: what only a retry would need is let go, so a
                    // long conversation's context is not held for the whole answer.
                    self.body = None;
                    self.request.messages = Vec::new();
                }
                return Some(Ok(event));
            }
            let error = match self.pending_error.take() {
                Some(error) => error,
                None if self.finished => return None,
                None => match self.step().await {
                    Ok(()) => continue,
                    Err(error) => error,
                },
            };
            let error = error.scrubbed(self.client.key());
            self.live = None;
            if !self.output_seen
                && !self.finished
                && let Some(delay) = self.retries.delay_after(&error)
                && Instant::now() + delay < self.deadline
            {
                tracing::warn!(
                    model = %self.request.model,
                    attempt = self.retries.attempts(),
                    delay_ms = delay.as_millis() as u64,
                    error = %error,
                    "Poe request failed; retrying"
                );
                self.retry_causes.push(error.kind());
                tokio::time::sleep(delay).await;
                continue;
            }
            self.finished = true;
            return Some(Err(error));
        }
    }

    /// Does one unit of work: prepare, connect, or read one chunk.
    async fn step(&mut self) -> Result<(), PoeError> {
        if Instant::now() >= self.deadline {
            return Err(PoeError::Timeout {
                phase: TimeoutPhase::Total,
            });
        }
        if self.body.is_none() {
            // Uploads retry on their own; once they gave up, the answer has failed.
            let prepared = timeout_at(self.deadline, self.prepare())
                .await
                .unwrap_or(Err(PoeError::Timeout {
                    phase: TimeoutPhase::Total,
                }));
            match prepared {
                Ok(body) => self.body = Some(body),
                Err(error) => {
                    self.finished = true;
                    return Err(error);
                }
            }
        }
        match self.live.as_mut() {
            None => self.connect().await,
            Some(_) => self.read_chunk().await,
        }
    }

    fn parameters(&self) -> Map<String, Value> {
        let mut parameters = self
            .client
            .config()
            .model(&self.request.model)
            .map(|model| model.parameters.clone())
            .unwrap_or_default();
        for (name, value) in &self.request.parameters {
            parameters.insert(name.clone(), value.clone());
        }
        parameters
    }

    async fn prepare(&self) -> Result<Vec<u8>, PoeError> {
        let parameters = self.parameters();
        let body = match self.transport {
            Transport::Native => {
                let mut uploaded = Vec::with_capacity(self.request.messages.len());
                for message in &self.request.messages {
                    let mut files = Vec::with_capacity(message.attachments.len());
                    for file in &message.attachments {
                        files.push(self.client.upload(file).await?);
                    }
                    uploaded.push(files);
                }
                native::request_body(&self.request, &parameters, &uploaded)
            }
            Transport::OpenAi => openai::request_body(&self.request, &parameters)?,
        };
        serde_json::to_vec(&body)
            .map_err(|err| PoeError::protocol(format!("cannot encode the request: {err}"), false))
    }

    fn streaming(&self) -> bool {
        self.transport == Transport::Native || self.request.streaming
    }

    async fn connect(&mut self) -> Result<(), PoeError> {
        let client = self.client.clone();
        timeout_at(self.deadline, client.limiter().acquire())
            .await
            .map_err(|_| PoeError::Timeout {
                phase: TimeoutPhase::Total,
            })?;
        self.retries.begin_attempt();
        let url = match self.transport {
            Transport::Native => client.bot_url(&self.request.model)?,
            Transport::OpenAi => {
                reqwest::Url::parse(&client.url("/v1/chat/completions")).map_err(|err| {
                    PoeError::protocol(format!("poe.base_url is not a URL: {err}"), false)
                })?
            }
        };
        let body = self.body.clone().unwrap_or_default();
        let send = client
            .http()
            .post(url)
            .bearer_auth(client.key().expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                if self.streaming() {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .header(reqwest::header::CACHE_CONTROL, "no-store")
            .body(body)
            .send();
        let wait = if self.streaming() {
            self.idle_wait()
        } else {
            self.deadline.saturating_duration_since(Instant::now())
        };
        let response = match timeout(wait, send).await {
            Err(_) => return Err(self.timeout_error()),
            Ok(Err(err)) => return Err(transport_error(&err)),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let headers = response.headers().clone();
            let body = self.error_body(response).await;
            return Err(error::from_http(
                status,
                &headers,
                &body,
                Some(&self.request.model),
                client.key(),
            ));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !self.streaming() {
            let wait = self.deadline.saturating_duration_since(Instant::now());
            let body = read_limited(response, MAX_BODY_BYTES, wait, self.deadline).await?;
            let events = openai::decode_completion(&body, &self.request.model, client.key())?;
            self.pending.extend(events);
            self.finished = true;
            return Ok(());
        }
        if !content_type.starts_with("text/event-stream") {
            let body = self.error_body(response).await;
            if let Ok(error::ErrorBody {
                error: Some(object),
            }) = serde_json::from_slice(&body)
            {
                return Err(error::from_stream_error(
                    &object,
                    &self.request.model,
                    client.key(),
                ));
            }
            return Err(PoeError::protocol(
                format!(
                    "expected an event stream, got `{}`",
                    content_type.chars().take(100).collect::<String>()
                ),
                true,
            ));
        }
        let protocol = match self.transport {
            Transport::Native => Protocol::Native(NativeDecoder::default()),
            Transport::OpenAi => Protocol::OpenAi(OpenAiDecoder::default()),
        };
        self.live = Some(LiveResponse {
            response,
            sse: SseDecoder::new(client.config().max_event_bytes),
            protocol,
        });
        Ok(())
    }

    /// The start of an error body: enough to classify the error, never the whole stream.
    async fn error_body(&self, response: reqwest::Response) -> Vec<u8> {
        read_limited(
            response,
            MAX_ERROR_BODY_BYTES,
            self.idle_wait(),
            self.deadline,
        )
        .await
        .unwrap_or_default()
    }

    fn idle_wait(&self) -> Duration {
        self.client
            .config()
            .idle_timeout()
            .min(self.deadline.saturating_duration_since(Instant::now()))
    }

    fn timeout_error(&self) -> PoeError {
        let phase = if Instant::now() >= self.deadline {
            TimeoutPhase::Total
        } else {
            TimeoutPhase::Idle
        };
        PoeError::Timeout { phase }
    }

    async fn read_chunk(&mut self) -> Result<(), PoeError> {
        let wait = self.idle_wait();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let chunk = match timeout(wait, live.response.chunk()).await {
            Err(_) => return Err(self.timeout_error()),
            Ok(Err(err)) => return Err(transport_error(&err)),
            Ok(Ok(chunk)) => chunk,
        };
        let Some(chunk) = chunk else {
            let result = match &live.protocol {
                Protocol::Native(decoder) => decoder.on_eof(),
                Protocol::OpenAi(decoder) => decoder.on_eof(),
            };
            self.live = None;
            self.finished = result.is_ok();
            return result;
        };
        let mut events: Vec<SseEvent> = Vec::new();
        let fed = live.sse.feed(&chunk, &mut events);
        let key = self.client.key();
        let mut decoded = Vec::with_capacity(events.len());
        for event in &events {
            let result = match &mut live.protocol {
                Protocol::Native(decoder) => decoder.on_event(event, key, &mut decoded),
                Protocol::OpenAi(decoder) => {
                    decoder.on_event(event, &self.request.model, key, &mut decoded)
                }
            };
            let done = match &live.protocol {
                Protocol::Native(decoder) => decoder.is_done(),
                Protocol::OpenAi(decoder) => decoder.is_done(),
            };
            if let Err(error) = result {
                self.pending.extend(decoded);
                self.pending_error = Some(error);
                self.live = None;
                return Ok(());
            }
            if done {
                // Anything after the end marker is not part of the answer.
                self.pending.extend(decoded);
                self.live = None;
                self.finished = true;
                return Ok(());
            }
        }
        self.answer_bytes += decoded
            .iter()
            .map(|event| match event {
                PoeEvent::Text(text) | PoeEvent::Replace(text) => text.len(),
                _ => 0,
            })
            .sum::<usize>();
        self.pending.extend(decoded);
        let max_answer = self.client.config().max_answer_bytes;
        if self.answer_bytes > max_answer {
            self.pending_error = Some(PoeError::protocol(
                format!("the answer is longer than {max_answer} bytes"),
                false,
            ));
            self.live = None;
            return Ok(());
        }
        if let Err(too_large) = fed {
            self.pending_error = Some(PoeError::protocol(too_large.to_string(), false));
            self.live = None;
        }
        Ok(())
    }
}

/// Maps a reqwest failure (connect, reset, body) to an error. The URL in reqwest's message
/// holds no secret (the key travels in a header).
pub(crate) fn transport_error(err: &reqwest::Error) -> PoeError {
    if err.is_timeout() {
        return PoeError::Timeout {
            phase: TimeoutPhase::Connect,
        };
    }
    if err.is_connect() {
        return PoeError::Unavailable {
            detail: "cannot connect to Poe".into(),
            retry_after: None,
            retryable: true,
        };
    }
    PoeError::protocol(format!("the connection broke: {err}"), true)
}

/// Reads a whole response body: at most `max_bytes`, with at most `idle` between chunks and
/// nothing after `deadline`.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    max_bytes: usize,
    idle: Duration,
    deadline: Instant,
) -> Result<Vec<u8>, PoeError> {
    let mut body = Vec::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let chunk = timeout(wait, response.chunk())
            .await
            .map_err(|_| PoeError::Timeout {
                phase: if Instant::now() >= deadline {
                    TimeoutPhase::Total
                } else {
                    TimeoutPhase::Idle
                },
            })?
            .map_err(|err| transport_error(&err))?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > max_bytes {
            return Err(PoeError::protocol(
                format!("the response is larger than {max_bytes} bytes"),
                false,
            ));
        }
        body.extend_from_slice(&chunk);
    }
}
