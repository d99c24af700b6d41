//! The one error type of the Poe client, and how HTTP statuses, error bodies and SSE error
//! events map onto it.
//!
//! Every variant has a plain-words message fit for a chat user ([`PoeError::user_message`]);
//! `Display` is for logs and may carry the server's detail, which is redacted of the API key
//! before it is stored here.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::secret::Secret;

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Opening the connection.
    Connect,
    /// Too long between two events (or before the response started).
    Idle,
    /// The whole request took longer than allowed.
    Total,
    /// Poe itself gave up waiting for the model (HTTP 408).
    Upstream,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connecting",
            TimeoutPhase::Idle => "waiting for the next event",
            TimeoutPhase::Total => "the whole request",
            TimeoutPhase::Upstream => "Poe waiting for the model",
        })
    }
}

/// " (it asks to wait N s)", when Poe said how long.
fn retry_words(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!(" (it asks to wait {} s)", wait.as_secs().max(1)),
        None => String::new(),
    }
}

/// Everything that can go wrong talking to Poe.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoeError {
    #[error("Poe rejected the API key (HTTP {status})")]
    InvalidKey { status: u16 },
    #[error("the Poe account is out of points")]
    OutOfPoints,
    #[error("Poe is rate limiting this key{}", retry_words(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("Poe rejected the request: {detail}")]
    BadRequest { detail: String },
    #[error("Poe refused the request: {detail}")]
    Refused { detail: String },
    #[error("Poe does not know the model `{model}`")]
    ModelNotFound { model: String },
    #[error("the request is too large for the model: {detail}")]
    RequestTooLarge { detail: String },
    #[error("Poe is unavailable ({detail})")]
    Unavailable {
        detail: String,
        retry_after: Option<Duration>,
        retryable: bool,
    },
    #[error("the model failed: {detail}")]
    ModelError { detail: String, retryable: bool },
    #[error("timed out: {phase}")]
    Timeout { phase: TimeoutPhase },
    #[error("Poe broke the protocol: {detail}")]
    Protocol { detail: String, retryable: bool },
}

impl PoeError {
    /// What to tell the person in the chat. Never contains a secret or a stack trace.
    pub fn user_message(&self) -> String {
        match self {
            PoeError::InvalidKey { .. } => {
                "Poe rejected this bot's API key. An admin needs to check POE_API_KEY.".into()
            }
            PoeError::OutOfPoints => {
                "The Poe account behind this bot is out of points. An admin can check it with `/poe balance`.".into()
            }
            PoeError::RateLimited { retry_after } => match retry_after {
                Some(wait) => format!(
                    "Poe is rate limiting this bot. Try again in {} seconds.",
                    wait.as_secs().max(1)
                ),
                None => "Poe is rate limiting this bot. Try again in a minute.".into(),
            },
            PoeError::BadRequest { .. } => {
                "Poe could not accept this request. If the channel has custom model parameters, check them with `/poe model`.".into()
            }
            PoeError::Refused { .. } => "Poe refused to answer this request.".into(),
            PoeError::ModelNotFound { model } => format!(
                "Poe does not know the model `{model}`. Pick another with `/poe model`; `/poe models` lists them."
            ),
            PoeError::RequestTooLarge { .. } => {
                "The conversation is too long for this model. Send a shorter message or start over with `/poe reset`.".into()
            }
            PoeError::Unavailable { .. } => {
                "Poe or the model is unavailable right now. Try again in a little while.".into()
            }
            PoeError::ModelError { .. } => {
                "The model stopped with an error. Try again in a moment.".into()
            }
            PoeError::Timeout { .. } => "Poe took too long to answer. Try again.".into(),
            PoeError::Protocol { .. } => {
                "Poe sent a reply the bot could not understand. Try again; if it keeps happening, tell an admin.".into()
            }
        }
    }

