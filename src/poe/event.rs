//! What comes back from Poe, the same for both transports.

use serde::Deserialize;

/// One step of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum PoeEvent {
    /// More text: append it.
    Text(String),
    /// The answer so far is replaced by this text.
    Replace(String),
    /// A follow-up the bot suggests; not part of the answer.
    SuggestedReply(String),
    /// A file the bot produced (an image, audio, …).
    File(OutputFile),
    /// Token counts (OpenAI transport only).
    Usage(Usage),
    /// The answer is complete. Always the last event of a successful stream.
    Finished(FinishReason),
}

impl PoeEvent {
    /// Whether this event shows the caller part of the answer (after which no retry may
    /// happen, because the user could see text twice).
    pub fn is_output(&self) -> bool {
        match self {
            PoeEvent::Text(text) => !text.is_empty(),
            PoeEvent::Replace(_) | PoeEvent::File(_) => true,
            _ => false,
        }
    }
}

/// A file produced by the bot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OutputFile {
    pub url: String,
    pub content_type: String,
    pub name: String,
    #[serde(default)]
    pub inline_ref: Option<String>,
}

/// Token counts. Every field is optional: Poe sends `null` in some of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    #[serde(default)]
    pub audio_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
    #[serde(default)]
    pub audio_tokens: Option<u64>,
}

/// Why the answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    /// The output token limit was reached.
    Length,
    ContentFilter,
    ToolCalls,
    Other(String),
}

impl FinishReason {
    pub(crate) fn parse(reason: Option<&str>) -> Self {
        match reason {
            None | Some("stop") => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            Some("content_filter") => FinishReason::ContentFilter,
            Some("tool_calls") => FinishReason::ToolCalls,
            Some(other) => FinishReason::Other(other.to_owned()),
        }
    }
}
