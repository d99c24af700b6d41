//! The conversation manager: where a message's path runs from adapter to Poe and back.
//!
//! Every channel has one queue and one worker, so replies in a channel come one at a time
//! and in order, while many channels run at once (at most `chat.max_concurrent_replies`).
//! A turn: check the budget and reserve, record the user's turn, call Poe with the channel's
//! model, parameters and context, stream the answer through the renderer, record the answer,
//! settle the budget. Replies in flight are recorded, so a crash is cleaned up on the next
//! start ([`Manager::recover`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use tokio::sync::{Semaphore, watch};

use super::budget::{BudgetError, Budgets, Spender};
use super::catalog::Catalog;
use super::commands::{self, Command};
use super::cost::Price;
use super::flood::{FloodControl, Flooded};
use super::loops::{LoopGuard, PAUSED_NOTICE, Verdict};
use super::pacing::{Paced, Pacing, Priority};
use super::queued::{PostedNote, QueuedQuestion};
use super::reconcile;
use super::render::split::split;
use super::render::stream::{Ending, Renderer, Target};
use crate::config::Config;
use crate::lanes::{self, Lanes};
use crate::metrics::Metrics;
use crate::platform::{
    ChannelKey, Inbound, Invocation, MessageId, OutFile, OutMessage, Outbound, PlatformError,
    Speaker,
};
use crate::poe::{ChatMessage, ChatRequest, InputFile, PoeClient, PoeError, PoeEvent, Role, Usage};
use crate::store::{ChannelSettings, InflightReply, Store, Turn, TurnRole};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// What the core is built from; commands use it too.
pub struct Services {
    pub poe: PoeClient,
    pub store: Store,
    pub budgets: Budgets,
    pub catalog: Catalog,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

impl Services {
    pub fn new(config: Config, poe: PoeClient, store: Store) -> Services {
        Services {
            budgets: Budgets::new(store.clone(), config.budget.clone()),
            catalog: Catalog::new(poe.clone()),
            poe,
            store,
            config,
            metrics: Arc::default(),
        }
    }

    pub fn spender(&self, inbound: &Inbound) -> Spender {
        Spender {
            key: format!("{}:{}", inbound.channel.platform, inbound.user_id),
            name: inbound.user_name.clone(),
            is_admin: inbound.is_bot_admin,
        }
    }

    pub fn model_for(&self, settings: &ChannelSettings) -> String {
        settings
            .model
            .clone()
            .unwrap_or_else(|| self.config.chat.default_model.clone())
    }
}

/// What became of an inbound event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// A conversation turn waiting in (or running from) its channel's queue.
    Queued,
    /// A command, answered.
    Answered,
    Duplicate,
    /// From before the bot started: never replayed.
    TooOld,
    /// The daemon is stopping and takes no new work.
    ShuttingDown,
    /// Kept from Poe: bots answering each other, or one person's flood of questions.
    Held,
}

/// What a graceful stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Replies that were running when the stop began.
    pub in_flight: usize,
    /// Of those, the ones still running at the deadline, ended with a note.
    pub interrupted: usize,
}

/// Work the manager holds: replies running, and turns waiting in a channel's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Busy {
    running: usize,
    queued: usize,
    /// A stop began: no new work is taken. Kept here so that taking work and starting a
    /// stop cannot interleave.
    draining: bool,
}

/// Which count a piece of work joins.
#[derive(Clone, Copy)]
enum Slot {
    Running,
    Queued,
}

/// How often retention (expired turns, ledger entries, seen events) runs.
const RETENTION_EVERY_MS: i64 = 3_600_000;

/// The note on a reply found unfinished after a restart.
const RESTARTED_NOTICE: &str =
    "⚠️ This answer was interrupted: the bot restarted. Ask again to get a full answer.";

/// The note on a reply cut short by a bug in the bot.
const FAILED_NOTICE: &str =
    "⚠️ This answer was cut off by an error in the bot. Ask again to get a full answer.";

/// The note that ends a reply cut short by a stop.
const STOPPING_NOTICE: &str =
    "⚠️ Interrupted: the bot is restarting. Ask again in a minute to get a full answer.";

struct Job {
    inbound: Inbound,
    out: Paced,
    admitted: Admitted,
    /// A question's place with the loop guard and flood control (commands have none), held
    /// for its `Drop`.
    _asked: Option<Asked>,
    /// A question's wait, spoken up for while it lasts (commands have none).
    waiting: Option<Arc<QueuedQuestion>>,
}

/// A piece of work's place in the busy counts. It is given back when dropped, a panic
/// included, so a stop never waits for work that is gone.
struct Admitted {
    manager: Manager,
    slot: Slot,
}

impl Admitted {
    /// A queued turn got its slot.
    fn start_running(&mut self) {
        self.manager.update_busy(|busy| {
            busy.queued -= 1;
            busy.running += 1;
        });
        self.slot = Slot::Running;
    }
}

/// A question in the bot's hands, given back to the loop guard and flood control when its
/// job is dropped, however it ended.
struct Asked {
    manager: Manager,
    channel: ChannelKey,
    /// Whom flood control counted it for (the bot's admins are not counted).
    person: Option<String>,
}

