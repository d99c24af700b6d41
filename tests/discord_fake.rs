//! The fake Discord (tests/support/fake_discord.rs) proven against the real serenity 0.12.5
//! client: a minimal serenity bot, written here, connects through the fake (REST proxy with
//! serenity's rate limiter off, gateway websocket), and every test checks both sides: what
//! serenity saw and what the fake recorded. Only 127.0.0.1 is contacted.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use serenity::all::{
    ActionRow, ActionRowComponent, ApplicationId, ButtonKind, ButtonStyle, Channel, ChannelId,
    ChannelType, ClientBuilder, Command, CommandDataOptionValue, CommandOptionType,
    ComponentInteraction, ComponentInteractionDataKind, Context, CreateAllowedMentions,
    CreateAttachment, CreateCommand, CreateCommandOption, CreateInteractionResponseFollowup,
    EditInteractionResponse, EventHandler, GatewayIntents, Http, HttpBuilder, HttpError,
    Interaction, InteractionId, Message, MessageId, MessageType, MessageUpdateEvent,
    PartialChannel, ReactionType, Ready, ShardManager,
};
use serenity::builder::{
    Builder, CreateActionRow, CreateButton, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateMessage, EditMessage,
};
use tokio::sync::mpsc;

use support::fake_discord::{
    FAKE_CATEGORY, FakeDiscord, FakeDiscordOptions, FakeUser, IncomingClick, IncomingCommand,
    IncomingMessage,
};

const GUILD: u64 = 900_000_000_000_000_001;
const CHANNEL: u64 = 900_000_000_000_000_002;
const OTHER_CHANNEL: u64 = 900_000_000_000_000_003;

fn alice() -> FakeUser {
    FakeUser::new(800_000_000_000_000_001, "alice")
}

fn bob() -> FakeUser {
    FakeUser::new(800_000_000_000_000_002, "bob")
}

/// What the test bot did, reported to the test.
#[derive(Debug)]
enum Report {
    Ready {
        session_id: String,
        application_id: u64,
    },
    Registered(Result<Vec<String>, String>),
    Replied {
        reply: Result<u64, String>,
        edit: Result<(), String>,
    },
    TooLong {
        /// serenity's own check, through its builder.
        builder: String,
        /// The same content sent raw, past serenity's check: the fake's answer.
        raw_status: Option<u16>,
        raw_message: String,
        /// A normal-length message without allowed_mentions, sent raw.
        no_mentions_status: Option<u16>,
    },
    Edits(Vec<Result<(), Option<u16>>>),
    Answered {
        question: String,
        defer: Result<(), String>,
        edit: Result<(), String>,
    },
    /// A button click as serenity delivered it, and how the bot answered.
    Clicked {
        interaction_id: u64,
        custom_id: String,
        is_button: bool,
        message_id: u64,
        /// The clicked message's buttons as serenity read them from the interaction.
        message_buttons: Vec<String>,
        user_id: u64,
        guild_id: Option<u64>,
        /// `member.permissions` (guild clicks only).
        permissions: Option<u64>,
        roles: Vec<u64>,
        response: Result<(), String>,
        /// After an acknowledgement ("ack"): the `@original` edit (the message id and buttons
        /// it returned) and a follow-up with a button.
        edited: Option<Result<(u64, Vec<String>), String>>,
        followup: Option<Result<u64, String>>,
    },
}

/// A minimal serenity bot: registers `/poe`, answers "hello" with a reply and an edit,
/// probes the content limit, edits in a burst for "burst", and defers then edits slash
/// commands. Every user message it sees is recorded in `seen`.
struct TestBot {
    reports: mpsc::UnboundedSender<Report>,
    seen: Arc<Mutex<Vec<(u64, String)>>>,
    echoes: Arc<Mutex<Echoes>>,
}

/// The bot's own messages and edits as Discord echoes them over the gateway: proof that
/// serenity deserialises the fake's rendering of bot messages.
#[derive(Debug, Default)]
struct Echoes {
    /// (id, content, replied-to id)
    created: Vec<(u64, String, Option<u64>)>,
    /// (id, content)
    updated: Vec<(u64, Option<String>)>,
    /// The buttons (custom ids) of each created message, as serenity read them.
    created_buttons: Vec<(u64, Vec<String>)>,
    /// Every MESSAGE_UPDATE, users' edits and unfurls included, as serenity read it.
    events: Vec<MessageUpdateEvent>,
}

