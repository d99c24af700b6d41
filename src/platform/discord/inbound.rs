//! Discord events in, [`Inbound`]s out: messages addressed to the bot and `/poe` commands.
//!
//! serenity runs every event handler in its own task. The handlers only queue the events
//! (per channel, in the order their tasks ran: the gateway's order, except that two events
//! arriving in the same instant may swap), and one worker per channel translates them in that
//! order, fetching files on the way, so a slow download cannot let the next message overtake
//! it. A slash command is queued once it is acknowledged.
//!
//! Each event is handled at most once: the core drops event ids it has seen (a RESUME
//! replays dispatches) and events from before the start; a slash command that was already
//! acknowledged cannot be acknowledged again, so a replayed one is dropped at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use serenity::all::{Channel, ChannelId, CommandInteraction, Message};

use super::access::{self, Access, Place, Refusal, is_thread};
use super::admins::{Admins, Rights};
use super::outbound::DiscordOutbound;
use super::slash::{self, Request};
use super::trigger::{self, Addressing};
use crate::config::DiscordConfig;
use crate::core::boundary::{
    ChannelKey, Inbound, InboundFile, Invocation, Outbound, PlatformError, RateScope, Speaker,
};
use crate::core::manager::{Disposition, Manager};
use crate::lanes::{self, Lanes};
use crate::platform::download;
use crate::poe::FileSource;

/// The platform name in channel keys and ledger entries.
pub const PLATFORM: &str = "discord";

/// Discord's epoch (2015-01-01) in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// When an id was made, in Unix milliseconds: every Discord id carries its creation time.
pub fn snowflake_ms(id: u64) -> i64 {
    i64::try_from((id >> 22) + DISCORD_EPOCH_MS).unwrap_or(i64::MAX)
}

/// What a channel's worker translates next.
enum Work {
    /// A message addressed to the bot; its files are fetched by the worker.
    Message {
        message: Box<Message>,
        invocation: Invocation,
        text: String,
    },
    /// A slash command, already acknowledged and translated.
    Command { inbound: Box<Inbound>, asker: Asker },
}

/// Who asked where, for the access lists.
struct Asker {
    user: u64,
    roles: Vec<u64>,
    channel: u64,
    in_server: bool,
    /// Where they asked, when the event said in full (interactions do).
    place: Option<Place>,
    is_bot_admin: bool,
}

/// Channels whose parent (or lack of one) is remembered; more are forgotten.
const REMEMBERED_CHANNELS: usize = 10_000;

/// Takes the events the gateway hands over.
pub struct Receiver {
    manager: Manager,
    out: Arc<DiscordOutbound>,
    config: DiscordConfig,
    admins: Admins,
    access: Access,
    /// Each channel's parent channel (threads) or `None`, as Discord said.
    parents: Mutex<HashMap<u64, Option<u64>>>,
    bot_id: u64,
    max_attachment_bytes: u64,
    started_ms: i64,
    downloads: reqwest::Client,
    allow_plain_http_files: bool,
    channels: Lanes<u64, Work>,
}

impl Receiver {
    pub fn new(
        manager: Manager,
        out: Arc<DiscordOutbound>,
        config: DiscordConfig,
        bot_id: u64,
        allow_plain_http_files: bool,
    ) -> Receiver {
        let downloads = download::client();
        Receiver {
            max_attachment_bytes: manager.services().config.chat.max_attachment_bytes,
            started_ms: manager.started_ms(),
            manager,
            out,
            admins: Admins::from_config(&config),
            access: Access::from_config(&config.access),
            parents: Mutex::new(HashMap::new()),
            config,
            bot_id,
            downloads,
            allow_plain_http_files,
            channels: Lanes::new(lanes::IDLE),
        }
    }

