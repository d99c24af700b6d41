//! Runs the core against the in-memory platform, outside the daemon.
//!
//! `bench` measures the core under load, against a fake Poe in a process of its own
//! (`bench-poe`, started by the bench), on an in-memory platform that models a real
//! platform's limits, and prints its figures. `serve` reads messages as JSON lines on stdin
//! and prints every platform call as JSON lines on stdout; the crash test drives it as a real
//! process it can SIGKILL.

mod bench;
mod bench_poe;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use poe_relay::core::boundary::Limits;
use poe_relay::core::render::split::LengthUnit;

#[derive(Parser)]
#[command(
    name = "poe-relay-lab",
    about = "The poe-relay core on an in-memory platform"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Whose limits the in-memory platform keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformModel {
    /// No limit but the edit interval: the core's own cost.
    Unlimited,
    /// Discord: 50 requests in any second over all channels, 5 writes per 5 s in a channel,
    /// and the Discord adapter's limits (40 a second, 1.2 s between a channel's writes).
    Discord,
    /// A Matrix account on a homeserver with Synapse's default `rc_message` (0.2 events a
    /// second, 10 at once) and the Matrix adapter's default limits.
    SynapseDefault,
}

#[derive(Subcommand)]
enum Command {
    /// Drive many conversations and print latency, fairness, edits, CPU and memory figures.
    Bench(bench::Options),
    /// The bench's fake Poe, in a process of its own (started by `bench`).
    #[command(hide = true)]
    BenchPoe(bench_poe::Options),
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
        Command::Bench(options) => runtime.block_on(bench::run(options)),
        Command::BenchPoe(options) => runtime.block_on(bench_poe::run(options)),
        Command::Serve {
            store,
            poe_url,
            model,
            existing,
        } => runtime.block_on(serve::serve(store, poe_url, model, existing)),
    }
}

/// A platform with no limit but `edit_interval` between a message's edits.
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

/// CPU seconds a process has used (user + system), from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
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

/// A memory figure of this process from /proc/self/status, in KB: `VmRSS` now or `VmHWM`
/// (the peak).
fn memory_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Microseconds since the Unix epoch: the clock both bench processes share.
fn unix_us(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64)
}
