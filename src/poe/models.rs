//! Poe's model list (`GET /v1/models`): names, prices, limits, modalities and the custom
//! parameters each model declares. Every field is optional, because Poe leaves many `null`.

use serde::Deserialize;
use serde_json::Value;

use super::lenient;

#[derive(Debug, Clone, Deserialize)]
pub struct ModelList {
    pub data: Vec<ModelInfo>,
}

#[derive(Debug, Clone, Deserialize)]
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
pub struct Architecture {
    #[serde(default)]
    pub input_modalities: Option<Vec<String>>,
    #[serde(default)]
    pub output_modalities: Option<Vec<String>>,
}

/// USD per token (`prompt`, `completion`), per image, or per request.
#[derive(Debug, Clone, Default, Deserialize)]
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
pub struct ContextWindow {
    #[serde(default, deserialize_with = "lenient::int")]
    pub context_length: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub max_output_tokens: Option<i64>,
}

/// A custom parameter a model accepts (`thinking_budget`, `aspect_ratio`, …).
#[derive(Debug, Clone, Deserialize)]
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
