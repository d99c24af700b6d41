//! The Discord adapter: a serenity client whose gateway events become [`Inbound`]s, and
//! whose REST client carries the core's sends and edits.
//!
//! Start-up: check the token (`GET /users/@me`, which also gives the bot's id), build the
//! client, then connect the gateway in [`Discord::run`] and register `/poe` on READY.
//! serenity itself resumes or re-identifies after RECONNECT, INVALID_SESSION or a dropped
//! socket; what a resume replays is dropped by event id in the core.
//!
//! [`Inbound`]: crate::core::boundary::Inbound

pub mod access;
pub mod admins;
pub mod inbound;
pub mod outbound;
pub mod slash;
pub mod trigger;

use std::sync::Arc;

use serde_json::json;
use serenity::all::{
    ClientBuilder, CommandDataOptionValue, CommandInteraction, ConnectionStage, Context,
    EventHandler, GatewayError, GatewayIntents, GuildId, Http, HttpBuilder, HttpError, Interaction,
    Message, RatelimitInfo, Ready, ResumedEvent, ShardStageUpdateEvent,
};
use tokio::sync::{mpsc, watch};

use self::access::Access;
use self::admins::{Admins, Rights};
use self::inbound::Receiver;
use self::outbound::{DiscordOutbound, platform_error};
use self::slash::{OptionValue, Request};
use crate::config::DiscordConfig;
use crate::core::manager::Manager;
use crate::secret::Secret;
use crate::service::health::PlatformStatus;

pub use self::inbound::PLATFORM;

/// Guild messages, DMs and their content: all the bot reads.
pub fn intents() -> GatewayIntents {
    GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
}

/// Why the bot cannot use its Discord application.
#[derive(Debug, thiserror::Error)]
pub enum DiscordError {
    #[error(
        "Discord rejected the bot token; copy it again from the Developer Portal (Bot → Reset \
         Token) into DISCORD_TOKEN"
    )]
    Token,
    #[error("cannot reach Discord: {0}")]
    Connect(String),
    #[error(
        "Discord refused the gateway intents; turn on Message Content Intent for the bot in \
         the Developer Portal (Bot → Privileged Gateway Intents)"
    )]
    Intents,
    #[error("the Discord gateway connection ended: {0}")]
    Gateway(String),
}

impl DiscordError {
    fn from_gateway(err: serenity::Error) -> DiscordError {
        match err {
            serenity::Error::Gateway(GatewayError::DisallowedGatewayIntents) => {
                DiscordError::Intents
            }
            serenity::Error::Gateway(GatewayError::InvalidAuthentication) => DiscordError::Token,
            other => DiscordError::Gateway(other.to_string()),
        }
    }
}

/// What the gateway side hands to the run loop. serenity runs each handler in its own task;
/// the handlers only acknowledge (where Discord's 3 s demand it) and pass events on.
enum GatewayEvent {
    Ready {
        name: String,
        guilds: usize,
    },
    Resumed,
    /// The shard's connection came up or went down.
    Connected(bool),
    Message(Box<Message>),
    Command {
        interaction: Box<CommandInteraction>,
        request: Request,
        rights: Rights,
        private: bool,
    },
    Autocomplete(Box<CommandInteraction>),
    /// serenity's rate limiter met Discord's global limit (production only: it is off
    /// against a fake Discord).
    GlobalLimit(std::time::Duration),
}