impl Asked {
    fn new(manager: &Manager, channel: &ChannelKey, person: Option<String>) -> Asked {
        manager.inner.loops.answer_started(channel);
        Asked {
            manager: manager.clone(),
            channel: channel.clone(),
            person,
        }
    }
}

impl Drop for Asked {
    fn drop(&mut self) {
        let inner = &self.manager.inner;
        inner
            .loops
            .answer_ended(&self.channel, std::time::Instant::now());
        if let Some(person) = &self.person {
            inner.flood.release(person);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let slot = self.slot;
        self.manager.update_busy(|busy| match slot {
            Slot::Running => busy.running -= 1,
            Slot::Queued => busy.queued -= 1,
        });
    }
}

/// The manager. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    services: Services,
    started_ms: i64,
    /// Jobs are boxed: a lane's queue allocates room for many items at once, and an
    /// unboxed job would make that several kilobytes per channel.
    lanes: Lanes<ChannelKey, Box<Job>>,
    pacing: Pacing,
    permits: Arc<Semaphore>,
    /// Set at the stop's deadline: running replies end now.
    interrupt: watch::Sender<bool>,
    busy: watch::Sender<Busy>,
    loops: LoopGuard,
    flood: FloodControl,
    /// When retention last ran (0: not yet).
    last_retention_ms: AtomicI64,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Manager {
    pub fn new(services: Services) -> Manager {
        let permits = Arc::new(Semaphore::new(services.config.chat.max_concurrent_replies));
        let pacing = Pacing::new(services.metrics.clone());
        let flood = FloodControl::new(services.config.chat.max_questions_per_user);
        Manager {
            inner: Arc::new(Inner {
                services,
                started_ms: now_ms(),
                lanes: Lanes::new(lanes::IDLE),
                pacing,
                permits,
                interrupt: watch::channel(false).0,
                busy: watch::channel(Busy::default()).0,
                loops: LoopGuard::default(),
                flood,
                last_retention_ms: AtomicI64::new(0),
            }),
        }
    }

    /// When this manager started: events stamped earlier are never answered.
    pub fn started_ms(&self) -> i64 {
        self.inner.started_ms
    }

    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// The paced side of a platform's adapter: the only way to reach the platform. Adapters
    /// use it too, for notices of their own and for calls they make themselves.
    pub fn paced(&self, platform: &str, out: Arc<dyn Outbound>) -> Paced {
        self.inner.pacing.paced(platform, out)
    }

    pub fn pacing(&self) -> &Pacing {
        &self.inner.pacing
    }

    /// Posts a short notice from an adapter (a malformed command, a file that cannot be
    /// fetched) as a reply to `reply_to`, paced like every other call.
    pub async fn tell(
        &self,
        out: Arc<dyn Outbound>,
        channel: &ChannelKey,
        reply_to: &str,
        text: String,
        private: bool,
    ) {
        let paced = self.paced(&channel.platform, out);
        self.post_to(&paced, channel, reply_to, None, text, private)
            .await;
    }

    fn is_draining(&self) -> bool {
        self.inner.busy.borrow().draining
    }

    /// Counts new work in, unless a stop began.
    fn admit(&self, slot: Slot) -> Option<Admitted> {
        let metrics = &self.inner.services.metrics;
        let admitted = self.inner.busy.send_if_modified(|busy| {
            if busy.draining {
                return false;
            }
            match slot {
                Slot::Running => busy.running += 1,
                Slot::Queued => busy.queued += 1,
            }
            metrics.set_active_conversations(busy.running);
            metrics.set_queue_depth(busy.queued);
            true
        });
        admitted.then(|| Admitted {
            manager: self.clone(),
            slot,
        })
    }

    fn update_busy(&self, change: impl FnOnce(&mut Busy)) {
        let metrics = &self.inner.services.metrics;
        self.inner.busy.send_modify(|busy| {
            change(busy);
            metrics.set_active_conversations(busy.running);
            metrics.set_queue_depth(busy.queued);
        });
    }

    /// Stops taking work, lets running replies finish for up to `grace`, then ends the
    /// rest with a note (their reservations released). Turns still queued get a note that
    /// the bot is restarting. Returns once nothing is running.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.busy.send_modify(|busy| busy.draining = true);
        let mut busy = self.inner.busy.subscribe();
        let in_flight = busy.borrow().running;
        let idle = |busy: &Busy| busy.running == 0 && busy.queued == 0;
        let finished = tokio::time::timeout(grace, async {
            drop(busy.wait_for(idle).await);
        })
        .await
        .is_ok();
        let mut interrupted = 0;
        if !finished {
            interrupted = busy.borrow().running;
            self.inner.interrupt.send_replace(true);
            // Each interrupted reply makes its final edit, paced like any other.
            let ended = tokio::time::timeout(Duration::from_secs(30), async {
                drop(busy.wait_for(idle).await);
            })
            .await;
            if ended.is_err() {
                tracing::warn!("replies did not end within 30 s of the interruption");
            }
        }
        ShutdownReport {
            in_flight,
            interrupted,
        }
    }

