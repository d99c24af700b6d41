//! The bot's commands: one parser and one set of handlers for every platform.
//!
//! Discord users type `/poe <sub>`, Matrix users `!poe <sub>` (or `/poe <sub>` as text); the
//! adapter passes what follows `poe`. Output is markdown that reads well on both.

use serde_json::Value;

use super::period;
use super::services::Services;
use crate::core::boundary::{Control, Inbound};

/// Every subcommand, for adapters deciding whether `!poe <word>` is a command or a question.
pub const SUBCOMMANDS: &[&str] = &[
    "help",
    "balance",
    "usage",
    "budget",
    "model",
    "models",
    "prompt",
    "reset",
    "stop",
    "regenerate",
    "continue",
];

pub fn is_subcommand(word: &str) -> bool {
    SUBCOMMANDS.contains(&word.to_ascii_lowercase().as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Balance,
    /// The caller's own usage, or (`usage here`) this room's spend by person.
    Usage {
        here: bool,
    },
    /// `budget <user> <points|default>`.
    Budget {
        user: String,
        points: Option<i64>,
    },
    /// `model` shows; `model <name> [key=value …]` or `model key=value …` changes.
    Model {
        name: Option<String>,
        parameters: Vec<(String, String)>,
    },
    Models {
        filter: Option<String>,
    },
    Prompt(PromptChange),
    Reset,
    /// `stop`, `regenerate`, `continue`: the channel's latest answer (run by the manager as
    /// a press of the control).
    Control(Control),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptChange {
    Show,
    Set(String),
    Clear,
}

/// The outcome of parsing: a command, or why the input is not one (answered with help).
pub type Parsed = Result<Command, String>;

/// Parses what follows `poe`.
pub fn parse(input: &str) -> Parsed {
    let input = input.trim();
    let (word, rest) = match input.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (input, ""),
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    match word.to_ascii_lowercase().as_str() {
        "" | "help" => Ok(Command::Help),
        "balance" => Ok(Command::Balance),
        "usage" => match rest.to_ascii_lowercase().as_str() {
            "" => Ok(Command::Usage { here: false }),
            "here" => Ok(Command::Usage { here: true }),
            _ => Err("`usage` takes nothing, or `here` for this room's spending".into()),
        },
        "reset" => Ok(Command::Reset),
        "stop" => Ok(Command::Control(Control::Stop)),
        "regenerate" => Ok(Command::Control(Control::Regenerate)),
        "continue" => Ok(Command::Control(Control::Continue)),
        "models" => Ok(Command::Models {
            filter: (!rest.is_empty()).then(|| rest.to_owned()),
        }),
        "budget" => match words.as_slice() {
            [user, points] => {
                let points = if points.eq_ignore_ascii_case("default") {
                    None
                } else {
                    Some(
                        points
                            .parse::<i64>()
                            .ok()
                            .filter(|points| *points >= 0)
                            .ok_or_else(|| format!("`{points}` is not a number of points"))?,
                    )
                };
                Ok(Command::Budget {
                    user: user_id(user),
                    points,
                })
            }
            _ => Err("`budget` takes a user and a number of points (or `default`)".into()),
        },
        "model" => {
            let mut name = None;
            let mut parameters = Vec::new();
            for (index, word) in words.iter().enumerate() {
                match word.split_once('=') {
                    Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                        parameters.push((key.to_owned(), value.to_owned()))
                    }
                    Some(_) => return Err(format!("`{word}` is not `key=value`")),
                    None if index == 0 => name = Some((*word).to_owned()),
                    None => return Err(format!("`{word}` is not `key=value`")),
                }
            }
            Ok(Command::Model { name, parameters })
        }
        "prompt" => Ok(Command::Prompt(match rest {
            "" => PromptChange::Show,
            text if text.eq_ignore_ascii_case("clear") => PromptChange::Clear,
            text => PromptChange::Set(text.to_owned()),
        })),
        other => Err(format!("`{other}` is not a command")),
    }
}

/// A user as typed: a Discord mention (`<@123>`, `<@!123>`) or a plain id.
fn user_id(text: &str) -> String {
    text.trim_start_matches("<@")
        .trim_start_matches('!')
        .trim_end_matches('>')
        .to_owned()
}

pub fn help_text() -> String {
    [
        "**Poe commands**",
        "• `help`: this list",
        "• `usage`: what you have spent and what is left",
        "• `usage here`: who spent what in this room or channel this period (its admins)",
        "• `models [text]`: the models Poe offers (filtered by text)",
        "• `model`: this channel's model and its parameters",
        "• `model <name> [key=value …]`: change them (this room's or server's admins)",
        "• `prompt`: this channel's system prompt; `prompt <text>` or `prompt clear` to change it (this room's or server's admins)",
        "• `reset`: forget the conversation so far (it stays on disk, but is no longer sent)",
        "• `stop`, `regenerate`, `continue`: the latest answer here: end it now, ask again for a new one, or get the rest of one that was cut off (its asker and this room's admins)",
        "• `balance`: the Poe account's points, recent burn and top spenders (the bot's own admins)",
        "• `budget <user> <points|default>`: set a user's budget per period (the bot's own admins)",
    ]
    .join("\n")
}

/// A command's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// Only the caller should see it, where the platform can do that.
    pub private: bool,
}

