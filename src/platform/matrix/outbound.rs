//! The core's [`Outbound`] calls as Matrix events: messages, `m.replace` edits, typing
//! notices and files.
//!
//! Sends are made without matrix-sdk's own retries: an `M_LIMIT_EXCEEDED` goes back to the
//! core as [`PlatformError::RateLimited`] for the whole account, with the server's
//! `retry_after_ms`, so the core's pacing slows every room down instead of stacking hidden
//! retries under it. Every event counts against the account's limit (Synapse's `rc_message`);
//! typing notices do not, so they are exempt from the bot's budget.
//!
//! A message still being written carries MSC4357's live marker, unless its room turned live
//! messages off with an `org.matrix.msc4357.live_messaging` state event saying
//! `enabled: false`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState;
use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, RoomId, TransactionId};
use matrix_sdk::{Client, Room};
use serde_json::{Value, json};

use super::content::{self, Relation, SEND_LIMIT_BYTES};
use super::lock;
use crate::core::boundary::{
    ChannelKey, Limits, MessageId, OutFile, OutMessage, Outbound, PlannedCall, PlatformError,
    RateScope,
};
use crate::core::pacing::{Permit, RequestRate};
use crate::core::render::split::LengthUnit;
use crate::platform::download;

/// Longest message, in UTF-8 bytes. An edit carries the text twice plus its HTML, and
/// encryption adds a third; this keeps every event well under Matrix's 64 KiB.
pub const MAX_MESSAGE_BYTES: usize = 8_000;

/// Largest file the bot downloads from a model's answer to post into a room.
const MAX_FILE_BYTES: usize = 32 * 1024 * 1024;

/// How long a failed send's transaction id is kept for its retry.
const RETRY_WINDOW: Duration = Duration::from_secs(120);

/// What a send is: the room (and thread), the answer's trigger, and whether it is a later
/// part. The renderer retries a failed part before it sends anything else there.
type SendKey = (ChannelKey, Option<String>, bool);

/// Sends into the rooms of one logged-in client.
#[derive(Clone)]
pub struct MatrixOutbound {
    client: Client,
    /// The account's allowance (`matrix.max_sends_per_second`); `None`: no limit.
    requests: Option<RequestRate>,
    /// Transaction ids of sends that failed. A failure can come after the homeserver took
    /// the event (a proxy's 504, a timeout); the retry reuses the id, so the homeserver
    /// hands back that event instead of posting the message twice.
    failed_sends: Arc<Mutex<HashMap<SendKey, (OwnedTransactionId, Instant)>>>,
    downloads: reqwest::Client,
    /// Files in answers come from Poe's CDN over https; plain http is only for a Poe on
    /// loopback (tests).
    allow_plain_http_files: bool,
}

impl MatrixOutbound {
    pub fn new(
        client: Client,
        requests: Option<RequestRate>,
        allow_plain_http_files: bool,
    ) -> MatrixOutbound {
        let downloads = download::client();
        MatrixOutbound {
            client,
            requests,
            failed_sends: Arc::default(),
            downloads,
            allow_plain_http_files,
        }
    }

    fn room(&self, channel: &ChannelKey) -> Result<Room, PlatformError> {
        let room_id: OwnedRoomId =
            RoomId::parse(&channel.channel).map_err(|_| PlatformError::Failed {
                detail: format!("`{}` is not a Matrix room id", channel.channel),
            })?;
        self.client
            .get_room(&room_id)
            .ok_or_else(|| PlatformError::Failed {
                detail: format!("the bot is not in room {room_id}"),
            })
    }

    async fn send_content(
        &self,
        room: &Room,
        content: Value,
        transaction: Option<&TransactionId>,
    ) -> Result<MessageId, PlatformError> {
        if content::encoded_len(&content) > SEND_LIMIT_BYTES {
            return Err(PlatformError::Failed {
                detail: "the message is too large for one Matrix event".into(),
            });
        }
        let mut send = room
            .send_raw("m.room.message", content)
            .with_request_config(RequestConfig::new().disable_retry());
        if let Some(transaction) = transaction {
            send = send.with_transaction_id(transaction);
        }
        let sent = send.await.map_err(platform_error)?;
        Ok(MessageId(sent.response.event_id.to_string()))
    }

