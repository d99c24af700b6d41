//! The bench's fake Poe, in a process of its own so the bench measures the daemon's side
//! alone (its CPU and memory). It serves one model per conversation, `bench-<index>`, whose
//! answer is [`answer`]; prints its base URL; and when its standard input closes, prints
//! when each piece of text left it (in Unix microseconds, the clock both processes share),
//! then its own CPU time and peak memory.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Args;

use poe_relay::fake_poe::{FakePoe, Scenario};

/// The key the bench and its fake share.
pub const KEY: &str = "bench-key-0123456789abcdef012345";

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[arg(long)]
    pub conversations: usize,
    #[arg(long)]
    pub tokens: usize,
    #[arg(long)]
    pub tokens_per_second: u64,
}

/// Conversation `index`'s answer: four-character tokens, distinct per conversation, so
/// nothing can be mixed up.
pub fn answer(index: usize, tokens: usize) -> String {
    (0..tokens)
        .map(|token| {
            let separator = if token % 12 == 11 { '\n' } else { ' ' };
            format!("{:03x}{separator}", (index * 7 + token) % 4096)
        })
        .collect()
}

pub async fn run(options: Options) -> Result<()> {
    let fake = FakePoe::start(KEY).await?;
    fake.record_timing();
    let interval = Duration::from_micros(1_000_000 / options.tokens_per_second.max(1));
    for index in 0..options.conversations {
        fake.script(
            &format!("bench-{index}"),
            Scenario::Text {
                text: answer(index, options.tokens),
                chunk_chars: 4,
                interval,
            },
        );
    }
    let (reference, reference_unix) = (Instant::now(), SystemTime::now());
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", fake.base_url())?;
        stdout.flush()?;
    }
    // Serve until the bench closes our standard input.
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await
    .context("cannot wait for the bench")?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for piece in fake.sent_text() {
        let index = piece.model.trim_start_matches("bench-");
        let at = reference_unix + piece.at.saturating_duration_since(reference);
        writeln!(stdout, "{index} {} {}", piece.chars, super::unix_us(at))?;
    }
    writeln!(
        stdout,
        "done {} {}",
        super::cpu_seconds("self"),
        super::memory_kb("VmHWM:")
    )?;
    stdout.flush()?;
    Ok(())
}
