//! The Discord adapter end to end: the real `poe-relay` binary (with the real serenity
//! client inside) connected to the fake Discord (tests/support/fake_discord.rs) and the fake
//! Poe, all on 127.0.0.1. People are simulated by dispatching gateway events; what they would
//! see is what the fake Discord holds.

mod support;

use std::time::Duration;

use poe_relay::fake_poe::{FakePoe, Scenario};
use serde_json::{Value, json};

use support::KEY;
use support::bot_process::BotProcess;
use support::discord_world::*;
use support::fake_discord::{
    FakeDiscord, FakeDiscordOptions, FakeMessage, FakeUser, IncomingCommand, IncomingMessage,
};

const ANSWER: &str = "Rust's ownership rules, in short:\n\n\
1. Each value has one owner.\n\
2. When the owner goes out of scope, the value is dropped.\n\
3. You can borrow a value, mutably once or immutably many times.\n\n\
That is what lets Rust free memory without a garbage collector, and it is checked at \
compile time, so none of this costs anything when the program runs.";

#[tokio::test]
async fn a_mention_gets_a_streamed_answer_and_follow_ups_keep_the_context() {
    let world = World::start().await;
    // About 6 s of streaming: enough for several edits at Discord's pace.
    world.poe.script("echo", streamed(ANSWER, 8, 140));
    let asked = world.mention(CHANNEL, alice(), "explain ownership");
    let answer = world.wait_answer(CHANNEL, asked, ANSWER).await;
    let message = &answer[0];
    assert!(
        message.edits() >= 3,
        "the answer was streamed in {} edits",
        message.edits()
    );
    assert_eq!(message.allowed_mentions, Some(json!({"parse": []})));
    assert!(
        !world.discord.typing(CHANNEL).is_empty(),
        "no typing was shown"
    );
    assert_eq!(world.contexts()[0], vec!["alice: explain ownership"]);

    // The gateway intents a relay needs, and no more: guild messages, DMs, message content.
    assert_eq!(
        world.discord.gateway_stats().intents,
        Some((1 << 9) | (1 << 12) | (1 << 15))
    );

    // `/poe` is registered in the configured guild with every subcommand.
    let registered = world.discord.commands(Some(GUILD));
    let subcommands: Vec<&str> = registered[0]["options"]
        .as_array()
        .expect("subcommands")
        .iter()
        .filter_map(|sub| sub["name"].as_str())
        .collect();
    for needed in [
        "ask", "balance", "usage", "budget", "model", "models", "reset", "help",
    ] {
        assert!(subcommands.contains(&needed), "{subcommands:?}");
    }

    // A reply to the bot's message, without a mention, continues the conversation.
    world
        .poe
        .script("echo", Scenario::text("Yes: moves transfer ownership."));
    let reply = world.discord.dispatch_message(
        IncomingMessage::new(CHANNEL, bob(), "and moves?")
            .in_guild(GUILD)
            .replying_to(message.id),
    );
    world
        .wait_answer(CHANNEL, reply, "Yes: moves transfer ownership.")
        .await;
    assert_eq!(
        world.contexts()[1],
        vec!["alice: explain ownership", ANSWER, "bob: and moves?"]
    );

    // A thread is its own channel: none of the above is in its context.
    world.poe.script("echo", Scenario::text("Fresh start."));
    let in_thread = world.mention(THREAD, alice(), "hello");
    world.wait_answer(THREAD, in_thread, "Fresh start.").await;
    assert_eq!(world.contexts()[2], vec!["alice: hello"]);

    // A DM needs no mention.
    world.poe.script("echo", Scenario::text("Hi in private."));
    let direct = world
        .discord
        .dispatch_message(IncomingMessage::new(DM, alice(), "just us"));
    world.wait_answer(DM, direct, "Hi in private.").await;
    assert_eq!(world.contexts()[3], vec!["just us"]);

    // Messages that are not for the bot are not answered: the next answer is to the next
    // question, and Poe was asked nothing more.
    world.discord.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), "talking among ourselves").in_guild(GUILD),
    );
    world.poe.script("echo", Scenario::text("Done."));
    let last = world.mention(CHANNEL, alice(), "last one");
    world.wait_answer(CHANNEL, last, "Done.").await;
    assert_eq!(world.contexts().len(), 5);
    assert!(
        world.contexts()[4]
            .iter()
            .all(|text| !text.contains("among ourselves")),
        "{:?}",
        world.contexts()[4]
    );
    world.assert_clean();
}

