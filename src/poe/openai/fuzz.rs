//! Fuzz targets for the OpenAI-compatible answers: streamed chunks and whole answers built from
//! the real shapes (and fed through the SSE decoder in arbitrary chunks), the same with one
//! field of a wrong type, arbitrary JSON and arbitrary bytes.

use super::*;
use crate::fuzz::{KEY, any_json, config, foreign_strings, hostile_string};
use crate::poe::native::fuzz::assert_plain_error;
use crate::poe::sse::SseDecoder;
use proptest::prelude::*;

const MODEL: &str = "GPT-Fuzz";

fn finish_reason() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        1 => prop::sample::select(vec!["stop", "length", "content_filter", "tool_calls"])
            .prop_map(|reason| Some(reason.to_owned())),
        1 => hostile_string().prop_map(Some),
    ]
}

fn count() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        any::<u64>().prop_map(Some),
        (0u64..10_000).prop_map(Some)
    ]
}

/// Token counts as typed values, and as Poe sends them (absent fields left out or `null`).
fn usage() -> impl Strategy<Value = (Usage, Value)> {
    (
        count(),
        count(),
        count(),
        prop::option::of((count(), count())),
        prop::option::of((count(), count())),
        any::<bool>(),
    )
        .prop_map(
            |(prompt, completion, total, prompt_details, completion_details, nulls)| {
                let put = |map: &mut Map<String, Value>, key: &str, value: Option<u64>| match value
                {
                    Some(value) => {
                        map.insert(key.into(), json!(value));
                    }
                    None if nulls => {
                        map.insert(key.into(), Value::Null);
                    }
                    None => {}
                };
                let mut map = Map::new();
                put(&mut map, "prompt_tokens", prompt);
                put(&mut map, "completion_tokens", completion);
                put(&mut map, "total_tokens", total);
                if let Some((cached, audio)) = prompt_details {
                    let mut inner = Map::new();
                    put(&mut inner, "cached_tokens", cached);
                    put(&mut inner, "audio_tokens", audio);
                    map.insert("prompt_tokens_details".into(), Value::Object(inner));
                }
                if let Some((reasoning, audio)) = completion_details {
                    let mut inner = Map::new();
                    put(&mut inner, "reasoning_tokens", reasoning);
                    put(&mut inner, "audio_tokens", audio);
                    map.insert("completion_tokens_details".into(), Value::Object(inner));
                }
                let typed = Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: total,
                    prompt_tokens_details: prompt_details.map(|(cached_tokens, audio_tokens)| {
                        crate::poe::event::PromptTokensDetails {
                            cached_tokens,
                            audio_tokens,
                        }
                    }),
                    completion_tokens_details: completion_details.map(
                        |(reasoning_tokens, audio_tokens)| {
                            crate::poe::event::CompletionTokensDetails {
                                reasoning_tokens,
                                audio_tokens,
                            }
                        },
                    ),
                };
                (typed, Value::Object(map))
            },
        )
}

/// A streamed chunk of the real shape: its JSON, the events it gives and the finish reason
/// it leaves.
fn chunk() -> impl Strategy<Value = (Value, Vec<PoeEvent>, Option<String>)> {
    let choice = (
        prop::option::of(hostile_string()),
        finish_reason(),
        any::<bool>(),
    );
    (
        prop::collection::vec(choice, 0..3),
        prop::option::of(usage()),
    )
        .prop_map(|(choices, usage)| {
            let mut events = Vec::new();
            let mut finish = None;
            let mut list = Vec::new();
            for (index, (content, reason, role)) in choices.into_iter().enumerate() {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = &content {
                    delta.insert("content".into(), json!(text));
                    if !text.is_empty() {
                        events.push(PoeEvent::Text(text.clone()));
                    }
                }
                if reason.is_some() {
                    finish = reason.clone();
                }
                list.push(json!({"index": index, "delta": delta, "finish_reason": reason}));
            }
            let mut body =
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": list});
            if let Some((typed, value)) = usage {
                body["usage"] = value;
                events.push(PoeEvent::Usage(typed));
            }
            (body, events, finish)
        })
}