    /// Takes one platform event.
    pub async fn handle(&self, inbound: Inbound, out: Arc<dyn Outbound>) -> Disposition {
        let services = &self.inner.services;
        if self.is_draining() {
            return Disposition::ShuttingDown;
        }
        if inbound.timestamp_ms < self.inner.started_ms {
            return Disposition::TooOld;
        }
        let event_key = format!("{}:{}", inbound.channel.platform, inbound.event_id);
        match services.store.mark_seen(&event_key, now_ms()) {
            Ok(true) => {}
            Ok(false) => return Disposition::Duplicate,
            Err(err) => tracing::error!(%err, "cannot record a seen event; handling it anyway"),
        }
        let out = self.paced(&inbound.channel.platform, out);
        match inbound.invocation {
            Invocation::Command => {
                let parsed = commands::parse(&inbound.text);
                // `reset` must not overtake a reply still running in the channel.
                if parsed == Ok(Command::Reset) {
                    return self.enqueue(inbound, out, None);
                }
                let Some(_admitted) = self.admit(Slot::Running) else {
                    return Disposition::ShuttingDown;
                };
                let reply = commands::execute(services, &inbound, parsed, now_ms()).await;
                self.post(&out, &inbound, None, reply.text, reply.private)
                    .await;
                Disposition::Answered
            }
            Invocation::Message => match self.hold_back(&inbound, &out).await {
                Ok(person) => {
                    let asked = Asked::new(self, &inbound.channel, person);
                    self.enqueue(inbound, out, Some(asked))
                }
                Err(disposition) => disposition,
            },
        }
    }

    /// A message in a channel the bot is in that is not for the bot: a person writing there
    /// ends a pause of the loop guard.
    pub fn observe(&self, channel: &ChannelKey, sender: &str, speaker: Speaker) {
        self.inner
            .loops
            .observed(channel, sender, speaker, std::time::Instant::now());
    }

    /// Keeps a question from Poe when bots are answering each other or its asker already
    /// has `chat.max_questions_per_user` in the bot's hands. Otherwise returns whom flood
    /// control counted it for.
    async fn hold_back(
        &self,
        inbound: &Inbound,
        out: &Paced,
    ) -> Result<Option<String>, Disposition> {
        let now = std::time::Instant::now();
        let loops = &self.inner.loops;
        match loops.question(&inbound.channel, &inbound.user_id, inbound.speaker, now) {
            Verdict::Answer => {}
            Verdict::Pause => {
                self.refuse(out, inbound, None, "bot_loop", PAUSED_NOTICE.into())
                    .await;
                return Err(Disposition::Held);
            }
            Verdict::Ignore => {
                self.count_refusal(&inbound.channel, &inbound.user_id, "bot_loop");
                return Err(Disposition::Held);
            }
        }
        if inbound.is_bot_admin {
            return Ok(None);
        }
        let person = self.inner.services.spender(inbound).key;
        match self.inner.flood.take(&person) {
            Ok(()) => Ok(Some(person)),
            Err(Flooded::Tell) => {
                let limit = self.inner.flood.limit();
                let text = format!(
                    "You have {limit} questions waiting for an answer already. Ask again once one is answered."
                );
                self.count_refusal(&inbound.channel, &inbound.user_id, "flood");
                self.post(out, inbound, None, text, true).await;
                Err(Disposition::Held)
            }
            Err(Flooded::Quiet) => {
                self.count_refusal(&inbound.channel, &inbound.user_id, "flood");
                Err(Disposition::Held)
            }
        }
    }

    /// Queues a turn in its channel; `asked` is a question's place with the loop guard and
    /// flood control (a queued command has none).
    fn enqueue(&self, inbound: Inbound, out: Paced, asked: Option<Asked>) -> Disposition {
        let Some(admitted) = self.admit(Slot::Queued) else {
            return Disposition::ShuttingDown;
        };
        // A question that cannot start at once says so (typing, then a note).
        let waiting = (inbound.invocation == Invocation::Message).then(|| {
            let waiting = QueuedQuestion::new();
            let manager = Arc::downgrade(&self.inner);
            waiting.speak_up(
                out.clone(),
                inbound.channel.clone(),
                inbound.event_id.clone(),
                self.inner.services.store.clone(),
                self.inner.services.config.chat.max_concurrent_replies,
                move || {
                    manager
                        .upgrade()
                        .is_none_or(|inner| inner.busy.borrow().draining)
                },
            );
            waiting
        });
        let manager = self.clone();
        let job = Box::new(Job {
            inbound,
            out,
            admitted,
            _asked: asked,
            waiting,
        });
        self.inner
            .lanes
            .push(job.inbound.channel.clone(), job, move |job| {
                let manager = manager.clone();
                async move {
                    if manager.is_draining() {
                        manager.turn_away(&job).await;
                        return;
                    }
                    manager.run_job(job).await;
                }
            });
        Disposition::Queued
    }

