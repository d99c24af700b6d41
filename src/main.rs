//! The `poe-relay` binary: the daemon and the operator's one-line checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use poe_relay::config::Config;
use poe_relay::core::boundary::Outbound;
use poe_relay::core::manager::Manager;
use poe_relay::core::services::Services;
use poe_relay::platform::discord::{self, Discord};
use poe_relay::platform::matrix::{self, Matrix, session::Credentials};
use poe_relay::poe::{ModelInfo, PoeClient};
use poe_relay::secret::{self, ProcessEnv};
use poe_relay::service::health::Health;
use poe_relay::store::Store;

/// Where the configuration is looked for when `--config` is not given.
const DEFAULT_CONFIG: &str = "config/poe-relay.toml";

#[derive(Parser)]
#[command(
    name = "poe-relay",
    version,
    about = "Poe's AI models in Discord and Matrix"
)]
struct Cli {
    /// The TOML configuration file (default: config/poe-relay.toml when it exists).
    #[arg(long, global = true, env = "POE_RELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or Ctrl-C.
    Run,
    /// Validate the configuration and the secrets it needs, offline; exits non-zero on error.
    CheckConfig,
    /// List Poe's models with their prices (checks that Poe is reachable).
    Models,
    /// Show the Poe account's point balance (checks the API key).
    Balance {
        /// Also show this many of the newest points-history entries.
        #[arg(long, default_value_t = 0)]
        history: u32,
    },
}

fn main() -> ExitCode {
    poe_relay::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let config_path = resolve_config_path(cli.config.as_deref())?;
    // Non-UTF-8 variables cannot be configuration overrides; skip them instead of panicking.
    let env = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
    let config = Config::load(config_path.as_deref(), env)
        .map_err(|err| anyhow::anyhow!("the configuration is not valid:\n{err}"))?;
    match cli.command {
        Command::CheckConfig => check_config(&config, config_path.as_deref()),
        Command::Run => run(config).await,
        Command::Models => models(config).await,
        Command::Balance { history } => balance(config, history).await,
    }
}

fn resolve_config_path(given: Option<&Path>) -> Result<Option<PathBuf>> {
    match given {
        Some(path) => {
            anyhow::ensure!(
                path.is_file(),
                "the configuration file {} does not exist",
                path.display()
            );
            Ok(Some(path.to_owned()))
        }
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG);
            Ok(default.is_file().then_some(default))
        }
    }
}

fn poe_client(config: &Config) -> Result<PoeClient> {
    let key = secret::read_required(&ProcessEnv, "POE_API_KEY")?;
    PoeClient::new(config.poe.clone(), key).context("cannot set up the Poe client")
}

fn check_config(config: &Config, path: Option<&Path>) -> Result<()> {
    secret::read_required(&ProcessEnv, "POE_API_KEY")?;
    let source = path
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| "built-in defaults (no file)".into());
    println!("configuration OK: {source}");
    println!(
        "poe: {} (default transport {:?}, {} requests/minute, {} model override(s))",
        config.poe.base_url,
        config.poe.default_transport,
        config.poe.requests_per_minute,
        config.poe.models.len()
    );
    println!("POE_API_KEY: set");
    if config.matrix.enabled {
        let session = config.matrix.data_dir.join("session.json");
        let login = if session.exists() {
            format!("saved session in {}", session.display())
        } else if matrix_credentials()?.is_some() {
            "MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD set (first login)".to_owned()
        } else {
            anyhow::bail!(
                "matrix is enabled but there is no saved session and neither MATRIX_PASSWORD nor MATRIX_ACCESS_TOKEN is set"
            );
        };
        println!(
            "matrix: {} on {} ({login})",
            config.matrix.user_id, config.matrix.homeserver
        );
    }
    if config.discord.enabled {
        secret::read_required(&ProcessEnv, "DISCORD_TOKEN")?;
        let commands = if config.discord.guilds.is_empty() {
            "/poe registered globally".to_owned()
        } else {
            format!(
                "/poe registered in {} guild(s)",
                config.discord.guilds.len()
            )
        };
        println!("discord: DISCORD_TOKEN set; {commands}");
        if config.discord.api_base.is_some() {
            println!("discord: api_base is set: a fake Discord, for tests only");
        }
    }
    Ok(())
}

