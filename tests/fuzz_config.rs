//! Fuzz targets for the configuration loader (`Config::load`): arbitrary bytes and TOML-looking
//! text, real keys given values of the wrong type, negative, huge or out of range, secrets
//! anywhere, valid settings written in every TOML style, and `POE_RELAY__…` overrides.
//!
//! The loader never reads the process environment: overrides are passed to it as a list, so
//! these tests set no environment variable and can run in parallel. Each case writes its own
//! file in a temporary directory. Case counts are bounded and the seed is fixed, so CI runs the
//! same cases every time (set `PROPTEST_RNG_SEED` to explore others).

use std::path::{Path, PathBuf};

use poe_relay::config::{BudgetPeriod, Config, ConfigError, LogFormat};
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};

fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        default.rng_seed
    } else {
        RngSeed::Fixed(0x5eed_c0f1)
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..default
    }
}

/// A configuration file in a directory of its own, rewritten for each case.
struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl File {
    fn new() -> File {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("poe-relay.toml");
        File { _dir: dir, path }
    }

    fn load(&self, contents: &[u8], env: &[(String, String)]) -> Result<Config, ConfigError> {
        std::fs::write(&self.path, contents).expect("the file is written");
        Config::load(Some(&self.path), env.iter().cloned())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

thread_local! {
    static FILE: File = File::new();
}

fn load(contents: &[u8], env: &[(String, String)]) -> (Result<Config, ConfigError>, PathBuf) {
    FILE.with(|file| (file.load(contents, env), file.path().to_owned()))
}

/// Takes out what an error quotes from the input: the lines of source it shows under a TOML
/// parse error, and values in quotes or backticks.
fn without_quotes(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let gutter = trimmed.trim_start_matches(|c: char| c.is_ascii_digit());
        if gutter.starts_with('|') || gutter.starts_with(" |") {
            continue;
        }
        let mut quote = None;
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None if c == '"' || c == '`' => quote = Some(c),
                None => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// An error reads as plain words: not empty, and, outside what it quotes from the input, no
/// struct dump, no `Some(…)`/`None`, no Rust path or type name, no `{:?}` escapes.
fn assert_plain(err: &ConfigError, path: &Path) {
    let text = err.to_string();
    assert!(!text.trim().is_empty(), "an empty error");
    let ours = without_quotes(&text.replace(&path.display().to_string(), "FILE"));
    for bad in [
        "{", "}", "Some(", "None", "struct ", "enum ", "::", "\\u{", "Error(", "Config {",
    ] {
        assert!(!ours.contains(bad), "{bad:?} in the error: {text}");
    }
    for word in ours.split(|c: char| !c.is_alphanumeric() && c != '_') {
        assert!(
            ![
                "u8",
                "u16",
                "u32",
                "u64",
                "usize",
                "i32",
                "i64",
                "f64",
                "String",
                "Vec",
                "Option",
                "PathBuf",
                "PoeConfig",
                "ChatConfig",
                "ModelConfig",
            ]
            .contains(&word),
            "the type name {word:?} in the error: {text}"
        );
    }
    if let ConfigError::Invalid(problems) = err {
        assert!(!problems.is_empty());
        for problem in problems {
            assert!(
                !problem.key.is_empty() && !problem.problem.trim().is_empty(),
                "{problem:?}"
            );
        }
    }
}

/// The sections; a scalar in place of one is refused in words that name a Rust type (see
/// `a_scalar_where_a_table_belongs_names_no_rust_type`), so the generators below do not do that.
const SECTIONS: &[&str] = &[
    "poe", "log", "chat", "budget", "store", "matrix", "discord", "service",
];

/// Every key the loader reads, with the kind of value it takes.
const KEYS: &[(&str, &str, Kind)] = &[
    ("poe", "base_url", Kind::Url),
    ("poe", "upload_url", Kind::Url),
    ("poe", "default_transport", Kind::Transport),
    ("poe", "requests_per_minute", Kind::U32),
    ("poe", "connect_timeout_secs", Kind::U64),
    ("poe", "idle_timeout_secs", Kind::U64),
    ("poe", "request_timeout_secs", Kind::U64),
    ("poe", "max_attempts", Kind::U32),
    ("poe", "initial_backoff_ms", Kind::U64),
    ("poe", "max_backoff_ms", Kind::U64),
    ("poe", "retry_budget_secs", Kind::U64),
    ("poe", "max_event_bytes", Kind::U64),
    ("poe", "max_answer_bytes", Kind::U64),
    ("poe", "models", Kind::Models),
    ("log", "format", Kind::LogFormat),
    ("log", "filter", Kind::Text),
    ("chat", "default_model", Kind::Text),
    ("chat", "max_concurrent_replies", Kind::U64),
    ("chat", "history_max_turns", Kind::U64),
    ("chat", "history_max_chars", Kind::U64),
    ("chat", "history_retention_days", Kind::U64),
    ("chat", "max_output_tokens", Kind::U32),
    ("chat", "max_attachment_bytes", Kind::U64),
    ("chat", "max_question_chars", Kind::U64),
    ("budget", "period", Kind::Period),
    ("budget", "default_points", Kind::I64),
    ("budget", "admins_exempt", Kind::Bool),
    ("budget", "points_per_usd", Kind::F64),
    ("budget", "unpriced_request_points", Kind::I64),
    ("budget", "reconcile_interval_secs", Kind::U64),
    ("budget", "reconcile_after_secs", Kind::U64),
    ("budget", "reconcile_slack_secs", Kind::U64),
    ("budget", "ledger_retention_days", Kind::U64),
    ("store", "path", Kind::Text),
    ("matrix", "enabled", Kind::Bool),
    ("matrix", "homeserver", Kind::Text),
    ("matrix", "user_id", Kind::Text),
    ("matrix", "admins", Kind::Texts),
    ("matrix", "admin_power_level", Kind::I64),
    ("matrix", "max_sends_per_second", Kind::F64),
    ("matrix", "send_burst", Kind::U32),
    ("discord", "enabled", Kind::Bool),
    ("discord", "guilds", Kind::Texts),
    ("discord", "admins", Kind::Texts),
    ("discord", "allow_dms", Kind::Bool),
    ("discord", "max_requests_per_second", Kind::F64),
    ("discord", "api_base", Kind::Text),
    ("service", "shutdown_grace_secs", Kind::U64),
    ("service", "http_enabled", Kind::Bool),
    ("service", "http_listen", Kind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    U32,
    U64,
    I64,
    F64,
    Bool,
    Text,
    Texts,
    Url,
    Transport,
    LogFormat,
    Period,
    Models,
}

/// A TOML string literal for any text.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ._:/@=-]{0,16}",
        2 => any::<String>(),
        1 => "[\u{0}-\u{1f}\u{7f}\u{202e}\u{200f}\"\\\\{}\\[\\]#=]{0,8}",
        1 => (1usize..20_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// A TOML value of any kind.
fn any_toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        hostile_text().prop_map(|text| toml_string(&text)),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "-0",
            "+1",
            "1_000",
            "0x7fffffffffffffff",
            "-9223372036854775808",
            "4294967296",
            "18446744073709551615",
            "1.5",
            "-0.0",
            "1e308",
            "inf",
            "-inf",
            "nan",
            "true",
            "false",
            "1979-05-27T07:32:00Z",
            "[]",
            "{}",
            "''",
            "'''x'''",
        ])
        .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|pairs| {
                let pairs: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                format!("{{ {} }}", pairs.join(", "))
            }),
        ]
    })
}

