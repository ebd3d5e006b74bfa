//! The built-in functions as byte-level code, and the text format of records.
//!
//! Text format, everywhere (streaming commands' stdin and the job's `part-r-NNNNN` files): one
//! record per line, `key<TAB>value<LF>`; a record with an empty value is written as `key<LF>`
//! (no trailing tab), so `identity` and `sort` over plain lines give back the lines unchanged.
//! Reading a line, the key is everything before the first tab and the value everything after
//! it; a line without a tab is a key with an empty value.
//!
//! `count` as a combiner emits each key's number of values, so pair it with reducer `sum`.

use std::io::{self, Write};

use memchr::memmem;
use spindle_protocol::Builtin;

use super::error::{TaskError, TaskResult, show_bytes};

/// Splits a text line into key (up to the first tab) and value (after it; empty without a tab).
#[inline]
pub fn split_key_value(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'\t', line) {
        Some(tab) => (&line[..tab], &line[tab + 1..]),
        None => (line, &[]),
    }
}

/// Writes a record as a text line (see the module doc); returns the bytes written.
#[inline]
pub fn write_text_record(out: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<u64> {
    out.write_all(key)?;
    if value.is_empty() {
        out.write_all(b"\n")?;
        return Ok(key.len() as u64 + 1);
    }
    out.write_all(b"\t")?;
    out.write_all(value)?;
    out.write_all(b"\n")?;
    Ok((key.len() + value.len()) as u64 + 2)
}

/// `u8::is_ascii_whitespace` as a table: one load per byte in the word count loop.
static ASCII_WHITESPACE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_whitespace();
        byte += 1;
    }
    table
};

/// A built-in map function, prepared to run over many lines.
#[derive(Debug)]
pub enum BuiltinMapper {
    /// Each ASCII-whitespace-separated word → `word`, `1`.
    Wordcount,
    /// Lines containing the pattern → `line`, `1`.
    Grep(Box<memmem::Finder<'static>>),
    /// `identity` and `sort`: key = up to the first tab, value = the rest.
    KeyValue,
}

impl BuiltinMapper {
    /// The mapper for a built-in; `None` for one that is not a map function.
    pub fn new(builtin: &Builtin) -> Option<Self> {
        match builtin {
            Builtin::Wordcount => Some(BuiltinMapper::Wordcount),
            Builtin::Grep(pattern) => Some(BuiltinMapper::Grep(Box::new(memmem::Finder::new(pattern.as_bytes()).into_owned()))),
            Builtin::Identity | Builtin::Sort => Some(BuiltinMapper::KeyValue),
            Builtin::Sum | Builtin::Count => None,
        }
    }

    /// Runs the function over one line, emitting its records.
    #[inline]
    pub fn map_line<E>(&self, line: &[u8], emit: &mut E) -> TaskResult<()>
    where
        E: FnMut(&[u8], &[u8]) -> TaskResult<()>,
    {
        match self {
            BuiltinMapper::Wordcount => {
                let mut i = 0;
                let len = line.len();
                while i < len {
                    while i < len && ASCII_WHITESPACE[line[i] as usize] {
                        i += 1;
                    }
                    let start = i;
                    while i < len && !ASCII_WHITESPACE[line[i] as usize] {
                        i += 1;
                    }
                    if i > start {
                        emit(&line[start..i], b"1")?;
                    }
                }
                Ok(())
            }
            BuiltinMapper::Grep(finder) => {
                if finder.find(line).is_some() {
                    emit(line, b"1")?;
                }
                Ok(())
            }
            BuiltinMapper::KeyValue => {
                let (key, value) = split_key_value(line);
                emit(key, value)
            }
        }
    }
}

/// What a built-in combiner or reducer does with each group of equal keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinReducer {
    /// One record per key: the sum of its integer values.
    Sum,
    /// One record per key: the number of its values.
    Count,
    /// `identity` and `sort`: every record as it is, in key order.
    PassThrough,
}

impl BuiltinReducer {
    /// The reducer for a built-in; `None` for one that is only a map function.
    pub fn new(builtin: &Builtin) -> Option<Self> {
        match builtin {
            Builtin::Sum => Some(BuiltinReducer::Sum),
            Builtin::Count => Some(BuiltinReducer::Count),
            Builtin::Identity | Builtin::Sort => Some(BuiltinReducer::PassThrough),
            Builtin::Wordcount | Builtin::Grep(_) => None,
        }
    }
}

/// Folds the values of one key at a time for a built-in reducer; the caller feeds records in
/// key order and calls `finish_group` when the key changes.
#[derive(Debug)]
pub struct GroupFolder {
    /// What to do with each group.
    reducer: BuiltinReducer,
    /// Running total of the current key (`Sum`) or its number of values (`Count`).
    total: i64,
}

impl GroupFolder {
    pub fn new(reducer: BuiltinReducer) -> Self {
        GroupFolder { reducer, total: 0 }
    }

    /// Adds one value of the current key (passing records straight through for `PassThrough`).
    #[inline]
    pub fn add<E>(&mut self, key: &[u8], value: &[u8], emit: &mut E) -> TaskResult<()>
    where
        E: FnMut(&[u8], &[u8]) -> TaskResult<()>,
    {
        match self.reducer {
            BuiltinReducer::Sum => {
                let number = parse_i64(key, value)?;
                self.total = self
                    .total
                    .checked_add(number)
                    .ok_or_else(|| TaskError::SumOverflow { key: show_bytes(key) })?;
                Ok(())
            }
            BuiltinReducer::Count => {
                self.total += 1;
                Ok(())
            }
            BuiltinReducer::PassThrough => emit(key, value),
        }
    }