    /// A short stable name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PoeError::InvalidKey { .. } => "invalid_key",
            PoeError::OutOfPoints => "out_of_points",
            PoeError::RateLimited { .. } => "rate_limited",
            PoeError::BadRequest { .. } => "bad_request",
            PoeError::Refused { .. } => "refused",
            PoeError::ModelNotFound { .. } => "model_not_found",
            PoeError::RequestTooLarge { .. } => "request_too_large",
            PoeError::Unavailable { .. } => "unavailable",
            PoeError::ModelError { .. } => "model_error",
            PoeError::Timeout { .. } => "timeout",
            PoeError::Protocol { .. } => "protocol",
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PoeError::RateLimited { .. } => true,
            PoeError::Unavailable { retryable, .. }
            | PoeError::ModelError { retryable, .. }
            | PoeError::Protocol { retryable, .. } => *retryable,
            PoeError::Timeout { phase } => *phase != TimeoutPhase::Total,
            _ => false,
        }
    }

    /// How long the server asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PoeError::RateLimited { retry_after } | PoeError::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Runs every server-derived detail through [`clean_detail`]: parser messages quote the
    /// offending value, which a hostile or broken server could make the key itself.
    pub(crate) fn scrubbed(self, key: &Secret) -> Self {
        let clean = |detail: String| clean_detail(&detail, key);
        match self {
            PoeError::BadRequest { detail } => PoeError::BadRequest {
                detail: clean(detail),
            },
            PoeError::Refused { detail } => PoeError::Refused {
                detail: clean(detail),
            },
            PoeError::ModelNotFound { model } => PoeError::ModelNotFound {
                model: clean(model),
            },
            PoeError::RequestTooLarge { detail } => PoeError::RequestTooLarge {
                detail: clean(detail),
            },
            PoeError::Unavailable {
                detail,
                retry_after,
                retryable,
            } => PoeError::Unavailable {
                detail: clean(detail),
                retry_after,
                retryable,
            },
            PoeError::ModelError { detail, retryable } => PoeError::ModelError {
                detail: clean(detail),
                retryable,
            },
            PoeError::Protocol { detail, retryable } => PoeError::Protocol {
                detail: clean(detail),
                retryable,
            },
            other => other,
        }
    }

    pub(crate) fn protocol(detail: impl Into<String>, retryable: bool) -> Self {
        PoeError::Protocol {
            detail: detail.into(),
            retryable,
        }
    }
}

/// `{"error": {...}}` as Poe sends it. `code` is a string on some pages and an integer on
/// others, so it stays a JSON value.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: Option<ErrorObject>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorObject {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

impl ErrorObject {
    fn code_str(&self) -> String {
        match &self.code {
            Some(serde_json::Value::String(code)) => code.clone(),
            _ => String::new(),
        }
    }

    fn mentions(&self, words: &[&str]) -> bool {
        let code = self.code_str();
        let kind = self.kind.as_deref().unwrap_or_default();
        words.iter().any(|word| code == *word || kind == *word)
    }
}

/// Longest server-supplied detail kept in an error.
const MAX_DETAIL_CHARS: usize = 300;

pub(crate) fn clean_detail(text: &str, key: &Secret) -> String {
    let redacted = key.redact(text);
    let mut detail: String = redacted.chars().take(MAX_DETAIL_CHARS).collect();
    if redacted.chars().count() > MAX_DETAIL_CHARS {
        detail.push('…');
    }
    detail
}

