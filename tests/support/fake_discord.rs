//! A fake Discord on 127.0.0.1 that the real serenity client connects to.
//!
//! It owns both halves of what a bot talks to: the REST API under `/api/v10` (axum) and the
//! gateway websocket at `/gateway`, plus `/attachments/…`, where the files of inbound messages
//! (and files the bot uploads) are served so a bot can download them over loopback. Tests
//! drive it ([`FakeDiscord::dispatch_message`], [`FakeDiscord::dispatch_command`],
//! [`FakeDiscord::click`], [`FakeDiscord::edit_user_message`], gateway faults) and inspect what
//! the bot did ([`FakeDiscord::messages`], [`FakeDiscord::calls`],
//! [`FakeDiscord::interactions`], [`FakeDiscord::violations`]).
//!
//! Why a fake and not mocks: the Discord adapter must be proven against serenity's real HTTP
//! client, gateway state machine (IDENTIFY, heartbeats, RESUME and sequence replay) and model
//! deserialisation, and against the limits Discord enforces. Every payload here carries the
//! fields serenity 0.12.5 requires (checked against its source), so a missing field shows up
//! as a silently dropped event in serenity, exactly as it would against Discord.
//!
//! [`FakeDiscord::serve_tls`] serves the same API over TLS, for serenity's own rate limiter,
//! which only sends to https://discord.com: the test resolves discord.com to that address and
//! trusts the certificate it made.
//!
//! Pointing serenity at it: `HttpBuilder::new(token).proxy(fake.api_base())
//! .ratelimiter_disabled(true)` (serenity only applies the proxy with its rate limiter off, and
//! then neither paces nor retries 429s: the bot sees them), and `client.ws_url` set to
//! [`FakeDiscord::gateway_url`] (serenity also learns it from `GET /gateway`).
//!
//! What it enforces, answering like Discord (JSON error bodies with `code` and `message`, and
//! `errors` for form errors) and recording a [`Violation`]:
//! - `Authorization: Bot <token>` on every API call (401), the IDENTIFY/RESUME token;
//! - message content of at most 2,000 characters, non-empty messages;
//! - test policy: every message write with content carries `allowed_mentions` that mentions
//!   nobody (`parse` empty, no `users`/`roles`, `replied_user` not true); Discord itself would
//!   accept the request, but a relay of model output must never ping anyone;
//! - `message_reference` to a message that exists (unless `fail_if_not_exists` is false: then
//!   a plain message, as Discord does); edits only of the bot's own messages;
//! - message components on every bot message write (channel messages, interaction callbacks,
//!   `@original` and follow-ups): at most 5 action rows (type 1) at the top level, 1-5 buttons
//!   (type 2) in each, a `custom_id` of 1-100 characters on every button but link buttons
//!   (style 5, which carry a `url` instead), no `custom_id` twice in one message, labels of at
//!   most 80 characters (400 "Invalid Form Body" with the field's path, as Discord answers);
//!   select menus and Components V2 are not faked and are refused as such. A PATCH without
//!   `components` keeps them, `components: []` (or `null`) removes them;
//! - interactions: one callback each, within the deadline (3 s, as Discord); `@original` and
//!   follow-ups only after the callback; the first follow-up after a deferral replaces the
//!   deferred message and keeps its visibility, as Discord does; callbacks 6
//!   (DEFERRED_UPDATE_MESSAGE) and 7 (UPDATE_MESSAGE, which edits the clicked message) only for
//!   component interactions (type 3, [`FakeDiscord::click`]), whose `@original` is then the
//!   clicked message, as on Discord;
//! - command registration: names and descriptions Discord would accept;
//! - routes: anything not implemented here answers 404 and is a violation too, so a bot
//!   calling an endpoint the fake does not know is noticed rather than silently tolerated.
//!
//! Rate limits, answered as Discord answers them (`429` with Discord's body, `Retry-After` and
//! `X-RateLimit-*` headers; counted, not treated as violations):
//! - the global limit: at most [`FakeDiscordOptions::global_limit`] requests (50, as Discord)
//!   in any sliding second over every route but the interaction endpoints (the callback and
//!   the interaction webhooks), which Discord leaves out of it; over it, `global: true` and
//!   `X-RateLimit-Global` / `X-RateLimit-Scope: global`;
//! - per channel ([`FakeDiscord::rate_limit`], or [`FakeDiscordOptions::channel_limit`] for
//!   every channel) and injected 429s ([`FakeDiscord::inject_429`]): message creates and edits
//!   in that channel, including interaction webhook messages of interactions in that channel.
//!
//! Like Discord, the fake counts invalid requests: answers 401, 403 and 429 (but 429s of scope
//! `shared`) in the last 10 minutes ([`FakeDiscord::invalid_requests`]); 10,000 of them get a
//! bot's IP banned from Discord for about an hour.
//!
//! Gateway: HELLO, IDENTIFY → READY, HEARTBEAT → ACK, RESUME (replays every dispatch after the
//! client's sequence number, then RESUMED), RECONNECT (op 7), INVALID_SESSION (op 9), and an
//! abrupt socket drop. Dispatches respect the IDENTIFY intents (guild messages, direct
//! messages, message content), and the bot's own messages are echoed back as MESSAGE_CREATE /
//! MESSAGE_UPDATE, as Discord does. Users' edits arrive as MESSAGE_UPDATE with
//! `edited_timestamp` ([`FakeDiscord::edit_user_message`]), link unfurls as the partial
//! MESSAGE_UPDATE Discord sends when it adds embeds ([`FakeDiscord::dispatch_embed_update`]).
//! Not faked: guilds (READY lists none; no GUILD_CREATE), members, roles, channels, reactions,
//! embeds the bot sends, select menus, modals, voice, the 15-minute token expiry.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// Discord's epoch (2015-01-01) in Unix milliseconds, for snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
const MAX_CONTENT_CHARS: usize = 2000;
/// Message flags.
const EPHEMERAL: u64 = 1 << 6;
const LOADING: u64 = 1 << 7;
const IS_COMPONENTS_V2: u64 = 1 << 15;
/// Gateway intents the fake honours.
const GUILD_MESSAGES: u64 = 1 << 9;
const DIRECT_MESSAGES: u64 = 1 << 12;
const MESSAGE_CONTENT: u64 = 1 << 15;
/// Component limits of a message (without Components V2).
const MAX_ACTION_ROWS: usize = 5;
const MAX_ROW_BUTTONS: usize = 5;
const MAX_CUSTOM_ID_CHARS: usize = 100;
const MAX_BUTTON_LABEL_CHARS: usize = 80;
/// Interaction types.
const APPLICATION_COMMAND: u64 = 2;
const MESSAGE_COMPONENT: u64 = 3;
const AUTOCOMPLETE: u64 = 4;

/// Knobs for [`FakeDiscord::start_with`].
#[derive(Clone, Debug)]
pub struct FakeDiscordOptions {
    /// Sent in HELLO. Discord uses ~41 s; short values make serenity heartbeat during a test.
    pub heartbeat_interval: Duration,
    /// How long after dispatch an interaction may be answered (Discord: 3 s).
    pub interaction_deadline: Duration,
    /// Echo the bot's own messages and edits over the gateway, as Discord does.
    pub echo_own_messages: bool,
    /// Whether the application may use the Message Content intent (a switch in the Developer
    /// Portal). Without it, an IDENTIFY asking for it is closed with 4014, as Discord does.
    pub message_content_allowed: bool,
    /// Requests allowed in any sliding second outside the interaction endpoints (Discord: 50).
    pub global_limit: Option<usize>,
    /// Message writes allowed per sliding window in every channel (Discord's own numbers are
    /// not documented; about 5 per 5 s has long held).
    pub channel_limit: Option<(usize, Duration)>,
}

impl Default for FakeDiscordOptions {
    fn default() -> Self {
        FakeDiscordOptions {
            heartbeat_interval: Duration::from_secs(10),
            interaction_deadline: Duration::from_secs(3),
            echo_own_messages: true,
            message_content_allowed: true,
            global_limit: Some(50),
            channel_limit: None,
        }
    }
}

/// A user as the fake renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeUser {
    pub id: u64,
    pub name: String,
    pub bot: bool,
}

impl FakeUser {
    /// A human user.
    pub fn new(id: u64, name: &str) -> FakeUser {
        FakeUser {
            id,
            name: name.to_owned(),
            bot: false,
        }
    }
}

/// A file on a message: inbound (from [`IncomingMessage::with_attachment`]) or uploaded by the
/// bot. `url` is served by the fake itself.
#[derive(Clone, Debug)]
pub struct FakeAttachment {
    pub id: u64,
    pub filename: String,
    pub content_type: Option<String>,
    pub size: usize,
    pub url: String,
}

/// One version of a message's content.
#[derive(Clone, Debug)]
pub struct Version {
    pub at: Instant,
    pub content: String,
}

/// A message the fake holds, with its whole edit history.
#[derive(Clone, Debug)]
pub struct FakeMessage {
    pub id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    pub author: FakeUser,
    /// The current content.
    pub content: String,
    /// `message_reference.message_id`: the message this one replies to.
    pub reference: Option<u64>,
    /// Every content this message had, the original first.
    pub history: Vec<Version>,
    pub attachments: Vec<FakeAttachment>,
    pub flags: u64,
    /// The `allowed_mentions` of the latest write, as sent.
    pub allowed_mentions: Option<Value>,
    /// Set for an interaction's `@original` response and its follow-ups.
    pub interaction_id: Option<u64>,
    pub deleted: bool,
    pub created_at: Instant,
    /// The message's components as the latest write sent them (validated): an array of action
    /// rows, `[]` when it has none.
    pub components: Value,
    /// The users the content mentions (`<@id>`), as rendered in `mentions`.
    pub mentions: Vec<FakeUser>,
    /// Embeds Discord added by unfurling a link ([`FakeDiscord::dispatch_embed_update`]).
    pub embeds: Vec<Value>,
    /// When the message was last edited (`edited_timestamp`); `None` if never.
    pub edited_at: Option<SystemTime>,
}

impl FakeMessage {
    /// How many times the content was edited.
    pub fn edits(&self) -> usize {
        self.history.len().saturating_sub(1)
    }

