//! What the rest of poe-relay asks of Poe: a chat request, independent of the transport.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Which of Poe's two APIs carries a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Transport {
    /// The native bot protocol, `POST /bot/<name>`: custom parameters and file attachments.
    Native,
    /// The OpenAI-compatible API, `POST /v1/chat/completions`: token usage in the answer.
    OpenAi,
}

impl TryFrom<String> for Transport {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "native" => Ok(Transport::Native),
            "openai" => Ok(Transport::OpenAi),
            _ => Err(format!(
                "`{name}` is not a transport; use `native` or `openai`"
            )),
        }
    }
}

impl From<Transport> for &'static str {
    fn from(transport: Transport) -> Self {
        match transport {
            Transport::Native => "native",
            Transport::OpenAi => "openai",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    /// The model's earlier answers.
    Bot,
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFile {
    pub name: String,
    /// A MIME type such as `image/png`.
    pub content_type: String,
    pub source: FileSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FileSource {
    Bytes(Bytes),
    /// A public URL that Poe can download itself.
    Url(String),
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Who said it, in group chats.
    pub sender: Option<String>,
    pub attachments: Vec<InputFile>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            sender: None,
            attachments: Vec::new(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
}

/// A request for one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Custom parameters (`thinking_budget`, `aspect_ratio`, …); they override the ones the
    /// configuration sets for this model.
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub max_output_tokens: Option<u32>,
    /// `false` for media bots, which Poe asks to be called without streaming. The native
    /// protocol always streams.
    pub streaming: bool,
    /// Overrides the transport the configuration chooses for this model.
    pub transport: Option<Transport>,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            model: model.into(),
            messages,
            parameters: serde_json::Map::new(),
            max_output_tokens: None,
            streaming: true,
            transport: None,
        }
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }
}
