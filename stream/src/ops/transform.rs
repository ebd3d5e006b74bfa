//! Fused stateless transforms (`map` with `expr`, `filter`, `key_by`) and the chains of them the
//! runtime runs on every edge, for every record an instance emits: the hottest path of a job.
//!
//! A chain passes each record through its transforms by recursion on borrowed records: a
//! `filter` forwards or not, a `key_by` forwards the record with a key sliced from its line, and
//! only a `map` that is not last writes a new value, into a reused per-thread scratch buffer.
//! The last step writes straight into the output batch (a final `map` formats its fields in place).

use std::cell::RefCell;

use spindle_protocol::{OperatorKind, OperatorSpec};

use super::expr::{Condition, ValueExpr, parse_condition, parse_value, parse_value_list};
use super::fields::{Fields, whitespace_field};
use crate::operator::OperatorError;
use crate::record::{Batch, EventTime, Record};

/// `map` with `expr`: the value becomes the expressions' values joined by tabs.
#[derive(Debug, Clone)]
pub struct MapExpr {
    fields: Fields,
    values: Vec<ValueExpr>,
}

/// `filter`: keeps the records for which the condition holds.
#[derive(Debug, Clone)]
pub struct FilterExpr {
    fields: Fields,
    condition: Condition,
}

/// `key_by`: the key becomes the expression's value.
#[derive(Debug, Clone)]
pub struct KeyByExpr {
    fields: Fields,
    key: ValueExpr,
}

/// One fused transform.
#[derive(Debug, Clone)]
pub enum Transform {
    Map(MapExpr),
    Filter(FilterExpr),
    KeyBy(KeyByExpr),
}

impl MapExpr {
    #[inline]
    pub fn write_value(&self, line: &[u8], out: &mut Vec<u8>) {
        for (index, value) in self.values.iter().enumerate() {
            if index > 0 {
                out.push(b'\t');
            }
            value.eval(&self.fields, line).write_to(out);
        }
    }
}

impl FilterExpr {
    #[inline]
    pub fn holds(&self, line: &[u8]) -> bool {
        self.condition.holds(&self.fields, line)
    }
}

impl KeyByExpr {
    /// Calls `with` with the key of `line`: a slice of the line for `$N` (the common case),
    /// else the expression's text in a scratch buffer.
    #[inline]
    pub fn with_key<R>(&self, line: &[u8], with: impl FnOnce(&[u8]) -> R) -> R {
        match &self.key {
            // The common `key_by $N` of whitespace-separated lines: the splitter inlined here.
            ValueExpr::Field(n) if *n > 0 && self.fields.is_whitespace() => with(whitespace_field(line, *n).unwrap_or_default()),
            ValueExpr::Field(n) => with(self.fields.field(line, *n).unwrap_or_default()),
            ValueExpr::Str(text) => with(text),
            other => with_scratch(|buffer| {
                other.eval(&self.fields, line).write_to(buffer);
                with(buffer)
            }),
        }
    }
}

impl Transform {
    /// Builds the transform of a `map` (with `expr`), `filter` or `key_by` spec.
    pub fn build(spec: &OperatorSpec) -> Result<Transform, OperatorError> {
        let failed = |message: String| OperatorError::failed(format!("operator {}: {message}", spec.name));
        if spec.kind() == OperatorKind::Map && spec.command.is_some() {
            return Err(failed("a map with `command` is not a fused transform".into()));
        }
        let expr = spec
            .expr
            .as_deref()
            .ok_or_else(|| failed(format!("{} needs `expr`", spec.kind().as_str())))?;
        let fields = Fields::new(spec.delimiter.as_deref());
        let parse_failed = |error: super::expr::ExprError| failed(error.to_string());
        match spec.kind() {
            OperatorKind::Map => Ok(Transform::Map(MapExpr {
                fields,
                values: parse_value_list(expr).map_err(parse_failed)?,
            })),
            OperatorKind::Filter => Ok(Transform::Filter(FilterExpr {
                fields,
                condition: parse_condition(expr).map_err(parse_failed)?,
            })),
            OperatorKind::KeyBy => Ok(Transform::KeyBy(KeyByExpr {
                fields,
                key: parse_value(expr).map_err(parse_failed)?,
            })),
            other => Err(failed(format!("{} is not a fused transform", other.as_str()))),
        }
    }

    /// Appends what the transform makes of `record` (0 or 1 records) to `out`.
    #[inline]
    pub fn apply(&self, record: Record<'_>, out: &mut Batch) {
        run(std::slice::from_ref(self), record, out);
    }
}

/// Transforms fused into one edge, applied in order.
#[derive(Debug, Clone, Default)]
pub struct Chain(pub Vec<Transform>);

impl Chain {
    pub fn new(transforms: Vec<Transform>) -> Chain {
        Chain(transforms)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Appends what the chain makes of `record` (0 or 1 records) to `out`.
    #[inline]
    pub fn apply(&self, record: Record<'_>, out: &mut Batch) {
        // The edge into every keyed operator is a lone `key_by`: skip the general walk.
        if let [Transform::KeyBy(key_by)] = self.0.as_slice() {
            key_by.with_key(record.value, |key| out.push(record.time, key, record.value));
            return;
        }
        run(&self.0, record, out);
    }

    /// Runs the chain on every record of `batch`, appending to `out`.
    pub fn apply_batch(&self, batch: &Batch, out: &mut Batch) {
        for record in batch {
            self.apply(record, out);
        }
    }

    /// Calls `emit` with what the chain makes of `record` (for a caller that routes records
    /// itself, e.g. by key group, without an intermediate batch).
    #[inline]
    pub fn apply_to(&self, record: Record<'_>, mut emit: impl FnMut(Record<'_>)) {
        run(&self.0, record, &mut Callback(&mut emit));
    }
}

