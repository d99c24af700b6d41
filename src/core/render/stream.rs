//! The streaming renderer: shows a growing answer in the chat as it arrives.
//!
//! The producer (the conversation) appends text; a task owned by the renderer decides when
//! to send and edit. Typing shows until the first text; the first message goes out on the
//! first text; after that each message is edited at most once per `min_edit_interval`, and
//! every call waits its turn in the channel and in the platform's bot-wide budget
//! ([`crate::core::pacing`]): first messages and final edits go first, intermediate edits
//! queue behind them by how long their text has lagged, so edits come further apart by
//! themselves when many replies share the budget. Matrix-style edit caps are kept for
//! intermediate edits while the final edit always lands.
//!
//! The text of a call is rendered when its turn comes, from the whole answer so far, so a
//! call that waited carries everything produced meanwhile and a refused call loses nothing:
//! the next one carries the same text. While a message is still being written it is shown
//! live: a code fence the text has opened but not closed yet is closed in the view (the final
//! text is exactly the model's), and the platform is told more edits follow.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::split::{Part, measure, open_fence_closer, split};
use crate::core::boundary::{
    ChannelKey, Limits, MessageId, OutMessage, PlannedCall, PlatformError,
};
use crate::core::pacing::{Paced, Priority};

/// How an answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The answer stopped early; the notice says why and follows the partial text.
    Failed {
        notice: String,
    },
    /// The answer was cut on purpose (stopped, or the model's length limit); the notice
    /// follows the partial text as it is, without a warning sign.
    Cut {
        notice: String,
    },
}

/// What the renderer did, for logs, the in-flight record and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RenderReport {
    pub messages: Vec<MessageId>,
    pub sends: u32,
    pub edits: u32,
    pub rate_limited: u32,
    pub failed_calls: u32,
    /// A platform refused for good; some text may be missing from the chat.
    pub gave_up: bool,
    /// The render task itself failed (a bug, perhaps in an adapter): the chat may show an
    /// unfinished message, or none.
    pub crashed: bool,
}

/// Awaited before every edit of the newest message, with the messages so far and the text
/// about to be shown, so the caller can make it durable first: after a crash, the record
/// then holds at least what the chat shows.
pub type ProgressHook =
    Box<dyn Fn(&[MessageId], &str) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Shared {
    state: Mutex<Produced>,
    changed: Notify,
    /// Told once the answer has ended, so a waiting intermediate edit becomes a final one.
    ended: Notify,
}

#[derive(Default)]
struct Produced {
    text: String,
    version: u64,
    ending: Option<Ending>,
    /// Since when the chat has been behind the text: the scheduler serves the reply that
    /// has lagged longest first.
    behind_since: Option<Instant>,
    /// When text first arrived after the last call took its snapshot.
    since_snapshot: Option<Instant>,
}