    /// The note a queued question showed, taken over by its turn (or its refusal).
    async fn take_note(&self, job: &Job) -> Option<PostedNote> {
        match &job.waiting {
            Some(waiting) => waiting.begin().await,
            None => None,
        }
    }

    /// A turn that will not start because the daemon is stopping: say so rather than go
    /// quiet. (A queued command, such as `reset`, is dropped: it can be run again.)
    async fn turn_away(&self, job: &Job) {
        let note = self.take_note(job).await;
        if job.inbound.invocation == Invocation::Message {
            self.post(
                &job.out,
                &job.inbound,
                note.as_ref(),
                "The bot is restarting and did not get to this. Ask again in a minute.".into(),
                false,
            )
            .await;
        }
    }

    /// Runs a turn once a slot is free; it counts as queued until then.
    async fn run_job(&self, mut job: Box<Job>) {
        if let Some(waiting) = &job.waiting {
            waiting.waiting_for_slot();
        }
        let Ok(_permit) = self.inner.permits.clone().acquire_owned().await else {
            return;
        };
        // It may have waited for the slot while a stop began.
        if self.is_draining() {
            self.turn_away(&job).await;
            return;
        }
        job.admitted.start_running();
        let note = self.take_note(&job).await;
        // A bug in one turn must not stop the channel's worker.
        let outcome = std::panic::AssertUnwindSafe(self.work(&job, note))
            .catch_unwind()
            .await;
        if outcome.is_err() {
            tracing::error!(channel = %job.inbound.channel, "a conversation turn failed unexpectedly (a bug); the channel goes on");
            self.clean_up_after_panic(&job).await;
        }
    }

    /// Ends the message of a reply whose render task failed with a note, from what its
    /// in-flight record says the chat shows.
    async fn close_crashed_reply(&self, out: &Paced, inflight_id: u64) {
        for record in self.inflight_where(|record| record.id == inflight_id) {
            self.mark_failed(out, &record).await;
            // Marked once: a later failure in this turn must not mark it again. The turn
            // itself settles the reservation.
            if let Err(err) = self.inner.services.store.remove_inflight(record.id) {
                tracing::error!(%err, "cannot clear the reply in flight");
            }
        }
    }

    /// A turn that panicked left its in-flight record and reservation behind: the points go
    /// back and its message ends with a note, as after a crash. Records of questions still
    /// queued in the channel (their notes) are theirs, not this turn's.
    async fn clean_up_after_panic(&self, job: &Job) {
        let inbound = &job.inbound;
        for record in self.inflight_where(|record| {
            record.channel == inbound.channel && record.reply_to == inbound.event_id
        }) {
            self.release_interrupted(&record);
            self.mark_failed(&job.out, &record).await;
        }
    }

    /// The replies in flight that `wanted` picks; none if the store cannot be read.
    fn inflight_where(&self, wanted: impl Fn(&InflightReply) -> bool) -> Vec<InflightReply> {
        match self.inner.services.store.inflight_replies() {
            Ok(records) => records
                .into_iter()
                .filter(|record| wanted(record))
                .collect(),
            Err(err) => {
                tracing::error!(%err, "cannot read replies left in flight");
                Vec::new()
            }
        }
    }

    /// Ends a reply cut short by a bug with a note. The bug may lie in the platform itself,
    /// so a panic here is caught too.
    async fn mark_failed(&self, out: &Paced, record: &InflightReply) {
        let noted = std::panic::AssertUnwindSafe(self.mark_interrupted(out, record, FAILED_NOTICE))
            .catch_unwind()
            .await;
        if noted.is_err() {
            tracing::error!(channel = %record.channel, "cannot mark a failed reply either");
        }
    }

    async fn work(&self, job: &Job, note: Option<PostedNote>) {
        if job.inbound.invocation == Invocation::Command {
            let parsed = commands::parse(&job.inbound.text);
            let reply =
                commands::execute(&self.inner.services, &job.inbound, parsed, now_ms()).await;
            self.post(&job.out, &job.inbound, None, reply.text, reply.private)
                .await;
            return;
        }
        self.converse(&job.inbound, &job.out, note).await;
    }

    /// Posts a short answer (commands, refusals) to `inbound`, split if needed; a queued
    /// question's note becomes its first part.
    async fn post(
        &self,
        out: &Paced,
        inbound: &Inbound,
        note: Option<&PostedNote>,
        text: String,
        private: bool,
    ) {
        self.post_to(
            out,
            &inbound.channel,
            &inbound.event_id,
            note,
            text,
            private,
        )
        .await;
    }

