//! Fuzz targets: arbitrary bytes and structured streams, fed in arbitrary chunks, against an
//! independent reading of the format. Bounded case counts, no persisted failures: a shrunk
//! failure becomes a named test in `tests` above.

use super::*;
use crate::fuzz::config;
use proptest::prelude::*;

/// What feeding `input` in `cuts`-sized chunks gives: the events, whether it failed, and
/// the most bytes the decoder held between two calls that succeeded.
fn feed_in_chunks(input: &[u8], cuts: &[usize], max: usize) -> (Vec<SseEvent>, bool, usize) {
    let mut decoder = SseDecoder::new(max);
    let mut out = Vec::new();
    let mut held = 0;
    let mut rest = input;
    let mut sizes = cuts.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let before = out.len();
        let result = decoder.feed(chunk, &mut out);
        for event in &out[before..] {
            assert!(
                event.event.len() + event.data.len() <= max,
                "an event of {} bytes got past a limit of {max}",
                event.event.len() + event.data.len()
            );
        }
        match result {
            Ok(()) => {
                held = held.max(decoder.line.len() + decoder.event.len() + decoder.data.len());
            }
            Err(err) => {
                assert_eq!(err, EventTooLarge { max });
                let text = err.to_string();
                assert_eq!(text, format!("an event is larger than {max} bytes"));
                return (out, true, held);
            }
        }
    }
    (out, false, held)
}

/// An independent reading of a whole stream, without a size limit: split into lines at
/// CRLF, CR or LF (the text after the last line break is not a line yet), then apply the
/// field rules.
fn reference(input: &[u8]) -> Vec<SseEvent> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                lines.push(&input[start..i]);
                i += if input.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            b'\n' => {
                lines.push(&input[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let mut events = Vec::new();
    let (mut name, mut data, mut has_data) = (String::new(), String::new(), false);
    for (index, line) in lines.into_iter().enumerate() {
        let line = if index == 0 {
            line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
        } else {
            line
        };
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if has_data || !name.is_empty() {
                events.push(SseEvent {
                    event: std::mem::take(&mut name),
                    data: std::mem::take(&mut data),
                });
            }
            (name, data, has_data) = (String::new(), String::new(), false);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.find(':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => name = value.to_owned(),
            "data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    events
}

/// Bytes that exercise the format: line breaks of every kind, colons, spaces, field
/// names, a byte order mark, and invalid UTF-8.
fn stream_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            &b"\n"[..], b"\r", b"\r\n", b"\n\n", b"\r\r", b"\r\n\r\n", b":", b": ", b" ",
            b"data", b"data:", b"data: ", b"event:", b"event: ", b"id: 1", b"retry: 5",
            b": ping", b"\xEF\xBB\xBF", b"{\"text\":\"x\"}", b"[DONE]",
        ])
        .prop_map(<[u8]>::to_vec),
        2 => prop::collection::vec(any::<u8>(), 1..8),
        1 => prop::sample::select(vec![
            &b"\xFF"[..], b"\xC3", b"\xE2\x82", b"\xF0\x9F\x98", b"\xED\xA0\x80",
        ])
            .prop_map(<[u8]>::to_vec),
        1 => Just("h\u{e9} \u{202e}\u{200f}\u{1f468}\u{200d}\u{1f469}".as_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..max_len).prop_map(|pieces| pieces.concat())
}

/// A line of a structured stream.
#[derive(Debug, Clone)]
enum Line {
    Data { colon_space: bool, value: Vec<u8> },
    Event(Vec<u8>),
    Comment(Vec<u8>),
    Other(&'static str, Vec<u8>),
    Blank,
}

/// A field value: anything but a line break, invalid UTF-8 and control characters included.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[^\r\n]{0,24}".prop_map(String::into_bytes),
        1 => prop::collection::vec(
            any::<u8>().prop_filter("no line break", |b| *b != b'\r' && *b != b'\n'),
            0..24,
        ),
        1 => (0usize..3000).prop_map(|n| vec![b'x'; n]),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        4 => (any::<bool>(), value())
            .prop_map(|(colon_space, value)| Line::Data { colon_space, value }),
        2 => value().prop_map(Line::Event),
        1 => value().prop_map(Line::Comment),
        1 => (prop::sample::select(vec!["id", "retry", "Data", "event ", "dat"]), value())
            .prop_map(|(name, value)| Line::Other(name, value)),
        3 => Just(Line::Blank),
    ]
}

