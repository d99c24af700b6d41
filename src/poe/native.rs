//! The native Poe bot protocol (`POST /bot/<name>`, protocol version 1.2): the request body
//! and the meaning of each server-sent event, as the official `fastapi-poe` client has them.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::error::{self, ErrorEvent, PoeError};
use super::event::{FinishReason, OutputFile, PoeEvent};
use super::request::{ChatRequest, Role};
use super::sse::SseEvent;
use crate::secret::Secret;

pub const PROTOCOL_VERSION: &str = "1.2";

/// A file Poe can fetch: what an upload returns and what a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Attachment {
    pub url: String,
    pub content_type: String,
    pub name: String,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Bot => "bot",
    }
}

/// Builds the `QueryRequest` body. `attachments[i]` are the uploaded files of message `i`.
/// Custom parameters ride on the last user message, where Poe reads them.
pub fn request_body(
    request: &ChatRequest,
    parameters: &Map<String, Value>,
    attachments: &[Vec<Attachment>],
) -> Value {
    let last_user = request
        .messages
        .iter()
        .rposition(|message| message.role == Role::User);
    let query: Vec<Value> = request
        .messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let files: Vec<Value> = attachments
                .get(index)
                .map(|files| {
                    files
                        .iter()
                        .map(|file| {
                            json!({
                                "url": file.url,
                                "content_type": file.content_type,
                                "name": file.name,
                                "inline_ref": null,
                                "parsed_content": null,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let message_parameters = if Some(index) == last_user {
                Value::Object(parameters.clone())
            } else {
                json!({})
            };
            json!({
                "role": role_name(message.role),
                "message_type": null,
                "sender_id": null,
                "sender": message.sender.as_ref().map(|name| json!({"id": null, "name": name})),
                "content": message.content,
                "parameters": message_parameters,
                "content_type": "text/markdown",
                "timestamp": 0,
                "message_id": "",
                "feedback": [],
                "attachments": files,
                "metadata": null,
                "referenced_message": null,
                "reactions": [],
            })
        })
        .collect();
    json!({
        "version": PROTOCOL_VERSION,
        "type": "query",
        "query": query,
        "user_id": "",
        "conversation_id": "",
        "message_id": "",
        "metadata": "",
        "api_key": "<missing>",
        "access_key": "<missing>",
        "temperature": null,
        "skip_system_prompt": false,
        "logit_bias": {},
        "stop_sequences": [],
        "language_code": "en",
        "adopt_current_bot_name": null,
        "bot_query_id": "",
        "users": [],
        "tools": null,
        "tool_calls": null,
        "tool_results": null,
        "query_creation_time": null,
        "extra_params": null,
    })
}

/// Turns native events into [`PoeEvent`]s.
#[derive(Debug, Default)]
pub struct NativeDecoder {
    events_seen: usize,
    done: bool,
}

impl NativeDecoder {
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn on_event(
        &mut self,
        event: &SseEvent,
        key: &Secret,
        out: &mut Vec<PoeEvent>,
    ) -> Result<(), PoeError> {
        self.events_seen += 1;
        match event.event.as_str() {
            "text" => out.push(PoeEvent::Text(string_field(event, "text")?)),
            "replace_response" => out.push(PoeEvent::Replace(string_field(event, "text")?)),
            "suggested_reply" => out.push(PoeEvent::SuggestedReply(string_field(event, "text")?)),
            "file" => {
                let data = object(event)?;
                let file: OutputFile =
                    serde_json::from_value(Value::Object(data)).map_err(|err| {
                        PoeError::protocol(format!("invalid `file` event: {err}"), false)
                    })?;
                out.push(PoeEvent::File(file));
            }
            "error" => {
                let data = object(event)?;
                let error_event: ErrorEvent =
                    serde_json::from_value(Value::Object(data)).map_err(|err| {
                        PoeError::protocol(format!("invalid `error` event: {err}"), false)
                    })?;
                return Err(error::from_error_event(&error_event, key));
            }
            "done" => {
                self.done = true;
                out.push(PoeEvent::Finished(FinishReason::Stop));
            }
            // OpenAI-shaped chunks (used for tool calls); their `delta.content` is answer text.
            "json" => {
                let data = object(event)?;
                let content = data
                    .get("choices")
                    .and_then(|choices| choices.get(0))
                    .and_then(|choice| choice.get("delta"))
                    .and_then(|delta| delta.get("content"))
                    .and_then(Value::as_str);
                if let Some(text) = content.filter(|text| !text.is_empty()) {
                    out.push(PoeEvent::Text(text.to_owned()));
                }
            }
            // meta (content type, linkify), data (bot metadata), ping, and anything newer:
            // nothing a chat answer needs.
            other => {
                tracing::trace!(event = other, "ignoring native Poe event");
            }
        }
        Ok(())
    }

    /// The stream ended. Without `done` the answer may be cut short.
    pub fn on_eof(&self) -> Result<(), PoeError> {
        if self.done {
            Ok(())
        } else {
            Err(PoeError::protocol(
                "the stream ended before the `done` event",
                true,
            ))
        }
    }
}

fn object(event: &SseEvent) -> Result<Map<String, Value>, PoeError> {
    match serde_json::from_str::<Value>(&event.data) {
        Ok(Value::Object(map)) => Ok(map),
        // fastapi-poe retries non-object JSON but not invalid JSON; so do we.
        Ok(_) => Err(PoeError::protocol(
            format!("`{}` event data is not a JSON object", event.event),
            true,
        )),
        Err(_) => Err(PoeError::protocol(
            format!("invalid JSON in `{}` event", event.event),
            false,
        )),
    }
}

fn string_field(event: &SseEvent, field: &str) -> Result<String, PoeError> {
    match object(event)?.remove(field) {
        Some(Value::String(text)) => Ok(text),
        _ => Err(PoeError::protocol(
            format!("`{}` event has no string `{field}`", event.event),
            false,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poe::request::ChatMessage;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            event: name.into(),
            data: data.into(),
        }
    }

    fn decode(events: &[SseEvent]) -> (Vec<PoeEvent>, Result<(), PoeError>) {
        let key = Secret::new("sk-x");
        let mut decoder = NativeDecoder::default();
        let mut out = Vec::new();
        for item in events {
            if let Err(err) = decoder.on_event(item, &key, &mut out) {
                return (out, Err(err));
            }
        }
        let end = decoder.on_eof();
        (out, end)
    }

    #[test]
    fn a_normal_stream() {
        let (events, end) = decode(&[
            event(
                "meta",
                r#"{"content_type":"text/markdown","suggested_replies":true}"#,
            ),
            event("text", r#"{"text":"Hel"}"#),
            event("ping", ""),
            event("text", r#"{"text":"lo","index":0}"#),
            event("replace_response", r#"{"text":"Hi"}"#),
            event("suggested_reply", r#"{"text":"More?"}"#),
            event(
                "file",
                r#"{"url":"https://x/y.png","content_type":"image/png","name":"y.png","inline_ref":null}"#,
            ),
            event("brand_new_event", r#"{"x":1}"#),
            event("data", r#"{"metadata":"m"}"#),
            event(
                "json",
                r#"{"choices":[{"index":0,"delta":{"content":"!"}}]}"#,
            ),
            event("done", "{}"),
        ]);
        end.unwrap();
        assert_eq!(
            events,
            vec![
                PoeEvent::Text("Hel".into()),
                PoeEvent::Text("lo".into()),
                PoeEvent::Replace("Hi".into()),
                PoeEvent::SuggestedReply("More?".into()),
                PoeEvent::File(OutputFile {
                    url: "https://x/y.png".into(),
                    content_type: "image/png".into(),
                    name: "y.png".into(),
                    inline_ref: None
                }),
                PoeEvent::Text("!".into()),
                PoeEvent::Finished(FinishReason::Stop),
            ]
        );
    }

    #[test]
    fn malformed_events_are_protocol_errors() {
        let (_, end) = decode(&[event("text", "{not json")]);
        assert!(matches!(
            end,
            Err(PoeError::Protocol {
                retryable: false,
                ..
            })
        ));
        let (_, end) = decode(&[event("text", "[1,2]")]);
        assert!(matches!(
            end,
            Err(PoeError::Protocol {
                retryable: true,
                ..
            })
        ));
        let (_, end) = decode(&[event("text", r#"{"text": 5}"#)]);
        assert!(matches!(
            end,
            Err(PoeError::Protocol {
                retryable: false,
                ..
            })
        ));
        let (events, end) = decode(&[event("text", r#"{"text":"partial"}"#)]);
        assert_eq!(events, vec![PoeEvent::Text("partial".into())]);
        assert!(matches!(
            end,
            Err(PoeError::Protocol {
                retryable: true,
                ..
            })
        ));
    }

    #[test]
    fn error_event_ends_the_stream() {
        let (events, end) = decode(&[
            event("text", r#"{"text":"a"}"#),
            event(
                "error",
                r#"{"allow_retry":false,"text":"boom","error_type":"user_caused_error"}"#,
            ),
        ]);
        assert_eq!(events, vec![PoeEvent::Text("a".into())]);
        assert!(matches!(end, Err(PoeError::BadRequest { .. })));
    }

    /// Found by `fuzz::fuzz_native_events`: `PoeError::RateLimited`'s `Display` formatted its
    /// wait with `{:?}`, so the log read `retry after None`.
    #[test]
    fn a_rate_limit_error_event_reads_as_words() {
        let (_, end) = decode(&[event(
            "error",
            r#"{"text":"You have exceeded rate limit to query bot"}"#,
        )]);
        let shown = end.unwrap_err().to_string();
        assert!(
            !shown.contains("None") && !shown.contains("Some("),
            "{shown}"
        );
    }

    #[test]
    fn body_matches_the_fastapi_poe_shape() {
        let mut request = ChatRequest::new(
            "Claude",
            vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::user("hi"),
                ChatMessage::new(Role::Bot, "hello"),
                ChatMessage::user("and?"),
            ],
        );
        request.messages[1].sender = Some("ann".into());
        let mut parameters = Map::new();
        parameters.insert("thinking_budget".into(), json!(1000));
        let attachment = Attachment {
            url: "https://files/1".into(),
            content_type: "image/png".into(),
            name: "a.png".into(),
        };
        let body = request_body(
            &request,
            &parameters,
            &[vec![], vec![], vec![], vec![attachment]],
        );
        assert_eq!(body["version"], "1.2");
        assert_eq!(body["type"], "query");
        let query = body["query"].as_array().unwrap();
        let roles: Vec<&str> = query.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "bot", "user"]);
        assert_eq!(query[1]["sender"]["name"], "ann");
        assert_eq!(query[1]["parameters"], json!({}));
        assert_eq!(query[3]["parameters"]["thinking_budget"], 1000);
        assert_eq!(query[3]["attachments"][0]["url"], "https://files/1");
    }
}

#[cfg(test)]
pub(crate) mod fuzz;
