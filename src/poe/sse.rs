//! A server-sent-events decoder (the WHATWG `text/event-stream` format) with a size limit.
//!
//! Both Poe transports speak SSE. Bytes arrive in arbitrary chunks; the decoder turns them into
//! whole events and refuses to buffer more than `max_event_bytes` for a single event, so a
//! misbehaving server cannot make the bot grow without bound.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty when absent (the OpenAI transport sends none).
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event is larger than {max} bytes")]
pub struct EventTooLarge {
    pub max: usize,
}

#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    skip_lf: bool,
    at_start: bool,
    max_event_bytes: usize,
}

impl SseDecoder {
    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            skip_lf: false,
            at_start: true,
            max_event_bytes,
        }
    }

    /// Feeds a chunk; complete events are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        for &byte in chunk {
            if self.skip_lf {
                self.skip_lf = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.end_line(out);
                    self.skip_lf = true;
                }
                _ => self.line.push(byte),
            }
            // Checked after each line too: invalid UTF-8 grows threefold when it is read
            // (each bad byte becomes U+FFFD), and the event's name is held as well.
            if self.buffered() > self.max_event_bytes {
                return Err(EventTooLarge {
                    max: self.max_event_bytes,
                });
            }
        }
        Ok(())
    }

    /// Bytes held for the event being read: its name, its data and the unfinished line.
    fn buffered(&self) -> usize {
        self.line.len() + self.event.len() + self.data.len()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut bytes = self.line.as_slice();
        if std::mem::take(&mut self.at_start) {
            // A UTF-8 byte order mark may start the stream; it is not part of the first field.
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let line = String::from_utf8_lossy(bytes).into_owned();
        self.line.clear();
        if line.is_empty() {
            if self.has_data || !self.event.is_empty() {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return; // a comment, used as a keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields do not matter to a one-shot request
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            decoder.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn decodes_named_and_unnamed_events_across_any_chunking() {
        let input = "\u{feff}event: text\r\ndata: {\"text\": \"h\u{e9}\"}\r\n\r\n: keep-alive\n\ndata: a\ndata: b\n\nevent: done\ndata: {}\r\rdata: tail-without-blank-line\n";
        let expected = vec![
            SseEvent {
                event: "text".into(),
                data: "{\"text\": \"h\u{e9}\"}".into(),
            },
            SseEvent {
                event: String::new(),
                data: "a\nb".into(),
            },
            SseEvent {
                event: "done".into(),
                data: "{}".into(),
            },
        ];
        for piece in 1..input.len() {
            assert_eq!(
                decode_in_pieces(input.as_bytes(), piece),
                expected,
                "piece {piece}"
            );
        }
    }

    #[test]
    fn an_event_name_without_data_is_still_dispatched() {
        assert_eq!(
            decode_in_pieces(b"event: ping\n\n", 3),
            vec![SseEvent {
                event: "ping".into(),
                data: String::new()
            }]
        );
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut decoder = SseDecoder::new(1024);
        let mut out = Vec::new();
        let big = format!("data: {}\n", "x".repeat(600));
        decoder.feed(big.as_bytes(), &mut out).unwrap();
        assert_eq!(
            decoder.feed(big.as_bytes(), &mut out),
            Err(EventTooLarge { max: 1024 })
        );
        let mut decoder = SseDecoder::new(1024);
        let no_newline = vec![b'y'; 5000];
        assert!(decoder.feed(&no_newline, &mut out).is_err());
    }

    /// Found by `fuzz::fuzz_sse_limit_is_enforced`: each invalid byte became a 3-byte U+FFFD
    /// only after the size check, so 1,000 bad bytes under a 1,024-byte limit came out as an
    /// event of 3,000 bytes.
    #[test]
    fn invalid_utf8_cannot_inflate_an_event_past_the_limit() {
        let mut input = b"data: ".to_vec();
        input.extend(std::iter::repeat_n(0xFF, 1000));
        input.extend_from_slice(b"\n\n");
        let mut decoder = SseDecoder::new(1024);
        let mut out = Vec::new();
        assert_eq!(
            decoder.feed(&input, &mut out),
            Err(EventTooLarge { max: 1024 })
        );
        assert!(out.is_empty(), "{} bytes got out", out[0].data.len());
    }

    /// Found by `fuzz::fuzz_sse_limit_is_enforced`: the event's name was not counted, so a
    /// name and data each just under the limit made an event of twice the limit.
    #[test]
    fn an_events_name_counts_toward_the_limit() {
        let input = format!(
            "event: {}\ndata: {}\n\n",
            "n".repeat(1000),
            "d".repeat(1000)
        );
        let mut decoder = SseDecoder::new(1024);
        let mut out = Vec::new();
        assert_eq!(
            decoder.feed(input.as_bytes(), &mut out),
            Err(EventTooLarge { max: 1024 })
        );
        assert!(out.is_empty());
    }
}

#[cfg(test)]
mod fuzz;
