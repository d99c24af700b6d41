//! A real Synapse homeserver on loopback, for the Matrix end-to-end tests.
//!
//! Each [`Synapse`] owns one homeserver process and a fresh temporary directory holding its
//! configuration, SQLite database, signing key, media store and log. It listens on a free
//! port of 127.0.0.1 only, works offline (no federation, no key servers, no URL previews,
//! no presence, no stats) and is killed, with its whole process group, when dropped. Should
//! the test process die without dropping it (Ctrl-C, abort), Synapse kills itself when its
//! stdin, a pipe from the test process, closes, so no homeserver outlives a test run.
//!
//! Synapse comes from the venv that `tests/run.sh` installs (pinned in
//! `tests/python/synapse-requirements.txt`); its Python is `POE_RELAY_TEST_SYNAPSE`.
//! A missing Synapse fails the test: the Matrix tests are never skipped silently.
//!
//! Rate limits: by default every limit is relaxed so tests never wait on Synapse. With
//! [`SynapseOptions::default_rate_limits`] the limits that the bot's own traffic meets
//! (`rc_message`, which edits and redactions count against too, and `rc_media_create`) keep
//! Synapse's defaults (0.2 messages/s, burst 10), while those that only test setup meets
//! (registration, login, joins, invites, room creation, ...) stay relaxed.
#![allow(dead_code)] // not every test crate that includes `support` runs a homeserver

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The server name every test homeserver uses: user IDs are `@name:localhost`.
pub const SERVER_NAME: &str = "localhost";
/// The shared secret for the admin registration API (loopback only, so no secret at all).
const REGISTRATION_SHARED_SECRET: &str = "poe-relay-test-registration-secret";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_FILE: &str = "homeserver.log";

/// Runs Synapse with its arguments, after arranging that it kills its own process group
/// once stdin (a pipe whose write end only the test process holds) reaches end of file.
const LAUNCHER: &str = "\
import os, runpy, signal, sys, threading
def watch_parent():
    while os.read(0, 4096):
        pass
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch_parent, daemon=True).start()
runpy.run_module('synapse.app.homeserver', run_name='__main__')
";

/// HMAC-SHA1 (hex) of the NUL-joined argv[2..] keyed with argv[1]: the MAC of the admin
/// registration API. Python's hmac module spares the tests an HMAC crate.
const REGISTRATION_MAC: &str = "\
import hashlib, hmac, sys
print(hmac.new(sys.argv[1].encode(), '\\0'.join(sys.argv[2:]).encode(), hashlib.sha1).hexdigest())
";

#[derive(Clone, Copy, Debug, Default)]
pub struct SynapseOptions {
    /// Keep Synapse's default `rc_message` (and `rc_media_create`) limits instead of
    /// relaxing them, to prove the bot survives real rate limiting.
    pub default_rate_limits: bool,
}

/// A running homeserver; dropping it kills it and deletes its directory.
pub struct Synapse {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// Always [`SERVER_NAME`].
    pub server_name: String,
    http: reqwest::Client,
    python: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

/// A user created on the homeserver, with a logged-in device.
#[derive(Clone, Debug)]
pub struct RegisteredUser {
    pub user_id: String,
    pub password: String,
    pub access_token: String,
    pub device_id: String,
}

/// The venv Python that has Synapse installed: `POE_RELAY_TEST_SYNAPSE`. Missing is a
/// failure, not a skip.
pub fn python() -> PathBuf {
    let path = std::env::var_os("POE_RELAY_TEST_SYNAPSE")
        .map(PathBuf::from)
        .expect(
            "POE_RELAY_TEST_SYNAPSE is not set: run the tests through tests/run.sh, which \
             installs Synapse into target/synapse-venv and points this variable at its Python",
        );
    assert!(
        path.exists(),
        "POE_RELAY_TEST_SYNAPSE points at {}, which does not exist; run tests/run.sh, which \
         installs Synapse there",
        path.display()
    );
    path
}

/// Percent-encodes one path segment (room IDs contain `!`, event IDs `$`, aliases `#`).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Starts a fresh homeserver and waits until its client API answers.
pub async fn start(options: SynapseOptions) -> Synapse {
    let python = python();
    let dir = tempfile::Builder::new()
        .prefix("poe-relay-synapse-")
        .tempdir()
        .expect("create a temporary directory for Synapse");
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");

    let config_path = dir.path().join("homeserver.yaml");
    // JSON is YAML, and serde_json spares us quoting rules.
    let config = homeserver_config(dir.path(), port, &base_url, options);
    std::fs::write(&config_path, config.to_string()).expect("write homeserver.yaml");
    std::fs::write(dir.path().join("log.yaml"), log_config().to_string())
        .expect("write Synapse's log config");

    let log = File::create(dir.path().join(LOG_FILE)).expect("create Synapse's log file");
    let log_err = log.try_clone().expect("clone Synapse's log file handle");
    // Synapse generates what is missing (the signing key) and then runs: no separate
    // `--generate-keys` pass, which would cost a second Python start.
    let child = Command::new(&python)
        .args(["-c", LAUNCHER, "--config-path"])
        .arg(&config_path)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| panic!("start Synapse with {}: {error}", python.display()));

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client for Synapse");
    let mut synapse = Synapse {
        base_url,
        server_name: SERVER_NAME.to_owned(),
        http,
        python,
        child,
        dir,
    };
    synapse.wait_until_ready().await;
    synapse
}