#[tokio::test]
async fn balance_is_for_bot_admins_only_and_every_command_is_acknowledged_in_time() {
    let world = World::start().await;
    world.poe.set_balance(123_456);
    let balance = || options("balance", json!([]));
    // Configured: a role, and a user id (in a DM, where there are no permissions).
    let bot_admins = [
        IncomingCommand::new(CHANNEL, bob(), "poe", balance())
            .in_guild(GUILD, SEND_MESSAGES)
            .with_roles(&[ADMIN_ROLE]),
        IncomingCommand::new(DM, root(), "poe", balance()),
    ];
    for command in bot_admins {
        let id = world.slash(command).await;
        let (text, private) = world.slash_answer(id);
        assert!(text.contains("123456"), "{text}");
        assert!(private, "the balance was shown to everyone");
    }
    // Server admins by permission (anyone can make a server and add the bot), and a member.
    let refused = [
        IncomingCommand::new(CHANNEL, alice(), "poe", balance()).in_guild(GUILD, ADMINISTRATOR),
        IncomingCommand::new(CHANNEL, bob(), "poe", balance()).in_guild(GUILD, MANAGE_GUILD),
        IncomingCommand::new(CHANNEL, bob(), "poe", balance()).in_guild(GUILD, SEND_MESSAGES),
    ];
    for command in refused {
        let id = world.slash(command).await;
        let (text, private) = world.slash_answer(id);
        assert!(text.contains("Only the bot's own admins"), "{text}");
        assert!(!text.contains("123456"), "{text}");
        assert!(private, "a refusal is private");
    }

    // `/poe ask` answers in public, in the acknowledged message.
    world.poe.script("echo", Scenario::text("Forty-two."));
    let asked = world
        .slash(
            IncomingCommand::new(
                CHANNEL,
                alice(),
                "poe",
                options(
                    "ask",
                    json!([{"type": 3, "name": "question", "value": "the answer?"}]),
                ),
            )
            .in_guild(GUILD, SEND_MESSAGES),
        )
        .await;
    world
        .discord
        .wait_for_within(WAIT, "the /poe ask answer", |fake| {
            let original = fake.interaction(asked)?.original?;
            (fake.message(original)?.content == "Forty-two.").then_some(())
        })
        .await;
    let (_, private) = world.slash_answer(asked);
    assert!(!private, "an ask answer must be public");
    assert_eq!(world.contexts()[0], vec!["alice: the answer?"]);

    // Every interaction was acknowledged (Discord's 3 s deadline is enforced by the fake,
    // which would have refused a late one), with "thinking…" first.
    let interactions = world.discord.interactions();
    assert_eq!(interactions.len(), 6);
    for interaction in &interactions {
        let ack = interaction.ack.as_ref().expect("acknowledged");
        assert_eq!(ack.kind, 5, "deferred, then edited");
    }
    world.assert_clean();
}

/// Who may run what (the README's table), row by row: the bot's configured admin, a server
/// owner who is not one (Administrator), and a plain member. Refusals are private and say which
/// right is missing.
#[tokio::test]
async fn every_command_is_run_or_refused_by_the_right_it_needs() {
    let world = World::start().await;
    world.poe.set_balance(777_000);
    world.poe.script("echo", Scenario::text("Four."));
    let owner = FakeUser::new(810_000_000_000_000_009, "owner");
    let member = bob();
    // (what, options, who may: [bot admin, server owner, member], what a refusal names)
    const ROOM: &str = "Only admins of this room or server";
    const BOT: &str = "Only the bot's own admins";
    let rows: Vec<(&str, Value, [bool; 3], &str)> = vec![
        ("help", options("help", json!([])), [true, true, true], ""),
        ("usage", options("usage", json!([])), [true, true, true], ""),
        (
            "usage here",
            options("usage", json!([{"type": 5, "name": "here", "value": true}])),
            [true, true, false],
            ROOM,
        ),
        (
            "models",
            options("models", json!([])),
            [true, true, true],
            "",
        ),
        ("model", options("model", json!([])), [true, true, true], ""),
        (
            "model <name>",
            options(
                "model",
                json!([{"type": 3, "name": "name", "value": "echo"}]),
            ),
            [true, true, false],
            ROOM,
        ),
        (
            "prompt",
            options("prompt", json!([])),
            [true, true, true],
            "",
        ),
        (
            "prompt <text>",
            options(
                "prompt",
                json!([{"type": 3, "name": "text", "value": "Be brief."}]),
            ),
            [true, true, false],
            ROOM,
        ),
        (
            "prompt clear",
            options(
                "prompt",
                json!([{"type": 3, "name": "text", "value": "clear"}]),
            ),
            [true, true, false],
            ROOM,
        ),
        ("reset", options("reset", json!([])), [true, true, true], ""),
        (
            "ask",
            options(
                "ask",
                json!([{"type": 3, "name": "question", "value": "two plus two?"}]),
            ),
            [true, true, true],
            "",
        ),
        (
            "balance",
            options("balance", json!([])),
            [true, false, false],
            BOT,
        ),
        (
            "budget",
            options(
                "budget",
                json!([{"type": 6, "name": "user", "value": member.id.to_string()},
                       {"type": 4, "name": "points", "value": 500}]),
            ),
            [true, false, false],
            BOT,
        ),
    ];
    let people = [
        (root(), SEND_MESSAGES),
        (owner.clone(), ADMINISTRATOR),
        (member.clone(), SEND_MESSAGES),
    ];
    for (what, command, allowed, missing) in &rows {
        for ((person, permissions), may) in people.iter().zip(allowed) {
            let id = world
                .slash(
                    IncomingCommand::new(CHANNEL, person.clone(), "poe", command.clone())
                        .in_guild(GUILD, *permissions),
                )
                .await;
            let (text, private) = world.slash_answer(id);
            let who = &person.name;
            if *may {
                assert!(
                    !text.starts_with("Only"),
                    "{who} was refused `{what}`: {text}"
                );
                if *what == "ask" {
                    world
                        .discord
                        .wait_for_within(WAIT, "the ask's answer", |fake| {
                            let original = fake.interaction(id)?.original?;
                            (fake.message(original)?.content == "Four.").then_some(())
                        })
                        .await;
                }
            } else {
                assert!(text.starts_with(missing), "{who} ran `{what}`: {text}");
                assert!(private, "{who}'s refusal of `{what}` was public");
            }
        }
    }
    // Only the bot's admin set a budget: the member's is 500 now.
    let id = world
        .slash(
            IncomingCommand::new(CHANNEL, member, "poe", options("usage", json!([])))
                .in_guild(GUILD, SEND_MESSAGES),
        )
        .await;
    assert!(world.slash_answer(id).0.contains("of **500** points"));
    world.assert_clean();
}

