//! The account's points: `GET /usage/current_balance` and `GET /usage/points_history`.
//! Only `current_point_balance` is documented; the rest is optional and read leniently.

use serde::Deserialize;

use super::lenient;

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a balance (an object with `current_point_balance`)")]
pub struct Balance {
    #[serde(deserialize_with = "lenient::int")]
    pub current_point_balance: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub plan_points_balance: Option<i64>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub addon_point_balance: Option<i64>,
    #[serde(default, deserialize_with = "lenient::decimal")]
    pub total_balance_usd: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a page of points history (an object with `data`)")]
pub struct HistoryPage {
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub data: Vec<HistoryEntry>,
}

/// One charged request. `bot_name` is called `app_name` in one of Poe's examples.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(expecting = "a points history entry (an object with `query_id`)")]
pub struct HistoryEntry {
    pub query_id: String,
    #[serde(default, alias = "app_name")]
    pub bot_name: Option<String>,
    /// Microseconds since the epoch.
    #[serde(default, deserialize_with = "lenient::int")]
    pub creation_time: Option<i64>,
    #[serde(default)]
    pub usage_type: Option<String>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub cost_points: Option<i64>,
    #[serde(default, deserialize_with = "lenient::decimal")]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub chat_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz::fuzz_balance` and `fuzz::fuzz_history_page`: serde's messages named
    /// the Rust types (`expected struct Balance`), which the client logs as they are.
    #[test]
    fn usage_errors_name_no_rust_types() {
        assert_eq!(
            serde_json::from_str::<Balance>("null")
                .unwrap_err()
                .to_string(),
            "invalid type: null, expected a balance (an object with `current_point_balance`) at line 1 column 4"
        );
        assert_eq!(
            serde_json::from_str::<HistoryPage>(r#"{"data":[0]}"#)
                .unwrap_err()
                .to_string(),
            "invalid type: integer `0`, expected a points history entry (an object with `query_id`) at line 1 column 10"
        );
    }

    #[test]
    fn documented_and_lenient_shapes() {
        let balance: Balance = serde_json::from_str(
            r#"{"current_point_balance":"654141","total_balance_usd":"19.82","auto_recharge":{"enabled":false}}"#,
        )
        .unwrap();
        assert_eq!(balance.current_point_balance, Some(654_141));
        assert_eq!(balance.total_balance_usd, Some(19.82));

        let page: HistoryPage = serde_json::from_str(
            r#"{"has_more":true,"length":2,"data":[
              {"query_id":"a","bot_name":"Claude-Sonnet-4.6","creation_time":1774501234567890,"usage_type":"API","cost_points":412},
              {"query_id":"b","app_name":"GPT-5.4","creation_time":1774501200000000,"usage_type":"Chat","cost_points":"90","chat_name":"Trip ideas","cost_usd":"0.0027"}]}"#,
        )
        .unwrap();
        assert!(page.has_more);
        assert_eq!(page.data[1].bot_name.as_deref(), Some("GPT-5.4"));
        assert_eq!(page.data[1].cost_points, Some(90));
        assert_eq!(page.data[0].creation_time, Some(1_774_501_234_567_890));
    }
}

#[cfg(test)]
mod fuzz;
