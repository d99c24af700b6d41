//! The people in the Matrix tests: real matrix-sdk clients (with encryption) that create
//! rooms, talk to the bot and record every message event they receive, decrypted, with its
//! raw JSON, so tests can assert what a user's client would show.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::EncryptionSettings;
use matrix_sdk::event_handler::RawEvent;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Client, Room};
use matrix_sdk_crypto::CollectStrategy;
use serde_json::Value;

/// One `m.room.message` as a client received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub room: OwnedRoomId,
    pub event_id: String,
    pub sender: String,
    /// The event's content, decrypted.
    pub content: Value,
    /// Whether it travelled encrypted.
    pub encrypted: bool,
}

/// A bot message as a user sees it: the original with its newest edit applied.
#[derive(Debug, Clone)]
pub struct Shown {
    pub event_id: String,
    pub original: Value,
    /// The newest text (the original's, or the last edit's `m.new_content`).
    pub text: String,
    pub newest: Value,
    pub edits: Vec<Value>,
    pub encrypted: bool,
}

pub struct Human {
    pub client: Client,
    pub user_id: OwnedUserId,
    received: Arc<Mutex<Vec<Received>>>,
    /// Everyone this client saw typing, by room.
    typing: Arc<Mutex<Vec<(OwnedRoomId, OwnedUserId)>>>,
    sync: tokio::task::JoinHandle<()>,
    _store: tempfile::TempDir,
}

impl Drop for Human {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

impl Human {
    /// Logs in on `homeserver` and starts syncing.
    pub async fn login(homeserver: &str, user: &str, password: &str) -> Human {
        Self::login_with(homeserver, user, password, None).await
    }

    /// Logs in as a careful client: it cross-signs its own device and gives its room keys
    /// only to the devices `sharing` allows.
    pub async fn login_careful(
        homeserver: &str,
        user: &str,
        password: &str,
        sharing: CollectStrategy,
    ) -> Human {
        let human = Self::login_with(homeserver, user, password, Some(sharing)).await;
        human
            .client
            .encryption()
            .wait_for_e2ee_initialization_tasks()
            .await;
        human
    }