    /// Every button of the message (action rows flattened), in order.
    pub fn buttons(&self) -> Vec<Value> {
        self.components
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row.get("components").and_then(Value::as_array))
            .flatten()
            .filter(|component| component.get("type").and_then(Value::as_u64) == Some(2))
            .cloned()
            .collect()
    }

    /// The `custom_id`s of the message's buttons in order (link buttons have none).
    pub fn button_ids(&self) -> Vec<String> {
        self.buttons()
            .iter()
            .filter_map(|button| button.get("custom_id").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// The message without buttons, edit history or anything else: a new stored message.
    fn new(
        id: u64,
        channel_id: u64,
        guild_id: Option<u64>,
        author: FakeUser,
        content: &str,
    ) -> Self {
        let now = Instant::now();
        FakeMessage {
            id,
            channel_id,
            guild_id,
            author,
            content: content.to_owned(),
            reference: None,
            history: vec![Version {
                at: now,
                content: content.to_owned(),
            }],
            attachments: Vec::new(),
            flags: 0,
            allowed_mentions: None,
            interaction_id: None,
            deleted: false,
            created_at: now,
            components: json!([]),
            mentions: Vec::new(),
            embeds: Vec::new(),
            edited_at: None,
        }
    }

    pub fn is_ephemeral(&self) -> bool {
        self.flags & EPHEMERAL != 0
    }
}

/// One REST call the bot made (or an attachment download), as received.
#[derive(Clone, Debug)]
pub struct RecordedCall {
    pub method: String,
    /// The path without `/api/v10`, e.g. `/channels/1/messages` (attachments keep their
    /// `/attachments/…` path).
    pub path: String,
    pub query: Option<String>,
    /// The JSON body (`payload_json` for multipart requests); `Null` when there was none.
    pub body: Value,
    /// Uploaded files: (form field name, file name, size in bytes).
    pub files: Vec<(String, String, usize)>,
    pub status: u16,
    /// The channel the call wrote to, when it is one the rate limit applies to.
    pub channel: Option<u64>,
    pub at: Instant,
}

/// A request the fake rejected with a 4xx other than 429: something Discord (or the
/// no-mentions policy) would not accept from a correct bot.
#[derive(Clone, Debug)]
pub struct Violation {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub reason: String,
    pub at: Instant,
}

/// How an interaction was answered (the callback the fake accepted).
#[derive(Clone, Debug)]
pub struct Acknowledgement {
    /// The callback type: 4 message, 5 deferred, 6 deferred update, 7 update, 8 autocomplete.
    pub kind: u64,
    pub at: Instant,
    /// Time from dispatch to the callback.
    pub latency: Duration,
    /// For 4 and 5, the callback's ephemeral flag; for 6 and 7, whether the clicked message is
    /// ephemeral.
    pub ephemeral: bool,
    /// The callback's `data` as sent (`Null` for 6).
    pub data: Value,
}

/// One `POST /interactions/{id}/{token}/callback`, accepted or not.
#[derive(Clone, Debug)]
pub struct CallbackAttempt {
    /// The callback type sent (0 when there was none).
    pub kind: u64,
    pub at: Instant,
    /// Time from dispatch to the callback.
    pub latency: Duration,
    /// The fake's answer: 204 when accepted; otherwise, e.g., 400 for a second callback, a type
    /// the interaction cannot take or an invalid message, 404 when too late (each refusal but
    /// a 429 also a [`Violation`]).
    pub status: u16,
}

/// An interaction dispatched by [`FakeDiscord::dispatch_command`] or [`FakeDiscord::click`].
#[derive(Clone, Debug)]
pub struct FakeInteraction {
    pub id: u64,
    /// The interaction type: 2 application command, 3 message component, 4 autocomplete.
    pub kind: u64,
    pub token: String,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    pub user: FakeUser,
    /// The command's name (empty for a click).
    pub name: String,
    /// A click's `custom_id`.
    pub custom_id: Option<String>,
    /// The message a click was on.
    pub message_id: Option<u64>,
    pub dispatched_at: Instant,
    pub ack: Option<Acknowledgement>,
    /// Every callback that arrived, in order, refused ones included.
    pub callbacks: Vec<CallbackAttempt>,
    /// The `@original` response message, once there is one: the new message of a type 4 or 5
    /// callback, or the clicked message after a type 6 or 7 (as on Discord).
    pub original: Option<u64>,
    pub followups: Vec<u64>,
}

/// A `PUT`/`POST` of application commands.
#[derive(Clone, Debug)]
pub struct CommandRegistration {
    /// `None` for global commands.
    pub guild_id: Option<u64>,
    pub method: String,
    pub names: Vec<String>,
    pub at: Instant,
}

/// Gateway counters.
#[derive(Clone, Debug, Default)]
pub struct GatewayStats {
    /// Websocket connections accepted.
    pub connections: usize,
    pub identifies: usize,
    /// Accepted RESUMEs.
    pub resumes: usize,
    /// RESUMEs answered with INVALID_SESSION.
    pub rejected_resumes: usize,
    pub heartbeats: usize,
    /// Whether a connection currently holds the session (identified or resumed).
    pub connected: bool,
    /// The intents of the latest IDENTIFY.
    pub intents: Option<u64>,
    /// The sequence number of the latest dispatch.
    pub seq: u64,
}

/// A message for [`FakeDiscord::dispatch_message`], as a user would post it.
#[derive(Clone, Debug)]
pub struct IncomingMessage {
    pub channel_id: u64,
    /// `None` for a DM.
    pub guild_id: Option<u64>,
    pub author: FakeUser,
    pub content: String,
    pub mentions: Vec<FakeUser>,
    pub reference: Option<u64>,
    /// The author's roles (guild messages).
    pub roles: Vec<u64>,
    /// (file name, content type, bytes)
    pub attachments: Vec<(String, String, Vec<u8>)>,
}

impl IncomingMessage {
    /// A message in `channel_id`; a DM unless [`IncomingMessage::in_guild`] is added.
    pub fn new(channel_id: u64, author: FakeUser, content: &str) -> IncomingMessage {
        IncomingMessage {
            channel_id,
            guild_id: None,
            author,
            content: content.to_owned(),
            mentions: Vec::new(),
            reference: None,
            roles: Vec::new(),
            attachments: Vec::new(),
        }
    }

    pub fn in_guild(mut self, guild_id: u64) -> Self {
        self.guild_id = Some(guild_id);
        self
    }

    /// Adds `user` to `mentions` (the content should carry `<@id>` too).
    pub fn mentioning(mut self, user: &FakeUser) -> Self {
        self.mentions.push(user.clone());
        self
    }

    pub fn replying_to(mut self, message_id: u64) -> Self {
        self.reference = Some(message_id);
        self
    }

    pub fn with_roles(mut self, roles: &[u64]) -> Self {
        self.roles = roles.to_vec();
        self
    }

    pub fn with_attachment(mut self, filename: &str, content_type: &str, bytes: &[u8]) -> Self {
        self.attachments
            .push((filename.to_owned(), content_type.to_owned(), bytes.to_vec()));
        self
    }
}

/// A slash command invocation for [`FakeDiscord::dispatch_command`].
#[derive(Clone, Debug)]
pub struct IncomingCommand {
    pub channel_id: u64,
    /// `None` for a DM.
    pub guild_id: Option<u64>,
    pub user: FakeUser,
    pub name: String,
    /// Discord's raw `data.options` array, e.g.
    /// `[{"name":"ask","type":1,"options":[{"name":"question","type":3,"value":"hi"}]}]`.
    pub options: Value,
    /// The member's permission bits in the channel (guild only), e.g. `8` for ADMINISTRATOR.
    pub permissions: u64,
    pub roles: Vec<u64>,
    /// Dispatch as an autocomplete interaction (type 4) instead of a command (type 2).
    pub autocomplete: bool,
}

impl IncomingCommand {
    pub fn new(channel_id: u64, user: FakeUser, name: &str, options: Value) -> IncomingCommand {
        IncomingCommand {
            channel_id,
            guild_id: None,
            user,
            name: name.to_owned(),
            options,
            permissions: 0,
            roles: Vec::new(),
            autocomplete: false,
        }
    }

    pub fn in_guild(mut self, guild_id: u64, permissions: u64) -> Self {
        self.guild_id = Some(guild_id);
        self.permissions = permissions;
        self
    }

    pub fn with_roles(mut self, roles: &[u64]) -> Self {
        self.roles = roles.to_vec();
        self
    }

    pub fn autocomplete(mut self) -> Self {
        self.autocomplete = true;
        self
    }
}

/// A click on a button, for [`FakeDiscord::click`]. The fake sends what it is told: the message
/// need not exist (the interaction then carries a stand-in bot message with that id and no
/// components) and need not carry the `custom_id`, so a bot's handling of stale or forged
/// clicks can be tested too.
#[derive(Clone, Debug)]
pub struct IncomingClick {
    pub channel_id: u64,
    /// `None` for a DM.
    pub guild_id: Option<u64>,
    pub user: FakeUser,
    /// The bot message whose button was clicked.
    pub message_id: u64,
    pub custom_id: String,
    /// The member's permission bits in the channel (guild only), e.g. `8` for ADMINISTRATOR.
    pub permissions: u64,
    pub roles: Vec<u64>,
}

impl IncomingClick {
    /// A click in `channel_id`; a DM unless [`IncomingClick::in_guild`] is added.
    pub fn new(channel_id: u64, user: FakeUser, message_id: u64, custom_id: &str) -> IncomingClick {
        IncomingClick {
            channel_id,
            guild_id: None,
            user,
            message_id,
            custom_id: custom_id.to_owned(),
            permissions: 0,
            roles: Vec::new(),
        }
    }

    /// A click on `message` (its channel and guild; no permissions unless
    /// [`IncomingClick::in_guild`] sets them).
    pub fn on(message: &FakeMessage, user: FakeUser, custom_id: &str) -> IncomingClick {
        IncomingClick {
            guild_id: message.guild_id,
            ..IncomingClick::new(message.channel_id, user, message.id, custom_id)
        }
    }

    pub fn in_guild(mut self, guild_id: u64, permissions: u64) -> Self {
        self.guild_id = Some(guild_id);
        self.permissions = permissions;
        self
    }

    pub fn with_roles(mut self, roles: &[u64]) -> Self {
        self.roles = roles.to_vec();
        self
    }
}

/// The fake Discord. Dropping it stops the server and drops the gateway connection.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    router: Router,
    /// TLS listeners started by [`FakeDiscord::serve_tls`].
    tls_servers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<St>,
    changed: watch::Sender<u64>,
    addr: SocketAddr,
    token: String,
    application_id: u64,
    bot: FakeUser,
    options: FakeDiscordOptions,
}

#[derive(Default)]
struct St {
    snowflakes: u64,
    calls: Vec<RecordedCall>,
    violations: Vec<Violation>,
    messages: BTreeMap<u64, FakeMessage>,
    files: HashMap<u64, StoredFile>,
    interactions: Vec<FakeInteraction>,
    commands: BTreeMap<Option<u64>, Vec<Value>>,
    registrations: Vec<CommandRegistration>,
    typing: Vec<(u64, Instant)>,
    /// The guild of each channel the test used (`None`: a DM channel), learnt from dispatches.
    channel_guilds: HashMap<u64, Option<u64>>,
    /// Threads the test made, and the channel each belongs to.
    thread_parents: HashMap<u64, u64>,
    /// The author's roles of each user message in a guild (its `member.roles`).
    member_roles: HashMap<u64, Vec<u64>>,
    limits: HashMap<u64, Limit>,
    injected: HashMap<u64, VecDeque<f64>>,
    rate_limited: Vec<(u64, Instant)>,
    /// Requests within the global limit's last second, and the 429s it answered.
    global_hits: VecDeque<Instant>,
    global_limited: Vec<Instant>,
    /// Answers that Discord counts towards its ban (401, 403, 429 but `shared`).
    invalid: Vec<Instant>,
    gateway: Gateway,
}

struct StoredFile {
    filename: String,
    content_type: Option<String>,
    bytes: Bytes,
}

struct Limit {
    per: usize,
    window: Duration,
    hits: VecDeque<Instant>,
}

#[derive(Default)]
struct Gateway {
    session: Option<Session>,
    /// The connection that holds the session: (connection id, its outbox).
    current: Option<(u64, mpsc::UnboundedSender<Control>)>,
    connections: u64,
    stats: GatewayStats,
}

struct Session {
    id: String,
    seq: u64,
    /// Every dispatch of the session: (seq, frame), for RESUME replay.
    log: Vec<(u64, String)>,
    resumable: bool,
}

enum Control {
    Frame(String),
    Drop,
}

/// A REST answer before it becomes an HTTP response.
struct Reply {
    status: StatusCode,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    channel: Option<u64>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
            channel: None,
        }
    }

    fn ok(body: Value) -> Reply {
        Reply::json(StatusCode::OK, body)
    }

    fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            headers: Vec::new(),
            channel: None,
        }
    }

    /// Discord's plain JSON error: `{"message", "code"}`.
    fn error(status: StatusCode, code: u64, message: &str) -> Reply {
        Reply::json(status, json!({"message": message, "code": code}))
    }

    /// Discord's "Invalid Form Body" (50035) with one field error.
    fn form_error(field: &str, code: &str, message: &str) -> Reply {
        Reply::json(
            StatusCode::BAD_REQUEST,
            json!({
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {field: {"_errors": [{"code": code, "message": message}]}},
            }),
        )
    }

    /// Discord's "Invalid Form Body" with one error at a nested `path`, e.g.
    /// `["components", "0", "components", "1", "custom_id"]`.
    fn form_error_at(path: &[String], code: &str, message: &str) -> Reply {
        let mut errors = json!({"_errors": [{"code": code, "message": message}]});
        for key in path.iter().rev() {
            let mut level = serde_json::Map::new();
            level.insert(key.clone(), errors);
            errors = Value::Object(level);
        }
        Reply::json(
            StatusCode::BAD_REQUEST,
            json!({"message": "Invalid Form Body", "code": 50035, "errors": errors}),
        )
    }

    /// A form error's field paths moved under `key` (an interaction callback's `data`).
    fn under(mut self, key: &str) -> Reply {
        if let Some(errors) = self.body.as_mut().and_then(|body| body.get_mut("errors")) {
            let mut level = serde_json::Map::new();
            level.insert(key.to_owned(), errors.take());
            *errors = Value::Object(level);
        }
        self
    }

    fn in_channel(mut self, channel: u64) -> Reply {
        self.channel = Some(channel);
        self
    }
}

