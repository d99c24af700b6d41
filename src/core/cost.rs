//! What a request to Poe costs in points, before (the worst case we reserve) and after (our
//! estimate from what was used). Poe's own figure arrives later through reconciliation.
//!
//! Poe prices models in USD per token (or per request or image); `budget.points_per_usd`
//! converts. Models without a price cost their configured `points_per_request`, or
//! `budget.unpriced_request_points`.

use crate::config::{BudgetConfig, ModelConfig};
use crate::poe::{ModelInfo, Usage};

/// Roughly four characters per token, the usual rule for English text: a fair estimate.
pub fn tokens_for_chars(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// Tokens a prompt can cost at most, for reservations: one per three bytes covers scripts
/// that tokenize densely (CJK, emoji), and each attachment counts as a large image.
pub fn worst_case_prompt_tokens(prompt_bytes: usize, attachments: usize) -> u64 {
    (prompt_bytes as u64).div_ceil(3) + 1_600 * attachments as u64
}

/// Prices of one model, as far as they are known.
#[derive(Debug, Clone, Default)]
pub struct Price {
    /// USD per input token and per output token.
    per_token: Option<(f64, f64)>,
    /// USD per request (or per image, for image bots).
    per_request_usd: Option<f64>,
    /// Points per request, from the configuration.
    per_request_points: Option<i64>,
}

impl Price {
    pub fn of(model: Option<&ModelInfo>, configured: Option<&ModelConfig>) -> Price {
        let pricing = model.and_then(|model| model.pricing.as_ref());
        let per_token = pricing.and_then(|pricing| match (pricing.prompt, pricing.completion) {
            (Some(prompt), Some(completion)) => Some((prompt, completion)),
            (Some(prompt), None) => Some((prompt, 0.0)),
            (None, Some(completion)) => Some((0.0, completion)),
            (None, None) => None,
        });
        Price {
            per_token,
            per_request_usd: pricing.and_then(|pricing| pricing.request.or(pricing.image)),
            per_request_points: configured.and_then(|model| model.points_per_request),
        }
    }

    fn points(&self, budget: &BudgetConfig, input_tokens: u64, output_tokens: u64) -> i64 {
        if let Some(points) = self.per_request_points {
            return points;
        }
        if self.per_token.is_none() && self.per_request_usd.is_none() {
            return budget.unpriced_request_points;
        }
        let (input, output) = self.per_token.unwrap_or((0.0, 0.0));
        let usd = input * input_tokens as f64
            + output * output_tokens as f64
            + self.per_request_usd.unwrap_or(0.0);
        let points = (usd * budget.points_per_usd).ceil();
        if points.is_finite() && points < 1e15 {
            (points as i64).max(1)
        } else {
            budget.unpriced_request_points
        }
    }

    /// The worst case: the whole prompt (see [`worst_case_prompt_tokens`]) and the longest
    /// answer allowed.
    pub fn reservation(
        &self,
        budget: &BudgetConfig,
        prompt_tokens: u64,
        max_output_tokens: u64,
    ) -> i64 {
        self.points(budget, prompt_tokens, max_output_tokens)
    }

    /// After the answer: Poe's token counts when it sent them, otherwise sizes.
    pub fn estimate(
        &self,
        budget: &BudgetConfig,
        prompt_chars: usize,
        answer_chars: usize,
        usage: Option<&Usage>,
    ) -> i64 {
        let input = usage
            .and_then(|usage| usage.prompt_tokens)
            .unwrap_or_else(|| tokens_for_chars(prompt_chars));
        let output = usage
            .and_then(|usage| usage.completion_tokens)
            .unwrap_or_else(|| tokens_for_chars(answer_chars));
        self.points(budget, input, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poe::Pricing;

    fn model(prompt: Option<f64>, completion: Option<f64>) -> ModelInfo {
        serde_json::from_value::<ModelInfo>(serde_json::json!({"id": "m"}))
            .map(|mut info| {
                info.pricing = Some(Pricing {
                    prompt,
                    completion,
                    image: None,
                    request: None,
                });
                info
            })
            .unwrap()
    }

    #[test]
    fn priced_models_scale_with_tokens() {
        let budget = BudgetConfig::default();
        // 2.6 $/M in, 13 $/M out: 4,000 chars in (1,000 tokens), 4,096 tokens out.
        let price = Price::of(Some(&model(Some(0.0000026), Some(0.000013))), None);
        let reserved = price.reservation(&budget, tokens_for_chars(4000), 4096);
        let expected = ((1000.0 * 0.0000026 + 4096.0 * 0.000013) * 33_000.0_f64).ceil() as i64;
        assert_eq!(reserved, expected);
        let usage = Usage {
            prompt_tokens: Some(1000),
            completion_tokens: Some(100),
            ..Usage::default()
        };
        let settled = price.estimate(&budget, 4000, 9999, Some(&usage));
        assert!(settled < reserved);
        assert_eq!(
            settled,
            ((1000.0 * 0.0000026 + 100.0 * 0.000013) * 33_000.0_f64).ceil() as i64
        );
    }

    #[test]
    fn unpriced_models_use_the_configured_cost() {
        let budget = BudgetConfig::default();
        let unpriced = Price::of(None, None);
        assert_eq!(
            unpriced.reservation(&budget, 3, 10),
            budget.unpriced_request_points
        );
        let configured = ModelConfig {
            name: "Imagen-4".into(),
            transport: None,
            parameters: Default::default(),
            points_per_request: Some(300),
        };
        assert_eq!(
            Price::of(None, Some(&configured)).estimate(&budget, 1, 1, None),
            300
        );
    }
}
