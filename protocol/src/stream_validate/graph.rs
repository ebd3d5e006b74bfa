//! The pipeline as a graph: operator names, and the edges their `input`s draw.

use std::collections::{BTreeMap, HashMap};

use super::fields::kind_names;
use super::{MAX_OPERATORS, at, invalid};
use crate::job::SpecError;
use crate::stream::{OperatorKind, StreamSpec};

/// Longest operator name (it appears in metrics labels and `spindle scale`).
const MAX_NAME_LEN: usize = 64;

/// Operators exist, have usable unique names and a kind (what every later check relies on).
pub(super) fn check_names_and_kinds(spec: &StreamSpec) -> Result<(), SpecError> {
    if spec.operators.is_empty() {
        return Err(invalid(
            "stream.operators",
            "must list the pipeline's operators: at least a source and a sink",
        ));
    }
    if spec.operators.len() > MAX_OPERATORS {
        return Err(invalid(
            "stream.operators",
            format!("{} operators: a job may have at most {MAX_OPERATORS}", spec.operators.len()),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, operator) in spec.operators.iter().enumerate() {
        let name = operator.name.as_str();
        if name.is_empty() {
            return Err(invalid(at(index, "name"), "must not be empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(
                at(index, "name"),
                format!("is {} bytes long: use at most {MAX_NAME_LEN}", name.len()),
            ));
        }
        if !name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-')
        {
            return Err(invalid(
                at(index, "name"),
                format!("`{name}` may only use a-z, 0-9, `_` and `-` (it is typed in `spindle scale APP OPERATOR N`)"),
            ));
        }
        if let Some(first) = seen.insert(name, index) {
            return Err(invalid(
                at(index, "name"),
                format!("`{name}` is also the name of operators[{first}]: names must be unique"),
            ));
        }
        if operator.kind.is_none() {
            return Err(invalid(
                at(index, "kind"),
                format!("`{name}` needs a kind: one of {}", kind_names()),
            ));
        }
    }
    Ok(())
}

/// The edges: inputs that exist and fit their operator, sources and sinks at the ends, no
/// cycle, nothing dangling, and keyed operators fed through a key_by.
pub(super) fn check_edges(spec: &StreamSpec) -> Result<(), SpecError> {
    let operators = &spec.operators;
    let index_of: HashMap<&str, usize> = operators
        .iter()
        .enumerate()
        .map(|(index, operator)| (operator.name.as_str(), index))
        .collect();
    for (index, operator) in operators.iter().enumerate() {
        let field = at(index, "input");
        let name = &operator.name;
        let kind = operator.kind();
        if kind.is_source() {
            if !operator.input.is_empty() {
                return Err(invalid(
                    field,
                    format!("`{name}` is a source ({}): sources take no input, remove `input`", kind.as_str()),
                ));
            }
            continue;
        }
        if operator.input.is_empty() {
            return Err(invalid(field, format!("must name at least one operator feeding `{name}`")));
        }
        if operator.is_fused() && operator.input.len() != 1 {
            return Err(invalid(
                field,
                format!(
                    "a {} runs fused into the edge from its input, so it takes exactly one (it names {}): give each input its own",
                    kind.as_str(),
                    operator.input.len()
                ),
            ));
        }
        for (position, input) in operator.input.iter().enumerate() {
            if operator.input[..position].contains(input) {
                return Err(invalid(field, format!("names `{input}` twice")));
            }
            let Some(&input_index) = index_of.get(input.as_str()) else {
                let names: Vec<&str> = operators.iter().map(|operator| operator.name.as_str()).collect();
                return Err(invalid(
                    field,
                    format!("`{input}` is not an operator of this job; its operators: {}", names.join(", ")),
                ));
            };
            let input_kind = operators[input_index].kind();
            if input_kind.is_sink() {
                return Err(invalid(
                    field,
                    format!(
                        "`{input}` is a sink ({}): sinks emit nothing, so it cannot feed `{name}`",
                        input_kind.as_str()
                    ),
                ));
            }
        }
    }
    if !operators.iter().any(|operator| operator.kind().is_source()) {
        return Err(invalid(
            "stream.operators",
            "has no source: add one (generator, file_source, tcp_source or nats_source)",
        ));
    }
    if !operators.iter().any(|operator| operator.kind().is_sink()) {
        return Err(invalid(
            "stream.operators",
            "has no sink: add one (file_sink, stdout_sink, discard_sink or nats_sink)",
        ));
    }
    let inputs: Vec<Vec<usize>> = operators
        .iter()
        .map(|operator| operator.input.iter().map(|input| index_of[input.as_str()]).collect())
        .collect();
    check_acyclic(spec, &inputs)?;
    let mut feeds = vec![false; operators.len()];
    for input in inputs.iter().flatten() {
        feeds[*input] = true;
    }
    if let Some(index) = (0..operators.len()).find(|index| !feeds[*index] && !operators[*index].kind().is_sink()) {
        return Err(invalid(
            format!("stream.operators[{index}]"),
            format!(
                "`{}` feeds nothing: name it in the `input` of the operator it should feed, or remove it",
                operators[index].name
            ),
        ));
    }
    for (index, operator) in operators.iter().enumerate().filter(|(_, operator)| operator.is_keyed()) {
        for (input, &input_index) in operator.input.iter().zip(&inputs[index]) {
            if !is_keyed_edge(spec, &inputs, input_index) {
                return Err(invalid(
                    at(index, "input"),
                    format!(
                        "operator `{}`: input `{input}` is not keyed: put a key_by between them",
                        operator.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether records from operator `from` arrive keyed: a key_by sits in the chain of fused
/// transforms between `from`'s nearest running (non-fused) ancestor and the consumer.
fn is_keyed_edge(spec: &StreamSpec, inputs: &[Vec<usize>], mut from: usize) -> bool {
    loop {
        let operator = &spec.operators[from];
        if operator.kind() == OperatorKind::KeyBy {
            return true;
        }
        if !operator.is_fused() {
            return false;
        }
        // Fused operators have exactly one input and the graph is acyclic: this ends.
        from = inputs[from][0];
    }
}

/// Refuses a cycle, naming its operators in the direction records would flow.
fn check_acyclic(spec: &StreamSpec, inputs: &[Vec<usize>]) -> Result<(), SpecError> {
    // Kahn's algorithm: what is left once every removable operator is gone lies on or
    // downstream of a cycle, and each has an input that is left too.
    let mut pending: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut consumers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, operator_inputs) in inputs.iter().enumerate() {
        for input in operator_inputs {
            consumers.entry(*input).or_default().push(index);
        }
    }
    let mut ready: Vec<usize> = (0..inputs.len()).filter(|index| pending[*index] == 0).collect();
    let mut removed = vec![false; inputs.len()];
    while let Some(index) = ready.pop() {
        removed[index] = true;
        for consumer in consumers.get(&index).into_iter().flatten() {
            pending[*consumer] -= 1;
            if pending[*consumer] == 0 {
                ready.push(*consumer);
            }
        }
    }
    let Some(start) = removed.iter().position(|removed| !removed) else {
        return Ok(());
    };
    // Walk upstream through operators that are left until one repeats: that loop is a cycle.
    let mut path = vec![start];
    let mut current = start;
    loop {
        current = *inputs[current]
            .iter()
            .find(|input| !removed[**input])
            .expect("an operator left by Kahn's algorithm has an input that is left");
        if let Some(position) = path.iter().position(|seen| *seen == current) {
            let mut cycle: Vec<&str> = path[position..].iter().map(|index| spec.operators[*index].name.as_str()).collect();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(invalid(
                at(current, "input"),
                format!(
                    "operators {} form a cycle: records must flow from sources to sinks",
                    cycle.join(" → ")
                ),
            ));
        }
        path.push(current);
    }
}