fn public(text: String) -> Reply {
    Reply {
        text,
        private: false,
    }
}

fn private(text: String) -> Reply {
    Reply {
        text,
        private: true,
    }
}

/// A refusal for what concerns this room or server: it says which right is missing.
fn room_admins_only(what: &str) -> Reply {
    private(format!(
        "Only admins of this room or server (or the bot's own admins) can {what}."
    ))
}

/// A refusal for what concerns the whole Poe account or other communities.
fn bot_admins_only(what: &str) -> Reply {
    private(format!(
        "Only the bot's own admins (set by its operator) can {what}. Being an admin of a room or server is not enough: anyone can create one."
    ))
}

/// Runs a parsed command (or answers a parse failure with help).
pub async fn execute(services: &Services, inbound: &Inbound, parsed: Parsed, now_ms: i64) -> Reply {
    let command = match parsed {
        Ok(command) => command,
        Err(reason) => return private(format!("{reason}.\n\n{}", help_text())),
    };
    match run(services, inbound, command, now_ms).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::error!(%err, "a command failed");
            private(
                "That did not work: the bot could not reach its records. Try again later.".into(),
            )
        }
    }
}

async fn run(
    services: &Services,
    inbound: &Inbound,
    command: Command,
    now_ms: i64,
) -> Result<Reply, crate::store::StoreError> {
    let store = &services.store;
    let channel = &inbound.channel;
    Ok(match command {
        Command::Help => private(help_text()),
        Command::Usage { here: true } if !inbound.is_admin => {
            room_admins_only("see who spent what here")
        }
        Command::Usage { here: true } => {
            let resets =
                period::format_utc(period::bounds(services.budgets.config().period, now_ms).1);
            let here = channel.to_string();
            let spenders = services.budgets.top_spenders(now_ms, 10, Some(&here))?;
            let mut lines = vec![format!(
                "**Spent here this period** (until {resets}), by the people who asked here:"
            )];
            if spenders.is_empty() {
                lines.push("nobody yet".into());
            }
            for (rank, (name, points)) in spenders.iter().enumerate() {
                lines.push(format!("{}. {name}: {points} points", rank + 1));
            }
            private(lines.join("\n"))
        }
        Command::Usage { here: false } => {
            let standing = services
                .budgets
                .standing(&services.spender(inbound), now_ms)?;
            let resets = period::format_utc(standing.resets_at_ms);
            private(match standing.limit {
                Some(limit) => format!(
                    "You have used **{}** of **{limit}** points this period ({} requests); **{}** left. It resets at {resets}.",
                    standing.spent,
                    standing.requests,
                    (limit - standing.spent).max(0)
                ),
                None => format!(
                    "You have used **{}** points this period ({} requests). As an admin you have no limit. The period resets at {resets}.",
                    standing.spent, standing.requests
                ),
            })
        }
        Command::Balance if !inbound.is_bot_admin => {
            bot_admins_only("see the Poe account's balance and who spends it")
        }
        Command::Balance => private(balance(services, now_ms).await?),
        Command::Budget { .. } if !inbound.is_bot_admin => bot_admins_only("set budgets"),
        Command::Budget { user, points } => {
            let key = format!("{}:{user}", channel.platform);
            services.budgets.set_limit(&key, points)?;
            private(match points {
                Some(points) => format!("`{user}` may now spend **{points}** points per period."),
                None => format!(
                    "`{user}` is back to the default budget of **{}** points per period.",
                    services.budgets.config().default_points
                ),
            })
        }
        Command::Models { filter } => public(models(services, filter.as_deref()).await),
        Command::Model {
            name: None,
            parameters,
        } if parameters.is_empty() => public(show_model(services, inbound).await?),
        Command::Model { .. } if !inbound.is_admin => room_admins_only("change the model here"),
        Command::Model { name, parameters } => {
            public(change_model(services, inbound, name, parameters).await?)
        }
        Command::Prompt(PromptChange::Show) => {
            let settings = store.channel_settings(channel)?;
            public(match settings.system_prompt {
                Some(prompt) => format!(
                    "This channel's system prompt:\n> {}",
                    prompt.replace('\n', "\n> ")
                ),
                None => "This channel has no system prompt.".into(),
            })
        }
        Command::Prompt(_) if !inbound.is_admin => {
            room_admins_only("change the system prompt here")
        }
        Command::Prompt(change) => {
            let prompt = match change {
                PromptChange::Set(text) => Some(text),
                _ => None,
            };
            let cleared = prompt.is_none();
            store.update_channel_settings(channel, |settings| {
                settings.system_prompt = prompt.clone()
            })?;
            public(if cleared {
                "The system prompt is cleared.".into()
            } else {
                "The system prompt is set; it applies from the next question.".into()
            })
        }
        // The manager runs these as presses of the control; nothing reaches here.
        Command::Control(control) => private(format!(
            "`{}` works on the latest answer in a channel the bot answers in.",
            control.name()
        )),
        Command::Reset => {
            store.reset_channel(channel)?;
            public("Done: the conversation starts fresh from here. Earlier messages are no longer sent to the model.".into())
        }
    })
}