#[tokio::test]
async fn slash_commands_with_bad_input_get_clear_answers() {
    let world = World::start().await;
    let in_guild = |options: Value| {
        IncomingCommand::new(CHANNEL, root(), "poe", options).in_guild(GUILD, SEND_MESSAGES)
    };
    let cases = [
        // An unknown subcommand: the help, privately.
        (options("dance", json!([])), "is not a command", true),
        // No subcommand at all.
        (json!([]), "Pick a subcommand", true),
        // Points of the wrong type.
        (
            options(
                "budget",
                json!([
                    {"type": 6, "name": "user", "value": bob().id.to_string()},
                    {"type": 3, "name": "points", "value": "lots"},
                ]),
            ),
            "is not a number of points",
            true,
        ),
        // A question of the wrong type.
        (
            options("ask", json!([{"type": 4, "name": "question", "value": 7}])),
            "must be text",
            true,
        ),
        // A budget that works (root is a configured admin).
        (
            options(
                "budget",
                json!([
                    {"type": 6, "name": "user", "value": bob().id.to_string()},
                    {"type": 4, "name": "points", "value": 250},
                ]),
            ),
            "may now spend **250** points",
            true,
        ),
        // A public answer.
        (
            options(
                "models",
                json!([{"type": 3, "name": "filter", "value": "claude"}]),
            ),
            "Claude-Sonnet-4.6",
            false,
        ),
    ];
    for (options, expected, expect_private) in cases {
        let id = world.slash(in_guild(options.clone())).await;
        let (text, private) = world.slash_answer(id);
        assert!(text.contains(expected), "{options}: {text}");
        assert_eq!(private, expect_private, "{options}: {text}");
    }
    // A change by a non-admin is refused privately: acknowledged privately from the start.
    let id = world
        .slash(
            IncomingCommand::new(
                CHANNEL,
                alice(),
                "poe",
                options(
                    "model",
                    json!([{"type": 3, "name": "name", "value": "Imagen-4"}]),
                ),
            )
            .in_guild(GUILD, SEND_MESSAGES),
        )
        .await;
    let (text, private) = world.slash_answer(id);
    assert!(
        text.contains(
            "Only admins of this room or server (or the bot's own admins) can change the model here"
        ),
        "{text}"
    );
    assert!(private, "{text}");
    let ack = world
        .discord
        .interaction(id)
        .and_then(|i| i.ack)
        .expect("acknowledged");
    assert!(ack.ephemeral);

    // Another application's command name.
    let id = world
        .slash(IncomingCommand::new(CHANNEL, alice(), "weather", json!([])).in_guild(GUILD, 0))
        .await;
    assert!(
        world
            .slash_answer(id)
            .0
            .contains("not a command of this bot")
    );

    // Autocomplete for the model: the fake Poe's models containing what was typed, prefixes
    // first.
    let id = world.discord.dispatch_command(
        IncomingCommand::new(
            CHANNEL,
            alice(),
            "poe",
            options(
                "model",
                json!([{"type": 3, "name": "name", "value": "E", "focused": true}]),
            ),
        )
        .in_guild(GUILD, SEND_MESSAGES)
        .autocomplete(),
    );
    let choices = world
        .discord
        .wait_for_within(WAIT, "autocomplete choices", |fake| {
            let ack = fake.interaction(id)?.ack?;
            (ack.kind == 8).then(|| ack.data["choices"].clone())
        })
        .await;
    assert_eq!(
        choices,
        json!([
            {"name": "echo", "value": "echo"},
            {"name": "Claude-Sonnet-4.6", "value": "Claude-Sonnet-4.6"},
            {"name": "Imagen-4", "value": "Imagen-4"},
        ])
    );

    // A 40,000-character message gets the length note and costs nothing; the bot still
    // answers afterwards.
    let huge = world.mention(CHANNEL, alice(), &"a".repeat(40_000));
    let note = world
        .discord
        .wait_for_within(WAIT, "the length note", |fake| {
            answer_in(fake, CHANNEL, huge)
                .first()
                .map(|m| m.content.clone())
        })
        .await;
    assert!(note.contains("characters"), "{note}");
    // A malformed dispatch (no author, no id) is dropped by serenity; nothing breaks.
    world.discord.dispatch_raw(
        "MESSAGE_CREATE",
        json!({"content": "<@1> hi", "channel_id": "x"}),
    );
    world.poe.script("echo", Scenario::text("Still here."));
    let asked = world.mention(CHANNEL, alice(), "are you there?");
    world.wait_answer(CHANNEL, asked, "Still here.").await;
    assert_eq!(
        world.contexts(),
        vec![vec!["alice: are you there?".to_owned()]]
    );
    world.assert_clean();
}

#[tokio::test]
async fn a_5000_character_answer_arrives_as_three_messages_with_fences_intact() {
    let world = World::start().await;
    let mut long = String::from("Here is the program you asked for:\n\n```rust\n");
    let mut line = 0;
    while long.chars().count() < 4_700 {
        long.push_str(&format!(
            "    let value_{line} = compute({line}); // step {line}\n"
        ));
        line += 1;
    }
    long.push_str("```\n\nRun it with `cargo run`.");
    while long.chars().count() < 5_000 {
        long.push_str(" Enjoy.");
    }
    world.poe.script("echo", streamed(&long, 400, 50));
    let asked = world.mention(CHANNEL, alice(), "write me a long program");
    let answer = world.wait_answer(CHANNEL, asked, &long).await;
    assert_eq!(answer.len(), 3, "{answer:#?}");
    for message in &answer {
        assert!(message.content.chars().count() <= 2000);
        assert_eq!(
            message.content.matches("```").count() % 2,
            0,
            "unbalanced fences in {:?}",
            message.content
        );
        assert_eq!(message.allowed_mentions, Some(json!({"parse": []})));
    }
    assert!(
        answer[1].content.starts_with("```rust\n"),
        "{}",
        answer[1].content
    );
    world.assert_clean();
}

