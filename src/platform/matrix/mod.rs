//! The Matrix adapter: a matrix-sdk client that turns room messages into [`Inbound`]s and
//! the core's sends and edits into Matrix events.
//!
//! Start-up: restore (or create) the bot's one device ([`session`]), catch up with a first
//! sync without handlers (so nothing sent while the bot was away is answered), answer
//! pending invites, then sync until the shutdown signal with the handlers installed.
//!
//! [`Inbound`]: crate::core::boundary::Inbound

pub mod content;
pub mod inbound;
pub mod late_keys;
pub mod outbound;
pub mod session;
pub mod trigger;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::event_handler::RawEvent;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent;
use matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, UInt};
use matrix_sdk::{Client, Room};
use tokio::sync::watch;

use self::inbound::Receiver;
use self::outbound::MatrixOutbound;
use self::session::{Credentials, Origin};
use self::trigger::BotNames;
use crate::config::MatrixConfig;
use crate::core::manager::Manager;
use crate::secret::Secret;
use crate::service::health::PlatformStatus;

pub use self::inbound::PLATFORM;

/// Why the bot cannot use its Matrix account.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("cannot reach the Matrix homeserver: {0}")]
    Connect(String),
    #[error("cannot log in to Matrix: {0}")]
    Login(String),
    #[error(
        "no Matrix credentials: set MATRIX_PASSWORD or MATRIX_ACCESS_TOKEN (or their _FILE \
         variants) for the first start"
    )]
    NoCredentials,
    #[error("matrix.data_dir: {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(
        "{path} holds the session of {saved}, but matrix.user_id is {configured}; use another \
         matrix.data_dir for another account"
    )]
    OtherAccount {
        path: String,
        saved: String,
        configured: String,
    },
    #[error(
        "the homeserver rejected the saved session in {path} ({reason}); if the device was \
         logged out, delete matrix.data_dir to log in again as a new device"
    )]
    SessionRejected { path: String, reason: String },
}

/// A logged-in bot, before it starts answering.
pub struct Matrix {
    client: Client,
    config: MatrixConfig,
    out: Arc<MatrixOutbound>,
}

impl Matrix {
    /// Logs in (or restores the saved device).
    pub async fn connect(
        config: &MatrixConfig,
        credentials: Option<Credentials>,
        store_passphrase: Option<&Secret>,
        allow_plain_http_files: bool,
    ) -> Result<Matrix, MatrixError> {
        let (client, origin) = session::open(config, credentials, store_passphrase).await?;
        let device = client
            .device_id()
            .map(|device| device.to_string())
            .unwrap_or_default();
        match origin {
            Origin::Restored => {
                tracing::info!(user = %config.user_id, %device, "matrix: restored the saved session")
            }
            Origin::LoggedIn => {
                tracing::info!(user = %config.user_id, %device, "matrix: logged in as a new device")
            }
        }
        Ok(Matrix {
            out: Arc::new(MatrixOutbound::new(
                client.clone(),
                config.send_rate(),
                allow_plain_http_files,
            )),
            client,
            config: config.clone(),
        })
    }

    /// The sending side, for the core (and for crash recovery before [`Matrix::run`]).
    pub fn outbound(&self) -> Arc<MatrixOutbound> {
        self.out.clone()
    }

