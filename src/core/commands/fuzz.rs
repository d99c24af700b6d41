//! Fuzz targets for the command parser: arbitrary text (control characters, right-to-left
//! marks, huge words, every kind of Unicode whitespace), and every command written out and read
//! back, with any surrounding and separating whitespace and any letter case. The generators and
//! checks shared by the crate's other fuzz targets live here too.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::Map;

/// `cases` cases, nothing persisted, and a fixed seed so that CI runs the same cases every
/// time (set `PROPTEST_RNG_SEED` to explore others).
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        default.rng_seed
    } else {
        RngSeed::Fixed(0x5eed_f022)
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..default
    }
}

/// What the type names of Rust and of this crate look like in a message.
const RAW_NAMES: &[&str] = &[
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "usize",
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "isize",
    "f32",
    "f64",
    "String",
    "Vec",
    "Option",
    "Box",
    "Map",
    "Value",
    "HashMap",
    "BTreeMap",
    "Chunk",
    "ChunkChoice",
    "Delta",
    "Completion",
    "CompletionChoice",
    "CompletionMessage",
    "Usage",
    "PromptTokensDetails",
    "CompletionTokensDetails",
    "OutputFile",
    "ErrorEvent",
    "ErrorObject",
    "ErrorBody",
    "PoeError",
    "SseEvent",
    "ModelList",
    "ModelInfo",
    "Architecture",
    "Pricing",
    "ContextWindow",
    "ParameterSpec",
    "Balance",
    "HistoryPage",
    "HistoryEntry",
];

/// Every string in `value`, keys included: what a message may quote from the input.
pub(crate) fn strings_in(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(text) => found.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings_in(item, found)),
        Value::Object(map) => {
            for (key, item) in map {
                found.push(key.clone());
                strings_in(item, found);
            }
        }
        _ => {}
    }
}

/// Every string a message may quote from JSON text: the strings of what parses, and every
/// string literal in it even where the rest does not parse.
pub(crate) fn foreign_strings(text: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(value) = serde_json::from_slice::<Value>(text) {
        strings_in(&value, &mut found);
    }
    let mut at = 0;
    while let Some(start) = text[at..].iter().position(|b| *b == b'"').map(|i| at + i) {
        let mut end = start + 1;
        while end < text.len() && text[end] != b'"' {
            end += if text[end] == b'\\' { 2 } else { 1 };
        }
        let Some(literal) = text.get(start..=end) else {
            break;
        };
        if let Ok(string) = serde_json::from_slice::<String>(literal) {
            found.push(string);
        }
        at = end + 1;
    }
    found
}

/// Panics unless `text` reads as plain words once what it quotes from the input
/// (`foreign`, raw, as serde quotes it, or cut short as error details are) is taken out:
/// not empty, and no struct dump, no `Some(…)`/`None`, no Rust or crate type name.
pub(crate) fn assert_plain_words(text: &str, foreign: &[String]) {
    assert!(!text.trim().is_empty(), "an empty message");
    let mut quoted: Vec<String> = Vec::new();
    for item in foreign.iter().filter(|item| !item.is_empty()) {
        quoted.push(format!("{item:?}"));
        let cut: String = item.chars().take(300).collect();
        quoted.push(format!("{cut}…"));
        quoted.push(item.clone());
    }
    quoted.sort_by_key(|item| std::cmp::Reverse(item.len()));
    let mut ours = text.to_owned();
    for item in &quoted {
        if ours.contains(item.as_str()) {
            ours = ours.replace(item.as_str(), "\u{1}");
        }
    }
    for bad in [
        "{", "}", "Some(", "None", "struct ", "enum ", "tuple ", "::", "\\u{",
    ] {
        assert!(
            !ours.contains(bad),
            "{bad:?} in a message: {text:?} (without the input's words: {ours:?})"
        );
    }
    for word in ours.split(|c: char| !c.is_alphanumeric() && c != '_') {
        assert!(
            !RAW_NAMES.contains(&word),
            "the type name {word:?} in a message: {text:?}"
        );
    }
}

pub(crate) const KEY: &str = "sk-FUZZ-KEY-0123456789";

/// A string that a hostile or broken server may send.
pub(crate) fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-zA-Z0-9 .,:!?-]{0,12}",
        3 => any::<String>(),
        2 => "[\u{0}-\u{1f}\u{7f}\u{85}\u{200d}\u{200f}\u{202e}\u{feff}\"\\\\{}`<>]{0,10}",
        1 => Just("e\u{301}\u{301}👨\u{200d}👩\u{200d}👧 مرحبا \u{202e}txt.exe".to_owned()),
        1 => (0usize..20_000).prop_map(|n| "\u{fffd}x{".repeat(n / 5)),
        1 => Just(KEY.to_owned()),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
pub(crate) fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        Just(Value::from(-1)),
        Just(Value::from(0)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((hostile_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Usually a value of the right kind (`good`), sometimes one of any kind, sometimes
/// missing (`None`).
pub(crate) fn field(good: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => good.prop_map(Some),
        2 => any_json().prop_map(Some),
        1 => Just(None),
    ]
}

pub(crate) fn text_value() -> BoxedStrategy<Value> {
    hostile_string().prop_map(Value::String).boxed()
}

pub(crate) fn object(
    fields: Vec<(&'static str, Option<Value>)>,
    extra: Vec<(String, Value)>,
) -> Value {
    let mut map = Map::new();
    for (key, value) in extra {
        map.insert(key, value);
    }
    for (key, value) in fields {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }
    Value::Object(map)
}

/// Every JSON pointer into `value`, the root included.
fn pointers(value: &Value, at: String, found: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{index}"), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                pointers(item, format!("{at}/{key}"), found);
            }
        }
        _ => {}
    }
    found.push(at);
}

/// `value` with one node, anywhere in it, removed or replaced by any JSON.
pub(crate) fn mutate_one(value: Value) -> BoxedStrategy<Value> {
    let mut found = Vec::new();
    pointers(&value, String::new(), &mut found);
    (prop::sample::select(found), any::<bool>(), any_json())
        .prop_map(move |(pointer, remove, replacement)| {
            let mut value = value.clone();
            let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", ""));
            let key = key.replace("~1", "/").replace("~0", "~");
            match value.pointer_mut(parent) {
                Some(Value::Object(map)) if remove && !pointer.is_empty() => {
                    map.remove(&key);
                }
                Some(Value::Array(items)) if remove && !pointer.is_empty() => {
                    if let Ok(index) = key.parse::<usize>() {
                        items.remove(index);
                    }
                }
                _ => {
                    if let Some(node) = value.pointer_mut(&pointer) {
                        *node = replacement;
                    }
                }
            }
            value
        })
        .boxed()
}

/// Half the time `value` as it is, half the time with one node removed or replaced.
pub(crate) fn sometimes_mutated(values: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    values
        .prop_flat_map(|value| prop_oneof![Just(value.clone()), mutate_one(value)])
        .boxed()
}

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
