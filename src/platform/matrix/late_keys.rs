//! Encrypted messages that came before their room key.
//!
//! The sender's client shares a room key as a to-device message, which can reach the bot a
//! sync or more after the message itself (a slow federation link, a client that shares
//! lazily, a key re-sent on request). Such messages are held for a while and decrypted once
//! matrix-sdk reports the key, then handled like any other message.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use matrix_sdk::Room;
use matrix_sdk::ruma::OwnedRoomId;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::serde::Raw;

/// How long a message waits for its key. A later answer would surprise more than help.
pub const HOLD: Duration = Duration::from_secs(600);

/// At most this many messages wait; the oldest gives way.
const MAX_HELD: usize = 1_000;

/// A message waiting for its key.
pub struct Held {
    pub room: Room,
    pub event: Raw<OriginalSyncRoomEncryptedEvent>,
    room_id: OwnedRoomId,
    session_id: String,
    since: Instant,
}

#[derive(Default)]
pub struct LateKeys {
    held: Mutex<VecDeque<Held>>,
}

impl LateKeys {
    fn held(&self) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `event`, encrypted with megolm session `session_id`, until its key comes.
    pub fn hold(&self, room: Room, session_id: String, event: Raw<OriginalSyncRoomEncryptedEvent>) {
        self.keep(Held {
            room_id: room.room_id().to_owned(),
            room,
            event,
            session_id,
            since: Instant::now(),
        });
    }

    /// Puts back a message its key did not open after all (a key for a later part of the
    /// session); it keeps its original deadline.
    pub fn keep(&self, held: Held) {
        let mut all = self.held();
        all.retain(|held| held.since.elapsed() < HOLD);
        if all.len() >= MAX_HELD {
            all.pop_front();
            tracing::warn!("matrix: too many messages wait for their keys; the oldest is dropped");
        }
        if held.since.elapsed() < HOLD {
            all.push_back(held);
        }
    }

    /// Takes the messages that `keys` (room, megolm session) may open; every waiting one
    /// when `keys` is `None` (some key updates were missed).
    pub fn opened_by(&self, keys: Option<&[(OwnedRoomId, String)]>) -> Vec<Held> {
        let mut all = self.held();
        all.retain(|held| held.since.elapsed() < HOLD);
        let (taken, kept): (Vec<Held>, Vec<Held>) = all.drain(..).partition(|held| {
            keys.is_none_or(|keys| {
                keys.iter()
                    .any(|(room, session)| *session == held.session_id && *room == held.room_id)
            })
        });
        all.extend(kept);
        taken
    }
}
