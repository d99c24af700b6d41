//! Fuzz targets for the command parser: arbitrary text (control characters, right-to-left
//! marks, huge words, every kind of Unicode whitespace), and every command written out and read
//! back, with any surrounding and separating whitespace and any letter case.

use super::*;
use crate::fuzz::*;
use proptest::prelude::*;

/// The fixed refusals; the others quote one word of the input.
const FIXED: &[&str] = &[
    "`usage` takes nothing, or `here` for this room's spending",
    "`budget` takes a user and a number of points (or `default`)",
];
const QUOTING: &[&str] = &[
    "` is not a command",
    "` is not a number of points",
    "` is not `key=value`",
];

/// A refusal is one of the parser's sentences, quoting at most one word of the input.
pub(crate) fn check_refusal(input: &str, reason: &str) {
    if FIXED.contains(&reason) {
        return;
    }
    let quoted = QUOTING
        .iter()
        .find_map(|tail| reason.strip_prefix('`')?.strip_suffix(tail));
    let Some(word) = quoted else {
        panic!("an unknown refusal {reason:?} for {input:?}");
    };
    assert!(
        !word.is_empty() && !word.contains(char::is_whitespace),
        "{reason:?}"
    );
    let lower = input.to_ascii_lowercase();
    assert!(
        input.split_whitespace().any(|w| w == word) || lower.split_whitespace().any(|w| w == word),
        "{word:?} is not a word of {input:?}"
    );
}

fn whitespace() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            " ", "\t", "\n", "\r\n", "\u{b}", "\u{c}", "\u{85}", "\u{a0}", "\u{2003}", "\u{2028}",
            "\u{3000}",
        ]),
        1..4,
    )
    .prop_map(|parts| parts.concat())
}

/// Text without whitespace that a user might type as one word.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.:@<>!=-]{1,12}",
        2 => "[^\\s]{1,8}",
        1 => "[\u{0}-\u{8}\u{e}-\u{1f}\u{7f}\u{200b}-\u{200f}\u{202a}-\u{202e}\u{2066}-\u{2069}\u{feff}`*_]{1,6}",
        1 => (1usize..50_000).prop_map(|n| "w".repeat(n)),
    ]
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                word(),
                whitespace(),
                prop::sample::select(SUBCOMMANDS.to_vec()).prop_map(str::to_owned)
            ],
            0..8
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// A user as the parser keeps it: no whitespace, and nothing `user_id` would strip.
fn user() -> impl Strategy<Value = String> {
    "[a-z0-9@:._-]{1,20}"
}

/// A command, and its words as a user would type them.
fn command() -> impl Strategy<Value = (Command, Vec<String>)> {
    let param = ("[a-z_][a-z0-9_]{0,10}", "[a-zA-Z0-9.:=/_-]{1,10}");
    prop_oneof![
        Just((Command::Help, vec!["help".to_owned()])),
        Just((Command::Balance, vec!["balance".to_owned()])),
        Just((Command::Reset, vec!["reset".to_owned()])),
        Just((Command::Usage { here: false }, vec!["usage".to_owned()])),
        Just((
            Command::Usage { here: true },
            vec!["usage".to_owned(), "HERE".to_owned()]
        )),
        (user(), prop::option::of(0i64..=i64::MAX), any::<bool>()).prop_map(
            |(user, points, mention)| {
                let typed = if mention {
                    format!("<@!{user}>")
                } else {
                    user.clone()
                };
                let points_word = points.map_or("Default".to_owned(), |p| p.to_string());
                (
                    Command::Budget { user, points },
                    vec!["budget".to_owned(), typed, points_word],
                )
            }
        ),
        (
            prop::option::of("[a-zA-Z0-9.:_-]{1,20}"),
            prop::collection::vec(param, 0..4)
        )
            .prop_map(|(name, parameters)| {
                let mut words = vec!["model".to_owned()];
                words.extend(name.clone());
                words.extend(
                    parameters
                        .iter()
                        .map(|(key, value)| format!("{key}={value}")),
                );
                (Command::Model { name, parameters }, words)
            }),
    ]
}

