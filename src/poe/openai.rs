//! The OpenAI-compatible transport (`POST /v1/chat/completions`): request body, streamed
//! chunks and the non-streamed answer (used for media bots).

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{self, ErrorObject, PoeError};
use super::event::{FinishReason, PoeEvent, Usage};
use super::request::{ChatRequest, FileSource, InputFile, Role};
use super::sse::SseEvent;
use crate::secret::Secret;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Bot => "assistant",
    }
}

/// OpenAI restricts `name` to `[A-Za-z0-9_-]{1,64}`.
fn sender_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    (!cleaned.trim_matches('_').is_empty()).then_some(cleaned)
}

fn file_part(file: &InputFile) -> Result<Value, PoeError> {
    let is_image = file.content_type.starts_with("image/");
    match (&file.source, is_image) {
        (FileSource::Url(url), true) => Ok(json!({"type": "image_url", "image_url": {"url": url}})),
        (FileSource::Url(_), false) => Err(PoeError::BadRequest {
            detail: format!(
                "`{}` is only a link; the OpenAI transport needs the file's bytes",
                file.name
            ),
        }),
        (FileSource::Bytes(bytes), _) => {
            let data_url = format!(
                "data:{};base64,{}",
                file.content_type,
                base64::engine::general_purpose::STANDARD.encode(bytes)
            );
            if is_image {
                Ok(json!({"type": "image_url", "image_url": {"url": data_url}}))
            } else {
                Ok(json!({"type": "file", "file": {"filename": file.name, "file_data": data_url}}))
            }
        }
    }
}

/// Builds the request body. Custom parameters go to the top level, where the OpenAI SDK's
/// `extra_body` puts them.
pub fn request_body(
    request: &ChatRequest,
    parameters: &Map<String, Value>,
) -> Result<Value, PoeError> {
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let content = if message.attachments.is_empty() {
            Value::String(message.content.clone())
        } else {
            let mut parts = vec![json!({"type": "text", "text": message.content})];
            for file in &message.attachments {
                parts.push(file_part(file)?);
            }
            Value::Array(parts)
        };
        let mut entry = json!({"role": role_name(message.role), "content": content});
        if let Some(name) = message.sender.as_deref().and_then(sender_name) {
            entry["name"] = Value::String(name);
        }
        messages.push(entry);
    }
    let mut body = Map::new();
    for (name, value) in parameters {
        body.insert(name.clone(), value.clone());
    }
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(request.streaming));
    if request.streaming {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(max) = request.max_output_tokens {
        body.insert("max_tokens".into(), json!(max));
    }
    Ok(Value::Object(body))
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

/// Turns streamed chunks into [`PoeEvent`]s.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    finish_reason: Option<String>,
    done: bool,
}

impl OpenAiDecoder {
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn on_event(
        &mut self,
        event: &SseEvent,
        model: &str,
        key: &Secret,
        out: &mut Vec<PoeEvent>,
    ) -> Result<(), PoeError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            out.push(PoeEvent::Finished(FinishReason::parse(
                self.finish_reason.as_deref(),
            )));
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|err| {
            PoeError::protocol(
                format!("invalid chunk in the stream: {}", plain(&err)),
                false,
            )
        })?;
        if let Some(error) = &chunk.error {
            return Err(error::from_stream_error(error, model, key));
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.and_then(|delta| delta.content)
                && !text.is_empty()
            {
                out.push(PoeEvent::Text(text));
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(PoeEvent::Usage(usage));
        }
        Ok(())
    }

    /// The stream ended; without `[DONE]` it is an error, not a success.
    pub fn on_eof(&self) -> Result<(), PoeError> {
        if self.done {
            Ok(())
        } else {
            Err(PoeError::protocol("the stream ended without [DONE]", true))
        }
    }
}

