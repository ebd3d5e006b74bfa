//! The built-in operator library: sources, fused transforms, keyed operators and sinks, and
//! the functions the runtime builds them with from their specs.
//!
//! ```text
//! sources:    generator │ file_source │ tcp_source │ nats_source (nats.rs)
//! transforms: Chain of Transform (map with expr │ filter │ key_by), fused into edges
//! operators:  window │ reduce (keyed) │ map with command │ user (OperatorRegistry)
//! sinks:      file │ stdout │ discard │ nats (nats.rs)
//! ```

#[cfg(test)]
mod bench;
pub mod command;
pub mod expr;
mod expr_parse;
pub mod fields;
pub mod file_source;
pub mod generator;
pub mod keyed;
pub mod nats;
pub mod reduce;
pub mod sinks;
pub mod tcp_source;
pub mod transform;
pub mod window;

use spindle_protocol::{OperatorKind, OperatorSpec};

pub use generator::{Generator, expected_window_counts};
pub use sinks::run_file_commit;
pub use transform::{Chain, Transform};

use super::operator::{InstanceContext, Operator, OperatorError, OperatorRegistry, Sink, Source};

/// Builds a source instance.
pub fn build_source(spec: &OperatorSpec, context: &InstanceContext) -> Result<Box<dyn Source>, OperatorError> {
    Ok(match spec.kind() {
        OperatorKind::Generator => Box::new(Generator::new(spec, context)?),
        OperatorKind::FileSource => Box::new(file_source::FileSource::new(spec, context)?),
        OperatorKind::TcpSource => Box::new(tcp_source::TcpSource::new(spec, context)?),
        // NATS lives in nats.rs (its own author).
        OperatorKind::NatsSource => Box::new(nats::NatsSource::new(spec, context)?),
        other => return Err(not_a(spec, other, "source")),
    })
}

/// Builds an operator instance: keyed `window`/`reduce`, `map` with a `command`, or a user
/// operator from `registry`.
pub fn build_operator(
    spec: &OperatorSpec,
    context: &InstanceContext,
    registry: &OperatorRegistry,
) -> Result<Box<dyn Operator>, OperatorError> {
    Ok(match spec.kind() {
        OperatorKind::Window => Box::new(window::Window::new(spec, context)?),
        OperatorKind::Reduce => Box::new(reduce::Reduce::new(spec, context)?),
        OperatorKind::Map if spec.command.is_some() => Box::new(command::CommandMap::new(spec, context)?),
        OperatorKind::User => registry.build(spec, context)?,
        other => return Err(not_a(spec, other, "operator with instances of its own")),
    })
}

/// Builds a sink instance.
pub fn build_sink(spec: &OperatorSpec, context: &InstanceContext) -> Result<Box<dyn Sink>, OperatorError> {
    Ok(match spec.kind() {
        OperatorKind::FileSink => Box::new(sinks::FileSink::new(spec, context)?),
        OperatorKind::StdoutSink => Box::new(sinks::StdoutSink::new()),
        OperatorKind::DiscardSink => Box::new(sinks::DiscardSink::new()),
        // NATS lives in nats.rs (its own author).
        OperatorKind::NatsSink => Box::new(nats::NatsSink::new(spec, context)?),
        other => return Err(not_a(spec, other, "sink")),
    })
}

/// Builds the fused transforms of one edge, in order (`map` with `expr`, `filter`, `key_by`).
pub fn build_chain(specs: &[&OperatorSpec]) -> Result<Chain, OperatorError> {
    specs
        .iter()
        .map(|spec| Transform::build(spec))
        .collect::<Result<Vec<_>, _>>()
        .map(Chain::new)
}

fn not_a(spec: &OperatorSpec, kind: OperatorKind, what: &str) -> OperatorError {
    OperatorError::failed(format!("operator {}: {} is not a {what}", spec.name, kind.as_str()))
}

#[cfg(test)]
pub(crate) fn test_context(index: u32, parallelism: u32) -> crate::stream::operator::InstanceContext {
    crate::stream::operator::InstanceContext {
        app_id: "application_1_0001".into(),
        operator: "op".into(),
        index,
        parallelism,
        key_groups: 16,
        key_group_range: 0..16,
        epoch: 1,
        work_dir: std::env::temp_dir(),
        checkpoint_dir: std::env::temp_dir(),
        env: Default::default(),
    }
}

/// Snapshots `from` through a real snapshot file and restores every key group into `to`.
#[cfg(test)]
pub(crate) fn restore_all(
    from: &mut dyn crate::stream::operator::Operator,
    to: &mut dyn crate::stream::operator::Operator,
    key_groups: u32,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut writer = crate::stream::state::StateWriter::create(&path).unwrap();
    from.snapshot(&mut writer).unwrap();
    writer.finish().unwrap();
    let mut reader = crate::stream::state::StateReader::open(&path).unwrap();
    reader
        .read_key_groups(&(0..key_groups), |group, bytes| to.restore_key_group(group, bytes))
        .unwrap();
    if let Some(bytes) = reader.operator_state().unwrap() {
        to.restore_operator_state(&bytes).unwrap();
    }
}
