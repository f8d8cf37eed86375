//! A server-sent events decoder: bytes in, `(event, data)` pairs out, across chunk borders.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        for &byte in chunk {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.on_line(&line, out);
            } else {
                self.line.push(byte);
            }
        }
    }

    /// Flushes an event the stream ended without a blank line after.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, out);
        }
        self.on_line(b"", out);
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data || self.event.is_some() {
                out.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
                self.has_data = false;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SseDecoder, SseEvent};

    #[test]
    fn decodes_across_chunks() {
        let mut decoder = SseDecoder::default();
        let mut out = Vec::new();
        for chunk in ["event: a\r\nda", "ta: {\"x\"", ":1}\r\n\r\n: ping\n\ndata: [DONE]\n", "\n", "data: tail"] {
            decoder.push(chunk.as_bytes(), &mut out);
        }
        decoder.finish(&mut out);
        assert_eq!(
            out,
            vec![
                SseEvent { event: Some("a".into()), data: "{\"x\":1}".into() },
                SseEvent { event: None, data: "[DONE]".into() },
                SseEvent { event: None, data: "tail".into() },
            ]
        );
    }
}
