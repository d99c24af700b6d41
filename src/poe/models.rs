//! Poe's model list (`GET /v1/models`): names, prices, limits, modalities and the custom
//! parameters each model declares. Every field is optional, because Poe leaves many `null`.

use serde::Deserialize;
use serde_json::Value;

use super::lenient;

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a model list (an object with `data`)")]
pub struct ModelList {
    pub data: Vec<ModelInfo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a model (an object with `id`)")]
pub struct ModelInfo {
    pub id: String,
    /// Milliseconds since the epoch.
    #[serde(default, deserialize_with = "lenient::int")]
    pub created: Option<i64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owned_by: Option<String>,
    #[serde(default)]
    pub architecture: Option<Architecture>,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    #[serde(default)]
    pub context_window: Option<ContextWindow>,
    #[serde(default)]
    pub parameters: Option<Vec<ParameterSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(expecting = "an object of input and output modalities")]
pub struct Architecture {
    #[serde(default)]
    pub input_modalities: Option<Vec<String>>,
    #[serde(default)]
    pub output_modalities: Option<Vec<String>>,
}

/// USD per token (`prompt`, `completion`), per image, or per request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(expecting = "an object of prices")]
pub struct Pricing {
    #[serde(default, deserialize_with = "lenient::decimal")]
    pub prompt: Option<f64>,
    #[serde(default, deserialize_with = "lenient::decimal")]
    pub completion: Option<f64>,
    #[serde(default, deserialize_with = "lenient::decimal")]
    pub image: Option<f64>,
    #[serde(default, deserialize_with = "lenient::decimal")]
    pub request: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(expecting = "an object of context limits")]
pub struct ContextWindow {
    #[serde(default, deserialize_with = "lenient::int")]
    pub context_length: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub max_output_tokens: Option<i64>,
}

/// A custom parameter a model accepts (`thinking_budget`, `aspect_ratio`, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a parameter (an object with `name`)")]
pub struct ParameterSpec {
    pub name: String,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub default_value: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
}

impl ModelInfo {
    pub fn output_modalities(&self) -> &[String] {
        self.architecture
            .as_ref()
            .and_then(|arch| arch.output_modalities.as_deref())
            .unwrap_or_default()
    }

    /// Image, video and audio bots: called without streaming, as Poe advises.
    pub fn outputs_media(&self) -> bool {
        let outputs = self.output_modalities();
        !outputs.is_empty() && !outputs.iter().any(|m| m == "text")
    }

    pub fn context_length(&self) -> Option<i64> {
        self.context_window.as_ref().and_then(|w| w.context_length)
    }

    pub fn max_output_tokens(&self) -> Option<i64> {
        self.context_window
            .as_ref()
            .and_then(|w| w.max_output_tokens)
    }

    pub fn parameter(&self, name: &str) -> Option<&ParameterSpec> {
        self.parameters
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|spec| spec.name == name)
    }
}

/// An enum's choices as text (`"16:9"`, `true`, `3`).
fn choice_names(choices: &[Value]) -> Vec<String> {
    choices
        .iter()
        .map(|choice| {
            choice
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| choice.to_string())
        })
        .collect()
}

