//! Fuzz targets for what a Matrix message asks: arbitrary bodies and bot names, commands and
//! addresses written out with any spacing and case and read back, and reply fallbacks of any
//! shape.

use super::*;
use crate::core::commands::SUBCOMMANDS;
use crate::fuzz::{config, hostile_string};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn names() -> impl Strategy<Value = BotNames> {
    let localpart = prop_oneof![Just("poe".to_owned()), "[a-z0-9._=-]{1,12}"];
    let server = prop_oneof![
        Just("example.org".to_owned()),
        "[a-z0-9.-]{1,12}(:[0-9]{1,5})?"
    ];
    let display = prop_oneof![
        Just(None),
        Just(Some("Poe Bot".to_owned())),
        Just(Some(String::new())),
        hostile_string().prop_map(Some),
    ];
    (localpart, server, display, any::<bool>()).prop_map(|(local, server, display_name, bare)| {
        BotNames {
            // A user id without the `@`, as a misconfiguration might leave it.
            user_id: if bare {
                format!("{local}:{server}")
            } else {
                format!("@{local}:{server}")
            },
            display_name,
        }
    })
}

fn addressing() -> impl Strategy<Value = Addressing> {
    (any::<bool>(), any::<bool>()).prop_map(|(mentions_bot, is_direct)| Addressing {
        mentions_bot,
        is_direct,
    })
}

fn spaces() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![" ", "\t", "\n", "\u{a0}", "\u{3000}", "\u{2028}"]),
        1..3,
    )
    .prop_map(|parts| parts.concat())
}

