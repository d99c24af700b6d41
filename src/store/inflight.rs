//! Replies being streamed right now. A record outlives a crash, so the next start can tell
//! the channel the answer was interrupted and release its budget reservation.

use serde::{Deserialize, Serialize};

use super::answers::AnswerRecord;
use super::{Store, StoreError, decode, encode};
use crate::core::boundary::{ChannelKey, MessageId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InflightReply {
    pub id: u64,
    pub channel: ChannelKey,
    /// The event being answered.
    pub reply_to: String,
    pub ledger_id: Option<u64>,
    pub started_ms: i64,
    /// Messages sent so far, in order.
    pub messages: Vec<MessageId>,
    /// What the last message shows.
    pub last_text: String,
    /// What kind of turn it is, and the answer it makes or works on as it stood before the
    /// turn, so recovery can record what the turn got to (older records have none).
    #[serde(default)]
    pub turn: Option<TurnInFlight>,
}

/// The conversation-control side of a reply in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnInFlight {
    pub mode: TurnMode,
    /// The answer before this turn (a new question: the answer being started).
    pub answer: AnswerRecord,
    /// The answer's new text so far (for a continued answer, the added text).
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TurnMode {
    /// A new question.
    Ask,
    /// The question asked again (after an edit, with its new text).
    Regenerate,
    /// The answer carried on.
    Continue,
}

impl Store {
    pub fn put_inflight(&self, reply: &InflightReply) -> Result<(), StoreError> {
        self.inflight
            .insert(reply.id.to_be_bytes(), encode(reply)?)?;
        Ok(())
    }

    pub fn remove_inflight(&self, id: u64) -> Result<(), StoreError> {
        self.inflight.remove(id.to_be_bytes())?;
        Ok(())
    }

    /// Every reply that was in flight, oldest first. Records that cannot be read are
    /// skipped (and logged by the caller through the error list).
    pub fn inflight_replies(&self) -> Result<Vec<InflightReply>, StoreError> {
        self.inflight
            .iter()
            .map(|item| {
                let (_, value) = item?;
                decode("in-flight reply", &value)
            })
            .collect()
    }
}