    async fn post_to(
        &self,
        out: &Paced,
        channel: &ChannelKey,
        reply_to: &str,
        note: Option<&PostedNote>,
        text: String,
        private: bool,
    ) {
        let limits = out.limits();
        for (index, part) in split(&text, limits.max_message_len, limits.length_unit)
            .iter()
            .enumerate()
        {
            let text = part.render();
            let note = note.filter(|_| index == 0);
            for _ in 0..5 {
                let result = match note {
                    Some(note) => {
                        out.edit(channel, &note.message, &text, false, Priority::Urgent)
                            .await
                    }
                    None => {
                        let message = OutMessage {
                            text: text.clone(),
                            reply_to: Some(reply_to.to_owned()),
                            continuation: index > 0,
                            private,
                            live: false,
                        };
                        out.send(channel, message, Priority::Urgent)
                            .await
                            .map(|_| ())
                    }
                };
                match result {
                    Ok(()) => break,
                    // The pacing holds the channel back for the platform's retry-after.
                    Err(PlatformError::RateLimited { .. }) => {}
                    Err(err) => {
                        tracing::warn!(channel = %channel, %err, "cannot post a reply");
                        break;
                    }
                }
            }
        }
        if let Some(note) = note
            && let Err(err) = self.inner.services.store.remove_inflight(note.record)
        {
            tracing::error!(%err, "cannot clear the queued note's record");
        }
    }

    /// Answers a question with `text` instead of asking Poe; counted and logged with
    /// `reason`, like the turn line of a turn that ran.
    async fn refuse(
        &self,
        out: &Paced,
        inbound: &Inbound,
        note: Option<&PostedNote>,
        reason: &'static str,
        text: String,
    ) {
        self.count_refusal(&inbound.channel, &inbound.user_id, reason);
        self.post(out, inbound, note, text, false).await;
    }

    /// Counts and logs a question not sent to Poe; adapters use it for the refusals they
    /// decide themselves (the access lists).
    pub fn count_refusal(&self, channel: &ChannelKey, user: &str, reason: &'static str) {
        self.inner.services.metrics.refusal(reason);
        tracing::info!(%channel, user, reason, "question refused");
    }

