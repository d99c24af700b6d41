//! The conversation manager: where a message's path runs from adapter to Poe and back.
//!
//! Every channel has one queue and one worker, so replies in a channel come one at a time
//! and in order, while many channels run at once (at most `chat.max_concurrent_replies`).
//! The manager routes: a question or a regenerate or continue becomes a turn in its
//! channel's queue ([`super::turn`] runs it), a command is answered, a stop reaches the
//! stream it aims at ([`super::controls`]). Replies in flight are recorded, so a crash is
//! cleaned up on the next start ([`Manager::recover`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, watch};

use super::boundary::{ChannelKey, Inbound, Invocation, Outbound, Speaker};
use super::commands::{self, Command};
use super::controls::{self, Pressed, Queued};
use super::flood::{FloodControl, Flooded};
use super::loops::{LoopGuard, PAUSED_NOTICE, Verdict};
use super::pacing::{Paced, Pacing};
use super::queued::{PostedNote, QueuedQuestion};
use super::reconcile;
use super::reply;
use super::running::Running;
use super::services::{Services, now_ms};
use super::turn::{self, Kind, TurnEnv};
use crate::lanes::{self, Lanes};

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
    /// Nothing to do (an edit that changes no answer, a reaction on someone else's message).
    Ignored,
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

/// What a job in a channel's queue does.
enum Work {
    Ask,
    /// A command that must not overtake the channel's replies (`reset`).
    Command,
    Control(Queued),
}

