//! Real api.poe.com responses (March 2026, `../shared/fixtures/poe-captures`) replayed over
//! loopback: the client must parse every one, and build the same messages the real SDK sent.

mod support;

use poe_relay::fake_poe::{FakePoe, Scenario};
use poe_relay::poe::{ChatMessage, ChatRequest, FinishReason, PoeError, PoeEvent, Role, Transport};
use serde_json::Value;
use support::{KEY, client, config_for, drain, shared_dir};

fn captures() -> Vec<(String, Value)> {
    let dir = shared_dir().join("fixtures/poe-captures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect()
}

fn role(name: &str) -> Role {
    match name {
        "system" => Role::System,
        "assistant" => Role::Bot,
        _ => Role::User,
    }
}

#[tokio::test]
async fn every_chat_completion_capture_parses() {
    let fake = FakePoe::start(KEY).await.unwrap();
    let client = client(config_for(&fake));
    let mut successes = 0;
    let mut rejections = 0;
    for (name, capture) in captures() {
        if !name.starts_with("v1-chat-completions-") {
            continue;
        }
        let sent = &capture["request"]["body"];
        let response = &capture["response"];
        let model = sent["model"].as_str().unwrap();
        fake.script(
            model,
            Scenario::Raw {
                status: response["status"].as_u64().unwrap() as u16,
                content_type: response["headers"]["content-type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                body: response["body"].to_string(),
            },
        );
        let messages = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| {
                ChatMessage::new(
                    role(message["role"].as_str().unwrap()),
                    message["content"].as_str().unwrap(),
                )
            })
            .collect();
        let mut request = ChatRequest::new(model, messages).with_transport(Transport::OpenAi);
        request.streaming = false;
        if let Some(effort) = sent.get("reasoning_effort") {
            request
                .parameters
                .insert("reasoning_effort".into(), effort.clone());
        }
        let outcome = drain(client.stream(request)).await;

        let ours = fake.chat_requests(model).pop().unwrap().body;
        assert_eq!(
            ours["messages"], sent["messages"],
            "{name}: messages differ from the SDK's"
        );
        assert_eq!(ours["model"], sent["model"], "{name}");
        if let Some(effort) = sent.get("reasoning_effort") {
            assert_eq!(&ours["reasoning_effort"], effort, "{name}");
        }

        let body = &response["body"];
        if response["status"] == 200 {
            successes += 1;
            assert_eq!(outcome.error, None, "{name}");
            let expected = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("");
            assert_eq!(outcome.answer, expected, "{name}");
            let usage = outcome.events.iter().find_map(|event| match event {
                PoeEvent::Usage(usage) => Some(usage.clone()),
                _ => None,
            });
            let usage = usage.unwrap_or_else(|| panic!("{name}: no usage"));
            assert_eq!(
                usage.prompt_tokens,
                body["usage"]["prompt_tokens"].as_u64(),
                "{name}"
            );
            assert_eq!(
                usage.completion_tokens,
                body["usage"]["completion_tokens"].as_u64(),
                "{name}"
            );
            let reason = body["choices"][0]["finish_reason"].as_str();
            let expected_reason = match reason {
                Some("tool_calls") => FinishReason::ToolCalls,
                Some("length") => FinishReason::Length,
                _ => FinishReason::Stop,
            };
            assert_eq!(
                outcome.events.last(),
                Some(&PoeEvent::Finished(expected_reason)),
                "{name}"
            );
        } else {
            rejections += 1;
            let error = outcome.error.unwrap_or_else(|| panic!("{name}: no error"));
            assert!(
                matches!(error, PoeError::BadRequest { .. }),
                "{name}: {error:?}"
            );
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                error.to_string().contains(&message[..30]),
                "{name}: {error}"
            );
        }
    }
    assert_eq!((successes, rejections), (74, 2));
}

#[tokio::test]
async fn the_captured_model_list_parses() {
    let (_, capture) = captures()
        .into_iter()
        .find(|(name, _)| name.starts_with("v1-models-"))
        .expect("the model list capture");
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.set_models(capture["response"]["body"].clone());
    let client = client(config_for(&fake));
    let models = client.list_models().await.unwrap();
    assert_eq!(models.len(), 362);
    assert_eq!(
        models
            .iter()
            .filter(|model| model.pricing.is_none())
            .count(),
        179
    );

    let sonnet = models
        .iter()
        .find(|model| model.id == "claude-sonnet-4.6")
        .unwrap();
    let pricing = sonnet.pricing.as_ref().unwrap();
    assert_eq!(pricing.prompt, Some(0.0000026));
    assert_eq!(pricing.completion, Some(0.000013));
    assert_eq!(pricing.image, None);
    assert!(!sonnet.outputs_media());

    let raw: Vec<&Value> = capture["response"]["body"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for (model, raw) in models.iter().zip(raw) {
        let outputs: Vec<&str> = raw["architecture"]["output_modalities"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            model.outputs_media(),
            !outputs.is_empty() && !outputs.contains(&"text"),
            "{}",
            model.id
        );
        let declared = raw["parameters"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(
            model.parameters.as_deref().map(<[_]>::len).unwrap_or(0),
            declared,
            "{}",
            model.id
        );
    }
    let image_bots = models.iter().filter(|model| model.outputs_media()).count();
    assert!(image_bots > 10, "only {image_bots} media models");
    let thinking = models
        .iter()
        .filter(|model| model.parameter("thinking_budget").is_some())
        .count();
    assert!(thinking > 0);
}