/// Parses `Retry-After` given in seconds (Poe's form); HTTP dates are not used by Poe.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// Maps an unsuccessful HTTP response to an error. `model` is the model the request named,
/// if any, so that a 404 can say which model is unknown.
pub(crate) fn from_http(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    model: Option<&str>,
    key: &Secret,
) -> PoeError {
    let parsed: ErrorObject = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|body| body.error)
        .unwrap_or_default();
    let detail = clean_detail(
        parsed
            .message
            .as_deref()
            .unwrap_or_else(|| std::str::from_utf8(body).unwrap_or("(binary body)")),
        key,
    );
    let detail = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    if parsed.mentions(&[
        "insufficient_points",
        "insufficient_quota",
        "insufficient_credits",
    ]) {
        return PoeError::OutOfPoints;
    }
    if parsed.mentions(&["invalid_api_key", "authentication_error"]) {
        return PoeError::InvalidKey { status };
    }
    if parsed.mentions(&["model_not_found"]) {
        return PoeError::ModelNotFound {
            model: model.unwrap_or_default().to_owned(),
        };
    }
    match status {
        400 | 422 => PoeError::BadRequest { detail },
        401 => PoeError::InvalidKey { status },
        402 => PoeError::OutOfPoints,
        403 => PoeError::Refused { detail },
        404 => match model {
            Some(model) => PoeError::ModelNotFound {
                model: model.to_owned(),
            },
            None => PoeError::protocol(detail, false),
        },
        408 => PoeError::Timeout {
            phase: TimeoutPhase::Upstream,
        },
        413 => PoeError::RequestTooLarge { detail },
        429 => PoeError::RateLimited {
            retry_after: retry_after(headers),
        },
        500 | 502 | 503 | 504 | 529 => PoeError::Unavailable {
            detail,
            retry_after: retry_after(headers),
            retryable: true,
        },
        500..=599 => PoeError::Unavailable {
            detail,
            retry_after: None,
            retryable: false,
        },
        _ => PoeError::protocol(format!("unexpected status, {detail}"), false),
    }
}

/// Maps an error object found inside a stream (OpenAI transport) to an error.
pub(crate) fn from_stream_error(object: &ErrorObject, model: &str, key: &Secret) -> PoeError {
    let detail = clean_detail(object.message.as_deref().unwrap_or("error in stream"), key);
    // Some of Poe's pages give `code` as the HTTP status; map it like one.
    if let Some(status) = object
        .code
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .filter(|code| (400..600).contains(code))
    {
        let body = serde_json::json!({"error": {"message": detail, "type": object.kind}});
        return from_http(
            status as u16,
            &HeaderMap::new(),
            body.to_string().as_bytes(),
            Some(model),
            key,
        );
    }
    if object.mentions(&[
        "insufficient_points",
        "insufficient_quota",
        "insufficient_credits",
    ]) {
        PoeError::OutOfPoints
    } else if object.mentions(&["invalid_api_key", "authentication_error"]) {
        PoeError::InvalidKey { status: 200 }
    } else if object.mentions(&["rate_limit_exceeded", "rate_limit_error"]) {
        PoeError::RateLimited { retry_after: None }
    } else if object.mentions(&["model_not_found"]) {
        PoeError::ModelNotFound {
            model: model.to_owned(),
        }
    } else if object.mentions(&["request_too_large", "context_length_exceeded"]) {
        PoeError::RequestTooLarge { detail }
    } else if object.mentions(&["invalid_request_error", "invalid_parameter"]) {
        PoeError::BadRequest { detail }
    } else {
        PoeError::ModelError {
            detail,
            retryable: true,
        }
    }
}

/// The data of a native `error` event.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEvent {
    #[serde(default)]
    pub allow_retry: Option<bool>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub error_type: Option<String>,
}

