//! Fuzz targets for what a Discord message asks: arbitrary text and mentions, messages built
//! from known pieces, and arbitrary JSON shaped like a gateway `MESSAGE_CREATE` payload, read
//! by serenity and, when it reads, classified the way the inbound side does.

use super::*;
use crate::fuzz::{any_json, config, hostile_string, sometimes_mutated};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

fn addressing() -> impl Strategy<Value = Addressing> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(mentions_bot, replies_to_bot, is_direct)| Addressing {
            mentions_bot,
            replies_to_bot,
            is_direct,
        },
    )
}

/// Text dense in mention syntax, broken and whole.
fn mention_text(bot: u64, people: Vec<u64>) -> impl Strategy<Value = String> {
    let mut ids: Vec<String> = people.iter().map(u64::to_string).collect();
    ids.push(bot.to_string());
    ids.extend(
        [
            "0",
            "18446744073709551615",
            "18446744073709551616",
            "007",
            "",
        ]
        .map(str::to_owned),
    );
    let piece = prop_oneof![
        3 => hostile_string(),
        3 => (
            prop::sample::select(ids),
            prop::sample::select(vec!["<@", "<@!", "<@!!", "<@ ", "@"]),
            prop::sample::select(vec![">", "", ">>", " >"]),
        )
            .prop_map(|(id, open, close)| format!("{open}{id}{close}")),
        1 => prop::sample::select(vec![
            "<", "<@", "<@!", ">", ",", ":", " ", "\n", "\u{202e}", "\u{200f}",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
}

fn people(bot: u64) -> impl Strategy<Value = Vec<(u64, String)>> {
    prop::collection::vec((any::<u64>(), hostile_string()), 0..4)
        .prop_map(move |people| people.into_iter().filter(|(id, _)| *id != bot).collect())
}

/// What holds for any classification: only messages for the bot are taken, a bare
/// mention asks for help, the question is trimmed and grows by no more than the names of
/// the people it mentions.
fn check(
    content: &str,
    people: &[(u64, String)],
    addressing: &Addressing,
    has_files: bool,
    got: Option<(Invocation, String)>,
) {
    let addressed = addressing.mentions_bot || addressing.replies_to_bot || addressing.is_direct;
    let Some((invocation, question)) = got else {
        assert!(!addressed, "an addressed message was dropped: {content:?}");
        return;
    };
    assert!(
        addressed,
        "a message not for the bot was taken: {content:?}"
    );
    match &invocation {
        Invocation::Command => {
            assert_eq!(question, "help");
            assert!(!has_files);
        }
        Invocation::Message => {
            let longest = people
                .iter()
                .map(|(_, name)| name.len() + 1)
                .max()
                .unwrap_or(0);
            let mentions = content.matches("<@").count();
            assert!(
                question.len() <= content.len() + mentions * longest,
                "the question grew from {} to {} bytes",
                content.len(),
                question.len()
            );
            assert_eq!(question.trim(), question);
            assert!(
                !question.is_empty() || has_files,
                "an empty question: {content:?}"
            );
        }
        other => panic!("a message's trigger gave {other:?}"),
    }
    if !content.contains("<@") && invocation == Invocation::Message {
        assert_eq!(question, content.trim());
    }
}

/// A piece of a message built to a known reading.
#[derive(Debug, Clone)]
enum Piece {
    /// Text with no `<` in it.
    Text(String),
    /// A mention of the n-th person, typed `<@id>` or `<@!id>`.
    Person(usize, bool),
    /// A mention of someone the message does not list, or an id too large for 64 bits:
    /// left as typed (without the `!`).
    Stranger(u64, bool),
    Overflow(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => hostile_string().prop_map(|text| Piece::Text(text.replace('<', "‹"))),
        2 => (0usize..4, any::<bool>()).prop_map(|(n, bang)| Piece::Person(n, bang)),
        1 => (any::<u64>(), any::<bool>()).prop_map(|(id, bang)| Piece::Stranger(id, bang)),
        1 => "[1-9][0-9]{20,24}".prop_map(Piece::Overflow),
    ]
}

/// A snowflake as Discord sends it (a string), or as a number.
fn snowflake() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (1u64..u64::MAX).prop_map(|id| Value::from(id.to_string())),
        1 => (1u64..u64::MAX).prop_map(Value::from),
    ]
    .boxed()
}

fn user(ids: Vec<u64>) -> BoxedStrategy<Value> {
    let id = prop_oneof![
        3 => prop::sample::select(ids).prop_map(|id| Value::from(id.to_string())),
        1 => snowflake(),
    ];
    let global_name = prop_oneof![Just(Value::Null), hostile_string().prop_map(Value::from)];
    (id, hostile_string(), global_name, any::<bool>())
        .prop_map(|(id, username, global_name, bot)| {
            json!({
                "id": id, "username": username, "global_name": global_name, "bot": bot,
                "discriminator": "0", "avatar": null,
            })
        })
        .boxed()
}

fn attachment() -> BoxedStrategy<Value> {
    (snowflake(), hostile_string(), any::<u32>())
        .prop_map(|(id, filename, size)| {
            json!({
                "id": id, "filename": filename, "size": size,
                "url": "https://cdn.discordapp.com/a",
                "proxy_url": "https://media.discordapp.net/a",
                "content_type": "image/png",
            })
        })
        .boxed()
}

/// A `MESSAGE_CREATE` payload (`d`) with the keys Discord sends, perhaps replying to
/// another (`depth` levels deep).
pub(super) fn message_payload(bot: u64, depth: u32) -> BoxedStrategy<Value> {
    let ids = vec![bot, 7, 8, 9];
    let referenced = if depth == 0 {
        Just(None).boxed()
    } else {
        prop::option::of(message_payload(bot, depth - 1)).boxed()
    };
    (
        (
            snowflake(),
            snowflake(),
            prop::option::of(snowflake()),
            user(ids.clone()),
        ),
        (mention_text(bot, vec![7, 8, 9]), any::<bool>()),
        (
            prop::collection::vec(user(ids), 0..4),
            prop::collection::vec(attachment(), 0..2),
        ),
        (prop::sample::select(vec![0u8, 19, 7]), referenced),
    )
        .prop_map(
            |(head, (content, flag), (mentions, attachments), (kind, referenced))| {
                let (id, channel, guild, author) = head;
                let mut payload = json!({
                    "id": id, "channel_id": channel, "author": author, "content": content,
                    "timestamp": "2024-05-01T12:00:00.000000+00:00", "edited_timestamp": null,
                    "tts": flag, "mention_everyone": false, "mentions": mentions,
                    "mention_roles": [], "attachments": attachments, "embeds": [], "pinned": flag,
                    "type": kind, "referenced_message": referenced,
                });
                if let Some(guild) = guild {
                    payload["guild_id"] = guild;
                }
                payload
            },
        )
        .boxed()
}

/// What the structured target checks (outside `proptest!`, where rustfmt reaches it).
fn structured_case(
    pieces: &[Piece],
    names: &[String],
    led: Option<(bool, &str)>,
    leading_space: &str,
) -> Result<(), TestCaseError> {
    const BOT: u64 = 4_242;
    let people: Vec<(u64, String)> = names
        .iter()
        .enumerate()
        .map(|(n, name)| (100 + n as u64, name.clone()))
        .collect();
    let bang = |bang: bool| if bang { "!" } else { "" };
    let mut content = leading_space.to_owned();
    let mut expected = String::new();
    if let Some((with_bang, separator)) = led {
        content.push_str(&format!("<@{}{BOT}>{separator}", bang(with_bang)));
        // What follows the mention, up to its first space, loses its leading `,`/`:`s.
        expected.push_str(separator);
    }
    for piece in pieces {
        match piece {
            Piece::Text(text) => {
                content.push_str(text);
                expected.push_str(text);
            }
            Piece::Person(n, with_bang) => {
                content.push_str(&format!("<@{}{}>", bang(*with_bang), people[*n].0));
                expected.push('@');
                expected.push_str(&people[*n].1);
            }
            Piece::Stranger(id, with_bang) => {
                let taken = *id == BOT || (100..104).contains(id);
                let id = if taken { id.wrapping_add(1_000) } else { *id };
                content.push_str(&format!("<@{}{id}>", bang(*with_bang)));
                expected.push_str(&format!("<@{id}>"));
            }
            Piece::Overflow(digits) => {
                content.push_str(&format!("<@{digits}>"));
                expected.push_str(&format!("<@{digits}>"));
            }
        }
    }
    let mut expected = expected.trim().to_owned();
    if led.is_some() {
        expected = expected
            .trim_start_matches([',', ':'])
            .trim_start()
            .to_owned();
    }
    let mentioned = Addressing {
        mentions_bot: true,
        ..Addressing::default()
    };
    let got = classify(&content, BOT, &people, &mentioned, false);
    let wanted = if expected.is_empty() {
        (Invocation::Command, "help".to_owned())
    } else {
        (Invocation::Message, expected)
    };
    prop_assert_eq!(got, Some(wanted), "{:?}", content);
    Ok(())
}

/// What the payload target checks: serenity's reading, then the inbound side's.
fn payload_case(payload: &Value, allow_dms: bool) -> Result<(), TestCaseError> {
    const BOT: u64 = 42;
    let Ok(message) = serde_json::from_value::<serenity::all::Message>(payload.clone()) else {
        return Ok(());
    };
    // The reading `DiscordInbound::accept_message` does.
    let is_direct = message.guild_id.is_none();
    if message.author.id.get() == BOT || (is_direct && !allow_dms) {
        return Ok(());
    }
    let replied = message.referenced_message.as_ref();
    let addressing = Addressing {
        mentions_bot: message.mentions.iter().any(|user| user.id.get() == BOT),
        replies_to_bot: replied.is_some_and(|replied| replied.author.id.get() == BOT),
        is_direct,
    };
    let people: Vec<(u64, String)> = message
        .mentions
        .iter()
        .map(|user| {
            let name = user
                .global_name
                .clone()
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(|| user.name.clone());
            (user.id.get(), name)
        })
        .collect();
    let has_files = !message.attachments.is_empty();
    prop_assert_eq!(&message.content, payload["content"].as_str().unwrap());
    let got = classify(&message.content, BOT, &people, &addressing, has_files);
    check(&message.content, &people, &addressing, has_files, got);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text, any mentions, any addressing: no panic and the rules above.
    #[test]
    fn fuzz_discord_classify_arbitrary(
        (bot, people, content) in any::<u64>().prop_flat_map(|bot| {
            people(bot).prop_flat_map(move |people| {
                let ids = people.iter().map(|(id, _)| *id).collect();
                (Just(bot), Just(people), prop_oneof![mention_text(bot, ids), any::<String>()])
            })
        }),
        addressing in addressing(),
        has_files in any::<bool>(),
    ) {
        let got = classify(&content, bot, &people, &addressing, has_files);
        check(&content, &people, &addressing, has_files, got);
    }

    /// A message built from known pieces, perhaps led by the bot's mention and a comma or
    /// colon: people's mentions become their names, the rest stays as typed.
    #[test]
    fn fuzz_discord_classify_structured(
        pieces in prop::collection::vec(piece(), 0..10),
        names in prop::collection::vec(hostile_string(), 4),
        led in prop::option::of((
            any::<bool>(),
            prop::sample::select(vec!["", " ", ",", ", ", ":", ": ", "\n"]),
        )),
        leading_space in prop::sample::select(vec!["", " ", "\t\n "]),
    ) {
        structured_case(&pieces, &names, led, leading_space)?;
    }

    /// Arbitrary JSON shaped like a `MESSAGE_CREATE` payload: serenity reads it or refuses
    /// it without panicking; what it reads is classified as the inbound side does.
    #[test]
    fn fuzz_discord_message_create_payload(
        payload in prop_oneof![
            6 => sometimes_mutated(message_payload(42, 1)),
            1 => any_json().boxed(),
        ],
        allow_dms in any::<bool>(),
    ) {
        payload_case(&payload, allow_dms)?;
    }
}
