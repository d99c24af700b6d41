//! The conversation core end to end: the in-memory platform, the real sled store in a
//! temporary directory, and the fake Poe over loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use poe_relay::config::ModelConfig;
use poe_relay::core::boundary::{
    ChannelKey, InboundFile, Outbound, PlatformError, RateScope, Speaker,
};
use poe_relay::core::manager::Disposition;
use poe_relay::core::pacing::Permit;
use poe_relay::core::render::split::{LengthUnit, split};
use poe_relay::fake_poe::{FakePoe, Scenario};
use poe_relay::platform::memory::{CallKind, MemoryPlatform, ShownMessage};
use poe_relay::poe::{FileSource, Transport};
use poe_relay::store::LedgerState;
use serde_json::json;
use support::{CoreSetup, KEY, command, core_config, core_with, message, quick_platform};

const WAIT: Duration = Duration::from_secs(20);

fn out(platform: &MemoryPlatform) -> Arc<dyn Outbound> {
    Arc::new(platform.clone())
}

fn channel(name: &str) -> ChannelKey {
    ChannelKey::new("memory", name)
}

async fn shown_with(
    platform: &MemoryPlatform,
    channel_name: &str,
    text: &str,
) -> Vec<ShownMessage> {
    let key = channel(channel_name);
    let found = platform
        .wait_for(WAIT, |messages| {
            messages
                .iter()
                .any(|message| message.channel == key && message.text.contains(text))
        })
        .await;
    assert!(
        found,
        "no message containing {text:?} in {channel_name}: {:#?}",
        platform.messages(&key)
    );
    platform.messages(&key)
}

/// Waits until the core has nothing in flight (the answer was recorded and settled).
async fn settled(setup: &support::CoreSetup) {
    for _ in 0..400 {
        let idle = setup.store.inflight_replies().unwrap().is_empty()
            && setup
                .store
                .ledger_since(0)
                .unwrap()
                .iter()
                .all(|entry| entry.state != LedgerState::Reserved);
        if idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the core did not settle");
}

fn slow_text(text: &str) -> Scenario {
    Scenario::Text {
        text: text.into(),
        chunk_chars: 3,
        interval: Duration::from_millis(15),
    }
}

#[tokio::test]
async fn a_streamed_answer_is_edited_in_place_and_ends_exact() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let answer = "The quick brown fox jumps over the lazy dog, again and again, until the answer is long enough to need several edits. Ünïcödé 👋🏽 too.";
    fake.script("echo", slow_text(answer));
    let setup = core_with(core_config(&fake), quick_platform());
    let inbound = message("c1", "ann", "tell me");
    let event = inbound.event_id.clone();
    assert_eq!(
        setup.manager.handle(inbound, out(&setup.platform)).await,
        Disposition::Queued
    );
    let messages = shown_with(&setup.platform, "c1", "Ünïcödé 👋🏽 too.").await;
    settled(&setup).await;
    let messages = if messages[0].text == answer {
        messages
    } else {
        setup.platform.messages(&channel("c1"))
    };
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text, answer);
    assert_eq!(messages[0].reply_to.as_deref(), Some(event.as_str()));
    assert!(messages[0].edits >= 3, "only {} edits", messages[0].edits);

    let calls = setup.platform.calls();
    assert_eq!(
        calls[0].kind,
        CallKind::Typing,
        "typing shows before the first token"
    );
    let edits: Vec<_> = calls
        .iter()
        .filter(|call| call.kind == CallKind::Edit)
        .collect();
    for pair in edits.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(50),
            "edits closer than the interval"
        );
    }
    // Every intermediate state was a prefix of the answer.
    for call in calls.iter().filter(|call| call.kind != CallKind::Typing) {
        assert!(answer.starts_with(&call.text), "{:?}", call.text);
    }
    let history = setup.store.all_turns(&channel("c1")).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].text, "tell me");
    assert_eq!(history[1].text, answer);
}

#[tokio::test]
async fn follow_ups_carry_the_context_and_reset_drops_it() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    setup
        .manager
        .handle(message("c", "ann", "first question"), out.clone())
        .await;
    shown_with(&setup.platform, "c", "first question").await;
    settled(&setup).await;
    setup
        .manager
        .handle(message("c", "ann", "second question"), out.clone())
        .await;
    shown_with(&setup.platform, "c", "second question").await;
    settled(&setup).await;
    let sent = fake.chat_requests("echo");
    let query = sent[1].body["query"].as_array().unwrap();
    let contents: Vec<&str> = query
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["first question", "first question", "second question"]
    );
    assert_eq!(query[1]["role"], "bot");

    assert_eq!(
        setup
            .manager
            .handle(command("c", "ann", false, "reset"), out.clone())
            .await,
        Disposition::Queued
    );
    shown_with(&setup.platform, "c", "starts fresh").await;
    setup
        .manager
        .handle(message("c", "ann", "third question"), out.clone())
        .await;
    shown_with(&setup.platform, "c", "third question").await;
    settled(&setup).await;
    let query = &fake.chat_requests("echo")[2].body["query"];
    assert_eq!(query.as_array().unwrap().len(), 1, "{query}");
    // The reset hid the turns; it did not delete them.
    assert_eq!(setup.store.all_turns(&channel("c")).unwrap().len(), 6);
}

#[tokio::test]
async fn group_chats_name_the_speakers_and_the_system_prompt_leads() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    setup
        .manager
        .handle(
            command("g", "boss", true, "prompt Answer like a pirate."),
            out.clone(),
        )
        .await;
    shown_with(&setup.platform, "g", "system prompt is set").await;
    let mut first = message("g", "ann", "hello");
    first.is_group = true;
    setup.manager.handle(first, out.clone()).await;
    shown_with(&setup.platform, "g", "ann: hello").await;
    settled(&setup).await;
    let mut second = message("g", "bob", "hi");
    second.is_group = true;
    setup.manager.handle(second, out.clone()).await;
    shown_with(&setup.platform, "g", "bob: hi").await;
    settled(&setup).await;
    let query = fake.chat_requests("echo")[1].body["query"].clone();
    assert_eq!(query[0]["role"], "system");
    assert_eq!(query[0]["content"], "Answer like a pirate.");
    assert_eq!(query[1]["content"], "ann: hello");
    assert_eq!(query[3]["content"], "bob: hi");
}

#[tokio::test]
async fn one_reply_at_a_time_per_channel_and_channels_in_parallel() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("echo", slow_text(&"x".repeat(60)));
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    for index in 0..3 {
        setup
            .manager
            .handle(message("a", "ann", &format!("a{index}")), out.clone())
            .await;
    }
    setup
        .manager
        .handle(message("b", "bob", "b0"), out.clone())
        .await;
    let key = channel("a");
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| messages
                .iter()
                .filter(|m| m.channel == key && m.text.len() == 60)
                .count()
                == 3)
            .await
    );
    settled(&setup).await;
    let requests = fake.chat_requests("echo");
    let started = |text: &str| {
        requests
            .iter()
            .find(|request| {
                request.body["query"].as_array().unwrap().last().unwrap()["content"] == text
            })
            .unwrap()
            .received_at
    };
    // The replies in channel a were asked in order, each after the previous answer was done.
    let answers = setup.platform.messages(&key);
    let finished = |index: usize| {
        setup
            .platform
            .calls()
            .iter()
            .filter(|call| call.message.as_ref() == Some(&answers[index].id))
            .map(|call| call.at.into_std())
            .max()
            .unwrap()
    };
    assert!(started("a0") < started("a1") && started("a1") < started("a2"));
    assert!(
        finished(0) <= started("a1"),
        "a1 started before a0 was finished"
    );
    assert!(finished(1) <= started("a2"));
    // Channel b did not wait for channel a.
    assert!(started("b0") < started("a1"));
}