/// A value that a field of the given kind can never take.
fn wrong(kind: &'static str) -> BoxedStrategy<Value> {
    let scalar = prop_oneof![
        hostile_string().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
    ];
    match kind {
        // Structs: serde reads arrays as structs too, and `null` as an absent option.
        "struct" => scalar.boxed(),
        "list" => prop_oneof![scalar, Just(json!({"a": 1})), Just(Value::Null)].boxed(),
        "text" => prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::Bool),
            Just(json!([])),
            Just(json!({"text": "x"})),
        ]
        .boxed(),
        _ => prop_oneof![
            (i64::MIN..0).prop_map(Value::from),
            Just(json!(1.5)),
            Just(json!(1e300)),
            Just(json!("12")),
            any::<bool>().prop_map(Value::Bool),
            Just(json!([1])),
        ]
        .boxed(),
    }
}

/// Where a wrong value can go in a chunk, and what kind of value belongs there.
const CHUNK_FIELDS: &[(&str, &str)] = &[
    ("/choices", "list"),
    ("/choices/0", "struct"),
    ("/choices/0/delta", "struct"),
    ("/choices/0/delta/content", "text"),
    ("/choices/0/finish_reason", "text"),
    ("/usage", "struct"),
    ("/usage/prompt_tokens", "count"),
    ("/usage/completion_tokens_details", "struct"),
    ("/usage/completion_tokens_details/reasoning_tokens", "count"),
    ("/error", "struct"),
    ("/error/message", "text"),
    ("/error/type", "text"),
];

/// Puts `value` at `pointer`, creating the objects (and a one-element list) on the way.
fn set(root: &mut Value, pointer: &str, value: Value) {
    let mut at = root;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        let last = index + 1 == parts.len();
        if let Ok(position) = part.parse::<usize>() {
            if !at.is_array() {
                *at = json!([]);
            }
            let list = at.as_array_mut().unwrap();
            while list.len() <= position {
                list.push(json!({}));
            }
            at = &mut list[position];
        } else {
            if !at.is_object() {
                *at = json!({});
            }
            at = at
                .as_object_mut()
                .unwrap()
                .entry(*part)
                .or_insert(Value::Null);
        }
        if last {
            *at = value;
            return;
        }
        if at.is_null() {
            *at = if parts[index + 1].parse::<usize>().is_ok() {
                json!([])
            } else {
                json!({})
            };
        }
    }
}

/// The same for a whole answer.
const COMPLETION_FIELDS: &[(&str, &str)] = &[
    ("/choices", "list"),
    ("/choices/0", "struct"),
    ("/choices/0/message", "struct"),
    ("/choices/0/message/content", "text"),
    ("/choices/0/finish_reason", "text"),
    ("/usage", "struct"),
    ("/usage/total_tokens", "count"),
    ("/usage/prompt_tokens_details", "struct"),
];

fn foreign_of(data: &str) -> Vec<String> {
    let mut found = vec![data.to_owned(), MODEL.to_owned()];
    found.extend(foreign_strings(data.as_bytes()));
    found
}

fn data(text: String) -> SseEvent {
    SseEvent {
        event: String::new(),
        data: text,
    }
}

/// An error object in the stream, as Poe's pages give them.
fn stream_error() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "rate_limit_error",
        "insufficient_quota",
        "invalid_api_key",
        "model_not_found",
        "context_length_exceeded",
        "invalid_request_error",
        "server_error",
    ]);
    let code = prop_oneof![any_json(), (400u64..600).prop_map(Value::from)];
    (
        prop::option::of(hostile_string()),
        prop::option::of(kind),
        prop::option::of(code),
    )
        .prop_map(|(message, kind, code)| {
            json!({"error": {"message": message, "type": kind, "code": code}}).to_string()
        })
}

