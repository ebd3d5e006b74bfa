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
pub(crate) fn test_context(index: u32, parallelism: u32) -> crate::operator::InstanceContext {
    crate::operator::InstanceContext {
        app_id: "application_1_0001".into(),
        operator: "op".into(),
        index,
        parallelism,
        key_groups: 16,
        key_group_range: 0..16,
        epoch: 1,
        work_dir: std::env::temp_dir(),
        checkpoint_dir: crate::location::Location::Dir(std::env::temp_dir()),
        env: Default::default(),
    }
}

/// Snapshots `from` through a real snapshot file and restores every key group into `to`.
#[cfg(test)]
pub(crate) fn restore_all(from: &mut dyn crate::operator::Operator, to: &mut dyn crate::operator::Operator, key_groups: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut writer = crate::state::StateWriter::create(&path).unwrap();
    from.snapshot(&mut writer).unwrap();
    writer.finish().unwrap();
    let mut reader = crate::state::StateReader::open(&path).unwrap();
    reader
        .read_key_groups(&(0..key_groups), |group, bytes| to.restore_key_group(group, bytes))
        .unwrap();
    if let Some(bytes) = reader.operator_state().unwrap() {
        to.restore_operator_state(&bytes).unwrap();
    }
}

/// Writes a state `capture` took (as the snapshot thread does) and restores every key group
/// into `to`.
#[cfg(test)]
pub(crate) fn restore_captured(captured: Box<dyn crate::state::CapturedState>, to: &mut dyn crate::operator::Operator, key_groups: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut writer = crate::state::StateWriter::create(&path).unwrap();
    captured.write_to(&mut writer).unwrap();
    writer.finish().unwrap();
    let mut reader = crate::state::StateReader::open(&path).unwrap();
    reader
        .read_key_groups(&(0..key_groups), |group, bytes| to.restore_key_group(group, bytes))
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: OperatorKind) -> OperatorSpec {
        OperatorSpec {
            name: kind.as_str().into(),
            kind: Some(kind),
            ..OperatorSpec::default()
        }
    }

    #[test]
    fn builders_build_their_kinds_and_refuse_others() {
        let dir = tempfile::tempdir().unwrap();
        let context = test_context(0, 1);
        let registry = OperatorRegistry::new();
        assert!(build_source(&spec(OperatorKind::Generator), &context).is_ok());
        let path = Some(dir.path().display().to_string());
        assert!(
            build_source(
                &OperatorSpec {
                    path: path.clone(),
                    ..spec(OperatorKind::FileSource)
                },
                &context
            )
            .is_ok()
        );
        assert!(build_source(&spec(OperatorKind::Window), &context).is_err());
        let window = OperatorSpec {
            size_ms: Some(1000),
            aggregate: Some(spindle_protocol::Aggregate::Count),
            ..spec(OperatorKind::Window)
        };
        assert!(build_operator(&window, &context, &registry).is_ok());
        let reduce = OperatorSpec {
            aggregate: Some(spindle_protocol::Aggregate::Count),
            ..spec(OperatorKind::Reduce)
        };
        assert!(build_operator(&reduce, &context, &registry).is_ok());
        let command = OperatorSpec {
            command: Some(vec!["cat".into()]),
            ..spec(OperatorKind::Map)
        };
        assert!(build_operator(&command, &context, &registry).is_ok());
        let user = OperatorSpec {
            class: Some("mine".into()),
            ..spec(OperatorKind::User)
        };
        assert!(build_operator(&user, &context, &registry).is_err(), "not registered");
        assert!(
            build_operator(&spec(OperatorKind::KeyBy), &context, &registry).is_err(),
            "fused, no instances"
        );
        assert!(
            build_sink(
                &OperatorSpec {
                    path,
                    ..spec(OperatorKind::FileSink)
                },
                &context
            )
            .is_ok()
        );
        assert!(build_sink(&spec(OperatorKind::DiscardSink), &context).is_ok());
        assert!(build_sink(&spec(OperatorKind::StdoutSink), &context).is_ok());
        assert!(build_sink(&spec(OperatorKind::Generator), &context).is_err());
    }

    #[test]
    fn chains_build_in_order() {
        let filter = OperatorSpec {
            expr: Some("$2 > 1".into()),
            ..spec(OperatorKind::Filter)
        };
        let key_by = OperatorSpec {
            expr: Some("$1".into()),
            ..spec(OperatorKind::KeyBy)
        };
        let chain = build_chain(&[&filter, &key_by]).unwrap();
        assert_eq!(chain.len(), 2);
        let mut out = crate::record::Batch::new();
        chain.apply(
            crate::record::Record {
                time: 1,
                key: b"",
                value: b"a 2",
            },
            &mut out,
        );
        chain.apply(
            crate::record::Record {
                time: 1,
                key: b"",
                value: b"b 1",
            },
            &mut out,
        );
        assert_eq!(
            out.iter().map(|record| record.key.to_vec()).collect::<Vec<_>>(),
            vec![b"a".to_vec()]
        );
        assert!(build_chain(&[&spec(OperatorKind::Filter)]).is_err(), "no expr");
        assert!(build_chain(&[]).unwrap().is_empty());
    }
}