/// The custom ids of serenity's action rows, in order (link buttons have none).
fn button_ids(rows: &[ActionRow]) -> Vec<String> {
    rows.iter()
        .flat_map(|row| &row.components)
        .filter_map(|component| match component {
            ActionRowComponent::Button(button) => match &button.data {
                ButtonKind::NonLink { custom_id, .. } => Some(custom_id.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn buttons(ids: &[&str]) -> Vec<CreateActionRow> {
    vec![CreateActionRow::Buttons(
        ids.iter()
            .map(|id| CreateButton::new(*id).label(id.to_uppercase()))
            .collect(),
    )]
}

fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
}

fn status(err: &serenity::Error) -> Option<u16> {
    match err {
        serenity::Error::Http(http) => http.status_code().map(|code| code.as_u16()),
        _ => None,
    }
}

#[serenity::async_trait]
impl EventHandler for TestBot {
    async fn ready(&self, ctx: Context, ready: Ready) {
        let _ = self.reports.send(Report::Ready {
            session_id: ready.session_id.clone(),
            application_id: ready.application.id.get(),
        });
        let command = CreateCommand::new("poe").description("Ask Poe").add_option(
            CreateCommandOption::new(CommandOptionType::SubCommand, "ask", "Ask a question")
                .add_sub_option(
                    CreateCommandOption::new(CommandOptionType::String, "question", "What to ask")
                        .required(true),
                ),
        );
        let registered = Command::set_global_commands(&ctx.http, vec![command])
            .await
            .map(|commands| commands.into_iter().map(|c| c.name).collect())
            .map_err(|err| err.to_string());
        let _ = self.reports.send(Report::Registered(registered));
    }

    async fn message(&self, ctx: Context, msg: Message) {
        if msg.author.bot {
            // Discord echoes the bot's own messages.
            let reference = msg.referenced_message.as_ref().map(|m| m.id.get());
            let mut echoes = self.echoes.lock().unwrap();
            echoes
                .created
                .push((msg.id.get(), msg.content.clone(), reference));
            echoes
                .created_buttons
                .push((msg.id.get(), button_ids(&msg.components)));
            return;
        }
        self.seen
            .lock()
            .unwrap()
            .push((msg.id.get(), msg.content.clone()));
        if msg.content.starts_with("hello") {
            let reply = msg
                .channel_id
                .send_message(
                    &ctx.http,
                    CreateMessage::new()
                        .content("Hi!")
                        .reference_message(&msg)
                        .allowed_mentions(no_mentions()),
                )
                .await;
            let report = match reply {
                Ok(mut reply) => {
                    let edit = reply
                        .edit(
                            &ctx.http,
                            EditMessage::new()
                                .content("Hi! (edited)")
                                .allowed_mentions(no_mentions()),
                        )
                        .await
                        .map_err(|err| err.to_string());
                    Report::Replied {
                        reply: Ok(reply.id.get()),
                        edit,
                    }
                }
                Err(err) => Report::Replied {
                    reply: Err(err.to_string()),
                    edit: Err("no reply to edit".into()),
                },
            };
            let _ = self.reports.send(report);
        } else if msg.content.starts_with("too long") {
            let long = "x".repeat(2001);
            let builder = msg
                .channel_id
                .send_message(
                    &ctx.http,
                    CreateMessage::new()
                        .content(long.clone())
                        .allowed_mentions(no_mentions()),
                )
                .await
                .map(|_| "sent".to_owned())
                .unwrap_or_else(|err| format!("{err:?}"));
            let raw = ctx
                .http
                .send_message(
                    msg.channel_id,
                    Vec::new(),
                    &json!({"content": long, "allowed_mentions": {"parse": []}}),
                )
                .await;
            let (raw_status, raw_message) = match &raw {
                Ok(_) => (Some(200), String::new()),
                Err(err) => (status(err), err.to_string()),
            };
            let no_mentions_status = match ctx
                .http
                .send_message(msg.channel_id, Vec::new(), &json!({"content": "hi"}))
                .await
            {
                Ok(_) => Some(200),
                Err(err) => status(&err),
            };
            let _ = self.reports.send(Report::TooLong {
                builder,
                raw_status,
                raw_message,
                no_mentions_status,
            });
        } else if msg.content.starts_with("burst") {
            let mut results = Vec::new();
            match msg
                .channel_id
                .send_message(
                    &ctx.http,
                    CreateMessage::new()
                        .content("0")
                        .allowed_mentions(no_mentions()),
                )
                .await
            {
                Ok(mut reply) => {
                    results.push(Ok(()));
                    for n in 1..=3 {
                        let edit = EditMessage::new()
                            .content(n.to_string())
                            .allowed_mentions(no_mentions());
                        results.push(reply.edit(&ctx.http, edit).await.map_err(|e| status(&e)));
                    }
                }
                Err(err) => results.push(Err(status(&err))),
            }
            let _ = self.reports.send(Report::Edits(results));
        }
    }

    async fn message_update(
        &self,
        _ctx: Context,
        _old: Option<Message>,
        _new: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        let mut echoes = self.echoes.lock().unwrap();
        echoes.events.push(event.clone());
        echoes.updated.push((event.id.get(), event.content));
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let command = match interaction {
            Interaction::Command(command) => command,
            Interaction::Component(component) => return self.clicked(ctx, component).await,
            _ => return,
        };
        let defer = command
            .create_response(
                &ctx.http,
                CreateInteractionResponse::Defer(
                    CreateInteractionResponseMessage::new().ephemeral(true),
                ),
            )
            .await
            .map_err(|err| err.to_string());
        let question = command
            .data
            .options
            .iter()
            .find(|option| option.name == "ask")
            .and_then(|option| match &option.value {
                CommandDataOptionValue::SubCommand(options) => options.first(),
                _ => None,
            })
            .and_then(|option| option.value.as_str())
            .unwrap_or_default()
            .to_owned();
        let edit = command
            .edit_response(
                &ctx.http,
                EditInteractionResponse::new()
                    .content(format!("You asked: {question}"))
                    .allowed_mentions(no_mentions()),
            )
            .await
            .map(|_| ())
            .map_err(|err| err.to_string());
        let _ = self.reports.send(Report::Answered {
            question,
            defer,
            edit,
        });
    }
}

impl TestBot {
    /// Answers a click by its custom id: "update" with UPDATE_MESSAGE (new content, one
    /// "again" button), "ack" with DEFERRED_UPDATE_MESSAGE then an `@original` edit and a
    /// follow-up, anything else with an ephemeral refusal (type 4).
    async fn clicked(&self, ctx: Context, component: ComponentInteraction) {
        let custom_id = component.data.custom_id.clone();
        let (mut edited, mut followup) = (None, None);
        let response = match custom_id.as_str() {
            "update" => CreateInteractionResponse::UpdateMessage(
                CreateInteractionResponseMessage::new()
                    .content("Updated")
                    .components(buttons(&["again"]))
                    .allowed_mentions(no_mentions()),
            ),
            "ack" => CreateInteractionResponse::Acknowledge,
            _ => CreateInteractionResponse::Message(
                CreateInteractionResponseMessage::new()
                    .content("Only the asker may use these buttons")
                    .ephemeral(true)
                    .allowed_mentions(no_mentions()),
            ),
        };
        let response = component
            .create_response(&ctx.http, response)
            .await
            .map_err(|err| err.to_string());
        if custom_id == "ack" && response.is_ok() {
            let edit = EditInteractionResponse::new()
                .content("Working on it")
                .allowed_mentions(no_mentions());
            edited = Some(
                component
                    .edit_response(&ctx.http, edit)
                    .await
                    .map(|message| (message.id.get(), button_ids(&message.components)))
                    .map_err(|err| err.to_string()),
            );
            let more = CreateInteractionResponseFollowup::new()
                .content("Still working")
                .ephemeral(true)
                .components(buttons(&["cancel"]))
                .allowed_mentions(no_mentions());
            followup = Some(
                component
                    .create_followup(&ctx.http, more)
                    .await
                    .map(|message| message.id.get())
                    .map_err(|err| err.to_string()),
            );
        }
        let member = component.member.as_ref();
        let _ = self.reports.send(Report::Clicked {
            interaction_id: component.id.get(),
            custom_id,
            is_button: matches!(component.data.kind, ComponentInteractionDataKind::Button),
            message_id: component.message.id.get(),
            message_buttons: button_ids(&component.message.components),
            user_id: component.user.id.get(),
            guild_id: component.guild_id.map(|guild| guild.get()),
            permissions: member.and_then(|m| m.permissions).map(|p| p.bits()),
            roles: member
                .map(|m| m.roles.iter().map(|role| role.get()).collect())
                .unwrap_or_default(),
            response,
            edited,
            followup,
        });
    }
}

/// A running serenity client connected to `fake`.
struct Bot {
    reports: mpsc::UnboundedReceiver<Report>,
    seen: Arc<Mutex<Vec<(u64, String)>>>,
    echoes: Arc<Mutex<Echoes>>,
    shards: Arc<ShardManager>,
    task: tokio::task::JoinHandle<Result<(), serenity::Error>>,
}

impl Bot {
    /// With the intents a relay needs: guild messages, DMs, message content.
    async fn connect(fake: &FakeDiscord) -> Bot {
        let intents = GatewayIntents::GUILD_MESSAGES
            | GatewayIntents::DIRECT_MESSAGES
            | GatewayIntents::MESSAGE_CONTENT;
        Bot::connect_with(fake, intents).await
    }

    async fn connect_with(fake: &FakeDiscord, intents: GatewayIntents) -> Bot {
        let (sender, reports) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let echoes = Arc::new(Mutex::new(Echoes::default()));
        let handler = TestBot {
            reports: sender,
            seen: seen.clone(),
            echoes: echoes.clone(),
        };
        // The proxy is only honoured with serenity's rate limiter off.
        let http = HttpBuilder::new(fake.bot_token())
            .proxy(fake.api_base())
            .ratelimiter_disabled(true)
            .build();
        let mut client = ClientBuilder::new_with_http(http, intents)
            .event_handler(handler)
            .await
            .expect("serenity client");
        // serenity also asked GET /gateway through the proxy; set it anyway, so a failing call
        // can never send the client to the real gateway.
        *client.ws_url.lock().await = fake.gateway_url();
        let shards = client.shard_manager.clone();
        let task = tokio::spawn(async move { client.start().await });
        Bot {
            reports,
            seen,
            echoes,
            shards,
            task,
        }
    }

    async fn next(&mut self) -> Report {
        tokio::time::timeout(Duration::from_secs(15), self.reports.recv())
            .await
            .expect("the bot reported nothing within 15 s")
            .expect("the bot's report channel closed")
    }

    /// Waits for READY and the command registration that follows it: (session id,
    /// application id, registered command names).
    async fn ready(&mut self) -> (String, u64, Vec<String>) {
        let Report::Ready {
            session_id,
            application_id,
        } = self.next().await
        else {
            panic!("expected READY first");
        };
        let Report::Registered(registered) = self.next().await else {
            panic!("expected the command registration after READY");
        };
        (
            session_id,
            application_id,
            registered.expect("commands registered"),
        )
    }

    fn times_seen(&self, id: u64) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(seen, _)| *seen == id)
            .count()
    }

    async fn stop(self) {
        self.shards.shutdown_all().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_connects_registers_a_command_and_replies_then_edits() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start_with(FakeDiscordOptions {
        heartbeat_interval: Duration::from_millis(500),
        ..FakeDiscordOptions::default()
    })
    .await;
    let mut bot = Bot::connect(&fake).await;
    let (session, application, registered) = bot.ready().await;
    assert_eq!(session, "fake-session-1");
    assert_eq!(application, fake.application_id());
    assert_eq!(registered, vec!["poe".to_owned()]);

    // The REST calls went through the proxy, authenticated.
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.method == "GET" && c.path == "/gateway")
    );
    let put = calls
        .iter()
        .find(|c| c.method == "PUT")
        .expect("command registration call");
    assert_eq!(
        put.path,
        format!("/applications/{}/commands", fake.application_id())
    );
    assert_eq!(put.body[0]["options"][0]["options"][0]["name"], "question");
    assert_eq!(fake.commands(None).len(), 1);
    assert_eq!(fake.command_registrations()[0].names, vec!["poe"]);
    let stats = fake.gateway_stats();
    assert_eq!(stats.identifies, 1);
    let expected_intents = GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT;
    assert_eq!(stats.intents, Some(expected_intents.bits()));

    let trigger = fake.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), &format!("hello {}", fake.mention()))
            .in_guild(GUILD)
            .mentioning(&fake.bot_user()),
    );
    let Report::Replied { reply, edit } = bot.next().await else {
        panic!("expected the reply report");
    };
    let reply = reply.expect("reply sent");
    edit.expect("reply edited");

    let message = fake.message(reply).expect("the fake keeps the reply");
    assert_eq!(message.content, "Hi! (edited)");
    let history: Vec<&str> = message.history.iter().map(|v| v.content.as_str()).collect();
    assert_eq!(history, ["Hi!", "Hi! (edited)"]);
    assert_eq!(message.reference, Some(trigger));
    assert_eq!(message.channel_id, CHANNEL);
    assert!(message.author.bot);
    assert_eq!(
        message.allowed_mentions,
        Some(json!({"parse": [], "users": [], "roles": []}))
    );
    assert_eq!(fake.messages(CHANNEL).len(), 2, "the trigger and the reply");
    assert_eq!(bot.times_seen(trigger), 1);
    // Both writes are recorded with their bodies and times.
    let writes: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.channel == Some(CHANNEL))
        .collect();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0].method, "POST");
    assert_eq!(
        writes[0].body["message_reference"]["message_id"],
        trigger.to_string()
    );
    assert_eq!(writes[1].method, "PATCH");
    assert!(writes[0].at <= writes[1].at);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // The echoes of the bot's own message and edit reached serenity's handlers intact.
    fake.wait_for("the echoes of the reply and its edit", |_| {
        let echoes = bot.echoes.lock().unwrap();
        (!echoes.created.is_empty() && !echoes.updated.is_empty()).then_some(())
    })
    .await;
    {
        let echoes = bot.echoes.lock().unwrap();
        assert_eq!(
            echoes.created,
            vec![(reply, "Hi!".to_owned(), Some(trigger))]
        );
        assert_eq!(
            echoes.updated,
            vec![(reply, Some("Hi! (edited)".to_owned()))]
        );
    }

    // Heartbeats are acknowledged: after a few intervals the connection is still the first one.
    fake.wait_for("three heartbeats", |fake| {
        (fake.gateway_stats().heartbeats >= 3).then_some(())
    })
    .await;
    let stats = fake.gateway_stats();
    assert_eq!(
        (stats.connections, stats.identifies, stats.resumes),
        (1, 1, 0)
    );
    assert!(stats.connected);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_command_is_deferred_then_its_original_response_edited() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;

    let interaction = fake.dispatch_command(
        IncomingCommand::new(
            CHANNEL,
            alice(),
            "poe",
            json!([{"name": "ask", "type": 1, "options": [
                {"name": "question", "type": 3, "value": "what is 2+2?"}
            ]}]),
        )
        .in_guild(GUILD, 8),
    );
    let Report::Answered {
        question,
        defer,
        edit,
    } = bot.next().await
    else {
        panic!("expected the interaction report");
    };
    assert_eq!(question, "what is 2+2?");
    defer.expect("deferred");
    edit.expect("@original edited");

    let record = fake.interaction(interaction).expect("interaction recorded");
    let registered_id = fake.commands(None)[0]["id"].clone();
    assert!(registered_id.is_string());
    let ack = record.ack.expect("acknowledged");
    assert_eq!(ack.kind, 5, "deferred");
    assert!(ack.ephemeral);
    assert!(ack.latency < Duration::from_secs(3), "{:?}", ack.latency);
    let original = fake.message(record.original.expect("@original")).unwrap();
    assert_eq!(original.content, "You asked: what is 2+2?");
    assert_eq!(original.interaction_id, Some(interaction));
    assert!(original.is_ephemeral());
    assert_eq!(
        original.edits(),
        1,
        "the deferred placeholder, then the answer"
    );
    let calls = fake.calls();
    let callback = calls
        .iter()
        .find(|c| c.path.ends_with("/callback"))
        .expect("callback call");
    assert_eq!(callback.status, 204);
    assert_eq!(callback.body["type"], 5);
    let patch = calls
        .iter()
        .find(|c| c.path.ends_with("/messages/@original"))
        .expect("@original call");
    assert_eq!(patch.method, "PATCH");
    assert!(callback.at <= patch.at);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_content_and_missing_allowed_mentions_are_rejected() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;

    fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "too long").in_guild(GUILD));
    let Report::TooLong {
        builder,
        raw_status,
        raw_message,
        no_mentions_status,
    } = bot.next().await
    else {
        panic!("expected the too-long report");
    };
    // serenity's builder refuses before sending (it counts chars, as Discord does).
    assert!(builder.contains("MessageTooLong"), "{builder}");
    // Sent raw, the fake answers like Discord: 400 Invalid Form Body on content.
    assert_eq!(raw_status, Some(400), "{raw_message}");
    assert!(raw_message.contains("2000 or fewer"), "{raw_message}");
    // The no-mentions policy: a message without allowed_mentions is refused too.
    assert_eq!(no_mentions_status, Some(400));

    let violations = fake.violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].reason.contains("BASE_TYPE_MAX_LENGTH"));
    assert!(violations[1].reason.contains("allowed_mentions"));
    assert_eq!(fake.bot_messages(CHANNEL).len(), 0, "nothing was posted");
    // Only the two raw attempts reached the fake: the builder's was stopped in serenity.
    let posts = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/messages"))
        .count();
    assert_eq!(posts, 2);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_and_serenity_surfaces_it() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;
    fake.rate_limit(CHANNEL, 2, Duration::from_secs(5));

    fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "burst").in_guild(GUILD));
    let Report::Edits(results) = bot.next().await else {
        panic!("expected the burst report");
    };
    // Send and first edit pass; the next two get 429, which serenity (limiter off) neither
    // waits for nor retries: the bot's own code sees status 429.
    assert_eq!(
        results,
        vec![Ok(()), Ok(()), Err(Some(429)), Err(Some(429))]
    );
    assert_eq!(fake.rate_limited(Some(CHANNEL)), 2);
    assert_eq!(fake.rate_limited(Some(OTHER_CHANNEL)), 0);
    let reply = &fake.bot_messages(CHANNEL)[0];
    assert_eq!(reply.content, "1", "the rejected edits changed nothing");
    assert!(fake.violations().is_empty(), "429s are not violations");

    // The 429 on the wire, as Discord sends it.
    let response = reqwest::Client::new()
        .patch(format!(
            "{}/api/v10/channels/{CHANNEL}/messages/{}",
            fake.api_base(),
            reply.id
        ))
        .header("Authorization", format!("Bot {}", fake.bot_token()))
        .json(&json!({"content": "2", "allowed_mentions": {"parse": []}}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after));
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    assert!(response.headers().contains_key("x-ratelimit-reset-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["message"], "You are being rate limited.");
    assert_eq!(body["global"], false);
    assert!(body["retry_after"].as_f64().unwrap() > 0.0);
    assert_eq!(fake.rate_limited(None), 3);

    // Injected 429s work without a limit, in any channel.
    fake.inject_429(OTHER_CHANNEL, 1, Duration::from_millis(1500));
    let http = fake_http(&fake);
    let body = json!({"content": "x", "allowed_mentions": {"parse": []}});
    let first = http
        .send_message(ChannelId::new(OTHER_CHANNEL), Vec::new(), &body)
        .await;
    assert_eq!(first.as_ref().err().and_then(status), Some(429));
    // Worth knowing for the adapter: serenity cannot decode Discord's 429 body (it has no
    // `code`) and keeps no headers, so `retry_after` never reaches the bot through serenity's
    // error; the bot's own backoff has to cover it.
    let Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) = first else {
        panic!("expected an unsuccessful request, got {first:?}");
    };
    assert_eq!(response.error.code, -1, "{:?}", response.error);
    assert!(response.error.message.contains("Could not decode json"));
    http.send_message(ChannelId::new(OTHER_CHANNEL), Vec::new(), &body)
        .await
        .expect("the next one passes");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reconnect_and_drop_are_resumed_without_loss_or_duplicates() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;

    let first =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "one").in_guild(GUILD));
    fake.wait_for("the first message", |_| {
        (bot.times_seen(first) == 1).then_some(())
    })
    .await;

    // RECONNECT: serenity opens a new connection and RESUMEs.
    assert!(fake.send_reconnect());
    fake.wait_for("a RESUME after RECONNECT", |fake| {
        let stats = fake.gateway_stats();
        (stats.resumes == 1 && stats.connected).then_some(())
    })
    .await;
    let second =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "two").in_guild(GUILD));
    fake.wait_for("the second message", |_| {
        (bot.times_seen(second) == 1).then_some(())
    })
    .await;

    // A dropped socket, with a message dispatched while the bot is away: serenity RESUMEs
    // and the fake replays what it missed.
    assert!(fake.drop_gateway());
    let third =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "three").in_guild(GUILD));
    fake.wait_for("a RESUME after the drop", |fake| {
        let stats = fake.gateway_stats();
        (stats.resumes == 2 && stats.connected).then_some(())
    })
    .await;
    let fourth =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "four").in_guild(GUILD));
    fake.wait_for("the third and fourth messages", |_| {
        (bot.times_seen(third) == 1 && bot.times_seen(fourth) == 1).then_some(())
    })
    .await;

    // Settle, then check nothing came twice and the session was never re-identified.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in [first, second, third, fourth] {
        assert_eq!(bot.times_seen(id), 1, "message {id}");
    }
    let stats = fake.gateway_stats();
    assert_eq!(stats.identifies, 1, "{stats:?}");
    assert_eq!(stats.rejected_resumes, 0, "{stats:?}");
    assert_eq!(stats.connections, 3, "{stats:?}");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_session_makes_serenity_identify_again() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;

    assert!(fake.send_invalid_session(false));
    // serenity restarts the shard (its queue waits up to 5 s between identifies) and gets a
    // new READY.
    let (session, _, _) = bot.ready().await;
    assert_eq!(session, "fake-session-2");
    fake.wait_ready().await;
    let message =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "after").in_guild(GUILD));
    fake.wait_for("the message after re-identifying", |_| {
        (bot.times_seen(message) == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bot.times_seen(message), 1);
    assert_eq!(fake.gateway_stats().identifies, 2);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_served_by_the_fake_over_loopback() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;

    let id = fake.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), "a file")
            .in_guild(GUILD)
            .with_attachment("notes.txt", "text/plain", b"hello from a file"),
    );
    fake.wait_for("the message with a file", |_| {
        (bot.times_seen(id) == 1).then_some(())
    })
    .await;
    let attachment = fake.message(id).unwrap().attachments[0].clone();
    assert!(attachment.url.starts_with(&fake.api_base()));
    let body = reqwest::get(&attachment.url)
        .await
        .expect("download")
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello from a file");
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.path.starts_with("/attachments/") && c.status == 200)
    );

    // The other way: a file the bot uploads (multipart with payload_json) is kept on the
    // message and served too; typing is recorded.
    let http = fake_http(&fake);
    let channel = ChannelId::new(CHANNEL);
    channel.broadcast_typing(&http).await.expect("typing");
    let sent = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("here is a picture")
                .allowed_mentions(no_mentions())
                .add_file(CreateAttachment::bytes(
                    b"not really a png".to_vec(),
                    "a.png",
                )),
        )
        .await
        .expect("upload");
    assert_eq!(sent.attachments.len(), 1);
    assert_eq!(sent.attachments[0].filename, "a.png");
    let stored = fake.message(sent.id.get()).unwrap();
    assert_eq!(stored.attachments[0].size, 16);
    let bytes = reqwest::get(&sent.attachments[0].url)
        .await
        .expect("download")
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"not really a png");
    assert_eq!(fake.typing(CHANNEL).len(), 1);
    let upload = fake
        .calls()
        .into_iter()
        .find(|c| !c.files.is_empty())
        .expect("the upload call");
    assert_eq!(upload.body["content"], "here is a picture");
    assert_eq!(upload.files[0].1, "a.png");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    bot.stop().await;
}