#[tokio::test]
async fn attachments_reach_poe_and_image_answers_arrive_as_files() {
    let world = World::start_with("", &[("POE_RELAY__CHAT__MAX_ATTACHMENT_BYTES", "4000")]).await;
    world.poe.script("echo", Scenario::text("It says hello."));
    let notes = b"hello from a text file\n".repeat(20);
    let content = format!("{} what does this file say?", world.discord.mention());
    let asked = world.discord.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), &content)
            .in_guild(GUILD)
            .mentioning(&world.discord.bot_user())
            .with_attachment("notes.txt", "text/plain", &notes),
    );
    world.wait_answer(CHANNEL, asked, "It says hello.").await;
    let uploads = world.poe.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].bytes, notes);
    assert_eq!(uploads[0].name, "notes.txt");
    let request = &world.poe.chat_requests("echo")[0];
    let last = request.body["query"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "alice: what does this file say?");
    assert_eq!(last["attachments"][0]["content_type"], "text/plain");

    // Over the configured 4,000 bytes: the user is told, and Poe hears nothing.
    let content = format!("{} and this one?", world.discord.mention());
    let big = world.discord.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), &content)
            .in_guild(GUILD)
            .mentioning(&world.discord.bot_user())
            .with_attachment("big.png", "image/png", &[7u8; 5000]),
    );
    let note = world
        .discord
        .wait_for_within(WAIT, "the size note", |fake| {
            answer_in(fake, CHANNEL, big)
                .first()
                .map(|m| m.content.clone())
        })
        .await;
    assert!(
        note.contains("big.png") && note.contains("Send a smaller file"),
        "{note}"
    );
    assert_eq!(world.poe.uploads().len(), 1);
    assert_eq!(world.poe.chat_requests("echo").len(), 1);

    // An image bot's answer arrives as a file the channel can download.
    let picture = b"\x89PNG\r\n\x1a\n-a-cat-".repeat(64);
    support::script_image_answer(&world.poe, "echo", "cat.png", &picture).await;
    let draw = world.mention(OTHER_CHANNEL, alice(), "draw a cat");
    let file = world
        .discord
        .wait_for_within(WAIT, "the picture", |fake| {
            fake.bot_messages(OTHER_CHANNEL)
                .into_iter()
                .find(|message| !message.attachments.is_empty())
        })
        .await;
    assert_eq!(file.reference, Some(draw));
    assert_eq!(file.attachments[0].filename, "cat.png");
    let downloaded = reqwest::get(&file.attachments[0].url)
        .await
        .expect("download the bot's file")
        .bytes()
        .await
        .expect("the file's bytes");
    assert_eq!(downloaded.as_ref(), picture.as_slice());
    world.assert_clean();
}

#[tokio::test]
async fn rate_limits_are_respected_and_429s_lose_nothing() {
    let world = World::start().await;
    world.discord.rate_limit(CHANNEL, 5, Duration::from_secs(5));
    world
        .discord
        .rate_limit(OTHER_CHANNEL, 5, Duration::from_secs(5));
    let answer: String = (1..=60).map(|n| format!("word{n} ")).collect::<String>();
    let answer = answer.trim_end().to_owned();
    // About 6 s each.
    world.poe.script("echo", streamed(&answer, 10, 100));
    let first = world.mention(CHANNEL, alice(), "one");
    let second = world.mention(CHANNEL, bob(), "two");
    let third = world.mention(OTHER_CHANNEL, alice(), "three");
    for (channel, trigger) in [(CHANNEL, first), (CHANNEL, second), (OTHER_CHANNEL, third)] {
        world.wait_answer(channel, trigger, &answer).await;
    }
    assert_eq!(
        world.discord.rate_limited(None),
        0,
        "the renderer's pacing should keep within 5 writes per 5 s"
    );

    // Injected 429s: slowed down, nothing lost.
    world.discord.inject_429(CHANNEL, 3, Duration::from_secs(1));
    let fourth = world.mention(CHANNEL, alice(), "four");
    world.wait_answer(CHANNEL, fourth, &answer).await;
    assert_eq!(world.discord.rate_limited(Some(CHANNEL)), 3);
    world.assert_clean();
}