fn flip_case(word: &str, flips: &[bool]) -> String {
    word.chars()
        .zip(flips.iter().cycle())
        .map(|(c, flip)| if *flip { c.to_ascii_uppercase() } else { c })
        .collect()
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text: no panic; a refusal is one of the parser's sentences, quoting at most one
    /// word of the input (so it stays as long as the input, no longer); what parses also
    /// parses with whitespace around it.
    #[test]
    fn fuzz_parse_arbitrary_text(
        input in hostile_text(),
        before in whitespace(),
        after in whitespace(),
    ) {
        let parsed = parse(&input);
        match &parsed {
            Err(reason) => {
                check_refusal(&input, reason);
                prop_assert!(reason.len() <= input.len() + 80);
            }
            Ok(Command::Prompt(PromptChange::Set(text))) => {
                prop_assert!(!text.is_empty() && text.trim() == text);
            }
            Ok(Command::Models { filter: Some(filter) }) => {
                prop_assert!(!filter.is_empty() && filter.trim() == filter)
            }
            Ok(Command::Budget { user, .. }) => {
                prop_assert!(!user.contains(char::is_whitespace))
            }
            Ok(Command::Model { name, parameters }) => {
                prop_assert!(name.iter().all(|name| !name.contains('=') && !name.is_empty()));
                let readable = |(k, v): &(String, String)| {
                    !k.is_empty() && !v.is_empty() && !k.contains('=')
                };
                prop_assert!(parameters.iter().all(readable));
            }
            Ok(_) => {}
        }
        prop_assert_eq!(parse(&format!("{before}{input}{after}")), parsed.clone());
        let _ = is_subcommand(&input);
    }

    /// Every command, written with any whitespace around and between its words and its
    /// subcommand in any case, reads back as itself.
    #[test]
    fn fuzz_parse_round_trips(
        (command, words) in command(),
        separators in prop::collection::vec(whitespace(), 1..8),
        before in prop::option::of(whitespace()),
        after in prop::option::of(whitespace()),
        flips in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let mut text = before.unwrap_or_default();
        for (index, word) in words.iter().enumerate() {
            if index > 0 {
                text.push_str(&separators[index % separators.len()]);
            }
            text.push_str(&if index == 0 { flip_case(word, &flips) } else { word.clone() });
        }
        text.push_str(&after.unwrap_or_default());
        prop_assert_eq!(parse(&text), Ok(command), "{:?}", text);
    }

    /// A prompt or a models filter keeps its text as typed, inner whitespace included.
    #[test]
    fn fuzz_parse_keeps_free_text(
        text in "[^\\s][^\u{0}]{0,40}[^\\s]",
        prompt in any::<bool>(),
        separator in whitespace(),
    ) {
        let sub = if prompt { "prompt" } else { "models" };
        let parsed = parse(&format!("{sub}{separator}{text}"));
        let wanted = if prompt {
            if text.eq_ignore_ascii_case("clear") {
                Command::Prompt(PromptChange::Clear)
            } else {
                Command::Prompt(PromptChange::Set(text.clone()))
            }
        } else {
            Command::Models { filter: Some(text.clone()) }
        };
        prop_assert_eq!(parsed, Ok(wanted));
    }

    /// A mistyped budget or model is refused with the offending word quoted.
    #[test]
    fn fuzz_parse_refuses_bad_arguments(
        user in user(),
        points in prop_oneof![
            "-[1-9][0-9]{0,4}",
            "[a-z]{1,8}",
            "[1-9][0-9]{19,24}",
            Just("1.5".to_owned()),
        ],
        bad in "[a-z]{1,6}",
    ) {
        prop_assume!(!points.eq_ignore_ascii_case("default"));
        let input = format!("budget {user} {points}");
        prop_assert_eq!(parse(&input), Err(format!("`{points}` is not a number of points")));
        let input = format!("model gpt-5 {bad}");
        prop_assert_eq!(parse(&input), Err(format!("`{bad}` is not `key=value`")));
        let input = format!("model a=1 ={bad}");
        prop_assert_eq!(parse(&input), Err(format!("`={bad}` is not `key=value`")));
    }
}
