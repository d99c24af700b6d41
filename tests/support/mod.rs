//! Helpers shared by the end-to-end suites: the fake Poe wired to a client, the shared
//! fixtures, and the Python reference clients.
#![allow(dead_code)] // each test crate uses its own subset

pub mod bot_process;
pub mod discord_world;
pub mod fake_discord;
pub mod matrix_human;
pub mod matrix_proxy;
pub mod synapse;

use std::path::PathBuf;

use poe_relay::config::PoeConfig;
use poe_relay::fake_poe::FakePoe;
use poe_relay::poe::{PoeClient, PoeError, PoeEvent, ReplyStream};
use poe_relay::secret::Secret;

/// 32 characters: fastapi-poe bot servers insist on that length for their access key.
pub const KEY: &str = "poe-relay-test-key-0123456789abc";

/// A client configuration aimed at `fake`, with short backoffs so retry tests stay quick.
pub fn config_for(fake: &FakePoe) -> PoeConfig {
    PoeConfig {
        base_url: fake.base_url(),
        upload_url: fake.upload_url(),
        initial_backoff_ms: 10,
        max_backoff_ms: 100,
        idle_timeout_secs: 10,
        request_timeout_secs: 60,
        retry_budget_secs: 30,
        max_attempts: 3,
        ..PoeConfig::default()
    }
}

pub fn client(config: PoeConfig) -> PoeClient {
    PoeClient::new(config, Secret::new(KEY)).expect("client")
}

/// Makes `model` on `fake` an image bot whose answer is `picture` as `name` (a PNG): the
/// picture is uploaded to the fake first, so the bot can fetch it like a real Poe CDN file.
pub async fn script_image_answer(fake: &FakePoe, model: &str, name: &str, picture: &[u8]) {
    let stored = client(config_for(fake))
        .upload(&poe_relay::poe::InputFile {
            name: name.into(),
            content_type: "image/png".into(),
            source: poe_relay::poe::FileSource::Bytes(picture.to_vec().into()),
        })
        .await
        .expect("put the picture on the fake Poe");
    fake.script(
        model,
        poe_relay::fake_poe::Scenario::Media {
            url: stored.url,
            content_type: "image/png".into(),
            name: name.into(),
        },
    );
}

/// Everything a stream produced: the answer as a user would see it, every event, and the
/// error it ended with, if any.
#[derive(Debug)]
pub struct Outcome {
    pub answer: String,
    pub events: Vec<PoeEvent>,
    pub error: Option<PoeError>,
}

pub async fn drain(mut stream: ReplyStream) -> Outcome {
    let mut answer = String::new();
    let mut events = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                match &event {
                    PoeEvent::Text(text) => answer.push_str(text),
                    PoeEvent::Replace(text) => answer = text.clone(),
                    _ => {}
                }
                events.push(event);
            }
            Err(err) => error = Some(err),
        }
    }
    Outcome {
        answer,
        events,
        error,
    }
}

/// `../shared` beside the project (read-only), or `POE_RELAY_SHARED`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("POE_RELAY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// The Python with `fastapi-poe` and `openai` installed: `POE_RELAY_TEST_PYTHON`, or the
/// venv that `tests/run.sh` builds. Missing is a failure, not a skip.
pub fn python() -> PathBuf {
    let path = std::env::var_os("POE_RELAY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python")
        });
    assert!(
        path.exists(),
        "the Python reference clients are not installed at {}; run tests/run.sh, which installs them",
        path.display()
    );
    path
}

pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The core wired to `fake` and a fresh sled store, with the in-memory platform.
pub struct CoreSetup {
    pub manager: poe_relay::core::manager::Manager,
    pub platform: poe_relay::platform::memory::MemoryPlatform,
    pub store: poe_relay::store::Store,
    pub dir: tempfile::TempDir,
}

pub fn core_config(fake: &FakePoe) -> poe_relay::config::Config {
    let mut config = poe_relay::config::Config {
        poe: config_for(fake),
        ..Default::default()
    };
    config.chat.default_model = "echo".into();
    config.budget.reconcile_after_secs = 0;
    config
}

pub fn core_with(
    config: poe_relay::config::Config,
    platform: poe_relay::platform::memory::MemoryPlatform,
) -> CoreSetup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = poe_relay::store::Store::open(dir.path()).expect("store");
    let poe = PoeClient::new(config.poe.clone(), Secret::new(KEY)).expect("client");
    let services = poe_relay::core::services::Services::new(config, poe, store.clone());
    CoreSetup {
        manager: poe_relay::core::manager::Manager::new(services),
        platform,
        store,
        dir,
    }
}

/// A fast platform for tests: Discord's 2,000 characters, short intervals.
pub fn quick_platform() -> poe_relay::platform::memory::MemoryPlatform {
    use poe_relay::core::render::split::LengthUnit;
    use std::time::Duration;
    poe_relay::platform::memory::MemoryPlatform::new(poe_relay::core::boundary::Limits {
        max_message_len: 2000,
        length_unit: LengthUnit::Chars,
        min_edit_interval: Duration::from_millis(50),
        min_channel_interval: Duration::from_millis(10),
        max_edits_per_message: None,
        typing_interval: Duration::from_millis(200),
        requests: None,
        marks_live: false,
    })
}

static EVENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn message(channel: &str, user: &str, text: &str) -> poe_relay::core::boundary::Inbound {
    poe_relay::core::boundary::Inbound {
        channel: poe_relay::core::boundary::ChannelKey::new("memory", channel),
        user_id: user.to_owned(),
        user_name: user.to_owned(),
        speaker: poe_relay::core::boundary::Speaker::Person,
        is_admin: false,
        is_bot_admin: false,
        is_group: false,
        invocation: poe_relay::core::boundary::Invocation::Message,
        text: text.to_owned(),
        attachments: Vec::new(),
        event_id: format!(
            "e{}",
            EVENT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ),
        timestamp_ms: poe_relay::core::services::now_ms(),
    }
}

pub fn command(
    channel: &str,
    user: &str,
    admin: bool,
    text: &str,
) -> poe_relay::core::boundary::Inbound {
    let mut inbound = message(channel, user, text);
    inbound.invocation = poe_relay::core::boundary::Invocation::Command;
    inbound.is_admin = admin;
    inbound.is_bot_admin = admin;
    inbound
}

/// The last message of each context Poe was sent, sorted: which questions reached it.
pub fn questions_asked(contexts: &[Vec<String>]) -> Vec<String> {
    let mut asked: Vec<String> = contexts
        .iter()
        .filter_map(|context| context.last().cloned())
        .collect();
    asked.sort();
    asked
}
