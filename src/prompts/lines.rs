//! Splits a CLI's output chunks into lines, holding at most `max_line` bytes of an unfinished
//! line: a longer line is cut there and passed on in pieces, so one runaway line never grows
//! memory without bound.

/// Claude Code's `init` line lists every tool; 1 MiB is far beyond any real JSON line.
pub const MAX_LINE_BYTES: usize = 1 << 20;

pub struct LineSplitter {
    partial: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// The complete lines `chunk` finishes (without their newline).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                lines.push(self.take());
            } else {
                self.partial.push(byte);
                if self.partial.len() >= self.max_line {
                    lines.push(self.take());
                }
            }
        }
        lines
    }

    /// What is left after the last newline, at the end of the output.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.partial);
        let line = String::from_utf8_lossy(&bytes);
        line.strip_suffix('\r').unwrap_or(&line).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_chunks_and_a_bounded_runaway() {
        let mut split = LineSplitter::new(8);
        assert_eq!(split.push(b"ab"), Vec::<String>::new());
        assert_eq!(split.push(b"c\r\nde\nf"), ["abc", "de"]);
        assert_eq!(split.push(b"0123456789\n"), ["f0123456", "789"]);
        assert_eq!(split.finish(), None);
        assert_eq!(split.push(b"tail"), Vec::<String>::new());
        assert_eq!(split.finish().as_deref(), Some("tail"));
    }
}
