//! The Discord world of the end-to-end suites: the fake Discord, the fake Poe and the real
//! `poe-relay` binary between them, with the people, channels and helpers the tests share.

use std::time::Duration;

use poe_relay::core::render::split::{LengthUnit, split};
use poe_relay::fake_poe::{FakePoe, Scenario};
use serde_json::{Value, json};

use super::KEY;
use super::bot_process::BotProcess;
use super::fake_discord::{
    FakeDiscord, FakeDiscordOptions, FakeMessage, FakeUser, IncomingCommand, IncomingMessage,
};

pub const WAIT: Duration = Duration::from_secs(60);
pub const GUILD: u64 = 910_000_000_000_000_001;
pub const CHANNEL: u64 = 910_000_000_000_000_002;
pub const OTHER_CHANNEL: u64 = 910_000_000_000_000_003;
/// A thread: on Discord a thread is a channel of its own.
pub const THREAD: u64 = 910_000_000_000_000_004;
pub const DM: u64 = 910_000_000_000_000_005;
pub const ADMIN_ROLE: u64 = 910_000_000_000_000_006;
/// Discord permission bits.
pub const ADMINISTRATOR: u64 = 1 << 3;
pub const MANAGE_GUILD: u64 = 1 << 5;
pub const SEND_MESSAGES: u64 = 1 << 11;

pub fn alice() -> FakeUser {
    FakeUser::new(810_000_000_000_000_001, "alice")
}
pub fn bob() -> FakeUser {
    FakeUser::new(810_000_000_000_000_002, "bob")
}
/// Configured in `discord.admins`.
pub fn root() -> FakeUser {
    FakeUser::new(810_000_000_000_000_003, "root")
}

/// The fake Discord, the fake Poe and the bot.
pub struct World {
    pub discord: FakeDiscord,
    pub poe: FakePoe,
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub bot: BotProcess,
}

impl World {
    pub async fn start() -> World {
        World::start_with("", &[]).await
    }

    /// `discord_lines` holds more lines for the `[discord]` section; `env` more variables.
    pub async fn start_with(discord_lines: &str, env: &[(&str, &str)]) -> World {
        World::start_full(discord_lines, "", env).await
    }

    /// Like [`World::start_with`], with more TOML `sections` (not `[poe]`, `[chat]`,
    /// `[store]`, `[discord]` or `[log]`).
    pub async fn start_full(discord_lines: &str, sections: &str, env: &[(&str, &str)]) -> World {
        World::start_on(FakeDiscordOptions::default(), discord_lines, sections, env).await
    }

    /// Like [`World::start_full`], on a fake Discord started with `options`.
    pub async fn start_on(
        options: FakeDiscordOptions,
        discord_lines: &str,
        sections: &str,
        env: &[(&str, &str)],
    ) -> World {
        let discord = FakeDiscord::start_with(options).await;
        let poe = FakePoe::start(KEY).await.expect("fake Poe");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("poe-relay.toml");
        let toml = format!(
            r#"
[poe]
base_url = "{base}"
upload_url = "{upload}"
initial_backoff_ms = 10
max_backoff_ms = 100

[chat]
default_model = "echo"

[store]
path = "{store}"

[discord]
enabled = true
guilds = ["{GUILD}"]
admins = ["{root}"]
admin_roles = ["{ADMIN_ROLE}"]
api_base = "{api}"
gateway_url = "{gateway}"
{discord_lines}

[log]
# serenity at debug too: no secret may reach the log even then.
filter = "info,poe_relay=debug,serenity=debug"
{sections}
"#,
            base = poe.base_url(),
            upload = poe.upload_url(),
            store = dir.path().join("store").display(),
            root = root().id,
            api = discord.api_base(),
            gateway = discord.gateway_url(),
        );
        std::fs::write(&config, toml).expect("write the bot's config");
        let bot = start_bot(&discord, &config, &dir, env, 1).await;
        discord
            .wait_for_within(WAIT, "/poe to be registered in the guild", |fake| {
                (!fake.commands(Some(GUILD)).is_empty()).then_some(())
            })
            .await;
        World {
            discord,
            poe,
            dir,
            config,
            bot,
        }
    }

    /// SIGKILLs the bot and starts it again on the same store.
    pub async fn kill_and_restart(&mut self) {
        self.bot.stop("KILL");
        self.restart(2).await;
    }

    /// Starts the bot again (its `nth` start) after it stopped.
    pub async fn restart(&mut self, nth: usize) {
        self.bot = start_bot(&self.discord, &self.config, &self.dir, &[], nth).await;
    }

    /// `author` mentions the bot in `channel` of the guild.
    pub fn mention(&self, channel: u64, author: FakeUser, text: &str) -> u64 {
        let content = format!("{} {text}", self.discord.mention());
        self.discord.dispatch_message(
            IncomingMessage::new(channel, author, &content)
                .in_guild(GUILD)
                .mentioning(&self.discord.bot_user()),
        )
    }

