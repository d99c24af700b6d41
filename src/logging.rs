//! Log output: human-readable by default, JSON on request, filtered like `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Applied after every filter: see [`init`].
const SERENITY_HTTP_CAP: &str = "serenity::http=error";

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| value.parse::<EnvFilter>().ok())
        .or_else(|| config.filter.parse::<EnvFilter>().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // serenity's HTTP layer logs request routes at debug and warn level, and a webhook route
    // carries a slash command's token (a credential): never let those lines through.
    let filter = match SERENITY_HTTP_CAP.parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    // Colour codes only for a person at a terminal; in files and journals they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber; that is harmless.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
