//! Fuzz targets for the account's balance and points history: arbitrary bytes and JSON, the
//! documented shapes with fields of the wrong type or missing, numbers as strings.

use super::*;
use crate::fuzz::{
    any_json, assert_plain_words, config, expected_int, field, foreign_strings, hostile_string,
    object, text_value,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

fn lenient_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-(1i64 << 53)..(1i64 << 53)).prop_map(|n| Value::from(n.to_string())),
        prop::num::f64::NORMAL.prop_map(Value::from),
        Just(Value::Null),
        Just(json!("19.82")),
        Just(json!("NaN")),
        Just(json!("")),
    ]
    .boxed()
}

fn expected_decimal(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn balance() -> BoxedStrategy<Value> {
    (
        field(lenient_number()),
        field(lenient_number()),
        field(lenient_number()),
        field(lenient_number()),
        any::<bool>(),
    )
        .prop_map(|(current, plan, addon, usd, auto)| {
            let extra = if auto {
                vec![("auto_recharge".to_owned(), json!({"enabled": false}))]
            } else {
                vec![]
            };
            object(
                vec![
                    ("current_point_balance", current),
                    ("plan_points_balance", plan),
                    ("addon_point_balance", addon),
                    ("total_balance_usd", usd),
                ],
                extra,
            )
        })
        .boxed()
}

fn entry() -> BoxedStrategy<Value> {
    (
        field(text_value()),
        field(text_value()),
        any::<bool>(),
        field(lenient_number()),
        field(
            prop::sample::select(vec!["API", "Chat", "Canvas App"])
                .prop_map(Value::from)
                .boxed(),
        ),
        field(lenient_number()),
        field(lenient_number()),
        field(text_value()),
    )
        .prop_map(
            |(
                query_id,
                bot,
                app_name,
                creation_time,
                usage_type,
                cost_points,
                cost_usd,
                chat_name,
            )| {
                object(
                    vec![
                        ("query_id", query_id),
                        (if app_name { "app_name" } else { "bot_name" }, bot),
                        ("creation_time", creation_time),
                        ("usage_type", usage_type),
                        ("cost_points", cost_points),
                        ("cost_usd", cost_usd),
                        ("chat_name", chat_name),
                    ],
                    vec![],
                )
            },
        )
        .boxed()
}

fn page() -> BoxedStrategy<Value> {
    (
        field(any::<bool>().prop_map(Value::Bool).boxed()),
        field(
            prop::collection::vec(entry(), 0..5)
                .prop_map(Value::Array)
                .boxed(),
        ),
    )
        .prop_map(|(has_more, data)| {
            object(
                vec![
                    ("has_more", has_more),
                    ("length", Some(json!(2))),
                    ("data", data),
                ],
                vec![],
            )
        })
        .boxed()
}

fn bytes_of(shaped: BoxedStrategy<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => shaped.prop_map(|value| value.to_string().into_bytes()),
        1 => any_json().prop_map(|value| value.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => hostile_string().prop_map(String::into_bytes),
    ]
}

fn foreign_of(bytes: &[u8]) -> Vec<String> {
    foreign_strings(bytes)
}

fn same_decimal(got: Option<f64>, wanted: Option<f64>) -> bool {
    got.map(f64::to_bits) == wanted.map(f64::to_bits)
}

/// A balance that decoded from an object keeps its values, numbers read leniently. (serde
/// reads a JSON array as the fields in order, too; those are not checked.)
fn check_balance(balance: &Balance, value: &Value) -> Result<(), TestCaseError> {
    let Some(map) = value.as_object() else {
        return Ok(());
    };
    let int = |key: &str| expected_int(map.get(key));
    prop_assert!(map.contains_key("current_point_balance"));
    prop_assert_eq!(balance.current_point_balance, int("current_point_balance"));
    prop_assert_eq!(balance.plan_points_balance, int("plan_points_balance"));
    prop_assert_eq!(balance.addon_point_balance, int("addon_point_balance"));
    let usd = expected_decimal(map.get("total_balance_usd"));
    prop_assert!(same_decimal(balance.total_balance_usd, usd));
    Ok(())
}

fn check_page(page: &HistoryPage, value: &Value) -> Result<(), TestCaseError> {
    let Some(map) = value.as_object() else {
        return Ok(());
    };
    let has_more = map
        .get("has_more")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    prop_assert_eq!(page.has_more, has_more);
    let entries = map
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    prop_assert_eq!(page.data.len(), entries.len());
    for (got, entry) in page.data.iter().zip(&entries) {
        let entry = entry.as_object().unwrap();
        let text = |key: &str| entry.get(key).and_then(Value::as_str);
        prop_assert_eq!(Some(got.query_id.as_str()), text("query_id"));
        let bot = entry.get("bot_name").or_else(|| entry.get("app_name"));
        prop_assert_eq!(got.bot_name.as_deref(), bot.and_then(Value::as_str));
        prop_assert_eq!(got.creation_time, expected_int(entry.get("creation_time")));
        prop_assert_eq!(got.cost_points, expected_int(entry.get("cost_points")));
        let usd = expected_decimal(entry.get("cost_usd"));
        prop_assert!(same_decimal(got.cost_usd, usd));
        prop_assert_eq!(got.chat_name.as_deref(), text("chat_name"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// `GET /usage/current_balance`: no panic, plain-words errors, lenient numbers.
    #[test]
    fn fuzz_balance(bytes in bytes_of(balance())) {
        match serde_json::from_slice::<Balance>(&bytes) {
            Err(err) => assert_plain_words(&err.to_string(), &foreign_of(&bytes)),
            Ok(balance) => check_balance(&balance, &serde_json::from_slice(&bytes).unwrap())?,
        }
    }

    /// `GET /usage/points_history`: no panic, plain-words errors, and entries keep their
    /// values (`app_name` read as `bot_name`).
    #[test]
    fn fuzz_history_page(bytes in bytes_of(page())) {
        match serde_json::from_slice::<HistoryPage>(&bytes) {
            Err(err) => assert_plain_words(&err.to_string(), &foreign_of(&bytes)),
            Ok(page) => check_page(&page, &serde_json::from_slice(&bytes).unwrap())?,
        }
    }
}