/// A busy community: 150 answers streaming at once in 150 channels, on a fake Discord that
/// enforces the global limit (50 requests in any second) and 5 writes per 5 s in each channel.
/// The bot's budget (40 a second) must share itself out so the platform never says "slow
/// down", and every answer still streams and ends exact.
#[tokio::test]
async fn one_hundred_fifty_answers_at_once_stay_within_discords_limits() {
    let world = World::start_on(
        FakeDiscordOptions {
            channel_limit: Some((5, Duration::from_secs(5))),
            ..FakeDiscordOptions::default()
        },
        "",
        "",
        &[],
    )
    .await;
    let answer: String = (1..=100).map(|n| format!("word{n} ")).collect::<String>();
    let answer = answer.trim_end().to_owned();
    // About 15 s each.
    world.poe.script("echo", streamed(&answer, 10, 200));
    let channels: Vec<u64> = (0..150).map(|index| CHANNEL + 1000 + index).collect();
    // One person per channel, each within their own points budget.
    let triggers: Vec<u64> = channels
        .iter()
        .enumerate()
        .map(|(index, channel)| {
            let asker = FakeUser::new(820_000_000_000_000_000 + index as u64, "asker");
            world.mention(*channel, asker, "tell me")
        })
        .collect();
    let answers = world
        .discord
        .wait_for_within(Duration::from_secs(240), "all 150 answers", |fake| {
            let answers: Vec<FakeMessage> = channels
                .iter()
                .zip(&triggers)
                .filter_map(|(channel, trigger)| {
                    let answer = answer_in(fake, *channel, *trigger);
                    (answer.len() == 1).then(|| answer[0].clone())
                })
                .filter(|message| message.content == answer)
                .collect();
            (answers.len() == channels.len()).then_some(answers)
        })
        .await;
    assert_eq!(
        world.discord.global_rate_limited(),
        0,
        "429s of the global limit"
    );
    assert_eq!(
        world.discord.rate_limited(None),
        0,
        "429s of a channel's limit"
    );
    assert_eq!(
        world.discord.invalid_requests(),
        0,
        "requests toward an IP ban"
    );
    for message in &answers {
        assert!(
            message.edits() > 1,
            "the answer in channel {} was edited {} times: it should stream",
            message.channel_id,
            message.edits()
        );
    }
    let edits: usize = answers.iter().map(FakeMessage::edits).sum();
    eprintln!(
        "150 answers: {edits} edits ({:.1} per answer), 0 429s",
        edits as f64 / 150.0
    );
    world.assert_clean();
}

#[tokio::test]
async fn gateway_trouble_loses_nothing_and_handles_nothing_twice() {
    let world = World::start().await;
    let answer: String = (1..=50).map(|n| format!("token{n} ")).collect::<String>();
    let answer = answer.trim_end().to_owned();
    world.poe.script("echo", streamed(&answer, 10, 120));
    let first = world.mention(CHANNEL, alice(), "first");
    world
        .discord
        .wait_for_within(WAIT, "the answer to start", |fake| {
            (!answer_in(fake, CHANNEL, first).is_empty()).then_some(())
        })
        .await;

    // The socket drops mid-stream; a message sent meanwhile is replayed on RESUME.
    assert!(world.discord.drop_gateway());
    let second = world.mention(OTHER_CHANNEL, bob(), "second");
    world.wait_answer(CHANNEL, first, &answer).await;
    world.wait_answer(OTHER_CHANNEL, second, &answer).await;
    world
        .discord
        .wait_for_within(WAIT, "a resume", |fake| {
            (fake.gateway_stats().resumes >= 1).then_some(())
        })
        .await;

    // RECONNECT: the client resumes; the next message is answered.
    let resumes = world.discord.gateway_stats().resumes;
    assert!(world.discord.send_reconnect());
    world
        .discord
        .wait_for_within(WAIT, "a second resume", |fake| {
            (fake.gateway_stats().resumes > resumes).then_some(())
        })
        .await;
    world.poe.script("echo", Scenario::text("Third."));
    let third = world.mention(CHANNEL, alice(), "third");
    world.wait_answer(CHANNEL, third, "Third.").await;

    // Discord delivers at least once: the same MESSAGE_CREATE again is not answered again.
    let stored: Value = reqwest::Client::new()
        .get(format!(
            "{}/api/v10/channels/{CHANNEL}/messages/{third}",
            world.discord.api_base()
        ))
        .header(
            "Authorization",
            format!("Bot {}", world.discord.bot_token()),
        )
        .send()
        .await
        .expect("fetch the message")
        .json()
        .await
        .expect("the message JSON");
    let mut again = stored.clone();
    again["mentions"] = json!([{
        "id": world.discord.bot_user().id.to_string(),
        "username": world.discord.bot_user().name,
        "discriminator": "0000",
        "global_name": null,
        "avatar": null,
        "bot": true,
    }]);
    again["guild_id"] = json!(GUILD.to_string());
    world.discord.dispatch_raw("MESSAGE_CREATE", again);

    let dropped = format!("an event delivered again was dropped event={third}");
    world
        .discord
        .wait_for_within(WAIT, "the bot to drop the duplicate", |_| {
            world.bot.log().contains(&dropped).then_some(())
        })
        .await;

    // INVALID_SESSION, not resumable: a fresh IDENTIFY, and the bot keeps answering.
    let identifies = world.discord.gateway_stats().identifies;
    assert!(world.discord.send_invalid_session(false));
    world
        .discord
        .wait_for_within(WAIT, "a new IDENTIFY", |fake| {
            let stats = fake.gateway_stats();
            (stats.identifies > identifies && stats.connected).then_some(())
        })
        .await;
    world.poe.script("echo", Scenario::text("Fourth."));
    let fourth = world.mention(CHANNEL, alice(), "fourth");
    world.wait_answer(CHANNEL, fourth, "Fourth.").await;

    // Each question reached Poe once and got one answer.
    let questions: Vec<String> = world
        .contexts()
        .iter()
        .map(|context| context.last().cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        questions,
        [
            "alice: first",
            "bob: second",
            "alice: third",
            "alice: fourth"
        ]
    );
    for (channel, trigger) in [
        (CHANNEL, first),
        (OTHER_CHANNEL, second),
        (CHANNEL, third),
        (CHANNEL, fourth),
    ] {
        let replies = world
            .discord
            .bot_messages(channel)
            .iter()
            .filter(|message| message.reference == Some(trigger))
            .count();
        assert_eq!(replies, 1, "answers to {trigger}");
    }
    world.assert_clean();
}

