//! `bench`: many conversations through the manager, the renderer and the pacing, on the
//! in-memory platform with a real platform's limits, against a fake Poe in another process.
//!
//! Every platform call is recorded (time, conversation, length); the fake Poe reports when
//! each piece of text left it. From the two come the figures: token-to-visible latency, how
//! fairly it is spread over conversations, last token to final text, edits per message,
//! 429s, how busy the platform budget was while calls waited, whether any conversation
//! waited longer for its first text than its share of the budget explains, and the daemon
//! side's CPU and memory (the fake Poe's are reported apart).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::time::Instant;

use super::bench_poe::{self, KEY};
use super::{PlatformModel, cpu_seconds, limits, memory_kb, unix_us};
use poe_relay::config::Config;
use poe_relay::core::boundary::{ChannelKey, Inbound, Invocation, Outbound};
use poe_relay::core::manager::Manager;
use poe_relay::core::services::{Services, now_ms};
use poe_relay::platform::memory::{Call, CallKind, MemoryPlatform};
use poe_relay::poe::PoeClient;
use poe_relay::secret::Secret;
use poe_relay::store::Store;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Tokens per second each conversation's answer streams at.
    #[arg(long, default_value_t = 20)]
    tokens_per_second: u64,
    /// Tokens per answer (a token is 4 characters here).
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// The least time between two edits of a message, on the `unlimited` platform (the
    /// others keep their adapter's).
    #[arg(long, default_value_t = 1000)]
    edit_interval_ms: u64,
    /// Whose limits the platform keeps.
    #[arg(long, value_enum, default_value_t = PlatformModel::Unlimited)]
    platform: PlatformModel,
    /// Spread the conversations' starts evenly over this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    arrival_secs: f64,
}

/// One platform call, as the bench keeps it.
#[derive(Clone, Copy)]
struct Shot {
    at_us: i64,
    conversation: usize,
    chars: usize,
    kind: CallKind,
    accepted: bool,
}

/// The fake Poe's process; killed if the bench ends early.
struct FakePoeProcess {
    child: Child,
    output: BufReader<ChildStdout>,
}

impl Drop for FakePoeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fake Poe reported at the end.
struct FakePoeReport {
    /// (conversation, characters sent so far, when) for each piece of text.
    pieces: Vec<(usize, usize, i64)>,
    cpu_seconds: f64,
    peak_rss_kb: f64,
}

