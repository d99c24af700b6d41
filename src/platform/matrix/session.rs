//! The bot's Matrix login: one device, kept across restarts.
//!
//! The session (user, device, access token) is saved as `session.json` in the data
//! directory beside matrix-sdk's SQLite stores, which hold the device's encryption keys and
//! the sync position. They belong together: logging in again would make a new device that
//! cannot read earlier encrypted messages. So a saved session is always restored, and the
//! password (or token) from the environment is only used the first time.

use std::io::Write;
use std::path::{Path, PathBuf};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::encryption::EncryptionSettings;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedUserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, SessionMeta, SessionTokens};
use serde::Deserialize;

use super::MatrixError;
use crate::config::MatrixConfig;
use crate::secret::Secret;

/// How the bot proves who it is the first time.
pub enum Credentials {
    Password(Secret),
    AccessToken(Secret),
}

/// How the session came about, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Restored,
    LoggedIn,
}

fn session_path(config: &MatrixConfig) -> PathBuf {
    config.data_dir.join("session.json")
}

/// A client for the configured account, logged in, with its stores in the data directory.
pub async fn open(
    config: &MatrixConfig,
    credentials: Option<Credentials>,
    store_passphrase: Option<&Secret>,
) -> Result<(Client, Origin), MatrixError> {
    crate::tls::install_crypto_provider();
    create_private_dir(&config.data_dir)?;
    let path = session_path(config);
    let store = config.data_dir.join("store");
    if !path.exists() && store.exists() {
        // A login was interrupted before its session was saved: the store holds keys of a
        // device this process can no longer act as.
        return Err(MatrixError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: "it holds an encryption store but no session.json (an earlier first login \
                     was interrupted); delete the directory to log in again as a new device"
                .into(),
        });
    }
    if !path.exists() && credentials.is_none() {
        return Err(MatrixError::NoCredentials);
    }
    let client = Client::builder()
        .homeserver_url(&config.homeserver)
        .sqlite_store(&store, store_passphrase.map(Secret::expose))
        // Clients that share room keys only with devices their owner has signed (MSC4153)
        // would otherwise never let the bot read their messages. The keys are made once,
        // at the first login (or the first start after an upgrade), if the account has none.
        .with_encryption_settings(EncryptionSettings {
            auto_enable_cross_signing: true,
            ..EncryptionSettings::default()
        })
        .build()
        .await
        .map_err(|err| MatrixError::Connect(err.to_string()))?;

    if path.exists() {
        let session = read_session(&path)?;
        if session.meta.user_id.as_str() != config.user_id {
            return Err(MatrixError::OtherAccount {
                path: path.display().to_string(),
                saved: session.meta.user_id.to_string(),
                configured: config.user_id.clone(),
            });
        }
        client
            .matrix_auth()
            .restore_session(session, RoomLoadSettings::default())
            .await
            .map_err(|err| MatrixError::Login(err.to_string()))?;
        // The token may have been revoked while the bot was away.
        if let Err(err) = client.whoami().await {
            let rejected = err.as_client_api_error().is_some_and(|api| {
                api.status_code.as_u16() == 401
                    || matches!(api.error_kind(), Some(ErrorKind::UnknownToken { .. }))
            });
            return Err(if rejected {
                MatrixError::SessionRejected {
                    path: path.display().to_string(),
                    reason: err.to_string(),
                }
            } else {
                MatrixError::Connect(err.to_string())
            });
        }
        return Ok((client, Origin::Restored));
    }

    let Some(credentials) = credentials else {
        return Err(MatrixError::NoCredentials);
    };
    match first_login(&client, config, credentials).await {
        Ok(session) => {
            write_session(&path, &session)?;
            Ok((client, Origin::LoggedIn))
        }
        Err(err) => {
            // Nothing worth keeping was stored; leaving it would block the next try.
            drop(client);
            let _ = std::fs::remove_dir_all(&store);
            Err(err)
        }
    }
}

