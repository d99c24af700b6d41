//! Runs the core against the in-memory platform, outside the daemon.
//!
//! `bench` measures the core under load against an in-process fake Poe and prints its
//! figures. `serve` reads messages as JSON lines on stdin and prints every platform call as
//! JSON lines on stdout; the crash test drives it as a real process it can SIGKILL.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use poe_relay::config::Config;
use poe_relay::core::manager::{Manager, Services, now_ms};
use poe_relay::core::render::split::LengthUnit;
use poe_relay::fake_poe::{FakePoe, Scenario};
use poe_relay::platform::memory::{Call, CallKind, MemoryPlatform};
use poe_relay::platform::{ChannelKey, Inbound, Invocation, Limits, MessageId, Outbound};
use poe_relay::poe::PoeClient;
use poe_relay::secret::{self, ProcessEnv, Secret};
use poe_relay::store::Store;

#[derive(Parser)]
#[command(
    name = "poe-relay-lab",
    about = "The poe-relay core on an in-memory platform"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive many concurrent conversations and print latency, edits, CPU and memory figures.
    Bench {
        #[arg(long, default_value_t = 1000)]
        conversations: usize,
        /// Tokens per second each conversation's answer streams at.
        #[arg(long, default_value_t = 20)]
        tokens_per_second: u64,
        /// Tokens per answer (a token is 4 characters here).
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// The platform's minimum time between edits of one message.
        #[arg(long, default_value_t = 1000)]
        edit_interval_ms: u64,
    },
    /// Serve messages from stdin (JSON lines) with a store on disk; print platform calls.
    Serve {
        #[arg(long)]
        store: PathBuf,
        /// The Poe base URL (a fake on 127.0.0.1 in tests). The key comes from POE_API_KEY.
        #[arg(long)]
        poe_url: String,
        #[arg(long, default_value = "echo")]
        model: String,
        /// Messages that exist on the platform from before, as JSON lines of
        /// {"channel","message","text"} (what an earlier process sent).
        #[arg(long)]
        existing: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    poe_relay::tls::install_crypto_provider();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    match args.command {
        Command::Bench {
            conversations,
            tokens_per_second,
            tokens,
            edit_interval_ms,
        } => runtime.block_on(bench(
            conversations,
            tokens_per_second,
            tokens,
            edit_interval_ms,
        )),
        Command::Serve {
            store,
            poe_url,
            model,
            existing,
        } => runtime.block_on(serve(store, poe_url, model, existing)),
    }
}

fn limits(edit_interval: Duration) -> Limits {
    Limits {
        max_message_len: 2000,
        length_unit: LengthUnit::Chars,
        min_edit_interval: edit_interval,
        min_channel_interval: Duration::from_millis(50),
        max_edits_per_message: None,
        typing_interval: Duration::from_secs(8),
        requests: None,
        marks_live: false,
    }
}

#[derive(Deserialize)]
struct InputLine {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    dump: bool,
}

#[derive(Deserialize)]
struct ExistingMessage {
    channel: String,
    message: String,
    text: String,
}

fn print_line(value: serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}