    /// A message from the gateway; returns at once.
    pub fn accept_message(self: &Arc<Self>, message: Message) {
        let author = &message.author;
        if author.id.get() == self.bot_id || (author.bot && self.config.ignore_bots) {
            return;
        }
        let is_direct = message.guild_id.is_none();
        if is_direct && !self.config.allow_dms {
            return;
        }
        if snowflake_ms(message.id.get()) < self.started_ms {
            tracing::debug!(message = %message.id, "discord: ignoring a message from before the start");
            return;
        }
        let addressing = Addressing {
            mentions_bot: message
                .mentions
                .iter()
                .any(|user| user.id.get() == self.bot_id),
            replies_to_bot: message
                .referenced_message
                .as_ref()
                .is_some_and(|replied| replied.author.id.get() == self.bot_id),
            is_direct,
        };
        let people: Vec<(u64, String)> = message
            .mentions
            .iter()
            .map(|user| (user.id.get(), display_name(user)))
            .collect();
        let has_files = !message.attachments.is_empty();
        let Some((invocation, text)) = trigger::classify(
            &message.content,
            self.bot_id,
            &people,
            &addressing,
            has_files,
        ) else {
            // Not for the bot, but the loop guard hears of people talking here.
            let channel = ChannelKey::new(PLATFORM, &message.channel_id.to_string());
            self.manager
                .observe(&channel, &author.id.to_string(), speaker_of(&message));
            return;
        };
        let channel = message.channel_id.get();
        self.queue(
            channel,
            Work::Message {
                message: Box::new(message),
                invocation,
                text,
            },
        );
    }

    /// A `/poe` command from someone with `rights`, already acknowledged with `private` as
    /// its visibility.
    pub fn accept_command(
        self: &Arc<Self>,
        interaction: CommandInteraction,
        request: Request,
        rights: Rights,
        private: bool,
    ) {
        let id = interaction.id.get();
        self.out
            .remember_interaction(id, interaction.token.clone(), private);
        let (invocation, text) = match request {
            Request::Ask(question) => (Invocation::Message, question),
            Request::Command(text) => (Invocation::Command, text),
            Request::Invalid(reason) => {
                let out: Arc<dyn Outbound> = self.out.clone();
                let manager = self.manager.clone();
                let channel = ChannelKey::new(PLATFORM, &interaction.channel_id.to_string());
                tokio::spawn(async move {
                    let text = format!("{reason} Try `/poe help`.");
                    manager
                        .tell(out, &channel, &id.to_string(), text, true)
                        .await;
                });
                return;
            }
        };
        let user = &interaction.user;
        let nick = interaction
            .member
            .as_ref()
            .and_then(|member| member.nick.clone());
        let inbound = Inbound {
            channel: ChannelKey::new(PLATFORM, &interaction.channel_id.to_string()),
            user_id: user.id.to_string(),
            user_name: nick.unwrap_or_else(|| display_name(user)),
            speaker: match user.bot {
                true => Speaker::Bot,
                false => Speaker::Person,
            },
            is_admin: rights.is_admin,
            is_bot_admin: rights.is_bot_admin,
            is_group: interaction.guild_id.is_some(),
            invocation,
            text,
            attachments: Vec::new(),
            event_id: id.to_string(),
            timestamp_ms: snowflake_ms(id),
        };
        let asker = Asker {
            user: user.id.get(),
            roles: interaction
                .member
                .as_ref()
                .map(|member| member.roles.iter().map(|role| role.get()).collect())
                .unwrap_or_default(),
            channel: interaction.channel_id.get(),
            in_server: interaction.guild_id.is_some(),
            place: access::place_of(&interaction),
            is_bot_admin: rights.is_bot_admin,
        };
        self.queue(
            interaction.channel_id.get(),
            Work::Command {
                inbound: Box::new(inbound),
                asker,
            },
        );
    }

    /// Whether the access lists let `asker` use the bot where they asked.
    async fn may_use(&self, asker: &Asker) -> Result<(), Refusal> {
        let place = match asker.place {
            Some(place) => place,
            None if !asker.in_server => Place::Direct,
            // Only the channel lists need to know whether this is a thread, and whose.
            None => Place::Channel {
                id: asker.channel,
                parent: match self.access.has_channel_lists() {
                    true => self.parent_of(asker.channel).await,
                    false => None,
                },
            },
        };
        self.access
            .decide(asker.user, &asker.roles, place, asker.is_bot_admin)
    }

