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

/// At most this many messages wait, in all and per room; the oldest gives way. The cap per
/// room keeps one room's flood of unreadable events from pushing out everyone else's.
const MAX_HELD: usize = 1_000;
const MAX_HELD_PER_ROOM: usize = 100;

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
        super::lock(&self.held)
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
        if held.since.elapsed() >= HOLD {
            return;
        }
        let in_room = all
            .iter()
            .filter(|other| other.room_id == held.room_id)
            .count();
        if in_room >= MAX_HELD_PER_ROOM || all.len() >= MAX_HELD {
            let oldest = all
                .iter()
                .enumerate()
                .filter(|(_, other)| in_room < MAX_HELD_PER_ROOM || other.room_id == held.room_id)
                .min_by_key(|(_, other)| other.since)
                .map(|(index, _)| index);
            if let Some(index) = oldest {
                all.remove(index);
            }
            tracing::warn!(room = %held.room_id, "matrix: too many messages wait for their keys; the oldest is dropped");
        }
        all.push_back(held);
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
