//! The Matrix adapter end to end: a real Synapse on 127.0.0.1, the real `poe-relay` binary
//! logged in as the bot, the fake Poe, and people using real matrix-sdk clients.

mod support;

use std::time::Duration;

use matrix_sdk::attachment::AttachmentConfig;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::relation::Thread;
use matrix_sdk::ruma::events::room::message::{
    ImageMessageEventContent, Relation, RoomMessageEventContent, TextMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use matrix_sdk_crypto::CollectStrategy;
use poe_relay::fake_poe::{FakePoe, Scenario};
use reqwest::Method;
use serde_json::json;

use support::KEY;
use support::bot_process::BotProcess;
use support::matrix_human::{Human, Shown};
use support::matrix_proxy::MatrixProxy;
use support::synapse::{self, Synapse, SynapseOptions};

const WAIT: Duration = Duration::from_secs(60);
const BOT: &str = "poebot";
const BOT_PASSWORD: &str = "bot-password-123";

/// A homeserver, the fake Poe, the bot, and Alice (who creates rooms, so she is an admin by
/// power level there).
struct World {
    synapse: Synapse,
    fake: FakePoe,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    bot: Option<BotProcess>,
    bot_id: OwnedUserId,
    /// The bot's account as registered (with the device of its registration login).
    bot_account: synapse::RegisteredUser,
    /// The bot's login secret: its password, or an access token.
    login: (&'static str, String),
    alice: Human,
    /// Between the bot and Synapse, when the setup asked for one.
    bot_proxy: Option<MatrixProxy>,
}

/// How a world differs from the usual one.
struct Setup {
    options: SynapseOptions,
    /// More TOML sections (not `[poe]`, `[chat]`, `[store]`, `[matrix]` or `[log]`).
    toml: String,
    /// Lines for the `[matrix]` section: who may invite the bot, who is an admin.
    matrix: String,
    /// `POE_RELAY__…` overrides for the bot.
    env: Vec<(String, String)>,
    /// Log in with an access token instead of the password.
    access_token: bool,
    /// The bot reaches Synapse through a [`MatrixProxy`].
    bot_through_proxy: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            options: SynapseOptions::default(),
            toml: String::new(),
            matrix: r#"allowed_servers = ["localhost"]"#.into(),
            env: Vec::new(),
            access_token: false,
            bot_through_proxy: false,
        }
    }
}

impl World {
    async fn start(options: SynapseOptions, extra_toml: &str) -> World {
        Self::start_with(Setup {
            options,
            toml: extra_toml.into(),
            ..Setup::default()
        })
        .await
    }