/// Maps a native `error` event to an error.
pub(crate) fn from_error_event(event: &ErrorEvent, key: &Secret) -> PoeError {
    let text = event.text.as_deref().unwrap_or("the bot reported an error");
    let detail = clean_detail(text, key);
    let retryable = event.allow_retry.unwrap_or(true);
    match event.error_type.as_deref() {
        Some("insufficient_fund") => PoeError::OutOfPoints,
        Some("user_message_too_long") => PoeError::RequestTooLarge { detail },
        Some("user_caused_error") => PoeError::BadRequest { detail },
        Some("privacy_authorization_error") => PoeError::Refused { detail },
        _ if retryable && text.to_ascii_lowercase().contains("rate limit") => {
            PoeError::RateLimited { retry_after: None }
        }
        _ => PoeError::ModelError { detail, retryable },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    fn key() -> Secret {
        Secret::new("sk-test-key-1234")
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let empty = HeaderMap::new();
        let cases = [
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-test-key-1234","type":"authentication_error","code":"invalid_api_key"}}"#,
            ),
            (
                402,
                r#"{"error":{"message":"no","type":"insufficient_credits","code":402}}"#,
            ),
            (
                404,
                r#"{"error":{"message":"nope","type":"not_found_error"}}"#,
            ),
            (
                413,
                r#"{"error":{"message":"too big","type":"request_too_large"}}"#,
            ),
            (503, "<html>down</html>"),
        ];
        let errors: Vec<PoeError> = cases
            .iter()
            .map(|(status, body)| {
                from_http(*status, &empty, body.as_bytes(), Some("GPT-5"), &key())
            })
            .collect();
        assert_eq!(errors[0], PoeError::InvalidKey { status: 401 });
        assert_eq!(errors[1], PoeError::OutOfPoints);
        assert_eq!(
            errors[2],
            PoeError::ModelNotFound {
                model: "GPT-5".into()
            }
        );
        assert!(matches!(errors[3], PoeError::RequestTooLarge { .. }));
        assert!(matches!(
            errors[4],
            PoeError::Unavailable {
                retryable: true,
                ..
            }
        ));
        assert!(errors[4].is_retryable());
        assert!(!errors[0].is_retryable());
    }

    #[test]
    fn the_key_never_survives_into_an_error() {
        let err = from_http(
            400,
            &HeaderMap::new(),
            br#"{"error":{"message":"bad key sk-test-key-1234 given","type":"invalid_request_error"}}"#,
            None,
            &key(),
        );
        let text = format!("{err} {err:?} {}", err.user_message());
        assert!(!text.contains("sk-test-key-1234"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn retry_after_is_honoured_on_429() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let err = from_http(429, &headers, b"{}", None, &key());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.is_retryable());
        assert!(err.user_message().contains("7 seconds"));
    }

    #[test]
    fn integer_codes_do_not_break_parsing() {
        let err = from_http(
            401,
            &HeaderMap::new(),
            br#"{"error":{"code":401,"type":"authentication_error","message":"x","metadata":{"a":1}}}"#,
            None,
            &key(),
        );
        assert_eq!(err, PoeError::InvalidKey { status: 401 });
    }

    #[test]
    fn error_events_map_by_type() {
        let event = |error_type: Option<&str>, allow_retry: Option<bool>, text: &str| ErrorEvent {
            allow_retry,
            text: Some(text.into()),
            error_type: error_type.map(Into::into),
        };
        assert_eq!(
            from_error_event(&event(Some("insufficient_fund"), Some(false), "x"), &key()),
            PoeError::OutOfPoints
        );
        assert!(matches!(
            from_error_event(&event(Some("user_message_too_long"), None, "x"), &key()),
            PoeError::RequestTooLarge { .. }
        ));
        assert!(matches!(
            from_error_event(
                &event(None, None, "You have exceeded rate limit to query bot"),
                &key()
            ),
            PoeError::RateLimited { .. }
        ));
        let retry_default = from_error_event(&event(None, None, "Internal server error"), &key());
        assert!(retry_default.is_retryable());
        let no_retry = from_error_event(&event(None, Some(false), "Access denied"), &key());
        assert!(!no_retry.is_retryable());
    }

    #[test]
    fn user_messages_are_plain_words() {
        let errors = [
            PoeError::InvalidKey { status: 401 },
            PoeError::OutOfPoints,
            PoeError::RateLimited { retry_after: None },
            PoeError::BadRequest { detail: "x".into() },
            PoeError::ModelNotFound { model: "m".into() },
            PoeError::RequestTooLarge { detail: "x".into() },
            PoeError::Timeout {
                phase: TimeoutPhase::Idle,
            },
            PoeError::protocol("bad json at line 1", false),
        ];
        for err in errors {
            let message = err.user_message();
            assert!(message.ends_with('.'), "{message}");
            assert!(!message.contains("HTTP"), "{message}");
            assert!(!message.contains("json"), "{message}");
        }
    }
}