async fn balance(services: &Services, now_ms: i64) -> Result<String, crate::store::StoreError> {
    let mut lines = Vec::new();
    match services.poe.balance().await {
        Ok(balance) => {
            let points = balance
                .current_point_balance
                .map(|points| points.to_string())
                .unwrap_or_else(|| "unknown".into());
            lines.push(format!("**Poe balance:** {points} points"));
        }
        Err(err) => lines.push(format!(
            "**Poe balance:** unavailable ({})",
            err.user_message()
        )),
    }
    let day_ago_us = (now_ms - 86_400_000) * 1000;
    match services.poe.points_history_since(day_ago_us, 10).await {
        Ok(entries) => {
            let burned: i64 = entries.iter().filter_map(|entry| entry.cost_points).sum();
            lines.push(format!(
                "**Last 24 hours:** {burned} points over {} requests",
                entries.len()
            ));
        }
        Err(err) => lines.push(format!(
            "**Last 24 hours:** unavailable ({})",
            err.user_message()
        )),
    }
    let top = services.budgets.top_spenders(now_ms, 5, None)?;
    if top.is_empty() {
        lines.push("**Top spenders this period:** nobody yet".into());
    } else {
        lines.push("**Top spenders this period:**".into());
        for (rank, (name, points)) in top.iter().enumerate() {
            lines.push(format!("{}. {name}: {points} points", rank + 1));
        }
    }
    Ok(lines.join("\n"))
}

/// Most models listed in one answer; narrow the list with a filter.
const MAX_LISTED: usize = 40;

async fn models(services: &Services, filter: Option<&str>) -> String {
    let Some(list) = services.catalog.models().await else {
        return "Poe's model list is unavailable right now. Try again later.".into();
    };
    let needle = filter.map(str::to_ascii_lowercase);
    let mut matching: Vec<_> = list
        .iter()
        .filter(|model| {
            needle
                .as_ref()
                .is_none_or(|needle| model.id.to_ascii_lowercase().contains(needle))
        })
        .collect();
    matching.sort_by_key(|model| model.id.to_ascii_lowercase());
    if matching.is_empty() {
        return format!("No model matches `{}`.", filter.unwrap_or_default());
    }
    let mut lines = vec![format!("**{} models**", matching.len())];
    for model in matching.iter().take(MAX_LISTED) {
        let price = model
            .pricing
            .as_ref()
            .and_then(|pricing| Some((pricing.prompt?, pricing.completion?)))
            .map(|(input, output)| {
                format!(": ${:.2} / ${:.2} per M tokens", input * 1e6, output * 1e6)
            })
            .unwrap_or_default();
        let media = if model.outputs_media() {
            format!(" ({})", model.output_modalities().join(", "))
        } else {
            String::new()
        };
        lines.push(format!("• `{}`{price}{media}", model.id));
    }
    if matching.len() > MAX_LISTED {
        lines.push(format!(
            "…and {} more. Narrow the list with `models <text>`.",
            matching.len() - MAX_LISTED
        ));
    }
    lines.join("\n")
}

async fn show_model(
    services: &Services,
    inbound: &Inbound,
) -> Result<String, crate::store::StoreError> {
    let settings = services.store.channel_settings(&inbound.channel)?;
    let name = services.model_for(&settings);
    let mut text = format!("This channel uses **{name}**.");
    if !settings.parameters.is_empty() {
        let set: Vec<String> = settings
            .parameters
            .iter()
            .map(|(key, value)| {
                format!(
                    "`{key}={}`",
                    value
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| value.to_string())
                )
            })
            .collect();
        text.push_str(&format!("\nParameters: {}", set.join(", ")));
    }
    if let Some(model) = services.catalog.find(&name).await {
        let declared = model.parameters.as_deref().unwrap_or_default();
        if !declared.is_empty() {
            text.push_str("\nIt accepts:");
            for spec in declared {
                text.push_str(&format!("\n• `{}`: {}", spec.name, spec.describe()));
            }
        }
    }
    Ok(text)
}

