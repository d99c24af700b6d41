//! The `/poe` slash command: its definition for Discord, and its options turned back into
//! the text the core's command parser reads (`budget 123 500`, `model gpt-5 key=value`).
//!
//! The translation is pure, so every subcommand and every malformed option is tested here
//! without a gateway. Options of the wrong type are passed on as text, and the core's parser
//! answers them the way it answers a mistyped `!poe` command.

use serde_json::{Value, json};

use crate::core::commands::{self, Command, PromptChange};

/// The command's name on Discord.
pub const NAME: &str = "poe";

/// Longest question `/poe ask` takes (Discord's own cap for a string option is 6,000).
const MAX_QUESTION: u32 = 6000;

/// `/poe` with its subcommands, as Discord's application-command JSON.
pub fn definition() -> Value {
    let sub = |name: &str, description: &str, options: Value| json!({"type": 1, "name": name, "description": description, "options": options});
    let text = |name: &str, description: &str, required: bool| json!({"type": 3, "name": name, "description": description, "required": required});
    json!({
        "name": NAME,
        "type": 1,
        "description": "Talk to Poe's AI models",
        "options": [
            sub("ask", "Ask this channel's model a question", json!([{
                "type": 3, "name": "question", "description": "Your question",
                "required": true, "max_length": MAX_QUESTION,
            }])),
            sub("usage", "What you have spent and what is left", json!([
                {"type": 5, "name": "here",
                 "description": "Who spent what in this channel instead (its admins)",
                 "required": false},
            ])),
            sub("models", "The models Poe offers", json!([
                text("filter", "Only models whose name contains this", false),
            ])),
            sub("model", "Show this channel's model, or change it (admins)", json!([
                {"type": 3, "name": "name", "description": "The model to use here",
                 "required": false, "autocomplete": true},
                text("parameters", "Custom parameters, like thinking_budget=2048", false),
            ])),
            sub("prompt", "Show this channel's system prompt, or change it (admins)", json!([
                text("text", "The new system prompt, or `clear`", false),
            ])),
            sub("reset", "Forget this channel's conversation so far", json!([])),
            sub("stop", "Stop the answer being written here (its asker, admins)", json!([])),
            sub("regenerate", "Ask the latest question here again for a new answer", json!([])),
            sub("continue", "Get the rest of the latest answer here, if it was cut off", json!([])),
            sub("balance", "The Poe account's points and top spenders (admins)", json!([])),
            sub("budget", "Set a user's points per period (bot admins)", json!([
                {"type": 6, "name": "user", "description": "Whose budget", "required": true},
                {"type": 4, "name": "points",
                 "description": "Points per period; leave out to restore the default",
                 "required": false, "min_value": 0},
            ])),
            sub("help", "What the bot can do", json!([])),
        ],
    })
}

/// An option's value, as far as the translation cares.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Text(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
    /// A user, role, channel or other id.
    Id(u64),
    /// Anything else (attachments, nested groups, types added later).
    Other,
}

impl OptionValue {
    fn as_text(&self) -> Option<String> {
        Some(match self {
            OptionValue::Text(text) => text.clone(),
            OptionValue::Integer(number) => number.to_string(),
            OptionValue::Number(number) => number.to_string(),
            OptionValue::Boolean(value) => value.to_string(),
            OptionValue::Id(id) => id.to_string(),
            OptionValue::Other => return None,
        })
    }
}

/// What an invocation of `/poe` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `/poe ask`: a conversation turn.
    Ask(String),
    /// Any other subcommand, as the text after `poe`.
    Command(String),
    /// Not something the bot can read; the reason is for the user.
    Invalid(String),
}

impl Request {
    /// Whether the answer is only for the caller. Decided before the answer exists, because
    /// the first acknowledgement (within Discord's 3 s) fixes it; `is_admin` tells which
    /// changes will be refused (refusals are private).
    pub fn is_private(&self, is_admin: bool) -> bool {
        match self {
            Request::Ask(_) => false,
            Request::Invalid(_) => true,
            // As the core answers them: help (also for what does not parse), the caller's
            // usage, the account's balance, budgets and refusals are private.
            Request::Command(text) => match commands::parse(text) {
                Err(_)
                | Ok(
                    Command::Help
                    | Command::Control(_)
                    | Command::Usage { .. }
                    | Command::Balance
                    | Command::Budget { .. },
                ) => true,
                Ok(Command::Model { name, parameters }) => {
                    !is_admin && (name.is_some() || !parameters.is_empty())
                }
                Ok(Command::Prompt(change)) => !is_admin && change != PromptChange::Show,
                Ok(Command::Models { .. } | Command::Reset) => false,
            },
        }
    }
}

