//! Each operator's own fields: which apply to its kind, which it needs, and their values.

use super::{at, invalid};
use crate::job::{SpecError, validate_command};
use crate::stream::{Aggregate, OperatorKind, OperatorSpec};

/// Longest window: state for longer windows grows without a useful bound.
const MAX_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Every kind, for "applies only to kind = …" messages.
const ALL_KINDS: [OperatorKind; 14] = [
    OperatorKind::Generator,
    OperatorKind::FileSource,
    OperatorKind::TcpSource,
    OperatorKind::NatsSource,
    OperatorKind::Map,
    OperatorKind::Filter,
    OperatorKind::KeyBy,
    OperatorKind::Reduce,
    OperatorKind::Window,
    OperatorKind::User,
    OperatorKind::FileSink,
    OperatorKind::StdoutSink,
    OperatorKind::DiscardSink,
    OperatorKind::NatsSink,
];

/// The kind names, for "kind is required: one of …".
pub(super) fn kind_names() -> String {
    ALL_KINDS.map(OperatorKind::as_str).join(", ")
}

/// The optional fields a kind reads; any other one set is refused, so a field that would do
/// nothing is never silently ignored.
fn applicable_fields(kind: OperatorKind) -> &'static [&'static str] {
    match kind {
        OperatorKind::Generator => &["rate", "event_rate", "keys", "seed", "limit", "out_of_orderness_ms"],
        OperatorKind::FileSource => &["path", "follow", "time_field", "out_of_orderness_ms", "delimiter"],
        OperatorKind::TcpSource => &["address", "time_field", "out_of_orderness_ms", "delimiter"],
        OperatorKind::NatsSource => &["url", "stream", "subject", "time_field", "out_of_orderness_ms", "delimiter"],
        OperatorKind::Map => &["expr", "command", "delimiter"],
        OperatorKind::Filter | OperatorKind::KeyBy => &["expr", "delimiter"],
        OperatorKind::Reduce => &["aggregate", "field", "delimiter"],
        OperatorKind::Window => &["size_ms", "slide_ms", "aggregate", "field", "delimiter"],
        OperatorKind::User => &["class", "keyed", "options"],
        OperatorKind::FileSink => &["path", "roll_mb"],
        OperatorKind::StdoutSink | OperatorKind::DiscardSink => &[],
        OperatorKind::NatsSink => &["url", "subject"],
    }
}

/// The optional fields that are set, by name.
fn set_fields(operator: &OperatorSpec) -> Vec<&'static str> {
    let present = [
        ("rate", operator.rate.is_some()),
        ("event_rate", operator.event_rate.is_some()),
        ("keys", operator.keys.is_some()),
        ("seed", operator.seed.is_some()),
        ("limit", operator.limit.is_some()),
        ("path", operator.path.is_some()),
        ("follow", operator.follow.is_some()),
        ("address", operator.address.is_some()),
        ("url", operator.url.is_some()),
        ("stream", operator.stream.is_some()),
        ("subject", operator.subject.is_some()),
        ("time_field", operator.time_field.is_some()),
        ("out_of_orderness_ms", operator.out_of_orderness_ms.is_some()),
        ("expr", operator.expr.is_some()),
        ("command", operator.command.is_some()),
        ("delimiter", operator.delimiter.is_some()),
        ("aggregate", operator.aggregate.is_some()),
        ("field", operator.field.is_some()),
        ("size_ms", operator.size_ms.is_some()),
        ("slide_ms", operator.slide_ms.is_some()),
        ("class", operator.class.is_some()),
        ("keyed", operator.keyed.is_some()),
        ("options", !operator.options.is_empty()),
        ("roll_mb", operator.roll_mb.is_some()),
    ];
    present.into_iter().filter(|(_, set)| *set).map(|(name, _)| name).collect()
}

/// Checks operator `index`'s fields against its kind (set by the time this runs).
pub(super) fn check(index: usize, operator: &OperatorSpec) -> Result<(), SpecError> {
    let kind = operator.kind();
    let applicable = applicable_fields(kind);
    if let Some(field) = set_fields(operator).into_iter().find(|field| !applicable.contains(field)) {
        let kinds: Vec<&str> = ALL_KINDS
            .into_iter()
            .filter(|other| applicable_fields(*other).contains(&field))
            .map(OperatorKind::as_str)
            .collect();
        return Err(invalid(
            at(index, field),
            format!(
                "`{field}` applies only to kind = {}, and `{}` is a {}: remove it",
                kinds.join(" or "),
                operator.name,
                kind.as_str()
            ),
        ));
    }
    check_common_values(index, operator)?;
    let required = |field: &str, what: &str| invalid(at(index, field), format!("a {} needs {what}", kind.as_str()));
    match kind {
        OperatorKind::FileSource | OperatorKind::FileSink => {
            let Some(path) = &operator.path else {
                return Err(required("path", "`path`, the absolute path of its directory"));
            };
            // Relative paths are refused: workers run on other nodes, in other directories.
            crate::DataUrl::parse(path).map_err(|error| invalid(at(index, "path"), error.to_string()))?;
        }
        OperatorKind::TcpSource => {
            let Some(address) = &operator.address else {
                return Err(required("address", "`address`, the host:port to read lines from"));
            };
            if !is_host_port(address) {
                return Err(invalid(
                    at(index, "address"),
                    format!("`{address}` is not host:port (e.g. 127.0.0.1:9999)"),
                ));
            }
        }
        OperatorKind::NatsSource => {
            if operator.stream.is_none() {
                return Err(required("stream", "`stream`, the JetStream stream to read"));
            }
        }
        OperatorKind::NatsSink => {
            if operator.subject.is_none() {
                return Err(required("subject", "`subject`, the subject to publish to"));
            }
        }
        OperatorKind::Map => match (&operator.expr, &operator.command) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    at(index, "command"),
                    "a map has either `expr` (built-in fields) or `command` (an external program), not both",
                ));
            }
            (None, None) => {
                return Err(required(
                    "expr",
                    "either `expr` (e.g. \"$1, $2 * 2\") or `command` (argv of a program over lines)",
                ));
            }
            (None, Some(command)) => validate_command(&at(index, "command"), command)?,
            (Some(_), None) => {}
        },
        OperatorKind::Filter | OperatorKind::KeyBy => {
            if operator.expr.is_none() {
                return Err(required("expr", "`expr` (e.g. \"$1\")"));
            }
        }
        OperatorKind::Reduce | OperatorKind::Window => {
            if kind == OperatorKind::Window {
                check_window(index, operator)?;
            }
            check_aggregate(index, operator)?;
        }
        OperatorKind::User => {
            if operator.class.is_none() {
                return Err(required(
                    "class",
                    "`class`, the name its worker binary registers the operator under",
                ));
            }
        }
        OperatorKind::Generator | OperatorKind::StdoutSink | OperatorKind::DiscardSink => {}
    }
    Ok(())
}