    async fn start_with(setup: Setup) -> World {
        // With Synapse's limits relaxed (as after `override_ratelimit`), the bot may send
        // faster too, as an operator would set it; with the defaults it keeps its own.
        let send_rate = if setup.options.default_rate_limits {
            ""
        } else {
            "max_sends_per_second = 20\nsend_burst = 20"
        };
        let synapse = synapse::start(setup.options).await;
        let bot = synapse.register(BOT, BOT_PASSWORD, false).await;
        synapse.register("alice", "alice-password", false).await;
        let fake = FakePoe::start(KEY).await.expect("fake Poe");
        let bot_proxy = match setup.bot_through_proxy {
            true => Some(MatrixProxy::start(&synapse.base_url).await),
            false => None,
        };
        let bot_homeserver = bot_proxy
            .as_ref()
            .map_or(synapse.base_url.clone(), |proxy| proxy.base_url.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("poe-relay.toml");
        let toml = format!(
            r#"
[poe]
base_url = "{base}"
upload_url = "{upload}"
initial_backoff_ms = 10
max_backoff_ms = 100

[chat]
default_model = "echo"

[store]
path = "{store}"

[matrix]
enabled = true
homeserver = "{homeserver}"
user_id = "{bot}"
data_dir = "{data}"
{send_rate}
{matrix}

[log]
filter = "info,poe_relay=debug"
{extra_toml}
"#,
            base = fake.base_url(),
            upload = fake.upload_url(),
            store = dir.path().join("store").display(),
            homeserver = bot_homeserver,
            bot = bot.user_id,
            data = dir.path().join("matrix").display(),
            matrix = setup.matrix,
            extra_toml = setup.toml,
        );
        std::fs::write(&config, toml).expect("write the bot's config");
        let alice = Human::login(&synapse.base_url, "alice", "alice-password").await;
        let login = if setup.access_token {
            ("MATRIX_ACCESS_TOKEN", bot.access_token.clone())
        } else {
            ("MATRIX_PASSWORD", BOT_PASSWORD.to_owned())
        };
        let mut world = World {
            bot_id: UserId::parse(&bot.user_id).expect("bot id"),
            bot_account: bot,
            synapse,
            fake,
            dir,
            config,
            bot: None,
            login,
            alice,
            bot_proxy,
        };
        world.start_bot(1, &setup.env).await;
        world
    }

    /// Starts the bot and waits for its `nth` start to be logged.
    async fn start_bot(&mut self, nth: usize, env: &[(String, String)]) {
        let mut vars: Vec<(&str, &str)> = vec![("POE_API_KEY", KEY), (self.login.0, &self.login.1)];
        vars.extend(
            env.iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let mut bot = BotProcess::start(&self.config, &vars, &self.dir.path().join("bot.log"));
        bot.wait_for_log("poe-relay started", nth, WAIT).await;
        self.bot = Some(bot);
    }

    /// Poe was asked exactly one question, ending with `question`.
    fn assert_poe_was_asked_once(&self, question: &str) {
        let contexts = self.contexts();
        assert_eq!(contexts.len(), 1, "{contexts:#?}");
        assert_eq!(contexts[0].last().map(String::as_str), Some(question));
    }

    /// `human` asks the bot about ownership in `room` and waits until the whole
    /// [`ANSWER`] shows; returns the question's event and everything the bot showed.
    async fn ask_about_ownership(
        &self,
        human: &Human,
        room: &RoomId,
    ) -> (OwnedEventId, Vec<Shown>) {
        let trigger = human
            .mention(room, &self.bot_id, "poebot: explain ownership")
            .await;
        let shown = human
            .wait_for(room, &self.bot_id, WAIT, |shown| {
                shown.iter().any(|message| message.text == ANSWER)
            })
            .await;
        (trigger, shown)
    }

    fn bot(&mut self) -> &mut BotProcess {
        self.bot.as_mut().expect("the bot is running")
    }

    async fn human(&self, name: &str) -> Human {
        let password = format!("{name}-password");
        self.synapse.register(name, &password, false).await;
        Human::login(&self.synapse.base_url, name, &password).await
    }

    /// A room Alice creates with the bot (and `others`) in it, everyone joined.
    async fn room(&self, encrypted: bool, others: &[&Human]) -> matrix_sdk::ruma::OwnedRoomId {
        let mut invite: Vec<&UserId> = vec![&self.bot_id];
        invite.extend(others.iter().map(|human| &*human.user_id));
        let room = self.alice.create_room(encrypted, &invite).await;
        let room_id = room.room_id().to_owned();
        self.alice.wait_joined(&room_id, &self.bot_id).await;
        for other in others {
            self.alice.wait_joined(&room_id, &other.user_id).await;
            other.wait_joined(&room_id, &self.bot_id).await;
        }
        room_id
    }

    /// The query texts of every chat request the fake received for `echo`.
    fn contexts(&self) -> Vec<Vec<String>> {
        self.fake
            .chat_requests("echo")
            .iter()
            .map(|request| {
                request.body["query"]
                    .as_array()
                    .map(|query| {
                        query
                            .iter()
                            .map(|message| message["content"].as_str().unwrap_or("").to_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn streamed(text: &str, chunk_chars: usize, interval_ms: u64) -> Scenario {
    Scenario::Text {
        text: text.to_owned(),
        chunk_chars,
        interval: Duration::from_millis(interval_ms),
    }
}

/// The answer in the bot's messages that reply to `trigger` (and those after it).
fn answer_to<'a>(shown: &'a [Shown], trigger: &str) -> Vec<&'a Shown> {
    let Some(first) = shown.iter().position(|message| {
        message.original["m.relates_to"]["m.in_reply_to"]["event_id"] == trigger
    }) else {
        return Vec::new();
    };
    shown[first..].iter().collect()
}

fn assert_mentions_nobody(message: &Shown) {
    assert_eq!(
        message.original["m.mentions"],
        json!({}),
        "{:#}",
        message.original
    );
    for edit in &message.edits {
        assert_eq!(edit["m.mentions"], json!({}), "{edit:#}");
        assert_eq!(edit["m.new_content"]["m.mentions"], json!({}), "{edit:#}");
    }
}

const ANSWER: &str = "Rust's **ownership** rules, in short:\n\n\
1. Each value has one owner.\n\
2. When the owner goes out of scope, the value is dropped.\n\
3. You can borrow a value, mutably once or immutably many times.\n\n\
That is what lets Rust free memory without a garbage collector, and it is checked at \
compile time, so none of this costs anything when the program runs.";

async fn a_mention_gets_a_streamed_answer(encrypted: bool) {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", streamed(ANSWER, 8, 100));
    let bob = world.human("bob").await;
    let room = world.room(encrypted, &[&bob]).await;
    // Rooms are created as version 12, whose ids have no server part: the bot must answer
    // there without reading anything into the id.
    assert!(
        !room.as_str().contains(':'),
        "expected a room version 12 id, got {room}"
    );

    let (trigger, shown) = world.ask_about_ownership(&bob, &room).await;
    let answer = answer_to(&shown, trigger.as_str());
    assert_eq!(answer.len(), 1, "{shown:#?}");
    let message = answer[0];
    assert_eq!(message.text, ANSWER);
    assert!(
        message.edits.len() >= 3,
        "the answer should stream in several edits, got {}",
        message.edits.len()
    );
    assert_mentions_nobody(message);
    assert_eq!(message.encrypted, encrypted);
    assert!(
        bob.saw_typing(&room, &world.bot_id),
        "the bot never showed typing"
    );
    let html = message.newest["formatted_body"].as_str().unwrap_or("");
    assert!(html.contains("<strong>ownership</strong>"), "{html}");
    assert!(html.contains("<ol>"), "{html}");
    // Poe got the question without the bot's name, from Bob.
    world.assert_poe_was_asked_once("bob: explain ownership");
    // Alice's client sees the same final text.
    world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            shown.iter().any(|message| message.text == ANSWER)
        })
        .await;
}

#[tokio::test]
async fn a_mention_gets_a_streamed_answer_in_a_plain_room() {
    a_mention_gets_a_streamed_answer(false).await;
}

#[tokio::test]
async fn a_mention_gets_a_streamed_answer_in_an_encrypted_room() {
    a_mention_gets_a_streamed_answer(true).await;
}

/// The key that opens a message can reach the bot after the message (a slow federation
/// link, a client that shares lazily): the message waits for it and is answered then.
#[tokio::test]
async fn a_message_whose_key_comes_late_is_answered_when_it_comes() {
    let mut world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", streamed(ANSWER, 40, 20));
    let proxy = MatrixProxy::start(&world.synapse.base_url).await;
    world.synapse.register("bob", "bob-password", false).await;
    let bob = Human::login(&proxy.base_url, "bob", "bob-password").await;
    let room = world.room(true, &[&bob]).await;

    proxy.hold();
    let trigger = bob
        .mention(&room, &world.bot_id, "poebot: explain ownership")
        .await;
    assert!(proxy.held() > 0, "Bob's client shared no room key");
    world
        .bot()
        .wait_for_log("cannot decrypt a message yet", 1, WAIT)
        .await;
    // Give the bot a moment in which an answer without the key would show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        world.contexts().is_empty(),
        "Poe was asked without the question"
    );

    proxy.release().await;
    let shown = bob
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            shown.iter().any(|message| message.text == ANSWER)
        })
        .await;
    assert_eq!(answer_to(&shown, trigger.as_str()).len(), 1, "{shown:#?}");
    world.assert_poe_was_asked_once("bob: explain ownership");
    world
        .bot()
        .wait_for_log("decrypted a message once its key arrived", 1, WAIT)
        .await;
}

/// Some clients share room keys only with devices their owner has cross-signed (MSC4153,
/// "exclude insecure devices"). The bot signs its own device, so they can talk to it.
#[tokio::test]
async fn a_client_that_shares_keys_only_with_signed_devices_is_answered() {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", streamed(ANSWER, 40, 20));
    world.synapse.register("bob", "bob-password", false).await;
    let bob = Human::login_careful(
        &world.synapse.base_url,
        "bob",
        "bob-password",
        CollectStrategy::IdentityBasedStrategy,
    )
    .await;
    let room = world.room(true, &[&bob]).await;
    // The bot signs its device just after logging in; Bob's client learns of it from the
    // homeserver, as any client would.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let _ = bob
            .client
            .encryption()
            .request_user_identity(&world.bot_id)
            .await;
        let devices = bob
            .client
            .encryption()
            .get_user_devices(&world.bot_id)
            .await
            .expect("the bot's devices");
        if devices
            .devices()
            .any(|device| device.is_cross_signed_by_owner())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bot's device is not cross-signed by its owner"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (trigger, shown) = world.ask_about_ownership(&bob, &room).await;
    assert_eq!(answer_to(&shown, trigger.as_str()).len(), 1, "{shown:#?}");
    assert!(answer_to(&shown, trigger.as_str())[0].encrypted);
}

/// A proxy in front of the homeserver can pass a message on and still answer the bot with
/// an error (a 504 when the homeserver is slow). The retry must not post the answer twice.
#[tokio::test]
async fn a_send_that_failed_after_the_homeserver_took_it_is_not_posted_twice() {
    let world = World::start_with(Setup {
        bot_through_proxy: true,
        ..Setup::default()
    })
    .await;
    world.fake.script("echo", streamed(ANSWER, 8, 100));
    let bob = world.human("bob").await;
    let room = world.room(false, &[&bob]).await;
    let proxy = world.bot_proxy.as_ref().expect("the bot's proxy");

    proxy.lose_next_answer();
    let (trigger, shown) = world.ask_about_ownership(&bob, &room).await;
    assert_eq!(
        proxy.lost_answers(),
        1,
        "the bot's first send was not disturbed"
    );
    let answer = answer_to(&shown, trigger.as_str());
    assert_eq!(answer.len(), 1, "the answer was posted twice: {shown:#?}");
    assert_eq!(answer[0].text, ANSWER);
}

/// Who may run what (the README's table), row by row: Carol, the bot's configured admin
/// (power level 0 in the room); Alice, who created the room (power level 100) and is no admin
/// of the bot; Bob, a member. A refusal says which right is missing.
#[tokio::test]
async fn every_command_is_run_or_refused_by_the_right_it_needs() {
    let world = World::start_with(Setup {
        matrix: "allowed_servers = [\"localhost\"]\nadmins = [\"@carol:localhost\"]".into(),
        ..Setup::default()
    })
    .await;
    world.fake.set_balance(123_456);
    world.fake.script("echo", Scenario::text("Four."));
    let bob = world.human("bob").await;
    let carol = world.human("carol").await;
    let room = world.room(false, &[&bob, &carol]).await;
    const ROOM: &str = "Only admins of this room or server";
    const BOT: &str = "Only the bot's own admins";
    // (command, who may: [Carol, Alice, Bob], what a refusal names, what an answer shows)
    let rows: [(&str, [bool; 3], &str, &str); 14] = [
        ("!poe help", [true, true, true], "", "Poe commands"),
        ("!poe usage", [true, true, true], "", "You have used"),
        ("!poe usage here", [true, true, false], ROOM, "Spent here"),
        ("!poe models", [true, true, true], "", "models"),
        ("!poe model", [true, true, true], "", "echo"),
        ("!poe model echo", [true, true, false], ROOM, "echo"),
        ("!poe prompt", [true, true, true], "", "system prompt"),
        (
            "!poe prompt Be brief.",
            [true, true, false],
            ROOM,
            "system prompt is set",
        ),
        ("!poe prompt clear", [true, true, false], ROOM, "cleared"),
        ("!poe reset", [true, true, true], "", "starts fresh"),
        ("!poe two plus two?", [true, true, true], "", "Four."),
        (
            "!poe balance",
            [true, false, false],
            BOT,
            "**Poe balance:** 123",
        ),
        (
            "/POE balance",
            [true, false, false],
            BOT,
            "**Poe balance:** 123",
        ),
        (
            "!poe budget @bob:localhost 5000",
            [true, false, false],
            BOT,
            "5000",
        ),
    ];
    let people = [&carol, &world.alice, &bob];
    for (command, allowed, missing, shows) in rows {
        for (person, may) in people.iter().zip(allowed) {
            let asked = person.say(&room, command).await;
            // A question's answer streams in; a command's reply comes whole.
            let streamed = may && shows == "Four.";
            let shown = person
                .wait_for(&room, &world.bot_id, WAIT, |shown| {
                    answer_to(shown, asked.as_str())
                        .first()
                        .is_some_and(|reply| {
                            !reply.text.is_empty() && (!streamed || reply.text == shows)
                        })
                })
                .await;
            let reply = answer_to(&shown, asked.as_str())[0];
            let who = person.user_id.localpart();
            if may {
                assert!(
                    reply.text.contains(shows),
                    "{who} ran `{command}`: {}",
                    reply.text
                );
                assert!(
                    !reply.text.starts_with("Only"),
                    "{who} was refused `{command}`"
                );
            } else {
                assert!(
                    reply.text.starts_with(missing),
                    "{who} ran `{command}`: {}",
                    reply.text
                );
                assert!(!reply.text.contains("Poe balance"), "{}", reply.text);
            }
            assert_mentions_nobody(reply);
        }
    }
    // Only the questions went to Poe: three of them, one each.
    assert_eq!(world.contexts().len(), 3, "{:#?}", world.contexts());
}

#[tokio::test]
async fn a_user_over_budget_is_told_and_poe_is_not_asked() {
    // Every request to an unpriced model reserves 1,000 points; Bob's day allows 500.
    let world = World::start(
        SynapseOptions::default(),
        "[budget]\ndefault_points = 500\n",
    )
    .await;
    let bob = world.human("bob").await;
    let room = world.room(false, &[&bob]).await;

    let asked = bob.mention(&room, &world.bot_id, "poebot: hello?").await;
    let shown = bob
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            !answer_to(shown, asked.as_str()).is_empty()
        })
        .await;
    let reply = answer_to(&shown, asked.as_str())[0];
    assert!(
        reply.text.contains("of your 500 points") && reply.text.contains("Nothing was sent to Poe"),
        "{}",
        reply.text
    );
    assert!(world.fake.chat_requests("echo").is_empty());
}

