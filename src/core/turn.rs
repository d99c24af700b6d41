//! One conversation turn, read top to bottom in the order it happens.
//!
//! [`run`] drives a turn through its phases: **admitted** (the question passed its checks and
//! its request is built), **reserved** (the asker's budget holds the worst case), **recorded**
//! (the question, the answer it starts and the reply in flight are on disk before Poe is
//! asked), **streaming** (Poe's answer goes through the renderer; a stop, a graceful stop or a
//! failure ends it early), **settled** (the answer is in the history and the answer record, the
//! charge settled, the controls that now apply offered) and **closed** (the in-flight record is
//! gone, the turn counted and logged).
//!
//! A turn is a new question ([`Kind::Ask`]), the same question again ([`Kind::Regenerate`],
//! after a press of regenerate or an edit of the question) or more of an answer that ended
//! early ([`Kind::Continue`]). Recovery after a crash ([`recover`]) ends a recorded turn the
//! way a graceful stop does, from its in-flight record.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::boundary::{
    Control, ControlStyle, Inbound, InboundFile, MessageId, OutFile, OutMessage, PlatformError,
};
use super::budget::{BudgetError, Reservation, Spender};
use super::cost::Price;
use super::pacing::{Paced, Priority};
use super::queued::PostedNote;
use super::render::split::{measure, open_fence_opener};
use super::render::stream::{Ending, RenderReport, Renderer, Target};
use super::reply;
use super::running::Running;
use super::services::{Services, now_ms};
use crate::config::Config;
use crate::poe::{
    ChatMessage, ChatRequest, FileSource, FinishReason, InputFile, PoeError, PoeEvent, Role,
    Transport, Usage,
};
use crate::store::{
    AnswerRecord, ChannelSettings, Cut, InflightReply, KeptFile, Turn, TurnInFlight, TurnMode,
    TurnRole,
};

/// The note on a reply found unfinished after a restart.
pub const RESTARTED_NOTICE: &str =
    "⚠️ This answer was interrupted: the bot restarted. Continue it to get the rest.";

/// The note on a reply cut short by a bug in the bot.
pub const FAILED_NOTICE: &str =
    "⚠️ This answer was cut off by an error in the bot. Ask again to get a full answer.";

/// The note that ends a reply cut short by a graceful stop.
const STOPPING_NOTICE: &str =
    "Interrupted: the bot is restarting. Continue it in a minute to get the rest.";

/// The note on an answer the model's output limit cut.
const LENGTH_NOTICE: &str =
    "✂️ The answer reached the model's length limit; continue gets the rest.";

/// What the bot asks to have an answer carried on.
const CONTINUE_PROMPT: &str = "Your previous answer was cut off. Continue it exactly where it stopped, without repeating anything and without any preamble.";

/// What a turn is for.
pub enum Kind {
    Ask,
    /// `answer`'s question again; `edited` is its new text when the asker edited it.
    Regenerate {
        answer: AnswerRecord,
        edited: Option<String>,
    },
    Continue {
        answer: AnswerRecord,
    },
}

/// What a turn needs from the manager that runs it.
pub struct TurnEnv<'a> {
    pub services: &'a Services,
    pub running: &'a Running,
    /// Becomes true at a graceful stop's deadline: running replies end now.
    pub interrupt: watch::Receiver<bool>,
}

/// The question a turn answers, wherever it came from.
struct Question {
    text: String,
    files: Vec<InboundFile>,
    asker_id: String,
    asker_name: String,
    is_group: bool,
}

/// Phase one: the question passed its checks; the request is built.
struct Admitted {
    mode: TurnMode,
    question: Question,
    /// The answer as it stood (regenerate, continue).
    before: Option<AnswerRecord>,
    model: String,
    media: bool,
    request: ChatRequest,
    prompt_chars: usize,
    prompt_tokens: u64,
    max_output: u64,
    price: Price,
}

/// Phase two: the budget holds the worst case.
struct Reserved {
    admitted: Admitted,
    spender: Spender,
    reservation: Reservation,
}

/// Phase three: the question, the answer and the reply in flight are on disk.
struct Recorded {
    reserved: Reserved,
    inflight: InflightReply,
    before: AnswerRecord,
}

/// Phase four's result: what Poe sent and how the stream ended.
struct Streamed {
    answer: String,
    usage: Option<Usage>,
    failure: Option<PoeError>,
    interrupted: bool,
    stopped_by: Option<String>,
    length: bool,
    report: RenderReport,
    transport: Transport,
    attempts: u32,
    retry_causes: Vec<&'static str>,
    first_text: Option<std::time::Duration>,
    asked_for: std::time::Duration,
}

/// Runs one turn. `note` is the message a queued question showed, which the answer takes
/// over.
pub async fn run(
    env: TurnEnv<'_>,
    inbound: &Inbound,
    out: &Paced,
    note: Option<PostedNote>,
    kind: Kind,
) {
    let started = tokio::time::Instant::now();
    let note = note.as_ref();
    let Some(admitted) = admit(&env, inbound, out, note, kind).await else {
        return;
    };
    let Some(reserved) = reserve(&env, inbound, out, note, admitted).await else {
        return;
    };
    let recorded = record(&env, inbound, note, reserved).await;
    let streamed = stream(&env, out, inbound, note, &recorded).await;
    settle_and_close(&env, out, recorded, streamed, started).await;
}