impl Synapse {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of Synapse's log (its stdout and stderr), for diagnostics.
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(self.dir.path().join(LOG_FILE)) else {
            return "(no Synapse log)".to_owned();
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// An HTTP client for requests [`Synapse::call`] does not cover (media, raw bodies).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base_url` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// One JSON API call, as `token` if given. Returns the status and the JSON body
    /// (`Value::Null` when the body is empty or not JSON). Transport errors panic.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {path} to Synapse failed: {error}"));
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|error| panic!("reading Synapse's answer to {method} {path}: {error}"));
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates a user through the shared-secret admin API (no registration flow, no
    /// registration or login rate limits) and returns it with a fresh device and token.
    pub async fn register(&self, localpart: &str, password: &str, admin: bool) -> RegisteredUser {
        let path = "/_synapse/admin/v1/register";
        let (status, body) = self.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        let nonce = body["nonce"]
            .as_str()
            .expect("a registration nonce")
            .to_owned();

        let role = if admin { "admin" } else { "notadmin" };
        let output = tokio::process::Command::new(&self.python)
            .args(["-c", REGISTRATION_MAC, REGISTRATION_SHARED_SECRET])
            .args([nonce.as_str(), localpart, password, role])
            .output()
            .await
            .expect("run Python to compute the registration MAC");
        assert!(
            output.status.success(),
            "computing the registration MAC: {output:?}"
        );
        let mac = String::from_utf8_lossy(&output.stdout).trim().to_owned();

        let request = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac,
        });
        let (status, body) = self.call(Method::POST, path, None, Some(&request)).await;
        assert_eq!(status, StatusCode::OK, "registering {localpart}: {body}");
        let field = |name: &str| {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("registration answer without {name}: {body}"))
                .to_owned()
        };
        RegisteredUser {
            user_id: field("user_id"),
            password: password.to_owned(),
            access_token: field("access_token"),
            device_id: field("device_id"),
        }
    }

    /// Exempts `user_id` from the message rate limit (`admin_token` must be a server admin's).
    pub async fn override_ratelimit(&self, admin_token: &str, user_id: &str) {
        let path = format!(
            "/_synapse/admin/v1/users/{}/override_ratelimit",
            encode(user_id)
        );
        let limits = json!({"messages_per_second": 0, "burst_count": 0});
        let (status, body) = self
            .call(Method::POST, &path, Some(admin_token), Some(&limits))
            .await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
    }

    async fn wait_until_ready(&mut self) {
        let started = Instant::now();
        let versions = self.url("/_matrix/client/versions");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Synapse exited during startup ({status}); its log ends:\n{}",
                    self.log_tail(60)
                );
            }
            let answer = self
                .http
                .get(&versions)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "Synapse did not answer {versions} within {START_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        // Synapse leads its own process group (process_group(0)): kill the whole group,
        // while the unreaped child still pins the group ID.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port on 127.0.0.1")
        .port()
}

fn homeserver_config(dir: &Path, port: u16, base_url: &str, options: SynapseOptions) -> Value {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let relaxed = json!({"per_second": 1000, "burst_count": 10000});
    let mut config = json!({
        "server_name": SERVER_NAME,
        "public_baseurl": format!("{base_url}/"),
        "pid_file": path("homeserver.pid"),
        "listeners": [{
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": false,
            "x_forwarded": false,
            // `client` also serves the media repository and the admin API.
            "resources": [{"names": ["client"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": path("homeserver.db")}},
        "log_config": path("log.yaml"),
        "media_store_path": path("media"),
        "max_upload_size": "50M",
        "enable_media_repo": true,
        "enable_authenticated_media": true,
        "signing_key_path": path("signing.key"),
        "registration_shared_secret": REGISTRATION_SHARED_SECRET,
        "macaroon_secret_key": "poe-relay-test-macaroon-secret",
        "form_secret": "poe-relay-test-form-secret",
        // Password hashing at the default 12 rounds costs a quarter second per login.
        "bcrypt_rounds": 4,
        // Loopback only: lets clients (and matrix-sdk) create users themselves.
        "enable_registration": true,
        "enable_registration_without_verification": true,
        "report_stats": false,
        // Offline: no federation, no key servers, no outbound fetches.
        "federation_domain_whitelist": [],
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "url_preview_enabled": false,
        "presence": {"enabled": false},
        // Limits only test setup meets: always relaxed.
        "rc_registration": relaxed,
        "rc_registration_token_validity": relaxed,
        "rc_login": {"address": relaxed, "account": relaxed, "failed_attempts": relaxed},
        "rc_joins": {"local": relaxed, "remote": relaxed},
        "rc_joins_per_room": relaxed,
        "rc_invites": {"per_room": relaxed, "per_user": relaxed, "per_issuer": relaxed},
        "rc_third_party_invite": relaxed,
        "rc_room_creation": relaxed,
        "rc_3pid_validation": relaxed,
        "rc_key_requests": relaxed,
        "rc_presence": {"per_user": relaxed},
        "rc_delayed_event_mgmt": relaxed,
        "rc_reports": relaxed,
        "rc_user_directory": relaxed,
        "rc_profile": relaxed,
    });
    if !options.default_rate_limits {
        // Limits the bot's own traffic meets. Without `rc_admin_redaction`, admins'
        // redactions count against `rc_message`.
        config["rc_message"] = relaxed.clone();
        config["rc_admin_redaction"] = relaxed.clone();
        config["rc_media_create"] = relaxed;
    }
    config
}

fn log_config() -> Value {
    json!({
        "version": 1,
        "formatters": {"precise": {
            "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s",
        }},
        "handlers": {"console": {
            "class": "logging.StreamHandler",
            "formatter": "precise",
            "stream": "ext://sys.stderr",
        }},
        // At DEBUG this logger would print access tokens; INFO floods the log.
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "disable_existing_loggers": false,
    })
}