#[tokio::test]
async fn duplicates_and_events_from_before_the_start_are_ignored() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    let inbound = message("c", "ann", "once");
    assert_eq!(
        setup.manager.handle(inbound.clone(), out.clone()).await,
        Disposition::Queued
    );
    assert_eq!(
        setup.manager.handle(inbound, out.clone()).await,
        Disposition::Duplicate
    );
    let mut old = message("c", "ann", "from yesterday");
    old.timestamp_ms -= 86_400_000;
    assert_eq!(
        setup.manager.handle(old, out.clone()).await,
        Disposition::TooOld
    );
    shown_with(&setup.platform, "c", "once").await;
    settled(&setup).await;
    assert_eq!(fake.chat_requests("echo").len(), 1);
}

#[tokio::test]
async fn over_budget_users_are_told_when_it_resets_and_poe_is_not_called() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = core_config(&fake);
    config.budget.default_points = 10;
    let setup = core_with(config, quick_platform());
    setup
        .manager
        .handle(message("c", "ann", "expensive"), out(&setup.platform))
        .await;
    let messages = shown_with(&setup.platform, "c", "Your budget resets at").await;
    assert!(
        messages[0].text.contains("Nothing was sent to Poe"),
        "{}",
        messages[0].text
    );
    assert!(fake.chat_requests("echo").is_empty());
}

#[tokio::test]
async fn room_admins_are_not_exempt_and_cannot_set_budgets() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = core_config(&fake);
    config.budget.default_points = 10;
    let setup = core_with(config, quick_platform());
    // An admin of this room only (it is theirs: they created it), not of the bot.
    let mut question = message("c", "ann", "expensive");
    question.is_admin = true;
    setup.manager.handle(question, out(&setup.platform)).await;
    shown_with(&setup.platform, "c", "Nothing was sent to Poe").await;
    let mut raise = command("c", "ann", true, "budget ann 100000");
    raise.is_bot_admin = false;
    setup.manager.handle(raise, out(&setup.platform)).await;
    shown_with(
        &setup.platform,
        "c",
        "Only the bot's own admins (set by its operator) can set budgets",
    )
    .await;
    assert!(fake.chat_requests("echo").is_empty());
    // Nor see the account's balance and spenders, which reach beyond their room.
    let mut balance = command("c", "ann", true, "balance");
    balance.is_bot_admin = false;
    setup.manager.handle(balance, out(&setup.platform)).await;
    let refused = shown_with(&setup.platform, "c", "can see the Poe account's balance").await;
    let refusal = refused
        .iter()
        .find(|message| message.text.contains("Poe account's balance"))
        .unwrap();
    assert!(refusal.private, "refusals are private");
    assert!(
        refusal.text.contains("anyone can create one"),
        "{}",
        refusal.text
    );
    // The bot's own admin is exempt.
    let mut boss = message("c", "boss", "expensive");
    boss.is_admin = true;
    boss.is_bot_admin = true;
    setup.manager.handle(boss, out(&setup.platform)).await;
    shown_with(&setup.platform, "c", "expensive").await;
}

#[tokio::test]
async fn fifty_concurrent_requests_by_one_user_cannot_overspend() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = core_config(&fake);
    config.budget.default_points = 1000;
    // The budget alone must hold, with flood control (which would hold most back) off.
    config.chat.max_questions_per_user = 0;
    config.poe.models.push(ModelConfig {
        name: "echo".into(),
        transport: None,
        parameters: Default::default(),
        points_per_request: Some(30),
    });
    let setup = core_with(config, quick_platform());
    let out = out(&setup.platform);
    let handles: Vec<_> = (0..50)
        .map(|index| {
            let manager = setup.manager.clone();
            let out = out.clone();
            tokio::spawn(async move {
                manager
                    .handle(message(&format!("c{index}"), "ann", "go"), out)
                    .await
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| messages.len() == 50)
            .await
    );
    settled(&setup).await;
    let ledger = setup.store.ledger_since(0).unwrap();
    let spent: i64 = ledger.iter().map(|entry| entry.charge()).sum();
    assert!(spent <= 1000 + 30, "spent {spent}");
    assert_eq!(ledger.len(), 33, "1000 points buy 33 requests of 30");
    assert_eq!(fake.chat_requests("echo").len(), 33);
    let refused = setup
        .platform
        .all_messages()
        .iter()
        .filter(|m| m.text.contains("resets at"))
        .count();
    assert_eq!(refused, 17);
    assert_eq!(refusals(&setup, "over_budget"), 17);
}

/// What `/metrics` counts as refused for `reason`.
fn refusals(setup: &CoreSetup, reason: &str) -> usize {
    let series = format!("poe_relay_refusals_total{{reason=\"{reason}\"}} ");
    setup
        .manager
        .services()
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |count| count.parse().expect("a count"))
}

#[tokio::test]
async fn reconciliation_makes_the_ledger_match_poes_history() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    // Someone else's web chat on the same account must not be counted.
    fake.push_history(json!({"query_id": "web1", "bot_name": "echo", "creation_time": poe_relay::core::services::now_ms() * 1000,
        "usage_type": "Chat", "cost_points": 999}));
    for index in 0..6 {
        let channel = format!("c{}", index % 3);
        setup
            .manager
            .handle(
                message(
                    &channel,
                    &format!("user{}", index % 2),
                    &format!("question number {index}"),
                ),
                out.clone(),
            )
            .await;
    }
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| messages.len() == 6)
            .await
    );
    settled(&setup).await;
    setup.manager.maintain().await;
    let ledger = setup.store.ledger_since(0).unwrap();
    assert!(
        ledger.iter().all(|entry| entry.reconciled.is_some()),
        "{ledger:#?}"
    );
    let ours: i64 = ledger.iter().map(|entry| entry.reconciled.unwrap()).sum();
    let theirs: i64 = fake
        .history()
        .iter()
        .filter(|entry| entry["usage_type"] == "API")
        .map(|entry| entry["cost_points"].as_i64().unwrap())
        .sum();
    assert_eq!(ours, theirs);
    // A second pass uses nothing twice.
    setup.manager.maintain().await;
    let again: i64 = setup
        .store
        .ledger_since(0)
        .unwrap()
        .iter()
        .map(|entry| entry.reconciled.unwrap())
        .sum();
    assert_eq!(again, theirs);
}

/// A configuration whose default model, `Imagen-4`, answers with a picture of a cat.
fn cat_picture_bot(fake: &FakePoe) -> poe_relay::config::Config {
    fake.script(
        "Imagen-4",
        Scenario::Media {
            url: "https://pfst.example/cat.png".into(),
            content_type: "image/png".into(),
            name: "cat.png".into(),
        },
    );
    let mut config = core_config(fake);
    config.chat.default_model = "Imagen-4".into();
    config
}

