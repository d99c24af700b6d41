//! The streaming renderer: shows a growing answer in the chat as it arrives.
//!
//! The producer (the conversation) appends text; a task owned by the renderer decides when
//! to send and edit. Typing shows until the first text; the first message goes out on the
//! first text; after that each message is edited at most once per `min_edit_interval`, every
//! call in a channel is spaced by `min_channel_interval`, a platform 429 pushes the channel's
//! next slot back by its retry-after, and Matrix-style edit caps are kept for intermediate
//! edits while the final edit always lands. Every call renders from the whole text so far,
//! so a refused call loses nothing: the next one carries the same text.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::split::{Part, measure, split};
use crate::platform::{ChannelKey, Limits, MessageId, OutMessage, Outbound, PlatformError};

/// How an answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The answer stopped early; the notice says why and follows the partial text.
    Failed {
        notice: String,
    },
}

/// Spaces out one channel's calls and holds back after a platform 429. Shared by every
/// renderer writing to the channel.
#[derive(Debug)]
pub struct ChannelPacer {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl ChannelPacer {
    pub fn new(interval: Duration) -> Self {
        ChannelPacer {
            interval,
            next_slot: Mutex::new(Instant::now()),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Instant> {
        self.next_slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for this channel's next free slot and takes it.
    pub async fn wait_turn(&self) {
        let turn = {
            let mut next = self.slot();
            let turn = (*next).max(Instant::now());
            *next = turn + self.interval;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }

    /// Nothing is scheduled: a new pacer would behave the same.
    pub fn is_idle(&self) -> bool {
        *self.slot() <= Instant::now()
    }

    /// The platform said to wait: nothing goes out in this channel before then.
    pub fn back_off(&self, retry_after: Duration) {
        let mut next = self.slot();
        *next = (*next).max(Instant::now() + retry_after);
    }
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
}

#[derive(Default)]
struct Produced {
    text: String,
    version: u64,
    ending: Option<Ending>,
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
    pub out: Arc<dyn Outbound>,
    pub channel: ChannelKey,
    pub reply_to: Option<String>,
    pub pacer: Arc<ChannelPacer>,
}

impl Renderer {
    pub fn start(target: Target, progress: Option<ProgressHook>) -> Renderer {
        let shared = Arc::new(Shared {
            state: Mutex::new(Produced::default()),
            changed: Notify::new(),
        });
        let limits = target.out.limits();
        let task = tokio::spawn(render(target, limits, shared.clone(), progress));
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
        state.version += 1;
        drop(state);
        self.shared.changed.notify_one();
    }

    pub fn replace(&self, text: &str) {
        let mut state = self.shared.lock();
        state.text.clear();
        state.text.push_str(text);
        state.version += 1;
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
    text: String,
    edits: u32,
    last_call: Instant,
}

/// The messages the chat should show for `text` and `ending`.
fn desired(text: &str, ending: Option<&Ending>, limits: &Limits) -> Vec<String> {
    let mut parts: Vec<String> = split(text, limits.max_message_len, limits.length_unit)
        .iter()
        .map(Part::render)
        .collect();
    if let Some(Ending::Failed { notice }) = ending {
        let notice = format!("⚠️ {notice}");
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

/// Tries per call before the renderer gives up on a part the platform keeps refusing.
const MAX_FAILURES: u32 = 3;

async fn render(
    target: Target,
    limits: Limits,
    shared: Arc<Shared>,
    progress: Option<ProgressHook>,
) -> RenderReport {
    let mut report = RenderReport::default();
    let mut shown: Vec<Shown> = Vec::new();
    let mut next_typing = Instant::now();
    let mut failures = 0;
    let mut parts: Vec<String> = Vec::new();
    let mut rendered_version = u64::MAX;
    loop {
        let notified = shared.changed.notified();
        let ending = {
            let state = shared.lock();
            if state.version != rendered_version || state.ending.is_some() {
                parts = desired(&state.text, state.ending.as_ref(), &limits);
                rendered_version = state.version;
            }
            state.ending.clone()
        };
        if ending.is_some() {
            // The answer was replaced by a shorter one: empty out messages it no longer needs.
            while parts.len() < shown.len() {
                parts.push("…".into());
            }
        }
        let now = Instant::now();
        // The first part that differs from the chat and may be written now, or when.
        let mut due: Option<(usize, Instant)> = None;
        for (index, part) in parts.iter().enumerate() {
            let ready_at = match shown.get(index) {
                None => Some(now),
                Some(message) if &message.text == part => continue,
                Some(message) => {
                    let is_final = index + 1 < parts.len() || ending.is_some();
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
                    due = Some((index, at));
                    break;
                }
            }
        }
        let Some((index, ready_at)) = due else {
            if ending.is_some() && shown.len() >= parts.len() {
                return report;
            }
            // Nothing to write: wait for more text, showing typing until the first message.
            if shown.is_empty() && ending.is_none() {
                if Instant::now() >= next_typing {
                    let _ = target.out.typing(&target.channel).await;
                    next_typing = Instant::now() + limits.typing_interval;
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
        let text = parts[index].clone();
        if let Some(hook) = &progress
            && index + 1 == shown.len()
        {
            hook(&report.messages, &text).await;
        }
        target.pacer.wait_turn().await;
        let result = match shown.get(index) {
            None => target
                .out
                .send(
                    &target.channel,
                    OutMessage {
                        text: text.clone(),
                        reply_to: target.reply_to.clone(),
                        continuation: index > 0,
                        private: false,
                    },
                )
                .await
                .map(Some),
            Some(message) => target
                .out
                .edit(&target.channel, &message.id, &text)
                .await
                .map(|()| None),
        };
        match result {
            Ok(new_id) => {
                failures = 0;
                let now = Instant::now();
                match new_id {
                    Some(id) => {
                        report.sends += 1;
                        report.messages.push(id.clone());
                        shown.push(Shown {
                            id,
                            text,
                            edits: 0,
                            last_call: now,
                        });
                    }
                    None => {
                        report.edits += 1;
                        if let Some(message) = shown.get_mut(index) {
                            message.text = text;
                            message.edits += 1;
                            message.last_call = now;
                        }
                    }
                }
                if let (Some(hook), Some(last)) = (&progress, shown.last())
                    && last.edits == 0
                {
                    // A new message: its id is known only now.
                    hook(&report.messages, &last.text).await;
                }
            }
            Err(PlatformError::RateLimited { retry_after }) => {
                report.rate_limited += 1;
                target.pacer.back_off(retry_after);
            }
            Err(PlatformError::Failed { detail }) => {
                report.failed_calls += 1;
                failures += 1;
                tracing::warn!(channel = %target.channel, %detail, "the platform refused a message");
                if failures >= MAX_FAILURES {
                    report.gave_up = true;
                    return report;
                }
                target
                    .pacer
                    .back_off(Duration::from_millis(500 * u64::from(failures)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pacer_is_idle_only_once_its_next_slot_has_passed() {
        let pacer = ChannelPacer::new(Duration::from_millis(250));
        assert!(pacer.is_idle());
        pacer.wait_turn().await;
        assert!(!pacer.is_idle(), "the next slot is 250 ms away");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(pacer.is_idle());
        // A platform's back-off is kept as long as it lasts.
        pacer.back_off(Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!pacer.is_idle());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(pacer.is_idle());
    }
}
