//! A chat platform that lives in memory: it records every call with its time, keeps each
//! message's current text, and can refuse calls the way real platforms do (injected 429s and
//! failures, or a per-channel rate limit it enforces itself). Tests and the benchmark run the
//! core against it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{ChannelKey, Limits, MessageId, OutMessage, Outbound, PlatformError, RateScope};
use crate::core::pacing::{Permit, RequestRate};
use crate::core::render::split::{LengthUnit, measure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Send,
    Edit,
    Typing,
}

/// One call the core made.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub kind: CallKind,
    pub channel: ChannelKey,
    pub message: Option<MessageId>,
    pub text: String,
    /// Sent as still being written (more edits follow).
    pub live: bool,
    /// Whether the platform accepted it.
    pub accepted: bool,
}

/// A message as the channel shows it now.
#[derive(Debug, Clone)]
pub struct ShownMessage {
    pub id: MessageId,
    pub channel: ChannelKey,
    pub text: String,
    pub reply_to: Option<String>,
    pub private: bool,
    pub edits: u32,
    pub sent_at: Instant,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    messages: Vec<ShownMessage>,
    injected: VecDeque<PlatformError>,
    channel_rate: Option<(usize, Duration)>,
    recent: HashMap<ChannelKey, VecDeque<Instant>>,
}

/// Called with every call as it happens.
pub type CallObserver = Arc<dyn Fn(&Call) + Send + Sync>;

/// The in-memory platform. Clones share state.
#[derive(Clone)]
pub struct MemoryPlatform {
    limits: Limits,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    id_prefix: String,
    observer: Option<CallObserver>,
}

impl MemoryPlatform {
    pub fn new(limits: Limits) -> Self {
        MemoryPlatform {
            limits,
            state: Arc::new(Mutex::new(State::default())),
            changed: Arc::new(Notify::new()),
            id_prefix: String::new(),
            observer: None,
        }
    }

    /// Message ids start with `prefix`, so two platforms (two processes) never reuse one.
    pub fn with_id_prefix(mut self, prefix: &str) -> Self {
        self.id_prefix = prefix.to_owned();
        self
    }

    /// Reports every call to `observer` as it happens.
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Registers a message that exists from before (sent by an earlier process).
    pub fn adopt(&self, channel: &ChannelKey, id: MessageId, text: &str) {
        self.lock().messages.push(ShownMessage {
            id,
            channel: channel.clone(),
            text: text.to_owned(),
            reply_to: None,
            private: false,
            edits: 0,
            sent_at: Instant::now(),
        });
    }

    fn record(&self, state: &mut State, call: Call) {
        if let Some(observer) = &self.observer {
            observer(&call);
        }
        state.calls.push(call);
    }