#[tokio::test]
async fn media_bots_are_called_without_streaming_and_post_the_image() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = cat_picture_bot(&fake);
    config.poe.models.push(ModelConfig {
        name: "Imagen-4".into(),
        transport: Some(Transport::OpenAi),
        parameters: Default::default(),
        points_per_request: Some(300),
    });
    let setup = core_with(config, quick_platform());
    setup
        .manager
        .handle(message("c", "ann", "a cat"), out(&setup.platform))
        .await;
    let messages = shown_with(
        &setup.platform,
        "c",
        "![cat.png](https://pfst.example/cat.png)",
    )
    .await;
    settled(&setup).await;
    assert_eq!(messages.len(), 1);
    let calls = setup.platform.calls();
    assert!(
        calls
            .iter()
            .any(|call| call.text.contains("is working on it")),
        "no progress notice"
    );
    assert_eq!(fake.chat_requests("Imagen-4")[0].body["stream"], false);
    assert_eq!(setup.store.ledger_since(0).unwrap()[0].estimated, Some(300));
}

#[tokio::test]
async fn a_failure_midway_keeps_the_partial_text_and_says_what_happened() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "echo",
        Scenario::ErrorMidStream {
            before: "Half of the answer".into(),
            error: json!({"allow_retry": false, "text": "boom"}),
        },
    );
    let setup = core_with(core_config(&fake), quick_platform());
    setup
        .manager
        .handle(message("c", "ann", "q"), out(&setup.platform))
        .await;
    let messages = shown_with(&setup.platform, "c", "The model stopped with an error").await;
    assert!(
        messages[0].text.starts_with("Half of the answer\n\n⚠️"),
        "{}",
        messages[0].text
    );
    settled(&setup).await;
    let turns = setup.store.all_turns(&channel("c")).unwrap();
    assert_eq!(turns[1].text, "Half of the answer");
}

#[tokio::test]
async fn poe_refusals_reach_the_user_in_plain_words_and_cost_nothing() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "echo",
        Scenario::status(402, "insufficient_credits", "insufficient_points", "no"),
    );
    let setup = core_with(core_config(&fake), quick_platform());
    setup
        .manager
        .handle(message("c", "ann", "q"), out(&setup.platform))
        .await;
    shown_with(&setup.platform, "c", "out of points").await;
    settled(&setup).await;
    let ledger = setup.store.ledger_since(0).unwrap();
    assert_eq!(ledger[0].state, LedgerState::Released);
    assert_eq!(ledger[0].charge(), 0);
}

#[tokio::test]
async fn a_long_answer_is_split_with_code_fences_intact() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let code: String = (0..61)
        .map(|line| format!("    let value_{line} = compute({line}); // step {line}\n"))
        .collect();
    let prose = "This paragraph explains the code in some detail. ".repeat(24);
    let answer = format!("{prose}\n\n```rust\n{code}```\n\n{prose}");
    assert!(
        (4900..=5100).contains(&answer.chars().count()),
        "{}",
        answer.chars().count()
    );
    fake.script(
        "echo",
        Scenario::Text {
            text: answer.clone(),
            chunk_chars: 97,
            interval: Duration::from_millis(2),
        },
    );
    let setup = core_with(core_config(&fake), quick_platform());
    setup
        .manager
        .handle(message("c", "ann", "explain"), out(&setup.platform))
        .await;
    let key = channel("c");
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| {
                let texts: Vec<&str> = messages
                    .iter()
                    .filter(|m| m.channel == key)
                    .map(|m| m.text.as_str())
                    .collect();
                let total: usize = texts.iter().map(|text| text.len()).sum();
                texts
                    .last()
                    .is_some_and(|last| last.ends_with("some detail. "))
                    && total >= answer.len()
            })
            .await
    );
    settled(&setup).await;
    let parts = setup.platform.messages(&key);
    assert_eq!(
        parts.len(),
        3,
        "{:#?}",
        parts.iter().map(|p| p.text.len()).collect::<Vec<_>>()
    );
    let expected = split(&answer, 2000, LengthUnit::Chars);
    assert_eq!(
        expected
            .iter()
            .map(|part| part.body.as_str())
            .collect::<String>(),
        answer
    );
    for (shown, part) in parts.iter().zip(&expected) {
        assert_eq!(shown.text, part.render());
        assert!(shown.text.chars().count() <= 2000);
        assert_eq!(
            shown.text.matches("```").count() % 2,
            0,
            "unbalanced fences in {:?}",
            shown.text
        );
    }
    // The code block was cut: closed at the end of one part, reopened with its language.
    assert!(parts[1].text.ends_with("\n```"), "{}", parts[1].text);
    assert!(parts[2].text.starts_with("```rust\n"), "{}", parts[2].text);
}

#[tokio::test]
async fn platform_429s_slow_the_renderer_but_lose_nothing() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let answer = "word ".repeat(80);
    fake.script("echo", slow_text(&answer));
    let setup = core_with(core_config(&fake), quick_platform());
    setup.platform.inject(
        PlatformError::RateLimited {
            retry_after: Duration::from_millis(300),
            scope: RateScope::Channel,
        },
        4,
    );
    setup
        .manager
        .handle(message("c", "ann", "q"), out(&setup.platform))
        .await;
    let messages = shown_with(&setup.platform, "c", &answer).await;
    settled(&setup).await;
    assert_eq!(messages[0].text, answer);
    assert_eq!(setup.platform.refused(), 4);
    let calls = setup.platform.calls();
    let refused_at = calls
        .iter()
        .filter(|call| !call.accepted)
        .map(|call| call.at)
        .next_back()
        .unwrap();
    let next = calls
        .iter()
        .find(|call| call.at > refused_at && call.kind != CallKind::Typing)
        .unwrap();
    assert!(
        next.at - refused_at >= Duration::from_millis(300),
        "retry-after was not honoured"
    );
}

#[tokio::test]
async fn a_platform_rate_limit_is_never_hit_in_normal_use() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "echo",
        Scenario::Text {
            text: "steady ".repeat(150),
            chunk_chars: 7,
            interval: Duration::from_millis(10),
        },
    );
    // Discord's limits: 5 writes per 5 s in a channel, 50 calls a second over all.
    let platform = MemoryPlatform::discord();
    let mut config = core_config(&fake);
    config.chat.max_concurrent_replies = 8;
    let setup = core_with(config, platform);
    let out = out(&setup.platform);
    setup
        .manager
        .handle(message("shared", "ann", "one"), out.clone())
        .await;
    setup
        .manager
        .handle(message("shared", "bob", "two"), out.clone())
        .await;
    setup
        .manager
        .handle(message("other", "cy", "three"), out.clone())
        .await;
    assert!(
        setup
            .platform
            .wait_for(Duration::from_secs(60), |messages| {
                messages
                    .iter()
                    .filter(|m| m.text == "steady ".repeat(150))
                    .count()
                    == 3
            })
            .await
    );
    assert_eq!(setup.platform.refused(), 0);
}

