//! Proof against code no one here wrote. The official `fastapi-poe` client and the official
//! `openai` SDK run against the fake Poe and get the answers the fake was scripted to give;
//! the Rust client runs against a real `fastapi-poe` bot server and gets what the official
//! client gets. The Python side lives in `tests/python/reference.py`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use poe_relay::fake_poe::{FakePoe, Scenario};
use poe_relay::poe::{
    ChatMessage, ChatRequest, FileSource, InputFile, PoeError, PoeEvent, Role, Transport,
};
use serde_json::{Value, json};
use support::{KEY, client, config_for, drain, python, python_script};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const STREAMED: &str = "Streaming from the fake: ünïcode, 👋🏽, 漢字 and a long tail of words.";
const IMAGE_URL: &str = "https://pfst.example/base/image/cat.png";

async fn run_python(args: &[&str]) -> Value {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(python())
            .arg(python_script("reference.py"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python reference check took over 2 minutes")
    .expect("cannot run Python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "reference.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}"))
}

fn script_fake(fake: &FakePoe) {
    fake.script(
        "streamer",
        Scenario::Text {
            text: STREAMED.into(),
            chunk_chars: 3,
            interval: Duration::from_millis(2),
        },
    );
    fake.script(
        "replacer",
        Scenario::Replace {
            before: "a draft".into(),
            after: "final".into(),
        },
    );
    fake.script(
        "suggester",
        Scenario::Suggested {
            text: "main".into(),
            replies: vec!["Tell me more".into()],
        },
    );
    fake.script(
        "imagebot",
        Scenario::Media {
            url: IMAGE_URL.into(),
            content_type: "image/png".into(),
            name: "cat.png".into(),
        },
    );
    fake.script(
        "failing",
        Scenario::ErrorMidStream {
            before: "partial ".into(),
            error: json!({"allow_retry": false, "text": "the bot failed"}),
        },
    );
    fake.script("limited", Scenario::Status {
        status: 429,
        body: json!({"error": {"message": "Rate limit exceeded", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
        retry_after: Some(3),
    });
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn official_clients_accept_the_fake() {
    let fake = FakePoe::start(KEY).await.unwrap();
    script_fake(&fake);
    let base = fake.base_url();
    let result = run_python(&["check-fake", &base, KEY]).await;

    // fastapi-poe, native protocol.
    assert_eq!(result["fp_echo"]["text"], "hello from fastapi-poe");
    assert_eq!(result["fp_echo"]["error"], Value::Null);
    assert_eq!(result["fp_stream"]["text"], STREAMED);
    assert_eq!(result["fp_replace"]["text"], "final");
    assert_eq!(result["fp_suggested"]["text"], "main");
    assert_eq!(result["fp_suggested"]["suggested"], json!(["Tell me more"]));
    assert_eq!(result["fp_file"]["files"][0]["url"], IMAGE_URL);
    assert_eq!(result["fp_file"]["files"][0]["content_type"], "image/png");
    assert_eq!(result["fp_error"]["text"], "partial ");
    assert_eq!(result["fp_error"]["error"]["class"], "BotErrorNoRetry");
    assert!(
        result["fp_error"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the bot failed")
    );
    let native_failing = fake
        .chat_requests("failing")
        .into_iter()
        .filter(|request| request.path.starts_with("/bot/"))
        .count();
    assert_eq!(native_failing, 1, "allow_retry=false must not be retried");
    assert_eq!(result["fp_wrong_key"]["error"]["class"], "BotError");

    // fastapi-poe upload, then a question carrying the attachment.
    assert_eq!(result["fp_upload"]["content_type"], "text/plain");
    assert_eq!(result["fp_upload"]["name"], "note.txt");
    let uploads = fake.uploads();
    assert_eq!(uploads[0].bytes, b"hello attachment");
    assert_eq!(
        uploads[1].download_url.as_deref(),
        Some("https://cdn.example/cat.png")
    );
    assert_eq!(result["fp_with_attachment"]["text"], "see attached");
    let official_body = fake
        .chat_requests("echo")
        .into_iter()
        .map(|request| request.body)
        .find(|body| body["query"][0]["content"] == "see attached")
        .expect("the attachment question");
    assert_eq!(
        official_body["query"][0]["attachments"][0]["url"],
        result["fp_upload"]["url"]
    );
    assert_eq!(
        official_body["query"][0]["parameters"],
        json!({"thinking_budget": 1000})
    );

    // The Rust client's native body has exactly the fields the official client sends.
    let rust = client(config_for(&fake));
    let mut message = ChatMessage::user("see attached");
    message.attachments.push(InputFile {
        name: "note.txt".into(),
        content_type: "text/plain".into(),
        source: FileSource::Bytes(Bytes::from_static(b"hello attachment")),
    });
    let mut request = ChatRequest::new("echo", vec![message]);
    request
        .parameters
        .insert("thinking_budget".into(), json!(1000));
    assert_eq!(drain(rust.stream(request)).await.answer, "see attached");
    let our_body = fake.chat_requests("echo").pop().unwrap().body;
    assert_eq!(keys(&our_body), keys(&official_body));
    assert_eq!(
        keys(&our_body["query"][0]),
        keys(&official_body["query"][0])
    );
    assert_eq!(
        keys(&our_body["query"][0]["attachments"][0]),
        keys(&official_body["query"][0]["attachments"][0])
    );
    assert_eq!(our_body["version"], official_body["version"]);

    // openai SDK: streaming with usage, non-streaming with extra_body, errors.
    assert_eq!(result["openai_stream"]["text"], STREAMED);
    assert_eq!(result["openai_stream"]["finish_reason"], "stop");
    let completion_tokens = result["openai_stream"]["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        completion_tokens,
        (STREAMED.chars().count() as u64).div_ceil(4)
    );
    let whole = result["openai_whole"]["text"].as_str().unwrap();
    assert!(
        whole.contains(&format!("![cat.png]({IMAGE_URL})")),
        "{whole}"
    );
    assert_eq!(result["openai_whole"]["finish_reason"], "stop");
    assert!(
        result["openai_whole"]["id"]
            .as_str()
            .unwrap()
            .starts_with("chatcmpl-")
    );
    let image_request = fake.chat_requests("imagebot").pop().unwrap().body;
    assert_eq!(image_request["aspect_ratio"], "16:9");
    assert_eq!(image_request["stream"], false);
    assert_eq!(result["openai_limited"]["error"], "RateLimitError");
    assert_eq!(result["openai_limited"]["status"], 429);
    assert_eq!(result["openai_midstream_error"]["error"], "APIError");
    assert_eq!(result["openai_midstream_error"]["text"], "partial ");

    // And the Rust client reads the same fake the same way.
    for (model, transport) in [
        ("streamer", Transport::Native),
        ("streamer", Transport::OpenAi),
    ] {
        let request =
            ChatRequest::new(model, vec![ChatMessage::user("x")]).with_transport(transport);
        assert_eq!(drain(rust.stream(request)).await.answer, STREAMED);
    }
}

/// A fastapi-poe bot server (PoeBot + make_app) on loopback; killed when dropped.
struct ReferenceBot {
    _process: tokio::process::Child,
    port: u16,
}

async fn start_reference_bot() -> ReferenceBot {
    let mut process = Command::new(python())
        .arg(python_script("reference.py"))
        .args(["serve-bot", KEY])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start the reference bot");
    let stdout = process.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the reference bot did not start within a minute")
        .unwrap()
        .expect("the reference bot exited");
    let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    // The socket is bound before the port is printed; wait until uvicorn answers.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ReferenceBot {
        _process: process,
        port,
    }
}

#[tokio::test]
async fn rust_client_gets_what_fastapi_poe_gets_from_a_real_bot_server() {
    let bot = start_reference_bot().await;
    let fake = FakePoe::start(KEY).await.unwrap(); // only for uploads
    let mut config = config_for(&fake);
    config.base_url = format!("http://127.0.0.1:{}", bot.port);
    config.max_attempts = 1;
    let rust = client(config);
    let bot_url = format!("http://127.0.0.1:{}/bot/", bot.port);

    for question in ["stream", "replace", "suggest", "error", "just an echo ✓"] {
        let official = run_python(&["ask", &bot_url, "ReferenceBot", KEY, question]).await;
        let ours = drain(rust.stream(ChatRequest::new(
            "ReferenceBot",
            vec![ChatMessage::user(question)],
        )))
        .await;
        assert_eq!(
            ours.answer,
            official["text"].as_str().unwrap(),
            "{question}"
        );
        let suggested: Vec<Value> = ours
            .events
            .iter()
            .filter_map(|event| match event {
                PoeEvent::SuggestedReply(text) => Some(json!(text)),
                _ => None,
            })
            .collect();
        assert_eq!(Value::Array(suggested), official["suggested"], "{question}");
        assert_eq!(
            ours.error.is_some(),
            !official["error"].is_null(),
            "{question}: {ours:?}"
        );
    }
    let streamed = drain(rust.stream(ChatRequest::new(
        "ReferenceBot",
        vec![ChatMessage::user("stream")],
    )))
    .await;
    assert_eq!(streamed.answer, "Hello, wörld 👋🏽!");
    let failed = drain(rust.stream(ChatRequest::new(
        "ReferenceBot",
        vec![ChatMessage::user("error")],
    )))
    .await;
    assert_eq!(failed.answer, "partial ");
    assert!(
        matches!(
            failed.error,
            Some(PoeError::ModelError {
                retryable: false,
                ..
            })
        ),
        "{failed:?}"
    );

    // The server validates our body with fastapi-poe's own pydantic models.
    let mut request = ChatRequest::new("ReferenceBot", vec![ChatMessage::user("params")]);
    request
        .parameters
        .insert("thinking_budget".into(), json!(1000));
    request
        .parameters
        .insert("aspect_ratio".into(), json!("16:9"));
    let echoed = drain(rust.stream(request)).await;
    assert_eq!(echoed.error, None);
    assert_eq!(
        serde_json::from_str::<Value>(&echoed.answer).unwrap(),
        json!({"aspect_ratio": "16:9", "thinking_budget": 1000})
    );

    let mut turns = vec![
        ChatMessage::new(Role::System, "be brief"),
        ChatMessage::user("hi"),
        ChatMessage::new(Role::Bot, "hello"),
        ChatMessage::user("history"),
    ];
    turns[1].sender = Some("ann".into());
    let history = drain(rust.stream(ChatRequest::new("ReferenceBot", turns))).await;
    assert_eq!(
        serde_json::from_str::<Value>(&history.answer).unwrap(),
        json!({"roles": ["system", "user", "bot", "user"], "senders": [null, "ann", null, null]})
    );

    let mut message = ChatMessage::user("attach");
    message.attachments.push(InputFile {
        name: "cat.png".into(),
        content_type: "image/png".into(),
        source: FileSource::Bytes(Bytes::from_static(b"\x89PNG")),
    });
    let attached = drain(rust.stream(ChatRequest::new("ReferenceBot", vec![message]))).await;
    let uploaded = &fake.uploads()[0];
    assert_eq!(
        serde_json::from_str::<Value>(&attached.answer).unwrap(),
        json!([["cat.png", "image/png", uploaded.url]])
    );
}