type Routed = Result<Reply, Reply>;

impl FakeDiscord {
    /// Starts the fake on an ephemeral port of 127.0.0.1 with default options.
    pub async fn start() -> FakeDiscord {
        FakeDiscord::start_with(FakeDiscordOptions::default()).await
    }

    pub async fn start_with(options: FakeDiscordOptions) -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Discord");
        let addr = listener.local_addr().expect("fake Discord address");
        let application_id = 1_100_000_000_000_000_001;
        let shared = Arc::new(Shared {
            state: Mutex::new(St::default()),
            changed: watch::channel(0).0,
            addr,
            token: format!("fake-discord-token.{}", addr.port()),
            application_id,
            // Discord bots' user id equals the application id.
            bot: FakeUser {
                id: application_id,
                name: "poe-relay".to_owned(),
                bot: true,
            },
            options,
        });
        let router = Router::new()
            .route("/gateway", get(gateway))
            .route("/attachments/{id}/{filename}", get(attachment))
            .fallback(api)
            .with_state(shared.clone());
        let served = router.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, served).await;
        });
        FakeDiscord {
            shared,
            server,
            router,
            tls_servers: Mutex::new(Vec::new()),
        }
    }

    /// Serves the same API over TLS with `certificate` on another port of 127.0.0.1, for a
    /// client that must believe it talks to https://discord.com (serenity's own rate limiter
    /// sends there and nowhere else): resolve discord.com to the returned address and trust
    /// the certificate.
    pub async fn serve_tls(
        &self,
        certificate: rustls::pki_types::CertificateDer<'static>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> SocketAddr {
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certificate], key)
            .expect("a TLS configuration for the fake Discord");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Discord's TLS port");
        let addr = listener.local_addr().expect("the TLS address");
        let router = self.router.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        self.tls_servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(server);
        addr
    }

    /// The bot token to give serenity (without the `Bot ` prefix, which serenity adds).
    pub fn bot_token(&self) -> &str {
        &self.shared.token
    }

    pub fn application_id(&self) -> u64 {
        self.shared.application_id
    }

    /// The bot's own user (its id equals the application id, as on Discord).
    pub fn bot_user(&self) -> FakeUser {
        self.shared.bot.clone()
    }

    /// `<@bot id>`, the text of a mention of the bot.
    pub fn mention(&self) -> String {
        format!("<@{}>", self.shared.bot.id)
    }

    /// `http://127.0.0.1:PORT`: the value for serenity's `HttpBuilder::proxy` (it replaces
    /// `https://discord.com`, keeping `/api/v10/…`).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `ws://127.0.0.1:PORT/gateway`, without a query (serenity appends `?v=10`).
    pub fn gateway_url(&self) -> String {
        format!("ws://{}/gateway", self.shared.addr)
    }

    /// Shows a user message in a channel: stores it and dispatches MESSAGE_CREATE (if the
    /// bot's intents allow it). Returns the message id.
    pub fn dispatch_message(&self, incoming: IncomingMessage) -> u64 {
        let shared = &self.shared;
        let mut st = shared.lock();
        let now = Instant::now();
        let id = st.snowflake();
        let attachments = incoming
            .attachments
            .iter()
            .map(|(filename, content_type, bytes)| {
                st.store_file(
                    shared,
                    filename,
                    Some(content_type.clone()),
                    bytes.clone().into(),
                )
            })
            .collect();
        let message = FakeMessage {
            reference: incoming.reference,
            attachments,
            mentions: incoming.mentions.clone(),
            created_at: now,
            ..FakeMessage::new(
                id,
                incoming.channel_id,
                incoming.guild_id,
                incoming.author.clone(),
                &incoming.content,
            )
        };
        st.messages.insert(id, message);
        st.channel_guilds
            .insert(incoming.channel_id, incoming.guild_id);
        let mut data = st.message_json(shared, id);
        if incoming.guild_id.is_some() {
            st.member_roles.insert(id, incoming.roles.clone());
            data["member"] = member_json(&incoming.roles);
        }
        let mentions_bot = incoming
            .mentions
            .iter()
            .any(|user| user.id == shared.bot.id);
        st.dispatch_message_event(
            shared,
            "MESSAGE_CREATE",
            data,
            incoming.guild_id,
            mentions_bot,
        );
        drop(st);
        shared.bump();
        id
    }

    /// Dispatches INTERACTION_CREATE for a slash command (or autocomplete) and returns the
    /// interaction id. The command id is the registered one when the name is registered.
    pub fn dispatch_command(&self, command: IncomingCommand) -> u64 {
        let shared = &self.shared;
        let mut st = shared.lock();
        let id = st.snowflake();
        let token = format!("fake-interaction-token-{id}");
        let command_id = st
            .commands
            .get(&command.guild_id)
            .into_iter()
            .chain(st.commands.get(&None))
            .flatten()
            .find(|registered| registered["name"] == command.name.as_str())
            .and_then(|registered| registered["id"].as_str())
            .map(str::to_owned);
        let command_id = match command_id {
            Some(id) => id,
            None => st.snowflake().to_string(),
        };
        let kind = if command.autocomplete {
            AUTOCOMPLETE
        } else {
            APPLICATION_COMMAND
        };
        let asker = Asker {
            channel_id: command.channel_id,
            guild_id: command.guild_id,
            user: &command.user,
            permissions: command.permissions,
            roles: &command.roles,
        };
        let mut data = interaction_json(shared, &mut st, id, &token, kind, &asker);
        data["data"] = json!({
            "id": command_id,
            "name": command.name,
            "type": 1,
            "options": command.options,
        });
        st.interactions.push(FakeInteraction {
            id,
            kind,
            token,
            channel_id: command.channel_id,
            guild_id: command.guild_id,
            user: command.user,
            name: command.name,
            custom_id: None,
            message_id: None,
            dispatched_at: Instant::now(),
            ack: None,
            callbacks: Vec::new(),
            original: None,
            followups: Vec::new(),
        });
        st.dispatch("INTERACTION_CREATE", data);
        drop(st);
        shared.bump();
        id
    }

    /// A click on a button: dispatches INTERACTION_CREATE of type 3 (MESSAGE_COMPONENT) with
    /// `data: {custom_id, component_type: 2}` and the clicked message as Discord renders it
    /// (with its components), and returns the interaction id. Answer it with a callback of type
    /// 6 (DEFERRED_UPDATE_MESSAGE), 7 (UPDATE_MESSAGE: its `data` edits the clicked message), 4
    /// or 5, within the deadline; follow-ups and `@original` work as for commands.
    ///
    /// The fake sends what it is told (see [`IncomingClick`]): a message it does not hold is
    /// rendered as a bare bot message with that id and no components, and a `custom_id` the
    /// message does not carry is sent as is.
    pub fn click(&self, click: IncomingClick) -> u64 {
        let shared = &self.shared;
        let mut st = shared.lock();
        let id = st.snowflake();
        let token = format!("fake-interaction-token-{id}");
        let asker = Asker {
            channel_id: click.channel_id,
            guild_id: click.guild_id,
            user: &click.user,
            permissions: click.permissions,
            roles: &click.roles,
        };
        let mut data = interaction_json(shared, &mut st, id, &token, MESSAGE_COMPONENT, &asker);
        data["data"] = json!({"custom_id": click.custom_id, "component_type": 2});
        data["message"] = if st.messages.contains_key(&click.message_id) {
            st.message_json(shared, click.message_id)
        } else {
            let stand_in = FakeMessage::new(
                click.message_id,
                click.channel_id,
                click.guild_id,
                shared.bot.clone(),
                "",
            );
            render_message_value(&st, shared, &stand_in, false)
        };
        st.interactions.push(FakeInteraction {
            id,
            kind: MESSAGE_COMPONENT,
            token,
            channel_id: click.channel_id,
            guild_id: click.guild_id,
            user: click.user,
            name: String::new(),
            custom_id: Some(click.custom_id),
            message_id: Some(click.message_id),
            dispatched_at: Instant::now(),
            ack: None,
            callbacks: Vec::new(),
            original: None,
            followups: Vec::new(),
        });
        st.dispatch("INTERACTION_CREATE", data);
        drop(st);
        shared.bump();
        id
    }

    /// A user edits their message (one made by [`FakeDiscord::dispatch_message`]): the content
    /// changes (its history grows), `edited_timestamp` is set, mentions are recomputed from the
    /// `<@id>`s of the new content (users the fake knows), and MESSAGE_UPDATE is dispatched with
    /// the whole message, as Discord does for an edit, filtered by the intents like
    /// MESSAGE_CREATE (without MESSAGE_CONTENT, a guild message that does not mention the bot
    /// arrives with empty content). Returns false, dispatching nothing, for a message the fake
    /// does not hold, a deleted one, or one of the bot's.
    pub fn edit_user_message(&self, message_id: u64, new_content: &str) -> bool {
        let shared = &self.shared;
        let mut st = shared.lock();
        match st.messages.get(&message_id) {
            Some(message) if !message.deleted && message.author.id != shared.bot.id => {}
            _ => return false,
        }
        let mentions = st.mentioned_in(shared, new_content);
        let message = st.messages.get_mut(&message_id).expect("checked above");
        message.content = new_content.to_owned();
        message.history.push(Version {
            at: Instant::now(),
            content: new_content.to_owned(),
        });
        message.edited_at = Some(SystemTime::now());
        message.mentions = mentions;
        let guild = message.guild_id;
        let mentions_bot = message.mentions.iter().any(|user| user.id == shared.bot.id);
        let mut data = st.message_json(shared, message_id);
        if guild.is_some() {
            let roles = st
                .member_roles
                .get(&message_id)
                .cloned()
                .unwrap_or_default();
            data["member"] = member_json(&roles);
        }
        st.dispatch_message_event(shared, "MESSAGE_UPDATE", data, guild, mentions_bot);
        drop(st);
        shared.bump();
        true
    }

    /// Discord unfurls the first link of a message: the message gets a link embed, and the
    /// partial MESSAGE_UPDATE Discord sends for that is dispatched: `id`, `channel_id`,
    /// `guild_id` and `embeds` only, no `content`, no `author`, no `edited_timestamp` (the
    /// message was not edited). Works for users' and the bot's messages. Returns false,
    /// dispatching nothing, when the message is unknown or deleted or its content has no
    /// `http(s)://` link outside `<…>` (which suppresses embeds on Discord).
    pub fn dispatch_embed_update(&self, message_id: u64) -> bool {
        let shared = &self.shared;
        let mut st = shared.lock();
        let Some(message) = st.messages.get_mut(&message_id).filter(|m| !m.deleted) else {
            return false;
        };
        let Some(url) = first_link(&message.content) else {
            return false;
        };
        message.embeds = vec![json!({
            "type": "link",
            "url": url,
            "title": url,
            "description": format!("A preview of {url}"),
        })];
        let mut data = json!({
            "id": message_id.to_string(),
            "channel_id": message.channel_id.to_string(),
            "embeds": message.embeds,
        });
        let guild = message.guild_id;
        if let Some(guild) = guild {
            data["guild_id"] = json!(guild.to_string());
        }
        let privileged = message.author.id == shared.bot.id
            || message.mentions.iter().any(|user| user.id == shared.bot.id);
        st.dispatch_message_event(shared, "MESSAGE_UPDATE", data, guild, privileged);
        drop(st);
        shared.bump();
        true
    }

    /// Makes `thread` a public thread of `parent` in `guild`: `GET /channels/{thread}` and the
    /// `channel` of its interactions say so.
    pub fn add_thread(&self, thread: u64, parent: u64, guild: u64) {
        let mut st = self.shared.lock();
        st.thread_parents.insert(thread, parent);
        st.channel_guilds.insert(thread, Some(guild));
        st.channel_guilds.entry(parent).or_insert(Some(guild));
    }

    /// The channel object Discord returns for `id` (`None`: a channel the test never used).
    pub fn channel(&self, id: u64) -> Option<Value> {
        channel_json(&self.shared.lock(), id)
    }

    /// Dispatches any event as is (for payloads the helpers do not build). Returns its
    /// sequence number.
    pub fn dispatch_raw(&self, event: &str, data: Value) -> u64 {
        let seq = self.shared.lock().dispatch(event, data);
        self.shared.bump();
        seq
    }

    /// Every message in `channel`, users' and the bot's (deleted ones included, flagged), oldest
    /// first.
    pub fn messages(&self, channel: u64) -> Vec<FakeMessage> {
        let st = self.shared.lock();
        st.messages
            .values()
            .filter(|message| message.channel_id == channel)
            .cloned()
            .collect()
    }

    /// The bot's messages in `channel`, oldest first.
    pub fn bot_messages(&self, channel: u64) -> Vec<FakeMessage> {
        let bot = self.shared.bot.id;
        self.messages(channel)
            .into_iter()
            .filter(|message| message.author.id == bot)
            .collect()
    }

    pub fn message(&self, id: u64) -> Option<FakeMessage> {
        self.shared.lock().messages.get(&id).cloned()
    }

    /// Every REST call (and attachment download), in arrival order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().calls.clone()
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.shared.lock().violations.clone()
    }

    pub fn interactions(&self) -> Vec<FakeInteraction> {
        self.shared.lock().interactions.clone()
    }

    pub fn interaction(&self, id: u64) -> Option<FakeInteraction> {
        let st = self.shared.lock();
        st.interactions.iter().find(|i| i.id == id).cloned()
    }

    /// The registered commands (as returned to the bot) of a guild, or global ones for `None`.
    pub fn commands(&self, guild: Option<u64>) -> Vec<Value> {
        let st = self.shared.lock();
        st.commands.get(&guild).cloned().unwrap_or_default()
    }

    pub fn command_registrations(&self) -> Vec<CommandRegistration> {
        self.shared.lock().registrations.clone()
    }

    /// When the bot triggered typing in `channel`.
    pub fn typing(&self, channel: u64) -> Vec<Instant> {
        let st = self.shared.lock();
        st.typing
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, at)| *at)
            .collect()
    }

    /// Allows at most `per` message creates and edits in `channel` per sliding `window`;
    /// more get 429.
    pub fn rate_limit(&self, channel: u64, per: usize, window: Duration) {
        assert!(
            per > 0,
            "a rate limit of zero requests never lets anything through"
        );
        self.shared.lock().limits.insert(
            channel,
            Limit {
                per,
                window,
                hits: VecDeque::new(),
            },
        );
    }

    /// The next `count` message writes in `channel` get 429 with `retry_after` seconds,
    /// whatever the rate limit says.
    pub fn inject_429(&self, channel: u64, count: usize, retry_after: Duration) {
        let mut st = self.shared.lock();
        let queue = st.injected.entry(channel).or_default();
        queue.extend(std::iter::repeat_n(retry_after.as_secs_f64(), count));
    }

    /// How many 429s of the global limit the fake answered.
    pub fn global_rate_limited(&self) -> usize {
        self.shared.lock().global_limited.len()
    }

    /// Invalid requests (401, 403, 429) in the last 10 minutes, as Discord counts them for
    /// its IP ban.
    pub fn invalid_requests(&self) -> usize {
        let st = self.shared.lock();
        let now = Instant::now();
        st.invalid
            .iter()
            .filter(|at| now.duration_since(**at) < Duration::from_secs(600))
            .count()
    }

    /// How many per-channel 429s the fake answered, in `channel` or (for `None`) anywhere.
    pub fn rate_limited(&self, channel: Option<u64>) -> usize {
        let st = self.shared.lock();
        st.rate_limited
            .iter()
            .filter(|(c, _)| channel.is_none_or(|channel| *c == channel))
            .count()
    }

    pub fn gateway_stats(&self) -> GatewayStats {
        self.shared.lock().gateway.stats.clone()
    }

    /// Closes the gateway connection abruptly (no close frame), like a network failure. The
    /// session stays resumable. Returns whether a connection was there to drop.
    pub fn drop_gateway(&self) -> bool {
        self.control(Control::Drop)
    }

    /// Sends RECONNECT (op 7): the client should reconnect and RESUME.
    pub fn send_reconnect(&self) -> bool {
        self.control(Control::Frame(json!({"op": 7, "d": null}).to_string()))
    }

    /// Sends INVALID_SESSION (op 9). When not `resumable`, the session is also forgotten: a
    /// RESUME gets INVALID_SESSION again and only a new IDENTIFY works.
    pub fn send_invalid_session(&self, resumable: bool) -> bool {
        if !resumable && let Some(session) = &mut self.shared.lock().gateway.session {
            session.resumable = false;
        }
        self.control(Control::Frame(json!({"op": 9, "d": resumable}).to_string()))
    }

    fn control(&self, control: Control) -> bool {
        let st = self.shared.lock();
        match &st.gateway.current {
            Some((_, outbox)) => outbox.send(control).is_ok(),
            None => false,
        }
    }

    /// Waits up to 10 s until `check` returns `Some`, re-checking after every change the fake
    /// sees; panics with `what` on timeout.
    pub async fn wait_for<T>(&self, what: &str, check: impl FnMut(&FakeDiscord) -> Option<T>) -> T {
        self.wait_for_within(Duration::from_secs(10), what, check)
            .await
    }

    pub async fn wait_for_within<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&FakeDiscord) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            // Also wake up now and then: conditions may depend on time alone.
            let tick = tokio::time::Instant::now() + Duration::from_millis(250);
            match tokio::time::timeout_at(deadline.min(tick), changes.changed()).await {
                Ok(_) => {}
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    panic!("timed out after {timeout:?} waiting for {what}")
                }
                Err(_) => {}
            }
        }
    }

    /// Waits until a connection holds an identified session (READY sent).
    pub async fn wait_ready(&self) {
        self.wait_for("the bot to identify on the gateway", |fake| {
            let stats = fake.gateway_stats();
            (stats.connected && stats.identifies > 0).then_some(())
        })
        .await
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.control(Control::Drop);
        self.server.abort();
        for server in self
            .tls_servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            server.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    fn attachment_url(&self, id: u64, filename: &str) -> String {
        format!("http://{}/attachments/{id}/{filename}", self.addr)
    }
}