    /// The channel a thread belongs to (`None` for a channel that is no thread), asked of
    /// Discord once per channel. A failed lookup counts as no thread and is tried again later.
    async fn parent_of(&self, channel: u64) -> Option<u64> {
        if let Some(known) = lock(&self.parents).get(&channel) {
            return *known;
        }
        let id = std::num::NonZeroU64::new(channel)?;
        let out: Arc<dyn Outbound> = self.out.clone();
        let paced = self.manager.paced(PLATFORM, out);
        paced.draw("lookup").await;
        let parent = match self.out.http().get_channel(ChannelId::from(id)).await {
            Ok(Channel::Guild(found)) if is_thread(found.kind) => {
                found.parent_id.map(|parent| parent.get())
            }
            Ok(_) => None,
            Err(err) => {
                let err = super::outbound::platform_error(err);
                paced.report(&err, true);
                tracing::warn!(%channel, %err, "discord: cannot look up a channel for the access lists; treating it as no thread");
                return None;
            }
        };
        let mut parents = lock(&self.parents);
        if parents.len() >= REMEMBERED_CHANNELS {
            parents.clear();
        }
        parents.insert(channel, parent);
        parent
    }

    /// A refused slash command gets one short private note; nothing reaches Poe.
    async fn turn_away(
        &self,
        channel: &ChannelKey,
        interaction: &str,
        user: u64,
        refusal: Refusal,
    ) {
        self.count_refusal(channel, user, refusal);
        let out: Arc<dyn Outbound> = self.out.clone();
        self.manager
            .tell(out, channel, interaction, refusal.note().to_owned(), true)
            .await;
    }

    fn count_refusal(&self, channel: &ChannelKey, user: u64, refusal: Refusal) {
        tracing::debug!(%channel, user, ?refusal, "discord: the access lists refuse a question");
        self.manager
            .count_refusal(channel, &user.to_string(), "not_allowed");
    }

    /// serenity met Discord's global limit: every channel slows down.
    pub fn global_limit(&self, retry_after: std::time::Duration) {
        let out: Arc<dyn Outbound> = self.out.clone();
        self.manager.paced(PLATFORM, out).report(
            &PlatformError::RateLimited {
                retry_after,
                scope: RateScope::Bot,
            },
            true,
        );
    }

    /// Suggestions for `/poe model name:` from Poe's model list.
    pub async fn autocomplete(&self, interaction: CommandInteraction) {
        let typed = interaction
            .data
            .autocomplete()
            .map(|option| option.value.to_owned())
            .unwrap_or_default();
        let models = self.manager.services().catalog.models().await;
        let choices: Vec<serde_json::Value> = models
            .iter()
            .flat_map(|list| {
                slash::model_choices(&typed, list.iter().map(|model| model.id.as_str()))
            })
            .map(|id| json!({"name": id, "value": id}))
            .collect();
        let body = json!({"type": 8, "data": {"choices": choices}});
        if let Err(err) = self
            .out
            .http()
            .create_interaction_response(interaction.id, &interaction.token, &body, Vec::new())
            .await
        {
            tracing::debug!(error = %super::outbound::platform_error(err), "discord: cannot answer an autocomplete");
        }
    }

    fn queue(self: &Arc<Self>, channel: u64, work: Work) {
        let receiver = self.clone();
        self.channels.push(channel, work, move |work| {
            let receiver = receiver.clone();
            async move { receiver.process(work).await }
        });
    }

    async fn process(&self, work: Work) {
        let (inbound, interaction) = match work {
            Work::Command { inbound, asker } => {
                let id = inbound.event_id.parse::<u64>().ok();
                if let Err(refusal) = self.may_use(&asker).await {
                    self.turn_away(&inbound.channel, &inbound.event_id, asker.user, refusal)
                        .await;
                    return;
                }
                (*inbound, id)
            }
            Work::Message {
                message,
                invocation,
                text,
            } => {
                let roles: Vec<u64> = message
                    .member
                    .as_ref()
                    .map(|member| member.roles.iter().map(|role| role.get()).collect())
                    .unwrap_or_default();
                // Messages carry no permissions; server admins use the slash command.
                let rights = self.admins.rights(message.author.id.get(), &roles, None);
                let asker = Asker {
                    user: message.author.id.get(),
                    is_bot_admin: rights.is_bot_admin,
                    roles,
                    channel: message.channel_id.get(),
                    in_server: message.guild_id.is_some(),
                    place: None,
                };
                if let Err(refusal) = self.may_use(&asker).await {
                    // A channel message cannot be answered privately: no note at all.
                    let channel = ChannelKey::new(PLATFORM, &message.channel_id.to_string());
                    self.count_refusal(&channel, asker.user, refusal);
                    return;
                }
                (
                    self.translate(&message, rights, invocation, text).await,
                    None,
                )
            }
        };
        let out: Arc<dyn Outbound> = self.out.clone();
        let event = inbound.event_id.clone();
        let disposition = self.manager.handle(inbound, out).await;
        if disposition == Disposition::Duplicate {
            tracing::debug!(%event, "discord: an event delivered again was dropped");
        }
        if let (
            Disposition::Duplicate | Disposition::TooOld | Disposition::ShuttingDown,
            Some(id),
        ) = (disposition, interaction)
        {
            // Nothing will answer it: take the "thinking…" away.
            self.out.abandon_interaction(id).await;
        }
    }

