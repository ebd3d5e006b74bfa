//! The field expression language of `map`, `filter` and `key_by`, parsed once when an operator
//! is built (a bad expression fails the job at submission, naming the expression and column).
//!
//! ```text
//! value := term (("+" | "-") term)*        term := unary (("*" | "/") unary)*
//! unary := "-" unary | "$N" | integer | float | "\"string\"" | "(" value ")"
//! cond  := and ("or" and)*                 and  := not ("and" not)*
//! not   := "not" not | "(" cond ")" | value ("==" | "!=" | "<" | "<=" | ">" | ">=") value
//!        | value "contains" value
//! ```
//!
//! Semantics, chosen to never fail at run time (a record is data, not code):
//! - a missing field is the empty string;
//! - arithmetic reads its operands as numbers (integers stay integers; overflow and inexact
//!   division go to floats); a non-number operand or a division by zero makes the result empty;
//! - a comparison is numeric when both sides read as numbers, else bytewise on their text.
//!
//! Evaluation borrows fields from the line and literals from the expression, so the common
//! cases (`$N`, comparing a field with a number) allocate nothing.

use std::borrow::Cow;
use std::cmp::Ordering;

use memchr::memmem::Finder;

use super::fields::{Fields, parse_f64, parse_i64, write_f64, write_i64};

/// A bad expression: which, where (1-based column), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expression `{expr}`, column {column}: {message}")]
pub struct ExprError {
    pub expr: String,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// An expression producing a value.
#[derive(Debug, Clone)]
pub enum ValueExpr {
    /// `$N` (0 = the whole line).
    Field(usize),
    Int(i64),
    Float(f64),
    Str(Box<[u8]>),
    Neg(Box<ValueExpr>),
    Arith(ArithOp, Box<ValueExpr>, Box<ValueExpr>),
}

/// A condition.
#[derive(Debug, Clone)]
pub enum Condition {
    Compare(CmpOp, ValueExpr, ValueExpr),
    /// The needle's searcher is built once when it is a literal.
    Contains(ValueExpr, ValueExpr, Option<Box<Finder<'static>>>),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
}

/// A value during evaluation: text borrowed from the line or the expression, or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Bytes(&'a [u8]),
    Int(i64),
    Float(f64),
    /// The result of arithmetic on a non-number: empty text, never a number.
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn to_f64(self) -> f64 {
        match self {
            Number::Int(value) => value as f64,
            Number::Float(value) => value,
        }
    }
}

impl<'a> Scalar<'a> {
    #[inline]
    fn number(self) -> Option<Number> {
        match self {
            Scalar::Bytes(bytes) => parse_i64(bytes).map(Number::Int).or_else(|| parse_f64(bytes).map(Number::Float)),
            Scalar::Int(value) => Some(Number::Int(value)),
            Scalar::Float(value) => Some(Number::Float(value)),
            Scalar::Null => None,
        }
    }