impl St {
    fn snowflake(&mut self) -> u64 {
        self.snowflakes += 1;
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DISCORD_EPOCH_MS + 1);
        ((ms - DISCORD_EPOCH_MS) << 22) | (self.snowflakes & 0x3f_ffff)
    }

    fn store_file(
        &mut self,
        shared: &Shared,
        filename: &str,
        content_type: Option<String>,
        bytes: Bytes,
    ) -> FakeAttachment {
        let id = self.snowflake();
        let attachment = FakeAttachment {
            id,
            filename: filename.to_owned(),
            content_type: content_type.clone(),
            size: bytes.len(),
            url: shared.attachment_url(id, filename),
        };
        self.files.insert(
            id,
            StoredFile {
                filename: filename.to_owned(),
                content_type,
                bytes,
            },
        );
        attachment
    }

    /// The message as Discord renders it (REST responses and gateway events).
    fn message_json(&self, shared: &Shared, id: u64) -> Value {
        self.render_message(shared, id, true)
    }

    /// `with_referenced`: include the replied-to message (one level, as Discord does).
    fn render_message(&self, shared: &Shared, id: u64, with_referenced: bool) -> Value {
        render_message_value(self, shared, &self.messages[&id], with_referenced)
    }

    /// The users `content` mentions with `<@id>` or `<@!id>`, as Discord computes `mentions`:
    /// the bot, and every user the fake has seen (authors, mentions, interaction users); ids it
    /// never saw are left out.
    fn mentioned_in(&self, shared: &Shared, content: &str) -> Vec<FakeUser> {
        let mut mentioned: Vec<FakeUser> = Vec::new();
        for piece in content.split("<@").skip(1) {
            let piece = piece.strip_prefix('!').unwrap_or(piece);
            let Some((digits, _)) = piece.split_once('>') else {
                continue;
            };
            let Ok(id) = digits.parse::<u64>() else {
                continue;
            };
            if mentioned.iter().any(|user| user.id == id) {
                continue;
            }
            let known = std::iter::once(&shared.bot)
                .chain(
                    self.messages
                        .values()
                        .flat_map(|m| std::iter::once(&m.author).chain(&m.mentions)),
                )
                .chain(self.interactions.iter().map(|i| &i.user))
                .find(|user| user.id == id);
            if let Some(user) = known {
                mentioned.push(user.clone());
            }
        }
        mentioned
    }

    /// Appends a dispatch to the session and sends it on the current connection. Returns its
    /// sequence number (0 when no session was ever identified: nothing to deliver to).
    fn dispatch(&mut self, event: &str, data: Value) -> u64 {
        let gateway = &mut self.gateway;
        let Some(session) = &mut gateway.session else {
            return 0;
        };
        session.seq += 1;
        let seq = session.seq;
        let frame = json!({"op": 0, "s": seq, "t": event, "d": data}).to_string();
        session.log.push((seq, frame.clone()));
        gateway.stats.seq = seq;
        if let Some((_, outbox)) = &gateway.current {
            let _ = outbox.send(Control::Frame(frame));
        }
        seq
    }

    /// MESSAGE_CREATE / MESSAGE_UPDATE, filtered by the session's intents as Discord does.
    /// `mentions_bot`: the message mentions the bot (or is otherwise privileged: content kept).
    fn dispatch_message_event(
        &mut self,
        shared: &Shared,
        event: &str,
        mut data: Value,
        guild: Option<u64>,
        mentions_bot: bool,
    ) {
        let intents = self.gateway.stats.intents.unwrap_or(0);
        let needed = if guild.is_some() {
            GUILD_MESSAGES
        } else {
            DIRECT_MESSAGES
        };
        if intents & needed == 0 {
            return;
        }
        let author_is_bot = data["author"]["id"] == shared.bot.id.to_string().as_str();
        let privileged = guild.is_none() || mentions_bot || author_is_bot;
        if intents & MESSAGE_CONTENT == 0 && !privileged {
            // Only the fields the event has: a partial MESSAGE_UPDATE stays partial.
            for (field, empty) in [
                ("content", json!("")),
                ("attachments", json!([])),
                ("embeds", json!([])),
                ("components", json!([])),
            ] {
                if let Some(value) = data.get_mut(field) {
                    *value = empty;
                }
            }
        }
        self.dispatch(event, data);
    }

    /// 429 for a write in `channel` when injected or over the limit; otherwise counts the
    /// write and returns the `X-RateLimit-*` headers to send with the success.
    fn rate_check(
        &mut self,
        channel: u64,
        every_channel: Option<(usize, Duration)>,
    ) -> Result<Vec<(&'static str, String)>, Reply> {
        let now = Instant::now();
        if let Some((per, window)) = every_channel {
            self.limits.entry(channel).or_insert_with(|| Limit {
                per,
                window,
                hits: VecDeque::new(),
            });
        }
        if let Some(retry_after) = self
            .injected
            .get_mut(&channel)
            .and_then(VecDeque::pop_front)
        {
            self.rate_limited.push((channel, now));
            return Err(too_many(channel, retry_after, 1));
        }
        let Some(limit) = self.limits.get_mut(&channel) else {
            return Ok(Vec::new());
        };
        while limit
            .hits
            .front()
            .is_some_and(|hit| now.duration_since(*hit) >= limit.window)
        {
            limit.hits.pop_front();
        }
        if limit.hits.len() >= limit.per {
            let oldest = limit.hits[0];
            let retry_after = limit
                .window
                .saturating_sub(now.duration_since(oldest))
                .as_secs_f64();
            let per = limit.per;
            self.rate_limited.push((channel, now));
            return Err(too_many(channel, retry_after, per));
        }
        limit.hits.push_back(now);
        let reset_after = limit
            .window
            .saturating_sub(now.duration_since(limit.hits[0]))
            .as_secs_f64();
        Ok(vec![
            ("x-ratelimit-limit", limit.per.to_string()),
            (
                "x-ratelimit-remaining",
                (limit.per - limit.hits.len()).to_string(),
            ),
            ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
            (
                "x-ratelimit-reset",
                format!("{:.3}", unix_secs() + reset_after),
            ),
            ("x-ratelimit-bucket", format!("fake-channel-{channel}")),
        ])
    }
}

