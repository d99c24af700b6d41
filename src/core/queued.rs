//! Nobody waits in silence: a question that cannot start at once (its channel is still
//! answering an earlier one, or every reply slot is taken) shows typing right away, and a
//! short note saying it is queued once the wait passes a few seconds.
//!
//! The note is the answer's first message: when the turn starts, the renderer edits it into
//! the answer (or a refusal replaces it), so a queued question costs no extra message. While
//! the note is up it has an in-flight record of its own, so a crash or a stop still ends it
//! with a word instead of leaving "queued" up for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

use super::pacing::{Paced, Priority};
use crate::core::boundary::{ChannelKey, MessageId, OutMessage};
use crate::store::{InflightReply, Store};

/// A question still waiting after this long shows typing.
pub const TYPING_AFTER: Duration = Duration::from_millis(250);

/// ...and after this long, a note that it is queued.
pub const NOTE_AFTER: Duration = Duration::from_secs(4);

const IN_CHANNEL: u8 = 0;
const FOR_SLOT: u8 = 1;
const STARTED: u8 = 2;

/// The note a queued question showed, for its turn to take over.
#[derive(Debug, Clone)]
pub struct PostedNote {
    pub message: MessageId,
    pub text: String,
    /// The note's in-flight record; the turn carries it on.
    pub record: u64,
}

/// One question's wait, shared by its turn and the task that speaks up for it.
pub struct QueuedQuestion {
    stage: AtomicU8,
    /// Held while the note is being posted, so a turn that starts meanwhile gets its id.
    note: Mutex<Option<PostedNote>>,
}

impl QueuedQuestion {
    pub fn new() -> Arc<QueuedQuestion> {
        Arc::new(QueuedQuestion {
            stage: AtomicU8::new(IN_CHANNEL),
            note: Mutex::new(None),
        })
    }

    /// Its channel's earlier answers are done; it waits for a free reply slot now.
    pub fn waiting_for_slot(&self) {
        let _ =
            self.stage
                .compare_exchange(IN_CHANNEL, FOR_SLOT, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The turn starts (or will never): no typing or note from now on. Returns the note the
    /// question showed, if any, for the turn to take over.
    pub async fn begin(&self) -> Option<PostedNote> {
        self.stage.store(STARTED, Ordering::SeqCst);
        self.note.lock().await.take()
    }

    fn started(&self) -> bool {
        self.stage.load(Ordering::SeqCst) == STARTED
    }

    /// Speaks up for the question while it waits: typing after [`TYPING_AFTER`], the note
    /// after [`NOTE_AFTER`]. `stopping` tells whether the daemon is shutting down (then no
    /// note: the question will be turned away with a word of its own).
    pub fn speak_up(
        self: &Arc<Self>,
        paced: Paced,
        channel: ChannelKey,
        event_id: String,
        store: Store,
        slots: usize,
        stopping: impl Fn() -> bool + Send + 'static,
    ) {
        let question = self.clone();
        tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            tokio::time::sleep(TYPING_AFTER).await;
            if question.started() {
                return;
            }
            paced.typing(&channel).await;
            tokio::time::sleep_until(asked + NOTE_AFTER).await;
            let mut note = question.note.lock().await;
            if question.started() || stopping() {
                return;
            }
            let text = note_text(question.stage.load(Ordering::SeqCst), slots);
            let message = OutMessage {
                text: text.clone(),
                reply_to: Some(event_id.clone()),
                continuation: false,
                private: false,
                live: true,
            };
            let sent = match paced.send(&channel, message, Priority::Urgent).await {
                Ok(sent) => sent,
                Err(err) => {
                    // The answer will come as a message of its own.
                    tracing::debug!(channel = %channel, %err, "cannot post the queued note");
                    return;
                }
            };
            let record = InflightReply {
                id: store.next_id().unwrap_or(0),
                channel: channel.clone(),
                reply_to: event_id,
                ledger_id: None,
                started_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_millis() as i64),
                messages: vec![sent.clone()],
                last_text: text.clone(),
                turn: None,
            };
            if let Err(err) = store.put_inflight(&record) {
                tracing::warn!(%err, "cannot record the queued note");
            }
            *note = Some(PostedNote {
                message: sent,
                text,
                record: record.id,
            });
        });
    }
}

fn note_text(stage: u8, slots: usize) -> String {
    if stage == FOR_SLOT {
        format!(
            "⏳ Queued: the bot is writing {slots} answers at once right now. Yours will appear here as soon as one of them is done."
        )
    } else {
        "⏳ Queued behind the answer being written in this channel. Yours will appear here as soon as that one is done.".to_owned()
    }
}