async fn run(config: Config) -> Result<()> {
    poe_relay::logging::init(&config.log);
    let client = poe_client(&config)?;
    if let Some(parent) = config
        .store
        .path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {} for store.path", parent.display()))?;
    }
    let store = Store::open(&config.store.path)?;
    let manager = Manager::new(Services::new(config.clone(), client, store.clone()));
    let _maintenance = manager.spawn_maintenance();
    // Listen before connecting, so a signal sent during start-up is not lost.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let (stop, shutdown) = watch::channel(false);
    let health = Arc::new(Health::default());
    // Registered before the endpoint answers, so /readyz never calls a half-started daemon
    // ready.
    let matrix_status = config
        .matrix
        .enabled
        .then(|| health.register(matrix::PLATFORM));
    let discord_status = config
        .discord
        .enabled
        .then(|| health.register(discord::PLATFORM));
    if config.service.http_enabled {
        let addr = poe_relay::service::http::serve(
            &config.service.http_listen,
            health.clone(),
            manager.services().metrics.clone(),
            store.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot listen on service.http_listen = {}",
                config.service.http_listen
            )
        })?;
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }

    // Connecting can take a while (or hang on a dead network): a signal meanwhile ends it.
    let startup = async {
        let mut platforms: HashMap<String, Arc<dyn Outbound>> = HashMap::new();
        let mut matrix = None;
        if let Some(status) = matrix_status {
            let connected = Matrix::connect(
                &config.matrix,
                matrix_credentials()?,
                secret::read_optional(&ProcessEnv, "MATRIX_STORE_PASSPHRASE")?.as_ref(),
                config.poe.base_url.starts_with("http://"),
            )
            .await?;
            platforms.insert(matrix::PLATFORM.into(), connected.outbound());
            matrix = Some((connected, status));
        }
        let mut discord = None;
        if let Some(status) = discord_status {
            let token = secret::read_required(&ProcessEnv, "DISCORD_TOKEN")?;
            let connected = Discord::connect(
                &config.discord,
                &token,
                config.poe.base_url.starts_with("http://"),
            )
            .await?;
            platforms.insert(discord::PLATFORM.into(), connected.outbound());
            discord = Some((connected, status));
        }
        if platforms.is_empty() {
            tracing::warn!(
                "no chat platform is enabled; set matrix.enabled or discord.enabled to true in the config"
            );
        }
        let recovered = manager.recover(&platforms).await;
        if recovered > 0 {
            tracing::info!(recovered, "closed replies interrupted by the last stop");
        }
        anyhow::Ok((platforms, matrix, discord))
    };
    let (platforms, matrix, discord) = tokio::select! {
        started = startup => started?,
        _ = terminate.recv() => return stop_during_startup(&store).await,
        _ = interrupt.recv() => return stop_during_startup(&store).await,
    };
    // Each platform runs until the shutdown signal; one that ends before it has failed.
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    if let Some((connected, status)) = matrix {
        let (manager, shutdown) = (manager.clone(), shutdown.clone());
        tasks.spawn(async move {
            connected.run(manager, shutdown, status).await;
            Ok(())
        });
    }
    if let Some((connected, status)) = discord {
        let (manager, shutdown) = (manager.clone(), shutdown.clone());
        tasks.spawn(async move { Ok(connected.run(manager, shutdown, status).await?) });
    }
    tracing::info!(
        base_url = %config.poe.base_url,
        platforms = ?platforms.keys().collect::<Vec<_>>(),
        "poe-relay started"
    );
    let failure = tokio::select! {
        _ = terminate.recv() => None,
        _ = interrupt.recv() => None,
        Some(ended) = tasks.join_next() => Some(match ended {
            Ok(Err(err)) => err,
            Ok(Ok(())) => anyhow::anyhow!("a chat platform stopped unexpectedly"),
            Err(err) => anyhow::anyhow!("a chat platform failed: {err}"),
        }),
    };
    let grace = config.service.shutdown_grace();
    match &failure {
        Some(err) => tracing::error!("stopping: {err:#}"),
        None => tracing::info!(
            grace_secs = grace.as_secs(),
            "stopping: no new questions; replies in flight may finish (a second signal exits at once)"
        ),
    }
    health.set_stopping();
    // The platforms stop listening; their sending side stays up for the replies in flight.
    let _ = stop.send(true);
    let report = tokio::select! {
        report = manager.shutdown(grace) => report,
        _ = terminate.recv() => exit_now(),
        _ = interrupt.recv() => exit_now(),
    };
    tracing::info!(
        in_flight = report.in_flight,
        interrupted = report.interrupted,
        "replies in flight are done"
    );
    let stopped = tokio::select! {
        stopped = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        }) => stopped,
        _ = terminate.recv() => exit_now(),
        _ = interrupt.recv() => exit_now(),
    };
    if stopped.is_err() {
        tracing::warn!("a platform did not stop within 5 s");
    }
    store.flush().await?;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// A signal before the platforms were up: nothing is in flight yet.
