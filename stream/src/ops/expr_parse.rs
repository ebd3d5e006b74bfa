//! Tokenizer and recursive-descent parser of field expressions (the grammar is in `expr.rs`).
//! Runs once per operator build, so clarity beats speed here.

use memchr::memmem::Finder;

use super::expr::{ArithOp, CmpOp, Condition, ExprError, ValueExpr};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(usize),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Word(String),
    /// Operators and punctuation, as written.
    Symbol(&'static str),
    End,
}

const SYMBOLS: &[&str] = &["==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "(", ")", ","];

pub(super) struct Parser<'s> {
    source: &'s str,
    /// Tokens with their byte offsets; the last one is `End`.
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl<'s> Parser<'s> {
    pub(super) fn new(source: &'s str) -> Result<Parser<'s>, ExprError> {
        let tokens = tokenize(source).map_err(|(offset, message)| error_at(source, offset, message))?;
        Ok(Parser { source, tokens, at: 0 })
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.at].0
    }

    fn offset(&self) -> usize {
        self.tokens[self.at].1
    }

    fn error(&self, message: impl Into<String>) -> ExprError {
        error_at(self.source, self.offset(), message.into())
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Token::Symbol(s) if *s == symbol) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, words: &[&str]) -> bool {
        if matches!(self.peek(), Token::Word(w) if words.contains(&w.as_str())) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn comma(&mut self) -> bool {
        self.eat_symbol(",")
    }

    pub(super) fn end(&self) -> Result<(), ExprError> {
        match self.peek() {
            Token::End => Ok(()),
            _ => Err(self.error("unexpected text after the expression")),
        }
    }

    pub(super) fn value(&mut self) -> Result<ValueExpr, ExprError> {
        let mut left = self.term()?;
        loop {
            let op = if self.eat_symbol("+") {
                ArithOp::Add
            } else if self.eat_symbol("-") {
                ArithOp::Sub
            } else {
                return Ok(left);
            };
            left = ValueExpr::Arith(op, Box::new(left), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<ValueExpr, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_symbol("*") {
                ArithOp::Mul
            } else if self.eat_symbol("/") {
                ArithOp::Div
            } else {
                return Ok(left);
            };
            left = ValueExpr::Arith(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<ValueExpr, ExprError> {
        if self.eat_symbol("-") {
            return Ok(match self.unary()? {
                ValueExpr::Int(value) => ValueExpr::Int(-value),
                ValueExpr::Float(value) => ValueExpr::Float(-value),
                other => ValueExpr::Neg(Box::new(other)),
            });
        }
        let value = match self.peek().clone() {
            Token::Field(n) => ValueExpr::Field(n),
            Token::Int(value) => ValueExpr::Int(value),
            Token::Float(value) => ValueExpr::Float(value),
            Token::Str(bytes) => ValueExpr::Str(bytes.into_boxed_slice()),
            Token::Symbol("(") => {
                self.at += 1;
                let inner = self.value()?;
                if !self.eat_symbol(")") {
                    return Err(self.error("expected `)`"));
                }
                return Ok(inner);
            }
            Token::Word(word) => {
                return Err(self.error(format!(
                    "`{word}` is not a value (fields are `$1`, `$2`, …; text is in double quotes)"
                )));
            }
            Token::End => return Err(self.error("expected a value, found the end")),
            Token::Symbol(symbol) => return Err(self.error(format!("expected a value, found `{symbol}`"))),
        };
        self.at += 1;
        Ok(value)
    }

    pub(super) fn condition(&mut self) -> Result<Condition, ExprError> {
        let mut left = self.and()?;
        while self.eat_word(&["or"]) || self.eat_symbol("||") {
            left = Condition::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, ExprError> {
        let mut left = self.not()?;
        while self.eat_word(&["and"]) || self.eat_symbol("&&") {
            left = Condition::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Condition, ExprError> {
        if self.eat_word(&["not"]) {
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        let start = self.at;
        let comparison = self.comparison();
        if comparison.is_ok() || self.tokens[start].0 != Token::Symbol("(") {
            return comparison;
        }
        // `(` opens either a value (`($1 + 1) * 2 > 3`) or a condition (`($1 > 2 or …)`):
        // the value reading failed, so try the condition; report whichever error got further.
        let value_error = comparison.unwrap_err();
        self.at = start + 1;
        let nested = self.condition().and_then(|inner| {
            if self.eat_symbol(")") {
                Ok(inner)
            } else {
                Err(self.error("expected `)`"))
            }
        });
        match nested {
            Ok(inner) => Ok(inner),
            Err(error) if error.column >= value_error.column => Err(error),
            Err(_) => Err(value_error),
        }
    }

    fn comparison(&mut self) -> Result<Condition, ExprError> {
        let left = self.value()?;
        if self.eat_word(&["contains"]) {
            let needle = self.value()?;
            let finder = match &needle {
                ValueExpr::Str(bytes) => Some(Box::new(Finder::new(bytes).into_owned())),
                _ => None,
            };
            return Ok(Condition::Contains(left, needle, finder));
        }
        let op = match self.peek() {
            Token::Symbol("==") => CmpOp::Eq,
            Token::Symbol("!=") => CmpOp::Ne,
            Token::Symbol("<") => CmpOp::Lt,
            Token::Symbol("<=") => CmpOp::Le,
            Token::Symbol(">") => CmpOp::Gt,
            Token::Symbol(">=") => CmpOp::Ge,
            _ => return Err(self.error("expected a comparison: ==, !=, <, <=, >, >= or contains")),
        };
        self.at += 1;
        Ok(Condition::Compare(op, left, self.value()?))
    }
}

fn error_at(source: &str, offset: usize, message: String) -> ExprError {
    ExprError {
        expr: source.to_owned(),
        column: source[..offset.min(source.len())].chars().count() + 1,
        message,
    }
}

fn tokenize(source: &str) -> Result<Vec<(Token, usize)>, (usize, String)> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let byte = bytes[at];
        if byte.is_ascii_whitespace() {
            at += 1;
            continue;
        }
        let token = if byte == b'$' {
            at += 1;
            while at < bytes.len() && bytes[at].is_ascii_digit() {
                at += 1;
            }
            let n = source[start + 1..at]
                .parse()
                .map_err(|_| (start, "`$` must be followed by a field number, as in `$1`".to_owned()))?;
            Token::Field(n)
        } else if byte.is_ascii_digit() || (byte == b'.' && bytes.get(at + 1).is_some_and(u8::is_ascii_digit)) {
            let mut float = false;
            while at < bytes.len() && (bytes[at].is_ascii_digit() || bytes[at] == b'.') {
                float |= bytes[at] == b'.';
                at += 1;
            }
            if at < bytes.len() && matches!(bytes[at], b'e' | b'E') {
                float = true;
                at += 1;
                if at < bytes.len() && matches!(bytes[at], b'+' | b'-') {
                    at += 1;
                }
                while at < bytes.len() && bytes[at].is_ascii_digit() {
                    at += 1;
                }
            }
            let text = &source[start..at];
            if float {
                Token::Float(text.parse().map_err(|_| (start, format!("`{text}` is not a number")))?)
            } else {
                Token::Int(
                    text.parse()
                        .map_err(|_| (start, format!("`{text}` does not fit a 64-bit integer")))?,
                )
            }
        } else if byte == b'"' {
            at += 1;
            let mut text = Vec::new();
            loop {
                match bytes.get(at) {
                    None => return Err((start, "unterminated string".into())),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        let escaped = match bytes.get(at + 1) {
                            Some(b'n') => b'\n',
                            Some(b't') => b'\t',
                            Some(b'\\') => b'\\',
                            Some(b'"') => b'"',
                            _ => return Err((at, "unknown escape (use \\n, \\t, \\\\ or \\\")".into())),
                        };
                        text.push(escaped);
                        at += 2;
                    }
                    Some(other) => {
                        text.push(*other);
                        at += 1;
                    }
                }
            }
            at += 1;
            Token::Str(text)
        } else if byte.is_ascii_alphabetic() || byte == b'_' {
            while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
                at += 1;
            }
            let word = &source[start..at];
            if !matches!(word, "and" | "or" | "not" | "contains") {
                return Err((start, format!("unknown word `{word}` (text goes in double quotes)")));
            }
            Token::Word(word.to_owned())
        } else if let Some(symbol) = SYMBOLS.iter().find(|symbol| source[at..].starts_with(**symbol)) {
            at += symbol.len();
            Token::Symbol(symbol)
        } else {
            let shown = source[at..].chars().next().unwrap_or('?');
            let hint = if byte == b'=' { " (equality is `==`)" } else { "" };
            return Err((start, format!("unexpected `{shown}`{hint}")));
        };
        tokens.push((token, start));
    }
    tokens.push((Token::End, bytes.len()));
    Ok(tokens)
}