/// Text that is TOML-shaped but may be broken anywhere.
fn toml_text() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        3 => prop::sample::select(KEYS.iter().map(|(_, key, _)| *key).collect::<Vec<_>>())
            .prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "api_key", "token", "password", "access_token", "bogus", "", "a.b", "\"q\"",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
    ];
    let line = prop_oneof![
        4 => (key, any_toml_value()).prop_map(|(key, value)| format!("{key} = {value}")),
        2 => prop::sample::select(SECTIONS.to_vec()).prop_map(|section| format!("[{section}]")),
        1 => Just("[[poe.models]]".to_owned()),
        1 => Just("[discord.access]".to_owned()),
        1 => prop::sample::select(vec![
            "# comment", "", "[", "=", "a = ", "[poe", "\"", "x = \"\\q\"",
        ])
        .prop_map(str::to_owned),
    ];
    let text = (
        prop::collection::vec(line, 0..16),
        prop::sample::select(vec!["\n", "\r\n"]),
    )
        .prop_map(|(lines, end)| lines.join(end).into_bytes());
    prop_oneof![
        6 => text,
        1 => prop::collection::vec(any::<u8>(), 0..128),
        1 => Just(b"\xEF\xBB\xBF[poe]\nmax_attempts = 2\n".to_vec()),
        1 => Just(b"[poe]\nbase_url = \"\xFF\"\n".to_vec()),
        1 => Just(format!("{}x = 1{}", "[".repeat(2000), "]".repeat(2000)).into_bytes()),
    ]
}