#[tokio::test]
async fn follow_ups_carry_the_history_and_reset_drops_it() {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", Scenario::Echo);
    // A one-to-one room: no mention needed.
    let room = world.room(false, &[]).await;
    let alice = &world.alice;

    let first = alice.say(&room, "my name is Zed").await;
    let second_wait = |trigger: String| {
        move |shown: &[Shown]| {
            answer_to(shown, &trigger)
                .first()
                .is_some_and(|message| !message.text.is_empty())
        }
    };
    alice
        .wait_for(&room, &world.bot_id, WAIT, second_wait(first.to_string()))
        .await;
    wait_for_turns(&world, 1).await;
    let second = alice.say(&room, "what is my name?").await;
    alice
        .wait_for(&room, &world.bot_id, WAIT, second_wait(second.to_string()))
        .await;
    wait_for_turns(&world, 2).await;
    let contexts = world.contexts();
    assert_eq!(
        contexts[1],
        vec!["my name is Zed", "my name is Zed", "what is my name?"],
        "the second question carries the first turn and the answer"
    );

    let reset = alice.say(&room, "!poe reset").await;
    alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            !answer_to(shown, reset.as_str()).is_empty()
        })
        .await;
    let third = alice.say(&room, "who am I?").await;
    alice
        .wait_for(&room, &world.bot_id, WAIT, second_wait(third.to_string()))
        .await;
    wait_for_turns(&world, 3).await;
    assert_eq!(world.contexts()[2], vec!["who am I?"]);
}

