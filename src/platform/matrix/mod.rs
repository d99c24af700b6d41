//! The Matrix adapter: a matrix-sdk client that turns room messages into [`Inbound`]s and
//! the core's sends and edits into Matrix events.
//!
//! Start-up: restore (or create) the bot's one device ([`session`]), catch up with a first
//! sync without handlers (so nothing sent while the bot was away is answered), answer
//! pending invites, then sync until the shutdown signal with the handlers installed.
//!
//! [`Inbound`]: crate::platform::Inbound

pub mod content;
pub mod inbound;
pub mod outbound;
pub mod session;
pub mod trigger;

use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent;
use matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent;
use matrix_sdk::{Client, Room};
use tokio::sync::watch;

use self::inbound::Receiver;
use self::outbound::MatrixOutbound;
use self::session::{Credentials, Origin};
use self::trigger::BotNames;
use crate::config::MatrixConfig;
use crate::core::manager::{Manager, now_ms};
use crate::secret::Secret;

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
    #[error("the first sync with the homeserver failed: {0}")]
    Sync(String),
}

/// A logged-in bot, caught up with its rooms, before it starts answering.
pub struct Matrix {
    client: Client,
    config: MatrixConfig,
    out: Arc<MatrixOutbound>,
    next_batch: String,
}

impl Matrix {
    /// Logs in (or restores the saved device) and catches up with the homeserver.
    pub async fn connect(
        config: &MatrixConfig,
        credentials: Option<Credentials>,
        store_passphrase: Option<&Secret>,
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
        let response = client
            .sync_once(SyncSettings::default())
            .await
            .map_err(|err| MatrixError::Sync(err.to_string()))?;
        Ok(Matrix {
            out: Arc::new(MatrixOutbound::new(client.clone())),
            client,
            config: config.clone(),
            next_batch: response.next_batch,
        })
    }

    /// The sending side, for the core (and for crash recovery before [`Matrix::run`]).
    pub fn outbound(&self) -> Arc<MatrixOutbound> {
        self.out.clone()
    }

    /// The device this bot is, as the homeserver knows it.
    pub fn device_id(&self) -> Option<String> {
        self.client.device_id().map(|device| device.to_string())
    }

    /// Answers the rooms until `shutdown` turns true.
    pub async fn run(self, manager: Manager, mut shutdown: watch::Receiver<bool>) {
        let client = self.client;
        let display_name = client.account().get_display_name().await.ok().flatten();
        let names = BotNames {
            user_id: self.config.user_id.clone(),
            display_name,
        };
        let receiver = Arc::new(Receiver::new(
            manager,
            self.out.clone(),
            self.config.clone(),
            names,
            now_ms(),
        ));
        inbound::answer_pending_invites(&client, &self.config).await;

        client.add_event_handler({
            let receiver = receiver.clone();
            move |event: OriginalSyncRoomMessageEvent, room: Room| {
                receiver.accept(event, room);
                async {}
            }
        });
        client.add_event_handler({
            let config = self.config.clone();
            move |event: StrippedRoomMemberEvent, room: Room, client: Client| {
                let config = config.clone();
                async move {
                    let Some(own) = client.user_id() else {
                        return;
                    };
                    if inbound::is_own_invite(&event, own) {
                        // Joining can take retries; the sync loop must not wait for it.
                        tokio::spawn(async move {
                            inbound::answer_invite(&config, room, &event.sender).await;
                        });
                    }
                }
            }
        });

        let mut settings = SyncSettings::default()
            .timeout(Duration::from_secs(30))
            .token(self.next_batch);
        let mut failures = 0u32;
        loop {
            let pause = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                result = client.sync_once(settings.clone()) => match result {
                    Ok(response) => {
                        failures = 0;
                        settings = settings.token(response.next_batch);
                        continue;
                    }
                    Err(err) => {
                        failures += 1;
                        let pause = Duration::from_secs(1 << failures.min(6));
                        tracing::warn!(%err, ?pause, "matrix: sync failed; retrying");
                        pause
                    }
                },
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("matrix: stopped syncing");
    }
}