    async fn login_with(
        homeserver: &str,
        user: &str,
        password: &str,
        careful: Option<CollectStrategy>,
    ) -> Human {
        let store = tempfile::tempdir().expect("tempdir for the test client");
        let client = Client::builder()
            .homeserver_url(homeserver)
            .sqlite_store(store.path(), None)
            .with_encryption_settings(EncryptionSettings {
                auto_enable_cross_signing: careful.is_some(),
                ..EncryptionSettings::default()
            })
            .with_room_key_recipient_strategy(careful.unwrap_or_default())
            .build()
            .await
            .expect("test client");
        client
            .matrix_auth()
            .login_username(user, password)
            .initial_device_display_name("test human")
            .await
            .expect("the test user logs in");
        let received = Arc::new(Mutex::new(Vec::new()));
        client.add_event_handler({
            let received = received.clone();
            move |event: OriginalSyncRoomMessageEvent,
                  room: Room,
                  raw: RawEvent,
                  encryption: Option<matrix_sdk::deserialized_responses::EncryptionInfo>| {
                let received = received.clone();
                async move {
                    let raw: Value = serde_json::from_str(raw.0.get()).unwrap_or(Value::Null);
                    received.lock().unwrap().push(Received {
                        room: room.room_id().to_owned(),
                        event_id: event.event_id.to_string(),
                        sender: event.sender.to_string(),
                        content: raw["content"].clone(),
                        encrypted: encryption.is_some(),
                    });
                }
            }
        });
        let typing = Arc::new(Mutex::new(Vec::new()));
        client.add_event_handler({
            let typing = typing.clone();
            move |event: matrix_sdk::ruma::events::typing::SyncTypingEvent, room: Room| {
                let typing = typing.clone();
                async move {
                    let mut seen = typing.lock().unwrap();
                    for user in event.content.user_ids {
                        seen.push((room.room_id().to_owned(), user));
                    }
                }
            }
        });
        // Join whatever the human is invited to (the bot never invites; other humans do).
        client.add_event_handler(
            |event: matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent,
             room: Room,
             client: Client| async move {
                if Some(event.state_key.as_ref()) == client.user_id() {
                    let _ = room.join().await;
                }
            },
        );
        client
            .sync_once(SyncSettings::default())
            .await
            .expect("first sync");
        let sync = tokio::spawn({
            let client = client.clone();
            async move {
                let settings = SyncSettings::default().timeout(Duration::from_secs(5));
                loop {
                    if client.sync_once(settings.clone()).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let user_id = client.user_id().expect("logged in").to_owned();
        Human {
            client,
            user_id,
            received,
            typing,
            sync,
            _store: store,
        }
    }

    /// Creates a room (version 12), encrypted or not, inviting `invite`.
    pub async fn create_room(&self, encrypted: bool, invite: &[&UserId]) -> Room {
        let mut request = CreateRoom::new();
        request.invite = invite.iter().map(|user| (*user).to_owned()).collect();
        // Version 12, whose room ids have no server part: the bot must treat them as opaque.
        request.room_version = Some(matrix_sdk::ruma::RoomVersionId::V12);
        if encrypted {
            let event = InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            );
            request.initial_state = vec![event.to_raw_any()];
        }
        self.client
            .create_room(request)
            .await
            .expect("create a room")
    }

    pub fn room(&self, room_id: &RoomId) -> Room {
        self.client
            .get_room(room_id)
            .expect("a room the human is in")
    }

    /// Waits until `user` has joined `room` (as this client sees it).
    pub async fn wait_joined(&self, room: &RoomId, user: &UserId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(room) = self.client.get_room(room)
                && let Ok(Some(member)) = room.get_member(user).await
                && *member.membership()
                    == matrix_sdk::ruma::events::room::member::MembershipState::Join
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} did not join {room} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `content` and returns its event id.
    pub async fn send(&self, room: &RoomId, content: RoomMessageEventContent) -> OwnedEventId {
        self.room(room)
            .send(content)
            .await
            .expect("the human's message is sent")
            .response
            .event_id
    }

    /// Sends plain text that mentions `bot` (as Element does for a pill).
    pub async fn mention(&self, room: &RoomId, bot: &UserId, text: &str) -> OwnedEventId {
        let content = RoomMessageEventContent::text_plain(text).add_mentions(
            matrix_sdk::ruma::events::Mentions::with_user_ids([bot.to_owned()]),
        );
        self.send(room, content).await
    }

    pub async fn say(&self, room: &RoomId, text: &str) -> OwnedEventId {
        self.send(room, RoomMessageEventContent::text_plain(text))
            .await
    }

    /// Whether `user` was ever shown typing in `room`.
    pub fn saw_typing(&self, room: &RoomId, user: &UserId) -> bool {
        self.typing
            .lock()
            .unwrap()
            .iter()
            .any(|(seen_room, seen_user)| seen_room == room && seen_user == user)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// `sender`'s messages in `room`, in order, each with its edits applied.
    pub fn shown(&self, room: &RoomId, sender: &UserId) -> Vec<Shown> {
        let received = self.received();
        let mut shown: Vec<Shown> = Vec::new();
        for event in received
            .iter()
            .filter(|event| event.room == room && event.sender == sender.as_str())
        {
            let relation = &event.content["m.relates_to"];
            if relation["rel_type"] == "m.replace" {
                let target = relation["event_id"].as_str().unwrap_or_default();
                if let Some(message) = shown.iter_mut().find(|m| m.event_id == target) {
                    let new_content = event.content["m.new_content"].clone();
                    message.text = new_content["body"].as_str().unwrap_or_default().to_owned();
                    message.newest = new_content;
                    message.edits.push(event.content.clone());
                }
                continue;
            }
            shown.push(Shown {
                event_id: event.event_id.clone(),
                original: event.content.clone(),
                text: event.content["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                newest: event.content.clone(),
                edits: Vec::new(),
                encrypted: event.encrypted,
            });
        }
        shown
    }

    /// Waits until `check` holds for `sender`'s messages in `room`; panics with what was
    /// shown after `timeout`.
    pub async fn wait_for(
        &self,
        room: &RoomId,
        sender: &UserId,
        timeout: Duration,
        check: impl Fn(&[Shown]) -> bool,
    ) -> Vec<Shown> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let shown = self.shown(room, sender);
            if check(&shown) {
                return shown;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?}; {sender} showed: {:#?}",
                    shown.iter().map(|m| &m.text).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