/// A minimal config for `discord` and `poe` in `dir`: for starts that are meant to fail.
fn bare_config(
    discord: &FakeDiscord,
    poe: &FakePoe,
    dir: &tempfile::TempDir,
) -> std::path::PathBuf {
    let config = dir.path().join("poe-relay.toml");
    std::fs::write(
        &config,
        format!(
            "[poe]\nbase_url = \"{}\"\n[store]\npath = \"{}\"\n[discord]\nenabled = true\napi_base = \"{}\"\ngateway_url = \"{}\"\n[log]\nfilter = \"info,serenity=debug\"\n",
            poe.base_url(),
            dir.path().join("store").display(),
            discord.api_base(),
            discord.gateway_url()
        ),
    )
    .expect("config");
    config
}

#[tokio::test]
async fn a_rejected_token_stops_the_start_with_a_clear_message() {
    let discord = FakeDiscord::start().await;
    let poe = FakePoe::start(KEY).await.expect("fake Poe");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = bare_config(&discord, &poe, &dir);
    let wrong = "not-the-token-0123456789";
    let mut bot = BotProcess::start(
        &config,
        &[("POE_API_KEY", KEY), ("DISCORD_TOKEN", wrong)],
        &dir.path().join("bot.log"),
    );
    let status = bot.wait_for_exit(WAIT).await;
    assert!(!status.success());
    let log = bot.log();
    assert!(log.contains("Discord rejected the bot token"), "{log}");
    assert!(!log.contains(wrong), "the token leaked into the log: {log}");
}

/// Without the Message Content intent switched on in the Developer Portal, Discord closes the
/// gateway (4014); a bot that went on running would be deaf, so it stops and says what to do.
#[tokio::test]
async fn a_missing_intent_stops_the_daemon_with_what_to_do() {
    let discord = FakeDiscord::start_with(support::fake_discord::FakeDiscordOptions {
        message_content_allowed: false,
        ..Default::default()
    })
    .await;
    let poe = FakePoe::start(KEY).await.expect("fake Poe");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = bare_config(&discord, &poe, &dir);
    let mut bot = BotProcess::start(
        &config,
        &[("POE_API_KEY", KEY), ("DISCORD_TOKEN", discord.bot_token())],
        &dir.path().join("bot.log"),
    );
    let status = bot.wait_for_exit(WAIT).await;
    assert!(!status.success());
    let log = bot.log();
    assert!(log.contains("turn on Message Content Intent"), "{log}");
    assert!(
        !log.contains(discord.bot_token()),
        "the token leaked into the log"
    );
}

