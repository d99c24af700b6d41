//! Pacing: every call the core makes to a platform draws from that platform's bot-wide
//! request budget, and keeps to its channel's own spacing.
//!
//! Platforms limit a bot as a whole (Discord: 50 requests a second over every channel, and an
//! hour's IP ban after 10,000 refused requests in 10 minutes; Synapse: 0.2 events a second per
//! account by default), not just per channel. So one [`RequestBudget`] per platform, sized by
//! the adapter's [`Limits::requests`], is shared fairly by every reply, command answer, notice
//! and recovery edit ([`scheduler`]), and the bot slows itself down before the platform has to.
//!
//! The only way to reach a platform is [`Paced`]: every [`Outbound`] method takes a
//! [`Permit`], and a permit can only be made here, after the call has waited for its channel
//! and drawn from the budget (or been found exempt by the adapter, as Discord's interaction
//! webhooks are). A path that skipped the budget would not compile.

pub mod bucket;
pub mod channel;
pub mod scheduler;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

pub use self::channel::ChannelPacer;
pub use self::scheduler::{BusyStats, Level, Priority, RequestBudget, RequestRate};
use crate::core::boundary::{
    ChannelKey, Control, ControlStyle, Limits, MessageId, OutFile, OutMessage, Outbound,
    PlannedCall, PlatformError, RateScope,
};
use crate::metrics::Metrics;

/// Leave to make one platform call. Only [`Paced`] makes them, once the call's turn has come.
#[derive(Debug)]
pub struct Permit(());

/// How long a typing notice may wait for the budget before it is dropped.
const TYPING_PATIENCE: Duration = Duration::from_millis(500);

/// How many channel pacers a platform keeps before idle ones are dropped.
const PRUNE_PACERS_AT: usize = 1_024;

/// One platform's budget and its channels' pacers.
struct PlatformPacing {
    name: String,
    limits: Limits,
    budget: Arc<RequestBudget>,
    channels: Mutex<HashMap<ChannelKey, Arc<ChannelPacer>>>,
    metrics: Arc<Metrics>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The budgets of every platform the core has talked to, by platform name.
pub struct Pacing {
    platforms: Mutex<HashMap<String, Arc<PlatformPacing>>>,
    metrics: Arc<Metrics>,
}

impl Pacing {
    pub fn new(metrics: Arc<Metrics>) -> Pacing {
        Pacing {
            platforms: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The paced side of `out`, the adapter of `platform`. The platform's budget is made from
    /// its limits the first time, inside the runtime.
    pub fn paced(&self, platform: &str, out: Arc<dyn Outbound>) -> Paced {
        let pacing = locked(&self.platforms)
            .entry(platform.to_owned())
            .or_insert_with(|| {
                let limits = out.limits();
                Arc::new(PlatformPacing {
                    name: platform.to_owned(),
                    budget: RequestBudget::new(limits.requests),
                    limits,
                    channels: Mutex::new(HashMap::new()),
                    metrics: self.metrics.clone(),
                })
            })
            .clone();
        Paced { out, pacing }
    }

    /// How busy `platform`'s budget was while calls waited for it.
    pub fn busy_stats(&self, platform: &str) -> Option<BusyStats> {
        locked(&self.platforms)
            .get(platform)
            .map(|pacing| pacing.budget.busy_stats())
    }
}

/// How the core reaches one platform: each call waits for its channel, draws from the
/// platform's budget, and tells the budget what the platform answered. Cheap to clone.
#[derive(Clone)]
pub struct Paced {
    out: Arc<dyn Outbound>,
    pacing: Arc<PlatformPacing>,
}

impl Paced {
    pub fn limits(&self) -> &Limits {
        &self.pacing.limits
    }

    pub fn platform(&self) -> &str {
        &self.pacing.name
    }

    fn pacer(&self, channel: &ChannelKey) -> Arc<ChannelPacer> {
        let mut pacers = locked(&self.pacing.channels);
        if pacers.len() >= PRUNE_PACERS_AT {
            // A pacer nobody holds whose next slot has passed paces like a new one.
            pacers.retain(|_, pacer| Arc::strong_count(pacer) > 1 || !pacer.is_idle());
        }
        pacers
            .entry(channel.clone())
            .or_insert_with(|| Arc::new(ChannelPacer::new(self.pacing.limits.min_channel_interval)))
            .clone()
    }

    /// When `channel` may take its next call.
    pub fn channel_ready_at(&self, channel: &ChannelKey) -> Instant {
        self.pacer(channel).ready_at()
    }

    /// Holds `channel` back for `pause` (after a refused call, say).
    pub fn hold_channel(&self, channel: &ChannelKey, pause: Duration) {
        self.pacer(channel).back_off(pause);
    }

    /// Waits until a call may go in `channel`: first the channel's own spacing (so no token
    /// is held while it runs out), then the platform's budget, unless the adapter says the
    /// call is exempt. The caller makes the call with the [`Turn`], rendering its text only
    /// then, so the call carries everything produced while it waited.
    pub async fn turn<'a>(
        &'a self,
        channel: &'a ChannelKey,
        planned: PlannedCall<'_>,
        priority: Priority,
    ) -> Turn<'a> {
        let pacer = self.pacer(channel);
        tokio::time::sleep_until(pacer.ready_at()).await;
        let budget = &self.pacing.budget;
        let drawn = budget.is_limited() && !self.out.exempt_from_budget(channel, &planned);
        if drawn {
            let asked = Instant::now();
            budget.acquire(priority).await;
            self.pacing
                .metrics
                .budget_wait(self.platform(), asked.elapsed());
        }
        pacer.wait_turn().await;
        Turn {
            paced: self,
            channel,
            pacer,
            drawn,
            permit: Permit(()),
        }
    }

