//! Fuzz target for hostile text: control characters, lines far longer than a message with no
//! space in them, unbalanced and odd fences, right-to-left and other invisible marks, ZWJ emoji
//! sequences, graphemes stacked with combining marks (wider than some limits), and CRLF and
//! other line separators. The checks are the module's own invariants (`tests::check_invariants`:
//! bodies give back the text, every message fits, cuts at grapheme boundaries, fences balanced
//! and in step) and the stability of finished parts as the text grows.

use super::tests::{check_invariants, check_stable};
use super::*;
use crate::fuzz::config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn hostile_token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            // Control characters and line separators that are not `\n`.
            "\u{0}", "\u{7}", "\u{8}", "\u{1b}[31m", "\r", "\r\n", "\u{b}", "\u{c}", "\u{7f}",
            "\u{85}", "\u{2028}", "\u{2029}", "\u{feff}",
            // Invisible and direction marks.
            "\u{202e}", "\u{202d}", "\u{200f}", "\u{200e}", "\u{2066}", "\u{2069}", "\u{200b}",
            "\u{200d}", "\u{2060}", "\u{ad}",
            // ZWJ sequences, flags, keycaps, skin tones.
            "👨\u{200d}👩\u{200d}👧\u{200d}👦",
            "🏳\u{fe0f}\u{200d}🌈",
            "🧑🏽\u{200d}🚀",
            "🇺🇳🇯🇵", "1\u{fe0f}\u{20e3}", "\u{200d}\u{200d}",
            // Scripts, wide and right-to-left.
            "مرحبا بالعالم",
            "שלום",
            "日本語テキスト",
            "한국어",
            "ﷺ",
            // Spaces that break and that do not.
            " ", "  ", "\t", "\u{a0}", "\u{3000}", "\u{2009}",
            // Fences: balanced, unbalanced, indented, with odd info strings.
            "\n```\n", "\n```rust\n", "\n~~~\n", "\n````\n", "\n   ```\n", "\n    ```\n",
            "```", "~~~", "``", "\n```a`b\n", "\n```\u{202e}evil\n", "\n~~~~~~~~~~\n",
            "\n\n", "\n", ". ", "? ", "。",
            "words", "x",
        ])
        .prop_map(str::to_owned),
        // A grapheme of many combining marks, up to wider than small limits.
        1 => (1usize..60).prop_map(|n| format!("a{}", "\u{301}\u{323}".repeat(n))),
        // A long line without a space.
        1 => (50usize..3000).prop_map(|n| "x".repeat(n)),
        1 => (10usize..400).prop_map(|n| "👍🏽".repeat(n)),
        1 => (5usize..200).prop_map(|n| "`".repeat(n)),
        1 => any::<String>(),
    ]
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(hostile_token(), 0..60).prop_map(|tokens| tokens.concat())
}

fn unit() -> impl Strategy<Value = LengthUnit> {
    prop_oneof![Just(LengthUnit::Chars), Just(LengthUnit::Utf8Bytes)]
}

/// The checks: the module's invariants where they are promised, and everywhere the bodies
/// giving back the text, the sizes, and cuts at grapheme boundaries.
fn hostile_case(
    text: &str,
    limit: usize,
    unit: LengthUnit,
    prefixes: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    // The documented exceptions to the fence invariants: below 4 bytes a character can be
    // longer than the limit, and a line longer than the limit that starts with a run of
    // fence characters may have to be cut where the messages read its fences differently
    // (`tests::fence_room` waives only some of those lines, the ones its generators make).
    let forced = text
        .split('\n')
        .any(|line| measure(line, unit) > limit.max(1) && fence_head(line).is_some());
    if (unit == LengthUnit::Chars || limit >= 4) && !forced {
        check_invariants(text, limit, unit);
    }
    for index in prefixes {
        check_stable(text, index.index(text.len() + 1), limit, unit);
    }
    let parts = split(text, limit, unit);
    let bodies: String = parts.iter().map(|part| part.body.as_str()).collect();
    prop_assert_eq!(bodies.as_str(), text, "bodies must give back the text");
    let boundaries: std::collections::HashMap<usize, usize> = text
        .grapheme_indices(true)
        .flat_map(|(start, g)| (start..start + g.len()).map(move |at| (at, start)))
        .collect();
    let mut at = 0;
    for part in &parts {
        prop_assert!(!part.body.is_empty());
        at += part.body.len();
        // A cut inside a grapheme only where the grapheme alone is longer than the limit.
        if let Some(&start) = boundaries.get(&at).filter(|start| **start != at) {
            let grapheme = text[start..].graphemes(true).next().unwrap_or("");
            prop_assert!(
                measure(grapheme, unit) > limit.max(1),
                "cut inside {:?}",
                grapheme
            );
        }
        // The one documented overflow: a character longer than a byte limit below 4.
        let rendered = part.render();
        let widest = rendered.chars().map(char::len_utf8).max().unwrap_or(0);
        let overflow = unit == LengthUnit::Utf8Bytes && limit < 4 && rendered.len() == widest;
        prop_assert!(
            measure(&rendered, unit) <= limit.max(1) || overflow,
            "{:?} is over {} {:?}",
            rendered,
            limit,
            unit
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    /// Hostile text at any limit, Discord's and Matrix's included: no panic, the module's
    /// invariants, finished parts that stay as the text grows, and what
    /// `open_fence_closer` says matching an independent reading. 128 cases: one takes
    /// about 20 ms (the invariant checks are quadratic).
    #[test]
    fn fuzz_split_hostile_text(
        (text, limit, unit) in (
            prop_oneof![1usize..40, 40usize..400, Just(2000), Just(8000)],
            unit(),
        )
            .prop_flat_map(|(limit, unit)| {
                // Up to 20 messages' worth: long lines stay many times the limit, and the
                // checks (quadratic in parts × graphemes) stay fast.
                let most = (limit * 20).clamp(200, 12_000);
                hostile_text().prop_map(move |mut text| {
                    if let Some((cut, _)) = text.char_indices().nth(most) {
                        text.truncate(cut);
                    }
                    (text, limit, unit)
                })
            }),
        prefixes in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        hostile_case(&text, limit, unit, &prefixes)?;
        let open = super::tests::ends_in_open_fence(&text);
        prop_assert_eq!(open_fence_closer(&text).is_some(), open);
    }
}
