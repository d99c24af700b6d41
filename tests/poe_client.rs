//! The Poe client against the fake Poe over real loopback sockets: both transports, every
//! retry and error path, malformed input, uploads, usage endpoints.

mod support;

use std::time::Duration;

use bytes::Bytes;
use poe_relay::config::ModelConfig;
use poe_relay::fake_poe::{FakePoe, Scenario};
use poe_relay::poe::{
    ChatMessage, ChatRequest, FileSource, FinishReason, InputFile, PoeError, PoeEvent, Role,
    TimeoutPhase, Transport,
};
use serde_json::json;
use support::{KEY, client, config_for, drain};

fn ask(model: &str, text: &str) -> ChatRequest {
    ChatRequest::new(model, vec![ChatMessage::user(text)])
}

#[tokio::test]
async fn native_stream_echoes_and_sends_the_protocol_body() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = config_for(&fake);
    config.models.push(ModelConfig {
        name: "Claude-Sonnet-4.6".into(),
        transport: None,
        parameters: json!({"thinking_budget": 1024})
            .as_object()
            .unwrap()
            .clone(),
        points_per_request: None,
    });
    let client = client(config);
    let mut request = ChatRequest::new(
        "Claude-Sonnet-4.6",
        vec![
            ChatMessage::new(Role::System, "Be terse."),
            ChatMessage::user("first question"),
            ChatMessage::new(Role::Bot, "first answer"),
            ChatMessage::user("héllo wörld 👋🏽 again"),
        ],
    );
    request.parameters.insert("web_search".into(), json!(true));
    let outcome = drain(client.stream(request)).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "héllo wörld 👋🏽 again");
    assert!(
        outcome
            .events
            .iter()
            .filter(|e| matches!(e, PoeEvent::Text(_)))
            .count()
            > 1
    );
    assert_eq!(
        outcome.events.last(),
        Some(&PoeEvent::Finished(FinishReason::Stop))
    );

    let requests = fake.chat_requests("Claude-Sonnet-4.6");
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.path, "/bot/Claude-Sonnet-4.6");
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.body["version"], "1.2");
    let query = sent.body["query"].as_array().unwrap();
    assert_eq!(query.len(), 4);
    assert_eq!(query[2]["role"], "bot");
    assert_eq!(
        query[3]["parameters"],
        json!({"thinking_budget": 1024, "web_search": true})
    );
}

#[tokio::test]
async fn openai_stream_reports_usage() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("gpt-5", Scenario::text("The answer is 42."));
    let client = client(config_for(&fake));
    let outcome = drain(client.stream(ask("gpt-5", "q").with_transport(Transport::OpenAi))).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "The answer is 42.");
    let usage = outcome
        .events
        .iter()
        .find_map(|event| match event {
            PoeEvent::Usage(usage) => Some(usage.clone()),
            _ => None,
        })
        .expect("a usage event");
    assert_eq!(usage.completion_tokens, Some(5));
    let body = &fake.chat_requests("gpt-5")[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn media_bots_answer_with_files_or_links() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let media = Scenario::Media {
        url: "https://pfst.example/cat.png".into(),
        content_type: "image/png".into(),
        name: "cat.png".into(),
    };
    fake.script("Imagen-4", media);
    let client = client(config_for(&fake));

    let native = drain(client.stream(ask("Imagen-4", "a cat"))).await;
    assert_eq!(native.error, None);
    assert!(native.events.iter().any(|event| matches!(event,
        PoeEvent::File(file) if file.url == "https://pfst.example/cat.png" && file.content_type == "image/png")));

    let mut request = ask("Imagen-4", "a cat").with_transport(Transport::OpenAi);
    request.streaming = false;
    let whole = drain(client.stream(request)).await;
    assert_eq!(whole.error, None);
    assert!(
        whole
            .answer
            .contains("![cat.png](https://pfst.example/cat.png)"),
        "{}",
        whole.answer
    );
    assert_eq!(fake.chat_requests("Imagen-4")[1].body["stream"], false);
}

