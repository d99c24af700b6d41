//! Steps of an answer written as either transport's wire format.

use serde_json::{Value, json};

use super::scenario::Step;

/// A piece of the response body, or an instruction to the writer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    Bytes(String),
    /// Bytes that carry `chars` characters of the answer (timed for benchmarks).
    Answer {
        bytes: String,
        chars: usize,
    },
    Sleep(std::time::Duration),
    /// Break the connection.
    Drop,
    /// Send nothing more, but keep the connection open.
    Stall,
}

fn sse(event: &str, data: &Value) -> Frame {
    Frame::Bytes(format!("event: {event}\ndata: {data}\n\n"))
}

/// The native bot protocol, as `fastapi-poe`'s server writes it.
pub(crate) fn native(steps: &[Step]) -> Vec<Frame> {
    let mut frames = vec![sse(
        "meta",
        &json!({"content_type": "text/markdown", "suggested_replies": true, "linkify": true}),
    )];
    for step in steps {
        frames.push(match step {
            Step::Text(text) => Frame::Answer {
                bytes: format!("event: text\ndata: {}\n\n", json!({"text": text})),
                chars: text.chars().count(),
            },
            Step::Replace(text) => sse("replace_response", &json!({"text": text})),
            Step::Suggested(text) => sse("suggested_reply", &json!({"text": text})),
            Step::File {
                url,
                content_type,
                name,
            } => sse(
                "file",
                &json!({"url": url, "content_type": content_type, "name": name, "inline_ref": null}),
            ),
            Step::Sleep(duration) => Frame::Sleep(*duration),
            Step::Error(data) => sse("error", data),
            Step::Drop => Frame::Drop,
            Step::Stall => Frame::Stall,
            Step::Done => Frame::Bytes("event: done\ndata: {}\n\n".into()),
        });
    }
    frames
}

/// Everything the answer says as text: what a client shows at the end.
pub(crate) fn answer_text(steps: &[Step]) -> String {
    let mut answer = String::new();
    for step in steps {
        match step {
            Step::Text(text) => answer.push_str(text),
            Step::Replace(text) => answer = text.clone(),
            Step::File { url, name, .. } => answer.push_str(&format!("![{name}]({url})\n\n{url}")),
            _ => {}
        }
    }
    answer
}

/// Rough token count: what usage blocks report.
pub(crate) fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn chunk(id: &str, model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": super::now_secs(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

fn data(value: &Value) -> Frame {
    Frame::Bytes(format!("data: {value}\n\n"))
}

/// The OpenAI-compatible stream: chunks, a usage chunk, `[DONE]`.
pub(crate) fn openai_stream(steps: &[Step], model: &str, prompt_tokens: u64) -> Vec<Frame> {
    let id = super::completion_id();
    let mut frames = vec![data(&chunk(
        &id,
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    let mut answer = String::new();
    for step in steps {
        match step {
            Step::Text(text) | Step::Replace(text) | Step::Suggested(text) if text.is_empty() => {}
            Step::Text(text) => {
                answer.push_str(text);
                frames.push(Frame::Answer {
                    bytes: format!(
                        "data: {}\n\n",
                        chunk(&id, model, json!({"content": text}), None)
                    ),
                    chars: text.chars().count(),
                });
            }
            // The OpenAI stream has no way to take text back: send the replacement as text.
            Step::Replace(text) => {
                answer.push_str(text);
                frames.push(data(&chunk(&id, model, json!({"content": text}), None)));
            }
            Step::Suggested(_) => {}
            Step::File { .. } => {
                let text = answer_text(std::slice::from_ref(step));
                answer.push_str(&text);
                frames.push(data(&chunk(&id, model, json!({"content": text}), None)));
            }
            Step::Sleep(duration) => frames.push(Frame::Sleep(*duration)),
            Step::Error(error) => {
                let error = if error.get("message").is_some() {
                    error.clone()
                } else {
                    json!({"message": error.get("text").cloned().unwrap_or(json!("error")), "type": "provider_error", "code": "internal_error"})
                };
                frames.push(data(&json!({"error": error})));
            }
            Step::Drop => frames.push(Frame::Drop),
            Step::Stall => frames.push(Frame::Stall),
            Step::Done => {
                frames.push(data(&chunk(&id, model, json!({}), Some("stop"))));
                let completion_tokens = tokens(&answer);
                frames.push(data(&json!({
                    "id": id,
                    "object": "chat.completion.chunk",
                    "created": super::now_secs(),
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                })));
                frames.push(Frame::Bytes("data: [DONE]\n\n".into()));
            }
        }
    }
    frames
}

/// The non-streamed OpenAI answer (media bots).
pub(crate) fn openai_completion(steps: &[Step], model: &str, prompt_tokens: u64) -> Value {
    let answer = answer_text(steps);
    let completion_tokens = tokens(&answer);
    json!({
        "id": super::completion_id(),
        "object": "chat.completion",
        "created": super::now_secs(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
}
