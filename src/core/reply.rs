//! Short answers that are not streamed (command results, refusals, notices), posted through
//! the pacing and split to the platform's length, with the few retries a rate limit needs.

use super::boundary::{ChannelKey, OutMessage, PlatformError};
use super::pacing::{Paced, Priority};
use super::queued::PostedNote;
use super::render::split::split;
use super::services::Services;

/// Posts `text` in reply to `reply_to`, split if needed; a queued question's note becomes its
/// first part (and its in-flight record is cleared).
pub async fn post(
    services: &Services,
    out: &Paced,
    channel: &ChannelKey,
    reply_to: &str,
    note: Option<&PostedNote>,
    text: String,
    private: bool,
) {
    let limits = out.limits();
    for (index, part) in split(&text, limits.max_message_len, limits.length_unit)
        .iter()
        .enumerate()
    {
        let text = part.render();
        let note = note.filter(|_| index == 0);
        for _ in 0..5 {
            let result = match note {
                Some(note) => {
                    out.edit(channel, &note.message, &text, false, Priority::Urgent)
                        .await
                }
                None => {
                    let message = OutMessage {
                        text: text.clone(),
                        reply_to: Some(reply_to.to_owned()),
                        continuation: index > 0,
                        private,
                        live: false,
                    };
                    out.send(channel, message, Priority::Urgent)
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => break,
                // The pacing holds the channel back for the platform's retry-after.
                Err(PlatformError::RateLimited { .. }) => {}
                Err(err) => {
                    tracing::warn!(channel = %channel, %err, "cannot post a reply");
                    break;
                }
            }
        }
    }
    if let Some(note) = note
        && let Err(err) = services.store.remove_inflight(note.record)
    {
        tracing::error!(%err, "cannot clear the queued note's record");
    }
}

/// Counts and logs something asked of the bot that it did not do, with `reason`, like the
/// turn line of a turn that ran.
pub fn count_refusal(services: &Services, channel: &ChannelKey, user: &str, reason: &'static str) {
    services.metrics.refusal(reason);
    tracing::info!(%channel, user, reason, "question refused");
}