/// A setting that no other key constrains, with a valid value, the TOML for it, and what the
/// loaded configuration must hold.
#[derive(Debug, Clone)]
struct Setting {
    section: &'static str,
    key: &'static str,
    toml: String,
    env: String,
    expect: Expect,
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Int(i128),
    Float(u64),
    Bool(bool),
    Text(String),
    Period(BudgetPeriod),
    Format(LogFormat),
}

fn read(config: &Config, section: &str, key: &str) -> Expect {
    let c = config;
    match (section, key) {
        ("poe", "requests_per_minute") => Expect::Int(c.poe.requests_per_minute.into()),
        ("poe", "max_attempts") => Expect::Int(c.poe.max_attempts.into()),
        ("chat", "default_model") => Expect::Text(c.chat.default_model.clone()),
        ("chat", "max_concurrent_replies") => Expect::Int(c.chat.max_concurrent_replies as i128),
        ("chat", "history_max_turns") => Expect::Int(c.chat.history_max_turns as i128),
        ("chat", "history_max_chars") => Expect::Int(c.chat.history_max_chars as i128),
        ("chat", "history_retention_days") => Expect::Int(c.chat.history_retention_days.into()),
        ("chat", "max_output_tokens") => Expect::Int(c.chat.max_output_tokens.into()),
        ("chat", "max_attachment_bytes") => Expect::Int(c.chat.max_attachment_bytes.into()),
        ("budget", "default_points") => Expect::Int(c.budget.default_points.into()),
        ("budget", "unpriced_request_points") => {
            Expect::Int(c.budget.unpriced_request_points.into())
        }
        ("budget", "admins_exempt") => Expect::Bool(c.budget.admins_exempt),
        ("budget", "points_per_usd") => Expect::Float(c.budget.points_per_usd.to_bits()),
        ("budget", "period") => Expect::Period(c.budget.period),
        ("budget", "reconcile_interval_secs") => {
            Expect::Int(c.budget.reconcile_interval_secs.into())
        }
        ("log", "format") => Expect::Format(c.log.format),
        ("matrix", "send_burst") => Expect::Int(c.matrix.send_burst.into()),
        ("matrix", "admin_power_level") => Expect::Int(c.matrix.admin_power_level.into()),
        ("discord", "allow_dms") => Expect::Bool(c.discord.allow_dms),
        ("discord", "max_requests_per_second") => {
            Expect::Float(c.discord.max_requests_per_second.to_bits())
        }
        ("service", "shutdown_grace_secs") => Expect::Int(c.service.shutdown_grace_secs.into()),
        ("service", "http_enabled") => Expect::Bool(c.service.http_enabled),
        ("store", "path") => Expect::Text(c.store.path.display().to_string()),
        other => panic!("no reader for {other:?}"),
    }
}

fn int_setting(
    section: &'static str,
    key: &'static str,
    low: i64,
    high: i64,
) -> BoxedStrategy<Setting> {
    (low..=high, any::<bool>())
        .prop_map(move |(n, underscores)| {
            let toml = if underscores && n > 1000 {
                // TOML's digit separators.
                let digits = n.to_string();
                let (head, tail) = digits.split_at(digits.len() - 3);
                format!("{head}_{tail}")
            } else {
                n.to_string()
            };
            Setting {
                section,
                key,
                toml,
                env: n.to_string(),
                expect: Expect::Int(n.into()),
            }
        })
        .boxed()
}