impl St {
    /// A 429 when `path` counts against the global limit and the last second already had
    /// `limit` such requests; otherwise the request is counted in.
    fn global_check(&mut self, path: &str, limit: Option<usize>) -> Option<Reply> {
        let limit = limit?;
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // Interaction endpoints are not bound by the global limit.
        if matches!(
            segments.as_slice(),
            ["interactions", _, _, "callback"] | ["webhooks", ..]
        ) {
            return None;
        }
        let now = Instant::now();
        let second = Duration::from_secs(1);
        while self
            .global_hits
            .front()
            .is_some_and(|hit| now.duration_since(*hit) >= second)
        {
            self.global_hits.pop_front();
        }
        if self.global_hits.len() >= limit {
            let retry_after = self.global_hits.front().map_or(second, |oldest| {
                second.saturating_sub(now.duration_since(*oldest))
            });
            self.global_limited.push(now);
            return Some(too_many_globally(retry_after.as_secs_f64()));
        }
        self.global_hits.push_back(now);
        None
    }
}

/// Discord's 429 for the global limit: `global: true`, `X-RateLimit-Global`, scope `global`.
fn too_many_globally(retry_after: f64) -> Reply {
    let retry_after = ((retry_after * 1000.0).ceil() / 1000.0).max(0.001);
    Reply {
        status: StatusCode::TOO_MANY_REQUESTS,
        body: Some(json!({
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": true,
        })),
        headers: vec![
            (
                "retry-after",
                (retry_after.ceil() as u64).max(1).to_string(),
            ),
            ("x-ratelimit-global", "true".to_owned()),
            ("x-ratelimit-scope", "global".to_owned()),
        ],
        channel: None,
    }
}

/// Discord's 429: body, `Retry-After` (whole seconds, rounded up) and `X-RateLimit-*`.
fn too_many(channel: u64, retry_after: f64, limit: usize) -> Reply {
    let retry_after = (retry_after * 1000.0).ceil() / 1000.0;
    Reply {
        status: StatusCode::TOO_MANY_REQUESTS,
        body: Some(json!({
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": false,
        })),
        headers: vec![
            (
                "retry-after",
                (retry_after.ceil() as u64).max(1).to_string(),
            ),
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset-after", format!("{retry_after:.3}")),
            (
                "x-ratelimit-reset",
                format!("{:.3}", unix_secs() + retry_after),
            ),
            ("x-ratelimit-bucket", format!("fake-channel-{channel}")),
            ("x-ratelimit-scope", "user".to_owned()),
        ],
        channel: Some(channel),
    }
}

// ---------------------------------------------------------------------------------------
// REST

/// Every `/api/v10/…` request: parse, authenticate, route, record.
async fn api(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let full_path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let headers = request.headers().clone();
    let parsed = parse_body(request).await;
    let path = full_path
        .strip_prefix("/api/v10")
        .unwrap_or(&full_path)
        .to_owned();
    let (body, files) = match &parsed {
        Ok((body, files)) => (body.clone(), files.clone()),
        Err(_) => (Value::Null, Vec::new()),
    };
    let mut st = shared.lock();
    let reply = if !full_path.starts_with("/api/v10/") {
        Reply::error(
            StatusCode::NOT_FOUND,
            0,
            "404: Not Found (not under /api/v10)",
        )
    } else if !authorized(&headers, &shared.token) {
        Reply::error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized")
    } else if let Some(rejected) = st.global_check(&path, shared.options.global_limit) {
        rejected
    } else if let Err(message) = &parsed {
        Reply::error(StatusCode::BAD_REQUEST, 50109, message)
    } else {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        route(&shared, &mut st, &method, &segments, &body, files.clone())
            .unwrap_or_else(|rejected| rejected)
    };
    let now = Instant::now();
    let shared_scope = reply
        .headers
        .iter()
        .any(|(name, value)| *name == "x-ratelimit-scope" && value == "shared");
    if matches!(reply.status.as_u16(), 401 | 403) || (reply.status.as_u16() == 429 && !shared_scope)
    {
        st.invalid.push(now);
    }
    st.calls.push(RecordedCall {
        method: method.to_string(),
        path: path.clone(),
        query,
        body,
        files: files
            .iter()
            .map(|file| (file.field.clone(), file.filename.clone(), file.bytes.len()))
            .collect(),
        status: reply.status.as_u16(),
        channel: reply.channel,
        at: now,
    });
    if reply.status.is_client_error() && reply.status != StatusCode::TOO_MANY_REQUESTS {
        st.violations.push(Violation {
            method: method.to_string(),
            path,
            status: reply.status.as_u16(),
            reason: reply
                .body
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            at: now,
        });
    }
    drop(st);
    shared.bump();
    let mut response = match reply.body {
        Some(body) => (reply.status, axum::Json(body)).into_response(),
        None => reply.status.into_response(),
    };
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

#[derive(Clone)]
struct Upload {
    field: String,
    filename: String,
    content_type: Option<String>,
    bytes: Bytes,
}

/// The JSON body, or `payload_json` plus files for multipart; `Null` when empty.
async fn parse_body(request: Request) -> Result<(Value, Vec<Upload>), String> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    if multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|err| format!("bad multipart body: {err}"))?;
        let mut payload = Value::Null;
        let mut files = Vec::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|err| format!("bad multipart body: {err}"))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let filename = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let bytes = field
                .bytes()
                .await
                .map_err(|err| format!("bad multipart body: {err}"))?;
            if name == "payload_json" {
                payload = serde_json::from_slice(&bytes)
                    .map_err(|_| "The request body contains invalid JSON.".to_owned())?;
            } else if let Some(filename) = filename {
                files.push(Upload {
                    field: name,
                    filename,
                    content_type,
                    bytes,
                });
            }
        }
        return Ok((payload, files));
    }
    let bytes = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .map_err(|err| format!("unreadable body: {err}"))?;
    if bytes.is_empty() {
        return Ok((Value::Null, Vec::new()));
    }
    let body = serde_json::from_slice(&bytes)
        .map_err(|_| "The request body contains invalid JSON.".to_owned())?;
    Ok((body, Vec::new()))
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == format!("Bot {token}"))
}

fn route(
    shared: &Shared,
    st: &mut St,
    method: &Method,
    segments: &[&str],
    body: &Value,
    files: Vec<Upload>,
) -> Routed {
    let app = shared.application_id.to_string();
    match (method.as_str(), segments) {
        ("GET", ["gateway"]) => Ok(Reply::ok(json!({"url": gateway_url(shared)}))),
        ("GET", ["gateway", "bot"]) => Ok(Reply::ok(json!({
            "url": gateway_url(shared),
            "shards": 1,
            "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1,
            },
        }))),
        ("GET", ["users", "@me"]) => Ok(Reply::ok(user_json(&shared.bot))),
        (_, ["applications", id, ..]) if *id != app => {
            Err(Reply::error(StatusCode::FORBIDDEN, 50001, "Missing Access"))
        }
        ("GET", ["applications", _, "commands"]) => Ok(Reply::ok(json!(
            st.commands.get(&None).cloned().unwrap_or_default()
        ))),
        ("GET", ["applications", _, "guilds", guild, "commands"]) => {
            let guild = snowflake(guild)?;
            Ok(Reply::ok(json!(
                st.commands.get(&Some(guild)).cloned().unwrap_or_default()
            )))
        }
        ("PUT" | "POST", ["applications", _, "commands"]) => {
            register_commands(shared, st, method, None, body)
        }
        ("PUT" | "POST", ["applications", _, "guilds", guild, "commands"]) => {
            let guild = snowflake(guild)?;
            register_commands(shared, st, method, Some(guild), body)
        }
        ("POST", ["channels", channel, "typing"]) => {
            let channel = snowflake(channel)?;
            st.typing.push((channel, Instant::now()));
            Ok(Reply::no_content())
        }
        ("POST", ["channels", channel, "messages"]) => {
            let channel = snowflake(channel)?;
            create_message(shared, st, channel, None, body, files)
        }
        ("GET", ["channels", channel, "messages", message]) => {
            let (channel, message) = (snowflake(channel)?, snowflake(message)?);
            let found = st.messages.get(&message);
            match found {
                Some(found) if found.channel_id == channel && !found.deleted => {
                    Ok(Reply::ok(st.message_json(shared, message)))
                }
                _ => Err(unknown_message()),
            }
        }
        ("GET", ["channels", channel]) => {
            let channel = snowflake(channel)?;
            channel_json(st, channel)
                .map(Reply::ok)
                .ok_or_else(|| Reply::error(StatusCode::NOT_FOUND, 10003, "Unknown Channel"))
        }
        ("PATCH", ["channels", channel, "messages", message]) => {
            let (channel, message) = (snowflake(channel)?, snowflake(message)?);
            edit_message(shared, st, channel, message, body, files)
        }
        ("DELETE", ["channels", channel, "messages", message]) => {
            let (channel, message) = (snowflake(channel)?, snowflake(message)?);
            delete_message(st, channel, message)
        }
        ("POST", ["interactions", id, token, "callback"]) => {
            let id = snowflake(id)?;
            interaction_callback(shared, st, id, token, body, files)
        }
        (_, ["webhooks", id, _, ..]) if *id != app => Err(Reply::error(
            StatusCode::NOT_FOUND,
            10015,
            "Unknown Webhook",
        )),
        ("POST", ["webhooks", _, token]) => followup(shared, st, token, body, files),
        (_, ["webhooks", _, token, "messages", target]) => {
            webhook_message(shared, st, method, token, target, body, files)
        }
        _ => Err(Reply::error(
            StatusCode::NOT_FOUND,
            0,
            "404: Not Found (route not implemented by the fake Discord)",
        )),
    }
}

fn gateway_url(shared: &Shared) -> String {
    format!("ws://{}/gateway", shared.addr)
}

fn snowflake(segment: &str) -> Result<u64, Reply> {
    segment.parse().map_err(|_| {
        Reply::form_error("snowflake", "NUMBER_TYPE_COERCE", "Value is not snowflake.")
    })
}

fn unknown_message() -> Reply {
    Reply::error(StatusCode::NOT_FOUND, 10008, "Unknown Message")
}

/// Content length, non-emptiness (for creates), components and the no-mentions policy.
fn validate_message(body: &Value, creating: bool, has_files: bool) -> Result<(), Reply> {
    if !body.is_object() {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            50035,
            "Invalid Form Body",
        ));
    }
    let content = body.get("content").and_then(Value::as_str);
    if let Some(content) = content
        && content.chars().count() > MAX_CONTENT_CHARS
    {
        return Err(Reply::form_error(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 2000 or fewer in length.",
        ));
    }
    let has_embeds = body
        .get("embeds")
        .and_then(Value::as_array)
        .is_some_and(|embeds| !embeds.is_empty());
    if creating && content.is_none_or(str::is_empty) && !has_files && !has_embeds {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            50006,
            "Cannot send an empty message",
        ));
    }
    if body
        .get("flags")
        .and_then(Value::as_u64)
        .is_some_and(|flags| flags & IS_COMPONENTS_V2 != 0)
    {
        return Err(Reply::form_error(
            "flags",
            "FAKE_DISCORD_NOT_IMPLEMENTED",
            "Components V2 (IS_COMPONENTS_V2) is not implemented by the fake Discord",
        ));
    }
    if let Some(components) = body.get("components").filter(|value| !value.is_null()) {
        validate_components(components)?;
    }
    if content.is_some() {
        check_allowed_mentions(body.get("allowed_mentions"))?;
    }
    Ok(())
}