    /// The text of the value (numbers are formatted: the rare case of comparing a computed
    /// number with text, so it may allocate).
    pub fn text(self) -> Cow<'a, [u8]> {
        match self {
            Scalar::Bytes(bytes) => Cow::Borrowed(bytes),
            Scalar::Null => Cow::Borrowed(b""),
            other => {
                let mut out = Vec::new();
                other.write_to(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Appends the value's text.
    #[inline]
    pub fn write_to(self, out: &mut Vec<u8>) {
        match self {
            Scalar::Bytes(bytes) => out.extend_from_slice(bytes),
            Scalar::Int(value) => write_i64(out, value),
            Scalar::Float(value) => write_f64(out, value),
            Scalar::Null => {}
        }
    }
}

impl ValueExpr {
    /// `Some(n)` when the expression is just `$n` (callers take the fast path of slicing).
    pub fn as_field(&self) -> Option<usize> {
        match self {
            ValueExpr::Field(n) => Some(*n),
            _ => None,
        }
    }

    /// The value of the expression on `line`.
    #[inline]
    pub fn eval<'a>(&'a self, fields: &Fields, line: &'a [u8]) -> Scalar<'a> {
        match self {
            ValueExpr::Field(n) => Scalar::Bytes(fields.field(line, *n).unwrap_or_default()),
            ValueExpr::Int(value) => Scalar::Int(*value),
            ValueExpr::Float(value) => Scalar::Float(*value),
            ValueExpr::Str(bytes) => Scalar::Bytes(bytes),
            ValueExpr::Neg(inner) => match inner.eval(fields, line).number() {
                Some(Number::Int(value)) => value.checked_neg().map_or(Scalar::Float(-(value as f64)), Scalar::Int),
                Some(Number::Float(value)) => Scalar::Float(-value),
                None => Scalar::Null,
            },
            ValueExpr::Arith(op, left, right) => {
                let (Some(a), Some(b)) = (left.eval(fields, line).number(), right.eval(fields, line).number()) else {
                    return Scalar::Null;
                };
                arith(*op, a, b)
            }
        }
    }
}

fn arith(op: ArithOp, a: Number, b: Number) -> Scalar<'static> {
    if let (Number::Int(x), Number::Int(y)) = (a, b) {
        let exact = match op {
            ArithOp::Add => x.checked_add(y),
            ArithOp::Sub => x.checked_sub(y),
            ArithOp::Mul => x.checked_mul(y),
            ArithOp::Div if y == 0 => return Scalar::Null,
            ArithOp::Div => x.checked_rem(y).filter(|rem| *rem == 0).and_then(|_| x.checked_div(y)),
        };
        if let Some(value) = exact {
            return Scalar::Int(value);
        }
    }
    let (x, y) = (a.to_f64(), b.to_f64());
    match op {
        ArithOp::Add => Scalar::Float(x + y),
        ArithOp::Sub => Scalar::Float(x - y),
        ArithOp::Mul => Scalar::Float(x * y),
        ArithOp::Div if y == 0.0 => Scalar::Null,
        ArithOp::Div => Scalar::Float(x / y),
    }
}

impl Condition {
    /// Whether the condition holds for `line`.
    #[inline]
    pub fn holds(&self, fields: &Fields, line: &[u8]) -> bool {
        match self {
            Condition::Compare(op, left, right) => compare(*op, left.eval(fields, line), right.eval(fields, line)),
            Condition::Contains(haystack, needle, finder) => {
                let haystack = haystack.eval(fields, line).text();
                match finder {
                    Some(finder) => finder.find(&haystack).is_some(),
                    None => memchr::memmem::find(&haystack, &needle.eval(fields, line).text()).is_some(),
                }
            }
            Condition::And(a, b) => a.holds(fields, line) && b.holds(fields, line),
            Condition::Or(a, b) => a.holds(fields, line) || b.holds(fields, line),
            Condition::Not(inner) => !inner.holds(fields, line),
        }
    }
}

#[inline]
fn compare(op: CmpOp, a: Scalar<'_>, b: Scalar<'_>) -> bool {
    let ordering = match (a.number(), b.number()) {
        (Some(Number::Int(x)), Some(Number::Int(y))) => Some(x.cmp(&y)),
        (Some(x), Some(y)) => x.to_f64().partial_cmp(&y.to_f64()),
        _ => Some(a.text().as_ref().cmp(b.text().as_ref())),
    };
    // NaN compares unequal to everything.
    let Some(ordering) = ordering else {
        return op == CmpOp::Ne;
    };
    match op {
        CmpOp::Eq => ordering == Ordering::Equal,
        CmpOp::Ne => ordering != Ordering::Equal,
        CmpOp::Lt => ordering == Ordering::Less,
        CmpOp::Le => ordering != Ordering::Greater,
        CmpOp::Gt => ordering == Ordering::Greater,
        CmpOp::Ge => ordering != Ordering::Less,
    }
}

/// Parses one value expression (`key_by`).
pub fn parse_value(source: &str) -> Result<ValueExpr, ExprError> {
    let mut parser = super::expr_parse::Parser::new(source)?;
    let value = parser.value()?;
    parser.end()?;
    Ok(value)
}

/// Parses a comma-separated list of value expressions (`map`).
pub fn parse_value_list(source: &str) -> Result<Vec<ValueExpr>, ExprError> {
    let mut parser = super::expr_parse::Parser::new(source)?;
    let mut values = vec![parser.value()?];
    while parser.comma() {
        values.push(parser.value()?);
    }
    parser.end()?;
    Ok(values)
}

/// Parses a condition (`filter`).
pub fn parse_condition(source: &str) -> Result<Condition, ExprError> {
    let mut parser = super::expr_parse::Parser::new(source)?;
    let condition = parser.condition()?;
    parser.end()?;
    Ok(condition)
}

/// Parses a lone field reference `$N` (`time_field`, `field`).
pub fn parse_field_ref(source: &str) -> Result<usize, ExprError> {
    parse_value(source)?.as_field().ok_or_else(|| ExprError {
        expr: source.to_owned(),
        column: 1,
        message: "expected a single field such as `$2`".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(expr: &str, line: &str) -> String {
        let fields = Fields::default();
        let parsed = parse_value_list(expr).unwrap();
        let mut out = Vec::new();
        for (index, value) in parsed.iter().enumerate() {
            if index > 0 {
                out.push(b'\t');
            }
            value.eval(&fields, line.as_bytes()).write_to(&mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn holds(expr: &str, line: &str) -> bool {
        parse_condition(expr).unwrap().holds(&Fields::default(), line.as_bytes())
    }

    #[test]
    fn values_compute() {
        assert_eq!(value("$1, $2 * 10, \"x\"", "a 4 z"), "a\t40\tx");
        assert_eq!(value("$0", "a 4 z"), "a 4 z");
        assert_eq!(
            value("$2 + 3 * 2, ($2 + 3) * 2, -$2, 7 / 2, 6 / 3, $2 / 0", "a 4"),
            "10\t14\t-4\t3.5\t2\t"
        );
        assert_eq!(value("$1 + 1, $9", "a 4"), "\t");
        assert_eq!(value("$2 * 1.5, 9223372036854775807 + 1", "a 4"), "6\t9223372036854776000");
        assert_eq!(value("\"tab\\there \\\"q\\\"\"", ""), "tab\there \"q\"");
    }

    #[test]
    fn conditions_hold() {
        assert!(holds("$2 > 10", "a 11"));
        assert!(!holds("$2 > 10", "a 9"));
        assert!(holds("$2 > 10", "a 9x"), "text compares bytewise: \"9x\" > \"10\"");
        assert!(holds("$2 == 4.0", "a 4"));
        assert!(holds("$1 == \"a\" and not ($2 < 3 or $2 >= 5)", "a 4"));
        assert!(holds("$1 != \"b\" && $2 <= 4 || $3 == 1", "a 4"));
        assert!(holds("$0 contains \"b c\"", "a b c"));
        assert!(holds("$1 contains $2", "abc b"));
        assert!(!holds("$1 contains \"z\"", "abc b"));
        assert!(holds("($2 + 1) * 2 == 10", "a 4"));
        assert!(holds("$9 == \"\"", "a 4"));
    }

    #[test]
    fn errors_name_the_expression_and_column() {
        let error = parse_condition("$1 = 3").unwrap_err();
        assert_eq!(error.column, 4);
        assert!(error.to_string().contains("`$1 = 3`"), "{error}");
        assert_eq!(parse_value("$1 +").unwrap_err().column, 5);
        assert_eq!(parse_value("$x").unwrap_err().column, 1);
        assert_eq!(parse_value("\"open").unwrap_err().column, 1);
        assert_eq!(parse_value("$1 $2").unwrap_err().column, 4);
        assert!(parse_condition("$1").is_err());
        assert!(parse_condition("($1 > 2").is_err());
        assert!(parse_value("bogus").is_err());
        assert_eq!(parse_field_ref("$3").unwrap(), 3);
        assert!(parse_field_ref("$3 + 1").is_err());
    }
}