async fn wait_for_turns(world: &World, requests: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while world.fake.chat_requests("echo").len() < requests {
        assert!(tokio::time::Instant::now() < deadline, "Poe was not asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_long_answer_arrives_split_with_code_fences_intact() {
    let world = World::start(SynapseOptions::default(), "").await;
    let code: String = (0..260)
        .map(|line| format!("    let value_{line} = compute({line}); // step {line}\n"))
        .collect();
    let prose = "This paragraph explains the code in some detail. ".repeat(60);
    let answer = format!("{prose}\n\n```rust\n{code}```\n\n{prose}");
    assert!(answer.len() > 16_200, "{}", answer.len());
    world.fake.script("echo", streamed(&answer, 400, 20));
    let room = world.room(false, &[]).await;
    let asked = world.alice.say(&room, "explain").await;
    let shown = world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            let parts = answer_to(shown, asked.as_str());
            parts
                .last()
                .is_some_and(|last| last.text.trim_end().ends_with("some detail."))
                && parts.iter().map(|part| part.text.len()).sum::<usize>() >= answer.len()
        })
        .await;
    let parts = answer_to(&shown, asked.as_str());
    assert!(parts.len() >= 3, "{} parts", parts.len());
    let expected = poe_relay::core::render::split::split(
        &answer,
        poe_relay::platform::matrix::outbound::MAX_MESSAGE_BYTES,
        poe_relay::core::render::split::LengthUnit::Utf8Bytes,
    );
    assert_eq!(parts.len(), expected.len());
    for (part, expected) in parts.iter().zip(&expected) {
        assert_eq!(part.text, expected.render());
        assert_eq!(part.text.matches("```").count() % 2, 0, "{}", part.text);
        assert_mentions_nobody(part);
    }
    // Only the first part replies to the question; the rest follow it.
    assert!(
        parts[1..]
            .iter()
            .all(|part| part.original.get("m.relates_to").is_none())
    );
    // The code block was cut and reopened with its language, so clients highlight both.
    assert!(
        parts
            .iter()
            .skip(1)
            .any(|part| part.text.starts_with("```rust\n")),
        "{:#?}",
        parts
            .iter()
            .map(|p| &p.text[..40.min(p.text.len())])
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_image_reaches_poe_as_an_attachment() {
    let world = World::start_with(Setup {
        env: vec![(
            "POE_RELAY__CHAT__MAX_ATTACHMENT_BYTES".into(),
            "4000".into(),
        )],
        ..Setup::default()
    })
    .await;
    world.fake.script("echo", Scenario::text("A red square."));
    let bob = world.human("bob").await;
    let room = world.room(true, &[&bob]).await;
    let image: Vec<u8> = b"\x89PNG\r\n\x1a\n-this-is-a-test-image-".repeat(40);

    // The image first, then a question that replies to it.
    let sent = bob
        .room(&room)
        .send_attachment(
            "square.png",
            &"image/png".parse().unwrap(),
            image.clone(),
            AttachmentConfig::new(),
        )
        .await
        .expect("upload the image");
    let image_event = sent.event_id;
    let mut question =
        matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(
            "poebot: what is in this picture?",
        )
        .add_mentions(matrix_sdk::ruma::events::Mentions::with_user_ids([world
            .bot_id
            .clone()]));
    question.relates_to = Some(matrix_sdk::ruma::events::room::message::Relation::Reply(
        matrix_sdk::ruma::events::relation::Reply::new(
            matrix_sdk::ruma::events::relation::InReplyTo::new(image_event.clone()),
        ),
    ));
    let asked = bob.send(&room, question).await;
    let shown = bob
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, asked.as_str())
                .first()
                .is_some_and(|message| message.text == "A red square.")
        })
        .await;
    assert!(answer_to(&shown, asked.as_str())[0].encrypted);
    let uploads = world.fake.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].bytes, image, "the decrypted image reached Poe");
    assert_eq!(uploads[0].name, "square.png");
    let request = &world.fake.chat_requests("echo")[0];
    let last = request.body["query"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "bob: what is in this picture?");
    assert_eq!(last["attachments"][0]["content_type"], "image/png");

    // An image with a caption in a one-to-one room is a question on its own; an oversized
    // one is refused with the limit.
    world.fake.script("echo", Scenario::text("Still a square."));
    let direct = world.room(false, &[]).await;
    let caption = TextMessageEventContent::plain("and this one?");
    let sent = world
        .alice
        .room(&direct)
        .send_attachment(
            "again.png",
            &"image/png".parse().unwrap(),
            image.clone(),
            AttachmentConfig::new().caption(Some(caption)),
        )
        .await
        .expect("upload the captioned image");
    let captioned = sent.event_id;
    world
        .alice
        .wait_for(&direct, &world.bot_id, WAIT, |shown| {
            answer_to(shown, captioned.as_str())
                .first()
                .is_some_and(|message| message.text == "Still a square.")
        })
        .await;
    assert_eq!(world.fake.uploads().len(), 2);

    // Over the configured 4,000 bytes: the user is told, and Poe hears nothing.
    let caption = TextMessageEventContent::plain("and this big one?");
    let sent = world
        .alice
        .room(&direct)
        .send_attachment(
            "big.png",
            &"image/png".parse().unwrap(),
            vec![7u8; 5000],
            AttachmentConfig::new().caption(Some(caption)),
        )
        .await
        .expect("upload the big image");
    let big = sent.event_id;
    let shown = world
        .alice
        .wait_for(&direct, &world.bot_id, WAIT, |shown| {
            !answer_to(shown, big.as_str()).is_empty()
        })
        .await;
    let note = &answer_to(&shown, big.as_str())[0].text;
    assert!(
        note.contains("big.png") && note.contains("Send a smaller file"),
        "{note}"
    );
    assert_eq!(world.fake.uploads().len(), 2);
    assert_eq!(world.fake.chat_requests("echo").len(), 2);
}

