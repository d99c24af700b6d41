//! poe-relay as a service, end to end with the real binary (on the fake Discord and the fake
//! Poe): the HTTP endpoint scraped during a streamed conversation, a graceful stop that lets a
//! short reply finish and ends a long one, a second signal that exits at once, and the
//! per-turn log line.

mod support;

use std::time::Duration;

use poe_relay::fake_poe::Scenario;
use poe_relay::store::{LedgerState, Store};
use serde_json::{Value, json};

use support::discord_world::*;
use support::fake_discord::IncomingCommand;

/// The bot's log line with `addr=` for the HTTP endpoint, as a base URL.
fn endpoint(world: &World) -> String {
    let log = world.bot.log();
    let line = log
        .lines()
        .find(|line| line.contains("serving /healthz"))
        .expect("the endpoint was started");
    let addr = match serde_json::from_str::<Value>(line) {
        Ok(json) => json["addr"].as_str().expect("its address").to_owned(),
        Err(_) => line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .expect("its address")
            .to_owned(),
    };
    format!("http://{addr}")
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The value of the first sample of `series` (name with labels, as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Two channels: `echo` answers in CHANNEL, a slower model (set by root) in OTHER_CHANNEL.
async fn world_with_two_models() -> World {
    world_with_two_models_and(&[]).await
}

/// [`world_with_two_models`] with more environment for the bot.
async fn world_with_two_models_and(env: &[(&str, &str)]) -> World {
    let mut vars = vec![("POE_RELAY__LOG__FILTER", "info")];
    vars.extend_from_slice(env);
    let world = World::start_full(
        "",
        "[service]\nshutdown_grace_secs = 4\nhttp_enabled = true\nhttp_listen = \"127.0.0.1:0\"\n",
        // The default log level, so the test sees what operators see.
        &vars,
    )
    .await;
    let id = world
        .slash(
            IncomingCommand::new(
                OTHER_CHANNEL,
                root(),
                "poe",
                options(
                    "model",
                    json!([{"type": 3, "name": "name", "value": "Claude-Sonnet-4.6"}]),
                ),
            )
            .in_guild(GUILD, 0),
        )
        .await;
    assert!(world.slash_answer(id).0.contains("Claude-Sonnet-4.6"));
    world
}

#[tokio::test]
async fn the_endpoint_reports_a_conversation_and_a_stop_lets_short_replies_finish() {
    // The short answer must still be streaming when the stop comes, however slow the
    // machine is in getting there, and must then fit in the grace period.
    let mut world =
        world_with_two_models_and(&[("POE_RELAY__SERVICE__SHUTDOWN_GRACE_SECS", "12")]).await;
    let base = endpoint(&world);
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["platforms"]["discord"], "connected");
    assert_eq!(ready["store"], "ok");

    // A short answer (about 6 s) and a long one (about 60 s), streaming at once.
    let short: String = (1..=75).map(|n| format!("short{n} ")).collect();
    let short = short.trim_end().to_owned();
    let long = "word ".repeat(600);
    world.poe.script("echo", streamed(&short, 10, 100));
    world
        .poe
        .script("Claude-Sonnet-4.6", streamed(&long, 5, 100));
    let asked_short = world.mention(CHANNEL, alice(), "a short one");
    let asked_long = world.mention(OTHER_CHANNEL, bob(), "tell me a long story");
    world
        .discord
        .wait_for_within(WAIT, "both answers to stream", |fake| {
            let short = answer_in(fake, CHANNEL, asked_short);
            let long = answer_in(fake, OTHER_CHANNEL, asked_long);
            (!short.is_empty() && long.first()?.edits() >= 1).then_some(())
        })
        .await;
    // A question waiting behind the long answer in its channel.
    let queued = world.mention(OTHER_CHANNEL, alice(), "and another");

    // Scraped mid-stream: two conversations running, edits counted.
    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "poe_relay_active_conversations"),
        Some(2.0),
        "{metrics}"
    );
    // The queued question reaches the manager a moment after its dispatch.
    let mut metrics = metrics;
    for _ in 0..50 {
        if sample(&metrics, "poe_relay_queue_depth") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = get(&format!("{base}/metrics")).await.1;
    }
    assert_eq!(
        sample(&metrics, "poe_relay_queue_depth"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "poe_relay_points_total{stage=\"reserved\",model=\"echo\"}"
        )
        .is_some_and(|points| points > 0.0),
        "{metrics}"
    );

    // Stop: the short answer finishes in full, the long one ends with a note at the
    // 12 s deadline, and the process exits 0.
    world.bot.signal("TERM");
    // Draining: not ready any more, and it says why.
    let mut readiness = (0, String::new());
    for _ in 0..50 {
        readiness = get(&format!("{base}/readyz")).await;
        if readiness.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readiness.0, 503, "{}", readiness.1);
    let body: Value = serde_json::from_str(&readiness.1).expect("JSON");
    assert_eq!(body["stopping"], true);
    world.wait_answer(CHANNEL, asked_short, &short).await;
    let ended = world
        .discord
        .wait_for_within(WAIT, "the long answer to be ended", |fake| {
            let message = answer_in(fake, OTHER_CHANNEL, asked_long).last()?.clone();
            message
                .content
                .contains("the bot is restarting")
                .then_some(message)
        })
        .await;
    assert!(
        ended.content.starts_with("word word"),
        "the partial text was kept: {}",
        ended.content
    );
    // The question still waiting is told to ask again, not dropped in silence.
    world
        .discord
        .wait_for_within(WAIT, "the queued question's notice", |fake| {
            let notice = answer_in(fake, OTHER_CHANNEL, queued).first()?.clone();
            notice.content.contains("did not get to this").then_some(())
        })
        .await;
    let status = world.bot.wait_for_exit(WAIT).await;
    assert!(status.success(), "{status}\n{}", world.bot.log());

    // The store: nothing left reserved or in flight.
    let store = Store::open(&world.dir.path().join("store")).expect("the store opens");
    assert!(store.inflight_replies().expect("readable").is_empty());
    let ledger = store.ledger_since(0).expect("readable");
    assert_eq!(ledger.len(), 2, "{ledger:#?}");
    assert!(
        ledger
            .iter()
            .all(|entry| entry.state != LedgerState::Reserved),
        "{ledger:#?}"
    );
    let long_entry = ledger
        .iter()
        .find(|entry| entry.model == "Claude-Sonnet-4.6")
        .expect("the long request");
    assert_eq!(long_entry.state, LedgerState::Released);

    // One line per turn, with the outcome and no message text at the default level.
    let log = world.bot.log();
    let turns: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("conversation turn"))
        .collect();
    assert_eq!(turns.len(), 2, "{log}");
    assert!(
        turns.iter().any(|line| line.contains("outcome=ok")),
        "{log}"
    );
    assert!(
        turns
            .iter()
            .any(|line| line.contains("outcome=interrupted")),
        "{log}"
    );
    for line in &turns {
        for field in [
            "channel=",
            "user=",
            "model=",
            "tokens=",
            "points_settled=",
            "duration_ms=",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }
    for text in [
        "a short one",
        "tell me a long story",
        "and another",
        "short1",
        "word word",
    ] {
        assert!(
            !log.contains(text),
            "message text {text:?} in the log:\n{log}"
        );
    }
    assert!(log.contains("in_flight=2 interrupted=1"), "{log}");
}