/// A message's `components` as Discord checks them (without Components V2): at most 5 action
/// rows at the top level, 1-5 buttons in each, a 1-100 character `custom_id` on every button
/// but link buttons (which need a `url` and have no `custom_id`), each `custom_id` once in the
/// message (disabled buttons included), labels of at most 80 characters. Errors name the field's
/// path as Discord's do (`components.0.components.1.custom_id`).
fn validate_components(components: &Value) -> Result<(), Reply> {
    let error = |path: &[&str], code: &str, message: &str| {
        let mut full = vec!["components".to_owned()];
        full.extend(path.iter().map(|key| (*key).to_owned()));
        Err(Reply::form_error_at(&full, code, message))
    };
    let Some(rows) = components.as_array() else {
        return error(
            &[],
            "LIST_TYPE_CONVERT",
            "Only iterables may be used in a ListType",
        );
    };
    if rows.len() > MAX_ACTION_ROWS {
        return error(&[], "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.");
    }
    let mut custom_ids = HashSet::new();
    for (r, row) in rows.iter().enumerate() {
        let r = r.to_string();
        match row.get("type").and_then(Value::as_u64) {
            Some(1) => {}
            None => {
                return error(
                    &[&r, "type"],
                    "BASE_TYPE_REQUIRED",
                    "This field is required",
                );
            }
            Some(_) => {
                return error(
                    &[&r, "type"],
                    "UNION_TYPE_CHOICES",
                    "Value of field \"type\" must be one of (1,).",
                );
            }
        }
        let Some(children) = row.get("components").and_then(Value::as_array) else {
            return error(
                &[&r, "components"],
                "BASE_TYPE_REQUIRED",
                "This field is required",
            );
        };
        if children.is_empty() || children.len() > MAX_ROW_BUTTONS {
            return error(
                &[&r, "components"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 5 in length.",
            );
        }
        for (c, child) in children.iter().enumerate() {
            let c = c.to_string();
            let at = |field: &'static str| [r.as_str(), "components", c.as_str(), field];
            match child.get("type").and_then(Value::as_u64) {
                Some(2) => {}
                Some(3 | 5..=8) => {
                    return error(
                        &at("type"),
                        "FAKE_DISCORD_NOT_IMPLEMENTED",
                        "select menus are not implemented by the fake Discord",
                    );
                }
                None => return error(&at("type"), "BASE_TYPE_REQUIRED", "This field is required"),
                Some(_) => {
                    return error(
                        &at("type"),
                        "UNION_TYPE_CHOICES",
                        "Value of field \"type\" must be one of (2, 3, 5, 6, 7, 8).",
                    );
                }
            }
            let custom_id = child.get("custom_id").filter(|value| !value.is_null());
            match child.get("style").and_then(Value::as_u64) {
                Some(1..=4) => {}
                Some(5) => {
                    if child.get("url").and_then(Value::as_str).is_none() {
                        return error(&at("url"), "BASE_TYPE_REQUIRED", "This field is required");
                    }
                    if custom_id.is_some() {
                        return error(
                            &at("custom_id"),
                            "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                            "A link button cannot have a custom_id",
                        );
                    }
                }
                Some(6) => {
                    return error(
                        &at("style"),
                        "FAKE_DISCORD_NOT_IMPLEMENTED",
                        "premium buttons are not implemented by the fake Discord",
                    );
                }
                None => return error(&at("style"), "BASE_TYPE_REQUIRED", "This field is required"),
                Some(_) => {
                    return error(
                        &at("style"),
                        "BASE_TYPE_CHOICES",
                        "Value must be one of {1, 2, 3, 4, 5, 6}.",
                    );
                }
            }
            if let Some(label) = child.get("label").and_then(Value::as_str)
                && label.chars().count() > MAX_BUTTON_LABEL_CHARS
            {
                return error(
                    &at("label"),
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 80 or fewer in length.",
                );
            }
            if child.get("style").and_then(Value::as_u64) == Some(5) {
                continue;
            }
            let Some(custom_id) = custom_id else {
                return error(
                    &at("custom_id"),
                    "BASE_TYPE_REQUIRED",
                    "This field is required",
                );
            };
            let Some(custom_id) = custom_id.as_str() else {
                return error(
                    &at("custom_id"),
                    "STRING_TYPE_CONVERT",
                    "Could not interpret value as string.",
                );
            };
            if !(1..=MAX_CUSTOM_ID_CHARS).contains(&custom_id.chars().count()) {
                return error(
                    &at("custom_id"),
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                );
            }
            if !custom_ids.insert(custom_id.to_owned()) {
                return error(
                    &at("custom_id"),
                    "COMPONENT_CUSTOM_ID_DUPLICATED",
                    "Component custom id cannot be duplicated",
                );
            }
        }
    }
    Ok(())
}

/// The test policy: `allowed_mentions` present and mentioning nobody.
fn check_allowed_mentions(allowed: Option<&Value>) -> Result<(), Reply> {
    let reject = |why: &str| {
        Err(Reply::form_error(
            "allowed_mentions",
            "FAKE_DISCORD_MENTIONS_POLICY",
            why,
        ))
    };
    let Some(allowed) = allowed.filter(|value| !value.is_null()) else {
        return reject("allowed_mentions is required (and must mention nobody)");
    };
    let empty = |key: &str| {
        allowed
            .get(key)
            .is_none_or(|value| value.as_array().is_some_and(Vec::is_empty))
    };
    if !empty("parse") || !empty("users") || !empty("roles") {
        return reject("allowed_mentions must have empty parse, users and roles");
    }
    if allowed.get("replied_user") == Some(&Value::Bool(true)) {
        return reject("allowed_mentions.replied_user must not be true");
    }
    Ok(())
}

/// A new bot message in `channel` (a channel message, or an interaction's response).
fn create_message(
    shared: &Shared,
    st: &mut St,
    channel: u64,
    interaction: Option<u64>,
    body: &Value,
    files: Vec<Upload>,
) -> Routed {
    let headers = st.rate_check(channel, shared.options.channel_limit)?;
    validate_message(body, true, !files.is_empty()).map_err(|r| r.in_channel(channel))?;
    let reference = match body.pointer("/message_reference/message_id") {
        None | Some(Value::Null) => None,
        Some(id) => {
            let id = id
                .as_str()
                .and_then(|id| id.parse().ok())
                .or_else(|| id.as_u64());
            // Discord sends a reply to a missing message as a plain message when asked to.
            let strict =
                body.pointer("/message_reference/fail_if_not_exists") != Some(&json!(false));
            match id.and_then(|id| st.messages.get(&id)) {
                Some(target) if target.channel_id == channel && !target.deleted => Some(target.id),
                _ if !strict => None,
                _ => {
                    return Err(Reply::form_error(
                        "message_reference",
                        "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                        "Unknown message",
                    )
                    .in_channel(channel));
                }
            }
        }
    };
    let id = st.snowflake();
    let now = Instant::now();
    let guild_id = st.channel_guilds.get(&channel).copied().flatten();
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let attachments = files
        .into_iter()
        .map(|file| st.store_file(shared, &file.filename, file.content_type, file.bytes))
        .collect();
    let components = match body.get("components") {
        Some(Value::Array(rows)) => Value::Array(rows.clone()),
        _ => json!([]),
    };
    st.messages.insert(
        id,
        FakeMessage {
            reference,
            history: vec![Version {
                at: now,
                content: content.clone(),
            }],
            attachments,
            flags: body.get("flags").and_then(Value::as_u64).unwrap_or(0),
            allowed_mentions: body.get("allowed_mentions").cloned(),
            interaction_id: interaction,
            created_at: now,
            components,
            ..FakeMessage::new(id, channel, guild_id, shared.bot.clone(), &content)
        },
    );
    let rendered = st.message_json(shared, id);
    let ephemeral = st.messages[&id].is_ephemeral();
    if shared.options.echo_own_messages && !ephemeral {
        st.dispatch_message_event(shared, "MESSAGE_CREATE", rendered.clone(), guild_id, false);
    }
    let mut reply = Reply::ok(rendered).in_channel(channel);
    reply.headers = headers;
    Ok(reply)
}

fn edit_message(
    shared: &Shared,
    st: &mut St,
    channel: u64,
    id: u64,
    body: &Value,
    files: Vec<Upload>,
) -> Routed {
    match st.messages.get(&id) {
        Some(message) if message.channel_id == channel && !message.deleted => {
            if message.author.id != shared.bot.id {
                return Err(Reply::error(
                    StatusCode::FORBIDDEN,
                    50005,
                    "Cannot edit a message authored by another user",
                ));
            }
        }
        _ => return Err(unknown_message()),
    }
    let headers = st.rate_check(channel, shared.options.channel_limit)?;
    validate_message(body, false, !files.is_empty()).map_err(|r| r.in_channel(channel))?;
    let uploaded: Vec<FakeAttachment> = files
        .into_iter()
        .map(|file| st.store_file(shared, &file.filename, file.content_type, file.bytes))
        .collect();
    let message = st.messages.get_mut(&id).expect("checked above");
    if let Some(content) = body.get("content") {
        let content = content.as_str().unwrap_or_default().to_owned();
        message.content = content.clone();
        message.history.push(Version {
            at: Instant::now(),
            content,
        });
    }
    if let Some(keep) = body.get("attachments").and_then(Value::as_array) {
        let keep: Vec<String> = keep
            .iter()
            .filter_map(|a| a.get("id"))
            .map(|id| match id {
                Value::String(id) => id.clone(),
                other => other.to_string(),
            })
            .collect();
        message
            .attachments
            .retain(|a| keep.contains(&a.id.to_string()));
    }
    message.attachments.extend(uploaded);
    if let Some(flags) = body.get("flags").and_then(Value::as_u64) {
        message.flags = (message.flags & (EPHEMERAL | LOADING)) | flags;
    }
    if body.get("content").is_some() {
        message.flags &= !LOADING;
    }
    if let Some(allowed) = body.get("allowed_mentions") {
        message.allowed_mentions = Some(allowed.clone());
    }
    // Without `components` the message keeps its own; `[]` (or `null`) removes them.
    match body.get("components") {
        Some(Value::Array(rows)) => message.components = Value::Array(rows.clone()),
        Some(Value::Null) => message.components = json!([]),
        _ => {}
    }
    message.edited_at = Some(SystemTime::now());
    let (guild, ephemeral) = (message.guild_id, message.is_ephemeral());
    let rendered = st.message_json(shared, id);
    if shared.options.echo_own_messages && !ephemeral {
        st.dispatch_message_event(shared, "MESSAGE_UPDATE", rendered.clone(), guild, false);
    }
    let mut reply = Reply::ok(rendered).in_channel(channel);
    reply.headers = headers;
    Ok(reply)
}

fn delete_message(st: &mut St, channel: u64, id: u64) -> Routed {
    let message = st
        .messages
        .get_mut(&id)
        .filter(|m| m.channel_id == channel && !m.deleted)
        .ok_or_else(unknown_message)?;
    message.deleted = true;
    let guild = message.guild_id;
    let mut data = json!({"id": id.to_string(), "channel_id": channel.to_string()});
    if let Some(guild) = guild {
        data["guild_id"] = json!(guild.to_string());
    }
    st.dispatch("MESSAGE_DELETE", data);
    Ok(Reply::no_content().in_channel(channel))
}

fn register_commands(
    shared: &Shared,
    st: &mut St,
    method: &Method,
    guild: Option<u64>,
    body: &Value,
) -> Routed {
    let bulk = *method == Method::PUT;
    let submitted: Vec<Value> = if bulk {
        body.as_array().cloned().ok_or_else(|| {
            Reply::form_error("_", "LIST_TYPE_CONVERT", "Must be an array of commands.")
        })?
    } else {
        vec![body.clone()]
    };
    if bulk && submitted.len() > 100 {
        return Err(Reply::form_error(
            "_",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 100 or fewer in length.",
        ));
    }
    for (index, command) in submitted.iter().enumerate() {
        validate_command(command).map_err(|why| {
            Reply::form_error(&index.to_string(), "APPLICATION_COMMAND_INVALID", &why)
        })?;
    }
    let existing = st.commands.get(&guild).cloned().unwrap_or_default();
    let mut stored: Vec<Value> = if bulk { Vec::new() } else { existing.clone() };
    let mut returned = Vec::new();
    for command in &submitted {
        let name = command["name"].as_str().unwrap_or_default();
        let kind = command.get("type").and_then(Value::as_u64).unwrap_or(1);
        let id = existing
            .iter()
            .find(|c| c["name"] == name && c["type"] == kind)
            .and_then(|c| c["id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| st.snowflake().to_string());
        let mut rendered = command.clone();
        rendered["id"] = json!(id);
        rendered["type"] = json!(kind);
        rendered["application_id"] = json!(shared.application_id.to_string());
        rendered["version"] = json!(st.snowflake().to_string());
        rendered["description"] = json!(command["description"].as_str().unwrap_or_default());
        if let Some(guild) = guild {
            rendered["guild_id"] = json!(guild.to_string());
        }
        if rendered.get("default_member_permissions").is_none() {
            rendered["default_member_permissions"] = Value::Null;
        }
        stored.retain(|c| !(c["name"] == name && c["type"] == kind));
        stored.push(rendered.clone());
        returned.push(rendered);
    }
    st.commands.insert(guild, stored);
    st.registrations.push(CommandRegistration {
        guild_id: guild,
        method: method.to_string(),
        names: submitted
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect(),
        at: Instant::now(),
    });
    Ok(Reply::ok(if bulk {
        Value::Array(returned)
    } else {
        returned.remove(0)
    }))
}

/// What Discord checks of a command (and recursively of its options).
fn validate_command(command: &Value) -> Result<(), String> {
    let kind = command.get("type").and_then(Value::as_u64).unwrap_or(1);
    validate_named(command, kind == 1)?;
    validate_options(command, 0)
}

fn validate_named(item: &Value, needs_description: bool) -> Result<(), String> {
    let name = item
        .get("name")
        .and_then(Value::as_str)
        .ok_or("name is required")?;
    let length = name.chars().count();
    let valid = (1..=32).contains(&length)
        && name
            .chars()
            .all(|c| c == '-' || c == '_' || c.is_alphanumeric())
        && name.to_lowercase() == name;
    if !valid {
        return Err(format!("invalid name {name:?}"));
    }
    if needs_description {
        let description = item
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !(1..=100).contains(&description.chars().count()) {
            return Err(format!("{name}: description must be 1-100 characters"));
        }
    }
    Ok(())
}

fn validate_options(item: &Value, depth: usize) -> Result<(), String> {
    let Some(options) = item.get("options").and_then(Value::as_array) else {
        return Ok(());
    };
    if options.len() > 25 {
        return Err("at most 25 options".to_owned());
    }
    if depth > 2 {
        return Err("options nested too deeply".to_owned());
    }
    for option in options {
        validate_named(option, true)?;
        let kind = option.get("type").and_then(Value::as_u64).unwrap_or(0);
        if !(1..=11).contains(&kind) {
            return Err(format!("option type {kind} is not valid"));
        }
        if let Some(choices) = option.get("choices").and_then(Value::as_array)
            && choices.len() > 25
        {
            return Err("at most 25 choices".to_owned());
        }
        validate_options(option, depth + 1)?;
    }
    Ok(())
}

fn interaction_index(st: &St, id: Option<u64>, token: &str) -> Result<usize, Reply> {
    st.interactions
        .iter()
        .position(|i| i.token == token && id.is_none_or(|id| i.id == id))
        .ok_or_else(|| Reply::error(StatusCode::NOT_FOUND, 10062, "Unknown interaction"))
}

/// `POST /interactions/{id}/{token}/callback`, recorded on the interaction whatever the answer.
fn interaction_callback(
    shared: &Shared,
    st: &mut St,
    id: u64,
    token: &str,
    body: &Value,
    files: Vec<Upload>,
) -> Routed {
    let index = interaction_index(st, Some(id), token)?;
    let kind = body.get("type").and_then(Value::as_u64).unwrap_or(0);
    let latency = st.interactions[index].dispatched_at.elapsed();
    let answer = answer_interaction(shared, st, index, kind, latency, body, files);
    let status = match &answer {
        Ok(reply) | Err(reply) => reply.status.as_u16(),
    };
    st.interactions[index].callbacks.push(CallbackAttempt {
        kind,
        at: Instant::now(),
        latency,
        status,
    });
    answer
}

/// The callback's checks and effects: once, in time, a type the interaction can take; 4 makes
/// a message, 5 a deferred one, 6 nothing, 7 edits the clicked message.
fn answer_interaction(
    shared: &Shared,
    st: &mut St,
    index: usize,
    kind: u64,
    latency: Duration,
    body: &Value,
    files: Vec<Upload>,
) -> Routed {
    let interaction = &st.interactions[index];
    let (id, channel) = (interaction.id, interaction.channel_id);
    let (interaction_kind, clicked) = (interaction.kind, interaction.message_id);
    if interaction.ack.is_some() {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            40060,
            "Interaction has already been acknowledged.",
        ));
    }
    if latency > shared.options.interaction_deadline {
        return Err(Reply::error(
            StatusCode::NOT_FOUND,
            10062,
            "Unknown interaction (acknowledged too late)",
        ));
    }
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let flags = data.get("flags").and_then(Value::as_u64).unwrap_or(0);
    if matches!(kind, 6 | 7) && interaction_kind != MESSAGE_COMPONENT {
        // Discord: DEFERRED_UPDATE_MESSAGE and UPDATE_MESSAGE are only valid for
        // component-based interactions.
        return Err(Reply::form_error(
            "type",
            "INTERACTION_CALLBACK_TYPE_INVALID",
            "Callback types 6 and 7 are only valid for component interactions.",
        ));
    }
    let mut ephemeral = flags & EPHEMERAL != 0;
    let original = match kind {
        4 => {
            let mut message = data.clone();
            if let Some(object) = message.as_object_mut() {
                object.remove("message_reference");
            }
            let created = create_message(shared, st, channel, Some(id), &message, files)
                .map_err(|rejected| rejected.under("data"))?;
            created
                .body
                .as_ref()
                .and_then(|b| b["id"].as_str()?.parse().ok())
        }
        5 => {
            let message = st.snowflake();
            let guild = st.interactions[index].guild_id;
            st.messages.insert(
                message,
                FakeMessage {
                    flags: (flags & EPHEMERAL) | LOADING,
                    interaction_id: Some(id),
                    ..FakeMessage::new(message, channel, guild, shared.bot.clone(), "")
                },
            );
            Some(message)
        }
        6 => {
            let target = clicked.filter(|clicked| {
                st.messages
                    .get(clicked)
                    .is_some_and(|message| !message.deleted)
            });
            ephemeral = target.is_some_and(|target| st.messages[&target].is_ephemeral());
            target
        }
        7 => {
            let target = clicked.ok_or_else(unknown_message)?;
            let mut update = if data.is_null() {
                json!({})
            } else {
                data.clone()
            };
            if let Some(object) = update.as_object_mut() {
                object.remove("message_reference");
                // An update cannot make the message ephemeral (or public).
                if let Some(flags) = object.get("flags").and_then(Value::as_u64) {
                    object.insert("flags".to_owned(), json!(flags & !EPHEMERAL));
                }
            }
            edit_message(shared, st, channel, target, &update, files)
                .map_err(|rejected| rejected.under("data"))?;
            ephemeral = st.messages[&target].is_ephemeral();
            Some(target)
        }
        8 => None,
        _ => {
            return Err(Reply::form_error(
                "type",
                "BASE_TYPE_CHOICES",
                "Value must be one of {1, 4, 5, 6, 7, 8, 9, 10, 12}.",
            ));
        }
    };
    let interaction = &mut st.interactions[index];
    interaction.ack = Some(Acknowledgement {
        kind,
        at: Instant::now(),
        latency,
        ephemeral,
        data,
    });
    interaction.original = original;
    Ok(Reply::no_content())
}

/// `POST /webhooks/{app}/{token}`: a follow-up message.
fn followup(shared: &Shared, st: &mut St, token: &str, body: &Value, files: Vec<Upload>) -> Routed {
    let index = interaction_index(st, None, token)?;
    if st.interactions[index].ack.is_none() {
        return Err(Reply::error(
            StatusCode::NOT_FOUND,
            10015,
            "Unknown Webhook",
        ));
    }
    let (id, channel) = (st.interactions[index].id, st.interactions[index].channel_id);
    let mut message = body.clone();
    if let Some(object) = message.as_object_mut() {
        object.remove("message_reference");
    }
    // Discord: the first follow-up after a deferral answers the deferred ("thinking…")
    // message instead, keeping the deferral's visibility whatever the follow-up's flags say.
    let loading = st.interactions[index].original.filter(|original| {
        st.messages
            .get(original)
            .is_some_and(|message| message.flags & LOADING != 0 && !message.deleted)
    });
    if let Some(original) = loading {
        if let Some(object) = message.as_object_mut() {
            object.remove("flags");
        }
        return edit_message(shared, st, channel, original, &message, files);
    }
    let created = create_message(shared, st, channel, Some(id), &message, files)?;
    if let Some(message) = created
        .body
        .as_ref()
        .and_then(|b| b["id"].as_str()?.parse().ok())
    {
        st.interactions[index].followups.push(message);
    }
    Ok(created)
}

/// `GET`/`PATCH`/`DELETE /webhooks/{app}/{token}/messages/{@original | id}`.
fn webhook_message(
    shared: &Shared,
    st: &mut St,
    method: &Method,
    token: &str,
    target: &str,
    body: &Value,
    files: Vec<Upload>,
) -> Routed {
    let index = interaction_index(st, None, token)
        .map_err(|_| Reply::error(StatusCode::NOT_FOUND, 10015, "Unknown Webhook"))?;
    let interaction = &st.interactions[index];
    let message = if target == "@original" {
        interaction.original.ok_or_else(unknown_message)?
    } else {
        let id = snowflake(target)?;
        if interaction.original != Some(id) && !interaction.followups.contains(&id) {
            return Err(unknown_message());
        }
        id
    };
    let channel = interaction.channel_id;
    match method.as_str() {
        "GET" => Ok(Reply::ok(st.message_json(shared, message))),
        "PATCH" => edit_message(shared, st, channel, message, body, files),
        "DELETE" => delete_message(st, channel, message),
        _ => Err(Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            0,
            "405: Method Not Allowed",
        )),
    }
}