struct Handler {
    events: mpsc::UnboundedSender<GatewayEvent>,
    admins: Admins,
    access: Access,
    allow_dms: bool,
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        let _ = self.events.send(GatewayEvent::Ready {
            name: ready.user.name.clone(),
            guilds: ready.guilds.len(),
        });
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        let _ = self.events.send(GatewayEvent::Resumed);
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        let _ = self.events.send(GatewayEvent::Connected(
            event.new == ConnectionStage::Connected,
        ));
    }

    async fn ratelimit(&self, info: RatelimitInfo) {
        // Route buckets serenity waits out itself (it also reports waits that were no 429);
        // the global limit concerns every channel, so the bot's budget must hear of it.
        if info.global {
            let _ = self.events.send(GatewayEvent::GlobalLimit(info.timeout));
        } else {
            tracing::debug!(path = %info.path, timeout = ?info.timeout, "discord: serenity waits for a route's rate limit");
        }
    }

    async fn message(&self, _ctx: Context, message: Message) {
        let _ = self.events.send(GatewayEvent::Message(Box::new(message)));
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        match interaction {
            Interaction::Command(command) => {
                let (roles, permissions) = match &command.member {
                    Some(member) => (
                        member.roles.iter().map(|role| role.get()).collect(),
                        member.permissions,
                    ),
                    None => (Vec::new(), None),
                };
                let rights = self
                    .admins
                    .rights(command.user.id.get(), &roles, permissions);
                let request = if command.data.name != slash::NAME {
                    Request::Invalid(format!(
                        "`/{}` is not a command of this bot.",
                        command.data.name
                    ))
                } else if command.guild_id.is_none() && !self.allow_dms {
                    Request::Invalid(
                        "This bot does not answer in direct messages; ask in a server channel."
                            .into(),
                    )
                } else {
                    request_of(&command)
                };
                // Someone the access lists turn away gets their note privately.
                let refused = access::place_of(&command).is_some_and(|place| {
                    let user = command.user.id.get();
                    let allowed = self.access.decide(user, &roles, place, rights.is_bot_admin);
                    allowed.is_err()
                });
                let private = refused || request.is_private(rights.is_admin);
                // Discord wants an answer within 3 s: "thinking…" now, the answer later.
                let defer = if private {
                    json!({"type": 5, "data": {"flags": 64}})
                } else {
                    json!({"type": 5})
                };
                if let Err(err) = ctx
                    .http
                    .create_interaction_response(command.id, &command.token, &defer, Vec::new())
                    .await
                {
                    // Also what a replayed, already acknowledged command gets.
                    tracing::warn!(interaction = %command.id, error = %platform_error(err), "discord: cannot acknowledge a slash command; it is not answered");
                    return;
                }
                let _ = self.events.send(GatewayEvent::Command {
                    interaction: Box::new(command),
                    request,
                    rights,
                    private,
                });
            }
            Interaction::Autocomplete(command) => {
                let _ = self
                    .events
                    .send(GatewayEvent::Autocomplete(Box::new(command)));
            }
            _ => {}
        }
    }
}

/// The subcommand and its options, read from serenity's model.
fn request_of(command: &CommandInteraction) -> Request {
    let Some(first) = command.data.options.first() else {
        return Request::Invalid("Pick a subcommand, like `/poe ask`.".into());
    };
    let CommandDataOptionValue::SubCommand(options) = &first.value else {
        return Request::Invalid("Pick a subcommand, like `/poe ask`.".into());
    };
    let options: Vec<(String, OptionValue)> = options
        .iter()
        .map(|option| {
            let value = match &option.value {
                CommandDataOptionValue::String(text) => OptionValue::Text(text.clone()),
                CommandDataOptionValue::Integer(number) => OptionValue::Integer(*number),
                CommandDataOptionValue::Number(number) => OptionValue::Number(*number),
                CommandDataOptionValue::Boolean(value) => OptionValue::Boolean(*value),
                CommandDataOptionValue::User(id) => OptionValue::Id(id.get()),
                CommandDataOptionValue::Role(id) => OptionValue::Id(id.get()),
                CommandDataOptionValue::Channel(id) => OptionValue::Id(id.get()),
                CommandDataOptionValue::Mentionable(id) => OptionValue::Id(id.get()),
                CommandDataOptionValue::Autocomplete { value, .. } => {
                    OptionValue::Text(value.clone())
                }
                _ => OptionValue::Other,
            };
            (option.name.clone(), value)
        })
        .collect();
    slash::translate(&first.name, &options)
}

/// serenity's REST client: aimed at `api_base` (a fake Discord) when set, which only works
/// with serenity's own rate limiter off.
fn http_client(config: &DiscordConfig, token: &Secret) -> Http {
    let builder = HttpBuilder::new(token.expose());
    match &config.api_base {
        Some(base) => builder.proxy(base.as_str()).ratelimiter_disabled(true),
        None => builder,
    }
    .build()
}

/// A bot whose token works, before it connects the gateway.
pub struct Discord {
    client: serenity::Client,
    events: mpsc::UnboundedReceiver<GatewayEvent>,
    out: Arc<DiscordOutbound>,
    config: DiscordConfig,
    bot_id: u64,
    allow_plain_http_files: bool,
}