/// Logs in as a new device (password) or as the token's device.
async fn first_login(
    client: &Client,
    config: &MatrixConfig,
    credentials: Credentials,
) -> Result<MatrixSession, MatrixError> {
    match credentials {
        Credentials::Password(password) => {
            client
                .matrix_auth()
                .login_username(&config.user_id, password.expose())
                .initial_device_display_name(&config.device_name)
                .await
                .map_err(|err| MatrixError::Login(err.to_string()))?;
        }
        Credentials::AccessToken(token) => {
            let (user_id, device_id) = whoami(&config.homeserver, &token).await?;
            if user_id.as_str() != config.user_id {
                return Err(MatrixError::Login(format!(
                    "MATRIX_ACCESS_TOKEN belongs to {user_id}, not matrix.user_id {}",
                    config.user_id
                )));
            }
            let session = MatrixSession {
                meta: SessionMeta { user_id, device_id },
                tokens: SessionTokens {
                    access_token: token.expose().to_owned(),
                    refresh_token: None,
                },
            };
            client
                .matrix_auth()
                .restore_session(session, RoomLoadSettings::default())
                .await
                .map_err(|err| MatrixError::Login(err.to_string()))?;
        }
    }
    let session = client
        .matrix_auth()
        .session()
        .ok_or_else(|| MatrixError::Login("the homeserver returned no session".into()))?;
    if session.meta.user_id.as_str() != config.user_id {
        // Ids are case-sensitive: `@Poe:x` logs in as `@poe:x`, and the bot would not
        // recognise its own messages.
        return Err(MatrixError::Login(format!(
            "the homeserver knows this account as {}; set matrix.user_id to exactly that",
            session.meta.user_id
        )));
    }
    Ok(session)
}

/// The data directory holds the device's keys: only the bot's user may read it.
fn create_private_dir(dir: &Path) -> Result<(), MatrixError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|err| MatrixError::DataDir {
        path: dir.display().to_string(),
        reason: err.to_string(),
    })
}

fn read_session(path: &Path) -> Result<MatrixSession, MatrixError> {
    let text = std::fs::read_to_string(path).map_err(|err| MatrixError::DataDir {
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|err| MatrixError::DataDir {
        path: path.display().to_string(),
        reason: format!("not a saved session ({err}); restore it from a backup or delete the whole data directory to log in as a new device"),
    })
}

/// Written to a temporary file first and renamed, readable by the owner only: it holds the
/// access token.
fn write_session(path: &Path, session: &MatrixSession) -> Result<(), MatrixError> {
    let failed = |err: std::io::Error| MatrixError::DataDir {
        path: path.display().to_string(),
        reason: err.to_string(),
    };
    let json = serde_json::to_vec(session).map_err(|err| MatrixError::Login(err.to_string()))?;
    let temporary = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary).map_err(failed)?;
    file.write_all(&json).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)?;
    Ok(())
}

/// Who an access token belongs to, and its device.
async fn whoami(
    homeserver: &str,
    token: &Secret,
) -> Result<(OwnedUserId, OwnedDeviceId), MatrixError> {
    #[derive(Deserialize)]
    struct WhoAmI {
        user_id: OwnedUserId,
        device_id: Option<OwnedDeviceId>,
    }
    let url = format!(
        "{}/_matrix/client/v3/account/whoami",
        homeserver.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token.expose())
        .send()
        .await
        .map_err(|err| MatrixError::Connect(err.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(MatrixError::Login(format!(
            "the homeserver refused MATRIX_ACCESS_TOKEN (HTTP {})",
            response.status().as_u16()
        )));
    }
    let who: WhoAmI = response
        .json()
        .await
        .map_err(|err| MatrixError::Login(err.without_url().to_string()))?;
    let device_id = who.device_id.ok_or_else(|| {
        MatrixError::Login(
            "MATRIX_ACCESS_TOKEN has no device; create it with a normal login, not an appservice"
                .into(),
        )
    })?;
    Ok((who.user_id, device_id))
}