#[tokio::test]
async fn attachments_go_to_poe_with_the_question() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let mut inbound = message("c", "ann", "what is in this picture?");
    inbound.attachments.push(InboundFile {
        name: "cat.png".into(),
        content_type: "image/png".into(),
        size: 4,
        source: FileSource::Bytes(Bytes::from_static(b"\x89PNG")),
    });
    setup.manager.handle(inbound, out(&setup.platform)).await;
    shown_with(&setup.platform, "c", "what is in this picture?").await;
    settled(&setup).await;
    assert_eq!(fake.uploads()[0].bytes, b"\x89PNG");
    let sent = &fake.chat_requests("echo")[0].body["query"][0]["attachments"][0];
    assert_eq!(sent["name"], "cat.png");

    let mut huge = message("c", "ann", "and this?");
    huge.attachments.push(InboundFile {
        name: "movie.mp4".into(),
        content_type: "video/mp4".into(),
        size: 500 << 20,
        source: FileSource::Url("https://cdn.example/movie.mp4".into()),
    });
    setup.manager.handle(huge, out(&setup.platform)).await;
    shown_with(&setup.platform, "c", "Send a smaller file").await;
    assert_eq!(fake.chat_requests("echo").len(), 1);
    assert_eq!(refusals(&setup, "file_too_large"), 1);
}

#[tokio::test]
async fn an_overlong_question_gets_a_note_and_poe_is_not_asked() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = core_config(&fake);
    config.chat.max_question_chars = 100;
    let setup = core_with(config, quick_platform());
    let question = "é".repeat(101);
    setup
        .manager
        .handle(message("c", "ann", &question), out(&setup.platform))
        .await;
    let shown = shown_with(&setup.platform, "c", "questions of up to 100 characters").await;
    assert!(
        shown[0].text.contains("101 characters"),
        "{}",
        shown[0].text
    );
    let exactly = "é".repeat(100);
    setup
        .manager
        .handle(message("c", "ann", &exactly), out(&setup.platform))
        .await;
    shown_with(&setup.platform, "c", &exactly).await;
    assert_eq!(fake.chat_requests("echo").len(), 1);
    assert_eq!(refusals(&setup, "question_too_long"), 1);
}

#[tokio::test]
async fn commands_work_for_admins_and_refuse_others() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.set_balance(424_242);
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    let run = |user: &str, admin: bool, text: &str| {
        let inbound = command("cmd", user, admin, text);
        let manager = setup.manager.clone();
        let out = out.clone();
        async move {
            let event = inbound.event_id.clone();
            manager.handle(inbound, out).await;
            event
        }
    };
    let reply_to = |event: &str| {
        setup
            .platform
            .messages(&channel("cmd"))
            .into_iter()
            .filter(|message| message.reply_to.as_deref() == Some(event))
            .map(|message| (message.text, message.private))
            .collect::<Vec<_>>()
    };

    let event = run("boss", true, "balance").await;
    let (text, private) = reply_to(&event).remove(0);
    assert!(text.contains("424242 points"), "{text}");
    assert!(text.contains("Top spenders"), "{text}");
    assert!(private, "admin output is private");
    let event = run("ann", false, "balance").await;
    assert!(reply_to(&event)[0].0.contains("Only the bot's own admins"));

    let event = run("boss", true, "budget <@ann> 50000").await;
    assert!(reply_to(&event)[0].0.contains("50000"));
    let event = run("ann", false, "usage").await;
    assert!(
        reply_to(&event)[0].0.contains("of **50000** points"),
        "{:?}",
        reply_to(&event)
    );
    let event = run("ann", false, "budget ann 99999").await;
    assert!(reply_to(&event)[0].0.contains("Only the bot's own admins"));

    let event = run("ann", false, "model").await;
    assert!(reply_to(&event)[0].0.contains("**echo**"));
    let event = run("ann", false, "model Claude-Sonnet-4.6").await;
    assert!(
        reply_to(&event)[0]
            .0
            .contains("Only admins of this room or server")
    );
    let event = run(
        "boss",
        true,
        "model Claude-Sonnet-4.6 thinking_budget=99999",
    )
    .await;
    assert!(
        reply_to(&event)[0].0.contains("at most 31999"),
        "{:?}",
        reply_to(&event)
    );
    let event = run("boss", true, "model Claude-Sonnet-4.6 colour=blue").await;
    assert!(
        reply_to(&event)[0].0.contains("no parameter `colour`"),
        "{:?}",
        reply_to(&event)
    );
    let event = run("boss", true, "model No-Such-Model").await;
    assert!(
        reply_to(&event)[0].0.contains("no model called"),
        "{:?}",
        reply_to(&event)
    );
    let event = run("boss", true, "model claude-sonnet-4.6 thinking_budget=2048").await;
    assert!(
        reply_to(&event)[0]
            .0
            .contains("now uses **Claude-Sonnet-4.6**"),
        "{:?}",
        reply_to(&event)
    );
    let event = run("ann", false, "model").await;
    let shown = &reply_to(&event)[0].0;
    assert!(
        shown.contains("thinking_budget=2048") && shown.contains("number from 0 to 31999"),
        "{shown}"
    );

    setup
        .manager
        .handle(message("cmd", "ann", "think hard"), out.clone())
        .await;
    shown_with(&setup.platform, "cmd", "think hard").await;
    settled(&setup).await;
    let sent = fake.chat_requests("Claude-Sonnet-4.6");
    assert_eq!(
        sent[0].body["query"][0]["parameters"],
        json!({"thinking_budget": 2048})
    );

    let event = run("ann", false, "models claude").await;
    let listing = &reply_to(&event)[0].0;
    assert!(
        listing.contains("Claude-Sonnet-4.6") && listing.contains("$2.60 / $13.00"),
        "{listing}"
    );
    assert!(!listing.contains("Imagen"), "{listing}");

    let event = run("ann", false, "dance").await;
    let answer = &reply_to(&event)[0].0;
    assert!(
        answer.contains("`dance` is not a command") && answer.contains("**Poe commands**"),
        "{answer}"
    );
    let event = run("ann", false, "").await;
    assert!(reply_to(&event)[0].0.contains("**Poe commands**"));
    let event = run("ann", false, "prompt be nice").await;
    assert!(
        reply_to(&event)[0]
            .0
            .contains("Only admins of this room or server")
    );
    let event = run("boss", true, "prompt clear").await;
    assert!(reply_to(&event)[0].0.contains("cleared"));
}

#[tokio::test]
async fn matrix_style_edit_caps_hold_and_the_final_text_still_lands() {
    use poe_relay::core::boundary::Limits;
    let fake = FakePoe::start(KEY).await.unwrap();
    let answer = "slowly ".repeat(60);
    fake.script(
        "echo",
        Scenario::Text {
            text: answer.clone(),
            chunk_chars: 7,
            interval: Duration::from_millis(20),
        },
    );
    let platform = MemoryPlatform::new(Limits {
        max_message_len: 30_000,
        length_unit: LengthUnit::Utf8Bytes,
        min_edit_interval: Duration::from_millis(40),
        min_channel_interval: Duration::from_millis(5),
        max_edits_per_message: Some(4),
        typing_interval: Duration::from_millis(200),
        requests: None,
        marks_live: true,
    });
    let setup = core_with(core_config(&fake), platform);
    setup
        .manager
        .handle(message("room", "ann", "q"), out(&setup.platform))
        .await;
    let messages = shown_with(&setup.platform, "room", &answer).await;
    assert_eq!(messages[0].text, answer);
    assert!(messages[0].edits <= 4, "{} edits", messages[0].edits);
    assert!(messages[0].edits >= 2, "intermediate edits were expected");
}