impl ParameterSpec {
    /// Reads `text` as a value of this parameter, checking the declared type, enum and
    /// bounds. The error says what is accepted.
    pub fn parse_value(&self, text: &str) -> Result<Value, String> {
        let schema = self.schema.as_ref().and_then(Value::as_object);
        let field = |name: &str| schema.and_then(|schema| schema.get(name));
        if let Some(choices) = field("enum").and_then(Value::as_array) {
            let names = choice_names(choices);
            return match names.iter().position(|name| name == text) {
                Some(index) => Ok(choices[index].clone()),
                None => Err(format!(
                    "`{}` must be one of: {}",
                    self.name,
                    names.join(", ")
                )),
            };
        }
        let kind = field("type").and_then(Value::as_str).unwrap_or("string");
        let value = match kind {
            "integer" => text
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("`{}` must be a whole number", self.name))?,
            "number" => {
                let number: f64 = text
                    .parse()
                    .ok()
                    .filter(|number: &f64| number.is_finite())
                    .ok_or_else(|| format!("`{}` must be a number", self.name))?;
                if number.fract() == 0.0 && number.abs() < 9e15 {
                    Value::from(number as i64)
                } else {
                    Value::from(number)
                }
            }
            "boolean" => match text.to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" => Value::Bool(true),
                "false" | "off" | "no" => Value::Bool(false),
                _ => return Err(format!("`{}` must be true or false", self.name)),
            },
            _ => Value::String(text.to_owned()),
        };
        if let Some(number) = value.as_f64() {
            if let Some(minimum) = field("minimum").and_then(Value::as_f64)
                && number < minimum
            {
                return Err(format!("`{}` must be at least {minimum}", self.name));
            }
            if let Some(maximum) = field("maximum").and_then(Value::as_f64)
                && number > maximum
            {
                return Err(format!("`{}` must be at most {maximum}", self.name));
            }
        }
        Ok(value)
    }

    /// A short description of what the parameter accepts, for `/poe model`.
    pub fn describe(&self) -> String {
        let schema = self.schema.as_ref().and_then(Value::as_object);
        let field = |name: &str| schema.and_then(|schema| schema.get(name));
        if let Some(choices) = field("enum").and_then(Value::as_array) {
            return format!("one of {}", choice_names(choices).join(", "));
        }
        let kind = field("type").and_then(Value::as_str).unwrap_or("text");
        match (
            field("minimum").and_then(Value::as_f64),
            field("maximum").and_then(Value::as_f64),
        ) {
            (Some(low), Some(high)) => format!("{kind} from {low} to {high}"),
            _ => kind.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(schema: Value) -> ParameterSpec {
        ParameterSpec {
            name: "p".into(),
            schema: Some(schema),
            default_value: None,
            description: None,
        }
    }

    /// Found by `fuzz::fuzz_model_list`: serde's messages named the Rust types
    /// (`expected struct ModelList`), which the client logs as they are.
    #[test]
    fn model_list_errors_name_no_rust_types() {
        let error = |text: &str| {
            serde_json::from_str::<ModelList>(text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("4"),
            "invalid type: integer `4`, expected a model list (an object with `data`) at line 1 column 1"
        );
        assert_eq!(
            error(r#"{"data":[7]}"#),
            "invalid type: integer `7`, expected a model (an object with `id`) at line 1 column 10"
        );
        assert_eq!(
            error(r#"{"data":[{"id":"m","pricing":"free"}]}"#),
            "invalid type: string \"free\", expected an object of prices at line 1 column 35"
        );
    }

    #[test]
    fn values_are_checked_against_the_declared_schema() {
        let budget = spec(json!({"type": "number", "minimum": 0, "maximum": 31999}));
        assert_eq!(budget.parse_value("1024").unwrap(), json!(1024));
        assert!(
            budget
                .parse_value("40000")
                .unwrap_err()
                .contains("at most 31999")
        );
        assert!(
            budget
                .parse_value("lots")
                .unwrap_err()
                .contains("must be a number")
        );
        let ratio = spec(json!({"enum": ["1:1", "16:9"]}));
        assert_eq!(ratio.parse_value("16:9").unwrap(), json!("16:9"));
        assert!(ratio.parse_value("4:3").unwrap_err().contains("1:1, 16:9"));
        let count = spec(json!({"enum": [1, 2, 4]}));
        assert_eq!(count.parse_value("2").unwrap(), json!(2));
        assert!(count.parse_value("3").is_err());
        let flag = spec(json!({"type": "boolean"}));
        assert_eq!(flag.parse_value("on").unwrap(), json!(true));
        assert!(flag.parse_value("maybe").is_err());
    }
}

#[cfg(test)]
mod fuzz;
