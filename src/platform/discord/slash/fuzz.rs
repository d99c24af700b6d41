//! Fuzz targets for `/poe`: arbitrary subcommands and options, every subcommand written out
//! and read back by the core's parser, arbitrary JSON shaped like an `INTERACTION_CREATE`
//! payload read by serenity and, when it reads, translated the way the gateway handler does,
//! and model autocomplete over arbitrary ids.

use super::*;
use crate::core::commands::fuzz::check_refusal;
use crate::fuzz::{any_json, config, hostile_string, mutate_one};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn option_value() -> impl Strategy<Value = OptionValue> {
    prop_oneof![
        4 => hostile_string().prop_map(OptionValue::Text),
        1 => any::<i64>().prop_map(OptionValue::Integer),
        1 => any::<f64>().prop_map(OptionValue::Number),
        1 => any::<bool>().prop_map(OptionValue::Boolean),
        1 => any::<u64>().prop_map(OptionValue::Id),
        1 => Just(OptionValue::Other),
    ]
}

const OPTION_NAMES: &[&str] = &[
    "question",
    "here",
    "filter",
    "name",
    "parameters",
    "text",
    "user",
    "points",
];

fn options() -> impl Strategy<Value = Vec<(String, OptionValue)>> {
    let name = prop_oneof![
        4 => prop::sample::select(OPTION_NAMES.to_vec()).prop_map(str::to_owned),
        1 => hostile_string(),
    ];
    prop::collection::vec((name, option_value()), 0..5)
}

fn subcommand() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(
            commands::SUBCOMMANDS
                .iter()
                .chain(&["ask", "ASK", "Budget"])
                .copied()
                .collect::<Vec<_>>(),
        )
        .prop_map(str::to_owned),
        1 => hostile_string(),
    ]
}

/// What holds for any translation: a refusal is one of the known sentences; a question
/// is trimmed and not empty; a command is text the core's parser reads (or refuses in its
/// own words), and its privacy is known.
fn check(subcommand: &str, unreadable: &[String], request: &Request) {
    match request {
        Request::Invalid(reason) => {
            let fixed = [
                "Pick a subcommand, like `/poe ask`.",
                "`/poe ask` needs a question.",
                "The question must be text.",
                "`here` must be true or false.",
            ];
            let quoted = reason
                .strip_prefix("The option `")
                .and_then(|rest| rest.strip_suffix("` has a type this bot does not take."));
            assert!(
                fixed.contains(&reason.as_str())
                    || quoted.is_some_and(|name| unreadable.iter().any(|option| option == name)),
                "an unknown refusal {reason:?}"
            );
            assert!(request.is_private(false) && request.is_private(true));
        }
        Request::Ask(question) => {
            assert!(subcommand.eq_ignore_ascii_case("ask"));
            assert!(!question.is_empty() && question.trim() == question);
            assert!(!request.is_private(false));
        }
        Request::Command(text) => {
            let sub = subcommand.to_ascii_lowercase();
            assert!(
                text.starts_with(&sub) || sub.is_empty() && text.is_empty(),
                "{text:?} for {sub:?}"
            );
            if let Err(reason) = commands::parse(text) {
                check_refusal(text, &reason);
                assert!(request.is_private(false));
            }
            let _ = request.is_private(true);
        }
    }
}

/// The options whose type the translation does not take.
fn unreadable(options: &[(String, OptionValue)]) -> Vec<String> {
    options
        .iter()
        .filter(|(_, value)| *value == OptionValue::Other)
        .map(|(name, _)| name.clone())
        .collect()
}

