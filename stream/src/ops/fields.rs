//! Splitting lines into fields and the byte-level number helpers every operator shares.
//!
//! These run once or more per record on the hot path, so nothing here allocates: a field is a
//! slice of the line, integers are parsed from and written to bytes by hand (no `str` detour,
//! no `format!`).

use memchr::memmem::Finder;

/// How a line splits into fields.
#[derive(Debug, Clone)]
pub enum Delimiter {
    /// Runs of ASCII whitespace; leading and trailing whitespace make no empty fields (awk's rule).
    Whitespace,
    /// One byte: found with memchr; two delimiters in a row make an empty field.
    Byte(u8),
    /// A longer literal string (boxed: a searcher is large, and rare).
    Bytes(Box<Finder<'static>>),
}

/// Finds field `$N` of a line. `$0` is the whole line.
#[derive(Debug, Clone)]
pub struct Fields {
    delimiter: Delimiter,
}

impl Default for Fields {
    fn default() -> Fields {
        Fields {
            delimiter: Delimiter::Whitespace,
        }
    }
}

impl Fields {
    /// From a spec's `delimiter`: absent or empty → whitespace runs, else the literal string.
    pub fn new(delimiter: Option<&str>) -> Fields {
        let delimiter = match delimiter.map(str::as_bytes) {
            None | Some([]) => Delimiter::Whitespace,
            Some([byte]) => Delimiter::Byte(*byte),
            Some(bytes) => Delimiter::Bytes(Box::new(Finder::new(bytes).into_owned())),
        };
        Fields { delimiter }
    }

    /// Field `n` (1-based; 0 = the whole line), or `None` when the line has fewer fields.
    #[inline]
    pub fn field<'a>(&self, line: &'a [u8], n: usize) -> Option<&'a [u8]> {
        if n == 0 {
            return Some(line);
        }
        match &self.delimiter {
            Delimiter::Whitespace => whitespace_field(line, n),
            Delimiter::Byte(byte) => {
                let mut start = 0;
                for _ in 1..n {
                    start += memchr::memchr(*byte, &line[start..])? + 1;
                }
                let end = memchr::memchr(*byte, &line[start..]).map_or(line.len(), |at| start + at);
                Some(&line[start..end])
            }
            Delimiter::Bytes(finder) => {
                let step = finder.needle().len();
                let mut start = 0;
                for _ in 1..n {
                    start += finder.find(&line[start..])? + step;
                }
                let end = finder.find(&line[start..]).map_or(line.len(), |at| start + at);
                Some(&line[start..end])
            }
        }
    }

    /// Whether fields are split on whitespace runs (callers on hot paths call
    /// `whitespace_field` directly so it inlines).
    pub fn is_whitespace(&self) -> bool {
        matches!(self.delimiter, Delimiter::Whitespace)
    }
}

/// Field `n` (1-based) of `line` split on runs of ASCII whitespace.
#[inline(always)]
pub fn whitespace_field(line: &[u8], n: usize) -> Option<&[u8]> {
    let mut at = 0;
    let mut index = 0;
    loop {
        while at < line.len() && line[at].is_ascii_whitespace() {
            at += 1;
        }
        if at == line.len() {
            return None;
        }
        let start = at;
        while at < line.len() && !line[at].is_ascii_whitespace() {
            at += 1;
        }
        index += 1;
        if index == n {
            return Some(&line[start..at]);
        }
    }
}

/// A decimal integer with an optional sign and nothing else; `None` on anything else or overflow.
#[inline]
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.first()? {
        b'-' => (true, &bytes[1..]),
        b'+' => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // Accumulate negatively so that i64::MIN parses too.
    let mut value: i64 = 0;
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(digit))?;
    }
    if negative { Some(value) } else { value.checked_neg() }
}

/// A decimal number: an integer, or a float with digits (no `inf`/`NaN` words: a field holding
/// those is text).
#[inline]
pub fn parse_f64(bytes: &[u8]) -> Option<f64> {
    let first = *bytes.first()?;
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return None;
    }
    if !bytes.iter().any(u8::is_ascii_digit) || bytes.iter().any(|byte| byte.is_ascii_alphabetic() && !matches!(byte, b'e' | b'E')) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `value` in decimal (two digits per step from a table, as `itoa` does).
#[inline]
pub fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut buffer = [0u8; 20];
    let mut at = buffer.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        let pair = value as usize * 2;
        at -= 2;
        buffer[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buffer[at] = b'0' + value as u8;
    }
    out.extend_from_slice(&buffer[at..]);
}

/// Appends `value` in decimal.
#[inline]
pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    write_u64(out, value.unsigned_abs());
}

/// Appends `value` as Rust prints it (shortest text that reads back the same).
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn whitespace_runs_split_fields() {
        let fields = Fields::new(None);
        let line = b"  a\t\tbb  ccc ";
        assert_eq!(fields.field(line, 0), Some(&line[..]));
        assert_eq!(fields.field(line, 1), Some(&b"a"[..]));
        assert_eq!(fields.field(line, 2), Some(&b"bb"[..]));
        assert_eq!(fields.field(line, 3), Some(&b"ccc"[..]));
        assert_eq!(fields.field(line, 4), None);
        assert_eq!(fields.field(b"", 1), None);
    }

    #[test]
    fn literal_delimiters_keep_empty_fields() {
        let comma = Fields::new(Some(","));
        assert_eq!(comma.field(b"a,,c", 2), Some(&b""[..]));
        assert_eq!(comma.field(b"a,,c", 3), Some(&b"c"[..]));
        assert_eq!(comma.field(b"a,,c", 4), None);
        let arrow = Fields::new(Some("->"));
        assert_eq!(arrow.field(b"x->y->z", 2), Some(&b"y"[..]));
        assert_eq!(arrow.field(b"x->y->z", 3), Some(&b"z"[..]));
        assert_eq!(arrow.field(b"x->y->z", 4), None);
    }

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"+12"), Some(12));
        assert_eq!(parse_i64(b"1.5"), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_f64(b"1.5e3"), Some(1500.0));
        assert_eq!(parse_f64(b"inf"), None);
        assert_eq!(parse_f64(b"NaN"), None);
        assert_eq!(parse_f64(b"."), None);
    }

    proptest! {
        #[test]
        fn integers_round_trip(value in any::<i64>()) {
            let mut out = Vec::new();
            write_i64(&mut out, value);
            let expected = value.to_string();
            prop_assert_eq!(&out[..], expected.as_bytes());
            prop_assert_eq!(parse_i64(&out), Some(value));
        }

        #[test]
        fn whitespace_fields_match_split_ascii_whitespace(words in proptest::collection::vec("[a-z0-9]{1,4}", 0..6), pad in "[ \t]{0,3}") {
            let line = format!("{pad}{}{pad}", words.join(" \t"));
            let fields = Fields::new(None);
            for (index, word) in words.iter().enumerate() {
                prop_assert_eq!(fields.field(line.as_bytes(), index + 1), Some(word.as_bytes()));
            }
            prop_assert_eq!(fields.field(line.as_bytes(), words.len() + 1), None);
        }
    }
}