async fn stop_during_startup(store: &Store) -> Result<()> {
    tracing::info!("stopping during start-up");
    store.flush().await?;
    Ok(())
}

/// A second signal: leave now. sled's log is crash-safe, so the store stays whole; replies in
/// flight are closed by the next start's recovery.
fn exit_now() -> ! {
    tracing::warn!("second signal: exiting at once");
    std::process::exit(130)
}

/// The Matrix login secret for a first start; a saved session needs none.
fn matrix_credentials() -> Result<Option<Credentials>> {
    if let Some(token) = secret::read_optional(&ProcessEnv, "MATRIX_ACCESS_TOKEN")? {
        return Ok(Some(Credentials::AccessToken(token)));
    }
    Ok(secret::read_optional(&ProcessEnv, "MATRIX_PASSWORD")?.map(Credentials::Password))
}

async fn models(config: Config) -> Result<()> {
    let client = poe_client(&config)?;
    let mut models = client.list_models().await?;
    models.sort_by_key(|model| model.id.to_ascii_lowercase());
    println!(
        "{:<40} {:>12} {:>12} {:>10} {:>10} OUTPUT",
        "MODEL", "IN $/Mtok", "OUT $/Mtok", "$/REQUEST", "CONTEXT"
    );
    for model in &models {
        println!("{}", model_row(model));
    }
    println!("{} models", models.len());
    Ok(())
}

fn model_row(model: &ModelInfo) -> String {
    let per_million = |price: Option<f64>| {
        price
            .map(|usd| format!("{:.2}", usd * 1e6))
            .unwrap_or_else(|| "-".into())
    };
    let pricing = model.pricing.clone().unwrap_or_default();
    let per_request = pricing
        .request
        .or(pricing.image)
        .map(|usd| format!("{usd:.4}"))
        .unwrap_or_else(|| "-".into());
    let context = model
        .context_length()
        .map(|tokens| tokens.to_string())
        .unwrap_or_else(|| "-".into());
    let outputs = model.output_modalities().join(",");
    format!(
        "{:<40} {:>12} {:>12} {:>10} {:>10} {}",
        model.id,
        per_million(pricing.prompt),
        per_million(pricing.completion),
        per_request,
        context,
        if outputs.is_empty() { "-" } else { &outputs }
    )
}

async fn balance(config: Config, history: u32) -> Result<()> {
    let client = poe_client(&config)?;
    let balance = client.balance().await?;
    match balance.current_point_balance {
        Some(points) => println!("points: {points}"),
        None => println!("points: (Poe did not say)"),
    }
    if let Some(usd) = balance.total_balance_usd {
        println!("worth: ${usd:.2}");
    }
    if history > 0 {
        let page = client.points_history(history, None).await?;
        println!("{:<24} {:<28} {:>10} TYPE", "QUERY", "BOT", "POINTS");
        for entry in page.data {
            println!(
                "{:<24} {:<28} {:>10} {}",
                entry.query_id,
                entry.bot_name.unwrap_or_default(),
                entry
                    .cost_points
                    .map(|points| points.to_string())
                    .unwrap_or_else(|| "-".into()),
                entry.usage_type.unwrap_or_default()
            );
        }
    }
    Ok(())
}
