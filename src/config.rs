//! The daemon's configuration: a TOML file plus `POE_RELAY__SECTION__KEY` environment overrides.
//!
//! Every key has a default, so an empty file is valid. Unknown keys are errors (a typo must not
//! be silently ignored), and every error names the key and says what is wrong. Secrets are not
//! part of this structure: they come from the environment (see [`crate::secret`]), and a secret
//! written into the TOML file is rejected with a message saying where it belongs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use crate::poe::{ModelConfig, PoeConfig};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table of settings")]
pub struct Config {
    #[serde(default)]
    pub poe: PoeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub chat: ChatConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub matrix: MatrixConfig,
    #[serde(default)]
    pub discord: DiscordConfig,
    #[serde(default)]
    pub service: ServiceConfig,
}

/// How the daemon runs as a service: stopping, and the operator's HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct ServiceConfig {
    /// On SIGTERM, replies in flight get this long to finish before they are interrupted.
    pub shutdown_grace_secs: u64,
    /// Serve `/healthz`, `/readyz` and `/metrics`.
    pub http_enabled: bool,
    /// Where (address and port) the HTTP endpoint listens.
    pub http_listen: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_grace_secs: 15,
            http_enabled: false,
            http_listen: "127.0.0.1:9464".into(),
        }
    }
}

impl ServiceConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// How conversations behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct ChatConfig {
    /// The model of a channel that has not chosen one.
    pub default_model: String,
    /// Replies streamed at once across all channels; more wait their turn.
    pub max_concurrent_replies: usize,
    /// Context sent to Poe: at most this many earlier turns…
    pub history_max_turns: usize,
    /// …and at most this many characters of them.
    pub history_max_chars: usize,
    /// Turns older than this are deleted.
    pub history_retention_days: u64,
    /// The longest answer asked for, in tokens (also the worst case a reservation prices).
    pub max_output_tokens: u32,
    /// Largest attachment passed to Poe, in bytes.
    pub max_attachment_bytes: u64,
    /// Longest question accepted, in characters; longer ones get a note instead.
    pub max_question_chars: usize,
    /// Questions one person may have waiting or being answered at once; more get a note
    /// (0: no limit). The bot's own admins are exempt.
    pub max_questions_per_user: usize,
    /// An asker's edit of the question the channel's latest answer replied to regenerates
    /// that answer in place.
    pub regenerate_on_edit: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            default_model: "Claude-Sonnet-4.6".into(),
            max_concurrent_replies: 256,
            history_max_turns: 20,
            history_max_chars: 24_000,
            history_retention_days: 30,
            max_output_tokens: 4096,
            max_attachment_bytes: 10 * 1024 * 1024,
            max_question_chars: 16_000,
            max_questions_per_user: 3,
            regenerate_on_edit: true,
        }
    }
}

/// The ledger must outlive the longest budget period and reconciliation's look-back.
const MIN_LEDGER_RETENTION_DAYS: u64 = 35;

/// A century: "keep for ever" without overflowing the arithmetic on dates.
const MAX_RETENTION_DAYS: u64 = 36_500;

/// Point budgets per user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct BudgetConfig {
    /// "day", "week" (from Monday) or "month", in UTC.
    pub period: BudgetPeriod,
    /// Points each user may spend per period unless an admin sets otherwise.
    pub default_points: i64,
    /// Admins spend without a limit (their spending is still recorded).
    pub admins_exempt: bool,
    /// How many Poe points one US dollar buys, to price models whose cost Poe gives in USD.
    pub points_per_usd: f64,
    /// Reserved (and charged) per request to a model with no price and no configured cost.
    pub unpriced_request_points: i64,
    /// How often to compare the ledger with Poe's points history.
    pub reconcile_interval_secs: u64,
    /// Only requests finished at least this long ago are reconciled (Poe's history lags).
    pub reconcile_after_secs: u64,
    /// How far a Poe history entry may lie outside a request's start and end and still match.
    pub reconcile_slack_secs: u64,
    /// Ledger entries older than this are deleted.
    pub ledger_retention_days: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            period: BudgetPeriod::Day,
            default_points: 20_000,
            admins_exempt: true,
            points_per_usd: 33_000.0,
            unpriced_request_points: 1_000,
            reconcile_interval_secs: 300,
            reconcile_after_secs: 60,
            reconcile_slack_secs: 120,
            ledger_retention_days: 365,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum BudgetPeriod {
    Day,
    Week,
    Month,
}