/// Turns `/poe <subcommand> [options]` into a [`Request`].
pub fn translate(subcommand: &str, options: &[(String, OptionValue)]) -> Request {
    let get = |name: &str| {
        options
            .iter()
            .find(|(option, _)| option == name)
            .map(|(_, value)| value)
    };
    let text = |name: &str| get(name).and_then(OptionValue::as_text);
    let unreadable = options
        .iter()
        .find(|(_, value)| *value == OptionValue::Other);
    if let Some((name, _)) = unreadable {
        return Request::Invalid(format!(
            "The option `{name}` has a type this bot does not take."
        ));
    }
    let join = |words: &[Option<String>]| {
        words
            .iter()
            .flatten()
            .map(|word| word.trim())
            .filter(|word| !word.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let sub = subcommand.to_ascii_lowercase();
    match sub.as_str() {
        "ask" => match get("question") {
            Some(OptionValue::Text(question)) if !question.trim().is_empty() => {
                Request::Ask(question.trim().to_owned())
            }
            Some(OptionValue::Text(_)) | None => {
                Request::Invalid("`/poe ask` needs a question.".into())
            }
            Some(_) => Request::Invalid("The question must be text.".into()),
        },
        "budget" => {
            let points = text("points").or_else(|| Some("default".into()));
            Request::Command(join(&[Some(sub.clone()), text("user"), points]))
        }
        "model" => Request::Command(join(&[Some(sub.clone()), text("name"), text("parameters")])),
        "models" => Request::Command(join(&[Some(sub.clone()), text("filter")])),
        "usage" => match get("here") {
            Some(OptionValue::Boolean(true)) => Request::Command("usage here".into()),
            Some(OptionValue::Boolean(false)) | None => Request::Command(sub),
            Some(_) => Request::Invalid("`here` must be true or false.".into()),
        },
        "prompt" => Request::Command(join(&[Some(sub.clone()), text("text")])),
        // The rest take no options; an unknown name gets the core's help.
        _ => Request::Command(sub),
    }
}

/// Autocomplete for `/poe model name:`: the models whose id contains what was typed, best
/// matches (prefix) first, at most Discord's 25.
pub fn model_choices<'a>(typed: &str, models: impl Iterator<Item = &'a str>) -> Vec<String> {
    let needle = typed.trim().to_ascii_lowercase();
    let mut matching: Vec<(bool, String)> = models
        .filter(|id| id.len() <= 100)
        .filter(|id| id.to_ascii_lowercase().contains(&needle))
        .map(|id| (!id.to_ascii_lowercase().starts_with(&needle), id.to_owned()))
        .collect();
    matching.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.to_ascii_lowercase().cmp(&b.1.to_ascii_lowercase()))
    });
    matching.into_iter().take(25).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(name: &str, value: OptionValue) -> (String, OptionValue) {
        (name.to_owned(), value)
    }

    #[test]
    fn every_subcommand_becomes_the_cores_text() {
        use OptionValue::*;
        let cases = [
            (
                "ask",
                vec![option("question", Text(" what is rust? ".into()))],
                Request::Ask("what is rust?".into()),
            ),
            ("balance", vec![], Request::Command("balance".into())),
            ("usage", vec![], Request::Command("usage".into())),
            (
                "usage",
                vec![option("here", Boolean(true))],
                Request::Command("usage here".into()),
            ),
            ("reset", vec![], Request::Command("reset".into())),
            ("stop", vec![], Request::Command("stop".into())),
            ("continue", vec![], Request::Command("continue".into())),
            ("help", vec![], Request::Command("help".into())),
            (
                "budget",
                vec![option("user", Id(7)), option("points", Integer(500))],
                Request::Command("budget 7 500".into()),
            ),
            (
                "budget",
                vec![option("user", Id(7))],
                Request::Command("budget 7 default".into()),
            ),
            (
                "model",
                vec![
                    option("name", Text("Claude-Sonnet-4".into())),
                    option("parameters", Text("thinking_budget=2048".into())),
                ],
                Request::Command("model Claude-Sonnet-4 thinking_budget=2048".into()),
            ),
            ("model", vec![], Request::Command("model".into())),
            (
                "models",
                vec![option("filter", Text("claude".into()))],
                Request::Command("models claude".into()),
            ),
            (
                "prompt",
                vec![option("text", Text("Be brief.".into()))],
                Request::Command("prompt Be brief.".into()),
            ),
        ];
        for (sub, options, expected) in cases {
            assert_eq!(translate(sub, &options), expected, "{sub} {options:?}");
        }
    }

    #[test]
    fn malformed_invocations_get_a_reason_or_the_cores_help() {
        use OptionValue::*;
        assert!(matches!(translate("ask", &[]), Request::Invalid(_)));
        assert!(matches!(
            translate("ask", &[option("question", Text("   ".into()))]),
            Request::Invalid(_)
        ));
        assert!(matches!(
            translate("ask", &[option("question", Integer(3))]),
            Request::Invalid(_)
        ));
        assert!(matches!(
            translate("model", &[option("name", Other)]),
            Request::Invalid(_)
        ));
        // The core's parser explains these, with the help text.
        assert_eq!(
            translate(
                "budget",
                &[option("user", Id(7)), option("points", Text("lots".into()))]
            ),
            Request::Command("budget 7 lots".into())
        );
        assert_eq!(translate("dance", &[]), Request::Command("dance".into()));
        assert_eq!(
            crate::core::commands::parse("budget 7 lots"),
            Err("`lots` is not a number of points".into())
        );
    }

    #[test]
    fn privacy_is_known_before_the_answer() {
        for (request, private) in [
            (Request::Ask("q".into()), false),
            (Request::Command("model".into()), false),
            (Request::Command("model x".into()), true),
            (Request::Command("model thinking_budget=5".into()), true),
            (Request::Command("prompt".into()), false),
            (Request::Command("prompt Be brief.".into()), true),
            (Request::Command("prompt clear".into()), true),
            (Request::Command("balance".into()), true),
            (Request::Command("usage".into()), true),
            (Request::Command("budget 7 5".into()), true),
            (Request::Command("help".into()), true),
            (Request::Command("models".into()), false),
            (Request::Command("reset".into()), false),
            (Request::Command("regenerate".into()), true),
            (Request::Command("dance".into()), true),
            (Request::Command("budget 7 lots".into()), true),
            (Request::Invalid("no".into()), true),
        ] {
            assert_eq!(request.is_private(false), private, "{request:?}");
        }
        // Admins' changes are announced to the channel.
        for change in ["model x", "prompt Be brief.", "prompt clear"] {
            assert!(
                !Request::Command(change.into()).is_private(true),
                "{change}"
            );
        }
        assert!(Request::Command("balance".into()).is_private(true));
    }

    #[test]
    fn the_definition_is_what_discord_accepts() {
        let definition = definition();
        let subs = definition["options"].as_array().expect("options");
        let names: Vec<&str> = subs.iter().filter_map(|sub| sub["name"].as_str()).collect();
        for needed in crate::core::commands::SUBCOMMANDS.iter().chain(&["ask"]) {
            assert!(names.contains(needed), "{needed} is missing");
        }
        for sub in subs {
            let description = sub["description"].as_str().unwrap_or_default();
            assert!((1..=100).contains(&description.chars().count()), "{sub}");
            for option in sub["options"].as_array().into_iter().flatten() {
                let description = option["description"].as_str().unwrap_or_default();
                assert!((1..=100).contains(&description.chars().count()), "{option}");
            }
        }
    }

    #[test]
    fn model_choices_prefer_prefixes_and_stop_at_25() {
        let models = ["GPT-5", "Claude-Sonnet-4", "claude-haiku", "Gemini-2.5-Pro"];
        assert_eq!(
            model_choices("cla", models.iter().copied()),
            vec!["claude-haiku", "Claude-Sonnet-4"]
        );
        assert_eq!(
            model_choices("5", models.iter().copied()),
            vec!["Gemini-2.5-Pro", "GPT-5"]
        );
        let many: Vec<String> = (0..40).map(|n| format!("m{n}")).collect();
        assert_eq!(model_choices("", many.iter().map(String::as_str)).len(), 25);
    }
}

#[cfg(test)]
mod fuzz;