fn setting() -> impl Strategy<Value = Setting> {
    let bool_setting = |section: &'static str, key: &'static str| {
        any::<bool>()
            .prop_map(move |b| Setting {
                section,
                key,
                toml: b.to_string(),
                env: b.to_string(),
                expect: Expect::Bool(b),
            })
            .boxed()
    };
    // Text that looks like a number is left out: an override reads it as a number (see
    // `numeric_looking_text_overrides_keep_their_text`).
    let word = |section: &'static str, key: &'static str| {
        "[a-zA-Z0-9._-]{1,20}"
            .prop_filter("not a number", |text| text.parse::<f64>().is_err())
            .prop_map(move |text| Setting {
                section,
                key,
                toml: toml_string(&text),
                env: text.clone(),
                expect: Expect::Text(text),
            })
            .boxed()
    };
    let u32_max = i64::from(u32::MAX);
    prop_oneof![
        int_setting("poe", "requests_per_minute", 1, u32_max),
        int_setting("poe", "max_attempts", 1, u32_max),
        int_setting("chat", "max_concurrent_replies", 0, i64::MAX),
        int_setting("chat", "history_max_turns", 0, 1_000_000),
        int_setting("chat", "history_max_chars", 0, i64::MAX),
        int_setting("chat", "history_retention_days", 0, 36_500),
        int_setting("chat", "max_output_tokens", 0, u32_max),
        int_setting("chat", "max_attachment_bytes", 0, i64::MAX),
        int_setting("budget", "default_points", i64::MIN, i64::MAX),
        int_setting("budget", "unpriced_request_points", i64::MIN, i64::MAX),
        int_setting("budget", "reconcile_interval_secs", 0, i64::MAX),
        int_setting("matrix", "send_burst", 1, 10_000),
        int_setting("matrix", "admin_power_level", i64::MIN, i64::MAX),
        int_setting("service", "shutdown_grace_secs", 0, 3600),
        bool_setting("budget", "admins_exempt"),
        bool_setting("discord", "allow_dms"),
        bool_setting("service", "http_enabled"),
        word("chat", "default_model"),
        word("store", "path"),
        prop::num::f64::NORMAL.prop_map(|f| Setting {
            section: "budget",
            key: "points_per_usd",
            toml: format!("{f:?}"),
            env: format!("{f:?}"),
            expect: Expect::Float(f.to_bits()),
        }),
        (1u32..=50).prop_map(|n| Setting {
            section: "discord",
            key: "max_requests_per_second",
            toml: format!("{n}.0"),
            env: format!("{n}.0"),
            expect: Expect::Float(f64::from(n).to_bits()),
        }),
        (
            prop::sample::select(vec!["day", "week", "month"]),
            prop::collection::vec(any::<bool>(), 1..5)
        )
            .prop_map(|(name, flips)| {
                let typed: String = name
                    .chars()
                    .zip(flips.iter().cycle())
                    .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                    .collect();
                let period = match name {
                    "day" => BudgetPeriod::Day,
                    "week" => BudgetPeriod::Week,
                    _ => BudgetPeriod::Month,
                };
                Setting {
                    section: "budget",
                    key: "period",
                    toml: toml_string(&typed),
                    env: typed,
                    expect: Expect::Period(period),
                }
            }),
        prop::sample::select(vec![
            ("text", LogFormat::Text),
            ("JSON", LogFormat::Json),
            ("Json", LogFormat::Json)
        ])
        .prop_map(|(name, format)| Setting {
            section: "log",
            key: "format",
            toml: toml_string(name),
            env: name.to_owned(),
            expect: Expect::Format(format),
        }),
    ]
}

/// Writes `settings` as TOML in one of its styles: section tables, dotted keys, inline tables.
fn render(settings: &[Setting], style: u8, end: &str) -> String {
    let mut out = format!("# written by the fuzz target{end}");
    match style % 3 {
        0 => {
            for section in SECTIONS {
                let here: Vec<&Setting> =
                    settings.iter().filter(|s| s.section == *section).collect();
                if !here.is_empty() {
                    out.push_str(&format!("{end}[{section}]  # a section{end}"));
                    for setting in here {
                        out.push_str(&format!("  {} =\t{}{end}", setting.key, setting.toml));
                    }
                }
            }
        }
        1 => {
            for setting in settings {
                out.push_str(&format!(
                    "{}.{} = {}{end}",
                    setting.section, setting.key, setting.toml
                ));
            }
        }
        _ => {
            for section in SECTIONS {
                let here: Vec<String> = settings
                    .iter()
                    .filter(|s| s.section == *section)
                    .map(|s| format!("{} = {}", s.key, s.toml))
                    .collect();
                if !here.is_empty() {
                    out.push_str(&format!("{section} = {{ {} }}{end}", here.join(", ")));
                }
            }
        }
    }
    out
}

