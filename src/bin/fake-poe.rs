//! Runs the fake Poe server on loopback, for trying poe-relay without a Poe account and for
//! the Python reference checks. Every model echoes; `--models FILE` serves a saved model list.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use poe_relay::fake_poe::FakePoe;

#[derive(Parser)]
#[command(name = "fake-poe", about = "A fake api.poe.com on 127.0.0.1 for tests")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The API key the fake accepts.
    #[arg(long, env = "FAKE_POE_KEY", default_value = "fake-poe-key")]
    key: String,
    /// A `/v1/models` response to serve instead of the built-in list.
    #[arg(long)]
    models: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    poe_relay::tls::install_crypto_provider();
    let args = Args::parse();
    let fake = FakePoe::start_on(SocketAddr::from(([127, 0, 0, 1], args.port)), &args.key)
        .await
        .context("cannot start the fake Poe server")?;
    if let Some(path) = args.models {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let list = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        fake.set_models(list);
    }
    println!("{}", fake.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    Ok(())
}
