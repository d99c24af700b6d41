//! Fuzz targets for the native events: arbitrary names and data, arbitrary JSON, and the real
//! shapes with fields of the wrong type or missing, checked against what the protocol says
//! each event means; and whole streams through the SSE decoder in arbitrary chunks. The
//! helpers are shared with the other decoders' fuzz targets in `poe`.

use super::*;
use crate::poe::sse::SseDecoder;
use proptest::prelude::*;

use crate::fuzz::{
    KEY, any_json, assert_plain_words, config, field, foreign_strings, hostile_string, object,
    text_value,
};

/// The checks every error of the Poe client passes: plain words in `Display` (for logs)
/// and in the chat message, with only the input's own words quoted; and once scrubbed, as
/// the client does before logging, no key and a bounded length.
pub(crate) fn assert_plain_error(err: &PoeError, foreign: &[String]) {
    assert_plain_words(&err.to_string(), foreign);
    let message = err.user_message();
    assert_plain_words(&message, foreign);
    assert!(message.ends_with('.'), "{message}");
    assert!(!message.contains(KEY), "{message}");
    // What reaches the log: the client scrubs every error of the key and cuts its detail.
    let logged = err.clone().scrubbed(&Secret::new(KEY)).to_string();
    assert!(!logged.contains(KEY), "{logged}");
    assert!(!logged.trim().is_empty());
    assert!(
        logged.chars().count() <= 400,
        "{} characters logged",
        logged.chars().count()
    );
}

fn extra_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["index", "meta", "x", "is_replace", "ok"])
                .prop_map(str::to_owned),
            any_json(),
        ),
        0..3,
    )
}

const NAMES: &[&str] = &[
    "text",
    "replace_response",
    "suggested_reply",
    "file",
    "error",
    "done",
    "json",
    "meta",
    "ping",
    "data",
];

/// Data shaped like the named event's, its fields sometimes of the wrong type or missing.
fn shaped_data(name: &'static str) -> BoxedStrategy<Value> {
    match name {
        "text" | "replace_response" | "suggested_reply" => (field(text_value()), extra_fields())
            .prop_map(|(text, extra)| object(vec![("text", text)], extra))
            .boxed(),
        "file" => (
            field(text_value()),
            field(Just(Value::from("image/png")).boxed()),
            field(text_value()),
            field(prop_oneof![Just(Value::Null), text_value()].boxed()),
            extra_fields(),
        )
            .prop_map(|(url, content_type, name, inline_ref, extra)| {
                object(
                    vec![
                        ("url", url),
                        ("content_type", content_type),
                        ("name", name),
                        ("inline_ref", inline_ref),
                    ],
                    extra,
                )
            })
            .boxed(),
        "error" => (
            field(prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool)].boxed()),
            field(
                prop_oneof![
                    text_value(),
                    Just(Value::from("You have exceeded rate limit to query bot")),
                ]
                .boxed(),
            ),
            field(
                prop::sample::select(vec![
                    "insufficient_fund",
                    "user_message_too_long",
                    "user_caused_error",
                    "privacy_authorization_error",
                    "server_error",
                    "",
                ])
                .prop_map(Value::from)
                .boxed(),
            ),
            extra_fields(),
        )
            .prop_map(|(allow_retry, text, error_type, extra)| {
                object(
                    vec![
                        ("allow_retry", allow_retry),
                        ("text", text),
                        ("error_type", error_type),
                    ],
                    extra,
                )
            })
            .boxed(),
        "json" => (field(text_value()), any::<bool>())
            .prop_map(|(content, finished)| {
                let delta = object(vec![("content", content)], vec![]);
                let choice = object(
                    vec![("index", Some(Value::from(0))), ("delta", Some(delta))],
                    if finished {
                        vec![("finish_reason".into(), Value::from("stop"))]
                    } else {
                        vec![]
                    },
                );
                json!({"choices": [choice]})
            })
            .boxed(),
        _ => any_json().boxed(),
    }
}