/// Discord's global limit, as serenity meets it: 50 requests in any second over every route
/// but the interaction endpoints; more are answered 429 with `global: true` and counted as
/// invalid requests (toward Discord's IP ban); interaction callbacks and webhooks go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_answers_429_globally_and_counts_invalid_requests() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let http = fake_http(&fake);
    // A burst well inside one second, spread over many channels (no per-channel limit).
    let calls = (0..60u64).map(|index| {
        let http = &http;
        async move {
            http.broadcast_typing(ChannelId::new(CHANNEL + index))
                .await
                .err()
                .as_ref()
                .and_then(status)
        }
    });
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all(calls).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the burst must fit in one second for this test to mean anything"
    );
    let limited = results
        .iter()
        .filter(|status| **status == Some(429))
        .count();
    let passed = results.iter().filter(|status| status.is_none()).count();
    assert_eq!((passed, limited), (50, 10), "{results:?}");
    assert_eq!(fake.global_rate_limited(), 10);
    assert_eq!(fake.rate_limited(None), 0, "no channel limit was involved");
    assert_eq!(
        fake.invalid_requests(),
        10,
        "429s count towards Discord's ban"
    );

    // The 429 on the wire, as Discord documents it.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/channels/{CHANNEL}/typing",
            fake.api_base()
        ))
        .header("Authorization", format!("Bot {}", fake.bot_token()))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-ratelimit-global"], "true");
    assert_eq!(response.headers()["x-ratelimit-scope"], "global");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["global"], true);
    assert_eq!(body["message"], "You are being rate limited.");
    let wait = body["retry_after"].as_f64().unwrap();
    assert!(wait > 0.0 && wait <= 1.0, "{wait}");

    // Interaction endpoints are outside the global limit: a command is still acknowledged.
    let id = fake.dispatch_command(IncomingCommand::new(
        CHANNEL,
        alice(),
        "poe",
        json!([{"type": 1, "name": "help", "options": []}]),
    ));
    let token = fake.interaction(id).expect("recorded").token;
    http.create_interaction_response(
        InteractionId::new(id),
        &token,
        &json!({"type": 5}),
        Vec::new(),
    )
    .await
    .expect("the callback is not globally limited");
    http.create_followup_message(
        &token,
        &json!({"content": "hi", "allowed_mentions": {"parse": []}}),
        Vec::new(),
    )
    .await
    .expect("nor are the interaction's webhook messages");

    // A second later the window has moved on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    http.broadcast_typing(ChannelId::new(CHANNEL))
        .await
        .expect("the limit is per second");
    // 401s count towards the ban as well.
    let unauthorized = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/channels/{CHANNEL}/typing",
            fake.api_base()
        ))
        .header("Authorization", "Bot not-the-token")
        .send()
        .await
        .expect("request");
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(fake.invalid_requests(), 12);
}

