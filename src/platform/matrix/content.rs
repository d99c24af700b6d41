//! The JSON of the events the bot sends: new messages and edits.
//!
//! Built by hand so every event carries exactly what clients need: a plain `body`, HTML
//! rendered from the model's markdown, a reply (and thread) relation, and an empty
//! `m.mentions` so the bot never pings anyone. An edit is an `m.replace` whose
//! `m.new_content` holds the full new text. While a message is still being written, the event
//! and its edits (their `m.new_content` too) carry MSC4357's `org.matrix.msc4357.live` marker,
//! so clients that know it show the message as live; the final edit leaves it out.

use matrix_sdk::ruma::events::room::message::FormattedBody;
use serde_json::{Map, Value, json};

/// Event content above this many bytes of JSON drops its HTML. Matrix caps a whole event at
/// 65,536 bytes, and encryption adds a third (base64).
pub const MAX_CONTENT_BYTES: usize = 40_000;

/// Content above this is not sent at all: with encryption's third on top it would pass
/// 64 KiB. Only text made of characters JSON escapes heavily can get here.
pub const SEND_LIMIT_BYTES: usize = MAX_CONTENT_BYTES + 4_000;

/// Where a new message goes.
#[derive(Debug, Clone, Default)]
pub struct Relation<'a> {
    /// The event answered.
    pub reply_to: Option<&'a str>,
    /// The thread's root event, when the conversation is a thread.
    pub thread_root: Option<&'a str>,
}

/// MSC4357's marker of a message still being written.
pub const LIVE: &str = "org.matrix.msc4357.live";

/// The room state event with which a room turns live messages off.
pub const LIVE_MESSAGING: &str = "org.matrix.msc4357.live_messaging";

/// The content of a new message; `live`: more edits follow.
pub fn message(text: &str, relation: &Relation<'_>, live: bool) -> Value {
    let mut content = body(text, true);
    if let Some(relates_to) = relates_to(relation) {
        content.insert("m.relates_to".into(), relates_to);
    }
    mark_live(&mut content, live);
    fit(content)
}

/// The content of an edit that makes `original` read `text`; `live`: more edits follow.
pub fn edit(original: &str, text: &str, live: bool) -> Value {
    let mut content = body(&format!("* {text}"), false);
    let mut new_content = body(text, true);
    mark_live(&mut new_content, live);
    mark_live(&mut content, live);
    content.insert("m.new_content".into(), Value::Object(new_content));
    content.insert(
        "m.relates_to".into(),
        json!({ "rel_type": "m.replace", "event_id": original }),
    );
    fit(content)
}

fn mark_live(content: &mut Map<String, Value>, live: bool) {
    if live {
        content.insert(LIVE.into(), json!({}));
    }
}

fn body(text: &str, with_html: bool) -> Map<String, Value> {
    // Control characters show as nothing, but take six bytes each in JSON.
    let cleaned: String;
    let text = if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        cleaned = text
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect();
        &cleaned
    } else {
        text
    };
    let mut content = Map::new();
    content.insert("msgtype".into(), "m.text".into());
    content.insert("body".into(), text.into());
    if with_html && let Some(html) = FormattedBody::markdown(text) {
        content.insert("format".into(), "org.matrix.custom.html".into());
        content.insert("formatted_body".into(), html.body.into());
    }
    content.insert("m.mentions".into(), json!({}));
    content
}

fn relates_to(relation: &Relation<'_>) -> Option<Value> {
    match (relation.thread_root, relation.reply_to) {
        (Some(root), reply_to) => Some(json!({
            "rel_type": "m.thread",
            "event_id": root,
            // Clients without threads show the message as a reply to this event.
            "is_falling_back": reply_to.is_none(),
            "m.in_reply_to": { "event_id": reply_to.unwrap_or(root) },
        })),
        (None, Some(reply_to)) => Some(json!({ "m.in_reply_to": { "event_id": reply_to } })),
        (None, None) => None,
    }
}

/// Drops the HTML when the content would be too large; the plain body always stays.
fn fit(mut content: Map<String, Value>) -> Value {
    if encoded_len(&content) > MAX_CONTENT_BYTES {
        if let Some(inner) = content
            .get_mut("m.new_content")
            .and_then(Value::as_object_mut)
        {
            inner.remove("format");
            inner.remove("formatted_body");
        }
        content.remove("format");
        content.remove("formatted_body");
    }
    // An edit carries its text twice; the outer copy is only a fallback for old clients.
    if encoded_len(&content) > MAX_CONTENT_BYTES
        && content.contains_key("m.new_content")
        && let Some(Value::String(fallback)) = content.get_mut("body")
    {
        let cut = fallback
            .char_indices()
            .map(|(index, _)| index)
            .take_while(|index| *index <= 1_000)
            .last()
            .unwrap_or(0);
        fallback.truncate(cut);
        fallback.push('…');
    }
    Value::Object(content)
}