/// Answers the asker with `text` instead of asking Poe. Answers to controls are private where
/// the platform can.
async fn refuse(
    env: &TurnEnv<'_>,
    out: &Paced,
    inbound: &Inbound,
    note: Option<&PostedNote>,
    reason: &'static str,
    text: String,
) {
    reply::count_refusal(env.services, &inbound.channel, &inbound.user_id, reason);
    let private = inbound.invocation != super::boundary::Invocation::Message;
    reply::post(
        env.services,
        out,
        &inbound.channel,
        &inbound.event_id,
        note,
        text,
        private,
    )
    .await;
}

async fn admit(
    env: &TurnEnv<'_>,
    inbound: &Inbound,
    out: &Paced,
    note: Option<&PostedNote>,
    kind: Kind,
) -> Option<Admitted> {
    let services = env.services;
    let config = &services.config;
    let channel = &inbound.channel;
    let too_long = |chars: usize| {
        format!(
            "Your message is {chars} characters long; the bot takes questions of up to {} characters. Shorten it, or send the text as a file.",
            config.chat.max_question_chars
        )
    };
    let (mode, question, before) = match kind {
        Kind::Ask => {
            let chars = inbound.text.chars().count();
            if chars > config.chat.max_question_chars {
                refuse(
                    env,
                    out,
                    inbound,
                    note,
                    "question_too_long",
                    too_long(chars),
                )
                .await;
                return None;
            }
            if let Some(file) = inbound
                .attachments
                .iter()
                .find(|file| file.size > config.chat.max_attachment_bytes)
            {
                let text = format!(
                    "`{}` is {} MB; the bot passes on files up to {} MB. Send a smaller file.",
                    file.name,
                    file.size.div_ceil(1 << 20),
                    config.chat.max_attachment_bytes >> 20
                );
                refuse(env, out, inbound, note, "file_too_large", text).await;
                return None;
            }
            let question = Question {
                text: inbound.text.clone(),
                files: inbound.attachments.clone(),
                asker_id: inbound.user_id.clone(),
                asker_name: inbound.user_name.clone(),
                is_group: inbound.is_group,
            };
            (TurnMode::Ask, question, None)
        }
        Kind::Regenerate { answer, .. } | Kind::Continue { answer }
            if !is_latest(services, &answer) =>
        {
            let text = "Only the latest answer in this channel can be regenerated or continued.";
            refuse(env, out, inbound, note, "control_not_latest", text.into()).await;
            return None;
        }
        Kind::Regenerate { answer, .. } | Kind::Continue { answer } if answer.files_lost => {
            let text = "This question came with files the bot does not keep, so it cannot be asked again. Ask it again with the files.";
            refuse(env, out, inbound, note, "control_files_lost", text.into()).await;
            let _ = answer;
            return None;
        }
        Kind::Regenerate { answer, edited } => {
            if let Some(text) = &edited {
                let chars = text.chars().count();
                if chars > config.chat.max_question_chars {
                    refuse(
                        env,
                        out,
                        inbound,
                        note,
                        "question_too_long",
                        too_long(chars),
                    )
                    .await;
                    return None;
                }
            }
            let question = stored_question(env, out, inbound, note, &answer, edited).await?;
            (TurnMode::Regenerate, question, Some(answer))
        }
        Kind::Continue { answer } => {
            if !answer.can_continue() {
                let text = "This answer is complete; there is nothing to continue.";
                refuse(
                    env,
                    out,
                    inbound,
                    note,
                    "control_not_applicable",
                    text.into(),
                )
                .await;
                return None;
            }
            let question = stored_question(env, out, inbound, note, &answer, None).await?;
            (TurnMode::Continue, question, Some(answer))
        }
    };
    let settings = match services.store.channel_settings(channel) {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!(%err, "cannot read channel settings");
            let text = "The bot cannot read its records right now. Try again later.";
            refuse(env, out, inbound, note, "store_error", text.into()).await;
            return None;
        }
    };
    let model = services.model_for(&settings);
    let info = services.catalog.find(&model).await;
    let media = info.as_ref().is_some_and(|info| info.outputs_media());
    let (max_turns, max_chars) = (config.chat.history_max_turns, config.chat.history_max_chars);
    let context = match &before {
        None => services
            .store
            .recent_turns(channel, settings.reset_after, max_turns, max_chars),
        // The context the question had when it was asked.
        Some(answer) => services.store.turns_between(
            channel,
            settings.reset_after,
            answer.question_seq,
            max_turns,
            max_chars,
        ),
    }
    .unwrap_or_else(|err| {
        tracing::error!(%err, "cannot read history; answering without it");
        Vec::new()
    });
    let carry_on = before
        .as_ref()
        .filter(|_| mode == TurnMode::Continue)
        .map(|answer| answer.text.as_str());
    let request = build_request(
        &model, &settings, &context, &question, carry_on, config, media,
    );
    let prompt_chars: usize = request
        .messages
        .iter()
        .map(|message| message.content.chars().count())
        .sum();
    let prompt_tokens = super::cost::worst_case_prompt_tokens(
        request
            .messages
            .iter()
            .map(|message| message.content.len())
            .sum(),
        question.files.len(),
    );
    let max_output = info
        .as_ref()
        .and_then(|info| info.max_output_tokens())
        .map(|limit| (limit.max(1) as u64).min(u64::from(config.chat.max_output_tokens)))
        .unwrap_or(u64::from(config.chat.max_output_tokens));
    let price = Price::of(info.as_ref(), config.poe.model(&model));
    Some(Admitted {
        mode,
        question,
        before,
        model,
        media,
        request,
        prompt_chars,
        prompt_tokens,
        max_output,
        price,
    })
}