/// A `/poe` invocation the user typed right, its options, and what the core should read.
fn valid_invocation() -> impl Strategy<Value = (&'static str, Vec<(String, OptionValue)>, Request)>
{
    let word = "[a-zA-Z0-9._:-]{1,16}";
    let param = ("[a-z_][a-z0-9_]{0,8}", "[a-zA-Z0-9.:_-]{1,8}");
    let free = "[^\u{0}]{0,30}";
    let option = |name: &str, value: OptionValue| (name.to_owned(), value);
    prop_oneof![
        (any::<u64>(), prop::option::of(0i64..=i64::MAX)).prop_map(move |(user, points)| {
            let mut options = vec![option("user", OptionValue::Id(user))];
            options.extend(points.map(|p| option("points", OptionValue::Integer(p))));
            let points = points.map_or("default".to_owned(), |p| p.to_string());
            (
                "budget",
                options,
                Request::Command(format!("budget {user} {points}")),
            )
        }),
        (prop::option::of(word), prop::collection::vec(param, 0..3)).prop_map(
            move |(name, parameters)| {
                let mut options = Vec::new();
                options.extend(name.clone().map(|n| option("name", OptionValue::Text(n))));
                let joined: Vec<String> =
                    parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                if !joined.is_empty() {
                    options.push(option(
                        "parameters",
                        OptionValue::Text(format!(" {} ", joined.join("  "))),
                    ));
                }
                let mut text = vec!["model".to_owned()];
                text.extend(name);
                if !joined.is_empty() {
                    text.push(joined.join("  "));
                }
                ("model", options, Request::Command(text.join(" ")))
            }
        ),
        prop::option::of(free).prop_map(move |filter| {
            let options = filter
                .iter()
                .map(|f| option("filter", OptionValue::Text(f.clone())))
                .collect();
            let text = match filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
                Some(f) => format!("models {f}"),
                None => "models".to_owned(),
            };
            ("models", options, Request::Command(text))
        }),
        prop::option::of(free).prop_map(move |prompt| {
            let options = prompt
                .iter()
                .map(|t| option("text", OptionValue::Text(t.clone())))
                .collect();
            let text = match prompt.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                Some(t) => format!("prompt {t}"),
                None => "prompt".to_owned(),
            };
            ("prompt", options, Request::Command(text))
        }),
        "[^\u{0}]*[^\\s][^\u{0}]*".prop_map(move |question| {
            let wanted = Request::Ask(question.trim().to_owned());
            (
                "ask",
                vec![option("question", OptionValue::Text(question))],
                wanted,
            )
        }),
        prop::option::of(any::<bool>()).prop_map(move |here| {
            let options = here
                .iter()
                .map(|h| option("here", OptionValue::Boolean(*h)))
                .collect();
            let text = if here == Some(true) {
                "usage here"
            } else {
                "usage"
            };
            ("usage", options, Request::Command(text.to_owned()))
        }),
        prop::sample::select(vec!["balance", "reset", "help"]).prop_map(|sub| (
            sub,
            Vec::new(),
            Request::Command(sub.to_owned())
        )),
    ]
}

/// An `INTERACTION_CREATE` payload for `/poe <subcommand>` with these options.
fn interaction_payload(
    subcommand: &str,
    options: &[(String, OptionValue)],
    focused: bool,
) -> Value {
    let options: Vec<Value> = options
        .iter()
        .map(|(name, value)| {
            let (kind, value) = match value {
                OptionValue::Text(text) => (3, json!(text)),
                OptionValue::Integer(number) => (4, json!(number)),
                OptionValue::Boolean(flag) => (5, json!(flag)),
                OptionValue::Id(id) => (6, json!(id.max(&1).to_string())),
                OptionValue::Number(number) => (10, json!(number)),
                OptionValue::Other => (11, json!("1234")),
            };
            let mut option = json!({"name": name, "type": kind, "value": value});
            if focused && kind == 3 {
                option["focused"] = json!(true);
            }
            option
        })
        .collect();
    json!({
        "id": "1100000000000000001", "application_id": "1100000000000000002", "type": 2,
        "token": "aW50ZXJhY3Rpb24", "version": 1, "locale": "en-US", "entitlements": [],
        "attachment_size_limit": 8_388_608, "channel_id": "1100000000000000003",
        "guild_id": "1100000000000000004", "app_permissions": "0",
        "user": {
            "id": "1100000000000000005", "username": "ann", "global_name": null,
            "avatar": null, "discriminator": "0",
        },
        "data": {
            "id": "1100000000000000006", "name": NAME, "type": 1,
            "options": [{"name": subcommand, "type": 1, "options": options}],
        },
    })
}

/// What the payload target checks: serenity's reading, then the gateway handler's.
fn payload_case(
    subcommand: &str,
    options: &[(String, OptionValue)],
    payload: &Value,
    pristine: bool,
) -> Result<(), TestCaseError> {
    use serenity::all::CommandDataOptionValue as Read;
    let read = serde_json::from_value::<serenity::all::CommandInteraction>(payload.clone());
    let Ok(interaction) = read else {
        return Ok(());
    };
    let request = super::super::request_of(&interaction);
    let no_subcommand = "Pick a subcommand, like `/poe ask`.";
    if matches!(&request, Request::Invalid(reason) if reason == no_subcommand) {
        return Ok(());
    }
    let first = &interaction.data.options[0];
    let Read::SubCommand(read) = &first.value else {
        unreachable!("request_of takes only subcommands");
    };
    let unreadable: Vec<String> = read
        .iter()
        .filter(|option| {
            !matches!(
                option.value,
                Read::String(_)
                    | Read::Integer(_)
                    | Read::Number(_)
                    | Read::Boolean(_)
                    | Read::User(_)
                    | Read::Role(_)
                    | Read::Channel(_)
                    | Read::Mentionable(_)
                    | Read::Autocomplete { .. }
            )
        })
        .map(|option| option.name.clone())
        .collect();
    check(&first.name, &unreadable, &request);
    if pristine {
        // A focused (autocomplete) string reads as text, like a typed one; an id of 0 was
        // sent as 1 (Discord has none).
        let expected: Vec<(String, OptionValue)> = options
            .iter()
            .map(|(name, value)| match value {
                OptionValue::Id(id) => (name.clone(), OptionValue::Id((*id).max(1))),
                other => (name.clone(), other.clone()),
            })
            .collect();
        // JSON has no NaN or infinity: such a number was sent as `null`.
        let finite =
            |value: &OptionValue| !matches!(value, OptionValue::Number(n) if !n.is_finite());
        if options.iter().all(|(_, value)| finite(value)) {
            prop_assert_eq!(request, translate(subcommand, &expected));
        }
    }
    Ok(())
}