/// An event: a known or arbitrary name, with shaped data, any JSON, or any text.
fn native_event() -> impl Strategy<Value = SseEvent> {
    let name = prop_oneof![
        4 => prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        1 => hostile_string(),
    ];
    (name, any::<u8>()).prop_flat_map(|(name, pick)| {
        let known = NAMES.iter().copied().find(|known| *known == name);
        let data = match (known, pick % 4) {
            (Some(known), 0 | 1) => shaped_data(known)
                .prop_map(|value| value.to_string())
                .boxed(),
            (_, 2) => any_json().prop_map(|value| value.to_string()).boxed(),
            _ => prop_oneof![
                hostile_string(),
                Just(String::new()),
                Just("{".to_owned()),
                Just("{\"text\": \"unterminated".to_owned()),
                Just(format!("{}1{}", "[".repeat(200), "]".repeat(200))),
            ]
            .boxed(),
        };
        data.prop_map(move |data| SseEvent {
            event: name.clone(),
            data,
        })
    })
}

/// What an event should do, read from the protocol rather than from the decoder.
#[derive(Debug, PartialEq)]
enum Expect {
    Nothing,
    Event(PoeEvent),
    /// A protocol error, retryable or not.
    Protocol(bool),
    /// An `error` event that reads: an error that is not a protocol error.
    Reported,
}

fn expect(event: &SseEvent) -> Expect {
    let name = event.event.as_str();
    if !matches!(
        name,
        "text" | "replace_response" | "suggested_reply" | "file" | "error" | "json"
    ) {
        return if name == "done" {
            Expect::Event(PoeEvent::Finished(FinishReason::Stop))
        } else {
            Expect::Nothing
        };
    }
    let map = match serde_json::from_str::<Value>(&event.data) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Expect::Protocol(true),
        Err(_) => return Expect::Protocol(false),
    };
    let string = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    let optional_string = |key: &str| match map.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(text)) => Some(Some(text.clone())),
        Some(_) => None,
    };
    match name {
        "text" => string("text").map_or(Expect::Protocol(false), |t| {
            Expect::Event(PoeEvent::Text(t))
        }),
        "replace_response" => string("text").map_or(Expect::Protocol(false), |t| {
            Expect::Event(PoeEvent::Replace(t))
        }),
        "suggested_reply" => string("text").map_or(Expect::Protocol(false), |t| {
            Expect::Event(PoeEvent::SuggestedReply(t))
        }),
        "file" => match (
            string("url"),
            string("content_type"),
            string("name"),
            optional_string("inline_ref"),
        ) {
            (Some(url), Some(content_type), Some(name), Some(inline_ref)) => {
                Expect::Event(PoeEvent::File(OutputFile {
                    url,
                    content_type,
                    name,
                    inline_ref,
                }))
            }
            _ => Expect::Protocol(false),
        },
        "error" => {
            let bool_ok = matches!(
                map.get("allow_retry"),
                None | Some(Value::Null | Value::Bool(_))
            );
            if bool_ok
                && optional_string("text").is_some()
                && optional_string("error_type").is_some()
            {
                Expect::Reported
            } else {
                Expect::Protocol(false)
            }
        }
        _ => {
            let content = map
                .get("choices")
                .and_then(|choices| choices.get(0))
                .and_then(|choice| choice.get("delta"))
                .and_then(|delta| delta.get("content"))
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty());
            content.map_or(Expect::Nothing, |text| {
                Expect::Event(PoeEvent::Text(text.to_owned()))
            })
        }
    }
}

fn foreign_of(event: &SseEvent) -> Vec<String> {
    let mut found = vec![event.event.clone(), event.data.clone()];
    found.extend(foreign_strings(event.data.as_bytes()));
    found
}

/// An event of a valid stream, and what it decodes to.
fn valid_event() -> impl Strategy<Value = (String, Value, Option<PoeEvent>)> {
    let text = hostile_string();
    let with_text = |name: &'static str, event: fn(String) -> PoeEvent| {
        hostile_string().prop_map(move |t| (name.to_owned(), json!({"text": t}), Some(event(t))))
    };
    prop_oneof![
        4 => with_text("text", PoeEvent::Text),
        1 => with_text("replace_response", PoeEvent::Replace),
        1 => with_text("suggested_reply", PoeEvent::SuggestedReply),
        1 => (text.clone(), text.clone()).prop_map(|(url, name)| {
            let data = json!({
                "url": url, "content_type": "image/png", "name": name, "inline_ref": null,
            });
            let file = OutputFile {
                url,
                content_type: "image/png".into(),
                name,
                inline_ref: None,
            };
            ("file".to_owned(), data, Some(PoeEvent::File(file)))
        }),
        1 => text.clone().prop_map(|t| {
            let event = (!t.is_empty()).then(|| PoeEvent::Text(t.clone()));
            let data = json!({"choices": [{"index": 0, "delta": {"content": t}}]});
            ("json".to_owned(), data, event)
        }),
        1 => any_json().prop_map(|value| ("meta".to_owned(), value, None)),
        1 => Just(("ping".to_owned(), Value::Null, None)),
    ]
}