    /// One conversation turn.
    async fn converse(&self, inbound: &Inbound, out: &Paced, note: Option<PostedNote>) {
        let note = note.as_ref();
        let services = &self.inner.services;
        let config = &services.config;
        let started = tokio::time::Instant::now();
        let channel = &inbound.channel;
        let question_chars = inbound.text.chars().count();
        if question_chars > config.chat.max_question_chars {
            let text = format!(
                "Your message is {question_chars} characters long; the bot takes questions of up to {} characters. Shorten it, or send the text as a file.",
                config.chat.max_question_chars
            );
            self.refuse(out, inbound, note, "question_too_long", text)
                .await;
            return;
        }
        if let Some(file) = inbound
            .attachments
            .iter()
            .find(|file| file.size > config.chat.max_attachment_bytes)
        {
            let text = format!(
                "`{}` is {} MB; the bot passes on files up to {} MB. Send a smaller file.",
                file.name,
                file.size.div_ceil(1 << 20),
                config.chat.max_attachment_bytes >> 20
            );
            self.refuse(out, inbound, note, "file_too_large", text)
                .await;
            return;
        }
        let settings = match services.store.channel_settings(channel) {
            Ok(settings) => settings,
            Err(err) => {
                tracing::error!(%err, "cannot read channel settings");
                let text = "The bot cannot read its records right now. Try again later.";
                self.refuse(out, inbound, note, "store_error", text.into())
                    .await;
                return;
            }
        };
        let model = services.model_for(&settings);
        let info = services.catalog.find(&model).await;
        let media = info.as_ref().is_some_and(|info| info.outputs_media());
        let history = services
            .store
            .recent_turns(
                channel,
                settings.reset_after,
                config.chat.history_max_turns,
                config.chat.history_max_chars,
            )
            .unwrap_or_else(|err| {
                tracing::error!(%err, "cannot read history; answering without it");
                Vec::new()
            });
        let request = build_request(&model, &settings, &history, inbound, config, media);
        // The request holds what the context needs; the turns need not stay for the answer.
        drop(history);
        let prompt_chars: usize = request
            .messages
            .iter()
            .map(|message| message.content.chars().count())
            .sum();
        let prompt_tokens = super::cost::worst_case_prompt_tokens(
            request
                .messages
                .iter()
                .map(|message| message.content.len())
                .sum(),
            inbound.attachments.len(),
        );
        let max_output = info
            .as_ref()
            .and_then(|info| info.max_output_tokens())
            .map(|limit| (limit.max(1) as u64).min(u64::from(config.chat.max_output_tokens)))
            .unwrap_or(u64::from(config.chat.max_output_tokens));
        let price = Price::of(info.as_ref(), config.poe.model(&model));
        let spender = services.spender(inbound);
        let reservation = match services
            .budgets
            .reserve(
                &spender,
                &channel.to_string(),
                &model,
                price.reservation(&config.budget, prompt_tokens, max_output),
                now_ms(),
            )
            .await
        {
            Ok(reservation) => reservation,
            Err(err) => {
                let reason = match err {
                    BudgetError::Over { .. } => "over_budget",
                    BudgetError::Store(_) => "store_error",
                };
                let text = err.user_message(config.budget.period);
                self.refuse(out, inbound, note, reason, text).await;
                return;
            }
        };
        let metrics = &services.metrics;
        metrics.points("reserved", &model, reservation.points);

        let user_turn = Turn {
            seq: 0,
            role: TurnRole::User,
            author_id: inbound.user_id.clone(),
            author_name: inbound.user_name.clone(),
            text: inbound.text.clone(),
            at_ms: inbound.timestamp_ms,
        };
        if let Err(err) = services.store.append_turn(channel, &user_turn) {
            tracing::error!(%err, "cannot record the user's turn");
        }
        // A queued note is the answer's first message: its record carries on.
        let inflight = InflightReply {
            id: note.map_or_else(
                || services.store.next_id().unwrap_or(reservation.ledger_id),
                |note| note.record,
            ),
            channel: channel.clone(),
            reply_to: inbound.event_id.clone(),
            ledger_id: Some(reservation.ledger_id),
            started_ms: now_ms(),
            messages: note
                .map(|note| vec![note.message.clone()])
                .unwrap_or_default(),
            last_text: note.map(|note| note.text.clone()).unwrap_or_default(),
        };
        if let Err(err) = services.store.put_inflight(&inflight) {
            tracing::error!(%err, "cannot record the reply in flight");
        }
        // The user's turn, the reservation and the in-flight record must survive a crash
        // from here on: make them durable before Poe is asked.
        if let Err(err) = services.store.flush().await {
            tracing::error!(%err, "cannot flush the store");
        }
        let progress_store = services.store.clone();
        let progress_record = Mutex::new(inflight.clone());
        let renderer = Renderer::start(
            Target {
                paced: out.clone(),
                channel: channel.clone(),
                reply_to: Some(inbound.event_id.clone()),
                placeholder: note.map(|note| (note.message.clone(), note.text.clone())),
            },
            Some(Box::new(move |messages: &[MessageId], last_text: &str| {
                let mut record = locked(&progress_record);
                record.messages = messages.to_vec();
                record.last_text = last_text.to_owned();
                let result = progress_store.put_inflight(&record);
                let store = progress_store.clone();
                Box::pin(async move {
                    if let Err(err) = result {
                        tracing::warn!(%err, "cannot update the reply in flight");
                    }
                    if let Err(err) = store.flush().await {
                        tracing::warn!(%err, "cannot flush the store");
                    }
                })
            })),
        );

        let placeholder = media.then(|| format!("⏳ {model} is working on it…"));
        if let Some(text) = &placeholder {
            renderer.append(text);
        }
        let mut answer = String::new();
        let mut usage: Option<Usage> = None;
        let mut files: Vec<OutFile> = Vec::new();
        let mut failure: Option<PoeError> = None;
        let mut interrupted = false;
        let mut interrupt = self.inner.interrupt.subscribe();
        let asked = tokio::time::Instant::now();
        let mut first_text = None;
        let mut stream = services.poe.stream(request);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = async { drop(interrupt.wait_for(|now| *now).await) } => {
                    interrupted = true;
                    break;
                }
            };
            let Some(item) = item else {
                break;
            };
            let piece = match item {
                Ok(PoeEvent::Text(text)) => text,
                Ok(PoeEvent::Replace(text)) => {
                    answer.clear();
                    text
                }
                Ok(PoeEvent::File(file)) => {
                    files.push(OutFile {
                        name: file.name.clone(),
                        content_type: file.content_type.clone(),
                        url: file.url.clone(),
                    });
                    let separator = if answer.is_empty() { "" } else { "\n" };
                    if file.content_type.starts_with("image/") {
                        format!("{separator}![{}]({})", file.name, file.url)
                    } else {
                        format!("{separator}[{}]({})", file.name, file.url)
                    }
                }
                Ok(PoeEvent::Usage(reported)) => {
                    usage = Some(reported);
                    continue;
                }
                Ok(PoeEvent::SuggestedReply(_) | PoeEvent::Finished(_)) => continue,
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            };
            if first_text.is_none() && !piece.is_empty() {
                first_text = Some(asked.elapsed());
            }
            answer.push_str(&piece);
            if placeholder.is_some() || answer.len() == piece.len() {
                renderer.replace(&answer);
            } else {
                renderer.append(&piece);
            }
        }
        // Done with Poe: after an interruption, closing the stream stops the generation
        // (and its cost) while the final edit is made.
        let (transport, attempts) = (stream.transport(), stream.attempts());
        let retry_causes = stream.retry_causes().to_vec();
        drop(stream);
        if placeholder.is_some() && answer.is_empty() {
            renderer.replace("");
        }
        let ending = match (&failure, answer.is_empty()) {
            _ if interrupted => Ending::Failed {
                notice: STOPPING_NOTICE.into(),
            },
            (Some(err), _) => Ending::Failed {
                notice: err.user_message(),
            },
            (None, true) => Ending::Failed {
                notice: "The model sent an empty answer.".into(),
            },
            (None, false) => Ending::Complete,
        };
        let report = renderer.finish(ending).await;
        if report.crashed {
            self.close_crashed_reply(out, inflight.id).await;
        }
        for file in &files {
            if let Err(err) = out.send_file(channel, file, Some(&inbound.event_id)).await {
                // The answer's text links to the file, so the user still has it.
                tracing::warn!(channel = %channel, %err, "cannot post a file from the answer");
            }
        }

        if !answer.is_empty() {
            let bot_turn = Turn {
                seq: 0,
                role: TurnRole::Bot,
                author_id: "bot".into(),
                author_name: model.clone(),
                text: answer.clone(),
                at_ms: now_ms(),
            };
            if let Err(err) = services.store.append_turn(channel, &bot_turn) {
                tracing::error!(%err, "cannot record the answer");
            }
        }
        let settled = if interrupted || report.crashed || (answer.is_empty() && failure.is_some()) {
            // Nothing was produced (Poe does not charge refused or failed requests), or the
            // reply was cut short by a stop: give the reservation back; reconciliation brings
            // in whatever Poe charged.
            services
                .budgets
                .release(reservation.ledger_id, now_ms())
                .map(|()| 0)
        } else {
            // Never above the reservation: the budget check counted that much, so concurrent
            // requests cannot overspend; reconciliation brings in Poe's own figure later.
            let points = price
                .estimate(
                    &config.budget,
                    prompt_chars,
                    answer.chars().count(),
                    usage.as_ref(),
                )
                .min(reservation.points);
            services
                .budgets
                .settle(reservation.ledger_id, points, now_ms())
                .map(|()| points)
        };
        if let Err(err) = services.store.remove_inflight(inflight.id) {
            tracing::error!(%err, "cannot clear the reply in flight");
        }
        // The answer, the charge and the cleared record belong together on disk.
        if let Err(err) = services.store.flush().await {
            tracing::error!(%err, "cannot flush the store");
        }
        let outcome = match &failure {
            _ if interrupted => "interrupted",
            _ if report.crashed => "internal_error",
            None if answer.is_empty() => "empty",
            None => "ok",
            Some(err) => err.kind(),
        };
        let platform = channel.platform.as_str();
        let completion_tokens = usage
            .as_ref()
            .and_then(|usage| usage.completion_tokens)
            .unwrap_or(answer.chars().count() as u64 / 4);
        metrics.request(&model, outcome);
        metrics.tokens_streamed(&model, completion_tokens);
        if let Some(elapsed) = first_text {
            metrics.time_to_first_token(&model, elapsed);
        }
        metrics.reply_duration(&model, asked.elapsed());
        metrics.edits(platform, report.edits);
        for cause in &retry_causes {
            metrics.poe_retry(cause);
        }
        if let Ok(points) = settled {
            metrics.points("settled", &model, points);
        }
        tracing::info!(
            channel = %channel,
            user = %spender.key,
            model = %model,
            transport = ?transport,
            attempts,
            answer_chars = answer.chars().count(),
            tokens = completion_tokens,
            points_reserved = reservation.points,
            points_settled = settled.unwrap_or(-1),
            messages = report.messages.len(),
            edits = report.edits,
            platform_429s = report.rate_limited,
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = %outcome,
            "conversation turn"
        );
    }

    /// Cleans up after a crash: every reply left in flight gets a final word in its channel
    /// and its reservation back. `platforms` maps platform names to their outbound side.
    pub async fn recover(&self, platforms: &HashMap<String, Arc<dyn Outbound>>) -> usize {
        let services = &self.inner.services;
        let records = match services.store.inflight_replies() {
            Ok(records) => records,
            Err(err) => {
                tracing::error!(%err, "cannot read replies left in flight");
                return 0;
            }
        };
        let mut recovered = 0;
        for record in records {
            if let Some(out) = platforms.get(&record.channel.platform) {
                let out = self.paced(&record.channel.platform, out.clone());
                self.mark_interrupted(&out, &record, RESTARTED_NOTICE).await;
            }
            self.release_interrupted(&record);
            recovered += 1;
        }
        // A crash between reserving and recording the reply leaves a reservation with no
        // record: give those back too, or they would count until the period ends.
        let started_us = self.inner.started_ms * 1000;
        match services.store.ledger_since(0) {
            Ok(entries) => {
                for entry in entries {
                    if entry.state == crate::store::LedgerState::Reserved
                        && entry.created_us < started_us
                        && let Err(err) = services.budgets.release(entry.id, now_ms())
                    {
                        tracing::error!(%err, "cannot release a stale reservation");
                    }
                }
            }
            Err(err) => tracing::error!(%err, "cannot read the ledger"),
        }
        if recovered > 0 {
            tracing::info!(recovered, "cleaned up replies interrupted by a restart");
        }
        recovered
    }

    /// Gives back the reservation of a reply that will not finish, and forgets its record.
    fn release_interrupted(&self, record: &InflightReply) {
        let services = &self.inner.services;
        if let Some(ledger_id) = record.ledger_id
            && let Err(err) = services.budgets.release(ledger_id, now_ms())
        {
            tracing::error!(%err, "cannot release an interrupted reservation");
        }
        if let Err(err) = services.store.remove_inflight(record.id) {
            tracing::error!(%err, "cannot clear an interrupted reply");
        }
    }

    /// Tells the channel an answer was cut off: a final edit of its last message when the
    /// notice fits, otherwise a new message in reply to the question.
    async fn mark_interrupted(&self, out: &Paced, record: &InflightReply, notice: &str) {
        let limits = out.limits();
        let amended = format!("{}\n\n{notice}", record.last_text);
        let fits = crate::core::render::split::measure(&amended, limits.length_unit)
            <= limits.max_message_len;
        let mut edit_first = fits && !record.last_text.is_empty() && !record.messages.is_empty();
        for _ in 0..5 {
            let result = match record.messages.last() {
                Some(last) if edit_first => {
                    out.edit(&record.channel, last, &amended, false, Priority::Urgent)
                        .await
                }
                _ => out
                    .send(
                        &record.channel,
                        OutMessage {
                            text: notice.into(),
                            reply_to: Some(record.reply_to.clone()),
                            continuation: false,
                            private: false,
                            live: false,
                        },
                        Priority::Urgent,
                    )
                    .await
                    .map(|_| ()),
            };
            match result {
                Ok(()) => return,
                // The pacing holds the channel back for the platform's retry-after.
                Err(PlatformError::RateLimited { .. }) => {}
                Err(err) => {
                    tracing::warn!(channel = %record.channel, %err, "cannot edit an interrupted reply");
                    if !edit_first {
                        return;
                    }
                    // The message may be gone: say it in a new one.
                    edit_first = false;
                }
            }
        }
    }

    /// Runs reconciliation and retention in the background until the manager is dropped.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let interval =
            Duration::from_secs(self.inner.services.config.budget.reconcile_interval_secs);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let manager = Manager { inner };
                manager.maintain().await;
            }
        })
    }

    /// One round of upkeep: reconcile the ledger; at most hourly, delete expired turns,
    /// ledger entries and seen events.
    pub async fn maintain(&self) {
        let services = &self.inner.services;
        let budget = &services.config.budget;
        match reconcile::reconcile_once(
            &services.poe,
            &services.store,
            now_ms() * 1000,
            budget.reconcile_after_secs as i64 * 1_000_000,
            budget.reconcile_slack_secs as i64 * 1_000_000,
        )
        .await
        {
            Ok(report) if report.requests_reconciled > 0 => {
                for (model, points) in &report.by_model {
                    services.metrics.points("reconciled", model, *points);
                }
                tracing::info!(
                    requests = report.requests_reconciled,
                    poe_entries = report.poe_entries_used,
                    points = report.points,
                    "reconciled the ledger with Poe's points history"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "cannot reconcile with Poe's points history"),
        }
        // Retention walks whole trees, so it runs at most hourly, not every reconcile tick.
        let now = now_ms();
        let last = self.inner.last_retention_ms.load(Ordering::Relaxed);
        if last != 0 && now - last < RETENTION_EVERY_MS {
            return;
        }
        self.inner.last_retention_ms.store(now, Ordering::Relaxed);
        let day_ms: i64 = 86_400_000;
        let history_days = services.config.chat.history_retention_days as i64;
        if let Err(err) = services
            .store
            .prune_turns_before(now.saturating_sub(history_days.saturating_mul(day_ms)))
        {
            tracing::warn!(%err, "cannot delete expired turns");
        }
        let ledger_days = budget.ledger_retention_days as i64;
        let ledger_cutoff_ms = now.saturating_sub(ledger_days.saturating_mul(day_ms));
        match services
            .store
            .prune_ledger_before(ledger_cutoff_ms.saturating_mul(1000), now)
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "deleted expired ledger entries"),
            Err(err) => tracing::warn!(%err, "cannot delete expired ledger entries"),
        }
        if let Err(err) = services.store.prune_seen_before(now - 7 * day_ms) {
            tracing::warn!(%err, "cannot forget old events");
        }
    }
}