/// The same global limit against serenity's own rate limiter, the one production runs:
/// serenity is given a client that reaches the fake over TLS as https://discord.com (a
/// certificate made for the test, discord.com resolved to 127.0.0.1). serenity reads the fake's
/// global 429 as Discord's (it reports it as global and holds every request for the
/// retry-after), and every request still succeeds in the end; but each 429 it waited out was an
/// invalid request towards Discord's IP ban, which is why the bot keeps its own budget under
/// the limit instead of leaving it to serenity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenitys_own_rate_limiter_takes_the_global_429_as_discords() {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use serenity::http::{RatelimitInfo, Ratelimiter};

    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let certified = rcgen::generate_simple_self_signed(vec!["discord.com".to_owned()])
        .expect("a certificate for discord.com");
    let certificate = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let address = fake.serve_tls(certificate.clone(), key.into()).await;
    assert!(address.ip().is_loopback());
    let client = reqwest012::Client::builder()
        .resolve("discord.com", address)
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest012::Certificate::from_der(&certificate).expect("the test's certificate"),
        )
        .no_proxy()
        .build()
        .expect("a client for the fake over TLS");
    let reported: Arc<Mutex<Vec<RatelimitInfo>>> = Arc::default();
    // The rate limiter sends the Authorization header as given (HttpBuilder adds "Bot ").
    let mut ratelimiter = Ratelimiter::new(client.clone(), format!("Bot {}", fake.bot_token()));
    let record = reported.clone();
    ratelimiter.set_ratelimit_callback(Box::new(move |info| record.lock().unwrap().push(info)));
    let http = HttpBuilder::new(fake.bot_token())
        .client(client)
        .ratelimiter(ratelimiter)
        .build();
    let calls = (0..60u64).map(|index| {
        let http = &http;
        async move {
            http.broadcast_typing(ChannelId::new(CHANNEL + index))
                .await
                .err()
                .as_ref()
                .and_then(status)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results.iter().all(Option::is_none),
        "serenity waits out the 429s and retries: {results:?}"
    );
    let limited = fake.global_rate_limited();
    assert!(limited >= 1, "the burst met the global limit");
    let reported = reported.lock().unwrap().clone();
    let global: Vec<&RatelimitInfo> = reported.iter().filter(|info| info.global).collect();
    assert!(
        !global.is_empty(),
        "serenity did not take the fake's 429 as the global limit: {reported:?}"
    );
    for info in &global {
        assert!(info.path.contains("typing"), "{info:?}");
        assert!(
            info.timeout >= Duration::from_millis(1) && info.timeout <= Duration::from_secs(1),
            "serenity read the retry-after as {:?}",
            info.timeout
        );
    }
    let typed = fake
        .calls()
        .iter()
        .filter(|call| call.path.ends_with("/typing") && call.status == 204)
        .count();
    assert_eq!(typed, 60, "every request got through in the end");
    assert_eq!(
        fake.invalid_requests(),
        limited,
        "each 429 serenity waited out counts towards Discord's ban"
    );
}

/// serenity's HTTP client pointed at the fake, for calls made by the test itself.
fn fake_http(fake: &FakeDiscord) -> Http {
    HttpBuilder::new(fake.bot_token())
        .proxy(fake.api_base())
        .ratelimiter_disabled(true)
        .application_id(ApplicationId::new(fake.application_id()))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_rules_are_enforced() {
    poe_relay::tls::install_crypto_provider();
    // No gateway needed: interactions are recorded when dispatched, and answered over REST.
    let fake = FakeDiscord::start_with(FakeDiscordOptions {
        interaction_deadline: Duration::from_millis(300),
        ..FakeDiscordOptions::default()
    })
    .await;
    let http = fake_http(&fake);
    let command = || IncomingCommand::new(CHANNEL, alice(), "poe", json!([]));
    let id = fake.dispatch_command(command());
    let token = fake.interaction(id).unwrap().token;
    let edit = json!({"content": "early", "allowed_mentions": {"parse": []}});

    // @original does not exist before the callback.
    let early = http
        .edit_original_interaction_response(&token, &edit, Vec::new())
        .await;
    assert_eq!(early.as_ref().err().and_then(status), Some(404));
    let defer = json!({"type": 5});
    http.create_interaction_response(InteractionId::new(id), &token, &defer, Vec::new())
        .await
        .expect("deferred");
    // Only one callback per interaction.
    let again = http
        .create_interaction_response(InteractionId::new(id), &token, &defer, Vec::new())
        .await;
    assert_eq!(again.as_ref().err().and_then(status), Some(400));
    // The first follow-up after a deferral answers the deferred message itself (as Discord
    // does, keeping its visibility); the next one is a real follow-up.
    let ephemeral = json!({"content": "first", "flags": 64, "allowed_mentions": {"parse": []}});
    let first = http
        .create_followup_message(&token, &ephemeral, Vec::new())
        .await
        .expect("follow-up");
    let interaction = fake.interaction(id).unwrap();
    assert_eq!(interaction.original, Some(first.id.get()));
    assert!(interaction.followups.is_empty());
    let original = fake.message(first.id.get()).unwrap();
    assert_eq!(original.content, "first");
    assert!(!original.is_ephemeral(), "the deferral was public");
    let followup = http
        .create_followup_message(&token, &edit, Vec::new())
        .await
        .expect("follow-up");
    assert_eq!(
        fake.interaction(id).unwrap().followups,
        vec![followup.id.get()]
    );

    // Too late: the interaction is gone.
    let late = fake.dispatch_command(command());
    let late_token = fake.interaction(late).unwrap().token;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = http
        .create_interaction_response(InteractionId::new(late), &late_token, &defer, Vec::new())
        .await;
    assert_eq!(answer.as_ref().err().and_then(status), Some(404));
    assert!(fake.interaction(late).unwrap().ack.is_none());

    // Autocomplete answers (type 8) are recorded with their choices.
    let auto = fake.dispatch_command(command().autocomplete());
    let auto_token = fake.interaction(auto).unwrap().token;
    let choices = json!({"type": 8, "data": {"choices": [{"name": "GPT-4o", "value": "gpt-4o"}]}});
    http.create_interaction_response(InteractionId::new(auto), &auto_token, &choices, Vec::new())
        .await
        .expect("autocomplete answered");
    let ack = fake.interaction(auto).unwrap().ack.unwrap();
    assert_eq!(ack.kind, 8);
    assert_eq!(ack.data["choices"][0]["value"], "gpt-4o");

    let violations = fake.violations();
    let statuses: Vec<u16> = violations.iter().map(|v| v.status).collect();
    assert_eq!(statuses, [404, 400, 404], "{violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_content_follows_the_identify_intents() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    // No MESSAGE_CONTENT intent: like Discord, guild messages arrive without their content
    // unless they mention the bot; DMs keep theirs.
    let mut bot = Bot::connect_with(
        &fake,
        GatewayIntents::GUILD_MESSAGES | GatewayIntents::DIRECT_MESSAGES,
    )
    .await;
    bot.ready().await;
    let plain =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "secret").in_guild(GUILD));
    let mention = format!("{} hi", fake.mention());
    let mentioned = fake.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), &mention)
            .in_guild(GUILD)
            .mentioning(&fake.bot_user()),
    );
    let direct = fake.dispatch_message(IncomingMessage::new(OTHER_CHANNEL, alice(), "dm"));
    fake.wait_for("three messages", |_| {
        (bot.seen.lock().unwrap().len() == 3).then_some(())
    })
    .await;
    // serenity runs each event's handler in its own task: arrival order is not kept.
    let mut seen = bot.seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (plain, String::new()),
            (mentioned, mention),
            (direct, "dm".to_owned())
        ]
    );
    bot.stop().await;
}

