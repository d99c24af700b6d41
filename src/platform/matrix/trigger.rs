//! Whether a Matrix message is for the bot, and what it asks.
//!
//! Pure text rules, kept apart from matrix-sdk so they can be tested exhaustively:
//! `!poe <sub>` and `/poe <sub>` are commands; `!poe <question>`, a mention of the bot, its
//! name at the start of the message, or any message in a one-to-one room is a question.

use crate::core::boundary::Invocation;
use crate::core::commands::is_subcommand;

/// Who the bot is, as people write it.
#[derive(Debug, Clone)]
pub struct BotNames {
    /// `@poe:example.org`
    pub user_id: String,
    /// The display name, when the bot has one.
    pub display_name: Option<String>,
}

impl BotNames {
    fn localpart(&self) -> &str {
        self.user_id
            .strip_prefix('@')
            .and_then(|rest| rest.split(':').next())
            .unwrap_or(&self.user_id)
    }
}

/// What the message says about being addressed.
#[derive(Debug, Clone, Copy)]
pub struct Addressing {
    /// `m.mentions.user_ids` names the bot.
    pub mentions_bot: bool,
    /// The room has only the bot and one other person.
    pub is_direct: bool,
}

/// Decides what `text` asks of the bot, if anything: the invocation and the text the core
/// gets (the command after `poe`, or the question without the bot's name).
pub fn classify(
    text: &str,
    names: &BotNames,
    addressing: Addressing,
) -> Option<(Invocation, String)> {
    let trimmed = text.trim();
    let (named, rest) = match strip_name(trimmed, names) {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if let Some(after) = strip_command_prefix(rest) {
        let first = after.split_whitespace().next().unwrap_or("");
        return if first.is_empty() || is_subcommand(first) {
            Some((Invocation::Command, after.to_owned()))
        } else {
            Some((Invocation::Message, after.to_owned()))
        };
    }
    if named || addressing.mentions_bot || addressing.is_direct {
        if rest.is_empty() {
            // A bare mention: show what the bot can do rather than sending Poe nothing.
            return Some((Invocation::Command, "help".into()));
        }
        return Some((Invocation::Message, rest.to_owned()));
    }
    None
}

/// `!poe` or `/poe` (any case) followed by a space or the end: the rest, trimmed.
fn strip_command_prefix(text: &str) -> Option<&str> {
    let head = text.get(..4)?;
    if !(head.eq_ignore_ascii_case("!poe") || head.eq_ignore_ascii_case("/poe")) {
        return None;
    }
    let rest = &text[4..];
    match rest.chars().next() {
        None => Some(""),
        Some(next) if next.is_whitespace() => Some(rest.trim()),
        Some(_) => None,
    }
}

/// The text after a leading "name:" / "name," / "@user:server" address, trimmed.
fn strip_name<'t>(text: &'t str, names: &BotNames) -> Option<&'t str> {
    let mut candidates = vec![names.user_id.as_str(), names.localpart()];
    if let Some(display) = names
        .display_name
        .as_deref()
        .filter(|name| !name.is_empty())
    {
        candidates.push(display);
    }
    // Longest first, so `@poe:example.org` is not read as `@poe` + `:example.org`.
    candidates.sort_by_key(|name| std::cmp::Reverse(name.len()));
    for name in candidates {
        // "@name" may be followed by anything that ends a word; a bare name only by ':' or
        // ',' ("poe is great" is not a question for the bot).
        let at_name = if name.starts_with('@') {
            name.to_owned()
        } else {
            format!("@{name}")
        };
        for (candidate, bare) in [(at_name, false), (name.to_owned(), true)] {
            let Some(head) = text.get(..candidate.len()) else {
                continue;
            };
            if !head.eq_ignore_ascii_case(&candidate) {
                continue;
            }
            let rest = &text[candidate.len()..];
            match rest.chars().next() {
                Some(':' | ',') => return Some(rest[1..].trim()),
                None if !bare => return Some(""),
                Some(next) if next.is_whitespace() && !bare => return Some(rest.trim()),
                _ => {}
            }
        }
    }
    None
}