#[tokio::test]
async fn an_image_bot_answer_arrives_as_an_image() {
    let world = World::start(SynapseOptions::default(), "").await;
    let picture = b"\x89PNG\r\n\x1a\n-a-cat-".repeat(64);
    support::script_image_answer(&world.fake, "echo", "cat.png", &picture).await;
    let room = world.room(true, &[]).await;
    let asked = world.alice.say(&room, "draw a cat").await;
    let shown = world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            shown
                .iter()
                .any(|message| message.original["msgtype"] == "m.image")
        })
        .await;
    let image = shown
        .iter()
        .find(|message| message.original["msgtype"] == "m.image")
        .unwrap();
    assert!(image.encrypted);
    assert_eq!(
        image.original["m.relates_to"]["m.in_reply_to"]["event_id"],
        asked.as_str()
    );
    assert_eq!(image.original["m.mentions"], json!({}));
    let content: ImageMessageEventContent =
        serde_json::from_value(image.original.clone()).expect("an m.image event");
    let downloaded = world
        .alice
        .client
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: content.source,
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .expect("download the bot's image");
    assert_eq!(downloaded, picture);
}

#[tokio::test]
async fn a_thread_is_its_own_conversation() {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", Scenario::Echo);
    let bob = world.human("bob").await;
    let room = world.room(false, &[&bob]).await;
    let alice = &world.alice;

    let main = alice
        .mention(&room, &world.bot_id, "poebot: in the room")
        .await;
    alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, main.as_str())
                .first()
                .is_some_and(|message| message.text == "alice: in the room")
        })
        .await;
    let root = alice.say(&room, "a topic for a thread").await;
    let mut in_thread = RoomMessageEventContent::text_plain("poebot: in the thread")
        .add_mentions(Mentions::with_user_ids([world.bot_id.clone()]));
    in_thread.relates_to = Some(Relation::Thread(Thread::plain(root.clone(), root.clone())));
    let asked = alice.send(&room, in_thread).await;
    let shown = alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, asked.as_str())
                .first()
                .is_some_and(|message| message.text == "alice: in the thread")
        })
        .await;
    let answer = answer_to(&shown, asked.as_str())[0];
    assert_eq!(answer.original["m.relates_to"]["rel_type"], "m.thread");
    assert_eq!(answer.original["m.relates_to"]["event_id"], root.as_str());
    // The thread's context has none of the room's turns, and the room's none of the thread's.
    let contexts = world.contexts();
    assert_eq!(contexts[1], vec!["alice: in the thread"]);
    let again = alice
        .mention(&room, &world.bot_id, "poebot: back in the room")
        .await;
    alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            !answer_to(shown, again.as_str()).is_empty()
        })
        .await;
    wait_for_turns(&world, 3).await;
    let contexts = world.contexts();
    assert_eq!(
        contexts[2],
        vec![
            "alice: in the room",
            "alice: in the room",
            "alice: back in the room"
        ]
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_reply_or_is_ignored() {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", Scenario::Echo);
    // Encrypted, so the homeserver cannot refuse the malformed events below.
    let room = world.room(true, &[]).await;
    let alice = &world.alice;
    let matrix_room = alice.room(&room);
    let first = alice.say(&room, "first question").await;
    alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, first.as_str())
                .first()
                .is_some_and(|message| message.text == "first question")
        })
        .await;
    // Malformed message events: no body, a body that is not text, an unknown msgtype, no
    // msgtype, and an edit of the first question (an edit is not a new question).
    for content in [
        json!({ "msgtype": "m.text" }),
        json!({ "msgtype": "m.text", "body": 12 }),
        json!({ "msgtype": "org.example.weird", "body": "poebot: hi" }),
        json!({ "body": "no msgtype at all" }),
        json!({
            "msgtype": "m.text", "body": "* first question, edited",
            "m.new_content": { "msgtype": "m.text", "body": "first question, edited" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": first.as_str() },
        }),
    ] {
        matrix_room
            .send_raw("m.room.message", content)
            .await
            .expect("send a malformed event");
    }
    // An encrypted event nobody can decrypt (no such session): logged, not answered.
    let garbage = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "bm90IGEgcmVhbCBjaXBoZXJ0ZXh0",
        "session_id": "no-such-session",
        "device_id": "NOSUCHDEVICE",
        "sender_key": "bm90IGEga2V5",
    });
    let token = alice.client.access_token().expect("Alice's token");
    let (status, body) = world
        .synapse
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.encrypted/garbage1",
                synapse::encode(room.as_str())
            ),
            Some(&token),
            Some(&garbage),
        )
        .await;
    assert!(status.is_success(), "{body}");
    // A message far over the bot's question limit.
    let huge = alice.say(&room, &"x".repeat(40_000)).await;
    let shown = alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            !answer_to(shown, huge.as_str()).is_empty()
        })
        .await;
    let note = &answer_to(&shown, huge.as_str())[0].text;
    assert!(note.contains("40000 characters"), "{note}");
    // Still alive, and it answered nothing else.
    let fine = alice.say(&room, "still there?").await;
    let shown = alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, fine.as_str())
                .first()
                .is_some_and(|message| message.text == "still there?")
        })
        .await;
    assert_eq!(shown.len(), 3, "{shown:#?}");
    let mut world = world;
    let log = world.bot().log();
    assert!(log.contains("cannot decrypt a message"), "{log}");
    let contexts = world.contexts();
    assert_eq!(contexts.len(), 2, "{contexts:#?}");
    assert_eq!(
        contexts[1],
        vec!["first question", "first question", "still there?"]
    );
}