/// One event as SSE: its data on one line, or pretty-printed over several `data:` lines
/// (which the decoder joins with `\n` back into the same JSON).
fn encode(name: &str, data: &Value, pretty: bool, line_break: &str) -> String {
    let body = if pretty {
        serde_json::to_string_pretty(data).unwrap()
    } else {
        data.to_string()
    };
    let mut out = format!("event: {name}{line_break}");
    for line in body.split('\n') {
        out.push_str(&format!("data: {line}{line_break}"));
    }
    out.push_str(line_break);
    out
}

proptest! {
    #![proptest_config(config(256))]

    /// Any event: no panic, at most one answer event, what the protocol says it means,
    /// errors in plain words, and `done` alone ends the stream well.
    #[test]
    fn fuzz_native_events(events in prop::collection::vec(native_event(), 0..8)) {
        let key = Secret::new(KEY);
        let mut decoder = NativeDecoder::default();
        let mut out = Vec::new();
        let mut done = false;
        for event in &events {
            let before = out.len();
            let result = decoder.on_event(event, &key, &mut out);
            prop_assert!(out.len() <= before + 1);
            let expected = expect(event);
            match result {
                Ok(()) => match &expected {
                    Expect::Nothing => prop_assert_eq!(out.len(), before),
                    Expect::Event(wanted) => {
                        prop_assert_eq!(&out[before..], std::slice::from_ref(wanted))
                    }
                    other => prop_assert!(false, "{:?} decoded, expected {:?}", event, other),
                },
                Err(err) => {
                    prop_assert_eq!(out.len(), before);
                    assert_plain_error(&err, &foreign_of(event));
                    match (&expected, &err) {
                        (
                            Expect::Protocol(retryable),
                            PoeError::Protocol { retryable: got, .. },
                        ) => {
                            prop_assert_eq!(retryable, got)
                        }
                        (Expect::Reported, PoeError::Protocol { .. }) => {
                            prop_assert!(false, "a readable error event gave {:?}", err)
                        }
                        (Expect::Reported, _) => {}
                        _ => prop_assert!(
                            false,
                            "{:?} gave {:?}, expected {:?}",
                            event,
                            err,
                            expected
                        ),
                    }
                    // The stream ends at an error.
                    break;
                }
            }
            done |= event.event == "done";
            prop_assert_eq!(decoder.is_done(), done);
        }
        match decoder.on_eof() {
            Ok(()) => prop_assert!(done),
            Err(err) => {
                prop_assert!(!decoder.is_done());
                assert_plain_error(&err, &[]);
                prop_assert!(err.is_retryable());
            }
        }
    }

    /// A valid stream, encoded as SSE and fed in arbitrary chunks, decodes to its events.
    #[test]
    fn fuzz_native_stream_round_trips(
        events in prop::collection::vec(valid_event(), 0..10),
        finished in any::<bool>(),
        pretty in any::<bool>(),
        line_break in prop::sample::select(vec!["\n", "\r", "\r\n"]),
        cuts in prop::collection::vec(1usize..64, 1..6),
    ) {
        let mut bytes = String::new();
        let mut expected = Vec::new();
        for (name, data, event) in &events {
            bytes.push_str(&encode(name, data, pretty, line_break));
            expected.extend(event.clone());
        }
        if finished {
            bytes.push_str(&encode("done", &json!({}), pretty, line_break));
            expected.push(PoeEvent::Finished(FinishReason::Stop));
        }
        let key = Secret::new(KEY);
        let mut sse = SseDecoder::new(1 << 24);
        let mut decoder = NativeDecoder::default();
        let (mut raw, mut out) = (Vec::new(), Vec::new());
        let mut rest = bytes.as_bytes();
        for size in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            sse.feed(chunk, &mut raw).unwrap();
        }
        for event in &raw {
            decoder.on_event(event, &key, &mut out).unwrap();
        }
        prop_assert_eq!(&out, &expected);
        prop_assert_eq!(decoder.on_eof().is_ok(), finished);
    }
}
