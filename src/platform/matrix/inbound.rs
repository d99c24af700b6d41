//! Matrix events in, [`Inbound`]s out: room messages for the core, and invites.
//!
//! Messages are translated one room at a time, in the order the homeserver sent them (a
//! worker per room), so fetching a file for one message cannot let the next overtake it,
//! and a slow room never holds up the sync loop or other rooms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::encrypted::{
    EncryptedEventScheme, OriginalSyncRoomEncryptedEvent,
};
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::room::power_levels::UserPowerLevel;
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{Int, OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Client, Room, RoomMemberships, RoomState};

use super::late_keys::LateKeys;
use super::lock;
use super::outbound::{MatrixOutbound, platform_error};
use super::trigger::{Addressing, BotNames, classify, strip_reply_fallback};
use crate::config::{MatrixAccess, MatrixConfig};
use crate::core::boundary::{ChannelKey, Inbound, InboundFile, Invocation, Outbound, Speaker};
use crate::core::manager::Manager;
use crate::core::pacing::Paced;
use crate::core::services::now_ms;
use crate::lanes::{self, Lanes};
use crate::poe::FileSource;

/// The platform name in channel keys and ledger entries.
pub const PLATFORM: &str = "matrix";

/// Longest wait for an attachment from the homeserver.
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Takes the events the sync loop hands over.
pub struct Receiver {
    manager: Manager,
    out: Arc<MatrixOutbound>,
    config: MatrixConfig,
    names: BotNames,
    user_id: OwnedUserId,
    max_attachment_bytes: u64,
    started_ms: i64,
    rooms: Lanes<OwnedRoomId, (OriginalSyncRoomMessageEvent, Speaker)>,
    /// Rooms joined while running, with the time of joining: what was said there before the
    /// bot came in is not for it, even if it arrives with the join.
    joined_at: Mutex<HashMap<OwnedRoomId, i64>>,
    late_keys: LateKeys,
}

/// A file on a message, before it is fetched.
struct MediaRef {
    source: MediaSource,
    name: String,
    content_type: String,
    declared_size: Option<u64>,
}

impl Receiver {
    pub fn new(
        manager: Manager,
        out: Arc<MatrixOutbound>,
        config: MatrixConfig,
        names: BotNames,
        user_id: OwnedUserId,
    ) -> Receiver {
        let max_attachment_bytes = manager.services().config.chat.max_attachment_bytes;
        Receiver {
            started_ms: manager.started_ms(),
            manager,
            out,
            config,
            names,
            user_id,
            max_attachment_bytes,
            rooms: Lanes::new(lanes::IDLE),
            joined_at: Mutex::new(HashMap::new()),
            late_keys: LateKeys::default(),
        }
    }

    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// An event the bot cannot read yet: its room key may still be on its way, so it waits
    /// for the key (see [`LateKeys`]). Logged, so an operator can see why an answer is late
    /// or missing.
    pub fn undecryptable(&self, raw: Raw<OriginalSyncRoomEncryptedEvent>, room: Room) {
        let event = match raw.deserialize() {
            Ok(event) => event,
            Err(err) => {
                tracing::debug!(%err, "matrix: ignoring a malformed encrypted event");
                return;
            }
        };
        if i64::from(event.origin_server_ts.0) < self.started_ms || event.sender == self.user_id {
            return;
        }
        let EncryptedEventScheme::MegolmV1AesSha2(megolm) = &event.content.scheme else {
            tracing::warn!(room = %room.room_id(), event = %event.event_id, "matrix: a room message is not encrypted with megolm; it is not answered");
            return;
        };
        tracing::warn!(
            room = %room.room_id(),
            event = %event.event_id,
            sender = %event.sender,
            "matrix: cannot decrypt a message yet (the sender's client has not shared its key with this device); it is answered if the key comes within 10 minutes"
        );
        self.late_keys.hold(room, megolm.session_id.clone(), raw);
    }

