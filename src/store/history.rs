//! Conversation turns, per channel, in the order they happened.
//!
//! Key: channel prefix ++ sequence number (u64, big-endian, from the store's id generator),
//! so a channel's turns are one contiguous, ordered range. A `reset` does not delete turns:
//! it moves the channel's watermark (see [`super::ChannelSettings`]); retention deletes them.
//! A regenerated answer stays too, hidden from the context like turns before a reset.

use serde::{Deserialize, Serialize};

use super::answers::Cut;
use super::{Store, StoreError, channel_prefix, decode, encode};
use crate::core::boundary::ChannelKey;

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
    /// Left out of the context: an answer that a regenerated one replaced.
    #[serde(default)]
    pub hidden: bool,
    /// An answer that ended before the model finished it, and why.
    #[serde(default)]
    pub cut: Option<Cut>,
}

impl Turn {
    pub fn new(role: TurnRole, author_id: &str, author_name: &str, text: &str, at_ms: i64) -> Turn {
        Turn {
            seq: 0,
            role,
            author_id: author_id.to_owned(),
            author_name: author_name.to_owned(),
            text: text.to_owned(),
            at_ms,
            hidden: false,
            cut: None,
        }
    }
}

fn turn_key(channel: &ChannelKey, seq: u64) -> Vec<u8> {
    let mut key = channel_prefix(channel);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// Appends a turn and returns its sequence number.
    pub fn append_turn(&self, channel: &ChannelKey, turn: &Turn) -> Result<u64, StoreError> {
        let seq = self.next_id()?;
        let mut turn = turn.clone();
        turn.seq = seq;
        self.history
            .insert(turn_key(channel, seq), encode(&turn)?)?;
        Ok(seq)
    }

    /// The turn `seq` of the channel, if it is still stored.
    pub fn turn(&self, channel: &ChannelKey, seq: u64) -> Result<Option<Turn>, StoreError> {
        self.history
            .get(turn_key(channel, seq))?
            .map(|bytes| decode("history turn", &bytes))
            .transpose()
    }

    /// Writes `turn` over the stored turn with its `seq` (an edited question, a continued
    /// or hidden answer).
    pub fn replace_turn(&self, channel: &ChannelKey, turn: &Turn) -> Result<(), StoreError> {
        self.history
            .insert(turn_key(channel, turn.seq), encode(turn)?)?;
        Ok(())
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
        self.turns_between(channel, after_seq, u64::MAX, max_turns, max_chars)
    }

    /// Like [`Store::recent_turns`], for turns before `before_seq` only: the context a
    /// question had when it was first asked. Hidden turns are left out.
    pub fn turns_between(
        &self,
        channel: &ChannelKey,
        after_seq: u64,
        before_seq: u64,
        max_turns: usize,
        max_chars: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let start = turn_key(channel, after_seq.saturating_add(1));
        let end = turn_key(channel, before_seq);
        let mut turns = Vec::new();
        let mut chars = 0;
        for item in self.history.range(start..end).rev() {
            if turns.len() >= max_turns {
                break;
            }
            let (_, value) = item?;
            let turn: Turn = decode("history turn", &value)?;
            if turn.hidden {
                continue;
            }
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
        Turn::new(role, "u1", "Ann", text, at_ms)
    }

    #[test]
    fn a_questions_context_is_what_came_before_it_without_hidden_turns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let here = ChannelKey::new("memory", "a");
        let first = store
            .append_turn(&here, &turn(TurnRole::User, "one", 1))
            .unwrap();
        let answer = store
            .append_turn(&here, &turn(TurnRole::Bot, "uno", 2))
            .unwrap();
        let question = store
            .append_turn(&here, &turn(TurnRole::User, "two", 3))
            .unwrap();
        store
            .append_turn(&here, &turn(TurnRole::Bot, "dos", 4))
            .unwrap();
        let texts = |turns: Vec<Turn>| turns.into_iter().map(|turn| turn.text).collect::<Vec<_>>();
        let before = store.turns_between(&here, 0, question, 10, 10_000).unwrap();
        assert_eq!(texts(before), ["one", "uno"]);
        let mut hidden = store.turn(&here, answer).unwrap().unwrap();
        hidden.hidden = true;
        store.replace_turn(&here, &hidden).unwrap();
        let before = store.turns_between(&here, 0, question, 10, 10_000).unwrap();
        assert_eq!(texts(before), ["one"]);
        assert_eq!(
            texts(store.recent_turns(&here, first, 10, 10_000).unwrap()),
            ["two", "dos"]
        );
        // Kept on disk all the same.
        assert_eq!(store.all_turns(&here).unwrap().len(), 4);
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
