//! Fuzz targets for Poe's model list and the parameters models declare: arbitrary bytes and
//! JSON, real-looking entries with fields of the wrong type, numbers written as strings, and
//! arbitrary text read against arbitrary schemas.

use super::*;
use crate::fuzz::{
    any_json, assert_plain_words, config, expected_int, field, foreign_strings, hostile_string,
    object, text_value,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

/// A number as Poe may send it: a JSON number, a numeric string, `null`, or junk.
fn lenient_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-(1i64 << 53)..(1i64 << 53)).prop_map(|n| Value::from(format!(" {n} "))),
        prop::num::f64::NORMAL.prop_map(Value::from),
        Just(Value::Null),
        Just(json!("NaN")),
        Just(json!("inf")),
        Just(json!("1e400")),
        Just(json!("12abc")),
        Just(json!(1e300)),
    ]
    .boxed()
}

fn list_of_text() -> BoxedStrategy<Value> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec!["text", "image", "video", "audio"]).prop_map(Value::from),
            hostile_string().prop_map(Value::from),
        ],
        0..4,
    )
    .prop_map(Value::Array)
    .boxed()
}

fn schema() -> BoxedStrategy<Value> {
    (
        field(
            prop::sample::select(vec!["integer", "number", "boolean", "string", "array"])
                .prop_map(Value::from)
                .boxed(),
        ),
        field(lenient_number()),
        field(lenient_number()),
        prop::option::of(prop::collection::vec(
            prop_oneof![
                hostile_string().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                any_json()
            ],
            0..5,
        )),
    )
        .prop_map(|(kind, minimum, maximum, choices)| {
            object(
                vec![
                    ("type", kind),
                    ("minimum", minimum),
                    ("maximum", maximum),
                    ("enum", choices.map(Value::Array)),
                ],
                vec![],
            )
        })
        .boxed()
}

fn parameter_spec() -> BoxedStrategy<Value> {
    (
        field(text_value()),
        field(schema()),
        field(any_json().boxed()),
        field(text_value()),
    )
        .prop_map(|(name, schema, default_value, description)| {
            object(
                vec![
                    ("name", name),
                    ("schema", schema),
                    ("default_value", default_value),
                    ("description", description),
                ],
                vec![],
            )
        })
        .boxed()
}

/// An entry of `GET /v1/models`, its fields sometimes of the wrong type or missing.
fn model_entry() -> BoxedStrategy<Value> {
    let architecture =
        (field(list_of_text()), field(list_of_text())).prop_map(|(input, output)| {
            object(
                vec![("input_modalities", input), ("output_modalities", output)],
                vec![],
            )
        });
    let pricing = (
        field(lenient_number()),
        field(lenient_number()),
        field(lenient_number()),
        field(lenient_number()),
    )
        .prop_map(|(prompt, completion, image, request)| {
            object(
                vec![
                    ("prompt", prompt),
                    ("completion", completion),
                    ("image", image),
                    ("request", request),
                ],
                vec![],
            )
        });
    let window = (field(lenient_number()), field(lenient_number())).prop_map(|(length, max)| {
        object(
            vec![("context_length", length), ("max_output_tokens", max)],
            vec![],
        )
    });
    (
        field(text_value()),
        field(lenient_number()),
        field(text_value()),
        field(architecture.boxed()),
        field(pricing.boxed()),
        field(window.boxed()),
        field(
            prop::collection::vec(parameter_spec(), 0..4)
                .prop_map(Value::Array)
                .boxed(),
        ),
    )
        .prop_map(
            |(id, created, owned_by, architecture, pricing, window, parameters)| {
                object(
                    vec![
                        ("id", id),
                        ("created", created),
                        ("object", Some(json!("model"))),
                        ("owned_by", owned_by),
                        ("architecture", architecture),
                        ("pricing", pricing),
                        ("context_window", window),
                        ("parameters", parameters),
                    ],
                    vec![],
                )
            },
        )
        .boxed()
}