    /// Decrypts the waiting messages that newly arrived `keys` open, and handles them as if
    /// they had just come; all of them are tried when `keys` is `None`.
    pub async fn retry_decryption(self: &Arc<Self>, keys: Option<&[(OwnedRoomId, String)]>) {
        for held in self.late_keys.opened_by(keys) {
            let decrypted = match held.room.decrypt_event(&held.event, None).await {
                Ok(decrypted) if !decrypted.kind.is_utd() => decrypted,
                Ok(_) => {
                    self.late_keys.keep(held);
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, "matrix: cannot decrypt a message whose key arrived");
                    continue;
                }
            };
            let raw = decrypted.raw();
            if raw.get_field::<String>("type").ok().flatten().as_deref() != Some("m.room.message") {
                continue;
            }
            match raw.deserialize_as_unchecked::<OriginalSyncRoomMessageEvent>() {
                Ok(message) => {
                    tracing::info!(room = %held.room.room_id(), event = %message.event_id, "matrix: decrypted a message once its key arrived");
                    let speaker = speaker_of(raw.json().get());
                    self.accept(message, held.room, speaker);
                }
                Err(err) => {
                    tracing::debug!(%err, "matrix: ignoring a malformed message that was decrypted late");
                }
            }
        }
    }

    /// Called by the sync loop for every room message; returns at once.
    pub fn accept(
        self: &Arc<Self>,
        event: OriginalSyncRoomMessageEvent,
        room: Room,
        speaker: Speaker,
    ) {
        if room.state() != RoomState::Joined
            || event.sender == self.user_id
            || self
                .config
                .ignored_users
                .iter()
                .any(|user| user == event.sender.as_str())
        {
            return;
        }
        let timestamp_ms = i64::from(event.origin_server_ts.0);
        let joined_at = lock(&self.joined_at).get(room.room_id()).copied();
        if timestamp_ms < self.started_ms.max(joined_at.unwrap_or(0)) {
            tracing::debug!(event = %event.event_id, "ignoring an event from before the start or the join");
            return;
        }
        let receiver = self.clone();
        let worker_room = room.clone();
        self.rooms.push(
            room.room_id().to_owned(),
            (event, speaker),
            move |(event, speaker)| {
                let receiver = receiver.clone();
                let room = worker_room.clone();
                async move { receiver.process(event, speaker, &room).await }
            },
        );
    }

    async fn process(&self, event: OriginalSyncRoomMessageEvent, speaker: Speaker, room: &Room) {
        let event_id = event.event_id.to_string();
        let Some(inbound) = self.translate(event, speaker, room).await else {
            return;
        };
        let disposition = self
            .manager
            .handle(inbound, self.out.clone() as Arc<dyn Outbound>)
            .await;
        tracing::debug!(event = %event_id, ?disposition, "matrix event handled");
    }

    async fn translate(
        &self,
        event: OriginalSyncRoomMessageEvent,
        speaker: Speaker,
        room: &Room,
    ) -> Option<Inbound> {
        let content = event.content;
        let (body, own_file) = match &content.msgtype {
            MessageType::Text(text) => (text.body.clone(), None),
            MessageType::Emote(emote) => (emote.body.clone(), None),
            MessageType::Image(image) => (
                caption(&image.body, image.filename.as_deref()),
                media_ref(&content.msgtype),
            ),
            MessageType::File(file) => (
                caption(&file.body, file.filename.as_deref()),
                media_ref(&content.msgtype),
            ),
            // Notices are what bots send; answering them invites loops.
            _ => return None,
        };
        let (thread_root, replied_to) = match &content.relates_to {
            // An edit of an earlier message is not a new question.
            Some(Relation::Replacement(_)) => return None,
            Some(Relation::Reply(reply)) => (None, Some(reply.in_reply_to.event_id.clone())),
            Some(Relation::Thread(thread)) => (
                Some(thread.event_id.to_string()),
                thread
                    .in_reply_to
                    .as_ref()
                    .filter(|_| !thread.is_falling_back)
                    .map(|reply| reply.event_id.clone()),
            ),
            _ => (None, None),
        };
        let body = if replied_to.is_some() {
            strip_reply_fallback(&body).to_owned()
        } else {
            body
        };
        let mentions_bot = mentions(&content, &self.names.user_id);
        // Most messages in a busy room are not for the bot: decide that without loading the
        // member list, which only small rooms (possible direct chats) need.
        let addressed = classify(
            &body,
            &self.names,
            Addressing {
                mentions_bot,
                is_direct: false,
            },
        );
        let members = if addressed.is_some() || room.active_members_count() <= 2 {
            active_members(room).await
        } else {
            room.active_members_count()
        };
        let addressed = addressed.or_else(|| {
            classify(
                &body,
                &self.names,
                Addressing {
                    mentions_bot,
                    is_direct: members <= 2,
                },
            )
        });
        let mut channel = ChannelKey::new(PLATFORM, room.room_id().as_str());
        if let Some(root) = &thread_root {
            channel = channel.in_thread(root);
        }
        let Some((invocation, text)) = addressed else {
            // Not for the bot, but the loop guard hears of people talking here.
            self.manager
                .observe(&channel, event.sender.as_str(), speaker);
            return None;
        };

        let is_bot_admin = self
            .config
            .admins
            .iter()
            .any(|admin| admin == event.sender.as_str());
        if !is_bot_admin && !may_use(&self.config.access, room.room_id(), &event.sender) {
            // Matrix has no private answer in a room, so a refusal would be public noise.
            self.manager
                .count_refusal(&channel, event.sender.as_str(), "not_allowed");
            return None;
        }

        let member = room.get_member(&event.sender).await.ok().flatten();
        let threshold = UserPowerLevel::Int(Int::new_saturating(self.config.admin_power_level));
        let is_admin = is_bot_admin
            || member
                .as_ref()
                .is_some_and(|member| member.power_level() >= threshold);
        let user_name = member
            .as_ref()
            .and_then(|member| member.display_name().map(str::to_owned))
            .unwrap_or_else(|| event.sender.localpart().to_owned());
        let mut inbound = Inbound {
            channel,
            user_id: event.sender.to_string(),
            user_name,
            speaker,
            is_admin,
            is_bot_admin,
            is_group: members > 2,
            invocation,
            text,
            attachments: Vec::new(),
            event_id: event.event_id.to_string(),
            timestamp_ms: i64::from(event.origin_server_ts.0),
        };
        if inbound.invocation == Invocation::Message {
            let file = match (own_file, &replied_to) {
                (Some(file), _) => Some(file),
                (None, Some(replied_to)) => match room.event(replied_to, None).await {
                    Ok(replied) => media_of(&replied),
                    Err(err) => {
                        tracing::warn!(%err, "cannot fetch the message replied to");
                        None
                    }
                },
                (None, None) => None,
            };
            if let Some(file) = file {
                match self.fetch(room, file).await {
                    Ok(file) => inbound.attachments.push(file),
                    Err(reason) => {
                        tracing::warn!(%reason, "cannot fetch an attachment");
                        self.tell(&inbound, format!("The bot could not fetch your file: {reason}. Send it again, or ask without it."))
                            .await;
                        return None;
                    }
                }
            }
        }
        Some(inbound)
    }

    /// Downloads (and decrypts) a file, unless it is over the limit: then the core tells the
    /// user how large it may be.
    async fn fetch(&self, room: &Room, file: MediaRef) -> Result<InboundFile, String> {
        let oversized = |size: u64| InboundFile {
            name: file.name.clone(),
            content_type: file.content_type.clone(),
            size,
            source: FileSource::Bytes(bytes::Bytes::new()),
        };
        if let Some(size) = file
            .declared_size
            .filter(|size| *size > self.max_attachment_bytes)
        {
            return Ok(oversized(size));
        }
        let request = MediaRequestParameters {
            source: file.source.clone(),
            format: MediaFormat::File,
        };
        let client = room.client();
        let media = client.media();
        let data = tokio::time::timeout(DOWNLOAD_TIMEOUT, media.get_media_content(&request, false))
            .await
            .map_err(|_| {
                format!(
                    "it took longer than {} s to download",
                    DOWNLOAD_TIMEOUT.as_secs()
                )
            })?
            .map_err(|err| format!("the homeserver did not hand it over ({err})"))?;
        let size = data.len() as u64;
        if size > self.max_attachment_bytes {
            return Ok(oversized(size));
        }
        Ok(InboundFile {
            name: file.name,
            content_type: file.content_type,
            size,
            source: FileSource::Bytes(data.into()),
        })
    }

    async fn tell(&self, inbound: &Inbound, text: String) {
        self.manager
            .tell(
                self.out.clone() as Arc<dyn Outbound>,
                &inbound.channel,
                &inbound.event_id,
                text,
                false,
            )
            .await;
    }
}