/// `GET /channels/{id}` as serenity reads it: a thread names its parent channel, a text
/// channel's parent is its category (no thread), a DM is a private channel with its person,
/// and an unknown channel is Discord's 10003. The partial channel an interaction carries is
/// the same object, and serenity reads it as a `PartialChannel`.
#[tokio::test]
async fn channels_are_looked_up_as_serenity_reads_them() {
    const THREAD: u64 = 900_000_000_000_000_010;
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    fake.add_thread(THREAD, CHANNEL, GUILD);
    fake.dispatch_message(IncomingMessage::new(OTHER_CHANNEL, alice(), "hello"));
    let http = fake_http(&fake);

    match http.get_channel(ChannelId::new(THREAD)).await {
        Ok(Channel::Guild(thread)) => {
            assert_eq!(thread.kind, ChannelType::PublicThread);
            assert_eq!(thread.parent_id, Some(ChannelId::new(CHANNEL)));
            assert_eq!(thread.guild_id.get(), GUILD);
            assert!(thread.thread_metadata.is_some_and(|meta| !meta.archived));
        }
        other => panic!("the thread: {other:?}"),
    }
    match http.get_channel(ChannelId::new(CHANNEL)).await {
        Ok(Channel::Guild(channel)) => {
            assert_eq!(channel.kind, ChannelType::Text);
            assert_eq!(channel.parent_id, Some(ChannelId::new(FAKE_CATEGORY)));
        }
        other => panic!("the text channel: {other:?}"),
    }
    match http.get_channel(ChannelId::new(OTHER_CHANNEL)).await {
        Ok(Channel::Private(dm)) => {
            assert_eq!(dm.kind, ChannelType::Private);
            assert_eq!(dm.recipient.id.get(), alice().id);
        }
        other => panic!("the DM: {other:?}"),
    }
    match http
        .get_channel(ChannelId::new(900_000_000_000_000_099))
        .await
    {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) => {
            assert_eq!(response.status_code.as_u16(), 404);
            assert_eq!(response.error.code, 10003);
            assert_eq!(response.error.message, "Unknown Channel");
        }
        other => panic!("an unknown channel: {other:?}"),
    }
    let partial: PartialChannel = serde_json::from_value(fake.channel(THREAD).expect("the thread"))
        .expect("serenity reads it");
    assert_eq!(partial.kind, ChannelType::PublicThread);
    assert_eq!(partial.parent_id, Some(ChannelId::new(CHANNEL)));
    // The fake records every refused call; the unknown channel is the only one.
    let violations = fake.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].status, 404);
}

/// The custom ids of a message's buttons, as serenity read them.
fn rows_of(message: &Message) -> Vec<String> {
    button_ids(&message.components)
}

/// The single form error serenity read from a refusal: (status, path, code).
fn form_error(result: Result<Message, serenity::Error>) -> (u16, String, String) {
    match result {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) => {
            assert_eq!(response.error.code, 50035, "{:?}", response.error);
            assert_eq!(response.error.message, "Invalid Form Body");
            assert_eq!(response.error.errors.len(), 1, "{:?}", response.error);
            let error = &response.error.errors[0];
            (
                response.status_code.as_u16(),
                error.path.clone(),
                error.code.clone(),
            )
        }
        other => panic!("expected a form error, got {other:?}"),
    }
}

/// A bot message with buttons as serenity sends it (`CreateMessage::components` with
/// `CreateActionRow::Buttons`): the fake keeps the rows and returns them, on REST and in the
/// gateway echo, where serenity reads them back as its own `ActionRow`s (label, style, emoji,
/// link button). An edit without components keeps them; `components(vec![])` removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_are_kept_returned_and_edited_away() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;
    let http = fake_http(&fake);
    let channel = ChannelId::new(CHANNEL);
    let rows = vec![
        CreateActionRow::Buttons(vec![
            CreateButton::new("again").label("Again").emoji('🔁'),
            CreateButton::new("stop")
                .label("Stop")
                .style(ButtonStyle::Danger),
        ]),
        CreateActionRow::Buttons(vec![CreateButton::new_link("https://poe.com").label("Poe")]),
    ];
    let sent = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("Pick one")
                .components(rows)
                .allowed_mentions(no_mentions()),
        )
        .await
        .expect("a message with buttons");
    assert_eq!(rows_of(&sent), ["again", "stop"]);
    assert_eq!(sent.components.len(), 2);
    let ActionRowComponent::Button(again) = &sent.components[0].components[0] else {
        panic!("a button: {:?}", sent.components[0]);
    };
    assert_eq!(again.label.as_deref(), Some("Again"));
    assert_eq!(again.emoji, Some(ReactionType::Unicode("🔁".into())));
    let ActionRowComponent::Button(stop) = &sent.components[0].components[1] else {
        panic!("a button: {:?}", sent.components[0]);
    };
    assert!(matches!(
        &stop.data,
        ButtonKind::NonLink {
            style: ButtonStyle::Danger,
            ..
        }
    ));
    let ActionRowComponent::Button(link) = &sent.components[1].components[0] else {
        panic!("a link button: {:?}", sent.components[1]);
    };
    assert!(matches!(&link.data, ButtonKind::Link { url } if url == "https://poe.com"));

    let id = sent.id.get();
    let stored = fake.message(id).expect("stored");
    assert_eq!(stored.button_ids(), ["again", "stop"]);
    assert_eq!(stored.buttons().len(), 3);
    assert_eq!(
        stored.components[1]["components"][0]["url"],
        "https://poe.com"
    );
    assert_eq!(stored.components[0]["components"][1]["style"], 4);
    let fetched = http
        .get_message(channel, sent.id)
        .await
        .expect("GET the message");
    assert_eq!(rows_of(&fetched), ["again", "stop"]);
    fake.wait_for("the echo of the message with buttons", |_| {
        let echoes = bot.echoes.lock().unwrap();
        echoes
            .created_buttons
            .iter()
            .any(|(m, _)| *m == id)
            .then_some(())
    })
    .await;
    assert_eq!(
        bot.echoes.lock().unwrap().created_buttons,
        vec![(id, vec!["again".to_owned(), "stop".to_owned()])],
        "serenity read the buttons from the gateway echo"
    );

    // A content edit without `components` keeps them.
    let mut message = sent;
    message
        .edit(
            &http,
            EditMessage::new()
                .content("Pick one (edited)")
                .allowed_mentions(no_mentions()),
        )
        .await
        .expect("edited");
    assert_eq!(rows_of(&message), ["again", "stop"]);
    assert_eq!(fake.message(id).unwrap().button_ids(), ["again", "stop"]);
    // `components(vec![])` removes them.
    message
        .edit(&http, EditMessage::new().components(vec![]))
        .await
        .expect("buttons removed");
    assert!(message.components.is_empty(), "{:?}", message.components);
    let stored = fake.message(id).unwrap();
    assert!(stored.button_ids().is_empty());
    assert_eq!(stored.components, json!([]));
    assert_eq!(stored.content, "Pick one (edited)");
    let removal = fake
        .calls()
        .into_iter()
        .rfind(|call| call.method == "PATCH")
        .expect("the PATCH");
    assert_eq!(removal.body["components"], json!([]));
    assert!(removal.body.get("content").is_none());
    // The edits' echoes carry the components as they are after each edit (serenity runs each
    // event's handler in its own task, so their order is not kept).
    fake.wait_for("the echoes of both edits", |_| {
        let echoes = bot.echoes.lock().unwrap();
        (echoes.events.iter().filter(|e| e.id.get() == id).count() == 2).then_some(())
    })
    .await;
    {
        let echoes = bot.echoes.lock().unwrap();
        let mut components: Vec<Vec<String>> = echoes
            .events
            .iter()
            .map(|event| button_ids(event.components.as_deref().unwrap_or_default()))
            .collect();
        components.sort();
        assert_eq!(
            components,
            vec![Vec::new(), vec!["again".to_owned(), "stop".to_owned()]]
        );
        assert!(echoes.events.iter().all(|e| e.edited_timestamp.is_some()));
    }
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    bot.stop().await;
}