    async fn translate(
        &self,
        message: &Message,
        rights: Rights,
        invocation: Invocation,
        text: String,
    ) -> Inbound {
        let author = &message.author;
        let name = message
            .member
            .as_ref()
            .and_then(|member| member.nick.clone())
            .unwrap_or_else(|| display_name(author));
        // The files of the message, or else of the message it replies to (someone else's
        // picture, asked about in a reply).
        let mut files = &message.attachments;
        if files.is_empty()
            && let Some(replied) = &message.referenced_message
            && replied.author.id.get() != self.bot_id
        {
            files = &replied.attachments;
        }
        let mut attachments = Vec::with_capacity(files.len());
        for file in files {
            attachments.push(self.fetch(file).await);
        }
        Inbound {
            channel: ChannelKey::new(PLATFORM, &message.channel_id.to_string()),
            user_id: author.id.to_string(),
            user_name: name,
            speaker: speaker_of(message),
            is_admin: rights.is_admin,
            is_bot_admin: rights.is_bot_admin,
            is_group: message.guild_id.is_some(),
            invocation,
            text,
            attachments,
            event_id: message.id.to_string(),
            timestamp_ms: snowflake_ms(message.id.get()),
        }
    }

    /// Downloads a file within the size limit. A file over the limit, or one that cannot be
    /// fetched, goes on by URL: the core refuses the first with a note, and Poe fetches the
    /// second itself.
    async fn fetch(&self, file: &serenity::all::Attachment) -> InboundFile {
        let size = u64::from(file.size);
        let mut inbound = InboundFile {
            name: file.filename.clone(),
            content_type: file
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            size,
            source: FileSource::Url(file.url.clone()),
        };
        if size > self.max_attachment_bytes {
            return inbound;
        }
        let max = usize::try_from(self.max_attachment_bytes).unwrap_or(usize::MAX);
        match download::fetch(&self.downloads, &file.url, self.allow_plain_http_files, max).await {
            Ok(data) => {
                inbound.size = data.len() as u64;
                inbound.source = FileSource::Bytes(data.into());
            }
            // Bigger than Discord said: the core refuses it by its size, with the note.
            Err(download::DownloadError::TooLarge { .. }) => {
                inbound.size = self.max_attachment_bytes.saturating_add(1);
            }
            Err(reason) => {
                tracing::warn!(file = %file.filename, %reason, "discord: cannot fetch an attachment; passing its URL on");
            }
        }
        inbound
    }
}

/// The name people see: the global display name, else the username.
fn display_name(user: &serenity::all::User) -> String {
    user.global_name
        .clone()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| user.name.clone())
}

/// Discord says who wrote a message: a bot account, or a webhook (which bots use too).
fn speaker_of(message: &Message) -> Speaker {
    match message.author.bot || message.webhook_id.is_some() {
        true => Speaker::Bot,
        false => Speaker::Person,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_carry_their_time() {
        // Discord's documented example: 175928847299117063 was made at 1462015105796.
        assert_eq!(snowflake_ms(175_928_847_299_117_063), 1_462_015_105_796);
        assert_eq!(snowflake_ms(0), DISCORD_EPOCH_MS as i64);
        assert_eq!(
            snowflake_ms(u64::MAX),
            ((u64::MAX >> 22) + DISCORD_EPOCH_MS) as i64
        );
    }
}