/// Whether `answer` is its channel's latest (the only one regenerate and continue take).
pub fn is_latest(services: &Services, answer: &AnswerRecord) -> bool {
    match services.store.latest_answer_id(&answer.channel) {
        Ok(latest) => latest == Some(answer.id),
        Err(err) => {
            tracing::error!(%err, "cannot read the channel's latest answer");
            false
        }
    }
}

/// The question of an answer, from the history (with its new text after an edit).
async fn stored_question(
    env: &TurnEnv<'_>,
    out: &Paced,
    inbound: &Inbound,
    note: Option<&PostedNote>,
    answer: &AnswerRecord,
    edited: Option<String>,
) -> Option<Question> {
    let stored = match env
        .services
        .store
        .turn(&answer.channel, answer.question_seq)
    {
        Ok(stored) => stored,
        Err(err) => {
            tracing::error!(%err, "cannot read the question's turn");
            None
        }
    };
    let Some(stored) = stored else {
        let text = "This question is no longer in the bot's history, so it cannot be asked again.";
        refuse(
            env,
            out,
            inbound,
            note,
            "control_question_gone",
            text.into(),
        )
        .await;
        return None;
    };
    Some(Question {
        text: edited.unwrap_or(stored.text),
        files: answer.files.iter().map(KeptFile::inbound).collect(),
        asker_id: answer.asker_id.clone(),
        asker_name: answer.asker_name.clone(),
        is_group: answer.is_group,
    })
}

async fn reserve(
    env: &TurnEnv<'_>,
    inbound: &Inbound,
    out: &Paced,
    note: Option<&PostedNote>,
    admitted: Admitted,
) -> Option<Reserved> {
    let services = env.services;
    let config = &services.config;
    // Whoever asks (or presses regenerate or continue) pays.
    let spender = services.spender(inbound);
    let points =
        admitted
            .price
            .reservation(&config.budget, admitted.prompt_tokens, admitted.max_output);
    let reserved = services
        .budgets
        .reserve(
            &spender,
            &inbound.channel.to_string(),
            &admitted.model,
            points,
            now_ms(),
        )
        .await;
    match reserved {
        Ok(reservation) => {
            services
                .metrics
                .points("reserved", &admitted.model, reservation.points);
            Some(Reserved {
                admitted,
                spender,
                reservation,
            })
        }
        Err(err) => {
            let reason = match err {
                BudgetError::Over { .. } => "over_budget",
                BudgetError::Store(_) => "store_error",
            };
            let text = err.user_message(config.budget.period);
            refuse(env, out, inbound, note, reason, text).await;
            None
        }
    }
}

