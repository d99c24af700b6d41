//! The core's [`Outbound`] calls as Discord REST calls: channel messages that reply to the
//! trigger, edits, typing, files, and the answers to slash commands.
//!
//! A slash command was acknowledged ("thinking…") when it arrived; its answer replaces that
//! acknowledgement (`@original`) and further parts are follow-ups, so private answers stay
//! private and a long answer stays together. The interaction's token is kept in memory only
//! (it is a credential for 15 minutes), so message ids name the interaction, not the token.
//!
//! Every write carries `allowed_mentions` with nothing allowed: model output never pings.
//! serenity's rate limiter (on in production) waits out Discord's buckets itself; with it off
//! (a fake Discord) a 429 comes back here and goes to the renderer as `RateLimited`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use serenity::all::{ChannelId, CreateAttachment, Http, HttpError, MessageId as DiscordMessageId};

use crate::core::boundary::{
    ChannelKey, Limits, MessageId, OutFile, OutMessage, Outbound, PlannedCall, PlatformError,
    RateScope,
};
use crate::core::pacing::{Permit, RequestRate};
use crate::core::render::split::LengthUnit;
use crate::platform::download;

/// Discord's limit, in Unicode scalar values.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// Discord says how long to wait in headers serenity does not pass on; without them, this.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Calls Discord's global limit allows at once beyond the steady rate: with 40/s, no second
/// ever sees more than 45 calls, under the 50 Discord allows.
const BURST: f64 = 5.0;

/// Interaction tokens expire after 15 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How long an answered interaction is remembered after its token expired, so a late private
/// answer is refused rather than posted in the channel.
const REMEMBERED: Duration = Duration::from_secs(24 * 60 * 60);

/// What replaces a public "thinking…" just before it is deleted for a private answer (Discord
/// turns the first follow-up after a deferral into the deferred message itself, keeping its
/// visibility, so the deferred message must be answered first).
const SENT_PRIVATELY: &str = "(answered privately)";

/// Largest file the bot posts from a model's answer (Discord's default upload limit).
const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;

const EPHEMERAL: u64 = 1 << 6;

/// A slash command being answered.
struct PendingInteraction {
    token: String,
    /// Acknowledged as visible only to the caller.
    ephemeral: bool,
    /// The acknowledgement's message, once the answer has replaced it.
    original: Option<u64>,
    since: Instant,
}

impl PendingInteraction {
    fn live_token(&self) -> Option<&str> {
        (self.since.elapsed() < TOKEN_LIFETIME).then_some(self.token.as_str())
    }
}

/// Sends through one bot's REST client.
pub struct DiscordOutbound {
    http: Arc<Http>,
    requests_per_second: f64,
    interactions: Mutex<HashMap<u64, PendingInteraction>>,
    downloads: reqwest::Client,
    allow_plain_http_files: bool,
}

impl DiscordOutbound {
    /// `requests_per_second`: the bot's share of Discord's global limit (50 a second).
    pub fn new(
        http: Arc<Http>,
        requests_per_second: f64,
        allow_plain_http_files: bool,
    ) -> DiscordOutbound {
        let downloads = download::client();
        DiscordOutbound {
            http,
            requests_per_second,
            interactions: Mutex::new(HashMap::new()),
            downloads,
            allow_plain_http_files,
        }
    }