/// The bot killed mid-answer and started again: the same device, no replayed answers, the
/// history kept, the interrupted answer marked as such.
#[tokio::test]
async fn a_restart_keeps_the_device_and_history_and_replays_nothing() {
    let mut world = World::start(SynapseOptions::default(), "").await;
    let admin = world
        .synapse
        .register("admin", "admin-password", true)
        .await;
    let devices_path = format!(
        "/_synapse/admin/v2/users/{}/devices",
        synapse::encode(world.bot_id.as_str())
    );
    let room = world.room(false, &[]).await;
    let slow = "word ".repeat(200);
    world.fake.script("echo", streamed(&slow, 5, 100));
    let first = world.alice.say(&room, "tell me a long story").await;
    // Wait until the answer has started streaming, then kill the bot mid-answer.
    world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, first.as_str())
                .first()
                .is_some_and(|message| !message.edits.is_empty())
        })
        .await;
    let before = bot_devices(&world, &devices_path, &admin.access_token).await;
    let session: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(world.dir.path().join("matrix/session.json"))
            .expect("the bot saved its session"),
    )
    .expect("session JSON");
    let device = session["device_id"]
        .as_str()
        .expect("a device id in the session")
        .to_owned();
    assert!(before.contains(&device), "{before:?} lacks {device}");
    world.bot().stop("KILL");

    // Said while the bot was down: older than its next start, so never answered.
    let missed = world.alice.say(&room, "are you there?").await;
    world.fake.script("echo", Scenario::Echo);
    world.start_bot(2, &[]).await;
    assert!(world.bot().log().contains("restored the saved session"));
    assert_eq!(
        bot_devices(&world, &devices_path, &admin.access_token).await,
        before,
        "the restart made a new device"
    );

    let shown = world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, first.as_str())
                .first()
                .is_some_and(|message| message.text.contains("interrupted"))
        })
        .await;
    let interrupted = answer_to(&shown, first.as_str())[0];
    assert!(
        interrupted.text.starts_with("word word"),
        "{}",
        interrupted.text
    );

    let after = world.alice.say(&room, "and now?").await;
    world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, after.as_str())
                .first()
                .is_some_and(|message| message.text == "and now?")
        })
        .await;
    // Give a replay every chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shown = world.alice.shown(&room, &world.bot_id);
    let replies_to = |event: &str| {
        shown
            .iter()
            .filter(|message| {
                message.original["m.relates_to"]["m.in_reply_to"]["event_id"] == event
            })
            .count()
    };
    assert_eq!(
        replies_to(first.as_str()),
        1,
        "the first question was answered twice"
    );
    assert_eq!(
        replies_to(missed.as_str()),
        0,
        "a message from the downtime was answered"
    );
    let contexts = world.contexts();
    assert_eq!(contexts.len(), 2, "{contexts:#?}");
    let last = contexts.last().unwrap();
    assert_eq!(
        last.first().map(String::as_str),
        Some("tell me a long story")
    );
    assert_eq!(last.last().map(String::as_str), Some("and now?"));
}