impl TryFrom<String> for BudgetPeriod {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "day" => Ok(BudgetPeriod::Day),
            "week" => Ok(BudgetPeriod::Week),
            "month" => Ok(BudgetPeriod::Month),
            _ => Err(format!(
                "`{name}` is not a period; use `day`, `week` or `month`"
            )),
        }
    }
}

/// Where the store lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct StoreConfig {
    pub path: std::path::PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "data/poe-relay.sled".into(),
        }
    }
}

/// The Matrix account the bot uses and who may do what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct MatrixConfig {
    pub enabled: bool,
    /// The homeserver's client API base URL.
    pub homeserver: String,
    /// The bot's full Matrix id (`@poe:example.org`).
    pub user_id: String,
    /// Shown in the device list when the bot logs in with a password.
    pub device_name: String,
    /// The session (device), the encryption keys and the sync state live here; losing it
    /// means a new device and unreadable history in encrypted rooms.
    pub data_dir: std::path::PathBuf,
    /// These users are admins in every room.
    pub admins: Vec<String>,
    /// Users with at least this power level in a room are admins there.
    pub admin_power_level: i64,
    /// Invites from these users are accepted…
    pub allowed_users: Vec<String>,
    /// …and from any user on these servers. Other invites are declined.
    pub allowed_servers: Vec<String>,
    /// Messages from these users are never answered (other bots).
    pub ignored_users: Vec<String>,
    /// Events per second the bot sends over all rooms (messages, edits, joins), under the
    /// homeserver's limit on the account (Synapse's `rc_message`: 0.2 a second by default).
    /// 0: no limit, for a bot the homeserver exempts (Synapse's `override_ratelimit`).
    pub max_sends_per_second: f64,
    /// Events the bot may send at once before that rate applies (Synapse: `burst_count`, 10).
    pub send_burst: u32,
    /// Who may use the bot at all, beyond the invite rules.
    pub access: MatrixAccess,
}

/// Where and by whom the bot may be used on Matrix. Empty lists allow everyone; the bot's
/// configured admins are always allowed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct MatrixAccess {
    /// Room ids (`!abc…`) where the bot answers; other rooms it may be in get no answer.
    pub allow_rooms: Vec<String>,
    /// Matrix ids that may ask; others are not answered.
    pub allow_users: Vec<String>,
}

/// Where and by whom the bot may be used on Discord. Empty allow lists allow everyone; a block
/// list wins over an allow list; the bot's configured admins are always allowed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct DiscordAccess {
    /// Server channels where the bot answers (a thread follows its parent channel). DMs follow
    /// `discord.allow_dms`.
    pub allow_channels: Vec<String>,
    pub block_channels: Vec<String>,
    /// Roles whose members may use the bot (with `allow_users`: members of these roles, or
    /// these users).
    pub allow_roles: Vec<String>,
    pub block_roles: Vec<String>,
    pub allow_users: Vec<String>,
    pub block_users: Vec<String>,
}

impl MatrixConfig {
    /// The bot's allowance for the core's pacing; `None` without a limit.
    pub fn send_rate(&self) -> Option<crate::core::pacing::RequestRate> {
        (self.max_sends_per_second > 0.0).then(|| crate::core::pacing::RequestRate {
            per_second: self.max_sends_per_second,
            burst: f64::from(self.send_burst.max(1)),
        })
    }
}

impl Default for MatrixConfig {
    fn default() -> Self {
        MatrixConfig {
            enabled: false,
            homeserver: String::new(),
            user_id: String::new(),
            device_name: "poe-relay".into(),
            data_dir: "data/matrix".into(),
            admins: Vec::new(),
            admin_power_level: 50,
            allowed_users: Vec::new(),
            allowed_servers: Vec::new(),
            ignored_users: Vec::new(),
            // A little under Synapse's defaults (0.2 a second, 10 at once), leaving room for
            // the account's other events and for clock differences.
            max_sends_per_second: 0.18,
            send_burst: 8,
            access: MatrixAccess::default(),
        }
    }
}