async fn change_model(
    services: &Services,
    inbound: &Inbound,
    name: Option<String>,
    parameters: Vec<(String, String)>,
) -> Result<String, crate::store::StoreError> {
    let current = services.store.channel_settings(&inbound.channel)?;
    let target = name.clone().unwrap_or_else(|| services.model_for(&current));
    let catalog = services.catalog.models().await;
    let info = match &catalog {
        Some(list) => match list
            .iter()
            .find(|model| model.id.eq_ignore_ascii_case(&target))
        {
            Some(model) => Some(model.clone()),
            None => {
                return Ok(format!(
                    "Poe has no model called `{target}`. `models {}` lists similar ones.",
                    target.chars().take(6).collect::<String>()
                ));
            }
        },
        None => None,
    };
    let mut values = serde_json::Map::new();
    for (key, raw) in &parameters {
        let value = match info.as_ref() {
            Some(model) => match model.parameter(key) {
                Some(spec) => match spec.parse_value(raw) {
                    Ok(value) => value,
                    Err(problem) => return Ok(format!("Not changed: {problem}.")),
                },
                None => {
                    let known: Vec<&str> = model
                        .parameters
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|spec| spec.name.as_str())
                        .collect();
                    return Ok(if known.is_empty() {
                        format!("Not changed: `{}` takes no parameters.", model.id)
                    } else {
                        format!(
                            "Not changed: `{}` has no parameter `{key}`; it accepts {}.",
                            model.id,
                            known.join(", ")
                        )
                    });
                }
            },
            // Without Poe's list nothing can be checked; keep the text as given.
            None => Value::String(raw.clone()),
        };
        values.insert(key.clone(), value);
    }
    let model_name = info
        .as_ref()
        .map(|model| model.id.clone())
        .unwrap_or(target);
    let switching = name.is_some();
    services
        .store
        .update_channel_settings(&inbound.channel, |settings| {
            if switching {
                settings.model = Some(model_name.clone());
                settings.parameters = values.clone();
            } else {
                for (key, value) in &values {
                    settings.parameters.insert(key.clone(), value.clone());
                }
            }
        })?;
    let mut text = format!("This channel now uses **{model_name}**");
    if !values.is_empty() {
        let set: Vec<String> = values
            .iter()
            .map(|(key, value)| format!("`{key}={value}`"))
            .collect();
        text.push_str(&format!(" with {}", set.join(", ")));
    }
    text.push('.');
    if catalog.is_none() {
        text.push_str(
            " (Poe's model list was unavailable, so the name and parameters were not checked.)",
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(""), Ok(Command::Help));
        assert_eq!(parse("HELP"), Ok(Command::Help));
        assert_eq!(parse("balance"), Ok(Command::Balance));
        assert_eq!(
            parse("budget <@!42> 500"),
            Ok(Command::Budget {
                user: "42".into(),
                points: Some(500)
            })
        );
        assert_eq!(
            parse("budget @ann:example.org default"),
            Ok(Command::Budget {
                user: "@ann:example.org".into(),
                points: None
            })
        );
        assert!(parse("budget ann -5").is_err());
        assert!(parse("budget ann").is_err());
        assert_eq!(
            parse("model Claude-Sonnet-4.6 thinking_budget=2048"),
            Ok(Command::Model {
                name: Some("Claude-Sonnet-4.6".into()),
                parameters: vec![("thinking_budget".into(), "2048".into())]
            })
        );
        assert_eq!(
            parse("model aspect_ratio=16:9"),
            Ok(Command::Model {
                name: None,
                parameters: vec![("aspect_ratio".into(), "16:9".into())]
            })
        );
        assert!(parse("model a b").is_err());
        assert!(parse("model a =x").is_err());
        assert_eq!(
            parse("models claude"),
            Ok(Command::Models {
                filter: Some("claude".into())
            })
        );
        assert_eq!(parse("prompt"), Ok(Command::Prompt(PromptChange::Show)));
        assert_eq!(
            parse("prompt clear"),
            Ok(Command::Prompt(PromptChange::Clear))
        );
        assert_eq!(
            parse("prompt Be  brief.\nAlways."),
            Ok(Command::Prompt(PromptChange::Set(
                "Be  brief.\nAlways.".into()
            )))
        );
        assert_eq!(parse("reset"), Ok(Command::Reset));
        assert_eq!(parse("Stop"), Ok(Command::Control(Control::Stop)));
        assert_eq!(
            parse("regenerate"),
            Ok(Command::Control(Control::Regenerate))
        );
        assert_eq!(parse("continue"), Ok(Command::Control(Control::Continue)));
        assert!(
            parse("dance")
                .unwrap_err()
                .contains("`dance` is not a command")
        );
        assert!(is_subcommand("Model") && !is_subcommand("what"));
    }
}

#[cfg(test)]
pub(crate) mod fuzz;