/// The request for one turn: system prompt, earlier turns (speakers named in group chats),
/// the new question with its files.
fn build_request(
    model: &str,
    settings: &ChannelSettings,
    history: &[Turn],
    inbound: &Inbound,
    config: &Config,
    media: bool,
) -> ChatRequest {
    let speaker = |name: &str, text: &str| {
        if inbound.is_group {
            format!("{name}: {text}")
        } else {
            text.to_owned()
        }
    };
    let mut messages = Vec::with_capacity(history.len() + 2);
    if let Some(prompt) = &settings.system_prompt {
        messages.push(ChatMessage::new(Role::System, prompt.clone()));
    }
    for turn in history {
        messages.push(match turn.role {
            TurnRole::User => ChatMessage::user(speaker(&turn.author_name, &turn.text)),
            TurnRole::Bot => ChatMessage::new(Role::Bot, turn.text.clone()),
        });
    }
    let mut question = ChatMessage::user(speaker(&inbound.user_name, &inbound.text));
    question.attachments = inbound
        .attachments
        .iter()
        .map(|file| InputFile {
            name: file.name.clone(),
            content_type: file.content_type.clone(),
            source: file.source.clone(),
        })
        .collect();
    messages.push(question);
    let mut request = ChatRequest::new(model, messages);
    request.parameters = settings.parameters.clone();
    request.max_output_tokens = Some(config.chat.max_output_tokens);
    request.streaming = !media;
    request
}