#[tokio::test]
async fn a_thread_is_its_own_conversation() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    setup
        .manager
        .handle(message("c", "ann", "in the channel"), out.clone())
        .await;
    shown_with(&setup.platform, "c", "in the channel").await;
    settled(&setup).await;
    let mut in_thread = message("c", "ann", "in the thread");
    in_thread.channel = channel("c").in_thread("t1");
    setup.manager.handle(in_thread, out.clone()).await;
    let key = channel("c").in_thread("t1");
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| messages
                .iter()
                .any(|m| m.channel == key && m.text == "in the thread"))
            .await
    );
    settled(&setup).await;
    let query = &fake.chat_requests("echo")[1].body["query"];
    assert_eq!(
        query.as_array().unwrap().len(),
        1,
        "the thread saw the channel's history: {query}"
    );
}

#[tokio::test]
async fn reconciliation_gives_each_request_its_own_cost() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.set_cost("cheap", 7);
    fake.set_cost("dear", 11);
    fake.script("dear", slow_text(&"d".repeat(90)));
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    for (channel, model) in [("a", "cheap"), ("b", "dear")] {
        setup
            .store
            .update_channel_settings(&self::channel(channel), |settings| {
                settings.model = Some(model.into())
            })
            .unwrap();
    }
    setup
        .manager
        .handle(message("a", "ann", "cheap one"), out.clone())
        .await;
    shown_with(&setup.platform, "a", "cheap one").await;
    // Another request to the cheap model is still running while the first is reconciled.
    fake.script("cheap", slow_text(&"c".repeat(150)));
    setup
        .store
        .update_channel_settings(&channel("a2"), |settings| {
            settings.model = Some("cheap".into())
        })
        .unwrap();
    setup
        .manager
        .handle(message("a2", "cy", "cheap again"), out.clone())
        .await;
    setup
        .manager
        .handle(message("b", "bob", "dear one"), out.clone())
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    setup.manager.maintain().await;
    let early = setup.store.ledger_since(0).unwrap();
    assert!(
        early
            .iter()
            .all(|entry| entry.model != "cheap" || entry.reconciled.is_none()),
        "a cheap request was reconciled while another cheap one was running: {early:#?}"
    );
    assert_eq!(fake.chat_requests("cheap").len(), 2);
    shown_with(&setup.platform, "a2", &"c".repeat(150)).await;
    shown_with(&setup.platform, "b", &"d".repeat(90)).await;
    settled(&setup).await;
    setup.manager.maintain().await;
    let ledger = setup.store.ledger_since(0).unwrap();
    for entry in &ledger {
        let expected = if entry.model == "dear" { 11 } else { 7 };
        assert_eq!(entry.reconciled, Some(expected), "{entry:#?}");
    }
}

#[tokio::test]
async fn a_shorter_replacement_empties_the_messages_it_no_longer_needs() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "echo",
        Scenario::Replace {
            before: "long draft. ".repeat(400),
            after: "Short final answer.".into(),
        },
    );
    let setup = core_with(core_config(&fake), quick_platform());
    setup
        .manager
        .handle(message("c", "ann", "q"), out(&setup.platform))
        .await;
    settled(&setup).await;
    let key = channel("c");
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| messages
                .iter()
                .any(|m| m.channel == key && m.text == "Short final answer."))
            .await
    );
    let messages = setup.platform.messages(&key);
    assert_eq!(messages[0].text, "Short final answer.");
    assert!(
        messages[1..].iter().all(|message| message.text == "…"),
        "{messages:#?}"
    );
}

#[tokio::test]
async fn a_reservation_left_by_a_crash_is_given_back_on_start() {
    use poe_relay::store::LedgerEntry;
    use std::collections::HashMap;
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let id = setup.store.next_id().unwrap();
    setup
        .store
        .insert_ledger(&LedgerEntry {
            id,
            user: "memory:ann".into(),
            user_name: "ann".into(),
            channel: "memory:c".into(),
            model: "echo".into(),
            created_us: (poe_relay::core::services::now_ms() - 60_000) * 1000,
            finished_us: None,
            reserved: 500,
            estimated: None,
            reconciled: None,
            state: LedgerState::Reserved,
        })
        .unwrap();
    let platforms: HashMap<String, Arc<dyn Outbound>> =
        HashMap::from([("memory".to_owned(), out(&setup.platform))]);
    setup.manager.recover(&platforms).await;
    let entry = setup.store.ledger_entry(id).unwrap().unwrap();
    assert_eq!(entry.state, LedgerState::Released);
    assert_eq!(entry.charge(), 0);
}

#[tokio::test]
async fn a_stop_ends_running_replies_and_starts_nothing_new() {
    let fake = FakePoe::start(KEY).await.unwrap();
    // About 30 s of answer: it cannot finish within the grace period.
    fake.script(
        "echo",
        Scenario::Text {
            text: "word ".repeat(300),
            chunk_chars: 5,
            interval: Duration::from_millis(100),
        },
    );
    let mut config = core_config(&fake);
    // One slot: the second channel's question waits for it.
    config.chat.max_concurrent_replies = 1;
    let setup = core_with(config, quick_platform());
    let first = message("c1", "ann", "a long story");
    let waiting = message("c2", "bob", "and mine?");
    setup.manager.handle(first, out(&setup.platform)).await;
    shown_with(&setup.platform, "c1", "word").await;
    setup.manager.handle(waiting, out(&setup.platform)).await;
    // Let c2's worker take the question and wait for the slot before the stop begins.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(setup.platform.messages(&channel("c2")).is_empty());

    let report = setup.manager.shutdown(Duration::from_millis(300)).await;
    assert_eq!(report.in_flight, 1, "{report:?}");
    assert_eq!(report.interrupted, 1, "{report:?}");
    let long = setup.platform.messages(&channel("c1"));
    let last = &long.last().unwrap().text;
    assert!(last.starts_with("word word"), "{last}");
    assert!(last.contains("the bot is restarting"), "{last}");
    // The question that was waiting for a slot never reached Poe: it was told instead.
    let told = setup.platform.messages(&channel("c2"));
    assert_eq!(told.len(), 1, "{told:#?}");
    assert!(
        told[0].text.contains("did not get to this"),
        "{}",
        told[0].text
    );
    assert_eq!(fake.chat_requests("echo").len(), 1);
    // Nothing is held: the interrupted reservation went back.
    let ledger = setup.store.ledger_since(0).unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].state, LedgerState::Released);
    assert!(setup.store.inflight_replies().unwrap().is_empty());
    // New work is refused.
    assert_eq!(
        setup
            .manager
            .handle(message("c3", "cy", "hello?"), out(&setup.platform))
            .await,
        Disposition::ShuttingDown
    );
}

/// A platform adapter with a bug that strikes once: it panics the first time it is asked
/// to show a message containing "boom", or (`in_files`) to post any file.
struct PanickyOutbound {
    platform: MemoryPlatform,
    in_files: bool,
    armed: std::sync::atomic::AtomicBool,
}

impl PanickyOutbound {
    fn shared(platform: &MemoryPlatform, in_files: bool) -> Arc<dyn Outbound> {
        Arc::new(PanickyOutbound {
            platform: platform.clone(),
            in_files,
            armed: true.into(),
        })
    }

    fn strike(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("an adapter bug");
        }
    }

    fn check(&self, text: &str) {
        if !self.in_files && text.contains("boom") {
            self.strike();
        }
    }
}