#[tokio::test]
async fn the_metrics_add_up_and_the_turn_is_logged_as_json() {
    let world = world_with_two_models_and(&[("POE_RELAY__LOG__FORMAT", "json")]).await;
    let base = endpoint(&world);
    world
        .poe
        .script("echo", streamed("one two three four", 5, 100));
    let asked = world.mention(CHANNEL, alice(), "count");
    world
        .wait_answer(CHANNEL, asked, "one two three four")
        .await;
    // The turn is recorded after the final edit; poll until it shows.
    let mut text = String::new();
    for _ in 0..50 {
        text = get(&format!("{base}/metrics")).await.1;
        if text.contains("outcome=\"ok\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(
            &text,
            "poe_relay_requests_total{model=\"echo\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "poe_relay_time_to_first_token_seconds_count{model=\"echo\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "poe_relay_reply_duration_seconds_count{model=\"echo\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(&text, "poe_relay_tokens_streamed_total{model=\"echo\"}").is_some_and(|n| n > 0.0)
    );
    assert!(sample(&text, "poe_relay_edits_total{platform=\"discord\"}").is_some());
    assert!(
        sample(
            &text,
            "poe_relay_points_total{stage=\"settled\",model=\"echo\"}"
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(sample(&text, "poe_relay_active_conversations"), Some(0.0));
    // Every call drew from the bot's Discord budget: counted by kind, its waits timed, its
    // level shown.
    let sends = sample(
        &text,
        "poe_relay_platform_requests_total{platform=\"discord\",kind=\"send\"}",
    );
    assert!(sends.is_some_and(|n| n >= 1.0), "{text}");
    let edits = sample(
        &text,
        "poe_relay_platform_requests_total{platform=\"discord\",kind=\"edit\"}",
    );
    assert!(edits.is_some_and(|n| n >= 1.0), "{text}");
    let waits = sample(
        &text,
        "poe_relay_platform_budget_wait_seconds_count{platform=\"discord\"}",
    );
    // The slash command's answer went through its interaction webhook, which Discord's
    // global limit leaves out; every other send and edit drew from the budget.
    assert_eq!(
        waits,
        Some(sends.unwrap_or(0.0) + edits.unwrap_or(0.0) - 1.0),
        "{text}"
    );
    let level = sample(
        &text,
        "poe_relay_platform_budget_tokens{platform=\"discord\"}",
    );
    assert!(level.is_some_and(|n| (0.0..=5.0).contains(&n)), "{text}");
    assert_eq!(
        sample(
            &text,
            "poe_relay_platform_budget_rate{platform=\"discord\"}"
        ),
        Some(40.0)
    );
    assert!(
        !text.contains("poe_relay_platform_rate_limited_total{"),
        "no 429s in normal use: {text}"
    );

    // The turn's log line, as JSON: every field a collector needs, and no message text.
    let log = world.bot.log();
    let turn: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "conversation turn")
        .unwrap_or_else(|| panic!("no JSON turn line in:\n{log}"));
    assert_eq!(turn["model"], "echo");
    assert_eq!(turn["outcome"], "ok");
    assert_eq!(turn["channel"], format!("discord:{CHANNEL}"));
    assert_eq!(turn["user"], format!("discord:{}", alice().id));
    for field in [
        "tokens",
        "points_reserved",
        "points_settled",
        "duration_ms",
        "edits",
    ] {
        assert!(turn[field].is_number(), "{field} in {turn}");
    }
    assert!(
        !log.contains("one two three four"),
        "the answer is in the log"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_the_next_start_cleans_up() {
    let mut world = world_with_two_models().await;
    world
        .poe
        .script("Claude-Sonnet-4.6", streamed(&"word ".repeat(600), 5, 100));
    let asked = world.mention(OTHER_CHANNEL, bob(), "tell me a long story");
    world
        .discord
        .wait_for_within(WAIT, "the answer to stream", |fake| {
            (answer_in(fake, OTHER_CHANNEL, asked).first()?.edits() >= 1).then_some(())
        })
        .await;
    world.bot.signal("TERM");
    world
        .bot
        .wait_for_log("a second signal exits at once", 1, WAIT)
        .await;
    world.bot.signal("TERM");
    let status = world.bot.wait_for_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130), "{}", world.bot.log());
    assert!(world.bot.log().contains("second signal: exiting at once"));

    // The store is whole, and the next start closes the reply the exit left open.
    world.restart(2).await;
    world
        .discord
        .wait_for_within(WAIT, "the interrupted answer to say so", |fake| {
            let message = answer_in(fake, OTHER_CHANNEL, asked).last()?.clone();
            message.content.contains("interrupted").then_some(())
        })
        .await;
    let answers = world
        .discord
        .bot_messages(OTHER_CHANNEL)
        .iter()
        .filter(|message| message.reference == Some(asked))
        .count();
    assert_eq!(answers, 1);
    world.assert_clean();
}

#[tokio::test]
async fn the_poe_client_retries_are_counted_by_cause() {
    let world = world_with_two_models().await;
    let base = endpoint(&world);
    world.poe.script(
        "echo",
        Scenario::Sequence(vec![
            Scenario::status(503, "unavailable", "overloaded", "try later"),
            Scenario::text("Recovered."),
        ]),
    );
    let asked = world.mention(CHANNEL, alice(), "again");
    world.wait_answer(CHANNEL, asked, "Recovered.").await;
    let mut text = String::new();
    for _ in 0..50 {
        text = get(&format!("{base}/metrics")).await.1;
        if text.contains("poe_relay_poe_retries_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&text, "poe_relay_poe_retries_total{cause=\"unavailable\"}"),
        Some(1.0),
        "{text}"
    );
}

/// A start-up that hangs (Discord's API accepts the connection and never answers): `/readyz`
/// says which part is not up, and SIGTERM still stops the daemon, promptly and cleanly.
#[tokio::test]
async fn a_signal_during_a_hung_start_up_stops_the_daemon() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (accepted, mut connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted.send(());
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("poe-relay.toml");
    std::fs::write(
        &config,
        format!(
            "[poe]\nbase_url = \"http://127.0.0.1:9\"\n[store]\npath = \"{}\"\n[discord]\nenabled = true\napi_base = \"http://127.0.0.1:{port}\"\ngateway_url = \"ws://127.0.0.1:{port}/gateway\"\n[service]\nhttp_enabled = true\nhttp_listen = \"127.0.0.1:0\"\n",
            dir.path().join("store").display()
        ),
    )
    .expect("config");
    let mut bot = support::bot_process::BotProcess::start(
        &config,
        &[
            ("POE_API_KEY", support::KEY),
            ("DISCORD_TOKEN", "a-token-for-nobody"),
        ],
        &dir.path().join("bot.log"),
    );
    tokio::time::timeout(WAIT, connections.recv())
        .await
        .expect("the bot to call the API");
    let log = bot.log();
    let addr = log
        .lines()
        .find(|line| line.contains("serving /healthz"))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
        })
        .unwrap_or_else(|| panic!("no endpoint in:\n{log}"))
        .to_owned();
    let (status, body) = get(&format!("http://{addr}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["platforms"]["discord"], "disconnected", "{body}");
    assert_eq!(body["store"], "ok");
    assert_eq!(get(&format!("http://{addr}/healthz")).await.0, 200);
    bot.signal("TERM");
    let status = bot.wait_for_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", bot.log());
    assert!(
        bot.log().contains("stopping during start-up"),
        "{}",
        bot.log()
    );
}