/// The adapter's sending side alone against the fake Discord: a private answer to a publicly
/// acknowledged command (which the core sends when a public command fails) must reach only
/// the caller, although Discord turns the first follow-up after a deferral into the public
/// deferred message itself.
#[tokio::test]
async fn a_private_answer_to_a_public_acknowledgement_stays_private() {
    use poe_relay::core::boundary::{ChannelKey, OutMessage};
    use poe_relay::core::pacing::{Pacing, Priority};
    use poe_relay::platform::discord::outbound::DiscordOutbound;
    use serenity::all::{ApplicationId, HttpBuilder, InteractionId};

    poe_relay::tls::install_crypto_provider();
    let discord = FakeDiscord::start().await;
    let http = HttpBuilder::new(discord.bot_token())
        .proxy(discord.api_base())
        .ratelimiter_disabled(true)
        .build();
    http.set_application_id(ApplicationId::new(discord.application_id()));
    let http = std::sync::Arc::new(http);
    let adapter = std::sync::Arc::new(DiscordOutbound::new(http.clone(), 40.0, true));
    // The way the core reaches the adapter: every call paced.
    let pacing = Pacing::new(Default::default());
    let out = pacing.paced("discord", adapter.clone());
    // Interactions are dispatched to a gateway session; none is needed to answer over REST.
    let id = discord.dispatch_command(
        IncomingCommand::new(CHANNEL, alice(), "poe", options("models", json!([])))
            .in_guild(GUILD, SEND_MESSAGES),
    );
    let token = discord.interaction(id).expect("recorded").token;
    http.create_interaction_response(
        InteractionId::new(id),
        &token,
        &json!({"type": 5}),
        Vec::new(),
    )
    .await
    .expect("defer publicly");
    adapter.remember_interaction(id, token, false);
    let channel = ChannelKey::new("discord", &CHANNEL.to_string());
    let sent = out
        .send(
            &channel,
            OutMessage {
                text: "That did not work.".into(),
                reply_to: Some(id.to_string()),
                continuation: false,
                private: true,
                live: false,
            },
            Priority::Urgent,
        )
        .await
        .expect("sent");
    let interaction = discord.interaction(id).expect("recorded");
    let original = discord
        .message(interaction.original.expect("deferred"))
        .expect("the original");
    assert!(
        original.deleted,
        "the public placeholder stayed: {original:?}"
    );
    assert!(!original.content.contains("did not work"));
    assert_eq!(interaction.followups.len(), 1);
    let answer = discord
        .message(interaction.followups[0])
        .expect("the follow-up");
    assert_eq!(answer.content, "That did not work.");
    assert!(answer.is_ephemeral());
    assert_eq!(sent.0, format!("{id}/{}", answer.id));

    // Its continuation is private too, and edits reach it.
    let more = out
        .send(
            &channel,
            OutMessage {
                text: "More.".into(),
                reply_to: Some(id.to_string()),
                continuation: true,
                private: true,
                live: false,
            },
            Priority::Urgent,
        )
        .await
        .expect("sent");
    out.edit(&channel, &more, "More, edited.", false, Priority::Urgent)
        .await
        .expect("edited");
    let interaction = discord.interaction(id).expect("recorded");
    let second = discord
        .message(interaction.followups[1])
        .expect("the second part");
    assert!(second.is_ephemeral());
    assert_eq!(second.content, "More, edited.");
    let violations = discord.violations();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn a_restart_closes_interrupted_answers_and_keeps_the_history() {
    let mut world = World::start().await;
    let slow = "word ".repeat(200);
    world.poe.script("echo", streamed(&slow, 5, 100));
    let first = world.mention(CHANNEL, alice(), "tell me a long story");
    let asked = world.discord.dispatch_command(
        IncomingCommand::new(
            OTHER_CHANNEL,
            bob(),
            "poe",
            options(
                "ask",
                json!([{"type": 3, "name": "question", "value": "another story"}]),
            ),
        )
        .in_guild(GUILD, SEND_MESSAGES),
    );
    world
        .discord
        .wait_for_within(WAIT, "both answers to be streaming", |fake| {
            let channel = answer_in(fake, CHANNEL, first).first()?.edits() >= 1;
            let original = fake.message(fake.interaction(asked)?.original?)?;
            (channel && original.content.starts_with("word")).then_some(())
        })
        .await;
    world.kill_and_restart().await;

    // The channel answer is closed by an edit that keeps its text.
    let closed = world
        .discord
        .wait_for_within(WAIT, "the interrupted answer to say so", |fake| {
            let message = answer_in(fake, CHANNEL, first).first()?.clone();
            message.content.contains("interrupted").then_some(message)
        })
        .await;
    assert!(
        closed.content.starts_with("word word"),
        "{}",
        closed.content
    );
    // The slash command's token died with the process: a new message says so instead.
    world
        .discord
        .wait_for_within(WAIT, "a notice for the interrupted /poe ask", |fake| {
            fake.bot_messages(OTHER_CHANNEL)
                .iter()
                .any(|m| m.interaction_id.is_none() && m.content.contains("interrupted"))
                .then_some(())
        })
        .await;

    // The history survived: the next question carries the first one.
    world.poe.script("echo", Scenario::text("The end."));
    let next = world.mention(CHANNEL, alice(), "and then?");
    world.wait_answer(CHANNEL, next, "The end.").await;
    let contexts = world.contexts();
    let last = contexts.last().expect("a context");
    assert_eq!(
        last.first().map(String::as_str),
        Some("alice: tell me a long story")
    );
    assert_eq!(last.last().map(String::as_str), Some("alice: and then?"));
    let answers = world
        .discord
        .bot_messages(CHANNEL)
        .iter()
        .filter(|message| message.reference == Some(first))
        .count();
    assert_eq!(answers, 1, "the first question was answered twice");
    world.assert_clean();
}

#[tokio::test]
async fn dms_when_allowed_bots_never_and_files_without_words() {
    let world = World::start_with("allow_dms = false", &[]).await;
    // A DM is not answered when DMs are off; a slash command in a DM says why.
    world
        .discord
        .dispatch_message(IncomingMessage::new(DM, alice(), "hello?"));
    let id = world
        .slash(IncomingCommand::new(
            DM,
            alice(),
            "poe",
            options("usage", json!([])),
        ))
        .await;
    let (text, private) = world.slash_answer(id);
    assert!(
        text.contains("does not answer in direct messages"),
        "{text}"
    );
    assert!(private);

    // Another bot mentioning this one is not answered.
    let other_bot = FakeUser {
        bot: true,
        ..FakeUser::new(810_000_000_000_000_009, "otherbot")
    };
    world.mention(CHANNEL, other_bot, "ping");

    // A file with no words is a question about the file.
    world
        .poe
        .script("echo", Scenario::text("A list of numbers."));
    let content = world.discord.mention();
    let file_only = world.discord.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), &content)
            .in_guild(GUILD)
            .mentioning(&world.discord.bot_user())
            .with_attachment("numbers.csv", "text/csv", b"1,2,3\n"),
    );
    world
        .wait_answer(CHANNEL, file_only, "A list of numbers.")
        .await;
    let uploads = world.poe.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, b"1,2,3\n");

    // Nothing else reached Poe, and the channel goes on.
    world.poe.script("echo", Scenario::text("Pong."));
    let last = world.mention(CHANNEL, bob(), "ping");
    world.wait_answer(CHANNEL, last, "Pong.").await;
    assert_eq!(world.contexts().len(), 2, "{:?}", world.contexts());
    assert!(
        world
            .discord
            .bot_messages(DM)
            .iter()
            .all(|m| m.interaction_id.is_some())
    );
    world.assert_clean();
}