#[async_trait::async_trait]
impl Outbound for PanickyOutbound {
    fn limits(&self) -> poe_relay::core::boundary::Limits {
        self.platform.limits()
    }

    async fn send(
        &self,
        permit: Permit,
        channel: &ChannelKey,
        message: poe_relay::core::boundary::OutMessage,
    ) -> Result<poe_relay::core::boundary::MessageId, PlatformError> {
        self.check(&message.text);
        self.platform.send(permit, channel, message).await
    }

    async fn edit(
        &self,
        permit: Permit,
        channel: &ChannelKey,
        message: &poe_relay::core::boundary::MessageId,
        text: &str,
        live: bool,
    ) -> Result<(), PlatformError> {
        self.check(text);
        self.platform
            .edit(permit, channel, message, text, live)
            .await
    }

    async fn typing(&self, permit: Permit, channel: &ChannelKey) -> Result<(), PlatformError> {
        self.platform.typing(permit, channel).await
    }

    async fn send_file(
        &self,
        permit: Permit,
        channel: &ChannelKey,
        file: &poe_relay::core::boundary::OutFile,
        reply_to: Option<&str>,
    ) -> Result<Option<poe_relay::core::boundary::MessageId>, PlatformError> {
        if self.in_files {
            self.strike();
        }
        self.platform
            .send_file(permit, channel, file, reply_to)
            .await
    }
}

#[tokio::test]
async fn a_turn_that_panics_is_closed_and_its_channel_goes_on() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let setup = core_with(core_config(&fake), quick_platform());
    let out = PanickyOutbound::shared(&setup.platform, false);
    setup
        .manager
        .handle(message("c", "ann", "boom"), out.clone())
        .await;
    // The broken reply is closed as after a crash: it says so, once, and its points went
    // back.
    shown_with(&setup.platform, "c", "cut off by an error in the bot").await;
    settled(&setup).await;
    assert_eq!(notes_of_errors(&setup), 1);
    let ledger = setup.store.ledger_since(0).unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].state, LedgerState::Released);
    // The channel's worker lived through the panic and answers the next question.
    setup
        .manager
        .handle(message("c", "ann", "after the bug"), out.clone())
        .await;
    shown_with(&setup.platform, "c", "after the bug").await;
    settled(&setup).await;
    assert_eq!(fake.chat_requests("echo").len(), 2);
    // The broken turn is not counted as running for ever: a stop has nothing to cut short.
    let report = setup.manager.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.interrupted, 0, "{report:?}");
}

/// How many messages say a reply was cut off by an error.
fn notes_of_errors(setup: &CoreSetup) -> usize {
    setup
        .platform
        .all_messages()
        .iter()
        .filter(|message| message.text.contains("cut off by an error in the bot"))
        .count()
}

/// The same bug outside the streaming (posting an image bot's file): the turn is closed
/// the same way.
#[tokio::test]
async fn a_turn_that_panics_while_posting_a_file_is_closed_too() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let config = cat_picture_bot(&fake);
    let setup = core_with(config, quick_platform());
    let out = PanickyOutbound::shared(&setup.platform, true);
    setup
        .manager
        .handle(message("c", "ann", "a cat"), out.clone())
        .await;
    let shown = shown_with(&setup.platform, "c", "cut off by an error in the bot").await;
    assert!(shown[0].text.contains("cat.png"), "{}", shown[0].text);
    settled(&setup).await;
    assert_eq!(notes_of_errors(&setup), 1);
    assert_eq!(
        setup.store.ledger_since(0).unwrap()[0].state,
        LedgerState::Released
    );
    setup
        .manager
        .handle(message("c", "ann", "another"), out.clone())
        .await;
    assert!(
        setup
            .platform
            .wait_for(WAIT, |messages| messages.len() == 2)
            .await
    );
    let report = setup.manager.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.interrupted, 0, "{report:?}");
}

/// Three characters every 40 ms: 650 characters take about 9 s.
fn taking_its_time(text: &str) -> Scenario {
    Scenario::Text {
        text: text.into(),
        chunk_chars: 3,
        interval: Duration::from_millis(40),
    }
}

/// The Discord-like platform's channels, `count` of them, each asked one question at once.
async fn ask_in_many_channels(setup: &CoreSetup, count: usize) -> Vec<String> {
    let out = out(&setup.platform);
    let mut events = Vec::new();
    for index in 0..count {
        let inbound = message(&format!("c{index}"), &format!("u{index}"), "go");
        events.push(inbound.event_id.clone());
        setup.manager.handle(inbound, out.clone()).await;
    }
    events
}

#[tokio::test]
async fn many_replies_share_the_bots_budget_and_never_meet_the_platforms_limits() {
    // 60 replies at once on Discord's limits: 60 first messages and 60 final edits alone are
    // three seconds of the bot's 40 calls a second, so the replies must share.
    let fake = FakePoe::start(KEY).await.unwrap();
    let answer = "shared ".repeat(120);
    fake.script(
        "echo",
        Scenario::Text {
            text: answer.clone(),
            chunk_chars: 14,
            interval: Duration::from_millis(100),
        },
    );
    let setup = core_with(core_config(&fake), MemoryPlatform::discord());
    ask_in_many_channels(&setup, 60).await;
    let done = setup
        .platform
        .wait_for(Duration::from_secs(120), |messages| {
            messages.iter().filter(|m| m.text == answer).count() == 60
        })
        .await;
    assert!(done, "not every reply ended with the exact answer");
    settled(&setup).await;
    assert_eq!(
        setup.platform.rate_limited(),
        (0, 0),
        "the platform had to say slow down"
    );
    assert_eq!(setup.platform.refused(), 0);
    let messages = setup.platform.all_messages();
    assert_eq!(messages.len(), 60, "one message per reply");
    for message in &messages {
        assert!(
            message.edits >= 2,
            "{} was edited {} times: every reply must stream",
            message.channel,
            message.edits
        );
    }
    // No call went out that the global limit would have refused: at most 50 in any second.
    let calls = setup.platform.calls();
    for (index, first) in calls.iter().enumerate() {
        let within = calls[index..]
            .iter()
            .take_while(|call| call.at - first.at < Duration::from_secs(1))
            .count();
        assert!(within <= 50, "{within} calls in one second");
    }
}

#[tokio::test]
async fn a_bot_wide_slow_down_slows_every_channel_and_loses_nothing() {
    // The homeserver allows less than the bot was told (1 event a second, 4 at once, against
    // the 3 a second, 6 at once of the bot's limits): its 429s lower the rate for every room.
    let fake = FakePoe::start(KEY).await.unwrap();
    let answer = "patient ".repeat(80);
    fake.script(
        "echo",
        Scenario::Text {
            text: answer.clone(),
            chunk_chars: 8,
            interval: Duration::from_millis(100),
        },
    );
    let mut limits = quick_platform().limits();
    limits.min_edit_interval = Duration::from_millis(500);
    limits.requests = Some(poe_relay::core::pacing::RequestRate {
        per_second: 3.0,
        burst: 6.0,
    });
    let platform = MemoryPlatform::new(limits);
    platform.enforce_account_rate(1.0, 4.0);
    let setup = core_with(core_config(&fake), platform);
    ask_in_many_channels(&setup, 6).await;
    let done = setup
        .platform
        .wait_for(Duration::from_secs(120), |messages| {
            messages.iter().filter(|m| m.text == answer).count() == 6
        })
        .await;
    assert!(done, "{:#?}", setup.platform.all_messages());
    settled(&setup).await;
    let (bot_wide, per_channel) = setup.platform.rate_limited();
    let calls = setup
        .platform
        .calls()
        .iter()
        .filter(|call| call.kind != CallKind::Typing)
        .count();
    assert!(
        bot_wide >= 1,
        "the homeserver's limit was never met: the test is too easy"
    );
    assert_eq!(per_channel, 0);
    // Without the adaptation 13 of 30 calls were refused here (3 a second against 1); with
    // it, a 429 halves the rate for every room at once and the rate stays under the one that
    // met the limit.
    assert!(
        bot_wide * 5 <= calls,
        "{bot_wide} of {calls} calls were refused"
    );
}

