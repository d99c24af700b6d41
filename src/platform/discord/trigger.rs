//! Which Discord messages are for the bot, and the question they ask.
//!
//! Pure functions over plain values, so the rules are tested without a gateway: a mention of
//! the bot or a reply to one of its messages in a server channel (or thread), and any
//! message in a DM. The bot's mention is taken out of the question; mentions of other people
//! become `@name`, which is what the model can make sense of.

use crate::core::boundary::Invocation;

/// What Discord says about a message, beyond its text.
#[derive(Debug, Clone, Default)]
pub struct Addressing {
    /// The bot is in the message's mentions (typed, or the reply's ping).
    pub mentions_bot: bool,
    /// The message replies to one of the bot's messages.
    pub replies_to_bot: bool,
    /// A direct message: everything there is for the bot.
    pub is_direct: bool,
}

/// Decides what `content` asks of the bot, if anything. `people` are the other users the
/// message mentions, as (id, display name); `has_files` says whether files come with it.
pub fn classify(
    content: &str,
    bot_id: u64,
    people: &[(u64, String)],
    addressing: &Addressing,
    has_files: bool,
) -> Option<(Invocation, String)> {
    if !(addressing.mentions_bot || addressing.replies_to_bot || addressing.is_direct) {
        return None;
    }
    let question = rewrite_mentions(content, bot_id, people);
    if question.is_empty() && !has_files {
        // A bare mention: show what the bot can do rather than sending Poe nothing.
        return Some((Invocation::Command, "help".into()));
    }
    Some((Invocation::Message, question))
}

/// Drops `<@bot>` / `<@!bot>` (and the comma or colon after a leading one) and turns other
/// users' mentions into `@name`. Everything else, indentation included, stays as typed.
fn rewrite_mentions(content: &str, bot_id: u64, people: &[(u64, String)]) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content.trim_start();
    let mut led_by_bot = false;
    while let Some(start) = rest.find("<@") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let digits_from = usize::from(after.starts_with('!'));
        let digits_len = after[digits_from..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let end = digits_from + digits_len;
        let id = after[digits_from..end].parse::<u64>().ok();
        match (id, after[end..].starts_with('>')) {
            (Some(id), true) => {
                rest = &after[end + 1..];
                if id == bot_id {
                    led_by_bot |= out.is_empty();
                    // Where the bot's mention stood, keep one space, not two.
                    if out.ends_with(' ') && rest.starts_with(' ') {
                        rest = &rest[1..];
                    }
                    continue;
                }
                match people.iter().find(|(person, _)| *person == id) {
                    Some((_, name)) => {
                        out.push('@');
                        out.push_str(name);
                    }
                    None => out.push_str(&format!("<@{id}>")),
                }
            }
            _ => {
                out.push_str("<@");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    let out = out.trim();
    if led_by_bot {
        // "@bot, question" and "@bot: question".
        return out.trim_start_matches([',', ':']).trim_start().to_owned();
    }
    out.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: u64 = 42;

    fn mentioned() -> Addressing {
        Addressing {
            mentions_bot: true,
            ..Addressing::default()
        }
    }

    #[test]
    fn only_messages_for_the_bot() {
        assert_eq!(
            classify("hello all", BOT, &[], &Addressing::default(), false),
            None
        );
        assert_eq!(
            classify("<@42> what is rust?", BOT, &[], &mentioned(), false),
            Some((Invocation::Message, "what is rust?".into()))
        );
        let reply = Addressing {
            replies_to_bot: true,
            ..Addressing::default()
        };
        assert_eq!(
            classify("and in Go?", BOT, &[], &reply, false),
            Some((Invocation::Message, "and in Go?".into()))
        );
        let direct = Addressing {
            is_direct: true,
            ..Addressing::default()
        };
        assert_eq!(
            classify("hi", BOT, &[], &direct, false),
            Some((Invocation::Message, "hi".into()))
        );
    }

    #[test]
    fn the_bots_mention_is_taken_out_wherever_it_is() {
        for (content, question) in [
            ("<@42> explain ownership", "explain ownership"),
            ("<@!42>, explain ownership", "explain ownership"),
            ("<@42>: explain ownership", "explain ownership"),
            ("explain ownership <@42>", "explain ownership"),
            ("so <@42> explain ownership", "so explain ownership"),
            ("<@42>\nline one\n\nline three", "line one\n\nline three"),
            ("<@42> fix:\n    fn main() {}", "fix:\n    fn main() {}"),
        ] {
            assert_eq!(
                classify(content, BOT, &[], &mentioned(), false),
                Some((Invocation::Message, question.into())),
                "{content:?}"
            );
        }
    }

    #[test]
    fn files_without_text_are_a_question_and_only_a_leading_mention_takes_punctuation() {
        assert_eq!(
            classify("<@42>", BOT, &[], &mentioned(), true),
            Some((Invocation::Message, String::new()))
        );
        let direct = Addressing {
            is_direct: true,
            ..Addressing::default()
        };
        assert_eq!(
            classify(":) hi", BOT, &[], &direct, false),
            Some((Invocation::Message, ":) hi".into()))
        );
        assert_eq!(
            classify("so, <@42>: hi", BOT, &[], &mentioned(), false),
            Some((Invocation::Message, "so, : hi".into()))
        );
    }

    #[test]
    fn a_bare_mention_gets_help() {
        assert_eq!(
            classify("  <@42>  ", BOT, &[], &mentioned(), false),
            Some((Invocation::Command, "help".into()))
        );
    }

    #[test]
    fn other_people_become_names_and_garbage_stays_as_typed() {
        let people = [(7, "alice".to_owned())];
        assert_eq!(
            classify(
                "<@42> say hi to <@!7> and <@9>",
                BOT,
                &people,
                &mentioned(),
                false
            ),
            Some((Invocation::Message, "say hi to @alice and <@9>".into()))
        );
        for garbage in ["<@", "<@>", "<@!x>", "<@123", "a <@<@42>"] {
            let got = classify(garbage, BOT, &[], &mentioned(), false);
            assert!(got.is_some(), "{garbage:?}");
        }
        assert_eq!(
            classify("a <@<@42>", BOT, &[], &mentioned(), false),
            Some((Invocation::Message, "a <@".into()))
        );
        assert_eq!(
            classify(
                "<@99999999999999999999999> hi",
                BOT,
                &[],
                &mentioned(),
                false
            ),
            Some((Invocation::Message, "<@99999999999999999999999> hi".into()))
        );
    }
}

#[cfg(test)]
mod fuzz;