/// `discord.access`: only the allowed channel (and its threads) is answered; a blocked user
/// or role is not; a refused mention gets no answer at all and a refused slash command one
/// private note; none of them reaches Poe. The bot's own admins are never locked out.
#[tokio::test]
async fn the_access_lists_decide_who_is_answered_where() {
    const OTHER_THREAD: u64 = 910_000_000_000_000_020;
    const MUTED_ROLE: u64 = 910_000_000_000_000_021;
    let world = World::start_with(
        &format!(
            "access.allow_channels = [\"{CHANNEL}\"]\n\
             access.block_users = [\"{bob}\"]\n\
             access.block_roles = [\"{MUTED_ROLE}\"]",
            bob = bob().id
        ),
        &[],
    )
    .await;
    world.discord.add_thread(THREAD, CHANNEL, GUILD);
    world.discord.add_thread(OTHER_THREAD, OTHER_CHANNEL, GUILD);
    world.poe.script("echo", Scenario::text("Sure."));
    let mention_as = |channel: u64, author: FakeUser, roles: &[u64], text: &str| {
        let content = format!("{} {text}", world.discord.mention());
        world.discord.dispatch_message(
            IncomingMessage::new(channel, author, &content)
                .in_guild(GUILD)
                .with_roles(roles)
                .mentioning(&world.discord.bot_user()),
        )
    };

    // Refused first, then an allowed question in the same channel: the channel's messages
    // are handled in order, so once the second is answered the first was turned away.
    let refused = [
        (CHANNEL, mention_as(CHANNEL, bob(), &[], "bob here")),
        (
            CHANNEL,
            mention_as(CHANNEL, alice(), &[MUTED_ROLE], "muted"),
        ),
        (
            OTHER_CHANNEL,
            mention_as(OTHER_CHANNEL, alice(), &[], "elsewhere"),
        ),
        (
            OTHER_THREAD,
            mention_as(OTHER_THREAD, alice(), &[], "thread elsewhere"),
        ),
    ];
    let allowed = [
        (CHANNEL, world.mention(CHANNEL, alice(), "in the channel")),
        (THREAD, world.mention(THREAD, alice(), "in its thread")),
        // The bot's admins are answered anywhere.
        (
            OTHER_CHANNEL,
            world.mention(OTHER_CHANNEL, root(), "admin elsewhere"),
        ),
        (
            OTHER_THREAD,
            world.mention(OTHER_THREAD, root(), "admin in a thread"),
        ),
    ];
    for (channel, trigger) in allowed {
        world.wait_answer(channel, trigger, "Sure.").await;
    }
    for (channel, trigger) in refused {
        assert!(
            answer_in(&world.discord, channel, trigger).is_empty(),
            "a refused mention in {channel} was answered"
        );
    }
    for channel in [CHANNEL, THREAD, OTHER_CHANNEL, OTHER_THREAD] {
        let notes = world.discord.bot_messages(channel).len();
        assert_eq!(notes, 1, "{channel} got {notes} messages from the bot");
    }

    // Slash commands: one private note each, saying why.
    let ask = |channel: u64, user: FakeUser, roles: &[u64]| {
        IncomingCommand::new(
            channel,
            user,
            "poe",
            options(
                "ask",
                json!([{"type": 3, "name": "question", "value": "slash question"}]),
            ),
        )
        .in_guild(GUILD, SEND_MESSAGES)
        .with_roles(roles)
    };
    for (command, note) in [
        (ask(CHANNEL, bob(), &[]), "You cannot use this bot here"),
        (
            ask(CHANNEL, alice(), &[MUTED_ROLE]),
            "You cannot use this bot here",
        ),
        (
            ask(OTHER_CHANNEL, alice(), &[]),
            "This bot is not used in this channel.",
        ),
        (
            ask(OTHER_THREAD, alice(), &[]),
            "This bot is not used in this channel.",
        ),
    ] {
        let id = world.slash(command).await;
        let (text, private) = world.slash_answer(id);
        assert!(text.starts_with(note), "{text}");
        assert!(private, "a refusal is private: {text}");
    }
    // A slash command in the allowed channel's thread is answered (Discord names the
    // thread's parent in the interaction).
    let id = world.slash(ask(THREAD, alice(), &[])).await;
    world
        .discord
        .wait_for_within(WAIT, "the slash answer in the thread", |fake| {
            let original = fake.interaction(id)?.original?;
            (fake.message(original)?.content == "Sure.").then_some(())
        })
        .await;

    // Poe heard only the allowed questions.
    assert_eq!(
        support::questions_asked(&world.contexts()),
        [
            "alice: in its thread",
            "alice: in the channel",
            "alice: slash question",
            "root: admin elsewhere",
            "root: admin in a thread",
        ]
    );
    assert_eq!(world.bot.log().matches("question refused").count(), 8);
    world.assert_clean();
}

/// With `ignore_bots = false`, another bot that mentions this one after every answer gets
/// three answers, then one notice, then nothing, until a person writes in the channel.
#[tokio::test]
async fn bots_answering_each_other_are_paused_until_a_person_writes() {
    let mut world = World::start_with("ignore_bots = false", &[]).await;
    world.poe.script("echo", Scenario::text("Indeed."));
    let mut other = FakeUser::new(810_000_000_000_000_050, "otherbot");
    other.bot = true;
    for _ in 0..3 {
        let asked = world.mention(CHANNEL, other.clone(), "and what do you think?");
        world.wait_answer(CHANNEL, asked, "Indeed.").await;
    }
    let paused = world.mention(CHANNEL, other.clone(), "and what do you think?");
    let notice = world
        .discord
        .wait_for_within(WAIT, "the pause notice", |fake| {
            answer_in(fake, CHANNEL, paused).first().cloned()
        })
        .await;
    assert!(
        notice
            .content
            .starts_with("This looks like bots answering each other"),
        "{}",
        notice.content
    );
    let ignored = world.mention(CHANNEL, other.clone(), "still there?");
    world.bot.wait_for_log("question refused", 2, WAIT).await;
    // A person says something, to no one in particular.
    world.discord.dispatch_message(
        IncomingMessage::new(CHANNEL, alice(), "all right, you two").in_guild(GUILD),
    );
    let resumed = world.mention(CHANNEL, other.clone(), "back again");
    world.wait_answer(CHANNEL, resumed, "Indeed.").await;
    assert!(answer_in(&world.discord, CHANNEL, ignored).is_empty());
    assert_eq!(world.contexts().len(), 4, "{:#?}", world.contexts());
    world.assert_clean();
}
