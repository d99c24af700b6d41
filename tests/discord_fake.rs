//! The fake Discord (tests/support/fake_discord.rs) proven against the real serenity 0.12.5
//! client: a minimal serenity bot, written here, connects through the fake (REST proxy with
//! serenity's rate limiter off, gateway websocket), and every test checks both sides: what
//! serenity saw and what the fake recorded. Only 127.0.0.1 is contacted.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use serenity::all::{
    ApplicationId, Channel, ChannelId, ChannelType, ClientBuilder, Command, CommandDataOptionValue,
    CommandOptionType, Context, CreateAllowedMentions, CreateAttachment, CreateCommand,
    CreateCommandOption, CreateInteractionResponse, CreateInteractionResponseMessage,
    CreateMessage, EditInteractionResponse, EditMessage, EventHandler, GatewayIntents, Http,
    HttpBuilder, HttpError, Interaction, InteractionId, Message, MessageUpdateEvent,
    PartialChannel, Ready, ShardManager,
};
use tokio::sync::mpsc;

use support::fake_discord::{
    FAKE_CATEGORY, FakeDiscord, FakeDiscordOptions, FakeUser, IncomingCommand, IncomingMessage,
};

const GUILD: u64 = 900_000_000_000_000_001;
const CHANNEL: u64 = 900_000_000_000_000_002;
const OTHER_CHANNEL: u64 = 900_000_000_000_000_003;

fn alice() -> FakeUser {
    FakeUser::new(800_000_000_000_000_001, "alice")
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
            self.echoes.lock().unwrap().created.push((
                msg.id.get(),
                msg.content.clone(),
                reference,
            ));
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
        self.echoes
            .lock()
            .unwrap()
            .updated
            .push((event.id.get(), event.content));
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let Interaction::Command(command) = interaction else {
            return;
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