impl Produced {
    fn changed(&mut self) {
        self.version += 1;
        let now = Instant::now();
        self.behind_since.get_or_insert(now);
        self.since_snapshot.get_or_insert(now);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Produced> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producer's side of a renderer.
pub struct Renderer {
    shared: Arc<Shared>,
    /// Taken by [`Renderer::finish`]; a renderer dropped without finishing (its turn
    /// panicked) stops its task, so nothing edits the chat behind the clean-up's back.
    task: Option<JoinHandle<RenderReport>>,
}

impl Drop for Renderer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Everything the render task needs to reach the chat.
pub struct Target {
    pub paced: Paced,
    pub channel: ChannelKey,
    pub reply_to: Option<String>,
    /// Messages already in the chat that the answer takes over, with their texts: the note
    /// that said the question was queued, or the answer a regenerated one replaces. Those
    /// the new answer does not need end up showing "…".
    pub placeholders: Vec<(MessageId, String)>,
}

impl Renderer {
    pub fn start(target: Target, progress: Option<ProgressHook>) -> Renderer {
        let shared = Arc::new(Shared {
            state: Mutex::new(Produced::default()),
            changed: Notify::new(),
            ended: Notify::new(),
        });
        let task = tokio::spawn(render(target, shared.clone(), progress));
        Renderer {
            shared,
            task: Some(task),
        }
    }

    pub fn append(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        state.text.push_str(text);
        state.changed();
        drop(state);
        self.shared.changed.notify_one();
    }

    pub fn replace(&self, text: &str) {
        let mut state = self.shared.lock();
        state.text.clear();
        state.text.push_str(text);
        state.changed();
        drop(state);
        self.shared.changed.notify_one();
    }

    /// Everything produced so far.
    pub fn text(&self) -> String {
        self.shared.lock().text.clone()
    }

    /// Ends the answer and waits until the chat shows all of it.
    pub async fn finish(mut self, ending: Ending) -> RenderReport {
        self.shared.lock().ending = Some(ending);
        self.shared.changed.notify_one();
        self.shared.ended.notify_one();
        let Some(task) = self.task.take() else {
            return RenderReport::default();
        };
        match task.await {
            Ok(report) => report,
            Err(err) => {
                tracing::error!(%err, "the render task failed");
                RenderReport {
                    gave_up: true,
                    crashed: true,
                    ..RenderReport::default()
                }
            }
        }
    }
}

struct Shown {
    id: MessageId,
    /// The part of the answer the message shows (its text once finished).
    source: String,
    /// What the chat shows: `source`, or its live view.
    view: String,
    /// Shown as still being written.
    live: bool,
    /// The queued note the answer took over: its first edit is the answer's first text.
    placeholder: bool,
    edits: u32,
    last_call: Instant,
}

/// The messages the chat should show for `text` and `ending`.
fn desired(text: &str, ending: Option<&Ending>, limits: &Limits) -> Vec<String> {
    let mut parts: Vec<String> = split(text, limits.max_message_len, limits.length_unit)
        .iter()
        .map(Part::render)
        .collect();
    let notice = match ending {
        Some(Ending::Failed { notice }) => Some(format!("⚠️ {notice}")),
        Some(Ending::Cut { notice }) => Some(notice.clone()),
        _ => None,
    };
    if let Some(notice) = notice {
        match parts.last_mut() {
            Some(last)
                if measure(last, limits.length_unit) + 2 + measure(&notice, limits.length_unit)
                    <= limits.max_message_len =>
            {
                last.push_str("\n\n");
                last.push_str(&notice);
            }
            _ => parts.extend(
                split(&notice, limits.max_message_len, limits.length_unit)
                    .iter()
                    .map(Part::render),
            ),
        }
    }
    parts
}

/// How a message still being written is shown: a code fence it leaves open is closed, so the
/// chat never shows half a code block swallowing the rest. Text is left out at the end when
/// the closing marker would not fit otherwise.
fn live_view(part: &str, limits: &Limits) -> String {
    let mut text = part;
    for _ in 0..4 {
        let Some(closer) = open_fence_closer(text) else {
            return text.to_owned();
        };
        let room = limits
            .max_message_len
            .saturating_sub(measure(&closer, limits.length_unit));
        if measure(text, limits.length_unit) <= room {
            return format!("{text}{closer}");
        }
        // Shorten to fit, at a character boundary, and look again (the cut may have
        // removed the fence's own opening line).
        let mut end = 0;
        let mut used = 0;
        for (index, c) in text.char_indices() {
            let width = match limits.length_unit {
                super::split::LengthUnit::Chars => 1,
                super::split::LengthUnit::Utf8Bytes => c.len_utf8(),
            };
            if used + width > room.saturating_sub(1) {
                break;
            }
            used += width;
            end = index + c.len_utf8();
        }
        text = &text[..end];
    }
    text.to_owned()
}

/// Tries per call before the renderer gives up on a part the platform keeps refusing.
const MAX_FAILURES: u32 = 3;

/// The first message that differs from what it should show and may be written, with when.
fn next_due(
    parts: &[String],
    shown: &[Shown],
    finished: impl Fn(usize) -> bool,
    limits: &Limits,
    now: Instant,
) -> Option<(usize, Instant)> {
    let mut due: Option<(usize, Instant)> = None;
    for (index, part) in parts.iter().enumerate() {
        let is_final = finished(index);
        let ready_at = match shown.get(index) {
            None => Some(now),
            Some(message)
                if message.source == *part
                    && (!message.live
                        || !is_final
                        || (!limits.marks_live && message.view == *part)) =>
            {
                continue;
            }
            Some(message) if message.placeholder => Some(now),
            Some(message) => {
                let capped = limits
                    .max_edits_per_message
                    .is_some_and(|cap| message.edits + 1 >= cap);
                (is_final || !capped).then(|| message.last_call + limits.min_edit_interval)
            }
        };
        if let Some(at) = ready_at {
            if due.is_none_or(|(_, best)| at < best) {
                due = Some((index, at));
            }
            if at <= now {
                return Some((index, at));
            }
        }
    }
    due
}

async fn render(
    target: Target,
    shared: Arc<Shared>,
    progress: Option<ProgressHook>,
) -> RenderReport {
    let limits = target.paced.limits().clone();
    let mut report = RenderReport::default();
    let mut shown: Vec<Shown> = Vec::new();
    for (id, text) in &target.placeholders {
        report.messages.push(id.clone());
        shown.push(Shown {
            id: id.clone(),
            source: text.clone(),
            view: text.clone(),
            live: true,
            placeholder: true,
            edits: 0,
            last_call: Instant::now(),
        });
    }
    let mut next_typing = Instant::now();
    let mut failures = 0;
    let mut parts: Vec<String> = Vec::new();
    let mut rendered_version = u64::MAX;
    let refresh = |parts: &mut Vec<String>, rendered_version: &mut u64, state: &Produced| {
        if state.version != *rendered_version || state.ending.is_some() {
            *parts = desired(&state.text, state.ending.as_ref(), &limits);
            *rendered_version = state.version;
        }
    };
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        let ending = {
            let state = shared.lock();
            refresh(&mut parts, &mut rendered_version, &state);
            state.ending.clone()
        };
        if ending.is_some() {
            // The answer was replaced by a shorter one: empty out messages it no longer needs.
            while parts.len() < shown.len() {
                parts.push("…".into());
            }
        }
        let ended = ending.is_some();
        let count = parts.len();
        let finished = |index: usize| index + 1 < count || ended;
        let now = Instant::now();
        let Some((index, ready_at)) = next_due(&parts, &shown, finished, &limits, now) else {
            if ended && shown.len() >= parts.len() {
                return report;
            }
            // Nothing to write: wait for more text, showing typing until the answer shows.
            let answer_shown = shown.iter().any(|message| !message.placeholder);
            if !answer_shown && !ended {
                if Instant::now() >= next_typing {
                    next_typing = Instant::now() + limits.typing_interval;
                    // Text that arrives while typing waits for its turn goes first.
                    tokio::select! {
                        _ = target.paced.typing(&target.channel) => {}
                        _ = notified.as_mut() => continue,
                    }
                }
                let _ = tokio::time::timeout_at(next_typing, notified).await;
            } else {
                notified.await;
            }
            continue;
        };
        if ready_at > now {
            tokio::time::sleep_until(ready_at).await;
            continue;
        }

        // Its turn: the channel's spacing and the platform's budget.
        let existing = shown.get(index);
        let urgent = finished(index) || existing.is_none_or(|message| message.placeholder);
        let priority = if urgent {
            Priority::Urgent
        } else {
            Priority::CatchUp {
                behind_since: shared.lock().behind_since.unwrap_or(now),
            }
        };
        let planned = match existing {
            Some(message) => PlannedCall::Edit(&message.id),
            None => PlannedCall::Send {
                reply_to: target.reply_to.as_deref(),
                private: false,
            },
        };
        let ended_notice = shared.ended.notified();
        let turn = tokio::select! {
            turn = target.paced.turn(&target.channel, planned, priority) => turn,
            // The answer ended while an intermediate edit waited: it is a final edit now,
            // which goes first.
            _ = ended_notice, if !urgent => continue,
        };

        // Render now, from everything produced while the call waited.
        let (text, live) = {
            let mut state = shared.lock();
            refresh(&mut parts, &mut rendered_version, &state);
            if state.ending.is_some() {
                while parts.len() < shown.len() {
                    parts.push("…".into());
                }
            }
            let Some(part) = parts.get(index) else {
                // A replacement made the answer shorter than this part: nothing to show.
                continue;
            };
            let live = !(index + 1 < parts.len() || state.ending.is_some());
            state.since_snapshot = None;
            let view = if live {
                live_view(part, &limits)
            } else {
                part.clone()
            };
            (view, live)
        };
        let source = parts[index].clone();
        if let Some(hook) = &progress
            && index + 1 == shown.len()
        {
            hook(&report.messages, &text).await;
        }
        let result = match shown.get(index) {
            None => turn
                .send(OutMessage {
                    text: text.clone(),
                    reply_to: target.reply_to.clone(),
                    continuation: index > 0,
                    private: false,
                    live,
                })
                .await
                .map(Some),
            Some(message) => turn.edit(&message.id, &text, live).await.map(|()| None),
        };
        match result {
            Ok(new_id) => {
                failures = 0;
                let now = Instant::now();
                {
                    let mut state = shared.lock();
                    state.behind_since = state.since_snapshot;
                }
                match new_id {
                    Some(id) => {
                        report.sends += 1;
                        report.messages.push(id.clone());
                        shown.push(Shown {
                            id,
                            source,
                            view: text,
                            live,
                            placeholder: false,
                            edits: 0,
                            last_call: now,
                        });
                    }
                    None => {
                        report.edits += 1;
                        if let Some(message) = shown.get_mut(index) {
                            message.source = source;
                            message.view = text;
                            message.live = live;
                            message.placeholder = false;
                            message.edits += 1;
                            message.last_call = now;
                        }
                    }
                }
                if let (Some(hook), Some(last)) = (&progress, shown.last())
                    && last.edits == 0
                    && !last.placeholder
                {
                    // A new message: its id is known only now.
                    hook(&report.messages, &last.view).await;
                }
            }
            Err(PlatformError::RateLimited { .. }) => {
                // The pacing has held the channel (and, for the whole bot, the budget) back.
                report.rate_limited += 1;
            }
            Err(PlatformError::Failed { detail }) => {
                report.failed_calls += 1;
                failures += 1;
                tracing::warn!(channel = %target.channel, %detail, "the platform refused a message");
                if failures >= MAX_FAILURES {
                    report.gave_up = true;
                    return report;
                }
                target.paced.hold_channel(
                    &target.channel,
                    Duration::from_millis(500 * u64::from(failures)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::render::split::LengthUnit;

    fn limits(max: usize) -> Limits {
        Limits {
            max_message_len: max,
            length_unit: LengthUnit::Chars,
            min_edit_interval: Duration::from_millis(100),
            min_channel_interval: Duration::from_millis(10),
            max_edits_per_message: None,
            typing_interval: Duration::from_secs(8),
            requests: None,
            marks_live: false,
        }
    }

    fn fences(text: &str) -> usize {
        text.lines()
            .filter(|line| line.trim_start().starts_with("```"))
            .count()
    }

    #[test]
    fn a_live_view_closes_the_fence_the_text_left_open() {
        let limits = limits(2000);
        assert_eq!(live_view("plain text", &limits), "plain text");
        assert_eq!(
            live_view("Here:\n```rust\nfn main() {", &limits),
            "Here:\n```rust\nfn main() {\n```"
        );
        assert_eq!(
            live_view("Here:\n```rust\nfn main() {}\n", &limits),
            "Here:\n```rust\nfn main() {}\n```"
        );
        // An opening line still arriving is a fence already.
        assert_eq!(live_view("Here:\n```ru", &limits), "Here:\n```ru\n```");
        // Closed fences are left alone; tildes close with tildes.
        let closed = "```\ncode\n```\nafter";
        assert_eq!(live_view(closed, &limits), closed);
        assert_eq!(live_view("~~~~\ncode", &limits), "~~~~\ncode\n~~~~");
    }

    #[test]
    fn a_live_view_that_would_not_fit_leaves_text_out_instead() {
        let limits = limits(20);
        let text = "```\n0123456789abcdef";
        assert_eq!(text.chars().count(), 20);
        let view = live_view(text, &limits);
        assert!(view.chars().count() <= 20, "{view:?}");
        assert!(view.ends_with("\n```"), "{view:?}");
        assert_eq!(fences(&view) % 2, 0, "{view:?}");
        assert!(text.starts_with(view.trim_end_matches("\n```")), "{view:?}");
    }

    #[test]
    fn every_prefix_of_a_code_answer_shows_balanced_fences_live() {
        let answer =
            "Intro.\n\n```python\ndef f(x):\n    return x * 2\n```\n\nThen:\n\n~~~\nraw\n~~~\nend";
        let limits = limits(2000);
        for end in (0..=answer.len()).filter(|end| answer.is_char_boundary(*end)) {
            let view = live_view(&answer[..end], &limits);
            let backticks = fences(&view);
            assert_eq!(backticks % 2, 0, "{view:?}");
            assert!(view.starts_with(&answer[..end]), "{view:?}");
        }
    }
}