    /// Ends the current key's group, emitting its result.
    #[inline]
    pub fn finish_group<E>(&mut self, key: &[u8], emit: &mut E) -> TaskResult<()>
    where
        E: FnMut(&[u8], &[u8]) -> TaskResult<()>,
    {
        let total = std::mem::take(&mut self.total);
        match self.reducer {
            BuiltinReducer::Sum | BuiltinReducer::Count => emit(key, format_i64(total, &mut [0; 20])),
            BuiltinReducer::PassThrough => Ok(()),
        }
    }
}

/// Parses a `sum` value: a decimal integer, optionally signed, surrounding ASCII spaces allowed.
#[inline]
pub fn parse_i64(key: &[u8], value: &[u8]) -> TaskResult<i64> {
    let not_an_integer = || TaskError::NotAnInteger {
        key: show_bytes(key),
        value: show_bytes(value),
    };
    let digits = value.trim_ascii();
    let (negative, digits) = match digits.first() {
        Some(b'-') => (true, &digits[1..]),
        Some(b'+') => (false, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return Err(not_an_integer());
    }
    let mut magnitude: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(not_an_integer());
        }
        // Accumulating negatively reaches i64::MIN too.
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_sub(i64::from(digit - b'0')))
            .ok_or_else(not_an_integer)?;
    }
    if negative {
        Ok(magnitude)
    } else {
        magnitude.checked_neg().ok_or_else(not_an_integer)
    }
}

/// Formats an integer in decimal into `buffer`, without allocating.
#[inline]
pub fn format_i64(number: i64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut magnitude = number.unsigned_abs();
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if number < 0 {
        start -= 1;
        buffer[start] = b'-';
    }
    &buffer[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_all(mapper: &BuiltinMapper, line: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        mapper
            .map_line(line.as_bytes(), &mut |key, value| {
                out.push((String::from_utf8(key.to_vec()).unwrap(), String::from_utf8(value.to_vec()).unwrap()));
                Ok(())
            })
            .unwrap();
        out
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn built_in_mappers_split_as_documented() {
        let wordcount = BuiltinMapper::new(&Builtin::Wordcount).unwrap();
        assert_eq!(
            map_all(&wordcount, " The\tthe  cat\x0c."),
            pairs(&[("The", "1"), ("the", "1"), ("cat", "1"), (".", "1")])
        );
        assert_eq!(map_all(&wordcount, "   "), pairs(&[]));
        let grep = BuiltinMapper::new(&Builtin::Grep("needle".into())).unwrap();
        assert_eq!(map_all(&grep, "a needle here"), pairs(&[("a needle here", "1")]));
        assert_eq!(map_all(&grep, "a Needle"), pairs(&[]));
        let identity = BuiltinMapper::new(&Builtin::Identity).unwrap();
        assert_eq!(map_all(&identity, "k\tv\tw"), pairs(&[("k", "v\tw")]));
        assert_eq!(map_all(&identity, "no tab"), pairs(&[("no tab", "")]));
        assert!(BuiltinMapper::new(&Builtin::Sum).is_none());
    }

    #[test]
    fn text_records_drop_the_tab_of_an_empty_value() {
        let mut out = Vec::new();
        assert_eq!(write_text_record(&mut out, b"k", b"v").unwrap(), 4);
        assert_eq!(write_text_record(&mut out, b"line", b"").unwrap(), 5);
        assert_eq!(out, b"k\tv\nline\n");
        assert_eq!(split_key_value(b"line"), (&b"line"[..], &b""[..]));
    }

    #[test]
    fn sum_and_count_fold_groups() {
        let mut out = Vec::new();
        let mut emit = |key: &[u8], value: &[u8]| {
            out.push(format!("{}={}", String::from_utf8_lossy(key), String::from_utf8_lossy(value)));
            Ok(())
        };
        let mut sum = GroupFolder::new(BuiltinReducer::Sum);
        for value in ["3", " -5 ", "+10"] {
            sum.add(b"a", value.as_bytes(), &mut emit).unwrap();
        }
        sum.finish_group(b"a", &mut emit).unwrap();
        let mut count = GroupFolder::new(BuiltinReducer::Count);
        for value in ["x", "y"] {
            count.add(b"b", value.as_bytes(), &mut emit).unwrap();
        }
        count.finish_group(b"b", &mut emit).unwrap();
        assert_eq!(out, ["a=8", "b=2"]);
    }

    #[test]
    fn a_bad_sum_value_names_the_key_and_the_value() {
        let message = parse_i64(b"apple", b"12x").unwrap_err().to_string();
        assert!(message.contains("`apple`") && message.contains("`12x`"), "{message}");
        assert!(parse_i64(b"k", b"").is_err());
        assert!(parse_i64(b"k", b"99999999999999999999").is_err());
        assert_eq!(parse_i64(b"k", b"-9223372036854775808").unwrap(), i64::MIN);
        assert_eq!(parse_i64(b"k", b"9223372036854775807").unwrap(), i64::MAX);
    }

    #[test]
    fn integers_format_like_display() {
        for number in [0, 7, -7, 1234567890, i64::MIN, i64::MAX] {
            assert_eq!(format_i64(number, &mut [0; 20]), number.to_string().as_bytes());
        }
    }
}
