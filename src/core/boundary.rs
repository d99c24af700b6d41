//! The boundary the core talks through: what adapters hand in ([`Inbound`]) and what the
//! core asks of a platform ([`Outbound`]).
//!
//! Adapters turn platform events into [`Inbound`] messages and implement [`Outbound`] so the
//! core can send, edit and show typing. They decide platform facts (is this user an admin
//! here, was the bot addressed, what are the length and edit limits) and nothing else. The
//! core defines this boundary, so adapters import the core and never the other way round.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::pacing::{Permit, RequestRate};
use super::render::split::LengthUnit;
use crate::poe::FileSource;

/// Where a conversation happens: a channel, or a thread inside one (a thread is its own
/// conversation). Ids are opaque strings; they are never parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelKey {
    pub platform: String,
    pub channel: String,
    pub thread: Option<String>,
}

impl ChannelKey {
    pub fn new(platform: &str, channel: &str) -> Self {
        ChannelKey {
            platform: platform.to_owned(),
            channel: channel.to_owned(),
            thread: None,
        }
    }

    pub fn in_thread(mut self, thread: &str) -> Self {
        self.thread = Some(thread.to_owned());
        self
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.thread {
            Some(thread) => write!(f, "{}:{}/{}", self.platform, self.channel, thread),
            None => write!(f, "{}:{}", self.platform, self.channel),
        }
    }
}

/// A file on an incoming message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundFile {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub source: FileSource,
}

/// How the message reached the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// A message addressed to the bot (a mention, a reply to it, a DM): a conversation turn.
    Message,
    /// `/poe …` or `!poe …`: `text` holds what follows `poe`.
    Command,
    /// A control pressed on one of the bot's answers (a button, a reaction) on message `on`;
    /// `None` aims at the channel's latest answer.
    Control {
        control: Control,
        on: Option<MessageId>,
    },
    /// The asker edited the question that was platform event `of`; `text` holds the new
    /// question.
    Edit { of: String },
}

/// What a person can do to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Control {
    /// End it now, keeping the text so far.
    Stop,
    /// Ask the same question again, for a different answer in its place.
    Regenerate,
    /// Go on from an answer that ended early.
    Continue,
}

impl Control {
    pub fn name(self) -> &'static str {
        match self {
            Control::Stop => "stop",
            Control::Regenerate => "regenerate",
            Control::Continue => "continue",
        }
    }
}

/// How a platform shows the controls of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlStyle {
    /// None shown (commands still work).
    None,
    /// Buttons on the answer's last message ([`Outbound::set_buttons`]); a message sent or
    /// edited as live carries a stop button by itself.
    Buttons,
    /// The bot's own reactions on its answer ([`Outbound::react`]); people react the same.
    Reactions,
}

/// Who wrote a message, as far as the platform tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The platform says a person wrote it (Discord: not a bot account).
    Person,
    /// The platform says a program wrote it (Discord's bot flag, a webhook; on Matrix a
    /// message still being streamed, which only bots send).
    Bot,
    /// The platform cannot tell (Matrix): the loop guard judges by the speed of the replies.
    Unknown,
}

/// One event from a platform, already translated.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub channel: ChannelKey,
    pub user_id: String,
    pub user_name: String,
    pub speaker: Speaker,
    /// May run this room's admin commands (change the channel's model and prompt, see what
    /// was spent here): configured ids, roles, room power levels or server permissions.
    pub is_admin: bool,
    /// Configured as an admin of the bot itself: may set budgets and spends without limit.
    /// Room-level rights alone never grant this, since anyone can create a room.
    pub is_bot_admin: bool,
    /// Whether several people talk here (speaker names go into the context).
    pub is_group: bool,
    pub invocation: Invocation,
    pub text: String,
    pub attachments: Vec<InboundFile>,
    /// The platform's id of this event: replies point at it, duplicates are dropped by it.
    pub event_id: String,
    /// Milliseconds since the epoch, as the platform stamped the event.
    pub timestamp_ms: i64,
}

/// A platform's message id, opaque to the core.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageId(pub String);

/// A new message from the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub text: String,
    /// The event this answers (a reply relation, or the interaction to answer).
    pub reply_to: Option<String>,
    /// A further part of an answer whose first part already replied to `reply_to`: platforms
    /// that draw reply relations leave it off; Discord posts it as an interaction follow-up.
    pub continuation: bool,
    /// Only the caller should see it (Discord ephemeral replies), where the platform can.
    pub private: bool,
    /// Still being written: more edits follow (Matrix marks such events as live, MSC4357).
    pub live: bool,
}

/// A file a model produced (an image bot's picture), at a URL Poe serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    pub name: String,
    pub content_type: String,
    pub url: String,
}