#[tokio::test]
async fn a_queued_question_shows_typing_then_a_note_that_becomes_its_answer() {
    let fake = FakePoe::start(KEY).await.unwrap();
    // About 9 s: longer than a queued question waits before its note.
    let long = "first answer ".repeat(50);
    fake.script("first", taking_its_time(&long));
    fake.script("echo", slow_text("The second answer."));
    let mut config = core_config(&fake);
    config.chat.max_concurrent_replies = 1;
    let setup = core_with(config, quick_platform());
    setup
        .store
        .update_channel_settings(&channel("busy"), |settings| {
            settings.model = Some("first".into())
        })
        .unwrap();
    let out = out(&setup.platform);
    setup
        .manager
        .handle(message("busy", "ann", "long one"), out.clone())
        .await;
    // Every reply slot is taken (there is one): this question waits.
    let waiting = message("other", "bob", "short one");
    let event = waiting.event_id.clone();
    setup.manager.handle(waiting, out.clone()).await;
    let note = shown_with(&setup.platform, "other", "Queued").await;
    assert_eq!(note.len(), 1);
    assert!(
        note[0].text.contains("writing 1 answers at once"),
        "{}",
        note[0].text
    );
    assert_eq!(note[0].reply_to.as_deref(), Some(event.as_str()));
    let calls = setup.platform.calls();
    let in_other = |call: &&poe_relay::platform::memory::Call| call.channel == channel("other");
    let first_call = calls.iter().find(in_other).unwrap();
    assert_eq!(
        first_call.kind,
        CallKind::Typing,
        "typing shows before the note"
    );
    // The note turns into the answer: no second message.
    let answered = shown_with(&setup.platform, "other", "The second answer.").await;
    settled(&setup).await;
    let answered = if answered[0].text == "The second answer." {
        answered
    } else {
        setup.platform.messages(&channel("other"))
    };
    assert_eq!(answered.len(), 1, "{answered:#?}");
    assert_eq!(answered[0].id, note[0].id);
    assert_eq!(answered[0].text, "The second answer.");
    assert!(setup.store.inflight_replies().unwrap().is_empty());
    // The first answer was not held up by any of this.
    assert_eq!(setup.platform.messages(&channel("busy"))[0].text, long);
}

#[tokio::test]
async fn a_question_behind_its_channels_answer_says_so_and_a_refusal_replaces_the_note() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let long = "still going ".repeat(50);
    fake.script("echo", taking_its_time(&long));
    let mut config = core_config(&fake);
    config.chat.max_question_chars = 40;
    let setup = core_with(config, quick_platform());
    let out = out(&setup.platform);
    setup
        .manager
        .handle(message("room", "ann", "tell me"), out.clone())
        .await;
    let too_long = message("room", "bob", &"why ".repeat(20));
    let event = too_long.event_id.clone();
    setup.manager.handle(too_long, out.clone()).await;
    let shown = shown_with(&setup.platform, "room", "Queued behind the answer").await;
    let note = shown
        .iter()
        .find(|m| m.text.contains("Queued"))
        .unwrap()
        .clone();
    assert_eq!(note.reply_to.as_deref(), Some(event.as_str()));
    // Its turn comes, and it is refused: the note says why instead.
    let refused = shown_with(&setup.platform, "room", "characters long").await;
    settled(&setup).await;
    let refused: Vec<_> = refused.iter().filter(|m| m.id == note.id).collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].text.contains("80 characters long"),
        "{}",
        refused[0].text
    );
    assert_eq!(
        setup.platform.messages(&channel("room")).len(),
        2,
        "the answer and the note, nothing more"
    );
    assert_eq!(fake.chat_requests("echo").len(), 1, "Poe was asked once");
}

#[tokio::test]
async fn live_edits_close_open_code_fences_and_the_final_edit_is_exact() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let code: String = (0..40)
        .map(|line| format!("    let x{line} = {line};\n"))
        .collect();
    let answer = format!(
        "Here it is:\n\n```rust\nfn main() {{\n{code}}}\n```\n\nAnd an open one:\n```\ntail"
    );
    fake.script(
        "echo",
        Scenario::Text {
            text: answer.clone(),
            chunk_chars: 9,
            interval: Duration::from_millis(15),
        },
    );
    let mut limits = quick_platform().limits();
    limits.marks_live = true;
    let setup = core_with(core_config(&fake), MemoryPlatform::new(limits));
    setup
        .manager
        .handle(message("code", "ann", "code please"), out(&setup.platform))
        .await;
    let messages = shown_with(&setup.platform, "code", "tail").await;
    settled(&setup).await;
    let messages = if messages[0].text == answer {
        messages
    } else {
        setup.platform.messages(&channel("code"))
    };
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].text, answer,
        "the final text is exactly the model's"
    );
    let calls: Vec<_> = setup
        .platform
        .calls()
        .into_iter()
        .filter(|call| call.kind != CallKind::Typing)
        .collect();
    let (last, live) = calls.split_last().unwrap();
    assert!(
        live.len() >= 5,
        "the answer should stream: {} calls",
        calls.len()
    );
    for call in live {
        let fences = call
            .text
            .lines()
            .filter(|line| line.starts_with("```"))
            .count();
        assert_eq!(
            fences % 2,
            0,
            "an edit showed an open fence:\n{}",
            call.text
        );
        assert!(call.live, "an intermediate call was not marked live");
    }
    assert!(!last.live, "the final edit is marked live");
    assert_eq!(last.text, answer);
}

#[tokio::test]
async fn a_room_admin_sees_the_spending_of_their_room_and_nothing_beyond() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("echo", slow_text("An answer."));
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    for (room, user) in [("mine", "ann"), ("mine", "bob"), ("theirs", "cy")] {
        setup
            .manager
            .handle(message(room, user, "a question"), out.clone())
            .await;
    }
    // Bob's question waits in his room's lane behind Ann's, so the core is
    // briefly idle between them: wait for all three charges, then settle.
    for _ in 0..400 {
        if setup.store.ledger_since(0).unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    settled(&setup).await;
    // Ann is an admin of her room only.
    let mut here = command("mine", "ann", true, "usage here");
    here.is_bot_admin = false;
    setup.manager.handle(here, out.clone()).await;
    let shown = shown_with(&setup.platform, "mine", "Spent here this period").await;
    let report = shown
        .iter()
        .find(|message| message.text.contains("Spent here"))
        .unwrap();
    assert!(report.private);
    assert!(
        report.text.contains("ann: ") && report.text.contains("bob: "),
        "{}",
        report.text
    );
    assert!(
        !report.text.contains("cy"),
        "another room's spender leaked: {}",
        report.text
    );
    // A plain member may not.
    setup
        .manager
        .handle(command("mine", "bob", false, "usage here"), out.clone())
        .await;
    shown_with(&setup.platform, "mine", "can see who spent what here").await;
}

