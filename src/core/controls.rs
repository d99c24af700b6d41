//! What a press of stop, regenerate or continue (a button, a reaction, `!poe stop`) or an
//! edit of a question comes to: which answer it aims at, whether the presser may, and
//! whether it applies now. A stop acts at once; regenerate and continue become turns
//! ([`super::turn`]) queued in the channel like any question.
//!
//! Only the asker and admins may control an answer. An answer takes one regenerate or
//! continue at a time, so a double press never asks Poe twice; a press on an answer that
//! has ended, or after a restart, gets a plain answer.

use super::boundary::{Control, ControlStyle, Inbound};
use super::running::{Claim, Running};
use super::services::Services;
use super::turn::is_latest;
use crate::store::AnswerRecord;

/// A regenerate or continue to queue in the answer's channel.
pub enum Queued {
    Regenerate {
        answer: u64,
        /// The question's new text, after an edit.
        edited: Option<String>,
        claim: Option<Claim>,
    },
    Continue {
        answer: u64,
        claim: Claim,
    },
}

/// What became of a press.
pub enum Pressed {
    /// The answer was told to stop.
    Stopped,
    Queue(Queued),
    /// Not done, for the reason given to the presser (privately where the platform can).
    Refused {
        reason: &'static str,
        text: String,
    },
    /// Not aimed at an answer (a reaction on someone else's message): nothing to say.
    Ignored,
}

fn refused(reason: &'static str, text: impl Into<String>) -> Pressed {
    Pressed::Refused {
        reason,
        text: text.into(),
    }
}

/// Finds the answer a press aims at: the message it was pressed on, or the channel's latest.
fn aimed_at(
    services: &Services,
    inbound: &Inbound,
    on: Option<&crate::core::boundary::MessageId>,
    style: ControlStyle,
) -> Result<AnswerRecord, Pressed> {
    let store = &services.store;
    let found = match on {
        Some(message) => store.answer_id_for_message(&inbound.channel, message),
        None => store.latest_answer_id(&inbound.channel),
    };
    let id = match found {
        Ok(Some(id)) => id,
        Ok(None) if on.is_some() && style == ControlStyle::Reactions => {
            return Err(Pressed::Ignored);
        }
        Ok(None) if on.is_some() => {
            return Err(refused(
                "control_unknown",
                "The bot no longer keeps that answer, so its buttons do nothing now.",
            ));
        }
        Ok(None) => {
            return Err(refused(
                "control_unknown",
                "There is no answer in this channel to control yet.",
            ));
        }
        Err(err) => {
            tracing::error!(%err, "cannot look up an answer");
            return Err(refused(
                "store_error",
                "The bot cannot read its records right now. Try again later.",
            ));
        }
    };
    match store.answer(id) {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(refused(
            "control_unknown",
            "The bot no longer keeps that answer.",
        )),
        Err(err) => {
            tracing::error!(%err, "cannot read an answer");
            Err(refused(
                "store_error",
                "The bot cannot read its records right now. Try again later.",
            ))
        }
    }
}

/// Decides a press of `control` on message `on` (`None`: the channel's latest answer).
pub fn press(
    services: &Services,
    running: &Running,
    inbound: &Inbound,
    control: Control,
    on: Option<&crate::core::boundary::MessageId>,
    style: ControlStyle,
) -> Pressed {
    let answer = match aimed_at(services, inbound, on, style) {
        Ok(answer) => answer,
        Err(pressed) => return pressed,
    };
    let may = inbound.user_id == answer.asker_id || inbound.is_admin || inbound.is_bot_admin;
    if !may {
        return refused(
            "not_allowed",
            format!(
                "Only {} (who asked) and this room's admins can {} this answer.",
                answer.asker_name,
                control.name()
            ),
        );
    }
    let streaming = running.is_streaming(answer.id);
    match control {
        Control::Stop if running.stop(answer.id, &inbound.user_name) => Pressed::Stopped,
        Control::Stop if streaming => {
            refused("control_twice", "This answer is being stopped already.")
        }
        Control::Stop => refused("control_ended", "This answer has already ended."),
        _ if streaming => refused(
            "control_streaming",
            format!(
                "This answer is still being written. Stop it first, or {} it once it ends.",
                control.name()
            ),
        ),
        _ if !is_latest(services, &answer) => refused(
            "control_not_latest",
            "Only the latest answer in this channel can be regenerated or continued.",
        ),
        Control::Continue if !answer.can_continue() => refused(
            "control_not_applicable",
            "This answer is complete; there is nothing to continue.",
        ),
        Control::Regenerate | Control::Continue => {
            let Some(claim) = running.claim(answer.id) else {
                let doing = match control {
                    Control::Continue => "continued",
                    _ => "regenerated",
                };
                return refused(
                    "control_twice",
                    format!("This answer is being {doing} already."),
                );
            };
            Pressed::Queue(match control {
                Control::Continue => Queued::Continue {
                    answer: answer.id,
                    claim,
                },
                _ => Queued::Regenerate {
                    answer: answer.id,
                    edited: None,
                    claim: Some(claim),
                },
            })
        }
    }
}

/// Decides an edit of the question that was platform event `of`: the channel's latest
/// answer is regenerated with the new text when its asker changed the text. Anything else
/// (an older question, someone else's edit, an edit that only added an embed) does nothing.
pub fn edit(services: &Services, running: &Running, inbound: &Inbound, of: &str) -> Option<Queued> {
    if !services.config.chat.regenerate_on_edit {
        return None;
    }
    let store = &services.store;
    let id = store
        .answer_id_for_question(&inbound.channel, of)
        .map_err(|err| tracing::error!(%err, "cannot look up an edited question"))
        .ok()??;
    let answer = store.answer(id).ok()??;
    if answer.asker_id != inbound.user_id || !is_latest(services, &answer) {
        return None;
    }
    let question = store
        .turn(&answer.channel, answer.question_seq)
        .ok()
        .flatten()?;
    if question.text == inbound.text {
        return None;
    }
    // The old answer goes: an answer still streaming stops first.
    running.stop(answer.id, &inbound.user_name);
    Some(Queued::Regenerate {
        answer: answer.id,
        edited: Some(inbound.text.clone()),
        claim: running.claim(answer.id),
    })
}