/// `GET /attachments/{id}/{filename}`: files served over loopback, no token needed (like
/// Discord's CDN). Recorded as calls too.
async fn attachment(
    State(shared): State<Arc<Shared>>,
    Path((id, filename)): Path<(u64, String)>,
) -> Response {
    let mut st = shared.lock();
    let found = st
        .files
        .get(&id)
        .filter(|file| file.filename == filename)
        .map(|file| (file.content_type.clone(), file.bytes.clone()));
    let status = if found.is_some() { 200 } else { 404 };
    st.calls.push(RecordedCall {
        method: "GET".to_owned(),
        path: format!("/attachments/{id}/{filename}"),
        query: None,
        body: Value::Null,
        files: Vec::new(),
        status,
        channel: None,
        at: Instant::now(),
    });
    drop(st);
    shared.bump();
    match found {
        Some((content_type, bytes)) => {
            let content_type =
                content_type.unwrap_or_else(|| "application/octet-stream".to_owned());
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// Gateway

async fn gateway(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| connection(shared, socket))
}

/// One gateway connection: HELLO, then client frames and the test's controls until either
/// side ends it.
async fn connection(shared: Arc<Shared>, mut socket: WebSocket) {
    let (outbox, mut controls) = mpsc::unbounded_channel();
    let id = {
        let mut st = shared.lock();
        st.gateway.connections += 1;
        st.gateway.stats.connections += 1;
        st.gateway.connections
    };
    shared.bump();
    let hello = json!({
        "op": 10,
        "d": {"heartbeat_interval": shared.options.heartbeat_interval.as_millis() as u64},
    });
    if socket.send(text(hello.to_string())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(frame))) => {
                    let answer = client_frame(&shared, id, &outbox, frame.as_str());
                    shared.bump();
                    let sent = match answer {
                        Answer::Nothing => Ok(()),
                        Answer::Frame(frame) => socket.send(text(frame)).await,
                        Answer::Close(code, reason) => {
                            let close = CloseFrame { code, reason: reason.into() };
                            socket.send(WsMessage::Close(Some(close))).await
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                // Closing: keep reading so the close reply goes out, until the stream ends.
                Some(Ok(WsMessage::Close(_))) => {}
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            control = controls.recv() => match control {
                Some(Control::Frame(frame)) => {
                    if socket.send(text(frame)).await.is_err() {
                        break;
                    }
                }
                Some(Control::Drop) | None => break,
            },
        }
    }
    // Dropping the socket closes TCP without a close frame.
    drop(socket);
    let mut st = shared.lock();
    if st
        .gateway
        .current
        .as_ref()
        .is_some_and(|(current, _)| *current == id)
    {
        st.gateway.current = None;
        st.gateway.stats.connected = false;
    }
    drop(st);
    shared.bump();
}

fn text(frame: String) -> WsMessage {
    WsMessage::Text(frame.into())
}

/// What the connection sends back directly for a client frame.
enum Answer {
    Nothing,
    Frame(String),
    /// A close frame with Discord's close code.
    Close(u16, &'static str),
}

/// Handles one frame from the client.
fn client_frame(
    shared: &Shared,
    connection: u64,
    outbox: &mpsc::UnboundedSender<Control>,
    frame: &str,
) -> Answer {
    let Ok(frame) = serde_json::from_str::<Value>(frame) else {
        return Answer::Close(4002, "Error while decoding payload.");
    };
    let mut st = shared.lock();
    match frame["op"].as_u64() {
        Some(1) => {
            st.gateway.stats.heartbeats += 1;
            Answer::Frame(json!({"op": 11}).to_string())
        }
        Some(2) => {
            let d = &frame["d"];
            if d["token"].as_str() != Some(format!("Bot {}", shared.token).as_str()) {
                return Answer::Close(4004, "Authentication failed.");
            }
            let intents = d["intents"].as_u64().unwrap_or(0);
            if intents & MESSAGE_CONTENT != 0 && !shared.options.message_content_allowed {
                return Answer::Close(4014, "Disallowed intent(s).");
            }
            let number = st.gateway.stats.identifies + 1;
            st.gateway.stats.identifies = number;
            st.gateway.stats.intents = d["intents"].as_u64();
            st.gateway.session = Some(Session {
                id: format!("fake-session-{number}"),
                seq: 0,
                log: Vec::new(),
                resumable: true,
            });
            st.gateway.current = Some((connection, outbox.clone()));
            st.gateway.stats.connected = true;
            let session_id = format!("fake-session-{number}");
            let ready = json!({
                "v": 10,
                "user": {
                    "id": shared.bot.id.to_string(),
                    "username": shared.bot.name,
                    "discriminator": "0",
                    "global_name": null,
                    "avatar": null,
                    "bot": true,
                    "verified": true,
                    "mfa_enabled": false,
                    "flags": 0,
                },
                "guilds": [],
                "session_id": session_id,
                "resume_gateway_url": gateway_url(shared),
                "shard": [0, 1],
                "application": {"id": shared.application_id.to_string(), "flags": 0},
                "private_channels": [],
                "relationships": [],
                "user_settings": {},
                "presences": [],
                "geo_ordered_rtc_regions": [],
            });
            st.dispatch("READY", ready);
            Answer::Nothing
        }
        Some(6) => {
            let d = &frame["d"];
            let token_ok = d["token"].as_str() == Some(format!("Bot {}", shared.token).as_str());
            let seq = d["seq"].as_u64().unwrap_or(0);
            let accepted = token_ok
                && st.gateway.session.as_ref().is_some_and(|session| {
                    session.resumable && Some(session.id.as_str()) == d["session_id"].as_str()
                });
            if !accepted {
                st.gateway.stats.rejected_resumes += 1;
                return Answer::Frame(json!({"op": 9, "d": false}).to_string());
            }
            st.gateway.stats.resumes += 1;
            st.gateway.current = Some((connection, outbox.clone()));
            st.gateway.stats.connected = true;
            let session = st.gateway.session.as_ref().expect("checked above");
            for (_, missed) in session.log.iter().filter(|(s, _)| *s > seq) {
                let _ = outbox.send(Control::Frame(missed.clone()));
            }
            st.dispatch("RESUMED", json!({}));
            Answer::Nothing
        }
        _ => Answer::Nothing,
    }
}

// ---------------------------------------------------------------------------------------
// Rendering helpers

/// A message as Discord renders it (REST responses, gateway events, a click's `message`).
/// `with_referenced`: include the replied-to message (one level, as Discord does).
fn render_message_value(
    st: &St,
    shared: &Shared,
    message: &FakeMessage,
    with_referenced: bool,
) -> Value {
    let id = message.id;
    let mut value = json!({
        "id": id.to_string(),
        "channel_id": message.channel_id.to_string(),
        "author": user_json(&message.author),
        "content": message.content,
        "timestamp": iso_timestamp(snowflake_time(id)),
        "edited_timestamp": message.edited_at.map(iso_timestamp),
        "tts": false,
        "mention_everyone": false,
        "mentions": message.mentions.iter().map(user_json).collect::<Vec<_>>(),
        "mention_roles": [],
        "attachments": message.attachments.iter().map(attachment_json).collect::<Vec<_>>(),
        "embeds": message.embeds,
        "components": message.components,
        "pinned": false,
        "type": if message.reference.is_some() { 19 } else { 0 },
        "flags": message.flags,
    });
    if let Some(guild) = message.guild_id {
        value["guild_id"] = json!(guild.to_string());
    }
    if let Some(reference) = message.reference {
        value["message_reference"] = json!({
            "type": 0,
            "message_id": reference.to_string(),
            "channel_id": message.channel_id.to_string(),
        });
        if let Some(guild) = message.guild_id {
            value["message_reference"]["guild_id"] = json!(guild.to_string());
        }
        if with_referenced && st.messages.contains_key(&reference) {
            value["referenced_message"] = st.render_message(shared, reference, false);
        }
    }
    if message.interaction_id.is_some() {
        value["webhook_id"] = json!(shared.application_id.to_string());
        value["application_id"] = json!(shared.application_id.to_string());
        value["type"] = json!(20);
    }
    value
}

/// `member` of a user message event (Discord leaves out `user` there).
fn member_json(roles: &[u64]) -> Value {
    json!({
        "roles": ids(roles),
        "joined_at": iso_timestamp(SystemTime::now()),
        "deaf": false,
        "mute": false,
        "flags": 0,
    })
}

/// Who an interaction comes from, and where.
struct Asker<'a> {
    channel_id: u64,
    guild_id: Option<u64>,
    user: &'a FakeUser,
    permissions: u64,
    roles: &'a [u64],
}

/// The fields every INTERACTION_CREATE carries (the caller adds `data`, and `message` for a
/// component): ids, token, the invoking member (guild) or user (DM), the partial channel. Also
/// notes the channel's guild.
fn interaction_json(
    shared: &Shared,
    st: &mut St,
    id: u64,
    token: &str,
    kind: u64,
    asker: &Asker<'_>,
) -> Value {
    let mut data = json!({
        "id": id.to_string(),
        "application_id": shared.application_id.to_string(),
        "type": kind,
        "channel_id": asker.channel_id.to_string(),
        "token": token,
        "version": 1,
        "app_permissions": "562949953421311",
        "locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": asker.guild_id.unwrap_or(0).to_string()},
        "context": if asker.guild_id.is_some() { 0 } else { 1 },
        "attachment_size_limit": 10_485_760,
    });
    match asker.guild_id {
        Some(guild) => {
            data["guild_id"] = json!(guild.to_string());
            data["guild_locale"] = json!("en-US");
            data["member"] = json!({
                "user": user_json(asker.user),
                "roles": ids(asker.roles),
                "joined_at": iso_timestamp(SystemTime::now()),
                "deaf": false,
                "mute": false,
                "flags": 0,
                "permissions": asker.permissions.to_string(),
            });
        }
        None => data["user"] = user_json(asker.user),
    }
    st.channel_guilds.insert(asker.channel_id, asker.guild_id);
    // Discord sends the partial channel with every interaction (a thread's names its parent).
    if let Some(channel) = channel_json(st, asker.channel_id) {
        data["channel"] = channel;
    }
    data
}

/// The first `http(s)://` link of `content` that Discord would unfurl (not inside `<…>`).
fn first_link(content: &str) -> Option<String> {
    content
        .split_whitespace()
        .filter(|word| !word.starts_with('<'))
        .find(|word| word.starts_with("https://") || word.starts_with("http://"))
        .map(|word| {
            word.trim_end_matches(['.', ',', ')', '!', '?', ';', ':'])
                .to_owned()
        })
}

fn user_json(user: &FakeUser) -> Value {
    json!({
        "id": user.id.to_string(),
        "username": user.name,
        "discriminator": "0",
        "global_name": user.name,
        "avatar": null,
        "bot": user.bot,
        "public_flags": 0,
    })
}

/// Every guild text channel of the fake sits in this category, as channels usually do: its
/// `parent_id` is the category, which is not a thread's parent.
pub const FAKE_CATEGORY: u64 = 900;

/// A channel object as `GET /channels/{id}` returns it: a public thread (type 11) with its
/// parent, a guild text channel (type 0) in [`FAKE_CATEGORY`], or a DM (type 1).
fn channel_json(st: &St, id: u64) -> Option<Value> {
    let guild = st.channel_guilds.get(&id).copied()?;
    let channel = match (guild, st.thread_parents.get(&id)) {
        (Some(guild), Some(parent)) => json!({
            "id": id.to_string(),
            "type": 11,
            "guild_id": guild.to_string(),
            "parent_id": parent.to_string(),
            "owner_id": "1",
            "name": format!("thread-{id}"),
            "last_message_id": null,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "total_message_sent": 0,
            "thread_metadata": {
                "archived": false,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso_timestamp(SystemTime::now()),
                "locked": false,
            },
        }),
        (Some(guild), None) => json!({
            "id": id.to_string(),
            "type": 0,
            "guild_id": guild.to_string(),
            "parent_id": FAKE_CATEGORY.to_string(),
            "name": format!("channel-{id}"),
            "position": 0,
            "permission_overwrites": [],
            "nsfw": false,
            "topic": null,
            "last_message_id": null,
            "rate_limit_per_user": 0,
            "flags": 0,
        }),
        (None, _) => {
            // The person the bot talks with there: whoever wrote or ran a command in it.
            let person = st
                .messages
                .values()
                .map(|message| (message.channel_id, &message.author))
                .chain(
                    st.interactions
                        .iter()
                        .map(|interaction| (interaction.channel_id, &interaction.user)),
                )
                .find(|(channel, author)| *channel == id && !author.bot)
                .map(|(_, author)| user_json(author));
            json!({
                "id": id.to_string(),
                "type": 1,
                "last_message_id": null,
                "recipients": person.into_iter().collect::<Vec<_>>(),
                "flags": 0,
            })
        }
    };
    Some(channel)
}

fn attachment_json(attachment: &FakeAttachment) -> Value {
    json!({
        "id": attachment.id.to_string(),
        "filename": attachment.filename,
        "size": attachment.size,
        "url": attachment.url,
        "proxy_url": attachment.url,
        "content_type": attachment.content_type,
    })
}

fn ids(ids: &[u64]) -> Value {
    Value::Array(ids.iter().map(|id| json!(id.to_string())).collect())
}

fn snowflake_time(id: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis((id >> 22) + DISCORD_EPOCH_MS)
}

fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// RFC 3339 in UTC with milliseconds, as Discord sends timestamps.
fn iso_timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