/// Keeps the last setting of each key (a TOML file may not repeat one).
fn distinct(settings: Vec<Setting>) -> Vec<Setting> {
    let mut out: Vec<Setting> = Vec::new();
    for setting in settings.into_iter().rev() {
        if !out
            .iter()
            .any(|s| s.section == setting.section && s.key == setting.key)
        {
            out.push(setting);
        }
    }
    out
}

/// A value a key of this kind can never take, and whether the loader names the key when it
/// refuses it (see the ignored tests at the end for where it does not).
fn wrong_value(kind: Kind) -> BoxedStrategy<String> {
    let structured = prop_oneof![
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("[]".to_owned())
    ];
    match kind {
        Kind::U32 => prop_oneof![
            (i64::MIN..0).prop_map(|n| n.to_string()),
            (i64::from(u32::MAX) + 1..=i64::MAX).prop_map(|n| n.to_string()),
            "[a-z]{1,8}".prop_map(|t| toml_string(&t)),
            structured,
        ]
        .boxed(),
        Kind::U64 => prop_oneof![
            (i64::MIN..0).prop_map(|n| n.to_string()),
            "[a-z]{1,8}".prop_map(|t| toml_string(&t)),
            structured,
        ]
        .boxed(),
        // Text the `config` crate would read as a number or a boolean is left out.
        Kind::I64 | Kind::F64 => prop_oneof![
            "[a-z]{1,8}"
                .prop_filter("not a number", |t| t.parse::<f64>().is_err())
                .prop_map(|t| toml_string(&t)),
            structured,
        ]
        .boxed(),
        Kind::Bool => prop_oneof![
            "[a-z]{2,8}"
                .prop_filter("not a boolean", |t| ![
                    "true", "false", "on", "off", "yes", "no"
                ]
                .contains(&t.as_str()))
                .prop_map(|t| toml_string(&t)),
            structured,
        ]
        .boxed(),
        Kind::Text | Kind::Url => structured.boxed(),
        Kind::Texts => prop_oneof![
            Just("{ a = 1 }".to_owned()),
            Just("[[1]]".to_owned()),
            Just("[{ a = 1 }]".to_owned())
        ]
        .boxed(),
        Kind::Transport | Kind::LogFormat | Kind::Period => prop_oneof![
            "[a-z]{1,8}"
                .prop_filter("not a valid name", |t| {
                    !["native", "openai", "text", "json", "day", "week", "month"]
                        .contains(&t.as_str())
                })
                .prop_map(|t| toml_string(&t)),
            structured,
        ]
        .boxed(),
        Kind::Models => prop_oneof![
            Just("5".to_owned()),
            Just("\"x\"".to_owned()),
            // `[1]` is refused in words that name a Rust type (see
            // `a_scalar_where_a_table_belongs_names_no_rust_type`).
            Just("[{ transport = \"native\" }]".to_owned()),
            Just("[{ name = \"a\", transport = \"carrier pigeon\" }]".to_owned()),
            Just("[{ name = \"a\", bogus = 1 }]".to_owned()),
            Just("[{ name = \"a\" }, { name = \"A\" }]".to_owned()),
            Just("[{ name = \"a\", parameters = { model = \"x\" } }]".to_owned()),
        ]
        .boxed(),
    }
}

/// Values that parse but that the loader's checks refuse.
const OUT_OF_RANGE: &[(&str, &str, &str)] = &[
    ("poe", "requests_per_minute", "0"),
    ("poe", "max_attempts", "0"),
    ("poe", "connect_timeout_secs", "0"),
    ("poe", "idle_timeout_secs", "0"),
    ("poe", "connect_timeout_secs", "86401"),
    ("poe", "max_event_bytes", "1023"),
    ("poe", "base_url", "\"ftp://example.org\""),
    ("poe", "base_url", "\"not a url\""),
    ("chat", "history_retention_days", "36501"),
    ("budget", "ledger_retention_days", "34"),
    ("budget", "ledger_retention_days", "9223372036854775807"),
    ("matrix", "send_burst", "0"),
    ("matrix", "send_burst", "10001"),
    ("matrix", "max_sends_per_second", "-0.5"),
    ("matrix", "max_sends_per_second", "1e9"),
    ("matrix", "max_sends_per_second", "nan"),
    ("matrix", "admins", "[\"alice\"]"),
    ("discord", "max_requests_per_second", "0.5"),
    ("discord", "max_requests_per_second", "inf"),
    ("discord", "guilds", "[\"12ab\"]"),
    ("discord", "guilds", "[\"0\"]"),
    ("discord", "api_base", "\"ws://example.org\""),
    ("service", "shutdown_grace_secs", "3601"),
    ("service", "http_listen", "\"localhost\""),
    ("log", "filter", "\"[[[\""),
];

