//! A chat platform that lives in memory: it records every call with its time, keeps each
//! message's current text, and can refuse calls the way real platforms do: injected 429s and
//! failures, and the limits it enforces itself, per channel and for the whole bot (Discord's
//! 50 requests in any second, Synapse's default message limiter of 0.2 events a second with
//! 10 at once). Tests and the benchmark run the core against it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::core::boundary::{
    ChannelKey, Control, ControlStyle, Limits, MessageId, OutMessage, Outbound, PlannedCall,
    PlatformError, RateScope,
};
use crate::core::pacing::{Permit, RequestRate};
use crate::core::render::split::{LengthUnit, measure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Send,
    Edit,
    Typing,
    /// Buttons set, a reaction made or taken back.
    Controls,
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
    /// The controls it offers: its buttons (a message still being written carries stop, as
    /// on Discord), or the bot's reactions on it.
    pub controls: Vec<Control>,
}

/// A homeserver's limit on the account, as Synapse keeps it: a bucket that drains at `rate`
/// and takes an event while it holds fewer than `burst`.
struct AccountLimit {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Calls are recorded (the benchmark keeps only what its observer takes).
    forget_calls: bool,
    messages: Vec<ShownMessage>,
    injected: VecDeque<PlatformError>,
    channel_rate: Option<(usize, Duration)>,
    recent: HashMap<ChannelKey, VecDeque<Instant>>,
    global_rate: Option<(usize, Duration)>,
    global_recent: VecDeque<Instant>,
    account: Option<AccountLimit>,
    limited_bot: usize,
    limited_channel: usize,
    /// Reactions the bot made: reaction id → (message, control).
    reactions: HashMap<MessageId, (MessageId, Control)>,
    reactions_made: usize,
}

/// Called with every call as it happens.
pub type CallObserver = Arc<dyn Fn(&Call) + Send + Sync>;

/// The in-memory platform. Clones share state.
#[derive(Clone)]
pub struct MemoryPlatform {
    limits: Limits,
    /// Typing does not count against the bot's limit (a homeserver's message limiter).
    typing_exempt: bool,
    control_style: ControlStyle,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    id_prefix: String,
    observer: Option<CallObserver>,
}

impl MemoryPlatform {
    pub fn new(limits: Limits) -> Self {
        MemoryPlatform {
            limits,
            typing_exempt: false,
            control_style: ControlStyle::None,
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

    /// Shows controls as `style` does (none by default).
    pub fn with_control_style(mut self, style: ControlStyle) -> Self {
        self.control_style = style;
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
            controls: Vec::new(),
        });
    }

    /// Keeps no record of calls (the observer still sees each one): for runs too long to
    /// keep them all.
    pub fn forgetting_calls(self) -> Self {
        self.lock().forget_calls = true;
        self
    }

    fn record(&self, state: &mut State, call: Call) {
        if let Some(observer) = &self.observer {
            observer(&call);
        }
        if !state.forget_calls {
            state.calls.push(call);
        }
    }

    /// Discord as the adapter describes it (2,000 characters, 1.2 s between writes in a
    /// channel, 40 requests a second over all), enforcing Discord's limits: at most 50 calls
    /// in any second over every channel (a 429 for the whole bot), and 5 writes per 5 s in a
    /// channel.
    pub fn discord() -> Self {
        let platform = Self::new(Limits {
            max_message_len: 2000,
            length_unit: LengthUnit::Chars,
            min_edit_interval: Duration::from_millis(1200),
            min_channel_interval: Duration::from_millis(1200),
            max_edits_per_message: None,
            typing_interval: Duration::from_secs(8),
            requests: Some(RequestRate {
                per_second: 40.0,
                burst: 5.0,
            }),
            marks_live: false,
        });
        platform.enforce_channel_rate(5, Duration::from_secs(5));
        platform.enforce_global_rate(50, Duration::from_secs(1));
        platform
    }