fn start_fake_poe(options: &Options) -> Result<(FakePoeProcess, String)> {
    let exe = std::env::current_exe().context("cannot find this program to start the fake Poe")?;
    let mut child = Command::new(exe)
        .args([
            "bench-poe",
            "--conversations",
            &options.conversations.to_string(),
            "--tokens",
            &options.tokens.to_string(),
            "--tokens-per-second",
            &options.tokens_per_second.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the fake Poe")?;
    let stdout = child.stdout.take().context("no output from the fake Poe")?;
    let mut process = FakePoeProcess {
        child,
        output: BufReader::new(stdout),
    };
    let mut url = String::new();
    process
        .output
        .read_line(&mut url)
        .context("the fake Poe did not start")?;
    if !url.starts_with("http://127.0.0.1:") {
        bail!("the fake Poe said {url:?} instead of its address");
    }
    Ok((process, url.trim().to_owned()))
}

/// Closes the fake's input and reads its report.
fn finish_fake_poe(mut process: FakePoeProcess) -> Result<FakePoeReport> {
    drop(process.child.stdin.take());
    let mut report = FakePoeReport {
        pieces: Vec::new(),
        cpu_seconds: 0.0,
        peak_rss_kb: 0.0,
    };
    for line in (&mut process.output).lines() {
        let line = line.context("cannot read the fake Poe's report")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["done", cpu, rss] => {
                report.cpu_seconds = cpu.parse().unwrap_or(0.0);
                report.peak_rss_kb = rss.parse().unwrap_or(0.0);
            }
            [index, chars, at] => {
                if let (Ok(index), Ok(chars), Ok(at)) = (index.parse(), chars.parse(), at.parse()) {
                    report.pieces.push((index, chars, at));
                }
            }
            _ => {}
        }
    }
    let _ = process.child.wait();
    Ok(report)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn us(micros: i64) -> Duration {
    Duration::from_micros(micros.max(0) as u64)
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

fn platform_for(options: &Options) -> MemoryPlatform {
    match options.platform {
        PlatformModel::Unlimited => {
            MemoryPlatform::new(limits(Duration::from_millis(options.edit_interval_ms)))
        }
        PlatformModel::Discord => MemoryPlatform::discord(),
        PlatformModel::SynapseDefault => MemoryPlatform::synapse_default(),
    }
}

pub async fn run(options: Options) -> Result<()> {
    let conversations = options.conversations.max(1);
    let (fake, base_url) = start_fake_poe(&options)?;
    let answers: Vec<String> = (0..conversations)
        .map(|index| bench_poe::answer(index, options.tokens))
        .collect();

    let mut config = Config::default();
    config.poe = poe_relay::config::PoeConfig {
        base_url: base_url.clone(),
        upload_url: format!("{base_url}/poe_api/file_upload_3RD_PARTY_POST"),
        requests_per_minute: 1_000_000,
        ..Default::default()
    };
    config.chat.max_concurrent_replies = conversations;
    config.budget.default_points = i64::MAX / 4;
    let store_dir = std::env::temp_dir().join(format!("poe-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&store_dir)?;
    let store = Store::open(&store_dir)?;
    let poe = PoeClient::new(config.poe.clone(), Secret::new(KEY))?;
    let manager = Manager::new(Services::new(config, poe, store.clone()));

    // Calls are kept small: the bench's own records must not count as the daemon's memory.
    let shots: Arc<Mutex<Vec<Shot>>> = Arc::default();
    let (reference, reference_unix) = (std::time::Instant::now(), SystemTime::now());
    let unix_of = move |at: Instant| {
        unix_us(reference_unix + at.into_std().saturating_duration_since(reference))
    };
    let recorder = shots.clone();
    let platform = platform_for(&options)
        .forgetting_calls()
        .with_observer(Arc::new(move |call: &Call| {
            let conversation = call
                .channel
                .channel
                .trim_start_matches('c')
                .parse()
                .unwrap_or(usize::MAX);
            let shot = Shot {
                at_us: unix_of(call.at),
                conversation,
                chars: call.text.chars().count(),
                kind: call.kind,
                accepted: call.accepted,
            };
            recorder
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(shot);
        }));
    let out: Arc<dyn Outbound> = Arc::new(platform.clone());
    for index in 0..conversations {
        store.update_channel_settings(
            &ChannelKey::new("memory", &format!("c{index}")),
            |settings| settings.model = Some(format!("bench-{index}")),
        )?;
    }
    let rate = out.limits().requests.map(|rate| rate.per_second);

    eprintln!(
        "poe-relay-lab bench: {conversations} conversations × {} tokens at {} tokens/s on the {:?} platform, arriving over {} s",
        options.tokens, options.tokens_per_second, options.platform, options.arrival_secs
    );
    let baseline_rss_kb = memory_kb("VmRSS:");
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let mut asked_us = Vec::with_capacity(conversations);
    for index in 0..conversations {
        if options.arrival_secs > 0.0 {
            let offset = options.arrival_secs * index as f64 / conversations as f64;
            tokio::time::sleep_until(started + Duration::from_secs_f64(offset)).await;
        }
        asked_us.push(unix_us(SystemTime::now()));
        let inbound = Inbound {
            channel: ChannelKey::new("memory", &format!("c{index}")),
            user_id: format!("u{index}"),
            user_name: format!("user {index}"),
            speaker: poe_relay::core::boundary::Speaker::Person,
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
    let deadline = Instant::now() + Duration::from_secs(3600);
    let complete = loop {
        let complete = platform
            .all_messages()
            .iter()
            .filter(|message| {
                expected
                    .get(&message.channel)
                    .is_some_and(|answer| **answer == message.text)
            })
            .count();
        if complete == conversations || Instant::now() >= deadline {
            break complete;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let wall = started.elapsed();
    let cpu = cpu_seconds("self") - cpu_before;
    let peak_rss_kb = memory_kb("VmHWM:");
    let busy = manager.pacing().busy_stats("memory");
    let (limited_bot, limited_channel) = platform.rate_limited();
    let poe = finish_fake_poe(fake)?;

    // Each conversation's accepted calls (typing aside), in time order.
    let mut shown: Vec<Vec<Shot>> = vec![Vec::new(); conversations];
    let all_shots = shots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    for shot in &all_shots {
        if shot.accepted && shot.kind != CallKind::Typing && shot.conversation < conversations {
            shown[shot.conversation].push(*shot);
        }
    }
    for calls in &mut shown {
        calls.sort_by_key(|shot| shot.at_us);
    }
    let mut pieces: Vec<Vec<(usize, i64)>> = vec![Vec::new(); conversations];
    for (index, chars, at) in &poe.pieces {
        if let Some(list) = pieces.get_mut(*index) {
            list.push((*chars, *at));
        }
    }

    // Token-to-visible: when a piece left the fake, until a call showing it landed.
    let mut latencies = Vec::new();
    let mut per_conversation: Vec<Vec<Duration>> = vec![Vec::new(); conversations];
    let mut never_shown = 0;
    let mut last_to_final = Vec::new();
    let mut first_text = Vec::with_capacity(conversations);
    for index in 0..conversations {
        let calls = &shown[index];
        let mut next = 0;
        for (chars, at) in &pieces[index] {
            while next < calls.len() && (calls[next].at_us < *at || calls[next].chars < *chars) {
                next += 1;
            }
            match calls.get(next) {
                Some(call) => {
                    let latency = us(call.at_us - at);
                    latencies.push(latency);
                    per_conversation[index].push(latency);
                }
                None => never_shown += 1,
            }
        }
        let total = answers[index].chars().count();
        if let (Some((_, last_at)), Some(final_call)) = (
            pieces[index].last(),
            calls.iter().find(|call| call.chars >= total),
        ) {
            last_to_final.push(us(final_call.at_us - last_at));
        }
        if let Some(first) = calls.first() {
            first_text.push((index, first.at_us - asked_us[index]));
        }
    }
    latencies.sort();
    last_to_final.sort();

    // Fairness: the slowest tenth of conversations (by their own p99) against the median.
    let mut by_p99: Vec<(Duration, usize)> = per_conversation
        .iter_mut()
        .enumerate()
        .filter(|(_, list)| !list.is_empty())
        .map(|(index, list)| {
            list.sort();
            (percentile(list, 0.99), index)
        })
        .collect();
    by_p99.sort();
    let median_p99 = by_p99
        .get(by_p99.len() / 2)
        .map(|(p99, _)| *p99)
        .unwrap_or_default();
    let slowest_tenth = by_p99.len().div_ceil(10);
    let mut slow: Vec<Duration> = by_p99[by_p99.len() - slowest_tenth..]
        .iter()
        .flat_map(|(_, index)| per_conversation[*index].iter().copied())
        .collect();
    slow.sort();
    let slow_p99 = percentile(&slow, 0.99);

    // Peak concurrency, from asking to the final text.
    let mut events: Vec<(i64, i32)> = Vec::new();
    for index in 0..conversations {
        let total = answers[index].chars().count();
        if let Some(done) = shown[index].iter().find(|call| call.chars >= total) {
            events.push((asked_us[index], 1));
            events.push((done.at_us, -1));
        }
    }
    events.sort();
    let (mut active, mut peak_active) = (0i32, 0i32);
    let mut sharing = vec![0usize; conversations];
    for (_, change) in &events {
        active += change;
        peak_active = peak_active.max(active);
    }
    // How many shared the budget while each conversation waited for its first text (in
    // flight at some point between its asking and its first text, itself included): its
    // share of the budget is the budget divided by that many.
    let done_us: Vec<i64> = (0..conversations)
        .map(|index| {
            let total = answers[index].chars().count();
            shown[index]
                .iter()
                .find(|call| call.chars >= total)
                .map_or(i64::MAX, |done| done.at_us)
        })
        .collect();
    for (index, first) in &first_text {
        let (asked, first_at) = (asked_us[*index], asked_us[*index] + first);
        sharing[*index] = (0..conversations)
            .filter(|other| asked_us[*other] <= first_at && done_us[*other] > asked)
            .count();
    }
    let starved = rate.map(|rate| {
        first_text
            .iter()
            .filter(|(index, waited)| {
                let share = Duration::from_secs_f64(sharing[*index] as f64 / rate);
                us(*waited) > share + Duration::from_secs(1)
            })
            .count()
    });
    let mut first_waits: Vec<Duration> = first_text.iter().map(|(_, waited)| us(*waited)).collect();
    first_waits.sort();

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
    let total_tokens = (conversations * options.tokens) as f64;
    let per_thousand = |seconds: f64| seconds * 1000.0 / (total_tokens / 1000.0);
    let grown_kb = (peak_rss_kb - baseline_rss_kb).max(0.0);

    let mut out = std::io::stdout().lock();
    let status = if complete == conversations {
        "all complete"
    } else {
        "NOT all complete"
    };
    writeln!(
        out,
        "conversations:                 {conversations} ({status}), at most {peak_active} at once"
    )?;
    writeln!(
        out,
        "wall time:                     {:.1} s",
        wall.as_secs_f64()
    )?;
    writeln!(
        out,
        "platform 429s:                 {} ({limited_bot} for the whole bot, {limited_channel} for a channel)",
        limited_bot + limited_channel
    )?;
    writeln!(
        out,
        "token-to-visible:              p50 {} ms, p99 {} ms, max {} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    )?;
    writeln!(
        out,
        "fairness:                      p99 of the slowest tenth {} ms, the median conversation's p99 {} ms ({:.2}×)",
        ms(slow_p99),
        ms(median_p99),
        slow_p99.as_secs_f64() / median_p99.as_secs_f64().max(1e-9)
    )?;
    writeln!(
        out,
        "last token to final text:      p50 {} ms, p99 {} ms",
        ms(percentile(&last_to_final, 0.50)),
        ms(percentile(&last_to_final, 0.99))
    )?;
    writeln!(
        out,
        "asking to first text:          p50 {} ms, max {} ms",
        ms(percentile(&first_waits, 0.50)),
        ms(first_waits.last().copied().unwrap_or_default())
    )?;
    match starved {
        Some(starved) => writeln!(
            out,
            "starved conversations:         {starved} (first text later than their share of the budget allows: those sharing it while they waited ÷ its rate, + 1 s)"
        )?,
        None => writeln!(out, "starved conversations:         n/a (no budget)")?,
    }
    match busy.and_then(|busy| busy.busy().map(|ratio| (busy, ratio))) {
        Some((busy, ratio)) => writeln!(
            out,
            "budget busy while calls waited: {:.1}% ({} calls in {:.1} s of waiting, {:.0} allowed)",
            ratio * 100.0,
            busy.granted,
            busy.contended.as_secs_f64(),
            busy.allowed
        )?,
        None => writeln!(out, "budget busy while calls waited: n/a (no call waited)")?,
    }
    writeln!(
        out,
        "edits per message:             {:.1}",
        f64::from(edits) / messages.len().max(1) as f64
    )?;
    writeln!(
        out,
        "CPU per 1,000 tokens:          {:.1} ms on the daemon's side, {:.1} ms in the fake Poe, {:.1} ms together",
        per_thousand(cpu),
        per_thousand(poe.cpu_seconds),
        per_thousand(cpu + poe.cpu_seconds)
    )?;
    writeln!(
        out,
        "memory (daemon's side):        peak RSS {:.0} MB, {:.0} MB over the idle process, {:.1} KB per stream at the peak; the fake Poe apart: {:.0} MB",
        peak_rss_kb / 1024.0,
        grown_kb / 1024.0,
        grown_kb / f64::from(peak_active.max(1)),
        poe.peak_rss_kb / 1024.0
    )?;
    writeln!(out, "tokens never shown:            {never_shown}")?;
    writeln!(out, "lost or duplicated characters: {wrong_chars}")?;
    drop(out);
    let _ = std::fs::remove_dir_all(&store_dir);
    Ok(())
}