    /// Whether `room` lets messages be marked live (MSC4357): unless its state turns it off.
    async fn live_allowed(&self, room: &Room) -> bool {
        let events = room
            .get_state_events_for_keys(StateEventType::from(content::LIVE_MESSAGING), &[""])
            .await
            .unwrap_or_default();
        !events.iter().any(|event| {
            let enabled = match event {
                RawAnySyncOrStrippedState::Sync(raw) => raw
                    .get_field::<Value>("content")
                    .ok()
                    .flatten()
                    .map(|content| content["enabled"].clone()),
                RawAnySyncOrStrippedState::Stripped(raw) => raw
                    .get_field::<Value>("content")
                    .ok()
                    .flatten()
                    .map(|content| content["enabled"].clone()),
            };
            enabled == Some(Value::Bool(false))
        })
    }

    async fn edit_event(
        &self,
        room: &Room,
        message: &MessageId,
        text: &str,
        live: bool,
    ) -> Result<(), PlatformError> {
        let live = live && self.live_allowed(room).await;
        self.send_content(room, content::edit(&message.0, text, live), None)
            .await
            .map(|_| ())
    }

    /// The transaction id for a send, and whether it is a retry of one that failed.
    fn transaction_for(&self, key: &SendKey) -> (OwnedTransactionId, bool) {
        let mut failed = lock(&self.failed_sends);
        failed.retain(|_, (_, at)| at.elapsed() < RETRY_WINDOW);
        match failed.get(key) {
            Some((transaction, _)) => (transaction.clone(), true),
            None => (TransactionId::new(), false),
        }
    }
}

/// Turns a matrix-sdk error into what the renderer acts on.
pub fn platform_error(err: matrix_sdk::Error) -> PlatformError {
    if let Some(ErrorKind::LimitExceeded(limit)) = err.client_api_error_kind() {
        let retry_after = match &limit.retry_after {
            Some(RetryAfter::Delay(delay)) => *delay,
            Some(RetryAfter::DateTime(at)) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            None => Duration::from_secs(1),
        };
        return PlatformError::RateLimited {
            retry_after,
            scope: RateScope::Bot,
        };
    }
    // A proxy in front of the homeserver may answer 429 without Matrix's error body.
    if err
        .as_client_api_error()
        .is_some_and(|api| api.status_code.as_u16() == 429)
    {
        return PlatformError::RateLimited {
            retry_after: Duration::from_secs(1),
            scope: RateScope::Bot,
        };
    }
    PlatformError::Failed {
        detail: err.to_string(),
    }
}

#[async_trait]
impl Outbound for MatrixOutbound {
    fn limits(&self) -> Limits {
        Limits {
            max_message_len: MAX_MESSAGE_BYTES,
            length_unit: LengthUnit::Utf8Bytes,
            min_edit_interval: Duration::from_millis(1000),
            min_channel_interval: Duration::from_millis(250),
            // Every edit is an event the room keeps forever and clients load.
            max_edits_per_message: Some(60),
            // matrix-sdk announces typing for 4 s at a time.
            typing_interval: Duration::from_secs(3),
            requests: self.requests,
            marks_live: true,
        }
    }

    /// Typing notices are not events: the homeserver's message limit does not count them.
    fn exempt_from_budget(&self, _channel: &ChannelKey, call: &PlannedCall<'_>) -> bool {
        matches!(call, PlannedCall::Typing)
    }

