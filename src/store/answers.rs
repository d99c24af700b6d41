//! The bot's answers as the conversation controls need them: which question each answers,
//! which messages show it, how it ended and which controls it offers.
//!
//! Tree `answers`: answer id (big-endian) → [`AnswerRecord`]. Tree `answer_index`, all keyed
//! under the channel's prefix so lookups never cross channels:
//! `prefix ++ "m" ++ message id` → answer id (a click or a reaction on a message),
//! `prefix ++ "q" ++ event id` → answer id (an edit of the question),
//! `prefix ++ "l"` → the channel's latest answer (the only one regenerate and continue take).
//! Retention removes records with the turns they answer.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, channel_prefix, decode, encode};
use crate::core::boundary::{ChannelKey, Control, InboundFile, MessageId};
use crate::poe::FileSource;

/// Why an answer ended before the model finished it; `None` in a record means it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cut {
    /// The model's output limit (`finish_reason: length`).
    Length,
    /// Someone pressed stop.
    Stopped,
    /// A restart or a graceful stop of the bot.
    Interrupted,
    /// Poe or the bot failed midway.
    Failed,
}

/// A file that came with a question, kept so the question can be asked again: only files
/// Poe fetches itself by URL can be; bytes are not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFile {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub url: String,
}

impl KeptFile {
    pub fn inbound(&self) -> InboundFile {
        InboundFile {
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            source: FileSource::Url(self.url.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub id: u64,
    pub channel: ChannelKey,
    /// The question's platform event: the answer replies to it, an edit of it regenerates.
    pub question_event: String,
    /// The question's turn in the history.
    pub question_seq: u64,
    /// The answer's turn in the history, once one was recorded.
    pub answer_seq: Option<u64>,
    pub asker_id: String,
    pub asker_name: String,
    pub is_group: bool,
    /// The question's files, when all of them can be sent again.
    pub files: Vec<KeptFile>,
    /// Some of the question's files could not be kept: it cannot be asked again.
    pub files_lost: bool,
    pub model: String,
    /// The messages that show the answer, in order.
    pub messages: Vec<MessageId>,
    /// The answer's text (without the bot's notes).
    pub text: String,
    pub cut: Option<Cut>,
    /// The controls the chat shows on the answer now.
    #[serde(default)]
    pub offered: Vec<Control>,
    /// Reactions the bot put on its answer to offer controls (Matrix), with their event ids,
    /// so it can take them back.
    pub reactions: Vec<(Control, MessageId)>,
}

impl AnswerRecord {
    /// Whether continue applies: the answer ended early and text exists to go on from.
    pub fn can_continue(&self) -> bool {
        self.cut.is_some() && !self.text.is_empty()
    }
}

fn index_key(channel: &ChannelKey, kind: u8, id: &str) -> Vec<u8> {
    let mut key = channel_prefix(channel);
    key.push(kind);
    key.extend_from_slice(id.as_bytes());
    key
}

impl Store {
    /// Saves an answer and indexes its messages and question; it becomes its channel's latest.
    pub fn put_answer(&self, answer: &AnswerRecord) -> Result<(), StoreError> {
        let id = answer.id.to_be_bytes();
        self.answers.insert(id, encode(answer)?)?;
        for message in &answer.messages {
            self.answer_index
                .insert(index_key(&answer.channel, b'm', &message.0), &id)?;
        }
        self.answer_index.insert(
            index_key(&answer.channel, b'q', &answer.question_event),
            &id,
        )?;
        self.answer_index
            .insert(index_key(&answer.channel, b'l', ""), &id)?;
        Ok(())
    }

    /// Notes that `message` shows answer `id` (a message of an answer still streaming).
    pub fn index_answer_message(
        &self,
        channel: &ChannelKey,
        message: &MessageId,
        id: u64,
    ) -> Result<(), StoreError> {
        self.answer_index
            .insert(index_key(channel, b'm', &message.0), &id.to_be_bytes())?;
        Ok(())
    }

    pub fn answer(&self, id: u64) -> Result<Option<AnswerRecord>, StoreError> {
        self.answers
            .get(id.to_be_bytes())?
            .map(|bytes| decode("answer", &bytes))
            .transpose()
    }

    fn indexed(&self, key: Vec<u8>) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.answer_index.get(key)? else {
            return Ok(None);
        };
        let id: [u8; 8] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            what: "answer index",
            detail: format!("{} bytes", bytes.len()),
        })?;
        Ok(Some(u64::from_be_bytes(id)))
    }