fn env_name(section: &str, key: &str) -> String {
    format!(
        "POE_RELAY__{}__{}",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

fn overrides_of(settings: &[Setting]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|s| (env_name(s.section, s.key), s.env.clone()))
        .collect()
}

fn override_strategy() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        prop::sample::select(KEYS.to_vec()).prop_map(|(section, key, _)| env_name(section, key)),
        "POE_RELAY__[A-Z_]{0,12}",
        "[A-Z_]{1,12}",
    ];
    let value = prop_oneof![
        hostile_text(),
        Just("-1".to_owned()),
        Just("[1]".to_owned()),
        Just("true".to_owned()),
    ];
    (name, value)
}

fn arbitrary_case(contents: &[u8], env: Vec<(String, String)>) {
    // An override of a whole section is refused in words that name a Rust type (see
    // `a_scalar_where_a_table_belongs_names_no_rust_type`); leave those out.
    let whole_section = |key: &str| {
        SECTIONS
            .iter()
            .any(|section| key.eq_ignore_ascii_case(&format!("POE_RELAY__{section}")))
    };
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(key, _)| !whole_section(key))
        .collect();
    let (result, path) = load(contents, &env);
    if let Err(err) = result {
        assert_plain(&err, &path);
    }
}

fn round_trip_case(
    settings: &[Setting],
    style: u8,
    end: &str,
    overrides: &[Setting],
) -> Result<(), TestCaseError> {
    let text = render(settings, style, end);
    let (result, path) = load(text.as_bytes(), &[]);
    let loaded = match result {
        Ok(loaded) => loaded,
        Err(err) => {
            assert_plain(&err, &path);
            panic!("valid settings were refused: {err}\n{text}");
        }
    };
    for s in settings {
        prop_assert_eq!(
            read(&loaded, s.section, s.key),
            s.expect.clone(),
            "{}",
            text
        );
    }
    // The same through the environment, over an empty file.
    let env = overrides_of(settings);
    let (result, _) = load(b"", &env);
    let from_env = result.unwrap_or_else(|err| panic!("valid overrides were refused: {err}"));
    for s in settings {
        prop_assert_eq!(
            read(&from_env, s.section, s.key),
            s.expect.clone(),
            "{:?}",
            env
        );
    }
    // Overrides beat the file.
    let (result, _) = load(text.as_bytes(), &overrides_of(overrides));
    let both = result.unwrap_or_else(|err| panic!("valid overrides were refused: {err}"));
    for s in settings {
        let winner = overrides
            .iter()
            .find(|o| o.section == s.section && o.key == s.key)
            .unwrap_or(s);
        prop_assert_eq!(read(&both, s.section, s.key), winner.expect.clone());
    }
    Ok(())
}

fn wrong_value_case(
    (section, key, value): (&'static str, &'static str, String),
    others: Vec<Setting>,
    style: u8,
) -> Result<(), TestCaseError> {
    let mut settings: Vec<Setting> = others
        .into_iter()
        .filter(|s| !(s.section == section && s.key == key))
        .collect();
    // Rendered like the others; what it would load as does not matter.
    settings.push(Setting {
        section,
        key,
        toml: value.clone(),
        env: String::new(),
        expect: Expect::Bool(false),
    });
    let text = render(&settings, style, "\n");
    let (result, path) = load(text.as_bytes(), &[]);
    let err = match result {
        Ok(_) => panic!("accepted {section}.{key} = {value}"),
        Err(err) => err,
    };
    assert_plain(&err, &path);
    let shown = err.to_string();
    let named = shown.contains(&format!("{section}.{key}"));
    prop_assert!(named, "{:?} does not name {}.{}", shown, section, key);
    Ok(())
}

fn wrong_value_strategy() -> impl Strategy<Value = (&'static str, &'static str, String)> {
    prop_oneof![
        3 => prop::sample::select(KEYS.to_vec()).prop_flat_map(|(section, key, kind)| {
            wrong_value(kind).prop_map(move |value| (section, key, value))
        }),
        1 => prop::sample::select(OUT_OF_RANGE.to_vec())
            .prop_map(|(section, key, value)| (section, key, value.to_owned())),
    ]
}

