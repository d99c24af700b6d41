//! What can be checked here of `deploy/`: systemd verifies the unit, and the container build
//! and the compose file agree with the project (files they copy exist, settings they pass are
//! settings the daemon accepts, the runtime user is not root). Neither Docker nor systemd runs
//! the daemon here.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(project().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// `poe-relay check-config` with the shipped config and `env` (plus a Poe key).
fn check_config(env: &[(String, String)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_poe-relay"))
        .arg("check-config")
        .arg("--config")
        .arg(project().join("config/poe-relay.toml"))
        .env("POE_API_KEY", "poe-relay-test-key-0123456789abc")
        .env("MATRIX_PASSWORD", "not-used")
        .env("DISCORD_TOKEN", "not-used")
        .envs(env.iter().map(|(key, value)| (key, value)))
        .output()
        .expect("run poe-relay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/poe-relay.service");
    for needed in [
        "DynamicUser=yes",
        "StateDirectory=poe-relay",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LoadCredential=poe-api-key:",
        "Environment=POE_API_KEY_FILE=%d/poe-api-key",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // systemd checks that the binary exists: point it at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("poe-relay.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/poe-relay", env!("CARGO_BIN_EXE_poe-relay")),
    )
    .expect("write the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs it)");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{complaints}");
    // Unknown keys and bad values are only warnings: there must be none.
    assert!(
        !complaints.contains("poe-relay.service"),
        "systemd complains about the unit:\n{complaints}"
    );

    // The stop timeout leaves room for the grace period, the final edits (30 s) and closing.
    let timeout: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|value| value.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    let grace = poe_relay::config::ServiceConfig::default().shutdown_grace_secs;
    assert!(timeout >= grace + 40, "TimeoutStopSec={timeout}");
}

/// The settings a file passes as `POE_RELAY__…` variables.
fn overrides<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    pairs
        .filter(|(key, _)| key.starts_with("POE_RELAY__"))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn the_container_build_copies_what_exists_and_runs_as_a_user() {
    let dockerfile = read("deploy/Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "a multi-stage build");
    // The build context leaves out what .dockerignore names (target/ is gigabytes).
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(ignored.iter().any(|entry| entry == "target"));
    assert!(ignored.iter().any(|entry| entry == "deploy/secrets"));
    for line in dockerfile.lines().filter(|line| line.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                project().join(source).exists(),
                "the build copies {source}, which does not exist"
            );
            assert!(
                !ignored
                    .iter()
                    .any(|entry| source.starts_with(entry.as_str())),
                "the build copies {source}, which .dockerignore leaves out"
            );
        }
    }
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER in the final stage");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "runs as {user}"
    );
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));
    // Its ENV lines are settings the daemon accepts.
    let mut env = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        let body = if let Some(rest) = line.strip_prefix("ENV ") {
            rest
        } else if in_env {
            line
        } else {
            continue;
        };
        in_env = body.ends_with('\\');
        for pair in body.trim_end_matches('\\').split_whitespace() {
            if let Some((key, value)) = pair.split_once('=') {
                env.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    let env = overrides(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert!(!env.is_empty(), "the image sets the store path");
    let (ok, text) = check_config(&env);
    assert!(ok, "{env:?}: {text}");
}

#[test]
fn the_compose_file_runs_poe_relay_beside_synapse_with_valid_settings() {
    // PyYAML comes with Synapse, which tests/run.sh installs.
    let python = std::env::var_os("POE_RELAY_TEST_SYNAPSE")
        .map(PathBuf::from)
        .unwrap_or_else(|| project().join("target/synapse-venv/bin/python"));
    assert!(
        Path::new(&python).exists(),
        "no Python with PyYAML at {}; run tests/run.sh",
        python.display()
    );
    let output = Command::new(&python)
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(project().join("deploy/compose.yaml"))
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let compose: Value = serde_json::from_slice(&output.stdout).expect("compose as JSON");
    let services = &compose["services"];
    assert!(
        services["synapse"]["image"]
            .as_str()
            .is_some_and(|image| image.starts_with("matrixdotorg/synapse:v"))
    );
    let relay = &services["poe-relay"];
    assert_eq!(relay["build"]["dockerfile"], "deploy/Dockerfile");
    assert!(
        project()
            .join("deploy")
            .join(relay["build"]["context"].as_str().expect("a context"))
            .join("Cargo.toml")
            .exists()
    );
    assert_eq!(relay["volumes"][0], "poe-relay-data:/data");
    assert_eq!(
        relay["depends_on"]["synapse"]["condition"],
        "service_healthy"
    );
    assert!(relay["stop_grace_period"].as_str().is_some());
    let environment = relay["environment"].as_object().expect("environment");
    // Secrets come as files, never as values in the compose file.
    for (key, value) in environment {
        if !key.starts_with("POE_RELAY__") {
            assert!(key.ends_with("_FILE"), "{key} should be a *_FILE secret");
            assert!(
                value
                    .as_str()
                    .is_some_and(|path| path.starts_with("/run/secrets/"))
            );
        }
    }
    let env = overrides(
        environment
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str().unwrap_or_default())),
    );
    let (ok, text) = check_config(&env);
    assert!(ok, "{env:?}: {text}");
    assert!(
        text.contains("matrix: @poe:example.org on http://synapse:8008"),
        "{text}"
    );
}