async fn record(
    env: &TurnEnv<'_>,
    inbound: &Inbound,
    note: Option<&PostedNote>,
    reserved: Reserved,
) -> Recorded {
    let store = &env.services.store;
    let channel = &inbound.channel;
    let admitted = &reserved.admitted;
    let question = &admitted.question;
    let before = match &admitted.before {
        Some(answer) => {
            if admitted.mode == TurnMode::Regenerate
                && let Ok(Some(mut turn)) = store.turn(channel, answer.question_seq)
                && turn.text != question.text
            {
                // The asker edited the question: later turns see the new text.
                turn.text = question.text.clone();
                if let Err(err) = store.replace_turn(channel, &turn) {
                    tracing::error!(%err, "cannot record the edited question");
                }
            }
            answer.clone()
        }
        None => {
            let turn = Turn::new(
                TurnRole::User,
                &question.asker_id,
                &question.asker_name,
                &question.text,
                inbound.timestamp_ms,
            );
            let question_seq = store.append_turn(channel, &turn).unwrap_or_else(|err| {
                tracing::error!(%err, "cannot record the user's turn");
                0
            });
            // A queued note is the answer's first message: its record carries on.
            let id = note.map_or_else(
                || store.next_id().unwrap_or(reserved.reservation.ledger_id),
                |note| note.record,
            );
            let files_lost = question
                .files
                .iter()
                .any(|file| matches!(file.source, FileSource::Bytes(_)));
            let answer = AnswerRecord {
                id,
                channel: channel.clone(),
                question_event: inbound.event_id.clone(),
                question_seq,
                answer_seq: None,
                asker_id: question.asker_id.clone(),
                asker_name: question.asker_name.clone(),
                is_group: question.is_group,
                files: question
                    .files
                    .iter()
                    .filter_map(|file| match &file.source {
                        FileSource::Url(url) => Some(KeptFile {
                            name: file.name.clone(),
                            content_type: file.content_type.clone(),
                            size: file.size,
                            url: url.clone(),
                        }),
                        FileSource::Bytes(_) => None,
                    })
                    .collect(),
                files_lost,
                model: admitted.model.clone(),
                messages: note
                    .map(|note| vec![note.message.clone()])
                    .unwrap_or_default(),
                text: String::new(),
                cut: Some(Cut::Interrupted),
                offered: Vec::new(),
                reactions: Vec::new(),
            };
            // Findable (for a stop, an edit) while it streams.
            if let Err(err) = store.put_answer(&answer) {
                tracing::error!(%err, "cannot record the answer");
            }
            answer
        }
    };
    // A regenerated answer takes over the old one's messages; a continued one adds new ones.
    let messages = match admitted.mode {
        TurnMode::Ask | TurnMode::Regenerate => before.messages.clone(),
        TurnMode::Continue => Vec::new(),
    };
    let inflight = InflightReply {
        id: before.id,
        channel: channel.clone(),
        reply_to: before.question_event.clone(),
        ledger_id: Some(reserved.reservation.ledger_id),
        started_ms: now_ms(),
        last_text: note.map(|note| note.text.clone()).unwrap_or_default(),
        messages,
        turn: Some(TurnInFlight {
            mode: admitted.mode,
            answer: before.clone(),
            text: String::new(),
        }),
    };
    if let Err(err) = store.put_inflight(&inflight) {
        tracing::error!(%err, "cannot record the reply in flight");
    }
    // The question, the reservation and the in-flight record must survive a crash from here
    // on: make them durable before Poe is asked.
    if let Err(err) = store.flush().await {
        tracing::error!(%err, "cannot flush the store");
    }
    Recorded {
        reserved,
        inflight,
        before,
    }
}