    /// Answers the rooms until `shutdown` turns true.
    ///
    /// The handlers are in place before the first sync, so nothing that arrives during
    /// start-up is missed; what was sent before the manager started is dropped by its
    /// timestamp (the first sync after a fresh login returns recent history, and after a
    /// restart what was said while the bot was away).
    pub async fn run(
        self,
        manager: Manager,
        mut shutdown: watch::Receiver<bool>,
        status: PlatformStatus,
    ) {
        let client = self.client;
        let Some(user_id) = client.user_id().map(ToOwned::to_owned) else {
            tracing::error!("matrix: the client has no user id after login; not syncing");
            return;
        };
        tokio::spawn(warn_if_unsigned(client.clone()));
        let display_name = client.account().get_display_name().await.ok().flatten();
        let names = BotNames {
            user_id: user_id.to_string(),
            display_name,
        };
        let receiver = Arc::new(Receiver::new(
            manager,
            self.out.clone(),
            self.config.clone(),
            names,
            user_id.clone(),
        ));

        client.add_event_handler({
            let receiver = receiver.clone();
            move |event: OriginalSyncRoomMessageEvent, room: Room, raw: RawEvent| {
                let speaker = inbound::speaker_of(raw.0.get());
                receiver.accept(event, room, speaker);
                async {}
            }
        });
        client.add_event_handler({
            let receiver = receiver.clone();
            move |event: Raw<OriginalSyncRoomEncryptedEvent>, room: Room| {
                receiver.undecryptable(event, room);
                async {}
            }
        });
        if let Some(keys) = client.encryption().room_keys_received_stream().await {
            let keys = keys.map(|update| {
                update.map(|keys| {
                    keys.iter()
                        .map(|key| (key.room_id.clone(), key.session_id.clone()))
                        .collect::<Vec<_>>()
                })
            });
            tokio::spawn(retry_on_new_keys(keys, receiver.clone(), shutdown.clone()));
        }
        client.add_event_handler({
            let receiver = receiver.clone();
            move |event: StrippedRoomMemberEvent, room: Room| {
                let receiver = receiver.clone();
                async move {
                    if inbound::is_own_invite(&event, receiver.user_id()) {
                        // Joining can take retries; the sync loop must not wait for it.
                        tokio::spawn(async move {
                            receiver.answer_invite(room, &event.sender).await;
                        });
                    }
                }
            }
        });

        let mut settings = sync_settings();
        let mut failures = 0u32;
        let mut caught_up = false;
        loop {
            let result = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                result = client.sync_once(settings.clone()) => result,
            };
            match result {
                Ok(response) => {
                    failures = 0;
                    status.set_connected(true);
                    settings = settings.token(response.next_batch);
                    for (room_id, room) in &response.rooms.joined {
                        if room.timeline.limited {
                            tracing::debug!(room = %room_id, "matrix: the sync skipped part of a room's timeline");
                        }
                    }
                    if !caught_up {
                        caught_up = true;
                        tracing::info!("matrix: connected and caught up");
                        // Invites that arrived while the bot was away.
                        receiver.answer_pending_invites(&client).await;
                    }
                }
                Err(err) => {
                    failures += 1;
                    status.set_connected(false);
                    let pause = Duration::from_secs(1 << failures.min(6));
                    tracing::warn!(%err, ?pause, "matrix: sync failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        tracing::info!("matrix: stopped syncing");
    }
}

/// Locks `mutex`, also after a panic elsewhere while it was held: the adapter's maps stay
/// usable, and a half-made change to one is better than a dead sync loop.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Says so when the bot's device ends up without its owner's signature (the account's
/// cross-signing was set up elsewhere, or the keys were lost with the data directory):
/// clients that share keys only with signed devices cannot reach the bot then.
async fn warn_if_unsigned(client: Client) {
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    if let Ok(Some(device)) = client.encryption().get_own_device().await
        && !device.is_cross_signed_by_owner()
    {
        tracing::warn!(
            "matrix: the bot's device is not cross-signed by its account, so clients that share room keys only with signed devices cannot talk to it (see the README, Matrix setup)"
        );
    }
}

/// Tries the messages that wait for a room key again whenever keys arrive, until
/// `shutdown`.
async fn retry_on_new_keys<E>(
    keys: impl Stream<Item = Result<Vec<(OwnedRoomId, String)>, E>>,
    receiver: Arc<Receiver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut keys = std::pin::pin!(keys);
    loop {
        let update = tokio::select! {
            update = keys.next() => update,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match update {
            Some(Ok(keys)) => receiver.retry_decryption(Some(&keys)).await,
            // Some updates were missed: any waiting message may be readable now.
            Some(Err(_)) => receiver.retry_decryption(None).await,
            None => {
                tracing::warn!(
                    "matrix: matrix-sdk stopped reporting new room keys; messages that arrive before their key are no longer answered late"
                );
                return;
            }
        }
    }
}

/// Long polls of 30 s, and room timelines of up to 50 events per sync so a burst does not
/// leave a gap.
fn sync_settings() -> SyncSettings {
    let mut filter = FilterDefinition::default();
    filter.room.timeline.limit = Some(UInt::from(50u32));
    SyncSettings::default()
        .timeout(Duration::from_secs(30))
        .filter(Filter::FilterDefinition(filter))
}