    pub fn http(&self) -> &Arc<Http> {
        &self.http
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, PendingInteraction>> {
        self.interactions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slash command was acknowledged: its answers go through its token from now on.
    pub fn remember_interaction(&self, id: u64, token: String, ephemeral: bool) {
        let mut pending = self.pending();
        pending.retain(|_, interaction| interaction.since.elapsed() < REMEMBERED);
        pending.insert(
            id,
            PendingInteraction {
                token,
                ephemeral,
                original: None,
                since: Instant::now(),
            },
        );
    }

    /// Removes the "thinking…" of an interaction the core decided not to answer.
    pub async fn abandon_interaction(&self, id: u64) {
        let token = self
            .pending()
            .remove(&id)
            .and_then(|pending| pending.live_token().map(str::to_owned));
        if let Some(token) = token {
            let _ = self.http.delete_original_interaction_response(&token).await;
        }
    }

    /// Whether `reply_to` names a slash command whose answer goes through its webhook.
    fn answered_by_webhook(&self, reply_to: Option<&str>, private: bool) -> bool {
        let Some(id) = reply_to.and_then(|id| snowflake(id, "message").ok()) else {
            return false;
        };
        self.pending()
            .get(&id)
            .is_some_and(|pending| pending.live_token().is_some() || private)
    }

    fn token(&self, interaction: u64) -> Result<String, PlatformError> {
        self.pending()
            .get(&interaction)
            .and_then(|pending| pending.live_token().map(str::to_owned))
            .ok_or_else(|| PlatformError::Failed {
                detail: "the slash command's answer can no longer be edited (its token expired or the bot restarted)".into(),
            })
    }

    async fn answer_interaction(
        &self,
        interaction: u64,
        message: &OutMessage,
    ) -> Result<MessageId, PlatformError> {
        let (token, answered, ephemeral) = {
            let pending = self.pending();
            let Some(state) = pending.get(&interaction) else {
                return Err(PlatformError::Failed {
                    detail: "the slash command's answer can no longer be sent".into(),
                });
            };
            (
                state.live_token().map(str::to_owned),
                state.original.is_some(),
                state.ephemeral,
            )
        };
        let Some(token) = token else {
            return Err(PlatformError::Failed {
                detail: "the slash command expired before its answer was ready".into(),
            });
        };
        let mut body = json!({"content": message.text, "allowed_mentions": no_mentions()});
        let private = message.private || ephemeral;
        let sent = if !answered && private == ephemeral {
            self.http
                .edit_original_interaction_response(&token, &body, Vec::new())
                .await
        } else if !answered {
            // A private answer to a public "thinking…": answer the deferral (else Discord
            // would make the follow-up public in its place), post privately, then delete.
            let neutral = json!({"content": SENT_PRIVATELY, "allowed_mentions": no_mentions()});
            self.http
                .edit_original_interaction_response(&token, &neutral, Vec::new())
                .await
                .map_err(platform_error)?;
            body["flags"] = json!(EPHEMERAL);
            let sent = self
                .http
                .create_followup_message(&token, &body, Vec::new())
                .await;
            if sent.is_ok() {
                let _ = self.http.delete_original_interaction_response(&token).await;
            }
            sent
        } else {
            if private {
                body["flags"] = json!(EPHEMERAL);
            }
            self.http
                .create_followup_message(&token, &body, Vec::new())
                .await
        }
        .map_err(platform_error)?;
        if let Some(state) = self.pending().get_mut(&interaction) {
            state.original.get_or_insert(sent.id.get());
        }
        Ok(MessageId(format!("{interaction}/{}", sent.id.get())))
    }
}

fn no_mentions() -> Value {
    json!({"parse": []})
}

/// A Discord id; never 0 (serenity's id types panic on 0).
fn snowflake(text: &str, what: &str) -> Result<u64, PlatformError> {
    text.parse()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| PlatformError::Failed {
            detail: format!("`{text}` is not a Discord {what} id"),
        })
}

/// Where an answer's message lives: a channel message, or a message of an interaction.
enum Address {
    Channel(u64),
    Interaction { interaction: u64, message: u64 },
}

fn address(id: &MessageId) -> Result<Address, PlatformError> {
    match id.0.split_once('/') {
        Some((interaction, message)) => Ok(Address::Interaction {
            interaction: snowflake(interaction, "interaction")?,
            message: snowflake(message, "message")?,
        }),
        None => Ok(Address::Channel(snowflake(&id.0, "message")?)),
    }
}

/// Turns a serenity error into what the renderer acts on, without URLs (a webhook URL
/// carries the interaction's token).
pub fn platform_error(err: serenity::Error) -> PlatformError {
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response))
            if response.status_code.as_u16() == 429 =>
        {
            // serenity does not pass on whether it was the global limit (its body has no
            // `code`, which serenity needs to read it); only a fake Discord gets here.
            PlatformError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER,
                scope: RateScope::Channel,
            }
        }
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => PlatformError::Failed {
            detail: format!(
                "Discord answered {} ({})",
                response.status_code, response.error.message
            ),
        },
        serenity::Error::Http(HttpError::Request(err)) => PlatformError::Failed {
            detail: format!("cannot reach Discord: {}", err.without_url()),
        },
        other => PlatformError::Failed {
            detail: other.to_string(),
        },
    }
}

#[async_trait]
impl Outbound for DiscordOutbound {
    fn limits(&self) -> Limits {
        Limits {
            max_message_len: MAX_MESSAGE_CHARS,
            length_unit: LengthUnit::Chars,
            // Discord allows about 5 message writes per 5 s in a channel; a little under
            // that leaves room for clock skew, so normal streaming never meets a 429.
            min_edit_interval: Duration::from_millis(1200),
            min_channel_interval: Duration::from_millis(1200),
            max_edits_per_message: None,
            // The typing indicator lasts 10 s.
            typing_interval: Duration::from_secs(8),
            requests: Some(RequestRate {
                per_second: self.requests_per_second,
                burst: BURST,
            }),
            marks_live: false,
        }
    }

    /// Slash-command answers go through the interaction's webhook, which Discord's global
    /// limit does not cover.
    fn exempt_from_budget(&self, _channel: &ChannelKey, call: &PlannedCall<'_>) -> bool {
        match call {
            PlannedCall::Send { reply_to, private } => {
                self.answered_by_webhook(*reply_to, *private)
            }
            PlannedCall::Edit(message) | PlannedCall::Controls { on: message } => {
                matches!(address(message), Ok(Address::Interaction { .. }))
            }
            PlannedCall::File { reply_to } => self.answered_by_webhook(*reply_to, false),
            PlannedCall::Typing => false,
        }
    }