async fn bot_devices(world: &World, path: &str, token: &str) -> Vec<String> {
    let (status, body) = world
        .synapse
        .call(Method::GET, path, Some(token), None)
        .await;
    assert!(status.is_success(), "{body}");
    body["devices"]
        .as_array()
        .expect("a device list")
        .iter()
        .map(|device| device["device_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A busy homeserver with Synapse's default `rc_message` (0.2 events a second, 10 at once,
/// per account; edits and joins count): five rooms asking at once. The bot's own budget
/// (`matrix.max_sends_per_second`, 0.18 by default) shares the account's few events among the
/// rooms, first messages and final edits first, so every answer lands exact and the
/// homeserver rarely has to say "slow down". The bot talks to Synapse through a proxy that
/// counts what it sent and the 429s it got.
#[tokio::test]
async fn five_rooms_stream_at_once_under_synapses_default_limits() {
    let world = World::start_with(Setup {
        options: SynapseOptions {
            default_rate_limits: true,
        },
        bot_through_proxy: true,
        // Alice asks in all five rooms at once, more than one person may have waiting.
        env: vec![("POE_RELAY__CHAT__MAX_QUESTIONS_PER_USER".into(), "5".into())],
        ..Setup::default()
    })
    .await;
    let answer: String = (1..=40).map(|n| format!("token{n} ")).collect();
    // About 12 s of streaming each.
    world.fake.script("echo", streamed(&answer, 10, 300));
    let mut rooms = Vec::new();
    for _ in 0..5 {
        rooms.push(world.room(false, &[]).await);
    }
    let mut asked = Vec::new();
    for (index, room) in rooms.iter().enumerate() {
        asked.push(world.alice.say(room, &format!("question {index}")).await);
    }
    for (room, question) in rooms.iter().zip(&asked) {
        let shown = world
            .alice
            .wait_for(room, &world.bot_id, Duration::from_secs(240), |shown| {
                answer_to(shown, question.as_str())
                    .first()
                    .is_some_and(|message| message.text == answer)
            })
            .await;
        let answers = answer_to(&shown, question.as_str());
        assert_eq!(answers.len(), 1, "{shown:#?}");
        assert_eq!(answers[0].text, answer);
    }
    let proxy = world.bot_proxy.as_ref().expect("the proxy");
    let (events, limited) = proxy.events_and_429s();
    eprintln!(
        "five rooms under Synapse's default rc_message: the bot sent {events} events and got {limited} M_LIMIT_EXCEEDED answers"
    );
    assert!(
        events >= 15,
        "5 joins, 5 first messages, 5 final edits at least: {events}"
    );
    assert!(
        limited * 10 < events,
        "{limited} of {events} events met M_LIMIT_EXCEEDED (10% is the most allowed)"
    );
}

/// While an answer is written its events carry MSC4357's live marker (in `m.new_content`
/// too) and the final edit drops it; no intermediate edit shows a code fence left open; a
/// room whose state turns live messaging off gets no marker at all.
async fn answers_are_live_while_written(encrypted: bool) {
    let world = World::start(SynapseOptions::default(), "").await;
    let code: String = (0..30)
        .map(|line| format!("    println!(\"line {line}\");\n"))
        .collect();
    let answer = format!(
        "Here you are:\n\n```rust\nfn main() {{\n{code}}}\n```\n\nThat prints thirty lines."
    );
    world.fake.script("echo", streamed(&answer, 12, 100));
    let room = world.room(encrypted, &[]).await;
    let asked = world.alice.say(&room, "print thirty lines").await;
    let shown = world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, asked.as_str())
                .first()
                .is_some_and(|message| message.text == answer)
        })
        .await;
    let message = answer_to(&shown, asked.as_str())[0];
    assert_eq!(message.encrypted, encrypted);
    assert!(message.edits.len() >= 3, "{} edits", message.edits.len());
    let fences = |text: &str| text.lines().filter(|line| line.starts_with("```")).count();
    assert_eq!(message.original[LIVE], json!({}), "{:#}", message.original);
    assert_eq!(
        fences(message.original["body"].as_str().unwrap_or("")) % 2,
        0
    );
    let (last, intermediate) = message.edits.split_last().expect("edits");
    for edit in intermediate {
        assert_eq!(edit[LIVE], json!({}), "{edit:#}");
        assert_eq!(edit["m.new_content"][LIVE], json!({}), "{edit:#}");
        let body = edit["m.new_content"]["body"].as_str().unwrap_or("");
        assert_eq!(fences(body) % 2, 0, "an edit showed an open fence:\n{body}");
    }
    assert!(last.get(LIVE).is_none(), "{last:#}");
    assert!(last["m.new_content"].get(LIVE).is_none(), "{last:#}");
    assert_eq!(last["m.new_content"]["body"], answer.as_str());

    // Alice turns live messages off in a room of hers: no marker there.
    let quiet = world.room(encrypted, &[]).await;
    world
        .alice
        .room(&quiet)
        .send_state_event_raw(LIVE_MESSAGING, "", json!({"enabled": false}))
        .await
        .expect("set the room's live messaging state");
    let asked = world.alice.say(&quiet, "print thirty lines").await;
    let shown = world
        .alice
        .wait_for(&quiet, &world.bot_id, WAIT, |shown| {
            answer_to(shown, asked.as_str())
                .first()
                .is_some_and(|message| message.text == answer)
        })
        .await;
    let message = answer_to(&shown, asked.as_str())[0];
    assert!(message.edits.len() >= 3, "{} edits", message.edits.len());
    assert!(
        message.original.get(LIVE).is_none(),
        "{:#}",
        message.original
    );
    for edit in &message.edits {
        assert!(edit.get(LIVE).is_none(), "{edit:#}");
        assert!(edit["m.new_content"].get(LIVE).is_none(), "{edit:#}");
    }
}

const LIVE: &str = "org.matrix.msc4357.live";
const LIVE_MESSAGING: &str = "org.matrix.msc4357.live_messaging";

#[tokio::test]
async fn answers_are_live_while_written_in_a_plain_room() {
    answers_are_live_while_written(false).await;
}

#[tokio::test]
async fn answers_are_live_while_written_in_an_encrypted_room() {
    answers_are_live_while_written(true).await;
}