const SECRETS: &[(&str, &str)] = &[
    ("api_key", "POE_API_KEY"),
    ("poe_api_key", "POE_API_KEY"),
    ("token", "DISCORD_TOKEN"),
    ("discord_token", "DISCORD_TOKEN"),
    ("password", "MATRIX_PASSWORD"),
    ("access_token", "MATRIX_ACCESS_TOKEN"),
];

fn secret_case(
    (name, variable): (&str, &str),
    section: &str,
    top: bool,
    secret: &str,
) -> Result<(), TestCaseError> {
    let (text, place) = if top {
        (format!("{name} = \"{secret}\"\n"), name.to_owned())
    } else {
        (
            format!("[{section}]\n{name} = \"{secret}\"\n"),
            format!("{section}.{name}"),
        )
    };
    let (result, path) = load(text.as_bytes(), &[]);
    let err = result.expect_err("a secret in the file is refused");
    assert_plain(&err, &path);
    let shown = err.to_string();
    prop_assert!(
        shown.contains(&place) && shown.contains(variable),
        "{}",
        shown
    );
    prop_assert!(!shown.contains(secret), "the secret is quoted: {}", shown);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes, any TOML-shaped text, any overrides: no panic, and an error in plain words.
    #[test]
    fn fuzz_config_arbitrary_text(
        contents in toml_text(),
        env in prop::collection::vec(override_strategy(), 0..3),
    ) {
        arbitrary_case(&contents, env);
    }

    /// Valid settings, in any TOML style and line ending, load as written; the same given as
    /// overrides load the same, and an override beats the file.
    #[test]
    fn fuzz_config_valid_settings_round_trip(
        settings in prop::collection::vec(setting(), 1..8).prop_map(distinct),
        style in any::<u8>(),
        end in prop::sample::select(vec!["\n", "\r\n"]),
        overrides in prop::collection::vec(setting(), 0..3).prop_map(distinct),
    ) {
        round_trip_case(&settings, style, end, &overrides)?;
    }

    /// A real key given a value of the wrong type, negative, too large, or out of range: an
    /// error that names the key, in plain words, also among valid settings.
    #[test]
    fn fuzz_config_wrong_values_are_refused_by_name(
        wrong in wrong_value_strategy(),
        others in prop::collection::vec(setting(), 0..4).prop_map(distinct),
        style in any::<u8>(),
    ) {
        wrong_value_case(wrong, others, style)?;
    }

    /// A secret written into the file, at the top or in any section: refused, naming where it
    /// was and where it belongs, and never quoting it.
    #[test]
    fn fuzz_config_secrets_are_refused(
        secret_key in prop::sample::select(SECRETS.to_vec()),
        section in prop::sample::select(SECTIONS.to_vec()),
        top in any::<bool>(),
        secret in "[A-Za-z0-9]{12,40}",
    ) {
        secret_case(secret_key, section, top, &secret)?;
    }
}

/// Found by the fuzz targets: a scalar where a table belongs was refused with serde's words
/// for the Rust type (`expected struct PoeConfig`).
#[test]
fn a_scalar_where_a_table_belongs_names_no_rust_type() {
    for text in ["poe = 5\n", "[poe]\nmodels = [1]\n"] {
        let (result, path) = load(text.as_bytes(), &[]);
        assert_plain(&result.expect_err("refused"), &path);
    }
}

/// Found by the fuzz targets: rewriting the `config` crate's `models[0]transport` into
/// `models[0].transport` also rewrote what the error quotes: an override's value (`"[1]."` for
/// `[1]`) and the source line under a TOML parse error (`[poe].` for `[poe]`).
#[test]
fn quoted_input_is_not_mangled_by_the_key_rewriting() {
    let env = vec![("POE_RELAY__POE__MODELS".to_owned(), "[1]".to_owned())];
    let (result, _) = load(b"", &env);
    let shown = result.expect_err("refused").to_string();
    assert!(shown.contains("\"[1]\""), "{shown}");
    let (result, _) = load(b"[poe]\n[poe]\n", &[]);
    let shown = result.expect_err("refused").to_string();
    assert!(!shown.contains("[poe]."), "{shown}");
    // The join itself still reads as the TOML key.
    let (result, _) = load(b"[[poe.models]]\nname = \"x\"\ntransport = 5\n", &[]);
    let shown = result.expect_err("refused").to_string();
    assert!(shown.contains("models[0].transport"), "{shown}");
}