fn choices_case(typed: &str, ids: &[String]) -> Result<(), TestCaseError> {
    let choices = model_choices(typed, ids.iter().map(String::as_str));
    let needle = typed.trim().to_ascii_lowercase();
    prop_assert!(choices.len() <= 25);
    for choice in &choices {
        prop_assert!(ids.contains(choice));
        prop_assert!(choice.len() <= 100);
        prop_assert!(choice.to_ascii_lowercase().contains(&needle));
    }
    let key = |id: &String| {
        let lower = id.to_ascii_lowercase();
        (!lower.starts_with(&needle), lower)
    };
    prop_assert!(
        choices
            .windows(2)
            .all(|pair| key(&pair[0]) <= key(&pair[1]))
    );
    let matches = |id: &&String| id.len() <= 100 && id.to_ascii_lowercase().contains(&needle);
    let matching = ids.iter().filter(matches).count();
    prop_assert_eq!(choices.len(), matching.min(25));
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any subcommand with any options: no panic, and the rules above.
    #[test]
    fn fuzz_slash_translate_arbitrary(subcommand in subcommand(), options in options()) {
        let request = translate(&subcommand, &options);
        check(&subcommand, &unreadable(&options), &request);
    }

    /// Every subcommand, filled in as Discord would, becomes the text the core reads, and
    /// the core reads it without complaint.
    #[test]
    fn fuzz_slash_translate_round_trips((subcommand, options, wanted) in valid_invocation()) {
        let request = translate(subcommand, &options);
        prop_assert_eq!(&request, &wanted);
        if let Request::Command(text) = &request {
            prop_assert!(commands::parse(text).is_ok(), "{:?}", commands::parse(text));
        }
        check(subcommand, &unreadable(&options), &request);
    }

    /// Arbitrary JSON shaped like an `INTERACTION_CREATE` payload: serenity reads it or
    /// refuses it without panicking; what it reads is translated as the gateway handler
    /// does, and a payload as Discord sends it gives what its options say.
    #[test]
    fn fuzz_slash_interaction_payload(
        (subcommand, options, focused, payload, pristine) in (
            prop_oneof![
                valid_invocation().prop_map(|(sub, options, _)| (sub.to_owned(), options)),
                (subcommand(), options()),
            ],
            any::<bool>(),
        )
            .prop_flat_map(|((subcommand, options), focused)| {
                let payload = interaction_payload(&subcommand, &options, focused);
                let variants = prop_oneof![
                    2 => Just((payload.clone(), true)),
                    2 => mutate_one(payload).prop_map(|payload| (payload, false)),
                    1 => any_json().prop_map(|payload| (payload, false)),
                ];
                (Just(subcommand), Just(options), Just(focused), variants)
            })
            .prop_map(|(subcommand, options, focused, (payload, pristine))| {
                (subcommand, options, focused, payload, pristine)
            }),
    ) {
        let _ = focused;
        payload_case(&subcommand, &options, &payload, pristine)?;
    }

    /// Autocomplete: at most 25 ids, each one offered and short enough, each containing
    /// what was typed, prefixes first and then by name; nothing that matches is left out
    /// while there is room.
    #[test]
    fn fuzz_slash_model_choices(
        typed in prop_oneof![hostile_string(), "[a-zA-Z0-9 -]{0,4}"],
        ids in prop::collection::vec(prop_oneof![
            "[a-zA-Z0-9.-]{0,12}",
            hostile_string(),
            (90usize..120).prop_map(|n| "m".repeat(n)),
        ], 0..60),
    ) {
        choices_case(&typed, &ids)?;
    }
}
