//! Records of the same shape: an agent sends the same record again and
//! again (one workload trying one destination), each with its own seq,
//! uid, time and pid. Such a record need not be read token by token: it
//! is compared with the record before it, byte by byte.
//!
//! When the scanner reads a line it marks how each byte may differ in a
//! line that reads the same ([`Shape`]): a byte of a string or number the
//! store skips may change within its string or number (a string byte to
//! any ASCII byte that is neither a quote, a backslash nor a control
//! character; a digit to a digit, but the first of several not to 0); the
//! digits of `time` and `count` the same way, and they are read again;
//! every other byte (structure, keys, escapes, literals, the strings and
//! numbers that make the key) must stay. A line of the same length whose
//! every differing byte is allowed is then JSON of the same structure with
//! the same keys and the same values where the store reads them, but
//! `time` and `count`: exactly what the scanner, or serde_json, would read
//! from it. Non-ASCII bytes never change (so the line stays UTF-8).

use std::ops::Range;

/// The byte must stay.
pub(super) const FIXED: u8 = 0;
/// A byte of a skipped string: any ASCII byte that may stand in a string
/// unescaped.
pub(super) const TEXT: u8 = 1;
/// A digit: any digit.
pub(super) const DIGIT: u8 = 2;
/// The first digit of several: any digit but 0.
pub(super) const LEAD: u8 = 3;

/// How each byte of a line the scanner read may differ in a line that
/// reads the same, and where its `time` and `count` are.
#[derive(Debug, Default)]
pub(super) struct Shape {
    pub classes: Vec<u8>,
    pub time: Option<Range<usize>>,
    pub count: Option<Range<usize>>,
    /// Made by the scanner (false: it declined the line, and there is no
    /// shape to compare with).
    pub valid: bool,
}

/// `time` and `count` of a line of the same shape (None where the line
/// the shape was made from had none or null).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Values {
    pub time: Option<u64>,
    pub count: Option<u64>,
}

/// The value of at most 19 decimal digits.
pub(super) fn int_value(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'))
}

impl Shape {
    /// Starts a shape for a line of `len` bytes: every byte fixed.
    pub fn start(&mut self, len: usize) {
        self.classes.clear();
        self.classes.resize(len, FIXED);
        self.time = None;
        self.count = None;
        self.valid = false;
    }

    /// When `line` has the shape of `template` (the line this shape was
    /// made from), its `time` and `count`.
    pub fn matches(&self, template: &[u8], line: &[u8]) -> Option<Values> {
        if !self.valid || line.len() != template.len() || self.classes.len() != line.len() {
            return None;
        }
        let words = template.chunks_exact(8).zip(line.chunks_exact(8));
        for (w, (a, b)) in words.enumerate() {
            if a != b && !self.may_differ(w * 8, a, b) {
                return None;
            }
        }
        let tail = template.len() - template.len() % 8;
        if !self.may_differ(tail, &template[tail..], &line[tail..]) {
            return None;
        }
        let read = |at: &Option<Range<usize>>| at.clone().map(|r| int_value(&line[r]));
        Some(Values {
            time: read(&self.time),
            count: read(&self.count),
        })
    }

    /// Whether bytes `a` (of the template, from `at`) may be `b`.
    fn may_differ(&self, at: usize, a: &[u8], b: &[u8]) -> bool {
        a.iter().zip(b).enumerate().all(|(k, (&x, &y))| {
            x == y
                || (x.is_ascii()
                    && match self.classes[at + k] {
                        TEXT => (0x20..0x80).contains(&y) && y != b'"' && y != b'\\',
                        DIGIT => y.is_ascii_digit(),
                        LEAD => matches!(y, b'1'..=b'9'),
                        _ => false,
                    })
        })
    }
}

#[cfg(test)]
mod tests;