/// The Discord bot: where `/poe` is registered and who may do what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct DiscordConfig {
    pub enabled: bool,
    /// Guild (server) ids where `/poe` is registered; it shows up there at once. Empty:
    /// registered globally (every server the bot is in; Discord may take a while to show it).
    pub guilds: Vec<String>,
    /// User ids that are admins of the bot everywhere: every command and no budget limit.
    pub admins: Vec<String>,
    /// Role ids whose members are admins of the bot, like `admins`.
    pub admin_roles: Vec<String>,
    /// Answer direct messages (every DM is a question).
    pub allow_dms: bool,
    /// Never answer other bots.
    pub ignore_bots: bool,
    /// Requests per second the bot makes over all channels, under Discord's global limit
    /// of 50 (interaction answers do not count).
    pub max_requests_per_second: f64,
    /// Who may use the bot at all.
    pub access: DiscordAccess,
    /// Tests only: another REST base (`http://127.0.0.1:PORT`) instead of discord.com. It
    /// turns serenity's own rate limiter off, which only a fake Discord can take.
    pub api_base: Option<String>,
    /// Tests only: the gateway websocket URL, instead of the one Discord announces.
    pub gateway_url: Option<String>,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        DiscordConfig {
            enabled: false,
            guilds: Vec::new(),
            admins: Vec::new(),
            admin_roles: Vec::new(),
            allow_dms: true,
            ignore_bots: true,
            max_requests_per_second: 40.0,
            access: DiscordAccess::default(),
            api_base: None,
            gateway_url: None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of settings")]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; the `RUST_LOG` variable, when set, wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    Text,
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "`{name}` is not a log format; use `text` or `json`"
            )),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, as written in the TOML file (`poe.models[0].transport`).
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Everything wrong with a configuration, or why it could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{0}")]
    Parse(String),
    #[error("{}", render_problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn render_problems(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Names of keys that hold secrets; the file must not contain them anywhere.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("api_key", "POE_API_KEY"),
    ("poe_api_key", "POE_API_KEY"),
    ("token", "DISCORD_TOKEN"),
    ("discord_token", "DISCORD_TOKEN"),
    ("password", "MATRIX_PASSWORD"),
    ("access_token", "MATRIX_ACCESS_TOKEN"),
];

/// The longest timeout or backoff accepted: one day.
const MAX_SECONDS: u64 = 86_400;

/// Keys of the OpenAI request body that per-model parameters must not overwrite.
const RESERVED_PARAMETERS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "n",
];

impl Config {
    /// Loads `file` (if given) and applies `POE_RELAY__…` overrides from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Unreadable {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with("POE_RELAY__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("POE_RELAY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let raw = builder
            .build()
            .map_err(|err| ConfigError::Parse(describe_config_error(err, file)))?;

        let raw_value: config::Value = raw
            .clone()
            .try_deserialize()
            .map_err(|err| ConfigError::Parse(describe_config_error(err, file)))?;
        let mut problems = Vec::new();
        find_secrets(&raw_value, "", &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }

        let config: Config = raw
            .try_deserialize()
            .map_err(|err| ConfigError::Parse(describe_config_error(err, file)))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks the values that parse but make no sense.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, text: &str| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                problem: text.to_owned(),
            })
        };
        let poe = &self.poe;
        for (key, url) in [
            ("poe.base_url", &poe.base_url),
            ("poe.upload_url", &poe.upload_url),
        ] {
            match reqwest::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(_) => problem(key, "must be an http:// or https:// URL"),
                Err(err) => problem(key, &format!("is not a valid URL ({err})")),
            }
        }
        if poe.requests_per_minute == 0 {
            problem("poe.requests_per_minute", "must be at least 1");
        }
        if poe.connect_timeout_secs == 0 {
            problem("poe.connect_timeout_secs", "must be at least 1");
        }
        if poe.idle_timeout_secs == 0 {
            problem("poe.idle_timeout_secs", "must be at least 1");
        }
        if poe.request_timeout_secs < poe.idle_timeout_secs {
            problem(
                "poe.request_timeout_secs",
                "must be at least poe.idle_timeout_secs",
            );
        }
        if poe.max_attempts == 0 {
            problem(
                "poe.max_attempts",
                "must be at least 1 (1 means no retries)",
            );
        }
        if poe.max_backoff_ms < poe.initial_backoff_ms {
            problem(
                "poe.max_backoff_ms",
                "must be at least poe.initial_backoff_ms",
            );
        }
        if poe.max_event_bytes < 1024 {
            problem("poe.max_event_bytes", "must be at least 1024");
        }
        if poe.max_answer_bytes < poe.max_event_bytes {
            problem(
                "poe.max_answer_bytes",
                "must be at least poe.max_event_bytes",
            );
        }
        for (key, value) in [
            ("poe.connect_timeout_secs", poe.connect_timeout_secs),
            ("poe.idle_timeout_secs", poe.idle_timeout_secs),
            ("poe.request_timeout_secs", poe.request_timeout_secs),
            ("poe.retry_budget_secs", poe.retry_budget_secs),
            ("poe.max_backoff_ms", poe.max_backoff_ms / 1000),
        ] {
            if value > MAX_SECONDS {
                problem(key, "must be at most one day");
            }
        }
        let mut seen = BTreeMap::new();
        for (index, model) in poe.models.iter().enumerate() {
            let key = format!("poe.models[{index}]");
            if model.name.trim().is_empty() {
                problem(&format!("{key}.name"), "must not be empty");
            }
            if let Some(first) = seen.insert(model.name.to_ascii_lowercase(), index) {
                problem(
                    &format!("{key}.name"),
                    &format!(
                        "`{}` is already configured in poe.models[{first}]",
                        model.name
                    ),
                );
            }
            for name in model.parameters.keys() {
                if RESERVED_PARAMETERS.contains(&name.as_str()) {
                    problem(
                        &format!("{key}.parameters.{name}"),
                        "is part of the request itself and cannot be a custom parameter",
                    );
                }
            }
        }
        let matrix = &self.matrix;
        if matrix.enabled {
            match reqwest::Url::parse(&matrix.homeserver) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(_) => problem("matrix.homeserver", "must be an http:// or https:// URL"),
                Err(_) if matrix.homeserver.is_empty() => problem(
                    "matrix.homeserver",
                    "must be set when matrix.enabled is true (e.g. `https://matrix.example.org`)",
                ),
                Err(err) => problem("matrix.homeserver", &format!("is not a valid URL ({err})")),
            }
            if !is_user_id(&matrix.user_id) {
                problem(
                    "matrix.user_id",
                    "must be the bot's full Matrix id, like `@poe:example.org`",
                );
            }
        }
        for (index, room) in matrix.access.allow_rooms.iter().enumerate() {
            if !room.starts_with('!') || room.contains(char::is_whitespace) {
                problem(
                    &format!("matrix.access.allow_rooms[{index}]"),
                    &format!(
                        "`{room}` is not a room id; copy it from the room's settings (it starts with `!`)"
                    ),
                );
            }
        }
        for (key, users) in [
            ("matrix.admins", &matrix.admins),
            ("matrix.allowed_users", &matrix.allowed_users),
            ("matrix.ignored_users", &matrix.ignored_users),
            ("matrix.access.allow_users", &matrix.access.allow_users),
        ] {
            for (index, user) in users.iter().enumerate() {
                if !is_user_id(user) {
                    problem(
                        &format!("{key}[{index}]"),
                        &format!("`{user}` is not a Matrix id; write it like `@alice:example.org`"),
                    );
                }
            }
        }
        if self.budget.ledger_retention_days < MIN_LEDGER_RETENTION_DAYS {
            problem(
                "budget.ledger_retention_days",
                &format!(
                    "must be at least {MIN_LEDGER_RETENTION_DAYS}: a month's budget and reconciliation look back that far"
                ),
            );
        }
        for (key, days) in [
            (
                "chat.history_retention_days",
                self.chat.history_retention_days,
            ),
            (
                "budget.ledger_retention_days",
                self.budget.ledger_retention_days,
            ),
        ] {
            if days > MAX_RETENTION_DAYS {
                problem(
                    key,
                    &format!("must be at most {MAX_RETENTION_DAYS} (a century)"),
                );
            }
        }
        if self.service.shutdown_grace_secs > 3600 {
            problem(
                "service.shutdown_grace_secs",
                "must be at most 3600 (one hour)",
            );
        }
        if self
            .service
            .http_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            problem(
                "service.http_listen",
                "must be an address and port, like `127.0.0.1:9464`",
            );
        }
        if !(0.0..=1000.0).contains(&matrix.max_sends_per_second) {
            problem(
                "matrix.max_sends_per_second",
                "must be between 0 (no limit: the homeserver exempts the bot) and 1000",
            );
        }
        if matrix.send_burst == 0 || matrix.send_burst > 10_000 {
            problem("matrix.send_burst", "must be between 1 and 10000");
        }
        let discord = &self.discord;
        if !(1.0..=50.0).contains(&discord.max_requests_per_second) {
            problem(
                "discord.max_requests_per_second",
                "must be between 1 and 50 (Discord allows a bot 50 requests a second in all)",
            );
        }
        let access = &discord.access;
        for (key, ids) in [
            ("discord.guilds", &discord.guilds),
            ("discord.admins", &discord.admins),
            ("discord.admin_roles", &discord.admin_roles),
            ("discord.access.allow_channels", &access.allow_channels),
            ("discord.access.block_channels", &access.block_channels),
            ("discord.access.allow_roles", &access.allow_roles),
            ("discord.access.block_roles", &access.block_roles),
            ("discord.access.allow_users", &access.allow_users),
            ("discord.access.block_users", &access.block_users),
        ] {
            for (index, id) in ids.iter().enumerate() {
                if !is_snowflake(id) {
                    problem(
                        &format!("{key}[{index}]"),
                        &format!(
                            "`{id}` is not a Discord id; copy it with Developer Mode on (digits only, like \"80351110224678912\")"
                        ),
                    );
                }
            }
        }
        for (key, url, schemes) in [
            ("discord.api_base", &discord.api_base, ["http", "https"]),
            ("discord.gateway_url", &discord.gateway_url, ["ws", "wss"]),
        ] {
            if let Some(url) = url {
                match reqwest::Url::parse(url) {
                    Ok(parsed) if schemes.contains(&parsed.scheme()) => {}
                    Ok(_) => problem(
                        key,
                        &format!("must be a {}:// or {}:// URL", schemes[0], schemes[1]),
                    ),
                    Err(err) => problem(key, &format!("is not a valid URL ({err})")),
                }
            }
        }
        if self
            .log
            .filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            problem(
                "log.filter",
                "is not a valid filter (examples: `info`, `poe_relay=debug,warn`)",
            );
        }
        problems
    }
}

