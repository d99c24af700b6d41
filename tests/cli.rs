//! The `poe-relay` binary as an operator uses it: check-config, models, balance.

mod support;

use std::path::Path;
use std::process::Output;

use poe_relay::fake_poe::FakePoe;
use support::KEY;
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_poe-relay");

fn shipped_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/poe-relay.toml")
        .display()
        .to_string()
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().await.expect("cannot run poe-relay")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn check_config_accepts_the_shipped_config() {
    let output = run(
        &["check-config", "--config", &shipped_config()],
        &[("POE_API_KEY", KEY)],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("configuration OK"));
    assert!(!text(&output).contains(KEY), "the key was printed");
}

#[tokio::test]
async fn check_config_rejects_broken_configs_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[poe]\nbase_urll = \"https://api.poe.com\"\n",
            "poe.base_urll: unknown key",
        ),
        (
            "[poe]\nrequests_per_minute = \"lots\"\n",
            "poe.requests_per_minute: invalid type",
        ),
        (
            "[poe]\nrequests_per_minute = 0\n",
            "poe.requests_per_minute: must be at least 1",
        ),
        (
            "[[poe.models]]\nname = \"x\"\ntransport = \"grpc\"\n",
            "poe.models[0].transport: `grpc` is not a transport",
        ),
        (
            "[poe]\napi_key = \"sk-leaked-123\"\n",
            "poe.api_key: secrets are not read from the config file",
        ),
        ("[poe\n", "TOML parse error"),
        (
            "[matrix]\nenabled = true\nhomeserver = \"https://m.example\"\nuser_id = \"poe\"\n",
            "matrix.user_id: must be the bot's full Matrix id",
        ),
        (
            "[matrix]\nenabled = true\nuser_id = \"@poe:m.example\"\n",
            "matrix.homeserver: must be set when matrix.enabled is true",
        ),
        (
            "[matrix]\nadmins = [\"alice\"]\n",
            "matrix.admins[0]: `alice` is not a Matrix id",
        ),
        (
            "[matrix]\npassword = \"hunter2\"\n",
            "matrix.password: secrets are not read from the config file; remove it and set MATRIX_PASSWORD",
        ),
        (
            "[discord]\nadmins = [\"alice\"]\n",
            "discord.admins[0]: `alice` is not a Discord id",
        ),
        (
            "[discord]\nguilds = [\"0\"]\n",
            "discord.guilds[0]: `0` is not a Discord id",
        ),
        (
            "[discord]\napi_base = \"ftp://127.0.0.1\"\n",
            "discord.api_base: must be a http:// or https:// URL",
        ),
        (
            "[discord]\ntoken = \"sk-leaked-123\"\n",
            "discord.token: secrets are not read from the config file; remove it and set DISCORD_TOKEN",
        ),
    ];
    for (index, (toml, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken-{index}.toml"));
        std::fs::write(&path, toml).unwrap();
        let output = run(
            &["check-config", "--config", path.to_str().unwrap()],
            &[("POE_API_KEY", KEY)],
        )
        .await;
        assert!(!output.status.success(), "accepted {toml:?}");
        let said = text(&output);
        assert!(
            said.contains(expected),
            "for {toml:?} expected {expected:?} in:\n{said}"
        );
        assert!(
            !said.contains("sk-leaked-123") && !said.contains(KEY),
            "{said}"
        );
    }

    let output = run(
        &["check-config", "--config", &shipped_config()],
        &[("POE_API_KEY", KEY), ("POE_RELAY__POE__MAX_ATTEMPTS", "0")],
    )
    .await;
    assert!(
        text(&output).contains("poe.max_attempts: must be at least 1"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn check_config_wants_matrix_credentials_for_a_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("matrix.toml");
    let data = dir.path().join("matrix-data");
    std::fs::write(
        &path,
        format!(
            "[matrix]\nenabled = true\nhomeserver = \"http://127.0.0.1:9\"\nuser_id = \"@poe:localhost\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let output = run(
        &["check-config", "--config", config],
        &[("POE_API_KEY", KEY)],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output).contains("neither MATRIX_PASSWORD nor MATRIX_ACCESS_TOKEN is set"),
        "{}",
        text(&output)
    );
    let output = run(
        &["check-config", "--config", config],
        &[("POE_API_KEY", KEY), ("MATRIX_PASSWORD", "hunter2")],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("matrix: @poe:localhost"),
        "{}",
        text(&output)
    );
    assert!(!text(&output).contains("hunter2"));
}

#[tokio::test]
async fn check_config_wants_the_discord_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("discord.toml");
    std::fs::write(
        &path,
        "[discord]\nenabled = true\nguilds = [\"910000000000000001\"]\nadmins = [910000000000000002]\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let output = run(
        &["check-config", "--config", config],
        &[("POE_API_KEY", KEY)],
    )
    .await;
    assert!(!output.status.success());
    assert!(text(&output).contains("DISCORD_TOKEN"), "{}", text(&output));
    let token = "discord-token-abc.def";
    let output = run(
        &["check-config", "--config", config],
        &[("POE_API_KEY", KEY), ("DISCORD_TOKEN", token)],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("/poe registered in 1 guild(s)"),
        "{}",
        text(&output)
    );
    assert!(!text(&output).contains(token));
}

#[tokio::test]
async fn check_config_requires_the_key_and_reads_key_files() {
    let output = run(&["check-config", "--config", &shipped_config()], &[]).await;
    assert!(!output.status.success());
    assert!(
        text(&output).contains("POE_API_KEY is not set"),
        "{}",
        text(&output)
    );

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("poe-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let output = run(
        &["check-config", "--config", &shipped_config()],
        &[("POE_API_KEY_FILE", key_file.to_str().unwrap())],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));

    let output = run(
        &["check-config", "--config", "/nonexistent/poe-relay.toml"],
        &[("POE_API_KEY", KEY)],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        text(&output).contains("/nonexistent/poe-relay.toml does not exist"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn models_and_balance_talk_to_poe() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.set_balance(12_345);
    let base = fake.base_url();
    let env = [
        ("POE_API_KEY", KEY),
        ("POE_RELAY__POE__BASE_URL", base.as_str()),
    ];
    let config = shipped_config();

    let output = run(&["models", "--config", &config], &env).await;
    assert!(output.status.success(), "{}", text(&output));
    let listing = String::from_utf8_lossy(&output.stdout);
    let sonnet = listing
        .lines()
        .find(|line| line.starts_with("Claude-Sonnet-4.6"))
        .expect(&listing);
    assert!(
        sonnet.contains("2.60") && sonnet.contains("13.00"),
        "{sonnet}"
    );
    assert!(listing.contains("3 models"), "{listing}");

    let output = run(&["balance", "--config", &config, "--history", "5"], &env).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("points: 12345"),
        "{}",
        text(&output)
    );

    let wrong = [
        ("POE_API_KEY", "wrong-key-000"),
        ("POE_RELAY__POE__BASE_URL", base.as_str()),
    ];
    let output = run(&["balance", "--config", &config], &wrong).await;
    assert!(!output.status.success());
    let said = text(&output);
    assert!(said.contains("rejected the API key"), "{said}");
    assert!(!said.contains("wrong-key-000"), "{said}");
}

#[tokio::test]
async fn run_logs_json_on_request_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let child = Command::new(BINARY)
        .args(["run", "--config", &shipped_config()])
        .env_clear()
        .env("POE_API_KEY", KEY)
        .env("POE_RELAY__STORE__PATH", store.to_str().unwrap())
        .env("POE_RELAY__POE__BASE_URL", "http://127.0.0.1:9")
        .env("POE_RELAY__LOG__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut child = child;
    let pid = child.id().unwrap().to_string();
    // Wait for the start-up line before signalling, so the handler is installed.
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap());
    // Every line is JSON; the last start-up line says it started.
    let mut seen = Vec::new();
    loop {
        let mut text = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut text),
        )
        .await
        .expect("no log line within 30 s")
        .unwrap();
        assert!(
            !text.is_empty(),
            "the log ended before the start: {seen:#?}"
        );
        assert!(!text.contains(KEY));
        let line: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"));
        let started = line["message"] == "poe-relay started";
        seen.push(line);
        if started {
            break;
        }
    }
    let started = seen.last().unwrap();
    assert_eq!(started["level"], "INFO");
    // No platform is enabled in this config, and the operator is told so.
    assert!(
        seen.iter().any(|line| line["level"] == "WARN"
            && line["message"]
                .as_str()
                .unwrap()
                .contains("no chat platform")),
        "{seen:#?}"
    );

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("did not exit within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
