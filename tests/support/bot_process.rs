//! The real `poe-relay run` binary as a child process, with its log in a file, for suites
//! that test the daemon as operators run it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct BotProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl BotProcess {
    /// Starts `poe-relay run` with `config` (a TOML file) and extra environment, appending
    /// its output to `log`.
    pub fn start(config: &Path, env: &[(&str, &str)], log: &Path) -> BotProcess {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("bot log file");
        let child = Command::new(env!("CARGO_BIN_EXE_poe-relay"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log handle"))
            .stderr(output)
            .spawn()
            .expect("start poe-relay");
        BotProcess {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times; panics with the log otherwise.
    pub async fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("poe-relay exited ({status}) before logging {needle:?}:\n{log}");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("poe-relay did not log {needle:?} {count}× within {timeout:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to end by itself.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("the bot is running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("poe-relay did not exit within {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM") and returns at once.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the bot is running");
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
    }

    /// Sends `signal` (e.g. "KILL", "TERM") and waits for the process to end.
    pub fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the bot is running");
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        child.wait().expect("wait for poe-relay")
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