/// Components through the interaction routes, with serenity's builders: the callback's
/// message (type 4), `@original` edits (without `components`: kept; with: replaced), and
/// follow-ups created and edited with and without buttons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_messages_carry_components() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let http = fake_http(&fake);
    let id = fake.dispatch_command(
        IncomingCommand::new(CHANNEL, alice(), "poe", json!([])).in_guild(GUILD, 0),
    );
    let token = fake.interaction(id).unwrap().token;
    CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content("Answer")
            .components(buttons(&["again"]))
            .allowed_mentions(no_mentions()),
    )
    .execute(&http, (InteractionId::new(id), &token))
    .await
    .expect("answered with a button");
    let original = fake.interaction(id).unwrap().original.expect("@original");
    assert_eq!(fake.message(original).unwrap().button_ids(), ["again"]);
    let fetched = http
        .get_original_interaction_response(&token)
        .await
        .expect("GET @original");
    assert_eq!(rows_of(&fetched), ["again"]);

    // PATCH @original: content only keeps the buttons; components replace them.
    let edited = EditInteractionResponse::new()
        .content("Answer, edited")
        .allowed_mentions(no_mentions())
        .execute(&http, &token)
        .await
        .expect("@original edited");
    assert_eq!(rows_of(&edited), ["again"]);
    let edited = EditInteractionResponse::new()
        .components(buttons(&["stop", "again"]))
        .execute(&http, &token)
        .await
        .expect("@original's buttons replaced");
    assert_eq!(rows_of(&edited), ["stop", "again"]);
    let stored = fake.message(original).unwrap();
    assert_eq!(stored.content, "Answer, edited");
    assert_eq!(stored.button_ids(), ["stop", "again"]);

    // Follow-ups: created with a button, then edited without it.
    let followup = CreateInteractionResponseFollowup::new()
        .content("More")
        .components(buttons(&["more"]))
        .allowed_mentions(no_mentions())
        .execute(&http, (None, &token))
        .await
        .expect("a follow-up with a button");
    assert_eq!(rows_of(&followup), ["more"]);
    assert_eq!(fake.interaction(id).unwrap().followups, [followup.id.get()]);
    assert_eq!(
        fake.message(followup.id.get()).unwrap().button_ids(),
        ["more"]
    );
    let edited = CreateInteractionResponseFollowup::new()
        .components(vec![])
        .execute(&http, (Some(followup.id), &token))
        .await
        .expect("the follow-up's buttons removed");
    assert!(edited.components.is_empty());
    let stored = fake.message(followup.id.get()).unwrap();
    assert!(stored.button_ids().is_empty());
    assert_eq!(stored.content, "More");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// Invalid components are refused with Discord's 400 "Invalid Form Body" and the field's
/// path, on creates, edits and interaction callbacks (under `data`), and change nothing:
/// six action rows, six buttons in a row, a button outside an action row, a missing or
/// over-long custom_id, one custom_id twice, an over-long label.
#[tokio::test]
async fn invalid_components_are_refused_as_discord_refuses_them() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let http = fake_http(&fake);
    let channel = ChannelId::new(CHANNEL);
    let send = |rows: Vec<CreateActionRow>| {
        let http = &http;
        async move {
            channel
                .send_message(
                    http,
                    CreateMessage::new()
                        .content("buttons")
                        .components(rows)
                        .allowed_mentions(no_mentions()),
                )
                .await
        }
    };
    let raw = |components: serde_json::Value| {
        let http = &http;
        async move {
            let body = json!({
                "content": "buttons",
                "allowed_mentions": {"parse": []},
                "components": components,
            });
            http.send_message(channel, Vec::new(), &body).await
        }
    };
    let row = |ids: &[&str]| buttons(ids).remove(0);

    let six_rows = (0..6).map(|n| row(&[&format!("b{n}")])).collect();
    assert_eq!(
        form_error(send(six_rows).await),
        (400, "components".into(), "BASE_TYPE_MAX_LENGTH".into())
    );
    assert_eq!(
        form_error(send(vec![row(&["a", "b", "c", "d", "e", "f"])]).await),
        (
            400,
            "components.0.components".into(),
            "BASE_TYPE_BAD_LENGTH".into()
        )
    );
    let loose = json!([{"type": 2, "style": 1, "label": "Loose", "custom_id": "loose"}]);
    assert_eq!(
        form_error(raw(loose).await),
        (400, "components.0.type".into(), "UNION_TYPE_CHOICES".into())
    );
    let no_id = json!([{"type": 1, "components": [{"type": 2, "style": 1, "label": "?"}]}]);
    assert_eq!(
        form_error(raw(no_id).await),
        (
            400,
            "components.0.components.0.custom_id".into(),
            "BASE_TYPE_REQUIRED".into()
        )
    );
    let labelled = |id: &str, label: &str| CreateButton::new(id).label(label);
    let long = "x".repeat(101);
    let over_long = CreateActionRow::Buttons(vec![labelled("ok", "OK"), labelled(&long, "Long")]);
    assert_eq!(
        form_error(send(vec![over_long]).await),
        (
            400,
            "components.0.components.1.custom_id".into(),
            "BASE_TYPE_BAD_LENGTH".into()
        )
    );
    assert_eq!(
        form_error(send(vec![row(&["same"]), row(&["other", "same"])]).await),
        (
            400,
            "components.1.components.1.custom_id".into(),
            "COMPONENT_CUSTOM_ID_DUPLICATED".into()
        )
    );
    let wordy = CreateActionRow::Buttons(vec![labelled("wordy", &"w".repeat(81))]);
    assert_eq!(
        form_error(send(vec![wordy]).await),
        (
            400,
            "components.0.components.0.label".into(),
            "BASE_TYPE_MAX_LENGTH".into()
        )
    );
    assert!(fake.bot_messages(CHANNEL).is_empty(), "nothing was posted");

    // At the limits: 5 rows of 5 buttons, a 100-character custom_id.
    let full: Vec<CreateActionRow> = (0..5)
        .map(|r| {
            let ids: Vec<String> = (0..5).map(|b| format!("r{r}b{b}")).collect();
            row(&ids.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    let mut message = send(full).await.expect("25 buttons are fine");
    assert_eq!(rows_of(&message).len(), 25);
    let hundred = "y".repeat(100);
    let at_limit = CreateActionRow::Buttons(vec![labelled(&hundred, &"z".repeat(80))]);
    send(vec![at_limit])
        .await
        .expect("a 100-character custom_id and an 80-character label are fine");

    // An invalid edit changes nothing.
    let refused = message
        .edit(
            &http,
            EditMessage::new()
                .content("changed")
                .components(vec![row(&["dup", "dup"])])
                .allowed_mentions(no_mentions()),
        )
        .await;
    assert_eq!(refused.as_ref().err().and_then(status), Some(400));
    let stored = fake.message(message.id.get()).unwrap();
    assert_eq!(stored.button_ids().len(), 25);
    assert_eq!(stored.content, "buttons");

    // In an interaction callback the path is under `data`.
    let id = fake.dispatch_command(IncomingCommand::new(CHANNEL, alice(), "poe", json!([])));
    let token = fake.interaction(id).unwrap().token;
    let callback = CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content("answer")
            .components((0..6).map(|n| row(&[&format!("c{n}")])).collect())
            .allowed_mentions(no_mentions()),
    )
    .execute(&http, (InteractionId::new(id), &token))
    .await;
    match callback {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) => {
            assert_eq!(response.status_code.as_u16(), 400);
            assert_eq!(response.error.errors[0].path, "data.components");
        }
        other => panic!("expected the callback refused, got {other:?}"),
    }
    let interaction = fake.interaction(id).unwrap();
    assert!(
        interaction.ack.is_none(),
        "a refused callback answers nothing"
    );
    assert_eq!(interaction.callbacks.len(), 1);
    assert_eq!(interaction.callbacks[0].status, 400);
    let statuses: Vec<u16> = fake.violations().iter().map(|v| v.status).collect();
    assert_eq!(statuses, [400; 9], "{:?}", fake.violations());
}

