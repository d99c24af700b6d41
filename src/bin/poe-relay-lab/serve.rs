//! `serve`: the core on the in-memory platform as a process the crash test can SIGKILL. It
//! reads messages as JSON lines on stdin and prints every platform call as a JSON line.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use poe_relay::config::Config;
use poe_relay::core::boundary::{ChannelKey, Inbound, Invocation, MessageId, Outbound};
use poe_relay::core::manager::Manager;
use poe_relay::core::services::{Services, now_ms};
use poe_relay::platform::memory::{Call, CallKind, MemoryPlatform};
use poe_relay::poe::PoeClient;
use poe_relay::secret::{self, ProcessEnv};
use poe_relay::store::Store;

use super::limits;

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

pub async fn serve(
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
            CallKind::Controls => "controls",
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
            speaker: poe_relay::core::boundary::Speaker::Person,
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