fn flip_case(word: &str, flips: &[bool]) -> String {
    word.chars()
        .zip(flips.iter().cycle())
        .map(|(c, flip)| {
            if *flip {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Arbitrary bodies, some starting like a command or an address.
fn body(names: &BotNames) -> BoxedStrategy<String> {
    let mut heads = vec![
        "!poe".to_owned(),
        "/POE".to_owned(),
        "!poe".to_owned(),
        names.user_id.clone(),
        names.localpart().to_owned(),
    ];
    heads.extend(names.display_name.clone());
    let head = prop::sample::select(heads);
    let tail = prop::sample::select(vec!["", ":", ",", " ", "x", "é", "\u{200f}"]);
    prop_oneof![
        any::<String>(),
        hostile_string(),
        (prop::option::of(spaces()), head, tail, hostile_string()).prop_map(
            |(lead, head, tail, rest)| {
                format!("{}{head}{tail}{rest}", lead.unwrap_or_default())
            }
        ),
    ]
    .boxed()
}

fn arbitrary_case(
    names: &BotNames,
    text: &str,
    addressing: Addressing,
) -> Result<(), TestCaseError> {
    let got = classify(text, names, addressing);
    match &got {
        Some((Invocation::Command, command)) => {
            prop_assert_eq!(command.trim(), command.as_str());
            let first = command.split_whitespace().next().unwrap_or("");
            prop_assert!(first.is_empty() || is_subcommand(first), "{:?}", command);
        }
        Some((Invocation::Message, question)) => {
            prop_assert!(!question.is_empty());
            prop_assert_eq!(question.trim(), question.as_str());
            prop_assert!(text.contains(question.as_str()));
        }
        None => {
            prop_assert!(!addressing.mentions_bot && !addressing.is_direct);
        }
        Some((other, _)) => prop_assert!(false, "a message's trigger gave {:?}", other),
    }
    if got.is_some() && !addressing.mentions_bot && !addressing.is_direct {
        // Taken in a group only when it starts with the prefix or one of the bot's names.
        let lower = text.trim_start().to_lowercase();
        let mut heads = vec![
            "!poe".to_owned(),
            "/poe".to_owned(),
            names.user_id.to_lowercase(),
            names.localpart().to_lowercase(),
        ];
        heads.extend(names.display_name.iter().map(|name| name.to_lowercase()));
        let named = heads
            .iter()
            .any(|head| lower.starts_with(head.as_str()) || lower.starts_with(&format!("@{head}")));
        prop_assert!(named, "{:?}", text);
    }
    Ok(())
}

fn command_case(
    prefix: &str,
    sub: &str,
    flips: &[bool],
    (lead, gap, between, trail): (String, String, String, String),
    args: Option<&str>,
    named: bool,
    addressing: Addressing,
) -> Result<(), TestCaseError> {
    let names = BotNames {
        user_id: "@poe:example.org".into(),
        display_name: Some("Poe Bot".into()),
    };
    let mut command = flip_case(sub, flips);
    if let Some(args) = args {
        command.push_str(&between);
        command.push_str(args);
    }
    let name = if named { "Poe Bot: " } else { "" };
    let prefix = flip_case(prefix, flips);
    let text = format!("{lead}{name}{prefix}{gap}{command}{trail}");
    let wanted = Some((Invocation::Command, command));
    prop_assert_eq!(classify(&text, &names, addressing), wanted, "{:?}", text);
    Ok(())
}

fn address_case(
    names: &BotNames,
    how: u8,
    separator: &str,
    question: &str,
    flips: &[bool],
) -> Result<(), TestCaseError> {
    let name = match how {
        0 => names.user_id.clone(),
        1 => names.localpart().to_owned(),
        2 => format!("@{}", names.localpart()),
        _ => match names.display_name.clone().filter(|name| !name.is_empty()) {
            Some(name) => name,
            None => names.user_id.clone(),
        },
    };
    let text = format!("{}{separator}{question}", flip_case(&name, flips));
    // A longer candidate that is itself a prefix of the text would be read first.
    let longer = [Some(names.user_id.clone()), names.display_name.clone()]
        .into_iter()
        .flatten()
        .filter(|other| other.len() > name.len())
        .any(|other| {
            text.get(..other.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(&other))
        });
    // The body is trimmed first, so a name with spaces at its ends is never matched.
    prop_assume!(name.trim() == name);
    prop_assume!(!longer && !name.contains([':', ',']) || name == names.user_id);
    let group = Addressing {
        mentions_bot: false,
        is_direct: false,
    };
    let wanted = Some((Invocation::Message, question.to_owned()));
    prop_assert_eq!(classify(&text, names, group), wanted, "{:?}", text);
    Ok(())
}

fn fallback_case(
    quoted: &[(String, String)],
    reply: &str,
    arbitrary: &str,
) -> Result<(), TestCaseError> {
    let mut fallback = String::from("> ");
    for (index, (lead, line)) in quoted.iter().enumerate() {
        if index > 0 {
            fallback.push('\n');
            fallback.push_str(if lead == ">" { ">" } else { "> " });
        }
        fallback.push_str(line);
    }
    let body = format!("{fallback}\n\n{reply}");
    prop_assert_eq!(strip_reply_fallback(&body), reply);
    let quoted_arbitrary = format!("> {arbitrary}");
    let fallback_then_text = format!("{fallback}\n{arbitrary}");
    for body in [arbitrary, &quoted_arbitrary, &fallback_then_text] {
        let stripped = strip_reply_fallback(body);
        prop_assert!(body.ends_with(stripped));
        if !body.starts_with("> ") {
            prop_assert_eq!(stripped, body);
        }
        if stripped != body {
            // What went is quoted lines and the blank line after them.
            let cut = &body[..body.len() - stripped.len()];
            let lines = cut.strip_suffix("\n\n");
            prop_assert!(lines.is_some(), "{:?}", cut);
            let quoted = lines.unwrap().split('\n').all(|line| line.starts_with('>'));
            prop_assert!(quoted, "{:?}", cut);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any body: no panic; a command is trimmed and is help, a subcommand or empty; a
    /// question is trimmed and not empty; a mention or a direct room always gets an
    /// answer; a body that names nobody and is no command, in a group, gets none.
    #[test]
    fn fuzz_matrix_classify_arbitrary(
        (names, text) in names().prop_flat_map(|names| {
            let body = body(&names);
            (Just(names), body)
        }),
        addressing in addressing(),
    ) {
        arbitrary_case(&names, &text, addressing)?;
    }

    /// `!poe <sub> …` and `/poe <sub> …`, with any spacing and any case, perhaps after the
    /// bot's name: the command, trimmed, whoever and wherever.
    #[test]
    fn fuzz_matrix_commands_round_trip(
        prefix in prop::sample::select(vec!["!poe", "/poe"]),
        sub in prop::sample::select(SUBCOMMANDS.to_vec()),
        flips in prop::collection::vec(any::<bool>(), 1..6),
        (lead, gap, between, trail) in (
            prop::option::of(spaces()),
            spaces(),
            spaces(),
            prop::option::of(spaces()),
        ),
        args in prop::option::of("[^\\s]([^\u{0}]{0,20}[^\\s])?"),
        named in any::<bool>(),
        addressing in addressing(),
    ) {
        let spacing = (lead.unwrap_or_default(), gap, between, trail.unwrap_or_default());
        command_case(prefix, sub, &flips, spacing, args.as_deref(), named, addressing)?;
    }

    /// "name: question", "@user:server question" and the like: the question, trimmed.
    #[test]
    fn fuzz_matrix_addresses_round_trip(
        names in names(),
        how in 0u8..4,
        separator in prop::sample::select(vec![":", ",", ": ", ",\n"]),
        question in "[^\\s!/]([^\u{0}]{0,30}[^\\s])?",
        flips in prop::collection::vec(any::<bool>(), 1..6),
    ) {
        address_case(&names, how, separator, &question, &flips)?;
    }

    /// Reply fallbacks: what follows a well-formed one is the reply; anything else is kept
    /// whole; the result is always the body or its end.
    #[test]
    fn fuzz_matrix_reply_fallback(
        quoted in prop::collection::vec(("[> ]", "[^\n]{0,30}"), 1..5),
        reply in prop_oneof![hostile_string(), any::<String>()],
        arbitrary in any::<String>(),
    ) {
        fallback_case(&quoted, &reply, &arbitrary)?;
    }
}