    /// The answer a message belongs to (while it streams too).
    pub fn answer_id_for_message(
        &self,
        channel: &ChannelKey,
        message: &MessageId,
    ) -> Result<Option<u64>, StoreError> {
        self.indexed(index_key(channel, b'm', &message.0))
    }

    /// The answer to the question that was platform event `event`.
    pub fn answer_id_for_question(
        &self,
        channel: &ChannelKey,
        event: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.indexed(index_key(channel, b'q', event))
    }

    /// The channel's latest answer.
    pub fn latest_answer_id(&self, channel: &ChannelKey) -> Result<Option<u64>, StoreError> {
        self.indexed(index_key(channel, b'l', ""))
    }

    /// Makes `id` the channel's latest answer (an answer that started streaming).
    pub fn set_latest_answer(&self, channel: &ChannelKey, id: u64) -> Result<(), StoreError> {
        self.answer_index
            .insert(index_key(channel, b'l', ""), &id.to_be_bytes())?;
        Ok(())
    }

    /// Deletes answers whose question turn retention removed (`seq` below `oldest_seq` is
    /// not known here, so it goes by the turns still stored).
    pub fn prune_answers(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.answers.iter() {
            let (key, value) = item?;
            let Ok(answer) = decode::<AnswerRecord>("answer", &value) else {
                continue;
            };
            if self.turn(&answer.channel, answer.question_seq)?.is_some() {
                continue;
            }
            self.answers.remove(key)?;
            for message in &answer.messages {
                self.answer_index
                    .remove(index_key(&answer.channel, b'm', &message.0))?;
            }
            self.answer_index
                .remove(index_key(&answer.channel, b'q', &answer.question_event))?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Turn, TurnRole};

    fn record(store: &Store, channel: &ChannelKey, question: &str) -> AnswerRecord {
        let seq = store
            .append_turn(channel, &Turn::new(TurnRole::User, "u1", "Ann", "why?", 1))
            .unwrap();
        AnswerRecord {
            id: store.next_id().unwrap(),
            channel: channel.clone(),
            question_event: question.into(),
            question_seq: seq,
            answer_seq: None,
            asker_id: "u1".into(),
            asker_name: "Ann".into(),
            is_group: false,
            files: Vec::new(),
            files_lost: false,
            model: "m".into(),
            messages: vec![
                MessageId(format!("{question}-a")),
                MessageId(format!("{question}-b")),
            ],
            text: "because".into(),
            cut: Some(Cut::Stopped),
            offered: Vec::new(),
            reactions: Vec::new(),
        }
    }

    #[test]
    fn answers_are_found_by_message_question_and_as_the_latest_in_their_channel_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let here = ChannelKey::new("memory", "here");
        let there = ChannelKey::new("memory", "there");
        let first = record(&store, &here, "q1");
        store.put_answer(&first).unwrap();
        let second = record(&store, &here, "q2");
        store.put_answer(&second).unwrap();
        assert_eq!(store.answer(first.id).unwrap(), Some(first.clone()));
        assert_eq!(
            store
                .answer_id_for_message(&here, &MessageId("q1-b".into()))
                .unwrap(),
            Some(first.id)
        );
        assert_eq!(
            store.answer_id_for_question(&here, "q2").unwrap(),
            Some(second.id)
        );
        assert_eq!(store.latest_answer_id(&here).unwrap(), Some(second.id));
        // Another channel sees none of them, even by the same ids.
        assert_eq!(
            store
                .answer_id_for_message(&there, &MessageId("q1-b".into()))
                .unwrap(),
            None
        );
        assert_eq!(store.latest_answer_id(&there).unwrap(), None);
        assert!(first.can_continue());
    }

    #[test]
    fn answers_go_with_their_question_when_retention_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let here = ChannelKey::new("memory", "here");
        let answer = record(&store, &here, "q1");
        store.put_answer(&answer).unwrap();
        assert_eq!(store.prune_answers().unwrap(), 0);
        store.prune_turns_before(2).unwrap();
        assert_eq!(store.prune_answers().unwrap(), 1);
        assert_eq!(store.answer(answer.id).unwrap(), None);
        assert_eq!(
            store
                .answer_id_for_message(&here, &MessageId("q1-a".into()))
                .unwrap(),
            None
        );
    }
}