/// A Discord snowflake: digits that fit in 64 bits.
fn is_snowflake(id: &str) -> bool {
    id.bytes().all(|byte| byte.is_ascii_digit()) && id.parse::<u64>().is_ok_and(|id| id != 0)
}

/// `@localpart:server`, loosely: enough to catch a missing `@` or server.
fn is_user_id(id: &str) -> bool {
    id.strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| {
            !local.is_empty() && !server.is_empty() && !id.contains(char::is_whitespace)
        })
}

fn find_secrets(value: &config::Value, path: &str, problems: &mut Vec<ConfigProblem>) {
    let config::ValueKind::Table(table) = &value.kind else {
        return;
    };
    for (key, child) in table {
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Some((_, variable)) = SECRET_KEYS.iter().find(|(name, _)| key == name) {
            problems.push(ConfigProblem {
                key: child_path.clone(),
                problem: format!(
                    "secrets are not read from the config file; remove it and set {variable} \
                     (or {variable}_FILE) in the environment"
                ),
            });
        }
        find_secrets(child, &child_path, problems);
    }
}

/// The config crate's messages are close, but say "for key" and omit the file; make them say
/// which key, in which file, in plain order.
fn describe_config_error(err: config::ConfigError, file: Option<&Path>) -> String {
    let origin = file
        .map(|path| format!(" (in {})", path.display()))
        .unwrap_or_default();
    let text = err.to_string();
    // The crate writes `models[0]transport`; the TOML key is `models[0].transport`. Only a
    // `]` with a key right after it is such a join, not one inside a quoted value.
    let mut joined = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        joined.push(c);
        if c == ']' && chars.peek().is_some_and(|next| next.is_ascii_alphabetic()) {
            joined.push('.');
        }
    }
    let text = joined;
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some((field, rest)) = rest.split_once('`')
    {
        let parent = rest
            .rsplit_once("for key `")
            .and_then(|(_, key)| key.split_once('`'))
            .map(|(key, _)| format!("{key}."))
            .unwrap_or_default();
        let known = rest
            .split_once("expected ")
            .map(|(_, expected)| expected.split(" for key").next().unwrap_or(expected))
            .unwrap_or("");
        return format!("{parent}{field}: unknown key (expected {known}){origin}");
    }
    if let Some((message, rest)) = text.split_once(" for key `")
        && let Some((key, _)) = rest.split_once('`')
    {
        return format!("{key}: {message}{origin}");
    }
    format!("{text}{origin}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poe::Transport;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poe-relay.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()));
        Config::load(Some(&path), env)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = load_str("", &[]).unwrap();
        assert_eq!(config.poe.base_url, "https://api.poe.com");
        assert_eq!(config.poe.requests_per_minute, 500);
        assert_eq!(config.poe.default_transport, Transport::Native);
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load_str(
            "[poe]\nrequests_per_minute = 100\n",
            &[
                ("POE_RELAY__POE__REQUESTS_PER_MINUTE", "42"),
                ("POE_RELAY__LOG__FORMAT", "json"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.poe.requests_per_minute, 42);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = load_str("[poe]\nbase_urll = \"http://x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_urll"), "{err}");
        let err = load_str("[poee]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("poee"), "{err}");
        let err = load_str("", &[("POE_RELAY__POE__TYPO", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("typo"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load_str("[poe]\nrequests_per_minute = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("requests_per_minute"), "{err}");
    }

    #[test]
    fn a_ledger_kept_shorter_than_a_month_is_refused() {
        let err = load_str("[budget]\nledger_retention_days = 7\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("budget.ledger_retention_days: must be at least 35"),
            "{err}"
        );
        assert!(load_str("[budget]\nledger_retention_days = 35\n", &[]).is_ok());
        let err = load_str("[budget]\nledger_retention_days = 9999999999\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be at most 36500"), "{err}");
    }

    #[test]
    fn access_lists_with_a_wrong_id_are_refused_rather_than_left_open() {
        // A typo must not empty an allow list (which would let everyone in).
        let toml = "[discord.access]\nallow_channels = [\"#general\"]\nblock_users = [\"12 34\"]\n\
                    [matrix.access]\nallow_rooms = [\"general\"]\nallow_users = [\"ann\"]\n";
        let err = load_str(toml, &[]).unwrap_err().to_string();
        for key in [
            "discord.access.allow_channels[0]",
            "discord.access.block_users[0]",
            "matrix.access.allow_rooms[0]",
            "matrix.access.allow_users[0]",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        let fine = "[discord.access]\nallow_channels = [\"80351110224678912\"]\n\
                    [matrix.access]\nallow_rooms = [\"!abc:example.org\"]\nallow_users = [\"@ann:example.org\"]\n";
        let config = load_str(fine, &[]).unwrap();
        assert_eq!(config.discord.access.allow_channels, ["80351110224678912"]);
        assert_eq!(config.matrix.access.allow_users, ["@ann:example.org"]);
    }

    #[test]
    fn secrets_in_the_file_are_rejected_with_directions() {
        let err = load_str("[poe]\napi_key = \"sk-123456\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("poe.api_key"), "{err}");
        assert!(err.contains("POE_API_KEY"), "{err}");
        assert!(!err.contains("sk-123456"), "{err}");
    }

    #[test]
    fn model_settings_are_case_insensitive() {
        let config = load_str(
            r#"
            [[poe.models]]
            name = "Claude-Sonnet-4.6"
            transport = "openai"
            parameters = { thinking_budget = 1024 }
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(
            config.poe.transport_for("claude-sonnet-4.6"),
            Transport::OpenAi
        );
        assert_eq!(config.poe.transport_for("GPT-5"), Transport::Native);
        assert_eq!(
            config.poe.model("CLAUDE-SONNET-4.6").unwrap().parameters["thinking_budget"],
            1024
        );
    }

    #[test]
    fn semantic_problems_are_all_reported_with_their_keys() {
        let err = load_str(
            r#"
            [poe]
            base_url = "ftp://example"
            requests_per_minute = 0
            [[poe.models]]
            name = "a"
            parameters = { model = "b" }
            [[poe.models]]
            name = "A"
            "#,
            &[],
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("expected semantic problems, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "poe.base_url",
                "poe.requests_per_minute",
                "poe.models[0].parameters.model",
                "poe.models[1].name"
            ]
        );
    }

    #[test]
    fn platform_request_rates_are_checked_and_zero_turns_the_matrix_limit_off() {
        let config = load_str("", &[]).unwrap();
        assert_eq!(config.discord.max_requests_per_second, 40.0);
        let rate = config.matrix.send_rate().unwrap();
        assert!(rate.per_second < 0.2 && rate.burst < 10.0, "{rate:?}");
        let exempt = load_str("[matrix]\nmax_sends_per_second = 0\n", &[]).unwrap();
        assert!(exempt.matrix.send_rate().is_none());
        let err = load_str(
            "[discord]\nmax_requests_per_second = 60\n[matrix]\nmax_sends_per_second = -1\nsend_burst = 0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("discord.max_requests_per_second: must be between 1 and 50"),
            "{err}"
        );
        assert!(err.contains("matrix.max_sends_per_second"), "{err}");
        assert!(err.contains("matrix.send_burst"), "{err}");
    }

    #[test]
    fn bad_transport_names_the_key_and_the_choices() {
        let err = load_str("[poe]\ndefault_transport = \"grpc\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc"), "{err}");
        assert!(err.contains("default_transport"), "{err}");
    }
}