impl Discord {
    /// Checks the token and prepares the client. `allow_plain_http_files` lets attachments
    /// and answer files come over plain http (only a fake Discord and Poe serve that).
    pub async fn connect(
        config: &DiscordConfig,
        token: &Secret,
        allow_plain_http_files: bool,
    ) -> Result<Discord, DiscordError> {
        let me = http_client(config, token)
            .get_current_user()
            .await
            .map_err(|err| match &err {
                serenity::Error::Http(HttpError::UnsuccessfulRequest(response))
                    if response.status_code.as_u16() == 401 =>
                {
                    DiscordError::Token
                }
                _ => DiscordError::Connect(platform_error(err).to_string()),
            })?;
        tracing::info!(bot = %me.name, id = %me.id, "discord: the token works");
        let (sender, events) = mpsc::unbounded_channel();
        let client = ClientBuilder::new_with_http(http_client(config, token), intents())
            .event_handler(Handler {
                events: sender,
                admins: Admins::from_config(config),
                access: Access::from_config(&config.access),
                allow_dms: config.allow_dms,
            })
            .await
            .map_err(|err| DiscordError::Connect(err.to_string()))?;
        if let Some(url) = &config.gateway_url {
            *client.ws_url.lock().await = url.clone();
        }
        let plain_http = allow_plain_http_files || config.api_base.is_some();
        Ok(Discord {
            out: Arc::new(DiscordOutbound::new(
                client.http.clone(),
                config.max_requests_per_second,
                plain_http,
            )),
            client,
            events,
            config: config.clone(),
            bot_id: me.id.get(),
            allow_plain_http_files: plain_http,
        })
    }

    /// The sending side, for the core (and for crash recovery before [`Discord::run`]).
    pub fn outbound(&self) -> Arc<DiscordOutbound> {
        self.out.clone()
    }

    /// Answers Discord until `shutdown` turns true. Returns an error when the gateway ends
    /// for good (a revoked token, a missing intent): the daemon cannot go on deaf.
    pub async fn run(
        self,
        manager: Manager,
        mut shutdown: watch::Receiver<bool>,
        status: PlatformStatus,
    ) -> Result<(), DiscordError> {
        let Discord {
            mut client,
            mut events,
            out,
            config,
            bot_id,
            allow_plain_http_files,
        } = self;
        let receiver = Arc::new(Receiver::new(
            manager,
            out.clone(),
            config.clone(),
            bot_id,
            allow_plain_http_files,
        ));
        let shards = client.shard_manager.clone();
        let mut gateway = tokio::spawn(async move { client.start().await });
        let mut registered = false;
        loop {
            tokio::select! {
                // Dropping the watch guard here keeps this future `Send`.
                _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
                ended = &mut gateway => {
                    return Err(match ended {
                        Ok(Err(err)) => DiscordError::from_gateway(err),
                        Ok(Ok(())) => DiscordError::Gateway("it closed".into()),
                        Err(err) => DiscordError::Gateway(err.to_string()),
                    });
                }
                event = events.recv() => match event {
                    None => break,
                    Some(GatewayEvent::Ready { name, guilds }) => {
                        status.set_connected(true);
                        tracing::info!(bot = %name, guilds, "discord: connected");
                        if !registered {
                            registered = register_commands(out.http(), &config).await;
                        }
                    }
                    Some(GatewayEvent::Resumed) => {
                        status.set_connected(true);
                        tracing::info!("discord: resumed the gateway session");
                    }
                    Some(GatewayEvent::Connected(connected)) => status.set_connected(connected),
                    Some(GatewayEvent::Message(message)) => receiver.accept_message(*message),
                    Some(GatewayEvent::Command { interaction, request, rights, private }) => {
                        receiver.accept_command(*interaction, request, rights, private)
                    }
                    Some(GatewayEvent::GlobalLimit(retry_after)) => {
                        tracing::warn!(?retry_after, "discord: the bot met Discord's global rate limit; lower discord.max_requests_per_second if this repeats");
                        receiver.global_limit(retry_after);
                    }
                    Some(GatewayEvent::Autocomplete(interaction)) => {
                        let receiver = receiver.clone();
                        tokio::spawn(async move { receiver.autocomplete(*interaction).await });
                    }
                },
            }
        }
        shards.shutdown_all().await;
        tracing::info!("discord: disconnected");
        Ok(())
    }
}

/// Puts `/poe` in the configured guilds, or globally. Returns whether every registration
/// worked (otherwise the next READY tries again).
async fn register_commands(http: &Http, config: &DiscordConfig) -> bool {
    let commands = [slash::definition()];
    if config.guilds.is_empty() {
        return match http.create_global_commands(&commands).await {
            Ok(_) => {
                tracing::info!("discord: /poe registered globally");
                true
            }
            Err(err) => {
                tracing::error!(error = %platform_error(err), "discord: cannot register /poe");
                false
            }
        };
    }
    let mut all = true;
    for guild in &config.guilds {
        let Some(id) = guild.parse::<u64>().ok().filter(|id| *id != 0) else {
            continue;
        };
        match http
            .create_guild_commands(GuildId::new(id), &commands)
            .await
        {
            Ok(_) => tracing::info!(guild = %guild, "discord: /poe registered"),
            Err(err) => {
                all = false;
                tracing::error!(guild = %guild, error = %platform_error(err), "discord: cannot register /poe in a guild (is the bot in it, with the applications.commands scope?)");
            }
        }
    }
    all
}
