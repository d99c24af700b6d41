//! The bot-loop guard: two bots that answer each other (another bot in a two-person Matrix
//! room, where every message asks; a Discord channel with `ignore_bots = false`) would burn
//! the Poe budget without end. After a few bot-to-bot turns with no person writing between
//! them the channel pauses with one notice, until a person writes again.
//!
//! Who is a bot: the platform says so where it can ([`Speaker::Bot`]: Discord's bot flag, a
//! Matrix message still being streamed). Where it cannot (Matrix), a question counts as
//! automated when it comes at machine speed from the same sender as the one before it: while
//! the bot is still answering in the channel, or within [`QUICK`] of its last answer. A person
//! who asks that fast four times running meets the pause too; writing again after a few
//! seconds lifts it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::boundary::{ChannelKey, Speaker};

/// Automated questions answered in a row before the channel pauses.
pub const MAX_AUTOMATED_TURNS: u32 = 3;

/// An unknown sender's question this soon after the bot's last answer (or while it is still
/// answering) looks automated: people read an answer before they reply to it.
pub const QUICK: Duration = Duration::from_secs(5);

/// Channels watched at most; idle ones are forgotten first.
const MAX_CHANNELS: usize = 20_000;

/// The notice a pausing channel gets, once.
pub const PAUSED_NOTICE: &str = "This looks like bots answering each other, so the bot stops \
     answering here for now. It answers again as soon as a person writes.";

/// What to do with a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// The channel pauses now: post [`PAUSED_NOTICE`], do not answer.
    Pause,
    /// The channel is paused: no answer, no notice.
    Ignore,
}

#[derive(Debug, Default)]
struct Watch {
    /// Automated questions answered since a person last wrote.
    automated: u32,
    paused: bool,
    /// Questions accepted and not yet finished.
    answering: usize,
    /// When the bot last finished an answer, or (while paused) the loop last spoke: what an
    /// unknown sender's speed is measured from.
    last_reply_at: Option<Instant>,
    /// Who asked last (`None` before anyone did).
    last_asker: Option<String>,
    last_seen: Option<Instant>,
}

impl Watch {
    fn is_automated(&self, sender: &str, speaker: Speaker, now: Instant) -> bool {
        match speaker {
            Speaker::Bot => true,
            Speaker::Person => false,
            Speaker::Unknown => {
                let quick = self.answering > 0
                    || self
                        .last_reply_at
                        .is_some_and(|end| now.saturating_duration_since(end) < QUICK);
                quick && self.last_asker.as_deref() == Some(sender)
            }
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.answering == 0
            && !self.paused
            && self
                .last_seen
                .is_none_or(|seen| now.saturating_duration_since(seen) > QUICK * 12)
    }
}

/// Every channel's watch.
#[derive(Debug, Default)]
pub struct LoopGuard {
    channels: Mutex<HashMap<ChannelKey, Watch>>,
}

impl LoopGuard {
    /// A question for the bot from `sender` arrived in `channel`.
    pub fn question(
        &self,
        channel: &ChannelKey,
        sender: &str,
        speaker: Speaker,
        now: Instant,
    ) -> Verdict {
        let mut channels = self.lock();
        if channels.len() >= MAX_CHANNELS && !channels.contains_key(channel) {
            channels.retain(|_, watch| !watch.is_idle(now));
        }
        let watch = channels.entry(channel.clone()).or_default();
        let automated = watch.is_automated(sender, speaker, now);
        watch.last_asker = Some(sender.to_owned());
        watch.last_seen = Some(now);
        if !automated {
            watch.automated = 0;
            watch.paused = false;
            return Verdict::Answer;
        }
        if watch.paused {
            watch.last_reply_at = Some(now);
            return Verdict::Ignore;
        }
        if watch.automated >= MAX_AUTOMATED_TURNS {
            watch.paused = true;
            watch.last_reply_at = Some(now);
            return Verdict::Pause;
        }
        watch.automated += 1;
        Verdict::Answer
    }

    /// A message not addressed to the bot: a person writing lifts a pause.
    pub fn observed(&self, channel: &ChannelKey, sender: &str, speaker: Speaker, now: Instant) {
        let mut channels = self.lock();
        let Some(watch) = channels.get_mut(channel) else {
            return;
        };
        // Someone other than the one asking at machine speed is a person in the room.
        let other = watch.last_asker.as_deref() != Some(sender);
        let person = match speaker {
            Speaker::Person => true,
            Speaker::Bot => false,
            Speaker::Unknown => other || !watch.is_automated(sender, speaker, now),
        };
        if person {
            watch.automated = 0;
            watch.paused = false;
        }
    }

    /// An accepted question starts its wait for the answer.
    pub fn answer_started(&self, channel: &ChannelKey) {
        self.lock().entry(channel.clone()).or_default().answering += 1;
    }