#[derive(Debug, Deserialize)]
struct Completion {
    choices: Vec<CompletionChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct CompletionChoice {
    message: CompletionMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionMessage {
    #[serde(default)]
    content: Option<String>,
}

/// A parser's message with the Rust types it names (`expected struct Usage`, `expected u64`)
/// said as the JSON they stand for, which is what a reader of the log can act on.
fn plain(err: &serde_json::Error) -> String {
    const NUMBERS: &[(&str, &str)] = &[
        ("u8", "a whole number of at least 0"),
        ("u16", "a whole number of at least 0"),
        ("u32", "a whole number of at least 0"),
        ("u64", "a whole number of at least 0"),
        ("usize", "a whole number of at least 0"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("f64", "a number"),
    ];
    let text = err.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("expected ") {
        let (before, after) = rest.split_at(at + "expected ".len());
        out.push_str(before);
        rest = after;
        let word_end = |text: &str| {
            text.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(text.len())
        };
        if let Some(name) = rest.strip_prefix("struct ") {
            // `struct Completion`, or `struct Completion with 2 elements` for a JSON array.
            rest = &name[word_end(name)..];
            if let Some(count) = rest.strip_prefix(" with ") {
                let digits = count.bytes().take_while(u8::is_ascii_digit).count();
                let tail = &count[digits..];
                if let Some(tail) = tail
                    .strip_prefix(" elements")
                    .or_else(|| tail.strip_prefix(" element"))
                {
                    rest = tail;
                }
            }
            out.push_str("an object");
        } else if let Some((_, words)) = NUMBERS
            .iter()
            .find(|(name, _)| rest.starts_with(name) && word_end(rest) == name.len())
        {
            rest = &rest[word_end(rest)..];
            out.push_str(words);
        }
    }
    out.push_str(rest);
    out
}

/// Decodes a non-streamed answer.
pub fn decode_completion(
    body: &[u8],
    model: &str,
    key: &Secret,
) -> Result<Vec<PoeEvent>, PoeError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| PoeError::protocol(format!("invalid JSON answer: {err}"), false))?;
    if let Some(error) = value.get("error").filter(|error| !error.is_null()) {
        let object: ErrorObject = serde_json::from_value(error.clone()).unwrap_or_default();
        return Err(error::from_stream_error(&object, model, key));
    }
    let completion: Completion = serde_json::from_value(value).map_err(|err| {
        PoeError::protocol(format!("unexpected answer shape: {}", plain(&err)), false)
    })?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| PoeError::protocol("the answer has no choices", false))?;
    let mut events = Vec::with_capacity(3);
    if let Some(text) = choice.message.content.filter(|text| !text.is_empty()) {
        events.push(PoeEvent::Text(text));
    }
    if let Some(usage) = completion.usage {
        events.push(PoeEvent::Usage(usage));
    }
    events.push(PoeEvent::Finished(FinishReason::parse(
        choice.finish_reason.as_deref(),
    )));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poe::request::ChatMessage;

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: String::new(),
            data: text.into(),
        }
    }

    #[test]
    fn a_streamed_answer_with_usage() {
        let key = Secret::new("sk-x");
        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        for chunk in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":null}}}"#,
            "[DONE]",
        ] {
            decoder.on_event(&data(chunk), "m", &key, &mut out).unwrap();
        }
        decoder.on_eof().unwrap();
        assert_eq!(out[0], PoeEvent::Text("Hel".into()));
        assert_eq!(out[1], PoeEvent::Text("lo".into()));
        let PoeEvent::Usage(usage) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(usage.completion_tokens, Some(2));
        assert_eq!(out[3], PoeEvent::Finished(FinishReason::Length));
    }

    #[test]
    fn errors_inside_the_stream_and_truncation() {
        let key = Secret::new("sk-x");
        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        let err = decoder
            .on_event(
                &data(r#"{"error":{"message":"slow down","type":"rate_limit_error","code":429}}"#),
                "m",
                &key,
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(err, PoeError::RateLimited { .. }));
        let decoder = OpenAiDecoder::default();
        assert!(matches!(decoder.on_eof(), Err(PoeError::Protocol { .. })));
        let mut decoder = OpenAiDecoder::default();
        assert!(
            decoder
                .on_event(&data("{oops"), "m", &key, &mut out)
                .is_err()
        );
    }

    /// Found by `fuzz::fuzz_openai_stream_events` and `fuzz_openai_completion`: serde's
    /// messages named this crate's Rust types (`expected struct Chunk`, `expected u64`).
    #[test]
    fn wrong_shapes_are_described_in_json_terms_not_rust_types() {
        let key = Secret::new("sk-x");
        let stream_error = |text: &str| {
            OpenAiDecoder::default()
                .on_event(&data(text), "m", &key, &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            stream_error("-3"),
            "Poe broke the protocol: invalid chunk in the stream: invalid type: integer `-3`, expected an object at line 1 column 2"
        );
        assert_eq!(
            stream_error(r#"{"choices":[5]}"#),
            "Poe broke the protocol: invalid chunk in the stream: invalid type: integer `5`, expected an object at line 1 column 13"
        );
        assert_eq!(
            stream_error(r#"{"usage":{"prompt_tokens":-1}}"#),
            "Poe broke the protocol: invalid chunk in the stream: invalid value: integer `-1`, expected a whole number of at least 0 at line 1 column 28"
        );
        let completion_error = |body: &str| {
            decode_completion(body.as_bytes(), "m", &key)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            completion_error("[]"),
            "Poe broke the protocol: unexpected answer shape: invalid length 0, expected an object"
        );
        assert_eq!(
            completion_error(r#"{"choices":[{"message":"hi"}]}"#),
            "Poe broke the protocol: unexpected answer shape: invalid type: string \"hi\", expected an object"
        );
    }

    #[test]
    fn body_has_parameters_at_top_level_and_files_as_parts() {
        let mut request = ChatRequest::new("GPT-5", vec![ChatMessage::user("look")]);
        request.messages[0].sender = Some("Zoë B.".into());
        request.messages[0].attachments.push(InputFile {
            name: "a.png".into(),
            content_type: "image/png".into(),
            source: FileSource::Bytes(bytes::Bytes::from_static(b"png")),
        });
        request.messages[0].attachments.push(InputFile {
            name: "a.txt".into(),
            content_type: "text/plain".into(),
            source: FileSource::Bytes(bytes::Bytes::from_static(b"hi")),
        });
        let mut parameters = Map::new();
        parameters.insert("reasoning_effort".into(), json!("high"));
        let body = request_body(&request, &parameters).unwrap();
        assert_eq!(body["reasoning_effort"], "high");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"][0]["name"], "Zo__B_");
        let parts = body["messages"][0]["content"].as_array().unwrap();
        assert_eq!(parts[1]["image_url"]["url"], "data:image/png;base64,cG5n");
        assert_eq!(parts[2]["file"]["file_data"], "data:text/plain;base64,aGk=");
    }
}

#[cfg(test)]
mod fuzz;