    /// A Matrix account as the adapter describes it (8,000 bytes, an edit a second, 60 edits
    /// a message, the default `matrix.max_sends_per_second`), on a homeserver that keeps
    /// Synapse's default `rc_message`: 0.2 events a second with 10 at once, typing not
    /// counted.
    pub fn synapse_default() -> Self {
        let mut platform = Self::new(Limits {
            max_message_len: 8000,
            length_unit: LengthUnit::Utf8Bytes,
            min_edit_interval: Duration::from_millis(1000),
            min_channel_interval: Duration::from_millis(250),
            max_edits_per_message: Some(60),
            typing_interval: Duration::from_secs(3),
            requests: crate::config::MatrixConfig::default().send_rate(),
            marks_live: true,
        });
        platform.typing_exempt = true;
        platform.enforce_account_rate(0.2, 10.0);
        platform
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

    /// Refuses any call, typing included, when `calls` were made within `window` over every
    /// channel (Discord's global limit), with a 429 for the whole bot.
    pub fn enforce_global_rate(&self, calls: usize, window: Duration) {
        self.lock().global_rate = Some((calls, window));
    }

    /// Refuses a send or edit the way Synapse's message limiter does: `rate` events a second
    /// on average, `burst` at once, for the whole account.
    pub fn enforce_account_rate(&self, rate: f64, burst: f64) {
        self.lock().account = Some(AccountLimit {
            rate,
            burst,
            level: 0.0,
            at: Instant::now(),
        });
    }

    /// 429s answered for the whole bot, and for one channel.
    pub fn rate_limited(&self) -> (usize, usize) {
        let state = self.lock();
        (state.limited_bot, state.limited_channel)
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

    /// Whether the platform takes a call now; a typing notice only meets the global limit.
    fn admit(
        &self,
        state: &mut State,
        channel: &ChannelKey,
        now: Instant,
        typing: bool,
    ) -> Result<(), PlatformError> {
        if !typing && let Some(error) = state.injected.pop_front() {
            return Err(error);
        }
        if let Err(err) = self.admit_limits(state, channel, now, typing) {
            match err {
                PlatformError::RateLimited {
                    scope: RateScope::Bot,
                    ..
                } => state.limited_bot += 1,
                _ => state.limited_channel += 1,
            }
            return Err(err);
        }
        Ok(())
    }

    fn admit_limits(
        &self,
        state: &mut State,
        channel: &ChannelKey,
        now: Instant,
        typing: bool,
    ) -> Result<(), PlatformError> {
        // Every limit is checked before any counts the call: a refused call uses nothing.
        if let Some((calls, window)) = state.global_rate
            && let Some(retry_after) = window_full(&mut state.global_recent, calls, window, now)
        {
            return Err(PlatformError::RateLimited {
                retry_after,
                scope: RateScope::Bot,
            });
        }
        if !typing && let Some(account) = &mut state.account {
            let drained = now.duration_since(account.at).as_secs_f64() * account.rate;
            account.level = (account.level - drained).max(0.0);
            account.at = now;
            if account.level + 1.0 > account.burst {
                let retry_after = (account.level + 1.0 - account.burst) / account.rate;
                return Err(PlatformError::RateLimited {
                    retry_after: Duration::from_secs_f64(retry_after),
                    scope: RateScope::Bot,
                });
            }
        }
        if !typing && let Some((calls, window)) = state.channel_rate {
            let recent = state.recent.entry(channel.clone()).or_default();
            if let Some(retry_after) = window_full(recent, calls, window, now) {
                return Err(PlatformError::RateLimited {
                    retry_after,
                    scope: RateScope::Channel,
                });
            }
            recent.push_back(now);
        }
        if state.global_rate.is_some() {
            state.global_recent.push_back(now);
        }
        if !typing && let Some(account) = &mut state.account {
            account.level += 1.0;
        }
        Ok(())
    }

    /// The buttons a message sent or edited with `live` shows.
    fn live_buttons(&self, live: bool) -> Vec<Control> {
        if live && self.control_style == ControlStyle::Buttons {
            vec![Control::Stop]
        } else {
            Vec::new()
        }
    }

    /// Records a controls call on `message`, if the platform takes it now.
    fn controls_call(
        &self,
        state: &mut State,
        channel: &ChannelKey,
        message: &MessageId,
        text: String,
    ) -> Result<(), PlatformError> {
        let now = Instant::now();
        let exists = state.messages.iter().any(|shown| &shown.id == message);
        let result = if exists {
            self.admit(state, channel, now, false)
        } else {
            Err(PlatformError::Failed {
                detail: format!("no message {}", message.0),
            })
        };
        let call = Call {
            at: now,
            kind: CallKind::Controls,
            channel: channel.clone(),
            message: Some(message.clone()),
            text,
            live: false,
            accepted: result.is_ok(),
        };
        self.record(state, call);
        result
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

/// When `recent` (the calls in a sliding `window`) already holds `calls`: how long until
/// the oldest leaves it.
fn window_full(
    recent: &mut VecDeque<Instant>,
    calls: usize,
    window: Duration,
    now: Instant,
) -> Option<Duration> {
    while recent
        .front()
        .is_some_and(|at| now.duration_since(*at) >= window)
    {
        recent.pop_front();
    }
    (recent.len() >= calls).then(|| {
        recent
            .front()
            .map(|oldest| window.saturating_sub(now.duration_since(*oldest)))
            .unwrap_or(window)
    })
}

#[async_trait]
impl Outbound for MemoryPlatform {
    fn limits(&self) -> Limits {
        self.limits.clone()
    }

    fn exempt_from_budget(&self, _channel: &ChannelKey, call: &PlannedCall<'_>) -> bool {
        self.typing_exempt && matches!(call, PlannedCall::Typing)
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
            .and_then(|()| self.admit(&mut state, channel, now, false));
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
            controls: self.live_buttons(message.live),
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
                .and_then(|()| self.admit(&mut state, channel, now, false))
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
        let buttons = self.live_buttons(live);
        if let Some(message) = state.messages.iter_mut().find(|message| &message.id == id) {
            message.text = text.to_owned();
            message.edits += 1;
            if self.control_style == ControlStyle::Buttons {
                message.controls = buttons;
            }
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn typing(&self, _permit: Permit, channel: &ChannelKey) -> Result<(), PlatformError> {
        let now = Instant::now();
        let mut state = self.lock();
        let result = self.admit(&mut state, channel, now, true);
        let call = Call {
            at: now,
            kind: CallKind::Typing,
            channel: channel.clone(),
            message: None,
            text: String::new(),
            live: false,
            accepted: result.is_ok(),
        };
        self.record(&mut state, call);
        result
    }

    fn control_style(&self) -> ControlStyle {
        self.control_style
    }

    async fn set_buttons(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: &MessageId,
        controls: &[Control],
    ) -> Result<(), PlatformError> {
        let mut state = self.lock();
        let names: Vec<&str> = controls.iter().map(|control| control.name()).collect();
        self.controls_call(&mut state, channel, message, names.join(","))?;
        if let Some(shown) = state.messages.iter_mut().find(|shown| &shown.id == message) {
            shown.controls = controls.to_vec();
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn react(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: &MessageId,
        control: Control,
    ) -> Result<MessageId, PlatformError> {
        let mut state = self.lock();
        self.controls_call(&mut state, channel, message, format!("+{}", control.name()))?;
        state.reactions_made += 1;
        let id = MessageId(format!("{}r{}", self.id_prefix, state.reactions_made));
        state
            .reactions
            .insert(id.clone(), (message.clone(), control));
        if let Some(shown) = state.messages.iter_mut().find(|shown| &shown.id == message) {
            shown.controls.push(control);
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(id)
    }

    async fn unreact(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        reaction: &MessageId,
    ) -> Result<(), PlatformError> {
        let mut state = self.lock();
        let Some((message, control)) = state.reactions.get(reaction).cloned() else {
            return Err(PlatformError::Failed {
                detail: format!("no reaction {}", reaction.0),
            });
        };
        self.controls_call(
            &mut state,
            channel,
            &message,
            format!("-{}", control.name()),
        )?;
        state.reactions.remove(reaction);
        if let Some(shown) = state.messages.iter_mut().find(|shown| shown.id == message) {
            shown.controls.retain(|have| *have != control);
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }
}