async fn stream(
    env: &TurnEnv<'_>,
    out: &Paced,
    inbound: &Inbound,
    note: Option<&PostedNote>,
    recorded: &Recorded,
) -> (Streamed, AnswerRecord) {
    let services = env.services;
    let admitted = &recorded.reserved.admitted;
    let before = &recorded.before;
    let channel = &inbound.channel;
    let mode = admitted.mode;
    let streaming = env.running.start(before.id);
    let mut stopped = streaming.stopped.clone();

    // Controls the answer offered before go while it streams; a stop is offered instead.
    let mut shown_before = before.clone();
    if mode != TurnMode::Ask {
        withdraw_controls(out, &mut shown_before, &[]).await;
    }
    let placeholders: Vec<(MessageId, String)> = match mode {
        TurnMode::Ask => note
            .map(|note| vec![(note.message.clone(), note.text.clone())])
            .unwrap_or_default(),
        TurnMode::Regenerate => before
            .messages
            .iter()
            .map(|message| (message.clone(), String::new()))
            .collect(),
        TurnMode::Continue => Vec::new(),
    };
    // Text that carries on inside a code block reopens it in the new message.
    let reopen = match mode {
        TurnMode::Continue => open_fence_opener(&before.text).unwrap_or_default(),
        _ => String::new(),
    };

    let (messages_seen, mut messages_changed) = watch::channel(Vec::<MessageId>::new());
    let answer_so_far = Arc::new(Mutex::new(String::new()));
    let mut start_record = recorded.inflight.clone();
    if let Some(turn) = &mut start_record.turn {
        turn.answer.reactions = shown_before.reactions.clone();
        turn.answer.offered = shown_before.offered.clone();
    }
    let inflight = Arc::new(Mutex::new(start_record));
    let progress = {
        let store = services.store.clone();
        let record = inflight.clone();
        let answer_so_far = answer_so_far.clone();
        let channel = channel.clone();
        let answer_id = before.id;
        move |messages: &[MessageId], last_text: &str| {
            let mut record = record
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for message in messages.iter().filter(|id| !record.messages.contains(id)) {
                if let Err(err) = store.index_answer_message(&channel, message, answer_id) {
                    tracing::warn!(%err, "cannot index the answer's message");
                }
            }
            record.messages = messages.to_vec();
            record.last_text = last_text.to_owned();
            if let Some(turn) = &mut record.turn {
                turn.text = answer_so_far
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
            }
            let result = store.put_inflight(&record);
            messages_seen.send_replace(messages.to_vec());
            let store = store.clone();
            Box::pin(async move {
                if let Err(err) = result {
                    tracing::warn!(%err, "cannot update the reply in flight");
                }
                if let Err(err) = store.flush().await {
                    tracing::warn!(%err, "cannot flush the store");
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        }
    };
    let renderer = Renderer::start(
        Target {
            paced: out.clone(),
            channel: channel.clone(),
            reply_to: Some(before.question_event.clone()),
            placeholders,
        },
        Some(Box::new(progress)),
    );
    let placeholder = admitted
        .media
        .then(|| format!("{reopen}⏳ {} is working on it…", admitted.model));
    match &placeholder {
        Some(text) => renderer.append(text),
        None if !reopen.is_empty() => renderer.append(&reopen),
        None => {}
    }
    // Where reactions show the controls, the stop goes on the answer's first message.
    let mut stop_offered = out.control_style() != ControlStyle::Reactions;
    if !stop_offered
        && let Some(first) = before
            .messages
            .first()
            .filter(|_| mode != TurnMode::Continue)
    {
        offer_stop(services, out, &inflight, &mut shown_before, first).await;
        stop_offered = true;
    }

    let mut answer = String::new();
    let mut usage: Option<Usage> = None;
    let mut files: Vec<OutFile> = Vec::new();
    let mut failure: Option<PoeError> = None;
    let mut interrupted = false;
    let mut length = false;
    let mut interrupt = env.interrupt.clone();
    let asked = tokio::time::Instant::now();
    let mut first_text = None;
    let mut poe = services.poe.stream(admitted.request.clone());
    loop {
        let item = tokio::select! {
            item = poe.next() => item,
            _ = async { drop(interrupt.wait_for(|now| *now).await) } => {
                interrupted = true;
                break;
            }
            _ = async { drop(stopped.wait_for(Option::is_some).await) } => break,
            Ok(()) = messages_changed.changed(), if !stop_offered => {
                let first = messages_changed.borrow_and_update().first().cloned();
                if let Some(first) = first {
                    offer_stop(services, out, &inflight, &mut shown_before, &first).await;
                    stop_offered = true;
                }
                continue;
            }
        };
        let Some(item) = item else {
            break;
        };
        let piece = match item {
            Ok(PoeEvent::Text(text)) => text,
            Ok(PoeEvent::Replace(text)) => {
                answer.clear();
                text
            }
            Ok(PoeEvent::File(file)) => {
                files.push(OutFile {
                    name: file.name.clone(),
                    content_type: file.content_type.clone(),
                    url: file.url.clone(),
                });
                let separator = if answer.is_empty() { "" } else { "\n" };
                if file.content_type.starts_with("image/") {
                    format!("{separator}![{}]({})", file.name, file.url)
                } else {
                    format!("{separator}[{}]({})", file.name, file.url)
                }
            }
            Ok(PoeEvent::Usage(reported)) => {
                usage = Some(reported);
                continue;
            }
            Ok(PoeEvent::Finished(reason)) => {
                length = reason == FinishReason::Length;
                continue;
            }
            Ok(PoeEvent::SuggestedReply(_)) => continue,
            Err(err) => {
                failure = Some(err);
                break;
            }
        };
        if first_text.is_none() && !piece.is_empty() {
            first_text = Some(asked.elapsed());
        }
        answer.push_str(&piece);
        answer_so_far
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone_from(&answer);
        if placeholder.is_some() || answer.len() == piece.len() {
            renderer.replace(&format!("{reopen}{answer}"));
        } else {
            renderer.append(&piece);
        }
    }
    // Done with Poe: closing the stream stops the generation (and its cost) while the final
    // edit is made.
    let (transport, attempts) = (poe.transport(), poe.attempts());
    let retry_causes = poe.retry_causes().to_vec();
    drop(poe);
    let stopped_by = stopped.borrow().clone();
    drop(streaming);
    if placeholder.is_some() && answer.is_empty() {
        renderer.replace(&reopen);
    }
    let ending = match (&failure, answer.is_empty()) {
        _ if interrupted => Ending::Failed {
            notice: STOPPING_NOTICE.into(),
        },
        _ if stopped_by.is_some() => Ending::Cut {
            notice: format!(
                "⏹️ Stopped by {}.",
                stopped_by.as_deref().unwrap_or("someone")
            ),
        },
        (Some(err), _) => Ending::Failed {
            notice: err.user_message(),
        },
        (None, true) => Ending::Failed {
            notice: "The model sent an empty answer.".into(),
        },
        (None, false) if length => Ending::Cut {
            notice: LENGTH_NOTICE.into(),
        },
        (None, false) => Ending::Complete,
    };
    let report = renderer.finish(ending).await;
    if report.crashed {
        close_crashed_reply(services, out, recorded.inflight.id).await;
    }
    for file in &files {
        if let Err(err) = out
            .send_file(channel, file, Some(&before.question_event))
            .await
        {
            // The answer's text links to the file, so the user still has it.
            tracing::warn!(channel = %channel, %err, "cannot post a file from the answer");
        }
    }
    let streamed = Streamed {
        answer,
        usage,
        failure,
        interrupted,
        stopped_by,
        length,
        report,
        transport,
        attempts,
        retry_causes,
        first_text,
        asked_for: asked.elapsed(),
    };
    (streamed, shown_before)
}

async fn settle_and_close(
    env: &TurnEnv<'_>,
    out: &Paced,
    recorded: Recorded,
    (streamed, shown_before): (Streamed, AnswerRecord),
    started: tokio::time::Instant,
) {
    let services = env.services;
    let config = &services.config;
    let Recorded {
        reserved,
        inflight,
        before: _,
    } = recorded;
    let Reserved {
        admitted,
        spender,
        reservation,
    } = reserved;
    let channel = &inflight.channel;
    let report = &streamed.report;

    // Settled: the answer as it now stands, in the history and its record.
    let cut = if streamed.interrupted || report.crashed {
        Some(Cut::Interrupted)
    } else if streamed.stopped_by.is_some() {
        Some(Cut::Stopped)
    } else if streamed.failure.is_some() {
        Some(Cut::Failed)
    } else if streamed.length {
        Some(Cut::Length)
    } else {
        None
    };
    let mut answer = finish_answer(
        services,
        admitted.mode,
        shown_before,
        &streamed.answer,
        report.messages.clone(),
        cut,
        &admitted.model,
    );
    offer_controls(out, &mut answer).await;
    if let Err(err) = services.store.put_answer(&answer) {
        tracing::error!(%err, "cannot record the answer");
    }

    let released = streamed.interrupted
        || report.crashed
        || (streamed.answer.is_empty() && streamed.failure.is_some());
    let settled = if released {
        // Nothing was produced (Poe does not charge refused or failed requests), or the
        // reply was cut short by a restart: give the reservation back; reconciliation brings
        // in whatever Poe charged.
        services
            .budgets
            .release(reservation.ledger_id, now_ms())
            .map(|()| 0)
    } else {
        // What was used (a stopped answer too), never above the reservation: the budget
        // check counted that much, so concurrent requests cannot overspend; reconciliation
        // brings in Poe's own figure later.
        let points = admitted
            .price
            .estimate(
                &config.budget,
                admitted.prompt_chars,
                streamed.answer.chars().count(),
                streamed.usage.as_ref(),
            )
            .min(reservation.points);
        services
            .budgets
            .settle(reservation.ledger_id, points, now_ms())
            .map(|()| points)
    };

    // Closed.
    if let Err(err) = services.store.remove_inflight(inflight.id) {
        tracing::error!(%err, "cannot clear the reply in flight");
    }
    // The answer, the charge and the cleared record belong together on disk.
    if let Err(err) = services.store.flush().await {
        tracing::error!(%err, "cannot flush the store");
    }
    let outcome = match &streamed.failure {
        _ if streamed.interrupted => "interrupted",
        _ if report.crashed => "internal_error",
        _ if streamed.stopped_by.is_some() => "stopped",
        None if streamed.answer.is_empty() => "empty",
        None => "ok",
        Some(err) => err.kind(),
    };
    let model = &admitted.model;
    let metrics = &services.metrics;
    let completion_tokens = streamed
        .usage
        .as_ref()
        .and_then(|usage| usage.completion_tokens)
        .unwrap_or(streamed.answer.chars().count() as u64 / 4);
    metrics.request(model, outcome);
    metrics.tokens_streamed(model, completion_tokens);
    if let Some(elapsed) = streamed.first_text {
        metrics.time_to_first_token(model, elapsed);
    }
    metrics.reply_duration(model, streamed.asked_for);
    metrics.edits(channel.platform.as_str(), report.edits);
    for cause in &streamed.retry_causes {
        metrics.poe_retry(cause);
    }
    if let Ok(points) = settled {
        metrics.points("settled", model, points);
    }
    let kind = match admitted.mode {
        TurnMode::Ask => "ask",
        TurnMode::Regenerate => "regenerate",
        TurnMode::Continue => "continue",
    };
    tracing::info!(
        channel = %channel,
        user = %spender.key,
        model = %model,
        kind,
        transport = ?streamed.transport,
        attempts = streamed.attempts,
        answer_chars = streamed.answer.chars().count(),
        tokens = completion_tokens,
        points_reserved = reservation.points,
        points_settled = settled.unwrap_or(-1),
        messages = report.messages.len(),
        edits = report.edits,
        platform_429s = report.rate_limited,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = %outcome,
        "conversation turn"
    );
}

/// Writes what a turn got to into the history and returns the answer as it now stands: a new
/// answer is appended; a regenerated one hides the old and is appended; a continued one
/// extends the old. `messages` are the messages the turn showed. Shared with recovery.
fn finish_answer(
    services: &Services,
    mode: TurnMode,
    before: AnswerRecord,
    text: &str,
    messages: Vec<MessageId>,
    cut: Option<Cut>,
    model: &str,
) -> AnswerRecord {
    let store = &services.store;
    let mut answer = before;
    let channel = answer.channel.clone();
    let append = |text: &str| {
        let mut turn = Turn::new(TurnRole::Bot, "bot", model, text, now_ms());
        turn.cut = cut;
        store
            .append_turn(&channel, &turn)
            .map_err(|err| tracing::error!(%err, "cannot record the answer"))
            .ok()
    };
    match mode {
        TurnMode::Ask => {
            answer.messages = messages;
            if !text.is_empty() {
                answer.answer_seq = append(text);
            }
            answer.text = text.to_owned();
            answer.cut = cut;
        }
        TurnMode::Regenerate => {
            answer.messages = messages;
            if !text.is_empty() {
                if let Some(seq) = answer.answer_seq
                    && let Ok(Some(mut old)) = store.turn(&channel, seq)
                {
                    old.hidden = true;
                    if let Err(err) = store.replace_turn(&channel, &old) {
                        tracing::error!(%err, "cannot hide the regenerated answer");
                    }
                }
                answer.answer_seq = append(text);
                answer.text = text.to_owned();
                answer.cut = cut;
            }
        }
        TurnMode::Continue => {
            answer.messages.extend(messages);
            if !text.is_empty() {
                answer.text.push_str(text);
                answer.cut = cut;
                match answer.answer_seq.map(|seq| store.turn(&channel, seq)) {
                    Some(Ok(Some(mut turn))) => {
                        turn.text = answer.text.clone();
                        turn.cut = cut;
                        if let Err(err) = store.replace_turn(&channel, &turn) {
                            tracing::error!(%err, "cannot record the continued answer");
                        }
                    }
                    _ => answer.answer_seq = append(&answer.text),
                }
            }
        }
    }
    answer
}

/// The controls that apply to an ended answer.
fn controls_for(answer: &AnswerRecord) -> Vec<Control> {
    let mut controls = Vec::new();
    if !answer.files_lost {
        controls.push(Control::Regenerate);
    }
    if answer.can_continue() {
        controls.push(Control::Continue);
    }
    controls
}

/// Offers the controls that apply to an ended answer on its last message, taking back any
/// others (a stop reaction, say).
async fn offer_controls(out: &Paced, answer: &mut AnswerRecord) {
    let wanted = controls_for(answer);
    let Some(last) = answer.messages.last().cloned() else {
        return;
    };
    match out.control_style() {
        ControlStyle::None => {}
        ControlStyle::Buttons => {
            // The final edit took the stop button away; only a change needs a call.
            if wanted.is_empty() && answer.offered.is_empty() {
                return;
            }
            match out.set_buttons(&answer.channel, &last, &wanted).await {
                Ok(()) => answer.offered = wanted,
                Err(err) => tracing::warn!(%err, "cannot show the answer's buttons"),
            }
        }
        ControlStyle::Reactions => {
            withdraw_controls(out, answer, &wanted).await;
            for control in wanted {
                if answer.reactions.iter().any(|(have, _)| *have == control) {
                    continue;
                }
                match out.react(&answer.channel, &last, control).await {
                    Ok(reaction) => answer.reactions.push((control, reaction)),
                    Err(err) => tracing::warn!(%err, "cannot react to offer a control"),
                }
            }
            answer.offered = answer
                .reactions
                .iter()
                .map(|(control, _)| *control)
                .collect();
        }
    }
}

/// Takes back the controls an answer offers, except `keep`.
pub async fn withdraw_controls(out: &Paced, answer: &mut AnswerRecord, keep: &[Control]) {
    match out.control_style() {
        ControlStyle::None => {}
        ControlStyle::Buttons => {
            if answer.offered.is_empty() {
                return;
            }
            let Some(last) = answer.messages.last() else {
                return;
            };
            let kept: Vec<Control> = answer
                .offered
                .iter()
                .copied()
                .filter(|control| keep.contains(control))
                .collect();
            match out.set_buttons(&answer.channel, last, &kept).await {
                Ok(()) => answer.offered = kept,
                Err(err) => tracing::warn!(%err, "cannot take the answer's buttons back"),
            }
        }
        ControlStyle::Reactions => {
            let mut kept = Vec::new();
            for (control, reaction) in std::mem::take(&mut answer.reactions) {
                if keep.contains(&control) {
                    kept.push((control, reaction));
                    continue;
                }
                if let Err(err) = out.unreact(&answer.channel, &reaction).await {
                    tracing::warn!(%err, "cannot take a control's reaction back");
                }
            }
            answer.reactions = kept;
            answer.offered = answer
                .reactions
                .iter()
                .map(|(control, _)| *control)
                .collect();
        }
    }
}

/// Offers stop (as a reaction) on the answer's first message while it streams, and keeps
/// the reaction in the reply's in-flight record, so recovery can take it back.
async fn offer_stop(
    services: &Services,
    out: &Paced,
    inflight: &Mutex<InflightReply>,
    answer: &mut AnswerRecord,
    first: &MessageId,
) {
    match out.react(&answer.channel, first, Control::Stop).await {
        Ok(reaction) => answer.reactions.push((Control::Stop, reaction)),
        Err(err) => {
            tracing::warn!(%err, "cannot react to offer stop");
            return;
        }
    }
    let mut record = inflight
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(turn) = &mut record.turn {
        turn.answer.reactions = answer.reactions.clone();
        turn.answer.offered = answer.offered.clone();
    }
    if let Err(err) = services.store.put_inflight(&record) {
        tracing::warn!(%err, "cannot update the reply in flight");
    }
}

/// The request for one turn: system prompt, earlier turns (speakers named in group chats),
/// the question with its files, and for a continued answer the text so far with the ask to
/// go on.
fn build_request(
    model: &str,
    settings: &ChannelSettings,
    history: &[Turn],
    question: &Question,
    carry_on: Option<&str>,
    config: &Config,
    media: bool,
) -> ChatRequest {
    let speaker = |name: &str, text: &str| {
        if question.is_group {
            format!("{name}: {text}")
        } else {
            text.to_owned()
        }
    };
    let mut messages = Vec::with_capacity(history.len() + 4);
    if let Some(prompt) = &settings.system_prompt {
        messages.push(ChatMessage::new(Role::System, prompt.clone()));
    }
    for turn in history {
        messages.push(match turn.role {
            TurnRole::User => ChatMessage::user(speaker(&turn.author_name, &turn.text)),
            TurnRole::Bot => ChatMessage::new(Role::Bot, turn.text.clone()),
        });
    }
    let mut asked = ChatMessage::user(speaker(&question.asker_name, &question.text));
    asked.attachments = question
        .files
        .iter()
        .map(|file| InputFile {
            name: file.name.clone(),
            content_type: file.content_type.clone(),
            source: file.source.clone(),
        })
        .collect();
    messages.push(asked);
    if let Some(text) = carry_on {
        messages.push(ChatMessage::new(Role::Bot, text.to_owned()));
        messages.push(ChatMessage::user(CONTINUE_PROMPT.to_owned()));
    }
    let mut request = ChatRequest::new(model, messages);
    request.parameters = settings.parameters.clone();
    request.max_output_tokens = Some(config.chat.max_output_tokens);
    request.streaming = !media;
    request
}

/// Ends the message of a reply whose render task failed with a note, from what its in-flight
/// record says the chat shows.
async fn close_crashed_reply(services: &Services, out: &Paced, inflight_id: u64) {
    for record in inflight_where(services, |record| record.id == inflight_id) {
        mark_failed(out, &record).await;
        // Marked once: a later failure in this turn must not mark it again. The turn itself
        // settles the reservation.
        if let Err(err) = services.store.remove_inflight(record.id) {
            tracing::error!(%err, "cannot clear the reply in flight");
        }
    }
}

/// The replies in flight that `wanted` picks; none if the store cannot be read.
pub fn inflight_where(
    services: &Services,
    wanted: impl Fn(&InflightReply) -> bool,
) -> Vec<InflightReply> {
    match services.store.inflight_replies() {
        Ok(records) => records
            .into_iter()
            .filter(|record| wanted(record))
            .collect(),
        Err(err) => {
            tracing::error!(%err, "cannot read replies left in flight");
            Vec::new()
        }
    }
}

/// Ends a reply cut short by a bug with a note. The bug may lie in the platform itself, so a
/// panic here is caught too.
pub async fn mark_failed(out: &Paced, record: &InflightReply) {
    use futures_util::FutureExt;
    let noted = std::panic::AssertUnwindSafe(mark_interrupted(out, record, FAILED_NOTICE))
        .catch_unwind()
        .await;
    if noted.is_err() {
        tracing::error!(channel = %record.channel, "cannot mark a failed reply either");
    }
}

/// Ends a recorded turn that will not finish (the bot crashed or its turn panicked): the chat
/// gets `notice`, the history and the answer record keep what the chat showed so it can be
/// continued, and the reservation goes back. `out` is `None` when the platform is not
/// running.
pub async fn recover(
    services: &Services,
    out: Option<&Paced>,
    record: &InflightReply,
    notice: &str,
) {
    if let Some(out) = out {
        mark_interrupted(out, record, notice).await;
    }
    if let Some(turn) = &record.turn {
        let mut answer = finish_answer(
            services,
            turn.mode,
            turn.answer.clone(),
            &turn.text,
            record.messages.clone(),
            Some(Cut::Interrupted),
            &turn.answer.model,
        );
        if let Some(out) = out {
            offer_controls(out, &mut answer).await;
        }
        if let Err(err) = services.store.put_answer(&answer) {
            tracing::error!(%err, "cannot record the interrupted answer");
        }
    }
    if let Some(ledger_id) = record.ledger_id
        && let Err(err) = services.budgets.release(ledger_id, now_ms())
    {
        tracing::error!(%err, "cannot release an interrupted reservation");
    }
    if let Err(err) = services.store.remove_inflight(record.id) {
        tracing::error!(%err, "cannot clear an interrupted reply");
    }
}

/// Tells the channel an answer was cut off: a final edit of its last message when the notice
/// fits, otherwise a new message in reply to the question.
async fn mark_interrupted(out: &Paced, record: &InflightReply, notice: &str) {
    let limits = out.limits();
    let amended = format!("{}\n\n{notice}", record.last_text);
    let fits = measure(&amended, limits.length_unit) <= limits.max_message_len;
    let mut edit_first = fits && !record.last_text.is_empty() && !record.messages.is_empty();
    for _ in 0..5 {
        let result = match record.messages.last() {
            Some(last) if edit_first => {
                out.edit(&record.channel, last, &amended, false, Priority::Urgent)
                    .await
            }
            _ => out
                .send(
                    &record.channel,
                    OutMessage {
                        text: notice.into(),
                        reply_to: Some(record.reply_to.clone()),
                        continuation: false,
                        private: false,
                        live: false,
                    },
                    Priority::Urgent,
                )
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => return,
            // The pacing holds the channel back for the platform's retry-after.
            Err(PlatformError::RateLimited { .. }) => {}
            Err(err) => {
                tracing::warn!(channel = %record.channel, %err, "cannot edit an interrupted reply");
                if !edit_first {
                    return;
                }
                // The message may be gone: say it in a new one.
                edit_first = false;
            }
        }
    }
}