    /// Discord-like limits: 2,000 characters, one edit a second.
    pub fn discord_like() -> Self {
        Self::new(Limits {
            max_message_len: 2000,
            length_unit: LengthUnit::Chars,
            min_edit_interval: Duration::from_millis(1000),
            min_channel_interval: Duration::from_millis(1000),
            max_edits_per_message: None,
            typing_interval: Duration::from_secs(8),
            requests: Some(RequestRate {
                per_second: 40.0,
                burst: 5.0,
            }),
            marks_live: false,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `count` sends or edits fail with `error`.
    pub fn inject(&self, error: PlatformError, count: usize) {
        let mut state = self.lock();
        for _ in 0..count {
            state.injected.push_back(error.clone());
        }
    }

    /// Refuses a send or edit when the channel already had `calls` of them within `window`
    /// (like Discord's per-channel limits), answering with the time until a slot frees up.
    pub fn enforce_channel_rate(&self, calls: usize, window: Duration) {
        self.lock().channel_rate = Some((calls, window));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn messages(&self, channel: &ChannelKey) -> Vec<ShownMessage> {
        self.lock()
            .messages
            .iter()
            .filter(|message| &message.channel == channel)
            .cloned()
            .collect()
    }

    pub fn all_messages(&self) -> Vec<ShownMessage> {
        self.lock().messages.clone()
    }

    /// How many sends and edits were refused.
    pub fn refused(&self) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|call| !call.accepted)
            .count()
    }

    /// Waits until `condition` holds for the messages shown, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&[ShownMessage]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if condition(&self.lock().messages) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.lock().messages);
            }
        }
    }

    fn admit(
        &self,
        state: &mut State,
        channel: &ChannelKey,
        now: Instant,
    ) -> Result<(), PlatformError> {
        if let Some(error) = state.injected.pop_front() {
            return Err(error);
        }
        if let Some((calls, window)) = state.channel_rate {
            let recent = state.recent.entry(channel.clone()).or_default();
            while recent
                .front()
                .is_some_and(|at| now.duration_since(*at) >= window)
            {
                recent.pop_front();
            }
            if recent.len() >= calls {
                let retry_after = recent
                    .front()
                    .map(|oldest| window.saturating_sub(now.duration_since(*oldest)))
                    .unwrap_or(window);
                return Err(PlatformError::RateLimited {
                    retry_after,
                    scope: RateScope::Channel,
                });
            }
            recent.push_back(now);
        }
        Ok(())
    }

    fn check_length(&self, text: &str) -> Result<(), PlatformError> {
        let length = measure(text, self.limits.length_unit);
        if length > self.limits.max_message_len {
            return Err(PlatformError::Failed {
                detail: format!(
                    "message of {length} exceeds {}",
                    self.limits.max_message_len
                ),
            });
        }
        if text.is_empty() {
            return Err(PlatformError::Failed {
                detail: "empty message".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Outbound for MemoryPlatform {
    fn limits(&self) -> Limits {
        self.limits.clone()
    }

    async fn send(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: OutMessage,
    ) -> Result<MessageId, PlatformError> {
        let now = Instant::now();
        let mut state = self.lock();
        let result = self
            .check_length(&message.text)
            .and_then(|()| self.admit(&mut state, channel, now));
        let id = MessageId(format!("{}m{}", self.id_prefix, state.messages.len() + 1));
        let call = Call {
            at: now,
            kind: CallKind::Send,
            channel: channel.clone(),
            message: result.as_ref().ok().map(|()| id.clone()),
            text: message.text.clone(),
            live: message.live,
            accepted: result.is_ok(),
        };
        self.record(&mut state, call);
        result?;
        state.messages.push(ShownMessage {
            id: id.clone(),
            channel: channel.clone(),
            text: message.text,
            // As the channel shows it: only the first part is drawn as a reply.
            reply_to: message.reply_to.filter(|_| !message.continuation),
            private: message.private,
            edits: 0,
            sent_at: now,
        });
        drop(state);
        self.changed.notify_waiters();
        Ok(id)
    }

    async fn edit(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        id: &MessageId,
        text: &str,
        live: bool,
    ) -> Result<(), PlatformError> {
        let now = Instant::now();
        let mut state = self.lock();
        let exists = state.messages.iter().any(|message| &message.id == id);
        let result = if exists {
            self.check_length(text)
                .and_then(|()| self.admit(&mut state, channel, now))
        } else {
            Err(PlatformError::Failed {
                detail: format!("no message {}", id.0),
            })
        };
        let call = Call {
            at: now,
            kind: CallKind::Edit,
            channel: channel.clone(),
            message: Some(id.clone()),
            text: text.to_owned(),
            live,
            accepted: result.is_ok(),
        };
        self.record(&mut state, call);
        result?;
        if let Some(message) = state.messages.iter_mut().find(|message| &message.id == id) {
            message.text = text.to_owned();
            message.edits += 1;
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn typing(&self, _permit: Permit, channel: &ChannelKey) -> Result<(), PlatformError> {
        let call = Call {
            at: Instant::now(),
            kind: CallKind::Typing,
            channel: channel.clone(),
            message: None,
            text: String::new(),
            live: false,
            accepted: true,
        };
        let mut state = self.lock();
        self.record(&mut state, call);
        Ok(())
    }
}