/// Where a chain's output goes.
trait Emit {
    fn emit(&mut self, record: Record<'_>);
    fn emit_with(&mut self, time: EventTime, key: &[u8], write: impl FnOnce(&mut Vec<u8>));
}

impl Emit for Batch {
    #[inline]
    fn emit(&mut self, record: Record<'_>) {
        self.push_record(record);
    }

    #[inline]
    fn emit_with(&mut self, time: EventTime, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        self.push_with(time, key, write);
    }
}

struct Callback<'f, F>(&'f mut F);

impl<F: FnMut(Record<'_>)> Emit for Callback<'_, F> {
    #[inline]
    fn emit(&mut self, record: Record<'_>) {
        (self.0)(record);
    }

    fn emit_with(&mut self, time: EventTime, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        with_scratch(|value| {
            write(value);
            (self.0)(Record { time, key, value });
        });
    }
}

#[inline]
fn run<E: Emit>(transforms: &[Transform], record: Record<'_>, out: &mut E) {
    let Some((first, rest)) = transforms.split_first() else {
        out.emit(record);
        return;
    };
    match first {
        Transform::Filter(filter) => {
            if filter.holds(record.value) {
                run(rest, record, out);
            }
        }
        Transform::KeyBy(key_by) => key_by.with_key(record.value, |key| run(rest, Record { key, ..record }, out)),
        Transform::Map(map) if rest.is_empty() => out.emit_with(record.time, record.key, |value| map.write_value(record.value, value)),
        Transform::Map(map) => with_scratch(|value| {
            map.write_value(record.value, value);
            run(rest, Record { value, ..record }, out);
        }),
    }
}

thread_local! {
    /// Reused value buffers: a stack, because chains nest (map → map → key_by).
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(use_it: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buffer = SCRATCH.with(|pool| pool.borrow_mut().pop()).unwrap_or_default();
    buffer.clear();
    let result = use_it(&mut buffer);
    SCRATCH.with(|pool| pool.borrow_mut().push(buffer));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: OperatorKind, expr: &str) -> OperatorSpec {
        OperatorSpec {
            name: format!("{}-op", kind.as_str()),
            kind: Some(kind),
            expr: Some(expr.into()),
            ..OperatorSpec::default()
        }
    }

    fn chain(steps: &[(OperatorKind, &str)]) -> Chain {
        Chain::new(
            steps
                .iter()
                .map(|(kind, expr)| Transform::build(&spec(*kind, expr)).unwrap())
                .collect(),
        )
    }

    fn run_chain(chain: &Chain, lines: &[&str]) -> Vec<(i64, String, String)> {
        let mut out = Batch::new();
        for (time, line) in lines.iter().enumerate() {
            chain.apply(
                Record {
                    time: time as i64,
                    key: b"",
                    value: line.as_bytes(),
                },
                &mut out,
            );
        }
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
        out.iter()
            .map(|record| (record.time, text(record.key), text(record.value)))
            .collect()
    }

    #[test]
    fn key_by_map_and_filter_compose() {
        let chain = chain(&[
            (OperatorKind::Filter, "$2 >= 10"),
            (OperatorKind::Map, "$1, $2 * 2"),
            (OperatorKind::KeyBy, "$1"),
            (OperatorKind::Map, "$0, \"!\""),
        ]);
        let out = run_chain(&chain, &["a 5", "b 10", "c 20 x"]);
        assert_eq!(out, vec![(1, "b".into(), "b\t20\t!".into()), (2, "c".into(), "c\t40\t!".into())]);
    }

    #[test]
    fn a_computed_key_and_callbacks_work() {
        let chain = chain(&[(OperatorKind::KeyBy, "$1 * 10"), (OperatorKind::Map, "$2")]);
        let mut seen = Vec::new();
        chain.apply_to(
            Record {
                time: 7,
                key: b"",
                value: b"3 x",
            },
            |record| {
                seen.push((record.time, record.key.to_vec(), record.value.to_vec()));
            },
        );
        assert_eq!(seen, vec![(7, b"30".to_vec(), b"x".to_vec())]);
        let mut out = Batch::new();
        Transform::build(&spec(OperatorKind::Filter, "$1 contains \"z\"")).unwrap().apply(
            Record {
                time: 0,
                key: b"k",
                value: b"3 x",
            },
            &mut out,
        );
        assert!(out.is_empty());
        assert!(run_chain(&Chain::default(), &["same"]) == vec![(0, String::new(), "same".into())]);
    }

    #[test]
    fn bad_specs_are_refused_with_the_operator_name() {
        let error = Transform::build(&spec(OperatorKind::Filter, "$1 = 2")).unwrap_err();
        assert!(
            error.to_string().contains("filter-op") && error.to_string().contains("column 4"),
            "{error}"
        );
        let mut no_expr = spec(OperatorKind::KeyBy, "");
        no_expr.expr = None;
        assert!(Transform::build(&no_expr).is_err());
        assert!(Transform::build(&spec(OperatorKind::Window, "$1")).is_err());
    }

    #[test]
    fn delimiters_apply() {
        let mut key_by = spec(OperatorKind::KeyBy, "$2");
        key_by.delimiter = Some(",".into());
        let chain = Chain::new(vec![Transform::build(&key_by).unwrap()]);
        assert_eq!(run_chain(&chain, &["a b,c d"]), vec![(0, "c d".into(), "a b,c d".into())]);
    }
}