#[tokio::test]
async fn invites_are_accepted_only_from_allowed_users() {
    let world = World::start_with(Setup {
        matrix: r#"allowed_users = ["@alice:localhost"]"#.into(),
        // This bot logs in with an access token: its session is that token's device.
        access_token: true,
        ..Setup::default()
    })
    .await;
    let session = std::fs::read_to_string(world.dir.path().join("matrix/session.json"))
        .expect("the bot saved its session");
    let session: serde_json::Value = serde_json::from_str(&session).expect("session JSON");
    assert_eq!(session["device_id"], world.bot_account.device_id.as_str());
    // Alice may invite the bot: the room works.
    let room = world.room(false, &[]).await;
    world.fake.script("echo", Scenario::text("hello Alice"));
    world.alice.say(&room, "hi").await;
    world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            shown.iter().any(|message| message.text == "hello Alice")
        })
        .await;

    // Carol may not: the invite is declined.
    let carol = world.human("carol").await;
    let theirs = carol.create_room(false, &[&world.bot_id]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let member = theirs.get_member(&world.bot_id).await.ok().flatten();
        if member.is_some_and(|member| {
            *member.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Leave
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the invite was not declined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn messages_from_before_the_bot_joined_are_not_answered() {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", Scenario::Echo);
    let alice = &world.alice;
    let room = alice.create_room(false, &[]).await;
    let room_id = room.room_id().to_owned();
    alice.say(&room_id, "said before the bot came").await;
    room.invite_user_by_id(&world.bot_id)
        .await
        .expect("invite the bot");
    alice.wait_joined(&room_id, &world.bot_id).await;
    let asked = alice.say(&room_id, "said after").await;
    alice
        .wait_for(&room_id, &world.bot_id, WAIT, |shown| {
            answer_to(shown, asked.as_str())
                .first()
                .is_some_and(|message| message.text == "said after")
        })
        .await;
    assert_eq!(world.contexts(), vec![vec!["said after".to_owned()]]);
}

#[tokio::test]
async fn a_failed_first_login_says_why_and_can_be_retried() {
    let mut world = World::start(SynapseOptions::default(), "").await;
    world.bot().stop("TERM");
    // A second bot account, first started with a wrong password.
    let other = world
        .synapse
        .register("otherbot", "right-password", false)
        .await;
    let config = std::fs::read_to_string(&world.config)
        .unwrap()
        .replace(world.bot_id.as_str(), &other.user_id)
        .replace("/matrix\"", "/matrix-other\"");
    let other_config = world.dir.path().join("other.toml");
    std::fs::write(&other_config, config).unwrap();
    let log = world.dir.path().join("other.log");
    let mut wrong = BotProcess::start(
        &other_config,
        &[("POE_API_KEY", KEY), ("MATRIX_PASSWORD", "wrong-password")],
        &log,
    );
    let status = wrong.wait_for_exit(WAIT).await;
    assert!(!status.success());
    let output = wrong.log();
    assert!(output.contains("cannot log in to Matrix"), "{output}");
    assert!(
        !output.contains("wrong-password"),
        "the password leaked: {output}"
    );
    let mut right = BotProcess::start(
        &other_config,
        &[("POE_API_KEY", KEY), ("MATRIX_PASSWORD", "right-password")],
        &log,
    );
    right.wait_for_log("poe-relay started", 1, WAIT).await;
    assert!(right.log().contains("logged in as a new device"));
}

/// `matrix.access`: only listed people, and (once set) only listed rooms, are answered; the
/// rest get no answer (a room has no private reply) and never reach Poe. The bot's own
/// admins are answered anywhere.
#[tokio::test]
async fn the_access_lists_decide_who_is_answered_where() {
    let mut world = World::start_with(Setup {
        matrix: "allowed_servers = [\"localhost\"]\nadmins = [\"@carol:localhost\"]\n\
                 access.allow_users = [\"@alice:localhost\"]"
            .into(),
        ..Setup::default()
    })
    .await;
    world.fake.script("echo", Scenario::text("Sure."));
    let bob = world.human("bob").await;
    let carol = world.human("carol").await;
    let room = world.room(false, &[&bob, &carol]).await;
    let other = world.room(false, &[&bob, &carol]).await;
    let answered = |shown: &[Shown], asked: &OwnedEventId| {
        answer_to(shown, asked.as_str())
            .first()
            .is_some_and(|reply| reply.text == "Sure.")
    };

    // A room's messages are handled in order: once Alice is answered, Bob was turned away.
    let refused_bob = bob.say(&room, "!poe bob asks").await;
    let by_alice = world.alice.say(&room, "!poe alice asks").await;
    let by_carol = carol.say(&room, "!poe carol asks").await;
    let shown = world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answered(shown, &by_alice) && answered(shown, &by_carol)
        })
        .await;
    assert!(answer_to(&shown, refused_bob.as_str()).is_empty());

    // Now only the first room, too.
    world.bot().stop("TERM");
    let config = std::fs::read_to_string(&world.config).expect("the config");
    let config = config.replacen(
        "[log]",
        &format!("access.allow_rooms = [\"{room}\"]\n\n[log]"),
        1,
    );
    std::fs::write(&world.config, config).expect("rewrite the config");
    world.start_bot(2, &[]).await;
    let refused_elsewhere = world.alice.say(&other, "!poe alice elsewhere").await;
    let carol_elsewhere = carol.say(&other, "!poe carol elsewhere").await;
    let alice_again = world.alice.say(&room, "!poe alice again").await;
    let shown_other = world
        .alice
        .wait_for(&other, &world.bot_id, WAIT, |shown| {
            answered(shown, &carol_elsewhere)
        })
        .await;
    assert!(answer_to(&shown_other, refused_elsewhere.as_str()).is_empty());
    world
        .alice
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answered(shown, &alice_again)
        })
        .await;

    assert_eq!(
        support::questions_asked(&world.contexts()),
        [
            "alice: alice again",
            "alice: alice asks",
            "carol: carol asks",
            "carol: carol elsewhere",
        ]
    );
    assert_eq!(world.bot().log().matches("question refused").count(), 2);
}

/// In a room with only the bot and another bot, every message asks. The other bot replying
/// at once to every answer gets four answers (the first looks like a person), one notice,
/// then nothing; asking at a person's pace again is answered.
#[tokio::test]
async fn a_bot_that_answers_every_answer_is_paused_with_one_notice() {
    let world = World::start(SynapseOptions::default(), "").await;
    world.fake.script("echo", Scenario::text("Indeed."));
    let other = world.human("otherbot").await;
    let room = other.create_room(false, &[&world.bot_id]).await;
    let room = room.room_id().to_owned();
    other.wait_joined(&room, &world.bot_id).await;
    const NOTICE: &str = "This looks like bots answering each other";
    let mut asked = Vec::new();
    for turn in 0..5 {
        let question = other.say(&room, &format!("what next? ({turn})")).await;
        // Replies the moment the answer is complete, as a bot does.
        other
            .wait_for(&room, &world.bot_id, WAIT, |shown| {
                answer_to(shown, question.as_str())
                    .first()
                    .is_some_and(|reply| reply.text == "Indeed." || reply.text.starts_with(NOTICE))
            })
            .await;
        asked.push(question);
    }
    let ignored = other.say(&room, "what next? (5)").await;
    let shown = other.shown(&room, &world.bot_id);
    for question in &asked[..4] {
        assert_eq!(answer_to(&shown, question.as_str())[0].text, "Indeed.");
    }
    let notice = answer_to(&shown, asked[4].as_str());
    assert!(notice[0].text.starts_with(NOTICE), "{}", notice[0].text);
    // After a person's pause, the question is answered, and the ignored one never was.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let slow = other.say(&room, "sorry, I was away: what next?").await;
    let shown = other
        .wait_for(&room, &world.bot_id, WAIT, |shown| {
            answer_to(shown, slow.as_str())
                .first()
                .is_some_and(|reply| reply.text == "Indeed.")
        })
        .await;
    assert!(answer_to(&shown, ignored.as_str()).is_empty());
    assert_eq!(world.contexts().len(), 5, "{:#?}", world.contexts());
    let notices = shown
        .iter()
        .filter(|message| message.text.starts_with(NOTICE))
        .count();
    assert_eq!(notices, 1);
}
