//! Fuzz targets for the events the bot sends: any text up to a Matrix message's length
//! (control characters, markdown and HTML that render large, right-to-left marks), any
//! relation, live or final: the plain text always survives, the event fits, and its
//! structure is what clients expect.

use super::*;
use crate::fuzz::{config, hostile_string};
use crate::platform::matrix::outbound::MAX_MESSAGE_BYTES;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// What the body keeps: every character but control characters other than `\n`, `\t`.
fn cleaned(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// Bytes of a JSON string, counted independently of serde_json.
fn json_string_len(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Text that renders to much more HTML than itself, or escapes heavily, or is just long.
fn text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        4 => hostile_string(),
        2 => prop::sample::select(vec![
            "**bold** ", "_it_ ", "`code` ", "\n\n", "\n", "# head\n", "> quote\n", "- item\n",
            "1. one\n", "```rust\nfn main() {}\n```\n", "[link](https://example.org) ",
            "<script>alert(1)</script>", "&amp; &lt;", "\"\\\"", "| a | b |\n|---|---|\n",
            "\u{202e}\u{200f}\u{2066}", "👨\u{200d}👩\u{200d}👧", "e\u{301}\u{301}",
            "\u{0}\u{1b}[31m\u{7f}\u{85}",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..2000).prop_map(|n| "<".repeat(n)),
        1 => (1usize..2000).prop_map(|n| "\"".repeat(n)),
        1 => (1usize..1000).prop_map(|n| "[".repeat(n)),
        1 => (1usize..500).prop_map(|n| "> ".repeat(n)),
        1 => (1usize..2000).prop_map(|n| "\u{1}".repeat(n)),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| {
        let mut text = tokens.concat();
        // The splitter never hands the adapter more than a message's length.
        if text.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        text
    })
}

/// An event id as a homeserver gives it (at most 255 bytes, no control characters).
fn event_id() -> impl Strategy<Value = String> {
    prop_oneof!["\\$[A-Za-z0-9_-]{1,43}", "\\$[^\\p{Cc}]{0,60}"]
}

fn check_common(content: &Value, live: bool) {
    assert_eq!(content["msgtype"], "m.text");
    assert_eq!(content["m.mentions"], json!({}));
    assert_eq!(content.get(LIVE).is_some(), live);
    if content.get("formatted_body").is_some() {
        assert_eq!(content["format"], "org.matrix.custom.html");
        assert!(
            encoded_len(content) <= MAX_CONTENT_BYTES,
            "HTML kept past the limit"
        );
    } else {
        assert!(content.get("format").is_none());
    }
    let size = encoded_len(content);
    assert!(
        size <= SEND_LIMIT_BYTES,
        "{size} bytes is over the send limit"
    );
    assert_eq!(size, serde_json::to_string(content).unwrap().len());
}

fn message_case(
    text: &str,
    reply_to: Option<&str>,
    thread_root: Option<&str>,
    live: bool,
) -> Result<(), TestCaseError> {
    let relation = Relation {
        reply_to,
        thread_root,
    };
    let content = message(text, &relation, live);
    check_common(&content, live);
    let body = cleaned(text);
    prop_assert_eq!(content["body"].as_str(), Some(body.as_str()));
    let relates = content.get("m.relates_to");
    match (thread_root, reply_to) {
        (None, None) => prop_assert!(relates.is_none()),
        (None, Some(reply)) => {
            let wanted = json!({"m.in_reply_to": {"event_id": reply}});
            prop_assert_eq!(relates, Some(&wanted));
        }
        (Some(root), reply) => {
            let relates = relates.unwrap();
            prop_assert_eq!(&relates["rel_type"], "m.thread");
            prop_assert_eq!(&relates["event_id"], root);
            prop_assert_eq!(&relates["is_falling_back"], &json!(reply.is_none()));
            let replied = &relates["m.in_reply_to"]["event_id"];
            prop_assert_eq!(replied, reply.unwrap_or(root));
        }
    }
    Ok(())
}

fn edit_case(text: &str, original: &str, live: bool) -> Result<(), TestCaseError> {
    let content = edit(original, text, live);
    check_common(&content, live);
    let new_content = &content["m.new_content"];
    let body = cleaned(text);
    prop_assert_eq!(new_content["body"].as_str(), Some(body.as_str()));
    prop_assert_eq!(new_content.get(LIVE).is_some(), live);
    prop_assert_eq!(&new_content["m.mentions"], &json!({}));
    if new_content.get("formatted_body").is_some() {
        prop_assert_eq!(&new_content["format"], "org.matrix.custom.html");
    }
    let replaces = json!({"rel_type": "m.replace", "event_id": original});
    prop_assert_eq!(&content["m.relates_to"], &replaces);
    let fallback = content["body"].as_str().unwrap();
    let full = format!("* {body}");
    if fallback != full {
        let cut = fallback.strip_suffix('…');
        prop_assert!(
            cut.is_some(),
            "a cut fallback ends with an ellipsis: {:?}",
            fallback
        );
        let cut = cut.unwrap();
        prop_assert!(full.starts_with(cut) && cut.len() <= 1_004);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// A new message: its body is the text (less control characters), its relation is the
    /// one asked for, and it fits one event.
    #[test]
    fn fuzz_matrix_message_content(
        text in text(),
        reply_to in prop::option::of(event_id()),
        thread_root in prop::option::of(event_id()),
        live in any::<bool>(),
    ) {
        message_case(&text, reply_to.as_deref(), thread_root.as_deref(), live)?;
    }

    /// An edit: the new content holds the whole text, the fallback at most a cut of it, the
    /// relation is a replacement of the original, and it fits one event.
    #[test]
    fn fuzz_matrix_edit_content(
        text in text(),
        original in event_id(),
        live in any::<bool>(),
    ) {
        edit_case(&text, &original, live)?;
    }

    /// `encoded_len` is the size of the JSON, as counted by hand.
    #[test]
    fn fuzz_matrix_encoded_len(text in prop_oneof![hostile_string(), any::<String>()]) {
        prop_assert_eq!(encoded_len(&text), json_string_len(&text));
        prop_assert_eq!(encoded_len(&json!({"body": text})), json_string_len(&text) + 9);
    }
}