    /// The answer to an accepted question is finished (or was never given).
    pub fn answer_ended(&self, channel: &ChannelKey, now: Instant) {
        if let Some(watch) = self.lock().get_mut(channel) {
            watch.answering = watch.answering.saturating_sub(1);
            watch.last_reply_at = Some(now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelKey, Watch>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> ChannelKey {
        ChannelKey::new("matrix", "!room:localhost")
    }

    /// One exchange: the question arrives, is answered, the answer ends `after` later.
    fn exchange(guard: &LoopGuard, sender: &str, speaker: Speaker, at: Instant) -> Verdict {
        let verdict = guard.question(&room(), sender, speaker, at);
        if verdict == Verdict::Answer {
            guard.answer_started(&room());
            guard.answer_ended(&room(), at + Duration::from_secs(2));
        }
        verdict
    }

    /// `count` exchanges with `sender`, a second apart from `start`.
    fn exchanges(guard: &LoopGuard, sender: &str, speaker: Speaker, start: Instant, count: u64) {
        for turn in 0..count {
            exchange(guard, sender, speaker, start + Duration::from_secs(turn));
        }
    }

    #[test]
    fn a_bot_that_answers_every_answer_at_once_is_paused_once() {
        let guard = LoopGuard::default();
        let start = Instant::now();
        let verdicts: Vec<Verdict> = (0..8)
            .map(|turn| {
                // Each reply comes a second after the bot's answer ended.
                let at = start + Duration::from_secs(3 * turn);
                exchange(&guard, "@other:bot", Speaker::Unknown, at)
            })
            .collect();
        use Verdict::*;
        // The first looks like a person (nothing came before it), then three automated
        // answers, one pause, and silence.
        assert_eq!(
            verdicts,
            [
                Answer, Answer, Answer, Answer, Pause, Ignore, Ignore, Ignore
            ]
        );
    }

    #[test]
    fn a_person_writing_lifts_the_pause() {
        let guard = LoopGuard::default();
        let start = Instant::now();
        exchanges(&guard, "bot-b", Speaker::Bot, start, 5);
        let at = start + Duration::from_secs(6);
        assert_eq!(
            guard.question(&room(), "bot-b", Speaker::Bot, at),
            Verdict::Ignore
        );
        // A person speaks up without asking the bot anything.
        guard.observed(&room(), "ann", Speaker::Person, at);
        assert_eq!(
            guard.question(&room(), "bot-b", Speaker::Bot, at),
            Verdict::Answer
        );
        // A bot writing in between changes nothing.
        let guard = LoopGuard::default();
        exchanges(&guard, "bot-b", Speaker::Bot, start, 5);
        guard.observed(&room(), "bot-c", Speaker::Bot, at);
        assert_eq!(
            guard.question(&room(), "bot-b", Speaker::Bot, at),
            Verdict::Ignore
        );
    }

    #[test]
    fn unknown_senders_are_people_when_slow_or_someone_else() {
        let guard = LoopGuard::default();
        let start = Instant::now();
        exchanges(&guard, "fast", Speaker::Unknown, start, 5);
        let later = start + Duration::from_secs(5);
        assert_eq!(
            guard.question(&room(), "fast", Speaker::Unknown, later),
            Verdict::Ignore
        );
        // Someone else in the room writing is a person.
        guard.observed(&room(), "someone", Speaker::Unknown, later);
        assert_eq!(
            guard.question(&room(), "fast", Speaker::Unknown, later),
            Verdict::Answer
        );
        // A person who asks, reads, and asks again is never paused.
        let guard = LoopGuard::default();
        for turn in 0..20 {
            let at = start + Duration::from_secs(30 * turn);
            assert_eq!(
                exchange(&guard, "ann", Speaker::Unknown, at),
                Verdict::Answer
            );
        }
        // Nor are people taking turns quickly in a busy room.
        let guard = LoopGuard::default();
        for turn in 0..20 {
            let sender = if turn % 2 == 0 { "ann" } else { "bob" };
            let at = start + Duration::from_secs(turn);
            assert_eq!(
                exchange(&guard, sender, Speaker::Unknown, at),
                Verdict::Answer
            );
        }
        // A slow reply from the looping sender lifts the pause too.
        let guard = LoopGuard::default();
        exchanges(&guard, "fast", Speaker::Unknown, start, 6);
        let slow = start + Duration::from_secs(60);
        assert_eq!(
            guard.question(&room(), "fast", Speaker::Unknown, slow),
            Verdict::Answer
        );
    }

    #[test]
    fn channels_are_watched_apart_and_people_are_never_paused() {
        let guard = LoopGuard::default();
        let now = Instant::now();
        let other = ChannelKey::new("matrix", "!other:localhost");
        for _ in 0..10 {
            assert_eq!(
                guard.question(&other, "ann", Speaker::Person, now),
                Verdict::Answer
            );
            guard.question(&room(), "bot", Speaker::Bot, now);
        }
        assert_eq!(
            guard.question(&room(), "bot", Speaker::Bot, now),
            Verdict::Ignore
        );
        assert_eq!(
            guard.question(&other, "bot", Speaker::Bot, now),
            Verdict::Answer
        );
    }
}