    async fn send(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: OutMessage,
    ) -> Result<MessageId, PlatformError> {
        let reply_to = message
            .reply_to
            .as_deref()
            .and_then(|id| snowflake(id, "message").ok());
        let known = reply_to.and_then(|id| {
            let live = self.pending().get(&id)?.live_token().is_some();
            Some((id, live))
        });
        // An expired interaction's private answer must not fall back to the channel.
        if let Some((interaction, live)) = known
            && (live || message.private)
        {
            return self.answer_interaction(interaction, &message).await;
        }
        let channel_id = snowflake(&channel.channel, "channel")?;
        let mut body = json!({"content": message.text, "allowed_mentions": no_mentions()});
        if let Some(trigger) = reply_to.filter(|_| !message.continuation) {
            body["message_reference"] =
                json!({"message_id": trigger.to_string(), "fail_if_not_exists": false});
        }
        let sent = self
            .http
            .send_message(ChannelId::new(channel_id), Vec::new(), &body)
            .await
            .map_err(platform_error)?;
        Ok(MessageId(sent.id.get().to_string()))
    }

    async fn edit(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: &MessageId,
        text: &str,
        _live: bool,
    ) -> Result<(), PlatformError> {
        let body = json!({"content": text, "allowed_mentions": no_mentions()});
        match address(message)? {
            Address::Channel(id) => {
                let channel_id = snowflake(&channel.channel, "channel")?;
                self.http
                    .edit_message(
                        ChannelId::new(channel_id),
                        DiscordMessageId::new(id),
                        &body,
                        Vec::new(),
                    )
                    .await
                    .map_err(platform_error)?;
            }
            Address::Interaction {
                interaction,
                message,
            } => {
                let token = self.token(interaction)?;
                self.http
                    .edit_followup_message(
                        &token,
                        DiscordMessageId::new(message),
                        &body,
                        Vec::new(),
                    )
                    .await
                    .map_err(platform_error)?;
            }
        }
        Ok(())
    }

    async fn typing(&self, _permit: Permit, channel: &ChannelKey) -> Result<(), PlatformError> {
        let channel_id = snowflake(&channel.channel, "channel")?;
        self.http
            .broadcast_typing(ChannelId::new(channel_id))
            .await
            .map_err(platform_error)
    }

    async fn send_file(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        file: &OutFile,
        reply_to: Option<&str>,
    ) -> Result<Option<MessageId>, PlatformError> {
        let data = match download::fetch(
            &self.downloads,
            &file.url,
            self.allow_plain_http_files,
            MAX_FILE_BYTES,
        )
        .await
        {
            Ok(data) => data,
            Err(reason) => {
                // The answer's text links to the file already.
                tracing::warn!(%reason, "discord: cannot fetch a file from the answer; it stays a link");
                return Ok(None);
            }
        };
        let attachment = CreateAttachment::bytes(data, file.name.clone());
        let reply_to = reply_to.and_then(|id| snowflake(id, "message").ok());
        let mut body = json!({"allowed_mentions": no_mentions()});
        let interaction = reply_to.and_then(|id| {
            let pending = self.pending();
            let state = pending.get(&id)?;
            Some((id, state.live_token()?.to_owned(), state.ephemeral))
        });
        let sent = match interaction {
            Some((interaction, token, ephemeral)) => {
                if ephemeral {
                    body["flags"] = json!(EPHEMERAL);
                }
                let sent = self
                    .http
                    .create_followup_message(&token, &body, vec![attachment])
                    .await
                    .map_err(platform_error)?;
                MessageId(format!("{interaction}/{}", sent.id.get()))
            }
            None => {
                let channel_id = snowflake(&channel.channel, "channel")?;
                if let Some(trigger) = reply_to {
                    body["message_reference"] =
                        json!({"message_id": trigger.to_string(), "fail_if_not_exists": false});
                }
                let sent = self
                    .http
                    .send_message(ChannelId::new(channel_id), vec![attachment], &body)
                    .await
                    .map_err(platform_error)?;
                MessageId(sent.id.get().to_string())
            }
        };
        Ok(Some(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_say_where_the_message_lives() {
        assert!(matches!(
            address(&MessageId("12".into())),
            Ok(Address::Channel(12))
        ));
        assert!(matches!(
            address(&MessageId("5/12".into())),
            Ok(Address::Interaction {
                interaction: 5,
                message: 12
            })
        ));
        for garbage in ["", "x", "5/", "/5", "5/x", "-1", "0", "5/0"] {
            assert!(address(&MessageId(garbage.into())).is_err(), "{garbage:?}");
        }
    }
}