async fn serve(
    store_path: PathBuf,
    poe_url: String,
    model: String,
    existing: Option<PathBuf>,
) -> Result<()> {
    let key = secret::read_required(&ProcessEnv, "POE_API_KEY")?;
    let store = Store::open(&store_path)?;
    let mut config = Config::default();
    config.poe.base_url = poe_url.clone();
    config.poe.upload_url = format!("{poe_url}/poe_api/file_upload_3RD_PARTY_POST");
    config.chat.default_model = model;
    config.budget.reconcile_after_secs = 0;
    let poe = PoeClient::new(config.poe.clone(), key)?;
    let observer = Arc::new(|call: &Call| {
        let kind = match call.kind {
            CallKind::Send => "send",
            CallKind::Edit => "edit",
            CallKind::Typing => "typing",
        };
        print_line(json!({
            "call": kind,
            "channel": call.channel.channel,
            "message": call.message.as_ref().map(|id| id.0.clone()),
            "text": call.text,
            "accepted": call.accepted,
        }));
    });
    let platform = MemoryPlatform::new(limits(Duration::from_millis(100)))
        .with_id_prefix(&format!("p{}-", std::process::id()))
        .with_observer(observer);
    if let Some(path) = existing {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let message: ExistingMessage = serde_json::from_str(line)?;
            platform.adopt(
                &ChannelKey::new("memory", &message.channel),
                MessageId(message.message),
                &message.text,
            );
        }
    }
    let out: Arc<dyn Outbound> = Arc::new(platform.clone());
    let manager = Manager::new(Services::new(config, poe, store.clone()));
    let platforms = HashMap::from([("memory".to_owned(), out.clone())]);
    let recovered = manager.recover(&platforms).await;
    print_line(json!({"ready": true, "recovered": recovered}));

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let input: InputLine = match serde_json::from_str(&line) {
            Ok(input) => input,
            Err(err) => {
                print_line(json!({"error": format!("not a message: {err}")}));
                continue;
            }
        };
        if input.dump {
            let channels: std::collections::BTreeSet<ChannelKey> = platform
                .all_messages()
                .iter()
                .map(|message| message.channel.clone())
                .collect();
            let mut turns = Vec::new();
            for channel in &channels {
                for turn in store.all_turns(channel)? {
                    turns.push(json!({"channel": channel.channel, "role": format!("{:?}", turn.role), "text": turn.text}));
                }
            }
            let ledger: Vec<_> = store
                .ledger_since(0)?
                .iter()
                .map(|entry| json!({"id": entry.id, "state": format!("{:?}", entry.state), "charge": entry.charge(), "reserved": entry.reserved}))
                .collect();
            print_line(
                json!({"dump": {"turns": turns, "ledger": ledger, "inflight": store.inflight_replies()?.len()}}),
            );
            continue;
        }
        let inbound = Inbound {
            channel: ChannelKey::new("memory", &input.channel),
            user_id: input.user.clone(),
            user_name: input.user,
            is_admin: false,
            is_bot_admin: false,
            is_group: false,
            invocation: Invocation::Message,
            text: input.text,
            attachments: Vec::new(),
            event_id: input.event,
            timestamp_ms: now_ms(),
        };
        manager.handle(inbound, out.clone()).await;
    }
    store.flush().await?;
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn bench(
    conversations: usize,
    tokens_per_second: u64,
    tokens: usize,
    edit_interval_ms: u64,
) -> Result<()> {
    let key = "bench-key-0123456789abcdef012345";
    let fake = FakePoe::start(key).await?;
    fake.record_timing();
    let interval = Duration::from_micros(1_000_000 / tokens_per_second.max(1));
    let mut answers = Vec::with_capacity(conversations);
    for index in 0..conversations {
        // Four-character tokens, distinct per conversation, so nothing can be mixed up.
        let answer: String = (0..tokens)
            .map(|token| {
                let separator = if token % 12 == 11 { '\n' } else { ' ' };
                format!("{:03x}{separator}", (index * 7 + token) % 4096)
            })
            .collect();
        fake.script(
            &format!("bench-{index}"),
            Scenario::Text {
                text: answer.clone(),
                chunk_chars: 4,
                interval,
            },
        );
        answers.push(answer);
    }
    let mut config = Config::default();
    config.poe = poe_relay::config::PoeConfig {
        base_url: fake.base_url(),
        upload_url: fake.upload_url(),
        requests_per_minute: 1_000_000,
        ..Default::default()
    };
    config.chat.max_concurrent_replies = conversations.max(1);
    config.budget.default_points = i64::MAX / 4;
    let store_dir = tempfile_dir()?;
    let store = Store::open(&store_dir)?;
    let poe = PoeClient::new(config.poe.clone(), Secret::new(key))?;
    let manager = Manager::new(Services::new(config, poe, store.clone()));
    let platform = MemoryPlatform::new(limits(Duration::from_millis(edit_interval_ms)));
    let out: Arc<dyn Outbound> = Arc::new(platform.clone());
    for index in 0..conversations {
        store.update_channel_settings(
            &ChannelKey::new("memory", &format!("c{index}")),
            |settings| {
                settings.model = Some(format!("bench-{index}"));
            },
        )?;
    }

    eprintln!(
        "poe-relay-lab bench: {conversations} conversations × {tokens} tokens at {tokens_per_second} tokens/s, edit interval {edit_interval_ms} ms"
    );
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for index in 0..conversations {
        let inbound = Inbound {
            channel: ChannelKey::new("memory", &format!("c{index}")),
            user_id: format!("u{index}"),
            user_name: format!("user {index}"),
            is_admin: false,
            is_bot_admin: false,
            is_group: false,
            invocation: Invocation::Message,
            text: "go".into(),
            attachments: Vec::new(),
            event_id: format!("e{index}"),
            timestamp_ms: now_ms(),
        };
        manager.handle(inbound, out.clone()).await;
    }
    let expected: HashMap<ChannelKey, &String> = answers
        .iter()
        .enumerate()
        .map(|(index, answer)| (ChannelKey::new("memory", &format!("c{index}")), answer))
        .collect();
    let done = platform
        .wait_for(Duration::from_secs(600), |messages| {
            let mut complete = 0;
            for message in messages {
                if expected
                    .get(&message.channel)
                    .is_some_and(|answer| **answer == message.text)
                {
                    complete += 1;
                }
            }
            complete == conversations
        })
        .await;
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;

    // Token-to-visible: when each piece of text left the fake, until a call showing it landed.
    let sent = fake.sent_text();
    let calls = platform.calls();
    let mut shown: HashMap<&str, Vec<(Instant, usize)>> = HashMap::new();
    for call in calls
        .iter()
        .filter(|call| call.accepted && call.kind != CallKind::Typing)
    {
        shown
            .entry(call.channel.channel.as_str())
            .or_default()
            .push((call.at.into_std(), call.text.chars().count()));
    }
    let mut latencies = Vec::with_capacity(sent.len());
    let mut first_message = Vec::with_capacity(conversations);
    let mut never_shown = 0;
    for piece in &sent {
        let index = piece.model.trim_start_matches("bench-");
        let channel = format!("c{index}");
        let Some(visible) = shown.get(channel.as_str()) else {
            never_shown += 1;
            continue;
        };
        match visible
            .iter()
            .find(|(at, chars)| *chars >= piece.chars && *at >= piece.at)
        {
            Some((at, _)) => latencies.push(*at - piece.at),
            None => never_shown += 1,
        }
        if piece.chars == 4
            && let Some((at, _)) = visible.first()
        {
            first_message.push(at.saturating_duration_since(piece.at));
        }
    }
    latencies.sort();
    first_message.sort();
    let messages = platform.all_messages();
    let edits: u32 = messages.iter().map(|message| message.edits).sum();
    let mut wrong_chars = 0usize;
    for message in &messages {
        if let Some(answer) = expected.get(&message.channel) {
            let shown: Vec<char> = message.text.chars().collect();
            let want: Vec<char> = answer.chars().collect();
            let same = shown.iter().zip(&want).take_while(|(a, b)| a == b).count();
            wrong_chars += (shown.len() - same) + (want.len() - same);
        }
    }
    let total_tokens = (conversations * tokens) as f64;
    println!(
        "conversations:                 {conversations} ({})",
        if done {
            "all complete"
        } else {
            "NOT all complete"
        }
    );
    println!("wall time:                     {:.1} s", wall.as_secs_f64());
    println!(
        "token-to-visible p50:          {} ms",
        percentile(&latencies, 0.50).as_millis()
    );
    println!(
        "token-to-visible p99:          {} ms (target: edit interval {edit_interval_ms} ms + 50 ms)",
        percentile(&latencies, 0.99).as_millis()
    );
    println!(
        "token-to-visible max:          {} ms",
        latencies.last().copied().unwrap_or_default().as_millis()
    );
    println!(
        "first token to first message:  p50 {} ms, p99 {} ms",
        percentile(&first_message, 0.5).as_millis(),
        percentile(&first_message, 0.99).as_millis()
    );
    println!(
        "edits per message:             {:.1}",
        f64::from(edits) / messages.len().max(1) as f64
    );
    println!(
        "CPU per 1,000 tokens:          {:.1} ms (whole process, fake Poe included)",
        cpu * 1000.0 / (total_tokens / 1000.0)
    );
    println!(
        "peak RSS:                      {:.0} MB (whole process, fake Poe included)",
        peak_rss_mb()
    );
    println!("tokens never shown:            {never_shown}");
    println!("lost or duplicated characters: {wrong_chars}");
    let _ = std::fs::remove_dir_all(&store_dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("poe-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