/// Bytes of JSON this content takes.
pub fn encoded_len(content: &impl serde::Serialize) -> usize {
    serde_json::to_vec(content).map_or(usize::MAX, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_render_markdown_and_mention_nobody() {
        let content = message(
            "Some **bold** and code:\n\n```rust\nfn main() {}\n```",
            &Relation {
                reply_to: Some("$trigger"),
                thread_root: None,
            },
            false,
        );
        assert_eq!(content["msgtype"], "m.text");
        assert_eq!(content["format"], "org.matrix.custom.html");
        let html = content["formatted_body"].as_str().unwrap();
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        assert!(html.contains("<code class=\"language-rust\">"), "{html}");
        assert_eq!(content["m.mentions"], json!({}));
        assert_eq!(
            content["m.relates_to"],
            json!({ "m.in_reply_to": { "event_id": "$trigger" } })
        );
    }

    #[test]
    fn plain_text_has_no_html() {
        let content = message("just words", &Relation::default(), false);
        assert!(content.get("formatted_body").is_none());
        assert!(content.get("m.relates_to").is_none());
    }

    #[test]
    fn thread_replies_stay_in_the_thread() {
        let answer = message(
            "hi",
            &Relation {
                reply_to: Some("$q"),
                thread_root: Some("$root"),
            },
            false,
        );
        assert_eq!(
            answer["m.relates_to"],
            json!({
                "rel_type": "m.thread",
                "event_id": "$root",
                "is_falling_back": false,
                "m.in_reply_to": { "event_id": "$q" },
            })
        );
        let continuation = message(
            "more",
            &Relation {
                reply_to: None,
                thread_root: Some("$root"),
            },
            false,
        );
        assert_eq!(continuation["m.relates_to"]["is_falling_back"], true);
    }

    #[test]
    fn edits_carry_the_new_content() {
        let content = edit("$orig", "new **text**", false);
        assert_eq!(content["body"], "* new **text**");
        assert_eq!(
            content["m.relates_to"],
            json!({ "rel_type": "m.replace", "event_id": "$orig" })
        );
        assert_eq!(content["m.new_content"]["body"], "new **text**");
        assert!(
            content["m.new_content"]["formatted_body"]
                .as_str()
                .unwrap()
                .contains("<strong>text</strong>")
        );
        assert_eq!(content["m.new_content"]["m.mentions"], json!({}));
        assert_eq!(content["m.mentions"], json!({}));
    }

    #[test]
    fn a_message_being_written_is_marked_live_and_its_final_edit_is_not() {
        let first = message("The answer so", &Relation::default(), true);
        assert_eq!(first[LIVE], json!({}));
        let edit_live = edit("$orig", "The answer so far", true);
        assert_eq!(edit_live[LIVE], json!({}));
        assert_eq!(edit_live["m.new_content"][LIVE], json!({}));
        let last = edit("$orig", "The answer so far, done.", false);
        assert!(last.get(LIVE).is_none(), "{last:#}");
        assert!(last["m.new_content"].get(LIVE).is_none(), "{last:#}");
        let at_once = message("All at once.", &Relation::default(), false);
        assert!(at_once.get(LIVE).is_none(), "{at_once:#}");
    }

    #[test]
    fn an_edit_of_escape_heavy_text_still_fits() {
        // Control characters take six bytes each in JSON.
        let text = "\u{1}\"".repeat(4_000);
        let content = edit("$orig", &text, false);
        assert!(
            encoded_len(&content) <= SEND_LIMIT_BYTES,
            "{}",
            encoded_len(&content)
        );
        assert_eq!(content["m.new_content"]["body"], "\"".repeat(4_000));
    }

    #[test]
    fn oversized_html_is_dropped_not_the_text() {
        // `<` becomes `&lt;`: the HTML is four times the text.
        let text = "<".repeat(12_000);
        let content = edit("$orig", &text, false);
        assert!(encoded_len(&content) <= MAX_CONTENT_BYTES);
        assert_eq!(content["m.new_content"]["body"], text.as_str());
        assert!(content["m.new_content"].get("formatted_body").is_none());
    }
}

#[cfg(test)]
mod fuzz;