    /// Sends a message once its turn comes.
    pub async fn send(
        &self,
        channel: &ChannelKey,
        message: OutMessage,
        priority: Priority,
    ) -> Result<MessageId, PlatformError> {
        let planned = PlannedCall::Send {
            reply_to: message.reply_to.as_deref(),
            private: message.private,
        };
        self.turn(channel, planned, priority)
            .await
            .send(message)
            .await
    }

    /// Edits a message once its turn comes.
    pub async fn edit(
        &self,
        channel: &ChannelKey,
        message: &MessageId,
        text: &str,
        live: bool,
        priority: Priority,
    ) -> Result<(), PlatformError> {
        self.turn(channel, PlannedCall::Edit(message), priority)
            .await
            .edit(message, text, live)
            .await
    }

    /// Posts a file from a model's answer once its turn comes.
    pub async fn send_file(
        &self,
        channel: &ChannelKey,
        file: &OutFile,
        reply_to: Option<&str>,
    ) -> Result<Option<MessageId>, PlatformError> {
        self.turn(channel, PlannedCall::File { reply_to }, Priority::Urgent)
            .await
            .send_file(file, reply_to)
            .await
    }

    /// How the platform shows an answer's controls.
    pub fn control_style(&self) -> ControlStyle {
        self.out.control_style()
    }

    /// Sets the buttons on `message` once its turn comes.
    pub async fn set_buttons(
        &self,
        channel: &ChannelKey,
        message: &MessageId,
        controls: &[Control],
    ) -> Result<(), PlatformError> {
        self.turn(
            channel,
            PlannedCall::Controls { on: message },
            Priority::Urgent,
        )
        .await
        .make("controls", |out, permit, channel| {
            out.set_buttons(permit, channel, message, controls)
        })
        .await
    }

    /// Reacts to `message` to offer `control` once its turn comes.
    pub async fn react(
        &self,
        channel: &ChannelKey,
        message: &MessageId,
        control: Control,
    ) -> Result<MessageId, PlatformError> {
        self.turn(
            channel,
            PlannedCall::Controls { on: message },
            Priority::Urgent,
        )
        .await
        .make("controls", |out, permit, channel| {
            out.react(permit, channel, message, control)
        })
        .await
    }

    /// Takes back a reaction once its turn comes.
    pub async fn unreact(
        &self,
        channel: &ChannelKey,
        reaction: &MessageId,
    ) -> Result<(), PlatformError> {
        self.turn(
            channel,
            PlannedCall::Controls { on: reaction },
            Priority::Urgent,
        )
        .await
        .make("controls", |out, permit, channel| {
            out.unreact(permit, channel, reaction)
        })
        .await
    }