/// A whole answer's field given a value of the wrong kind.
fn completion_mutation() -> impl Strategy<Value = (&'static str, Value)> {
    prop::sample::select(COMPLETION_FIELDS.to_vec())
        .prop_flat_map(|(pointer, kind)| wrong(kind).prop_map(move |value| (pointer, value)))
}

/// Data of a streamed event: a real chunk, one with a wrong field, an error, `[DONE]`,
/// arbitrary JSON or text.
fn any_data() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => chunk().prop_map(|(body, _, _)| body.to_string()),
        3 => (chunk(), prop::sample::select(CHUNK_FIELDS.to_vec()))
            .prop_flat_map(|((body, _, _), (pointer, kind))| {
                wrong(kind).prop_map(move |value| {
                    let mut body = body.clone();
                    set(&mut body, pointer, value);
                    body.to_string()
                })
            }),
        1 => stream_error(),
        1 => prop::sample::select(vec![
            "[DONE]", " [DONE]\n", "", "  ", "[DONE", "null", "[]", "[[]]", "{}",
        ])
        .prop_map(str::to_owned),
        2 => any_json().prop_map(|value| value.to_string()),
        1 => hostile_string(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any data: no panic, at most what the chunk holds, errors in plain words, and a
    /// protocol error for a field of the wrong type.
    #[test]
    fn fuzz_openai_stream_events(events in prop::collection::vec(any_data(), 0..8)) {
        let key = Secret::new(KEY);
        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        for text in events {
            let before = out.len();
            let result = decoder.on_event(&data(text.clone()), MODEL, &key, &mut out);
            // One event per choice and one for the usage.
            let choices = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|value| value.get("choices").and_then(Value::as_array).map(Vec::len))
                .unwrap_or(0);
            prop_assert!(out.len() <= before + choices + 1);
            match result {
                Ok(()) => {
                    if text.trim() == "[DONE]" {
                        prop_assert!(decoder.is_done());
                        prop_assert!(matches!(out.last(), Some(PoeEvent::Finished(_))));
                    }
                }
                Err(err) => {
                    prop_assert_eq!(out.len(), before);
                    assert_plain_error(&err, &foreign_of(&text));
                    break;
                }
            }
        }
        if let Err(err) = decoder.on_eof() {
            prop_assert!(!decoder.is_done());
            assert_plain_error(&err, &[]);
        }
    }

    /// A chunk with one field of a wrong type is a protocol error that cannot be retried,
    /// and says so in plain words.
    #[test]
    fn fuzz_openai_wrong_field_types(
        body in (chunk(), prop::sample::select(CHUNK_FIELDS.to_vec())).prop_flat_map(
            |((body, _, _), (pointer, kind))| {
                wrong(kind).prop_map(move |value| {
                    let mut body = body.clone();
                    set(&mut body, pointer, value);
                    body
                })
            },
        ),
    ) {
        let text = body.to_string();
        let key = Secret::new(KEY);
        let mut out = Vec::new();
        let err = OpenAiDecoder::default()
            .on_event(&data(text.clone()), MODEL, &key, &mut out)
            .expect_err(&text);
        prop_assert!(out.is_empty());
        assert_plain_error(&err, &foreign_of(&text));
        prop_assert!(
            matches!(err, PoeError::Protocol { retryable: false, .. }),
            "{:?} for {}",
            err,
            text
        );
    }

    /// Real chunks, as SSE in arbitrary chunks of bytes, decode to their events and the last
    /// finish reason.
    #[test]
    fn fuzz_openai_stream_round_trips(
        chunks in prop::collection::vec(chunk(), 0..8),
        finished in any::<bool>(),
        line_break in prop::sample::select(vec!["\n", "\r", "\r\n"]),
        cuts in prop::collection::vec(1usize..64, 1..6),
    ) {
        let mut bytes = String::new();
        let mut expected = Vec::new();
        let mut finish = None;
        for (body, events, reason) in &chunks {
            bytes.push_str(&format!("data: {body}{line_break}{line_break}"));
            expected.extend(events.iter().cloned());
            if reason.is_some() {
                finish = reason.clone();
            }
        }
        if finished {
            let done = format!(": keep-alive{line_break}data: [DONE]{line_break}{line_break}");
            bytes.push_str(&done);
            expected.push(PoeEvent::Finished(FinishReason::parse(finish.as_deref())));
        }
        let key = Secret::new(KEY);
        let mut sse = SseDecoder::new(1 << 24);
        let mut raw = Vec::new();
        let mut rest = bytes.as_bytes();
        for size in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            sse.feed(chunk, &mut raw).unwrap();
        }
        let mut decoder = OpenAiDecoder::default();
        let mut out = Vec::new();
        for event in &raw {
            decoder.on_event(event, MODEL, &key, &mut out).unwrap();
        }
        prop_assert_eq!(&out, &expected);
        prop_assert_eq!(decoder.on_eof().is_ok(), finished);
    }

    /// Whole answers: real ones decode to their text, usage and finish reason; anything
    /// else (a wrong field, arbitrary JSON or bytes) gives an error in plain words.
    #[test]
    fn fuzz_openai_completion(
        content in prop::option::of(hostile_string()),
        reason in finish_reason(),
        usage in prop::option::of(usage()),
        mutation in prop::option::of(completion_mutation()),
        other in prop_oneof![
            Just(None),
            any_json().prop_map(|value| Some(value.to_string().into_bytes())),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
            Just(Some(br#"{"choices": []}"#.to_vec())),
            Just(Some(
                br#"{"error": {"message": "slow", "type": "rate_limit_error"}}"#.to_vec()
            )),
            Just(Some(br#"{"error": 5, "choices": []}"#.to_vec())),
            Just(Some(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes())),
        ],
    ) {
        let key = Secret::new(KEY);
        let mut message = Map::new();
        if let Some(text) = &content {
            message.insert("content".into(), json!(text));
        }
        let choice = json!({"index": 0, "message": message, "finish_reason": reason});
        let mut body = json!({"choices": [choice]});
        let mut expected = Vec::new();
        if let Some(text) = content.filter(|text| !text.is_empty()) {
            expected.push(PoeEvent::Text(text));
        }
        if let Some((typed, value)) = usage {
            body["usage"] = value;
            expected.push(PoeEvent::Usage(typed));
        }
        expected.push(PoeEvent::Finished(FinishReason::parse(reason.as_deref())));
        let bytes = match (&other, &mutation) {
            (Some(bytes), _) => bytes.clone(),
            (None, Some((pointer, value))) => {
                set(&mut body, pointer, value.clone());
                body.to_string().into_bytes()
            }
            (None, None) => body.to_string().into_bytes(),
        };
        let result = decode_completion(&bytes, MODEL, &key);
        match (&other, &mutation, result) {
            (None, None, result) => prop_assert_eq!(result.unwrap(), expected),
            (None, Some(_), result) => {
                let err = result.expect_err("a wrong field was accepted");
                assert_plain_error(&err, &foreign_of(&String::from_utf8_lossy(&bytes)));
                let protocol = matches!(err, PoeError::Protocol { retryable: false, .. });
                prop_assert!(protocol, "{:?}", err);
            }
            (Some(_), _, Ok(events)) => {
                prop_assert!(!events.is_empty() && events.len() <= 3);
                prop_assert!(matches!(events.last(), Some(PoeEvent::Finished(_))));
            }
            (Some(_), _, Err(err)) => {
                assert_plain_error(&err, &foreign_of(&String::from_utf8_lossy(&bytes)))
            }
        }
    }
}