/// Serializes `lines` with the given line breaks, and says which events they carry.
fn render(lines: &[(Line, &'static str)], bom: bool) -> (Vec<u8>, Vec<SseEvent>) {
    let mut bytes = Vec::new();
    if bom {
        bytes.extend_from_slice("\u{feff}".as_bytes());
    }
    let mut expected = Vec::new();
    let (mut name, mut data, mut has_data) = (String::new(), String::new(), false);
    let mut previous_break = "";
    for (line, mut line_break) in lines.iter().cloned() {
        match line {
            Line::Data { colon_space, value } => {
                bytes.extend_from_slice(if colon_space { b"data: " } else { b"data:" });
                bytes.extend_from_slice(&value);
                let text = String::from_utf8_lossy(&value).into_owned();
                let text = if colon_space {
                    text
                } else {
                    text.strip_prefix(' ').map(str::to_owned).unwrap_or(text)
                };
                if has_data {
                    data.push('\n');
                }
                data.push_str(&text);
                has_data = true;
            }
            Line::Event(value) => {
                bytes.extend_from_slice(b"event: ");
                bytes.extend_from_slice(&value);
                name = String::from_utf8_lossy(&value).into_owned();
            }
            Line::Comment(value) => {
                bytes.push(b':');
                bytes.extend_from_slice(&value);
            }
            Line::Other(field, value) => {
                bytes.extend_from_slice(field.as_bytes());
                bytes.push(b':');
                bytes.extend_from_slice(&value);
            }
            Line::Blank => {
                // After a CR, a lone LF would be read as the same line break.
                if previous_break == "\r" && line_break == "\n" {
                    line_break = "\r\n";
                }
                if has_data || !name.is_empty() {
                    expected.push(SseEvent {
                        event: std::mem::take(&mut name),
                        data: std::mem::take(&mut data),
                    });
                }
                (name, data, has_data) = (String::new(), String::new(), false);
            }
        }
        bytes.extend_from_slice(line_break.as_bytes());
        previous_break = line_break;
    }
    (bytes, expected)
}

fn line_break() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["\n", "\r", "\r\n"])
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..8)
}

proptest! {
    #![proptest_config(config(256))]

    /// Any bytes: the same events whatever the chunking, and the same as the independent
    /// reading.
    #[test]
    fn fuzz_sse_arbitrary_bytes_any_chunking(input in stream_bytes(80), cuts in cuts()) {
        let (whole, whole_failed, _) = feed_in_chunks(&input, &[input.len().max(1)], 1 << 30);
        let (pieces, pieces_failed, _) = feed_in_chunks(&input, &cuts, 1 << 30);
        let (bytewise, _, _) = feed_in_chunks(&input, &[1], 1 << 30);
        prop_assert!(!whole_failed && !pieces_failed);
        prop_assert_eq!(&pieces, &whole);
        prop_assert_eq!(&bytewise, &whole);
        prop_assert_eq!(&whole, &reference(&input));
    }

    /// A structured stream decodes to the events it was built from, in any chunking.
    #[test]
    fn fuzz_sse_structured_stream_round_trips(
        lines in prop::collection::vec((line(), line_break()), 0..30),
        bom in any::<bool>(),
        cuts in cuts(),
    ) {
        let (bytes, expected) = render(&lines, bom);
        let (got, failed, _) = feed_in_chunks(&bytes, &cuts, 1 << 30);
        prop_assert!(!failed);
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(&reference(&bytes), &expected);
    }

    /// Under a small limit: no event larger than the limit gets out, the decoder never
    /// holds more than the limit, an event over the limit is refused, and what does get out
    /// is what an unlimited decoder gives, in any chunking.
    #[test]
    fn fuzz_sse_limit_is_enforced(
        input in prop_oneof![
            stream_bytes(60),
            (prop::collection::vec((line(), line_break()), 0..12), any::<bool>())
                .prop_map(|(lines, bom)| render(&lines, bom).0),
        ],
        max in 0usize..200,
        cuts in cuts(),
    ) {
        let (got, failed, held) = feed_in_chunks(&input, &cuts, max);
        let (whole, whole_failed, _) = feed_in_chunks(&input, &[input.len().max(1)], max);
        prop_assert_eq!(&got, &whole);
        prop_assert_eq!(failed, whole_failed);
        prop_assert!(held <= max, "held {held} bytes under a limit of {max}");
        let unlimited = reference(&input);
        prop_assert!(unlimited.starts_with(&got));
        if unlimited.iter().any(|event| event.event.len() + event.data.len() > max) {
            prop_assert!(failed, "an event over {max} bytes was not refused");
        }
        if !failed {
            prop_assert_eq!(&got, &unlimited);
        }
    }
}
