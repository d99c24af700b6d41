//! What the fake Poe answers: scripted per model, rendered the same way for both transports.

use std::time::Duration;

use serde_json::Value;

/// How the fake answers one request for a model.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// Streams back the last user message, word by word.
    Echo,
    /// Streams `text` in pieces of `chunk_chars` characters, one every `interval`.
    Text {
        text: String,
        chunk_chars: usize,
        interval: Duration,
    },
    /// Streams `before`, then replaces the whole answer with `after` (native `replace_response`).
    Replace { before: String, after: String },
    /// Answers `text` and suggests follow-ups (native `suggested_reply`).
    Suggested { text: String, replies: Vec<String> },
    /// Answers with an HTTP error: `body` as JSON, `Retry-After` when given.
    Status {
        status: u16,
        body: Value,
        retry_after: Option<u64>,
    },
    /// Streams `before`, then an error: a native `error` event (its data is `error`) or, on
    /// the OpenAI transport, a `data:` payload `{"error": …}`.
    ErrorMidStream { before: String, error: Value },
    /// Streams `before`, then breaks the connection.
    DropMidStream { before: String },
    /// Streams `before`, then sends nothing more while keeping the connection open.
    Stall { before: String },
    /// A long answer: `chars` characters in pieces of 1 KiB.
    Huge { chars: usize },
    /// A media bot: a file (native `file` event) or a markdown image link (OpenAI).
    Media {
        url: String,
        content_type: String,
        name: String,
    },
    /// A verbatim response, for replaying captures and sending malformed data.
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// The n-th request gets the n-th scenario; the last one repeats.
    Sequence(Vec<Scenario>),
}

impl Scenario {
    pub fn text(text: impl Into<String>) -> Self {
        Scenario::Text {
            text: text.into(),
            chunk_chars: 4,
            interval: Duration::ZERO,
        }
    }

    /// An error status with a Poe-shaped body.
    pub fn status(status: u16, kind: &str, code: &str, message: &str) -> Self {
        Scenario::Status {
            status,
            body: serde_json::json!({"error": {"message": message, "type": kind, "code": code}}),
            retry_after: None,
        }
    }

    /// `times` failures of `failure`, then `success` for every later request.
    pub fn fail_then(failure: Scenario, times: usize, success: Scenario) -> Self {
        let mut steps = vec![failure; times];
        steps.push(success);
        Scenario::Sequence(steps)
    }

    /// The scenario for the `index`-th request (0-based).
    pub(crate) fn pick(&self, index: usize) -> &Scenario {
        match self {
            Scenario::Sequence(steps) if !steps.is_empty() => {
                steps[index.min(steps.len() - 1)].pick(0)
            }
            other => other,
        }
    }
}

/// One step of a rendered answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Text(String),
    Replace(String),
    Suggested(String),
    File {
        url: String,
        content_type: String,
        name: String,
    },
    Sleep(Duration),
    Error(Value),
    Drop,
    Stall,
    Done,
}

/// Splits `text` into pieces of at most `size` characters (never inside a character).
pub(crate) fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

/// Splits text after each space, so joining the words gives the text back.
fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// The steps of an answer to `last_user_message`, or `None` for an HTTP-level scenario.
pub(crate) fn steps(scenario: &Scenario, last_user_message: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    match scenario {
        Scenario::Echo => steps.extend(words(last_user_message).into_iter().map(Step::Text)),
        Scenario::Text {
            text,
            chunk_chars,
            interval,
        } => {
            for piece in chunks(text, *chunk_chars) {
                if !interval.is_zero() {
                    steps.push(Step::Sleep(*interval));
                }
                steps.push(Step::Text(piece));
            }
        }
        Scenario::Replace { before, after } => {
            steps.push(Step::Text(before.clone()));
            steps.push(Step::Replace(after.clone()));
        }
        Scenario::Suggested { text, replies } => {
            steps.push(Step::Text(text.clone()));
            steps.extend(replies.iter().cloned().map(Step::Suggested));
        }
        Scenario::ErrorMidStream { before, error } => {
            if !before.is_empty() {
                steps.push(Step::Text(before.clone()));
            }
            steps.push(Step::Error(error.clone()));
            return steps;
        }
        Scenario::DropMidStream { before } => {
            if !before.is_empty() {
                steps.push(Step::Text(before.clone()));
            }
            steps.push(Step::Drop);
            return steps;
        }
        Scenario::Stall { before } => {
            if !before.is_empty() {
                steps.push(Step::Text(before.clone()));
            }
            steps.push(Step::Stall);
            return steps;
        }
        Scenario::Huge { chars } => {
            let text: String = "0123456789abcdef".chars().cycle().take(*chars).collect();
            steps.extend(chunks(&text, 1024).into_iter().map(Step::Text));
        }
        Scenario::Media {
            url,
            content_type,
            name,
        } => steps.push(Step::File {
            url: url.clone(),
            content_type: content_type.clone(),
            name: name.clone(),
        }),
        Scenario::Status { .. } | Scenario::Raw { .. } | Scenario::Sequence(_) => {}
    }
    steps.push(Step::Done);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_repeat_their_last_step() {
        let scenario = Scenario::fail_then(
            Scenario::status(500, "provider_error", "internal_error", "x"),
            2,
            Scenario::Echo,
        );
        assert!(matches!(scenario.pick(0), Scenario::Status { .. }));
        assert!(matches!(scenario.pick(1), Scenario::Status { .. }));
        assert!(matches!(scenario.pick(2), Scenario::Echo));
        assert!(matches!(scenario.pick(9), Scenario::Echo));
    }

    #[test]
    fn chunks_and_words_keep_every_character() {
        let text = "héllo wörld 👋🏽 done";
        assert_eq!(chunks(text, 3).concat(), text);
        assert_eq!(words(text).concat(), text);
    }
}