fn model_list_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(model_entry(), 0..5)
            .prop_map(|data| json!({"object": "list", "data": data}).to_string().into_bytes()),
        1 => any_json().prop_map(|value| json!({"data": [value]}).to_string().into_bytes()),
        1 => any_json().prop_map(|value| value.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(format!(r#"{{"data":{}{}}}"#, "[".repeat(3000), "]".repeat(3000)).into_bytes()),
    ]
}

fn foreign_of(bytes: &[u8]) -> Vec<String> {
    foreign_strings(bytes)
}

fn expected_decimal(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|float| float.is_finite()),
        _ => None,
    }
}

/// The accepted text of a schema's enum choice, as `parse_value` compares it.
fn choice_text(choice: &Value) -> String {
    choice
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| choice.to_string())
}

fn text_for(schema: &Value) -> BoxedStrategy<String> {
    let mut options: Vec<BoxedStrategy<String>> = vec![
        hostile_string(),
        any::<i64>().prop_map(|n| n.to_string()).boxed(),
        prop::num::f64::ANY.prop_map(|n| n.to_string()).boxed(),
        prop::sample::select(vec![
            "true", "On", "NO", "maybe", "", " 1", "+5", "1e999", "NaN", "-0",
        ])
        .prop_map(str::to_owned)
        .boxed(),
    ];
    if let Some(choices) = schema
        .get("enum")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    {
        options.push(
            prop::sample::select(choices.iter().map(choice_text).collect::<Vec<_>>()).boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

/// A struct's field as serde reads it: by name from an object, by position from an array.
fn field_at<'v>(value: Option<&'v Value>, key: &str, index: usize) -> Option<&'v Value> {
    match value? {
        Value::Array(items) => items.get(index),
        other => other.get(key),
    }
}

/// A model list that decoded keeps each entry's values, numbers read leniently.
fn check_list(list: &ModelList, value: &Value) -> Result<(), TestCaseError> {
    let entries = field_at(Some(value), "data", 0)
        .and_then(Value::as_array)
        .unwrap();
    prop_assert_eq!(list.data.len(), entries.len());
    for (model, entry) in list.data.iter().zip(entries) {
        // serde reads a JSON array as the fields in order, too; those are not checked.
        if !entry.is_object() {
            continue;
        }
        prop_assert_eq!(Some(model.id.as_str()), entry["id"].as_str());
        prop_assert_eq!(model.created, expected_int(entry.get("created")));
        let window = |key, index| expected_int(field_at(entry.get("context_window"), key, index));
        prop_assert_eq!(model.context_length(), window("context_length", 0));
        prop_assert_eq!(model.max_output_tokens(), window("max_output_tokens", 1));
        let pricing = model.pricing.clone().unwrap_or_default();
        for (index, (got, key)) in [
            (pricing.prompt, "prompt"),
            (pricing.completion, "completion"),
            (pricing.image, "image"),
            (pricing.request, "request"),
        ]
        .into_iter()
        .enumerate()
        {
            let wanted = expected_decimal(field_at(entry.get("pricing"), key, index));
            prop_assert_eq!(got.map(f64::to_bits), wanted.map(f64::to_bits), "{}", key);
        }
        let outputs: Vec<&str> = field_at(entry.get("architecture"), "output_modalities", 1)
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        prop_assert_eq!(model.output_modalities(), outputs.as_slice());
        let media = !outputs.is_empty() && !outputs.contains(&"text");
        prop_assert_eq!(model.outputs_media(), media);
        let specs = model.parameters.as_deref().unwrap_or_default();
        for spec in specs {
            let first = model
                .parameter(&spec.name)
                .expect("a declared parameter is found");
            let wanted = specs.iter().find(|s| s.name == spec.name).unwrap();
            prop_assert!(std::ptr::eq(first, wanted));
            let _ = spec.describe();
        }
        let missing = "\u{0}no such parameter";
        let declared = specs.iter().any(|spec| spec.name == missing);
        prop_assert_eq!(model.parameter(missing).is_some(), declared);
    }
    Ok(())
}

fn check_parse_value(name: &str, schema: &Value, text: &str) -> Result<(), TestCaseError> {
    let spec = ParameterSpec {
        name: name.to_owned(),
        schema: Some(schema.clone()),
        default_value: None,
        description: None,
    };
    let _ = spec.describe();
    let field = |key: &str| schema.as_object().and_then(|map| map.get(key));
    let choices = field("enum").and_then(Value::as_array);
    let kind = field("type").and_then(Value::as_str).unwrap_or("string");
    match spec.parse_value(text) {
        Ok(value) => {
            if let Some(choices) = choices {
                let index = choices
                    .iter()
                    .position(|choice| choice_text(choice) == text);
                prop_assert_eq!(Some(&value), index.map(|index| &choices[index]));
                return Ok(());
            }
            match kind {
                "integer" => {
                    prop_assert_eq!(value.as_i64(), Some(text.parse::<i64>().unwrap()))
                }
                "number" => {
                    let wanted: f64 = text.parse().unwrap();
                    prop_assert!(wanted.is_finite());
                    prop_assert_eq!(value.as_f64(), Some(wanted));
                }
                "boolean" => prop_assert!(value.is_boolean()),
                _ => prop_assert_eq!(&value, &Value::String(text.to_owned())),
            }
            if let Some(number) = value.as_f64() {
                if let Some(minimum) = field("minimum").and_then(Value::as_f64) {
                    prop_assert!(number >= minimum);
                }
                if let Some(maximum) = field("maximum").and_then(Value::as_f64) {
                    prop_assert!(number <= maximum);
                }
            }
        }
        Err(problem) => {
            prop_assert!(
                problem.starts_with(&format!("`{name}` must ")),
                "{}",
                problem
            );
            let mut foreign = vec![name.to_owned(), text.to_owned()];
            for choice in choices.into_iter().flatten() {
                foreign.push(choice_text(choice));
            }
            assert_plain_words(&problem, &foreign);
            if let Some(choices) = choices {
                prop_assert!(!choices.iter().any(|choice| choice_text(choice) == text));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any answer of `GET /v1/models`: no panic; an error says what is wrong in plain
    /// words; an entry that decodes keeps its values, numbers read leniently.
    #[test]
    fn fuzz_model_list(bytes in model_list_bytes()) {
        match serde_json::from_slice::<ModelList>(&bytes) {
            Err(err) => assert_plain_words(&err.to_string(), &foreign_of(&bytes)),
            Ok(list) => check_list(&list, &serde_json::from_slice(&bytes).unwrap())?,
        }
    }

    /// Any text against any schema: no panic; a refusal names the parameter and says what
    /// it takes; an accepted value has the declared type and is within the declared bounds
    /// and enum.
    #[test]
    fn fuzz_parse_value(
        (schema, text) in prop_oneof![4 => schema(), 1 => any_json().boxed()]
            .prop_flat_map(|schema| { let text = text_for(&schema); (Just(schema), text) }),
        name in prop_oneof![Just("thinking_budget".to_owned()), hostile_string()],
    ) {
        check_parse_value(&name, &schema, &text)?;
    }

    /// A value inside an integer parameter's bounds, written out, reads back as itself.
    #[test]
    fn fuzz_parse_value_round_trips(
        low in any::<i32>(),
        span in 0u32..1_000_000,
        at in any::<prop::sample::Index>(),
    ) {
        let low = i64::from(low);
        let high = low + i64::from(span);
        let value = low + at.index(span as usize + 1) as i64;
        for kind in ["integer", "number"] {
            let spec = ParameterSpec {
                name: "p".into(),
                schema: Some(json!({"type": kind, "minimum": low, "maximum": high})),
                default_value: None,
                description: None,
            };
            prop_assert_eq!(spec.parse_value(&value.to_string()), Ok(json!(value)));
            let above = spec.parse_value(&(high + 1).to_string()).unwrap_err();
            prop_assert!(above.contains("at most"));
            let below = spec.parse_value(&(low - 1).to_string()).unwrap_err();
            prop_assert!(below.contains("at least"));
        }
    }
}