    /// Shows typing in `channel`, unless the budget is too busy for it (typing is the first
    /// thing dropped). Returns whether it was shown.
    pub async fn typing(&self, channel: &ChannelKey) -> bool {
        let metrics = &self.pacing.metrics;
        let exempt = self.out.exempt_from_budget(channel, &PlannedCall::Typing);
        let budget = &self.pacing.budget;
        let drawn = !exempt && budget.is_limited();
        if drawn
            && !budget
                .acquire_within(Priority::Typing, TYPING_PATIENCE)
                .await
        {
            metrics.typing_dropped(self.platform());
            return false;
        }
        metrics.platform_request(self.platform(), "typing");
        let result = self.out.typing(Permit(()), channel).await;
        self.learn(result.as_ref().err(), None, drawn);
        result.is_ok()
    }

    /// Waits for a turn in the budget for a call the adapter makes itself (joining a room).
    pub async fn draw(&self, what: &'static str) {
        let budget = &self.pacing.budget;
        if budget.is_limited() {
            let asked = Instant::now();
            budget.acquire(Priority::Urgent).await;
            self.pacing
                .metrics
                .budget_wait(self.platform(), asked.elapsed());
        }
        self.pacing.metrics.platform_request(self.platform(), what);
    }

    /// What the platform said about a call made outside [`Paced`] (a join, serenity's own
    /// rate limiter): a bot-wide 429 slows every channel down.
    pub fn report(&self, error: &PlatformError, drew: bool) {
        self.learn(Some(error), None, drew);
    }

    /// Tells the budget and the channel what the platform answered.
    fn learn(&self, error: Option<&PlatformError>, pacer: Option<&ChannelPacer>, drew: bool) {
        let budget = &self.pacing.budget;
        let metrics = &self.pacing.metrics;
        match error {
            Some(PlatformError::RateLimited { retry_after, scope }) => {
                metrics.platform_rate_limited(self.platform(), scope.name(), 1);
                if let Some(pacer) = pacer {
                    pacer.back_off(*retry_after);
                }
                if *scope == RateScope::Bot {
                    budget.limited(*retry_after);
                }
            }
            Some(PlatformError::Failed { .. }) => {}
            None if drew => budget.succeeded(),
            None => {}
        }
        if let Some(level) = budget.level() {
            metrics.budget_level(self.platform(), level.tokens, level.per_second);
        }
    }
}

/// A call whose turn has come, in one channel. Made by [`Paced::turn`]; used once.
pub struct Turn<'a> {
    paced: &'a Paced,
    channel: &'a ChannelKey,
    pacer: Arc<ChannelPacer>,
    drawn: bool,
    permit: Permit,
}

impl<'a> Turn<'a> {
    /// Makes the call with the permit, and tells the budget and the channel how it went.
    async fn make<T, Fut>(
        self,
        kind: &'static str,
        call: impl FnOnce(&'a dyn Outbound, Permit, &'a ChannelKey) -> Fut,
    ) -> Result<T, PlatformError>
    where
        Fut: Future<Output = Result<T, PlatformError>>,
    {
        let Turn {
            paced,
            channel,
            pacer,
            drawn,
            permit,
        } = self;
        paced
            .pacing
            .metrics
            .platform_request(paced.platform(), kind);
        let result = call(paced.out.as_ref(), permit, channel).await;
        paced.learn(result.as_ref().err(), Some(&pacer), drawn);
        result
    }

    pub async fn send(self, message: OutMessage) -> Result<MessageId, PlatformError> {
        self.make("send", |out, permit, channel| {
            out.send(permit, channel, message)
        })
        .await
    }

    pub async fn edit(
        self,
        message: &MessageId,
        text: &str,
        live: bool,
    ) -> Result<(), PlatformError> {
        self.make("edit", |out, permit, channel| {
            out.edit(permit, channel, message, text, live)
        })
        .await
    }

    pub async fn send_file(
        self,
        file: &OutFile,
        reply_to: Option<&str>,
    ) -> Result<Option<MessageId>, PlatformError> {
        self.make("file", |out, permit, channel| {
            out.send_file(permit, channel, file, reply_to)
        })
        .await
    }
}