/// Clicks as serenity receives them: `Interaction::Component` with the custom id, the clicked
/// message (its buttons as serenity reads them), the user, and in a guild the member's
/// permissions and roles. serenity's answers land as Discord records them: `Acknowledge` as
/// type 6 (then `@original` is the clicked message and follow-ups work), `UpdateMessage` as
/// type 7 (the clicked message changes, and its edit is echoed), an ephemeral refusal as type 4
/// with flags 64. A click on a message that does not exist reaches serenity too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_reach_serenity_and_its_answers_land_as_discord_records_them() {
    const ROLE: u64 = 700_000_000_000_000_001;
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;
    // The channel is a guild's (the fake learns it from a dispatch).
    fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "hi").in_guild(GUILD));
    let http = fake_http(&fake);
    let sent = ChannelId::new(CHANNEL)
        .send_message(
            &http,
            CreateMessage::new()
                .content("Answer")
                .components(buttons(&["ack", "refuse", "update"]))
                .allowed_mentions(no_mentions()),
        )
        .await
        .expect("a message with buttons");
    let message = fake.message(sent.id.get()).unwrap();
    assert_eq!(message.guild_id, Some(GUILD));

    // DEFERRED_UPDATE_MESSAGE, then an @original edit (the clicked message) and a follow-up.
    let ack = fake.click(
        IncomingClick::on(&message, alice(), "ack")
            .in_guild(GUILD, 8)
            .with_roles(&[ROLE]),
    );
    let Report::Clicked {
        interaction_id,
        custom_id,
        is_button,
        message_id,
        message_buttons,
        user_id,
        guild_id,
        permissions,
        roles,
        response,
        edited,
        followup,
    } = bot.next().await
    else {
        panic!("expected the click report");
    };
    assert_eq!(interaction_id, ack);
    assert_eq!(custom_id, "ack");
    assert!(is_button);
    assert_eq!(message_id, message.id);
    assert_eq!(message_buttons, ["ack", "refuse", "update"]);
    assert_eq!(user_id, alice().id);
    assert_eq!(guild_id, Some(GUILD));
    assert_eq!(permissions, Some(8));
    assert_eq!(roles, [ROLE]);
    response.expect("acknowledged");
    let (edited_id, edited_buttons) = edited.expect("edited").expect("@original edited");
    assert_eq!(edited_id, message.id, "@original is the clicked message");
    assert_eq!(edited_buttons, ["ack", "refuse", "update"], "kept");
    let followup = followup.expect("followed up").expect("a follow-up");
    let record = fake.interaction(ack).unwrap();
    assert_eq!(record.kind, 3);
    assert_eq!(record.custom_id.as_deref(), Some("ack"));
    assert_eq!(record.message_id, Some(message.id));
    let acknowledgement = record.ack.expect("acknowledged");
    assert_eq!(acknowledgement.kind, 6);
    assert!(acknowledgement.latency < Duration::from_secs(3));
    assert!(!acknowledgement.ephemeral);
    assert_eq!(record.original, Some(message.id));
    assert_eq!(record.followups, [followup]);
    assert_eq!(record.callbacks.len(), 1);
    assert_eq!(record.callbacks[0].status, 204);
    let clicked = fake.message(message.id).unwrap();
    assert_eq!(clicked.content, "Working on it");
    assert_eq!(clicked.button_ids(), ["ack", "refuse", "update"]);
    let more = fake.message(followup).unwrap();
    assert!(more.is_ephemeral());
    assert_eq!(more.button_ids(), ["cancel"]);
    assert_eq!(more.interaction_id, Some(ack));
    let callback = fake
        .calls()
        .into_iter()
        .find(|call| call.path == format!("/interactions/{ack}/{}/callback", record.token))
        .expect("the callback");
    assert_eq!(callback.body["type"], 6);

    // A refusal: type 4, ephemeral, a new message; the clicked one is untouched.
    let refusal = fake.click(IncomingClick::on(&message, bob(), "refuse").in_guild(GUILD, 0));
    let Report::Clicked {
        user_id,
        permissions,
        response,
        ..
    } = bot.next().await
    else {
        panic!("expected the click report");
    };
    assert_eq!(user_id, bob().id);
    assert_eq!(permissions, Some(0));
    response.expect("refused");
    let record = fake.interaction(refusal).unwrap();
    let acknowledgement = record.ack.expect("answered");
    assert_eq!(acknowledgement.kind, 4);
    assert!(acknowledgement.ephemeral);
    assert_eq!(acknowledgement.data["flags"], 64);
    let refused = fake.message(record.original.expect("the refusal")).unwrap();
    assert!(refused.is_ephemeral());
    assert_eq!(refused.content, "Only the asker may use these buttons");
    assert_eq!(fake.message(message.id).unwrap().content, "Working on it");

    // UPDATE_MESSAGE: the clicked message takes the update's content and buttons.
    let update = fake.click(IncomingClick::on(&message, alice(), "update").in_guild(GUILD, 8));
    let Report::Clicked {
        message_buttons,
        response,
        ..
    } = bot.next().await
    else {
        panic!("expected the click report");
    };
    assert_eq!(message_buttons, ["ack", "refuse", "update"]);
    response.expect("updated");
    let record = fake.interaction(update).unwrap();
    assert_eq!(record.ack.as_ref().unwrap().kind, 7);
    assert_eq!(record.original, Some(message.id));
    let updated = fake.message(message.id).unwrap();
    assert_eq!(updated.content, "Updated");
    assert_eq!(updated.button_ids(), ["again"]);
    let history: Vec<&str> = updated.history.iter().map(|v| v.content.as_str()).collect();
    assert_eq!(history, ["Answer", "Working on it", "Updated"]);
    fake.wait_for("the echo of the update", |_| {
        let echoes = bot.echoes.lock().unwrap();
        echoes
            .events
            .iter()
            .any(|e| e.id.get() == message.id && e.content.as_deref() == Some("Updated"))
            .then_some(())
    })
    .await;
    // A click now shows the updated message to serenity.
    fake.click(IncomingClick::on(&message, alice(), "again").in_guild(GUILD, 8));
    let Report::Clicked {
        message_buttons, ..
    } = bot.next().await
    else {
        panic!("expected the click report");
    };
    assert_eq!(message_buttons, ["again"]);

    // A click in a DM on a message the fake never held: serenity still reads it.
    let ghost = 900_000_000_000_000_077;
    let stale = fake.click(IncomingClick::new(OTHER_CHANNEL, alice(), ghost, "ghost"));
    let Report::Clicked {
        interaction_id,
        custom_id,
        message_id,
        message_buttons,
        user_id,
        guild_id,
        permissions,
        response,
        ..
    } = bot.next().await
    else {
        panic!("expected the click report");
    };
    assert_eq!(interaction_id, stale);
    assert_eq!(
        (custom_id.as_str(), message_id, user_id),
        ("ghost", ghost, alice().id)
    );
    assert!(message_buttons.is_empty());
    assert_eq!((guild_id, permissions), (None, None));
    response.expect("answered");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    bot.stop().await;
}