/// Values that mean the same whatever the kind (given that the field applies).
fn check_common_values(index: usize, operator: &OperatorSpec) -> Result<(), SpecError> {
    for (field, value) in [
        ("rate", operator.rate),
        ("event_rate", operator.event_rate),
        ("keys", operator.keys),
    ] {
        if value == Some(0) {
            return Err(invalid(
                at(index, field),
                format!("must be at least 1 (leave `{field}` out for the default)"),
            ));
        }
    }
    if operator.roll_mb == Some(0) {
        return Err(invalid(at(index, "roll_mb"), "must be at least 1"));
    }
    let texts = [
        ("expr", &operator.expr),
        ("delimiter", &operator.delimiter),
        ("url", &operator.url),
        ("stream", &operator.stream),
        ("subject", &operator.subject),
        ("class", &operator.class),
        ("path", &operator.path),
        ("address", &operator.address),
    ];
    for (field, value) in texts {
        // A delimiter may be a space; everything else blank is a mistake.
        let blank = |text: &String| {
            if field == "delimiter" {
                text.is_empty()
            } else {
                text.trim().is_empty()
            }
        };
        if value.as_ref().is_some_and(blank) {
            return Err(invalid(
                at(index, field),
                format!("must not be empty (leave `{field}` out if it is not needed)"),
            ));
        }
    }
    for (field, value) in [("field", &operator.field), ("time_field", &operator.time_field)] {
        if let Some(text) = value
            && !is_field_reference(text)
        {
            return Err(invalid(
                at(index, field),
                format!("`{text}` is not a field: write `$N` for the N-th field of a line, from $1"),
            ));
        }
    }
    Ok(())
}

fn check_window(index: usize, operator: &OperatorSpec) -> Result<(), SpecError> {
    let Some(size_ms) = operator.size_ms else {
        return Err(invalid(at(index, "size_ms"), "a window needs `size_ms`, the length of a window"));
    };
    if !(1..=MAX_WINDOW_MS).contains(&size_ms) {
        return Err(invalid(
            at(index, "size_ms"),
            format!("{size_ms} is out of range: use 1 to {MAX_WINDOW_MS} (a day)"),
        ));
    }
    if let Some(slide_ms) = operator.slide_ms {
        if slide_ms == 0 || slide_ms > size_ms {
            return Err(invalid(
                at(index, "slide_ms"),
                format!("{slide_ms} is out of range: use 1 to size_ms ({size_ms}); leave it out for tumbling windows"),
            ));
        }
        // Each record then falls in a whole number of windows, and window starts line up.
        if size_ms % slide_ms != 0 {
            return Err(invalid(
                at(index, "slide_ms"),
                format!("{slide_ms} does not divide size_ms ({size_ms}): pick a slide that does"),
            ));
        }
    }
    Ok(())
}

fn check_aggregate(index: usize, operator: &OperatorSpec) -> Result<(), SpecError> {
    let kind = operator.kind().as_str();
    match (operator.aggregate, &operator.field) {
        (None, _) => Err(invalid(
            at(index, "aggregate"),
            format!("a {kind} needs `aggregate`: count, sum, min or max"),
        )),
        (Some(Aggregate::Count), Some(_)) => Err(invalid(at(index, "field"), "aggregate = \"count\" reads no field: remove `field`")),
        (Some(Aggregate::Count), None) | (Some(_), Some(_)) => Ok(()),
        (Some(aggregate), None) => Err(invalid(
            at(index, "field"),
            format!(
                "aggregate = \"{}\" needs `field`, the numeric field it reads (e.g. \"$2\")",
                format!("{aggregate:?}").to_lowercase()
            ),
        )),
    }
}

/// `$N` with N ≥ 1.
fn is_field_reference(text: &str) -> bool {
    text.strip_prefix('$')
        .filter(|digits| digits.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .is_some_and(|number| number >= 1)
}

fn is_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.trim().is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0))
}
