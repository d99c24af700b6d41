//! What the fuzz targets share: their fixed-seed configuration, generators of hostile text
//! and arbitrary or mutated JSON, and the check that an error is in plain words. Each target
//! lives in a `fuzz.rs` beside the parser it drives (`src/poe/sse/fuzz.rs`, …).

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{Map, Value};

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

/// What `lenient::int` reads, written out independently.
pub(crate) fn expected_int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(number) => Some(match number.as_i64() {
            Some(int) => int,
            None => number.as_f64()? as i64,
        }),
        Value::String(text) => text.trim().parse::<f64>().ok().map(|float| float as i64),
        _ => None,
    }
}
