//! Conversation turns, per channel, in the order they happened.
//!
//! Key: channel prefix ++ sequence number (u64, big-endian, from the store's id generator),
//! so a channel's turns are one contiguous, ordered range. A `reset` does not delete turns:
//! it moves the channel's watermark (see [`super::ChannelSettings`]); retention deletes them.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, channel_prefix, decode, encode};
use crate::platform::ChannelKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TurnRole {
    User,
    Bot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    #[serde(default)]
    pub seq: u64,
    pub role: TurnRole,
    pub author_id: String,
    pub author_name: String,
    pub text: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
}

impl Store {
    /// Appends a turn and returns its sequence number.
    pub fn append_turn(&self, channel: &ChannelKey, turn: &Turn) -> Result<u64, StoreError> {
        let seq = self.next_id()?;
        let mut key = channel_prefix(channel);
        key.extend_from_slice(&seq.to_be_bytes());
        let mut turn = turn.clone();
        turn.seq = seq;
        self.history.insert(key, encode(&turn)?)?;
        Ok(seq)
    }

    /// The newest turns after `after_seq`, at most `max_turns` of them and at most
    /// `max_chars` characters of text, oldest first.
    pub fn recent_turns(
        &self,
        channel: &ChannelKey,
        after_seq: u64,
        max_turns: usize,
        max_chars: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let prefix = channel_prefix(channel);
        let mut start = prefix.clone();
        start.extend_from_slice(&after_seq.saturating_add(1).to_be_bytes());
        let mut end = prefix;
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut turns = Vec::new();
        let mut chars = 0;
        for item in self.history.range(start..=end).rev() {
            if turns.len() >= max_turns {
                break;
            }
            let (_, value) = item?;
            let turn: Turn = decode("history turn", &value)?;
            chars += turn.text.chars().count();
            if chars > max_chars && !turns.is_empty() {
                break;
            }
            turns.push(turn);
        }
        turns.reverse();
        Ok(turns)
    }

    /// The newest sequence number in the channel (0 when empty).
    pub fn last_seq(&self, channel: &ChannelKey) -> Result<u64, StoreError> {
        let prefix = channel_prefix(channel);
        let Some((key, _)) = self.history.scan_prefix(&prefix).next_back().transpose()? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = key[prefix.len()..]
            .try_into()
            .map_err(|_| StoreError::Corrupt {
                what: "history key",
                detail: format!("{} bytes", key.len()),
            })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// All turns in the channel, oldest first (for tests and exports).
    pub fn all_turns(&self, channel: &ChannelKey) -> Result<Vec<Turn>, StoreError> {
        self.history
            .scan_prefix(channel_prefix(channel))
            .map(|item| {
                let (_, value) = item?;
                decode("history turn", &value)
            })
            .collect()
    }

    /// Deletes every turn older than `cutoff_ms`; returns how many.
    pub fn prune_turns_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.history.iter() {
            let (key, value) = item?;
            let turn: Turn = match decode("history turn", &value) {
                Ok(turn) => turn,
                Err(_) => continue,
            };
            if turn.at_ms < cutoff_ms {
                self.history.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: TurnRole, text: &str, at_ms: i64) -> Turn {
        Turn {
            seq: 0,
            role,
            author_id: "u1".into(),
            author_name: "Ann".into(),
            text: text.into(),
            at_ms,
        }
    }

    #[test]
    fn recent_turns_respect_limits_watermark_and_channels() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let here = ChannelKey::new("memory", "a");
        let there = ChannelKey::new("memory", "a").in_thread("t");
        let mut seqs = Vec::new();
        for index in 0..10 {
            seqs.push(
                store
                    .append_turn(
                        &here,
                        &turn(TurnRole::User, &format!("turn {index}"), index),
                    )
                    .unwrap(),
            );
        }
        store
            .append_turn(&there, &turn(TurnRole::User, "elsewhere", 0))
            .unwrap();
        let recent = store.recent_turns(&here, 0, 3, 10_000).unwrap();
        let texts: Vec<&str> = recent.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["turn 7", "turn 8", "turn 9"]);
        // "turn N" is 6 characters: 13 allows two.
        assert_eq!(store.recent_turns(&here, 0, 10, 13).unwrap().len(), 2);
        // One turn always fits, however long.
        assert_eq!(store.recent_turns(&here, 0, 10, 1).unwrap().len(), 1);
        assert_eq!(
            store
                .recent_turns(&here, seqs[7], 10, 10_000)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(store.last_seq(&here).unwrap(), seqs[9]);
        assert_eq!(store.all_turns(&there).unwrap().len(), 1);
        assert_eq!(store.prune_turns_before(5).unwrap(), 6);
        assert_eq!(store.all_turns(&here).unwrap().len(), 5);
    }
}