struct Job {
    inbound: Inbound,
    work: Work,
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
    running: Running,
    /// When retention last ran (0: not yet).
    last_retention_ms: AtomicI64,
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
                running: Running::default(),
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
        reply::post(
            self.services(),
            &paced,
            channel,
            reply_to,
            None,
            text,
            private,
        )
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
        match inbound.invocation.clone() {
            Invocation::Command => {
                let parsed = commands::parse(&inbound.text);
                match parsed {
                    Ok(Command::Control(control)) => {
                        return self.press(inbound, out, control, None).await;
                    }
                    // `reset` must not overtake a reply still running in the channel.
                    Ok(Command::Reset) => return self.enqueue(inbound, out, None, Work::Command),
                    _ => {}
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
                    self.enqueue(inbound, out, Some(asked), Work::Ask)
                }
                Err(disposition) => disposition,
            },
            Invocation::Control { control, on } => {
                self.press(inbound, out, control, on.as_ref()).await
            }
            Invocation::Edit { of } => {
                match controls::edit(services, &self.inner.running, &inbound, &of) {
                    Some(queued) => self.enqueue(inbound, out, None, Work::Control(queued)),
                    None => Disposition::Ignored,
                }
            }
        }
    }

    /// A press of stop, regenerate or continue on message `on` (`None`: the channel's
    /// latest answer).
    async fn press(
        &self,
        inbound: Inbound,
        out: Paced,
        control: super::boundary::Control,
        on: Option<&super::boundary::MessageId>,
    ) -> Disposition {
        let services = self.services();
        let style = out.control_style();
        // A typed command always gets an answer (a slash command's "thinking…" needs one).
        let typed = inbound.invocation == Invocation::Command;
        let confirm = |text: &str| (typed, text.to_owned());
        let (say, text) =
            match controls::press(services, &self.inner.running, &inbound, control, on, style) {
                Pressed::Stopped => confirm("⏹️ Stopped."),
                Pressed::Queue(queued) => {
                    let text = match queued {
                        Queued::Continue { .. } => "⏩ Continuing the latest answer.",
                        Queued::Regenerate { .. } => "🔄 Regenerating the latest answer.",
                    };
                    if typed {
                        self.post(&out, &inbound, None, text.into(), true).await;
                    }
                    return self.enqueue(inbound, out, None, Work::Control(queued));
                }
                Pressed::Refused { reason, text } => {
                    self.count_refusal(&inbound.channel, &inbound.user_id, reason);
                    (true, text)
                }
                Pressed::Ignored => return Disposition::Ignored,
            };
        if say {
            self.post(&out, &inbound, None, text, true).await;
        }
        Disposition::Answered
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
                self.count_refusal(&inbound.channel, &inbound.user_id, "bot_loop");
                self.post(out, inbound, None, PAUSED_NOTICE.into(), false)
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
    fn enqueue(
        &self,
        inbound: Inbound,
        out: Paced,
        asked: Option<Asked>,
        work: Work,
    ) -> Disposition {
        let Some(admitted) = self.admit(Slot::Queued) else {
            return Disposition::ShuttingDown;
        };
        // A question that cannot start at once says so (typing, then a note).
        let waiting = matches!(work, Work::Ask).then(|| {
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
            work,
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
        if matches!(job.work, Work::Ask) {
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

    /// A turn that panicked left its in-flight record and reservation behind: its message
    /// ends with a note, what it showed is kept and the points go back, as after a crash.
    /// Records of questions still queued in the channel (their notes) are theirs, not this
    /// turn's.
    async fn clean_up_after_panic(&self, job: &Job) {
        let inbound = &job.inbound;
        let records = turn::inflight_where(self.services(), |record| {
            record.channel == inbound.channel
                && (record.reply_to == inbound.event_id || record.turn.is_some())
        });
        for record in records {
            let recovered = std::panic::AssertUnwindSafe(turn::recover(
                self.services(),
                Some(&job.out),
                &record,
                turn::FAILED_NOTICE,
            ))
            .catch_unwind()
            .await;
            if recovered.is_err() {
                tracing::error!(channel = %record.channel, "cannot mark a failed reply either");
                let _ = self.services().store.remove_inflight(record.id);
            }
        }
    }

    async fn work(&self, job: &Job, note: Option<PostedNote>) {
        let services = self.services();
        let kind = match &job.work {
            Work::Command => {
                let parsed = commands::parse(&job.inbound.text);
                let reply = commands::execute(services, &job.inbound, parsed, now_ms()).await;
                self.post(&job.out, &job.inbound, None, reply.text, reply.private)
                    .await;
                return;
            }
            Work::Ask => Kind::Ask,
            Work::Control(queued) => {
                let (id, edited) = match queued {
                    Queued::Regenerate { answer, edited, .. } => (*answer, edited.clone()),
                    Queued::Continue { answer, .. } => (*answer, None),
                };
                // As it stands now: a turn ahead of it in the queue may have changed it.
                let Ok(Some(answer)) = services.store.answer(id) else {
                    let text = "The bot no longer keeps that answer.".to_owned();
                    self.post(&job.out, &job.inbound, None, text, true).await;
                    return;
                };
                match queued {
                    Queued::Regenerate { .. } => Kind::Regenerate { answer, edited },
                    Queued::Continue { .. } => Kind::Continue { answer },
                }
            }
        };
        let env = TurnEnv {
            services,
            running: &self.inner.running,
            interrupt: self.inner.interrupt.subscribe(),
        };
        turn::run(env, &job.inbound, &job.out, note, kind).await;
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
        reply::post(
            self.services(),
            out,
            &inbound.channel,
            &inbound.event_id,
            note,
            text,
            private,
        )
        .await;
    }

    /// Counts and logs a question not sent to Poe; adapters use it for the refusals they
    /// decide themselves (the access lists).
    pub fn count_refusal(&self, channel: &ChannelKey, user: &str, reason: &'static str) {
        reply::count_refusal(self.services(), channel, user, reason);
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
            let out = platforms
                .get(&record.channel.platform)
                .map(|out| self.paced(&record.channel.platform, out.clone()));
            turn::recover(services, out.as_ref(), &record, turn::RESTARTED_NOTICE).await;
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
        if let Err(err) = services.store.prune_answers() {
            tracing::warn!(%err, "cannot delete the records of expired answers");
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