    async fn send(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: OutMessage,
    ) -> Result<MessageId, PlatformError> {
        let room = self.room(channel)?;
        let relation = Relation {
            reply_to: message
                .reply_to
                .as_deref()
                .filter(|_| !message.continuation),
            thread_root: channel.thread.as_deref(),
        };
        let key: SendKey = (
            channel.clone(),
            message.reply_to.clone(),
            message.continuation,
        );
        let (transaction, retry) = self.transaction_for(&key);
        let live = message.live && self.live_allowed(&room).await;
        let sent = self
            .send_content(
                &room,
                content::message(&message.text, &relation, live),
                Some(&transaction),
            )
            .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(err) => {
                lock(&self.failed_sends).insert(key, (transaction, Instant::now()));
                return Err(err);
            }
        };
        if retry {
            // The homeserver may have handed back the event of the failed attempt, with
            // that attempt's text: make it show this one. Until this lands, the send
            // counts as failed and its retry gets the same event back. (An event the core's
            // budget did not count; it only follows a failed send.)
            if let Err(err) = self
                .edit_event(&room, &sent, &message.text, message.live)
                .await
            {
                lock(&self.failed_sends).insert(key, (transaction, Instant::now()));
                return Err(err);
            }
        }
        lock(&self.failed_sends).remove(&key);
        // The answer is visible now; do not leave "typing…" up until its timeout.
        tokio::spawn(async move {
            let _ = room.typing_notice(false).await;
        });
        Ok(sent)
    }

    async fn edit(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        message: &MessageId,
        text: &str,
        live: bool,
    ) -> Result<(), PlatformError> {
        let room = self.room(channel)?;
        self.edit_event(&room, message, text, live).await
    }

    async fn typing(&self, _permit: Permit, channel: &ChannelKey) -> Result<(), PlatformError> {
        let room = self.room(channel)?;
        // matrix-sdk retries typing notices for minutes; the renderer must not wait on one.
        match tokio::time::timeout(Duration::from_secs(2), room.typing_notice(true)).await {
            Ok(result) => result.map_err(platform_error),
            Err(_) => Err(PlatformError::Failed {
                detail: "the typing notice timed out".into(),
            }),
        }
    }

    async fn send_file(
        &self,
        _permit: Permit,
        channel: &ChannelKey,
        file: &OutFile,
        reply_to: Option<&str>,
    ) -> Result<Option<MessageId>, PlatformError> {
        let room = self.room(channel)?;
        let data = download::fetch(
            &self.downloads,
            &file.url,
            self.allow_plain_http_files,
            MAX_FILE_BYTES,
        )
        .await
        .map_err(|reason| PlatformError::Failed {
            detail: format!(
                "cannot fetch {} from the model's answer: {reason}",
                file.name
            ),
        })?;
        let mime: mime::Mime = file
            .content_type
            .parse()
            .unwrap_or(mime::APPLICATION_OCTET_STREAM);
        let msgtype = match mime.type_() {
            mime::IMAGE => "m.image",
            mime::VIDEO => "m.video",
            mime::AUDIO => "m.audio",
            _ => "m.file",
        };
        let size = data.len();
        let mut content = json!({
            "msgtype": msgtype,
            "body": file.name,
            "filename": file.name,
            "info": { "mimetype": mime.essence_str(), "size": size },
            "m.mentions": {},
        });
        let encrypted = room
            .latest_encryption_state()
            .await
            .map_err(platform_error)?
            .is_encrypted();
        if encrypted {
            let mut reader = std::io::Cursor::new(data);
            let encrypted = self
                .client
                .upload_encrypted_file(&mut reader)
                .await
                .map_err(platform_error)?;
            content["file"] =
                serde_json::to_value(encrypted).map_err(|err| PlatformError::Failed {
                    detail: err.to_string(),
                })?;
        } else {
            let uploaded = self
                .client
                .media()
                .upload(&mime, data, None)
                .await
                .map_err(platform_error)?;
            content["url"] = uploaded.content_uri.to_string().into();
        }
        let relation = Relation {
            reply_to,
            thread_root: channel.thread.as_deref(),
        };
        if let Value::Object(relates) = content::message("", &relation, false)
            && let Some(relates_to) = relates.get("m.relates_to")
        {
            content["m.relates_to"] = relates_to.clone();
        }
        self.send_content(&room, content, None).await.map(Some)
    }
}