/// Waits until the bot's reply to `event` in `channel_name` reads `text`.
async fn reply_to(
    platform: &MemoryPlatform,
    channel_name: &str,
    event: &str,
    text: &str,
) -> ShownMessage {
    let key = channel(channel_name);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = platform.messages(&key);
        if let Some(found) = shown
            .iter()
            .find(|message| message.reply_to.as_deref() == Some(event) && message.text == text)
        {
            return found.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reply `{text}` to {event} in {channel_name}: {shown:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn replies_to(platform: &MemoryPlatform, channel_name: &str, event: &str) -> Vec<ShownMessage> {
    platform
        .messages(&channel(channel_name))
        .into_iter()
        .filter(|message| message.reply_to.as_deref() == Some(event))
        .collect()
}

#[tokio::test]
async fn one_person_cannot_fill_every_reply_slot() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "echo",
        Scenario::Text {
            text: "A slow answer.".into(),
            chunk_chars: 2,
            interval: Duration::from_millis(60),
        },
    );
    let setup = core_with(core_config(&fake), quick_platform());
    let out = out(&setup.platform);
    // Ann asks in six channels at once; the default lets three wait or run.
    let mut asked = Vec::new();
    for index in 0..6 {
        let question = message(&format!("ann{index}"), "ann", "a question");
        asked.push((format!("ann{index}"), question.event_id.clone()));
        let disposition = setup.manager.handle(question, out.clone()).await;
        let expected = if index < 3 {
            Disposition::Queued
        } else {
            Disposition::Held
        };
        assert_eq!(disposition, expected, "question {index}");
    }
    // Bob is not held up by her.
    let bob = message("bob", "bob", "mine?");
    let bob_event = bob.event_id.clone();
    assert_eq!(
        setup.manager.handle(bob, out.clone()).await,
        Disposition::Queued
    );
    for (channel_name, event) in &asked[..3] {
        reply_to(&setup.platform, channel_name, event, "A slow answer.").await;
    }
    reply_to(&setup.platform, "bob", &bob_event, "A slow answer.").await;
    // The first question over the limit got one note; the rest nothing.
    let (fourth_channel, fourth) = &asked[3];
    let note = reply_to(
        &setup.platform,
        fourth_channel,
        fourth,
        "You have 3 questions waiting for an answer already. Ask again once one is answered.",
    )
    .await;
    assert!(
        note.private,
        "the note is for her only where the platform can"
    );
    for (channel_name, event) in &asked[4..] {
        assert!(replies_to(&setup.platform, channel_name, event).is_empty());
    }
    settled(&setup).await;
    // Only the taken questions reached Poe or were charged.
    assert_eq!(fake.chat_requests("echo").len(), 4);
    assert_eq!(setup.store.ledger_since(0).unwrap().len(), 4);
    // Answered, she may ask again.
    let again = message("ann0", "ann", "and now?");
    let again_event = again.event_id.clone();
    setup.manager.handle(again, out.clone()).await;
    reply_to(&setup.platform, "ann0", &again_event, "A slow answer.").await;
    // The bot's own admins are not limited.
    for index in 0..5 {
        let mut question = message(&format!("root{index}"), "root", "admin question");
        question.is_bot_admin = true;
        assert_eq!(
            setup.manager.handle(question, out.clone()).await,
            Disposition::Queued
        );
    }
}

/// Sends `speaker`'s question in `channel_name`, waits for what the bot does with it, and
/// returns the bot's replies to it.
async fn ask_and_wait(
    setup: &CoreSetup,
    channel_name: &str,
    sender: &str,
    speaker: Speaker,
) -> (Disposition, Vec<ShownMessage>) {
    let mut question = message(channel_name, sender, "what do you say to that?");
    question.speaker = speaker;
    let event = question.event_id.clone();
    let disposition = setup.manager.handle(question, out(&setup.platform)).await;
    if disposition == Disposition::Queued {
        reply_to(&setup.platform, channel_name, &event, "Well, I say this.").await;
        settled(setup).await;
    }
    (
        disposition,
        replies_to(&setup.platform, channel_name, &event),
    )
}

#[tokio::test]
async fn bots_answering_each_other_are_paused_with_one_notice_until_a_person_writes() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("echo", Scenario::text("Well, I say this."));
    let setup = core_with(core_config(&fake), quick_platform());
    const NOTICE: &str = "This looks like bots answering each other";
    // Discord says the other side is a bot.
    for turn in 0..3 {
        let (disposition, _) = ask_and_wait(&setup, "discord", "bot-b", Speaker::Bot).await;
        assert_eq!(disposition, Disposition::Queued, "turn {turn}");
    }
    let (disposition, notice) = ask_and_wait(&setup, "discord", "bot-b", Speaker::Bot).await;
    assert_eq!(disposition, Disposition::Held);
    assert_eq!(notice.len(), 1);
    assert!(notice[0].text.starts_with(NOTICE), "{}", notice[0].text);
    for _ in 0..3 {
        let (disposition, replies) = ask_and_wait(&setup, "discord", "bot-b", Speaker::Bot).await;
        assert_eq!(disposition, Disposition::Held);
        assert!(replies.is_empty(), "{replies:?}");
    }
    // A person writes (to anyone): the bots may talk again, a few turns.
    setup
        .manager
        .observe(&channel("discord"), "ann", Speaker::Person);
    let (disposition, _) = ask_and_wait(&setup, "discord", "bot-b", Speaker::Bot).await;
    assert_eq!(disposition, Disposition::Queued);

    // Matrix cannot tell: another bot replying to every answer at once is judged by speed.
    let mut dispositions = Vec::new();
    for _ in 0..7 {
        let (disposition, _) = ask_and_wait(&setup, "matrix", "@bot-b:hs", Speaker::Unknown).await;
        dispositions.push(disposition);
    }
    use Disposition::{Held, Queued};
    assert_eq!(
        dispositions,
        [Queued, Queued, Queued, Queued, Held, Held, Held]
    );
    let notices = setup
        .platform
        .messages(&channel("matrix"))
        .into_iter()
        .filter(|message| message.text.starts_with(NOTICE))
        .count();
    assert_eq!(notices, 1);
    // Someone else in the room speaks up.
    setup
        .manager
        .observe(&channel("matrix"), "@ann:hs", Speaker::Unknown);
    let (disposition, _) = ask_and_wait(&setup, "matrix", "@bot-b:hs", Speaker::Unknown).await;
    assert_eq!(disposition, Disposition::Queued);

    // A person asking again and again is never paused.
    for _ in 0..6 {
        let (disposition, _) = ask_and_wait(&setup, "people", "ann", Speaker::Person).await;
        assert_eq!(disposition, Disposition::Queued);
    }
    // Nothing held back reached Poe: 3 + 1 + 4 + 1 + 6 questions.
    assert_eq!(fake.chat_requests("echo").len(), 15);
}
