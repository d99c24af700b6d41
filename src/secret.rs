//! Secrets (the Poe key, platform tokens and passwords) and where they come from.
//!
//! A secret is read from the environment (`NAME`) or from a file named by `NAME_FILE`, never
//! from the TOML configuration. The [`Secret`] type has no `Display` and a redacting `Debug`,
//! so a secret cannot end up in a log line or an error message by accident.

use std::fmt;
use std::path::PathBuf;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the secret in `text`, so that server messages that echo a
    /// key back cannot leak it into logs or chat.
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Why a secret could not be read. Never contains the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("{name} is not set: set {name} or {name}_FILE (a path to a file holding it)")]
    Missing { name: String },
    #[error("both {name} and {name}_FILE are set: keep only one")]
    Ambiguous { name: String },
    #[error("{name} is set but empty")]
    Empty { name: String },
    #[error("{name}_FILE points to {path}, which cannot be read: {reason}")]
    Unreadable {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

/// Where secrets are looked up. Production reads the process environment; tests pass a map.
pub trait SecretSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl SecretSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> SecretSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

/// Reads `name` from the environment or from the file named by `name_FILE`.
/// Returns `Ok(None)` when neither is set.
pub fn read_optional(source: &dyn SecretSource, name: &str) -> Result<Option<Secret>, SecretError> {
    let direct = source.var(name);
    let file_var = source.var(&format!("{name}_FILE"));
    let value = match (direct, file_var) {
        (Some(_), Some(_)) => {
            return Err(SecretError::Ambiguous {
                name: name.to_owned(),
            });
        }
        (None, None) => return Ok(None),
        (Some(value), None) => value,
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            std::fs::read_to_string(&path).map_err(|err| SecretError::Unreadable {
                name: name.to_owned(),
                path: path.clone(),
                reason: err.kind().to_string(),
            })?
        }
    };
    // A trailing newline is what editors and `echo` leave in secret files.
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    if value.trim().is_empty() {
        return Err(SecretError::Empty {
            name: name.to_owned(),
        });
    }
    Ok(Some(Secret(value)))
}

/// Like [`read_optional`], but a missing secret is an error.
pub fn read_required(source: &dyn SecretSource, name: &str) -> Result<Secret, SecretError> {
    read_optional(source, name)?.ok_or_else(|| SecretError::Missing {
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("sk-very-secret");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert!(!format!("{:?}", Some(secret)).contains("very"));
    }

    #[test]
    fn redact_removes_every_occurrence() {
        let secret = Secret::new("sk-abc123");
        assert_eq!(
            secret.redact("bad key sk-abc123, really sk-abc123"),
            "bad key [redacted], really [redacted]"
        );
    }

    #[test]
    fn reads_from_env_or_file_but_not_both() {
        let env = [("POE_API_KEY", "sk-1\n")];
        assert_eq!(read_required(&env, "POE_API_KEY").unwrap().expose(), "sk-1");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let env = [("POE_API_KEY_FILE", path.as_str())];
        assert_eq!(
            read_required(&env, "POE_API_KEY").unwrap().expose(),
            "sk-from-file"
        );

        let env = [("POE_API_KEY", "a"), ("POE_API_KEY_FILE", "/x")];
        assert!(matches!(
            read_required(&env, "POE_API_KEY"),
            Err(SecretError::Ambiguous { .. })
        ));
        let env = [("OTHER", "a")];
        let err = read_required(&env, "POE_API_KEY").unwrap_err();
        assert_eq!(
            err.to_string(),
            "POE_API_KEY is not set: set POE_API_KEY or POE_API_KEY_FILE (a path to a file holding it)"
        );
        let env = [("POE_API_KEY", "  \n")];
        assert!(matches!(
            read_required(&env, "POE_API_KEY"),
            Err(SecretError::Empty { .. })
        ));
    }

    #[test]
    fn unreadable_file_names_the_path_not_the_content() {
        let env = [("POE_API_KEY_FILE", "/nonexistent/poe-key")];
        let err = read_required(&env, "POE_API_KEY").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/poe-key"), "{err}");
    }
}