/// The text of a reply without the quoted fallback older clients put before it.
pub fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") {
        return body;
    }
    let mut rest = body;
    while let Some(line_end) = rest.find('\n') {
        let line = &rest[..line_end];
        rest = &rest[line_end + 1..];
        if line.is_empty() {
            return rest;
        }
        if !line.starts_with('>') {
            return body;
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> BotNames {
        BotNames {
            user_id: "@poe:example.org".into(),
            display_name: Some("Poe Bot".into()),
        }
    }

    const GROUP: Addressing = Addressing {
        mentions_bot: false,
        is_direct: false,
    };

    fn classify_in_group(text: &str) -> Option<(Invocation, String)> {
        classify(text, &names(), GROUP)
    }

    #[test]
    fn commands_with_either_prefix() {
        for text in [
            "!poe balance",
            "/poe balance",
            "!POE  balance ",
            "  !poe\tbalance",
        ] {
            assert_eq!(
                classify_in_group(text),
                Some((Invocation::Command, "balance".into())),
                "{text:?}"
            );
        }
        assert_eq!(
            classify_in_group("!poe model GPT-5 temperature=0.2"),
            Some((Invocation::Command, "model GPT-5 temperature=0.2".into()))
        );
        assert_eq!(
            classify_in_group("!poe"),
            Some((Invocation::Command, "".into()))
        );
    }

    #[test]
    fn prefix_with_a_question_is_a_turn() {
        assert_eq!(
            classify_in_group("!poe what is a monad?"),
            Some((Invocation::Message, "what is a monad?".into()))
        );
    }

    #[test]
    fn lookalike_prefixes_are_not_commands() {
        assert_eq!(classify_in_group("!poetry is nice"), None);
        assert_eq!(classify_in_group("/poem"), None);
        assert_eq!(classify_in_group("say !poe balance"), None);
        assert_eq!(classify_in_group("é!poe"), None);
    }

    #[test]
    fn mentions_and_names_address_the_bot() {
        let mentioned = Addressing {
            mentions_bot: true,
            is_direct: false,
        };
        assert_eq!(
            classify("Poe Bot: hello there", &names(), mentioned),
            Some((Invocation::Message, "hello there".into()))
        );
        for text in [
            "Poe Bot: hello",
            "poe bot, hello",
            "@poe:example.org: hello",
            "poe: hello",
            "@poe hello",
        ] {
            assert_eq!(
                classify_in_group(text),
                Some((Invocation::Message, "hello".into())),
                "{text:?}"
            );
        }
        assert_eq!(
            classify("what do you think?", &names(), mentioned),
            Some((Invocation::Message, "what do you think?".into()))
        );
        assert_eq!(classify_in_group("poetic: hello"), None);
        assert_eq!(classify_in_group("poe is great"), None);
        assert_eq!(classify_in_group("Poe Bot"), None);
        assert_eq!(classify_in_group("hello everyone"), None);
    }

    #[test]
    fn name_then_command() {
        assert_eq!(
            classify_in_group("Poe Bot: !poe reset"),
            Some((Invocation::Command, "reset".into()))
        );
    }

    #[test]
    fn bare_mention_gets_help() {
        assert_eq!(
            classify_in_group("Poe Bot:"),
            Some((Invocation::Command, "help".into()))
        );
    }

    #[test]
    fn direct_rooms_need_no_address() {
        let direct = Addressing {
            mentions_bot: false,
            is_direct: true,
        };
        assert_eq!(
            classify("hello", &names(), direct),
            Some((Invocation::Message, "hello".into()))
        );
        assert_eq!(
            classify("   ", &names(), direct),
            Some((Invocation::Command, "help".into()))
        );
    }

    #[test]
    fn reply_fallbacks_are_dropped() {
        assert_eq!(
            strip_reply_fallback("> <@a:x> earlier\n> more\n\nPoe Bot: and now?"),
            "Poe Bot: and now?"
        );
        assert_eq!(
            strip_reply_fallback("> a quote I wrote"),
            "> a quote I wrote"
        );
        assert_eq!(strip_reply_fallback("plain"), "plain");
        assert_eq!(
            strip_reply_fallback("> q\nnot a fallback"),
            "> q\nnot a fallback"
        );
    }
}

#[cfg(test)]
mod fuzz;