/// What a platform allows. The renderer stays inside these so the platform never has to
/// rate-limit the bot in normal use.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_message_len: usize,
    pub length_unit: LengthUnit,
    /// Least time between two edits of one message.
    pub min_edit_interval: Duration,
    /// Least time between two calls (send or edit) in one channel.
    pub min_channel_interval: Duration,
    /// Edits allowed per message (Matrix rooms get slow with many); the final edit always
    /// lands.
    pub max_edits_per_message: Option<u32>,
    /// How often to repeat the typing notice while waiting.
    pub typing_interval: Duration,
    /// The bot-wide allowance every call draws from (Discord's global limit, the
    /// homeserver's limit on the account); `None` when the platform sets none.
    pub requests: Option<RequestRate>,
    /// The platform marks messages still being written (Matrix, MSC4357), so a message's
    /// final edit must land even when its text did not change.
    pub marks_live: bool,
}

/// Who a platform's "slow down" applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// The whole bot (Discord's global limit, the homeserver's limit on the account): every
    /// channel slows down.
    Bot,
    /// This channel or route only.
    Channel,
}

impl RateScope {
    pub fn name(self) -> &'static str {
        match self {
            RateScope::Bot => "bot",
            RateScope::Channel => "channel",
        }
    }
}

/// A call the core is about to make, as [`Outbound::exempt_from_budget`] sees it.
#[derive(Debug, Clone, Copy)]
pub enum PlannedCall<'a> {
    /// A new message answering `reply_to`.
    Send {
        reply_to: Option<&'a str>,
        private: bool,
    },
    Edit(&'a MessageId),
    Typing,
    File {
        reply_to: Option<&'a str>,
    },
    /// Buttons or a reaction on message `on`, or taking a reaction back.
    Controls {
        on: &'a MessageId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("rate limited by the platform for {retry_after:?}")]
    RateLimited {
        retry_after: Duration,
        scope: RateScope,
    },
    #[error("the platform refused: {detail}")]
    Failed { detail: String },
}

/// What the core asks of a platform. Every call takes a [`Permit`], which only the core's
/// pacing hands out (after the call drew from the platform's budget), so nothing reaches a
/// platform around it.
#[async_trait]
pub trait Outbound: Send + Sync {
    fn limits(&self) -> Limits;
    /// Whether this call does not count against the platform's bot-wide limit (Discord's
    /// interaction webhooks, Matrix typing notices). Exempt calls keep their channel's pacing.
    fn exempt_from_budget(&self, _channel: &ChannelKey, _call: &PlannedCall<'_>) -> bool {
        false
    }
    async fn send(
        &self,
        permit: Permit,
        channel: &ChannelKey,
        message: OutMessage,
    ) -> Result<MessageId, PlatformError>;
    /// `live`: the message is still being written and more edits follow.
    async fn edit(
        &self,
        permit: Permit,
        channel: &ChannelKey,
        message: &MessageId,
        text: &str,
        live: bool,
    ) -> Result<(), PlatformError>;
    async fn typing(&self, permit: Permit, channel: &ChannelKey) -> Result<(), PlatformError>;
    /// Posts a file from a model's answer. The answer's text already links to it, so a
    /// platform that cannot carry files keeps this default and posts nothing.
    async fn send_file(
        &self,
        _permit: Permit,
        _channel: &ChannelKey,
        _file: &OutFile,
        _reply_to: Option<&str>,
    ) -> Result<Option<MessageId>, PlatformError> {
        Ok(None)
    }
    /// How this platform shows an answer's controls.
    fn control_style(&self) -> ControlStyle {
        ControlStyle::None
    }
    /// Sets exactly `controls` as buttons on `message` ([`ControlStyle::Buttons`]).
    async fn set_buttons(
        &self,
        _permit: Permit,
        _channel: &ChannelKey,
        _message: &MessageId,
        _controls: &[Control],
    ) -> Result<(), PlatformError> {
        Ok(())
    }
    /// Reacts to `message` to offer `control` ([`ControlStyle::Reactions`]); returns the
    /// reaction's id, for [`Outbound::unreact`].
    async fn react(
        &self,
        _permit: Permit,
        _channel: &ChannelKey,
        _message: &MessageId,
        _control: Control,
    ) -> Result<MessageId, PlatformError> {
        Err(PlatformError::Failed {
            detail: "this platform has no reactions".into(),
        })
    }
    /// Takes back a reaction [`Outbound::react`] made.
    async fn unreact(
        &self,
        _permit: Permit,
        _channel: &ChannelKey,
        _reaction: &MessageId,
    ) -> Result<(), PlatformError> {
        Ok(())
    }
}