/// People in the room (joined or invited), the bot included. The sync's room summary can
/// lag behind joins, so the member list is loaded (once per room, then kept current by sync).
async fn active_members(room: &Room) -> u64 {
    match room.members(RoomMemberships::ACTIVE).await {
        Ok(members) => members.len() as u64,
        Err(err) => {
            tracing::debug!(%err, "cannot load the member list; using the room summary");
            room.active_members_count()
        }
    }
}

fn mentions(content: &RoomMessageEventContent, user_id: &str) -> bool {
    content.mentions.as_ref().is_some_and(|mentions| {
        mentions
            .user_ids
            .iter()
            .any(|user| user.as_str() == user_id)
    })
}

/// A media message's caption: its body when a separate file name is given.
fn caption(body: &str, filename: Option<&str>) -> String {
    match filename {
        Some(name) if name != body => body.to_owned(),
        _ => String::new(),
    }
}

fn file_name(body: &str, filename: Option<&str>) -> String {
    let name = filename.unwrap_or(body).trim();
    if name.is_empty() {
        "attachment".into()
    } else {
        name.chars().take(200).collect()
    }
}

/// The file of an image or file message fetched by id.
fn media_of(event: &TimelineEvent) -> Option<MediaRef> {
    let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
        SyncMessageLikeEvent::Original(message),
    ))) = event.raw().deserialize()
    else {
        return None;
    };
    media_ref(&message.content.msgtype)
}