#[tokio::test]
async fn replace_response_and_suggested_replies() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "r",
        Scenario::Replace {
            before: "draft".into(),
            after: "final".into(),
        },
    );
    fake.script(
        "s",
        Scenario::Suggested {
            text: "hi".into(),
            replies: vec!["more?".into()],
        },
    );
    let client = client(config_for(&fake));
    let replaced = drain(client.stream(ask("r", "q"))).await;
    assert_eq!(replaced.answer, "final");
    let suggested = drain(client.stream(ask("s", "q"))).await;
    assert_eq!(suggested.answer, "hi");
    assert!(
        suggested
            .events
            .contains(&PoeEvent::SuggestedReply("more?".into()))
    );
}

#[tokio::test]
async fn rate_limit_honours_retry_after_then_succeeds() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let limited = Scenario::Status {
        status: 429,
        body: json!({"error": {"message": "Rate limit exceeded", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
        retry_after: Some(1),
    };
    fake.script("m", Scenario::fail_then(limited, 1, Scenario::text("ok")));
    let client = client(config_for(&fake));
    let stream = client.stream(ask("m", "q"));
    let outcome = drain(stream).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "ok");
    let requests = fake.chat_requests("m");
    assert_eq!(requests.len(), 2);
    let waited = requests[1].received_at - requests[0].received_at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_report_the_cause() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("m", Scenario::Status {
        status: 429,
        body: json!({"error": {"message": "slow", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
        retry_after: Some(0),
    });
    let client = client(config_for(&fake));
    let outcome = drain(client.stream(ask("m", "q"))).await;
    assert!(
        matches!(outcome.error, Some(PoeError::RateLimited { .. })),
        "{outcome:?}"
    );
    assert_eq!(fake.chat_requests("m").len(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_and_succeed() {
    let fake = FakePoe::start(KEY).await.unwrap();
    for (model, status) in [("a", 500), ("b", 502), ("c", 503), ("d", 529), ("e", 408)] {
        let failure = Scenario::status(status, "provider_error", "internal_error", "try later");
        fake.script(
            model,
            Scenario::fail_then(failure, 2, Scenario::text("recovered")),
        );
    }
    let client = client(config_for(&fake));
    for model in ["a", "b", "c", "d", "e"] {
        let outcome = drain(client.stream(ask(model, "q"))).await;
        assert_eq!(outcome.error, None, "{model}");
        assert_eq!(outcome.answer, "recovered", "{model}");
        assert_eq!(fake.chat_requests(model).len(), 3, "{model}");
    }
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_are_typed() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "broke",
        Scenario::status(
            402,
            "insufficient_credits",
            "insufficient_points",
            "no points",
        ),
    );
    fake.script(
        "nobody",
        Scenario::status(404, "not_found_error", "model_not_found", "no such model"),
    );
    fake.script(
        "big",
        Scenario::status(
            413,
            "request_too_large",
            "request_too_large",
            "too many tokens",
        ),
    );
    fake.script(
        "bad",
        Scenario::status(
            400,
            "invalid_request_error",
            "invalid_parameter",
            "thinking_budget too big",
        ),
    );
    let client = client(config_for(&fake));
    type Check = fn(&PoeError) -> bool;
    let cases: [(&str, Check); 4] = [
        ("broke", |e| matches!(e, PoeError::OutOfPoints)),
        (
            "nobody",
            |e| matches!(e, PoeError::ModelNotFound { model } if model == "nobody"),
        ),
        ("big", |e| matches!(e, PoeError::RequestTooLarge { .. })),
        ("bad", |e| matches!(e, PoeError::BadRequest { .. })),
    ];
    for (model, check) in cases {
        let outcome = drain(client.stream(ask(model, "q"))).await;
        let error = outcome.error.expect("an error");
        assert!(check(&error), "{model}: {error:?}");
        assert_eq!(fake.chat_requests(model).len(), 1, "{model} was retried");
    }
}

#[tokio::test]
async fn a_wrong_key_is_reported_without_the_key() {
    let fake = FakePoe::start("the-real-key").await.unwrap();
    let client = client(config_for(&fake));
    for transport in [Transport::Native, Transport::OpenAi] {
        let outcome = drain(client.stream(ask("echo", "q").with_transport(transport))).await;
        let error = outcome.error.expect("an error");
        assert_eq!(error, PoeError::InvalidKey { status: 401 });
        let shown = format!("{error} {error:?} {}", error.user_message());
        assert!(!shown.contains(KEY), "{shown}");
    }
    assert!(matches!(
        client.balance().await,
        Err(PoeError::InvalidKey { .. })
    ));
    assert_eq!(
        fake.requests().len(),
        3,
        "an invalid key must not be retried"
    );
}

#[tokio::test]
async fn an_error_after_text_keeps_the_text_and_is_not_retried() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "m",
        Scenario::ErrorMidStream {
            before: "partial answer".into(),
            error: json!({"allow_retry": true, "text": "Internal server error"}),
        },
    );
    let client = client(config_for(&fake));
    for transport in [Transport::Native, Transport::OpenAi] {
        let outcome = drain(client.stream(ask("m", "q").with_transport(transport))).await;
        assert_eq!(outcome.answer, "partial answer");
        assert!(
            matches!(outcome.error, Some(PoeError::ModelError { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(fake.chat_requests("m").len(), 2);
}

#[tokio::test]
async fn an_error_event_before_any_text_is_retried() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let failure = Scenario::ErrorMidStream {
        before: String::new(),
        error: json!({"text": "Internal server error"}),
    };
    fake.script(
        "m",
        Scenario::fail_then(failure.clone(), 1, Scenario::text("fine")),
    );
    fake.script(
        "never",
        Scenario::ErrorMidStream {
            before: String::new(),
            error: json!({"allow_retry": false, "text": "Access denied"}),
        },
    );
    let client = client(config_for(&fake));
    let outcome = drain(client.stream(ask("m", "q"))).await;
    assert_eq!(outcome.answer, "fine");
    assert_eq!(fake.chat_requests("m").len(), 2);
    let refused = drain(client.stream(ask("never", "q"))).await;
    assert!(matches!(
        refused.error,
        Some(PoeError::ModelError {
            retryable: false,
            ..
        })
    ));
    assert_eq!(fake.chat_requests("never").len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_retried_only_before_text() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let dropped_early = Scenario::DropMidStream {
        before: String::new(),
    };
    fake.script(
        "early",
        Scenario::fail_then(dropped_early, 1, Scenario::text("second try")),
    );
    fake.script(
        "late",
        Scenario::DropMidStream {
            before: "half an ans".into(),
        },
    );
    let client = client(config_for(&fake));
    let early = drain(client.stream(ask("early", "q"))).await;
    assert_eq!(early.error, None);
    assert_eq!(early.answer, "second try");
    for transport in [Transport::Native, Transport::OpenAi] {
        let late = drain(client.stream(ask("late", "q").with_transport(transport))).await;
        assert_eq!(late.answer, "half an ans");
        assert!(
            matches!(late.error, Some(PoeError::Protocol { .. })),
            "{late:?}"
        );
    }
    assert_eq!(fake.chat_requests("late").len(), 2);
}

#[tokio::test]
async fn a_stalled_stream_times_out() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "m",
        Scenario::Stall {
            before: "thinking".into(),
        },
    );
    let mut config = config_for(&fake);
    config.idle_timeout_secs = 1;
    let client = client(config);
    let outcome = drain(client.stream(ask("m", "q"))).await;
    assert_eq!(outcome.answer, "thinking");
    assert_eq!(
        outcome.error,
        Some(PoeError::Timeout {
            phase: TimeoutPhase::Idle
        })
    );
}

#[tokio::test]
async fn the_overall_timeout_ends_a_slow_answer() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "slow",
        Scenario::Text {
            text: "a".repeat(40),
            chunk_chars: 1,
            interval: Duration::from_millis(100),
        },
    );
    let mut config = config_for(&fake);
    config.idle_timeout_secs = 1;
    config.request_timeout_secs = 1;
    let client = client(config);
    let outcome = drain(client.stream(ask("slow", "q"))).await;
    assert_eq!(
        outcome.error,
        Some(PoeError::Timeout {
            phase: TimeoutPhase::Total
        })
    );
    assert!(
        !outcome.answer.is_empty() && outcome.answer.len() < 40,
        "{}",
        outcome.answer.len()
    );
}

#[tokio::test]
async fn a_huge_answer_arrives_whole() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("huge", Scenario::Huge { chars: 2_000_000 });
    let client = client(config_for(&fake));
    for transport in [Transport::Native, Transport::OpenAi] {
        let outcome = drain(client.stream(ask("huge", "q").with_transport(transport))).await;
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.answer.len(), 2_000_000);
        assert!(outcome.answer.starts_with("0123456789abcdef0123"));
    }
}

fn raw_sse(body: &str) -> Scenario {
    Scenario::Raw {
        status: 200,
        content_type: "text/event-stream".into(),
        body: body.into(),
    }
}

#[tokio::test]
async fn malformed_streams_are_protocol_errors() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "badjson",
        raw_sse("event: text\ndata: {\"text\": \"a\"\n\n"),
    );
    fake.script(
        "html",
        Scenario::Raw {
            status: 200,
            content_type: "text/html".into(),
            body: "<html>login</html>".into(),
        },
    );
    fake.script(
        "truncated",
        raw_sse("event: text\ndata: {\"text\": \"a\"}\n\n"),
    );
    fake.script(
        "oversized",
        raw_sse(&format!(
            "event: text\ndata: {{\"text\": \"{}\"}}\n\n",
            "x".repeat(5000)
        )),
    );
    fake.script(
        "nodone",
        raw_sse("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"),
    );
    fake.script("garbage", raw_sse("data: \u{0}\u{1}not json at all\n\n"));
    let mut config = config_for(&fake);
    config.max_event_bytes = 1024;
    let client = client(config);

    let outcome = drain(client.stream(ask("badjson", "q"))).await;
    assert!(
        matches!(
            outcome.error,
            Some(PoeError::Protocol {
                retryable: false,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(fake.chat_requests("badjson").len(), 1);

    let outcome = drain(client.stream(ask("html", "q"))).await;
    assert!(
        matches!(outcome.error, Some(PoeError::Protocol { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        fake.chat_requests("html").len(),
        3,
        "a non-SSE answer is retried"
    );

    let outcome = drain(client.stream(ask("truncated", "q"))).await;
    assert_eq!(outcome.answer, "a");
    assert!(
        matches!(outcome.error, Some(PoeError::Protocol { .. })),
        "{outcome:?}"
    );

    let outcome = drain(client.stream(ask("oversized", "q"))).await;
    let Some(PoeError::Protocol { detail, .. }) = &outcome.error else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("larger than 1024"), "{detail}");

    let openai = |model| ask(model, "q").with_transport(Transport::OpenAi);
    let outcome = drain(client.stream(openai("nodone"))).await;
    assert_eq!(outcome.answer, "a");
    let Some(PoeError::Protocol { detail, .. }) = &outcome.error else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("[DONE]"), "{detail}");

    let outcome = drain(client.stream(openai("garbage"))).await;
    assert!(
        matches!(outcome.error, Some(PoeError::Protocol { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = config_for(&fake);
    drop(fake);
    // Give the listener a moment to close before connecting to its port.
    tokio::time::sleep(Duration::from_millis(100)).await;
    config.max_attempts = 2;
    let client = client(config);
    let outcome = drain(client.stream(ask("m", "q"))).await;
    assert!(
        matches!(outcome.error, Some(PoeError::Unavailable { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn attachments_are_uploaded_for_native_and_inlined_for_openai() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let client = client(config_for(&fake));
    let mut message = ChatMessage::user("what is this?");
    message.attachments.push(InputFile {
        name: "cat.png".into(),
        content_type: "image/png".into(),
        source: FileSource::Bytes(Bytes::from_static(b"\x89PNG fake image")),
    });
    message.attachments.push(InputFile {
        name: "notes.txt".into(),
        content_type: "text/plain".into(),
        source: FileSource::Url("https://cdn.example/notes.txt".into()),
    });
    let request = ChatRequest::new("echo", vec![message.clone()]);
    let outcome = drain(client.stream(request)).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "what is this?");

    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].bytes, b"\x89PNG fake image");
    assert_eq!(uploads[0].content_type, "image/png");
    assert_eq!(
        uploads[1].download_url.as_deref(),
        Some("https://cdn.example/notes.txt")
    );
    let upload_auth = fake
        .requests()
        .into_iter()
        .find(|request| request.path.ends_with("file_upload_3RD_PARTY_POST"))
        .and_then(|request| request.authorization);
    assert_eq!(
        upload_auth.as_deref(),
        Some(KEY),
        "uploads send the raw key"
    );
    let sent = &fake.chat_requests("echo")[0].body["query"][0]["attachments"];
    assert_eq!(sent[0]["url"], uploads[0].url);
    assert_eq!(sent[0]["name"], "cat.png");
    assert_eq!(sent[1]["url"], uploads[1].url);

    message.attachments.pop();
    let openai = ChatRequest::new("echo", vec![message]).with_transport(Transport::OpenAi);
    let outcome = drain(client.stream(openai)).await;
    assert_eq!(outcome.error, None);
    let parts = &fake.chat_requests("echo")[1].body["messages"][0]["content"];
    assert!(
        parts[1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
}

#[tokio::test]
async fn balance_and_history_pages() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.set_balance(654_141);
    for index in 0..250 {
        fake.push_history(json!({
            "query_id": format!("q{index:03}"), "bot_name": "GPT-5", "creation_time": 1_000_000 + index,
            "usage_type": "API", "cost_points": 2,
        }));
    }
    let client = client(config_for(&fake));
    assert_eq!(
        client.balance().await.unwrap().current_point_balance,
        Some(654_141)
    );
    let first = client.points_history(20, None).await.unwrap();
    assert!(first.has_more);
    assert_eq!(first.data[0].query_id, "q249");
    let everything = client.points_history_since(0, 10).await.unwrap();
    assert_eq!(everything.len(), 250);
    assert_eq!(everything.last().unwrap().query_id, "q000");
    let recent = client
        .points_history_since(1_000_000 + 200, 10)
        .await
        .unwrap();
    assert_eq!(recent.len(), 50);

    // Completed answers are charged like Poe does.
    let before = fake.balance();
    drain(client.stream(ask("echo", "one two three"))).await;
    let newest = client.points_history(1, None).await.unwrap();
    let cost = newest.data[0].cost_points.unwrap();
    assert_eq!(newest.data[0].bot_name.as_deref(), Some("echo"));
    assert_eq!(fake.balance(), before - cost);
}

#[tokio::test]
async fn a_server_echoing_the_key_cannot_leak_it() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "leak400",
        Scenario::status(
            400,
            "invalid_request_error",
            "invalid_parameter",
            &format!("bad key {KEY}"),
        ),
    );
    fake.script(
        "leak500",
        Scenario::fail_then(
            Scenario::status(
                503,
                "unavailable",
                "unavailable",
                &format!("down for {KEY}"),
            ),
            5,
            Scenario::Echo,
        ),
    );
    fake.script(
        "leakevent",
        Scenario::ErrorMidStream {
            before: String::new(),
            error: json!({"allow_retry": false, "text": format!("denied for {KEY}")}),
        },
    );
    fake.script(
        "leaktype",
        raw_sse(&format!("data: {{\"choices\": \"{KEY}\"}}\n\n")),
    );
    fake.script(
        "leakctype",
        Scenario::Raw {
            status: 200,
            content_type: format!("text/html; k={KEY}"),
            body: "x".into(),
        },
    );
    let client = client(config_for(&fake));
    for model in ["leak400", "leak500", "leakevent", "leaktype", "leakctype"] {
        let transport = if model == "leaktype" {
            Transport::OpenAi
        } else {
            Transport::Native
        };
        let outcome = drain(client.stream(ask(model, "q").with_transport(transport))).await;
        let error = outcome.error.unwrap_or_else(|| panic!("{model}: no error"));
        let shown = format!("{error} | {error:?} | {}", error.user_message());
        assert!(!shown.contains(KEY), "{model} leaked the key: {shown}");
    }
}

#[tokio::test]
async fn a_stall_before_any_text_is_retried() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "m",
        Scenario::fail_then(
            Scenario::Stall {
                before: String::new(),
            },
            1,
            Scenario::text("awake"),
        ),
    );
    let mut config = config_for(&fake);
    config.idle_timeout_secs = 1;
    let client = client(config);
    let outcome = drain(client.stream(ask("m", "q"))).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "awake");
    assert_eq!(fake.chat_requests("m").len(), 2);
}

#[tokio::test]
async fn openai_error_payloads_with_integer_codes_and_null_errors() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "int402",
        raw_sse("data: {\"error\": {\"code\": 402, \"message\": \"no points\"}}\n\n"),
    );
    fake.script(
        "json200",
        Scenario::Raw {
            status: 200,
            content_type: "application/json".into(),
            body:
                r#"{"error": {"code": 401, "type": "authentication_error", "message": "bad key"}}"#
                    .into(),
        },
    );
    fake.script("nullerror", Scenario::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"error": null, "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}]}"#.into(),
    });
    let client = client(config_for(&fake));
    let openai = |model| ask(model, "q").with_transport(Transport::OpenAi);
    let outcome = drain(client.stream(openai("int402"))).await;
    assert_eq!(outcome.error, Some(PoeError::OutOfPoints));
    assert_eq!(fake.chat_requests("int402").len(), 1);
    let outcome = drain(client.stream(openai("json200"))).await;
    assert!(
        matches!(outcome.error, Some(PoeError::InvalidKey { .. })),
        "{outcome:?}"
    );
    let mut whole = openai("nullerror");
    whole.streaming = false;
    let outcome = drain(client.stream(whole)).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "fine");
}

#[tokio::test]
async fn model_names_cannot_change_the_path() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let client = client(config_for(&fake));
    let outcome = drain(client.stream(ask("../v1/models?x=1#y", "hello"))).await;
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.answer, "hello");
    let sent = fake.requests().pop().unwrap();
    assert_eq!(sent.path, "/bot/../v1/models?x=1#y");
}

#[tokio::test]
async fn a_failed_upload_fails_the_answer_without_asking_poe() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let mut config = config_for(&fake);
    config.upload_url = format!("{}/nowhere", fake.base_url());
    let client = client(config);
    let mut message = ChatMessage::user("look");
    message.attachments.push(InputFile {
        name: "a.png".into(),
        content_type: "image/png".into(),
        source: FileSource::Bytes(Bytes::from_static(b"png")),
    });
    let outcome = drain(client.stream(ChatRequest::new("echo", vec![message]))).await;
    assert!(outcome.error.is_some());
    assert!(fake.chat_requests("echo").is_empty());
}

#[tokio::test]
async fn an_endless_answer_is_cut_off() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script("endless", Scenario::Huge { chars: 3_000_000 });
    let mut config = config_for(&fake);
    config.max_answer_bytes = 1_000_000;
    let client = client(config);
    let outcome = drain(client.stream(ask("endless", "q"))).await;
    let Some(PoeError::Protocol { detail, .. }) = &outcome.error else {
        panic!("{:?}", outcome.error)
    };
    assert!(detail.contains("longer than 1000000"), "{detail}");
    assert!(outcome.answer.len() <= 1_000_000 + 1024);
}
