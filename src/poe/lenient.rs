//! Deserializers for numbers that Poe (or a proxy in front of it) may send as strings.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An optional integer given as a number, a numeric string, or `null`.
pub fn int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|float| float as i64)),
        Value::String(text) => text.trim().parse::<f64>().ok().map(|float| float as i64),
        _ => None,
    })
}

/// An optional decimal given as a string (Poe's prices), a number, or `null`.
pub fn decimal<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    })
}