    /// Waits until the answer to `trigger` reads exactly `expected` (over as many messages as
    /// the 2,000-character limit needs).
    pub async fn wait_answer(
        &self,
        channel: u64,
        trigger: u64,
        expected: &str,
    ) -> Vec<FakeMessage> {
        let parts: Vec<String> = split(expected, 2000, LengthUnit::Chars)
            .iter()
            .map(|part| part.render())
            .collect();
        self.discord
            .wait_for_within(WAIT, &format!("the answer to {trigger}"), |fake| {
                let answer = answer_in(fake, channel, trigger);
                let shown: Vec<&str> = answer.iter().map(|m| m.content.as_str()).collect();
                (shown == parts).then_some(answer)
            })
            .await
    }

    /// The query texts of every chat request the fake Poe received for `echo`.
    pub fn contexts(&self) -> Vec<Vec<String>> {
        self.poe
            .chat_requests("echo")
            .iter()
            .map(|request| {
                request.body["query"]
                    .as_array()
                    .map(|query| {
                        query
                            .iter()
                            .map(|message| message["content"].as_str().unwrap_or("").to_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Runs `/poe <sub>` and waits for its answer; returns the interaction id.
    pub async fn slash(&self, command: IncomingCommand) -> u64 {
        let id = self.discord.dispatch_command(command);
        self.discord
            .wait_for_within(WAIT, "the slash command's answer", |fake| {
                let interaction = fake.interaction(id)?;
                let original = interaction
                    .original
                    .and_then(|original| fake.message(original));
                // Answered in place, or (a private answer to a public "thinking…") by a
                // follow-up once the original is gone.
                let in_place = original
                    .as_ref()
                    .is_some_and(|message| !message.deleted && !message.content.is_empty());
                let followed_up = !interaction.followups.is_empty()
                    && original.is_none_or(|message| message.deleted);
                (in_place || followed_up).then_some(())
            })
            .await;
        id
    }

    /// What the caller of interaction `id` sees: the original answer, or its follow-ups.
    pub fn slash_answer(&self, id: u64) -> (String, bool) {
        let interaction = self.discord.interaction(id).expect("the interaction");
        let messages: Vec<FakeMessage> = interaction
            .original
            .into_iter()
            .chain(interaction.followups.iter().copied())
            .filter_map(|message| self.discord.message(message))
            .filter(|message| !message.deleted)
            .collect();
        let text = messages
            .iter()
            .map(|message| message.content.clone())
            .collect::<Vec<_>>()
            .join("\n");
        let private = messages.iter().all(FakeMessage::is_ephemeral);
        (text, private)
    }

    /// Nothing the bot sent was refused (content length, allowed_mentions, routes, late
    /// acknowledgements), and no secret reached the log.
    pub fn assert_clean(&self) {
        let violations = self.discord.violations();
        assert!(
            violations.is_empty(),
            "the fake Discord refused: {violations:#?}"
        );
        // Neither the bot token nor an interaction token (a credential for 15 minutes) is
        // ever logged.
        let log = self.bot.log();
        assert!(
            !log.contains(self.discord.bot_token()),
            "the bot token was logged"
        );
        assert!(
            !log.contains("fake-interaction-token"),
            "an interaction token was logged"
        );
    }
}

/// Starts the bot and waits for its `nth` start and a READY on the gateway.
pub async fn start_bot(
    discord: &FakeDiscord,
    config: &std::path::Path,
    dir: &tempfile::TempDir,
    env: &[(&str, &str)],
    nth: usize,
) -> BotProcess {
    let mut vars = vec![("POE_API_KEY", KEY), ("DISCORD_TOKEN", discord.bot_token())];
    vars.extend_from_slice(env);
    let mut bot = BotProcess::start(config, &vars, &dir.path().join("bot.log"));
    bot.wait_for_log("poe-relay started", nth, WAIT).await;
    discord
        .wait_for_within(WAIT, "the bot to identify", |fake| {
            let stats = fake.gateway_stats();
            (stats.connected && stats.identifies >= nth).then_some(())
        })
        .await;
    bot
}

/// The bot's answer to `trigger`: the message replying to it and the parts after it.
pub fn answer_in(fake: &FakeDiscord, channel: u64, trigger: u64) -> Vec<FakeMessage> {
    let messages: Vec<FakeMessage> = fake
        .bot_messages(channel)
        .into_iter()
        .filter(|message| message.interaction_id.is_none() && !message.deleted)
        .collect();
    let Some(first) = messages
        .iter()
        .position(|message| message.reference == Some(trigger))
    else {
        return Vec::new();
    };
    let mut answer = vec![messages[first].clone()];
    answer.extend(
        messages[first + 1..]
            .iter()
            .take_while(|message| message.reference.is_none() && message.attachments.is_empty())
            .cloned(),
    );
    answer
}

pub fn streamed(text: &str, chunk_chars: usize, interval_ms: u64) -> Scenario {
    Scenario::Text {
        text: text.to_owned(),
        chunk_chars,
        interval: Duration::from_millis(interval_ms),
    }
}

pub fn options(sub: &str, values: Value) -> Value {
    json!([{"type": 1, "name": sub, "options": values}])
}