/// The file an image or file message carries.
fn media_ref(msgtype: &MessageType) -> Option<MediaRef> {
    let (body, filename, source, mimetype, size, fallback_type) = match msgtype {
        MessageType::Image(image) => (
            &image.body,
            &image.filename,
            &image.source,
            image.info.as_ref().and_then(|info| info.mimetype.clone()),
            image.info.as_ref().and_then(|info| info.size),
            "image/png",
        ),
        MessageType::File(file) => (
            &file.body,
            &file.filename,
            &file.source,
            file.info.as_ref().and_then(|info| info.mimetype.clone()),
            file.info.as_ref().and_then(|info| info.size),
            "application/octet-stream",
        ),
        _ => return None,
    };
    Some(MediaRef {
        source: source.clone(),
        name: file_name(body, filename.as_deref()),
        content_type: mimetype.unwrap_or_else(|| fallback_type.into()),
        declared_size: size.map(u64::from),
    })
}

/// Who wrote a room message, from its raw JSON: a message still being streamed (MSC4357's
/// live marker) comes from a bot; anything else Matrix cannot tell.
pub fn speaker_of(raw_event: &str) -> Speaker {
    #[derive(serde::Deserialize)]
    struct Event {
        content: Content,
    }
    #[derive(serde::Deserialize)]
    struct Content {
        #[serde(rename = "org.matrix.msc4357.live")]
        live: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_str::<Event>(raw_event) {
        Ok(Event {
            content: Content { live: Some(_) },
        }) => Speaker::Bot,
        _ => Speaker::Unknown,
    }
}

/// Whether `matrix.access` lets `sender` use the bot in `room` (empty lists allow everyone).
pub fn may_use(access: &MatrixAccess, room: &RoomId, sender: &UserId) -> bool {
    let listed =
        |list: &[String], id: &str| list.is_empty() || list.iter().any(|entry| entry == id);
    listed(&access.allow_rooms, room.as_str()) && listed(&access.allow_users, sender.as_str())
}

/// Whether an invite from `inviter` is accepted: configured users and servers, and admins.
pub fn invite_allowed(config: &MatrixConfig, inviter: &UserId) -> bool {
    let id = inviter.as_str();
    config.admins.iter().any(|user| user == id)
        || config.allowed_users.iter().any(|user| user == id)
        || config
            .allowed_servers
            .iter()
            .any(|server| server.eq_ignore_ascii_case(inviter.server_name().as_str()))
}

/// The invite handler's filter: invites of the bot itself.
pub fn is_own_invite(event: &StrippedRoomMemberEvent, own: &UserId) -> bool {
    event.state_key == own && event.content.membership == MembershipState::Invite
}

impl Receiver {
    /// The bot's paced side: membership changes draw from the account's budget too.
    fn paced(&self) -> Paced {
        self.manager
            .paced(PLATFORM, self.out.clone() as Arc<dyn Outbound>)
    }

    /// Joins or declines an invite to the bot.
    pub async fn answer_invite(&self, room: Room, inviter: &UserId) {
        if !invite_allowed(&self.config, inviter) {
            tracing::info!(room = %room.room_id(), %inviter, "declining an invite from a user not in matrix.allowed_users or allowed_servers");
            // Membership events count against the account's limit like messages.
            let paced = self.paced();
            paced.draw("membership").await;
            if let Err(err) = room.leave().await {
                paced.report(&platform_error(err), true);
                tracing::warn!(room = %room.room_id(), "cannot decline the invite");
            }
            return;
        }
        lock(&self.joined_at)
            .entry(room.room_id().to_owned())
            .or_insert_with(now_ms);
        // A homeserver may announce the invite before it can be acted on; try a few times.
        let paced = self.paced();
        let mut delay = std::time::Duration::from_millis(500);
        for attempt in 1..=5 {
            paced.draw("membership").await;
            match room.join().await {
                Ok(()) => {
                    tracing::info!(room = %room.room_id(), %inviter, "joined a room");
                    return;
                }
                Err(err) => {
                    let err = platform_error(err);
                    paced.report(&err, true);
                    if attempt == 5 {
                        tracing::warn!(room = %room.room_id(), %err, "cannot join a room");
                        return;
                    }
                    tracing::debug!(%err, attempt, "cannot join yet");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Answers invites that arrived while the bot was away.
    pub async fn answer_pending_invites(&self, client: &Client) {
        for room in client.invited_rooms() {
            match room.invite_details().await {
                Ok(invite) => self.answer_invite(room, &invite.inviter_id).await,
                Err(err) => tracing::warn!(room = %room.room_id(), %err, "cannot read an invite"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_still_being_streamed_is_from_a_bot() {
        let live = r#"{"type":"m.room.message","sender":"@b:hs","content":{"msgtype":"m.text","body":"Hel","org.matrix.msc4357.live":{}}}"#;
        assert_eq!(speaker_of(live), Speaker::Bot);
        let plain = r#"{"type":"m.room.message","content":{"msgtype":"m.text","body":"Hello"}}"#;
        assert_eq!(speaker_of(plain), Speaker::Unknown);
        for garbage in [
            "",
            "null",
            "{\"content\":5}",
            "[1,2]",
            "{\"content\":{\"org.matrix.msc4357.live\":null}}",
        ] {
            assert_eq!(speaker_of(garbage), Speaker::Unknown, "{garbage}");
        }
    }
}