/// The callback rules for clicks: 6 and 7 only for component interactions (a command gets
/// 400 and stays unanswered), one callback per click, within the deadline; an update with
/// invalid components is refused and changes nothing. Every attempt is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_callbacks_follow_discords_rules() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start_with(FakeDiscordOptions {
        interaction_deadline: Duration::from_millis(300),
        ..FakeDiscordOptions::default()
    })
    .await;
    let http = fake_http(&fake);
    let answer = |id: u64, response: CreateInteractionResponse| {
        let (http, fake) = (&http, &fake);
        async move {
            let token = fake.interaction(id).unwrap().token;
            response
                .execute(http, (InteractionId::new(id), &token))
                .await
                .err()
                .as_ref()
                .and_then(status)
        }
    };
    let update = |content: &str, rows: Vec<CreateActionRow>| {
        CreateInteractionResponse::UpdateMessage(
            CreateInteractionResponseMessage::new()
                .content(content)
                .components(rows)
                .allowed_mentions(no_mentions()),
        )
    };

    // A command cannot take 6 or 7; it can still be deferred afterwards.
    let command = fake.dispatch_command(IncomingCommand::new(CHANNEL, alice(), "poe", json!([])));
    assert_eq!(
        answer(command, CreateInteractionResponse::Acknowledge).await,
        Some(400)
    );
    assert_eq!(answer(command, update("x", vec![])).await, Some(400));
    let defer = CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
    assert_eq!(answer(command, defer).await, None);
    let record = fake.interaction(command).unwrap();
    let attempts: Vec<(u64, u16)> = record
        .callbacks
        .iter()
        .map(|c| (c.kind, c.status))
        .collect();
    assert_eq!(attempts, [(6, 400), (7, 400), (5, 204)]);
    assert_eq!(record.ack.unwrap().kind, 5);

    let message = ChannelId::new(CHANNEL)
        .send_message(
            &http,
            CreateMessage::new()
                .content("Answer")
                .components(buttons(&["retry"]))
                .allowed_mentions(no_mentions()),
        )
        .await
        .expect("a message with a button");
    let message = fake.message(message.id.get()).unwrap();

    // Invalid components in an update: refused, nothing changes, the click is still open.
    let click = fake.click(IncomingClick::on(&message, alice(), "retry"));
    let invalid = update(
        "changed",
        vec![buttons(&["a", "b", "c", "d", "e", "f"]).remove(0)],
    );
    assert_eq!(answer(click, invalid).await, Some(400));
    let unchanged = fake.message(message.id).unwrap();
    assert_eq!(
        (unchanged.content.as_str(), unchanged.button_ids()),
        ("Answer", vec!["retry".to_owned()])
    );
    // Twice: the second is refused.
    assert_eq!(
        answer(click, CreateInteractionResponse::Acknowledge).await,
        None
    );
    assert_eq!(answer(click, update("again", vec![])).await, Some(400));
    let record = fake.interaction(click).unwrap();
    let attempts: Vec<(u64, u16)> = record
        .callbacks
        .iter()
        .map(|c| (c.kind, c.status))
        .collect();
    assert_eq!(attempts, [(7, 400), (6, 204), (7, 400)]);
    assert_eq!(record.ack.unwrap().kind, 6);
    assert_eq!(fake.message(message.id).unwrap().content, "Answer");

    // Too late: 404, no acknowledgement, the message unchanged.
    let late = fake.click(IncomingClick::on(&message, alice(), "retry"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(answer(late, update("late", vec![])).await, Some(404));
    let record = fake.interaction(late).unwrap();
    assert!(record.ack.is_none());
    assert_eq!(record.callbacks[0].status, 404);
    assert!(record.callbacks[0].latency > Duration::from_millis(300));
    assert_eq!(fake.message(message.id).unwrap().button_ids(), ["retry"]);

    let violations = fake.violations();
    let statuses: Vec<u16> = violations.iter().map(|v| v.status).collect();
    assert_eq!(statuses, [400, 400, 400, 400, 404], "{violations:?}");
    assert!(violations[0].reason.contains("component"), "{violations:?}");
    assert!(violations[2].reason.contains("data"), "{violations:?}");
    assert!(
        violations[3].reason.contains("already been acknowledged"),
        "{violations:?}"
    );
}

/// A user's edit reaches serenity's `message_update` as Discord sends it: the whole message
/// with the new content, `edited_timestamp`, author, guild, member and the mentions of the new
/// content. A link unfurl is the partial update without content, author or
/// `edited_timestamp`, so a bot can tell it from an edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_edits_and_link_unfurls_arrive_as_message_update() {
    const ROLE: u64 = 700_000_000_000_000_002;
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect(&fake).await;
    bot.ready().await;
    let id = fake.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), "see https://example.com/page")
            .in_guild(GUILD)
            .with_roles(&[ROLE]),
    );
    fake.wait_for("the message", |_| (bot.times_seen(id) == 1).then_some(()))
        .await;
    let events_for = |bot: &Bot| -> Vec<MessageUpdateEvent> {
        let echoes = bot.echoes.lock().unwrap();
        echoes
            .events
            .iter()
            .filter(|e| e.id.get() == id)
            .cloned()
            .collect()
    };

    let new_content = format!("{} what about https://example.com/other?", fake.mention());
    assert!(fake.edit_user_message(id, &new_content));
    let event = fake
        .wait_for("the edit", |_| events_for(&bot).first().cloned())
        .await;
    assert_eq!(event.channel_id.get(), CHANNEL);
    assert_eq!(event.guild_id.map(|g| g.get()), Some(GUILD));
    assert_eq!(event.content.as_deref(), Some(new_content.as_str()));
    assert_eq!(event.author.as_ref().map(|a| a.id.get()), Some(alice().id));
    assert_eq!(event.kind, Some(MessageType::Regular));
    let edited = event.edited_timestamp.expect("edited_timestamp set");
    let created = event.timestamp.expect("timestamp");
    assert!(edited.unix_timestamp() >= created.unix_timestamp());
    let mentions: Vec<u64> = event
        .mentions
        .as_ref()
        .expect("mentions")
        .iter()
        .map(|u| u.id.get())
        .collect();
    assert_eq!(mentions, [fake.bot_user().id]);
    let member = event.member.clone().flatten().expect("the member");
    assert_eq!(
        member.roles.iter().map(|r| r.get()).collect::<Vec<_>>(),
        [ROLE]
    );
    assert_eq!(event.embeds.as_ref().map(Vec::len), Some(0));
    let stored = fake.message(id).unwrap();
    assert_eq!(stored.content, new_content);
    assert_eq!(stored.edits(), 1);
    assert!(stored.edited_at.is_some());
    assert_eq!(stored.mentions, [fake.bot_user()]);
    // The edit did not arrive as a new message.
    assert_eq!(bot.times_seen(id), 1);

    // The unfurl: the same message id, embeds, and no content, author or edited_timestamp.
    assert!(fake.dispatch_embed_update(id));
    let unfurl = fake
        .wait_for("the unfurl", |_| events_for(&bot).get(1).cloned())
        .await;
    assert_eq!(unfurl.content, None);
    assert_eq!(unfurl.edited_timestamp, None);
    assert!(unfurl.author.is_none());
    assert_eq!(unfurl.guild_id.map(|g| g.get()), Some(GUILD));
    let embeds = unfurl.embeds.expect("embeds");
    assert_eq!(embeds.len(), 1);
    assert_eq!(embeds[0].url.as_deref(), Some("https://example.com/other"));
    let fetched = fake_http(&fake)
        .get_message(ChannelId::new(CHANNEL), MessageId::new(id))
        .await
        .expect("GET the message");
    assert_eq!(fetched.embeds.len(), 1, "the embed stays on the message");
    assert_eq!(
        fetched.content, new_content,
        "and the content did not change"
    );

    // What cannot be edited or unfurled: nothing is dispatched.
    let plain =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "no link").in_guild(GUILD));
    assert!(!fake.dispatch_embed_update(plain));
    assert!(!fake.edit_user_message(900_000_000_000_000_088, "nope"));
    let own = fake_http(&fake)
        .send_message(
            ChannelId::new(CHANNEL),
            Vec::new(),
            &json!({"content": "mine", "allowed_mentions": {"parse": []}}),
        )
        .await
        .expect("a bot message");
    assert!(!fake.edit_user_message(own.id.get(), "not the bot's to edit as a user"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events_for(&bot).len(), 2);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    bot.stop().await;
}

/// MESSAGE_UPDATE follows the intents as MESSAGE_CREATE does: without MESSAGE_CONTENT, a guild
/// edit that does not mention the bot arrives with empty content, one that mentions it and a
/// DM edit keep theirs; an unfurl stays partial (no content added) and loses its embeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_updates_follow_the_identify_intents() {
    poe_relay::tls::install_crypto_provider();
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::connect_with(
        &fake,
        GatewayIntents::GUILD_MESSAGES | GatewayIntents::DIRECT_MESSAGES,
    )
    .await;
    bot.ready().await;
    let plain =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "secret").in_guild(GUILD));
    let mentioned =
        fake.dispatch_message(IncomingMessage::new(CHANNEL, alice(), "hi").in_guild(GUILD));
    let direct = fake.dispatch_message(IncomingMessage::new(OTHER_CHANNEL, alice(), "dm"));
    let mention = format!("{} now", fake.mention());
    assert!(fake.edit_user_message(plain, "still secret https://example.com"));
    assert!(fake.edit_user_message(mentioned, &mention));
    assert!(fake.edit_user_message(direct, "dm, edited"));
    assert!(fake.dispatch_embed_update(plain));
    fake.wait_for("four updates", |_| {
        (bot.echoes.lock().unwrap().events.len() == 4).then_some(())
    })
    .await;
    let events = bot.echoes.lock().unwrap().events.clone();
    let edit_of = |id: u64| {
        events
            .iter()
            .find(|e| e.id.get() == id && e.edited_timestamp.is_some())
            .and_then(|e| e.content.clone())
    };
    assert_eq!(edit_of(plain).as_deref(), Some(""));
    assert_eq!(edit_of(mentioned), Some(mention));
    assert_eq!(edit_of(direct).as_deref(), Some("dm, edited"));
    let unfurl = events
        .iter()
        .find(|e| e.id.get() == plain && e.edited_timestamp.is_none())
        .expect("the unfurl");
    assert_eq!(unfurl.content, None);
    assert_eq!(unfurl.embeds.as_ref().map(Vec::len), Some(0));
    bot.stop().await;
}
