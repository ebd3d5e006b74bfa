//! Running a combiner or reducer over key-sorted records: built-ins fold each group of equal
//! keys in place; a command gets the records as `key<TAB>value` lines on its stdin.

use std::collections::BTreeMap;
use std::io::Write;

use spindle_protocol::TaskFunction;

use super::command::{run_streaming, stdin_error};
use super::error::{TaskError, TaskResult};
use super::functions::{BuiltinReducer, GroupFolder, write_text_record};
use super::records::SortedRecords;

/// A combiner or reducer ready to run.
#[derive(Debug, Clone, Copy)]
pub enum GroupFunction<'a> {
    Builtin(BuiltinReducer),
    /// A command for `sh -c`, with the environment it runs in.
    Command {
        command: &'a str,
        env: &'a BTreeMap<String, String>,
    },
}

impl<'a> GroupFunction<'a> {
    /// The function for a parsed spec function; `stage` names it in the error if it is a map
    /// built-in.
    pub fn new(function: &'a TaskFunction, env: &'a BTreeMap<String, String>, stage: &str) -> TaskResult<Self> {
        match function {
            TaskFunction::Builtin(builtin) => BuiltinReducer::new(builtin)
                .map(GroupFunction::Builtin)
                .ok_or_else(|| TaskError::InvalidParams(format!("built-in `{builtin:?}` cannot be a {stage}"))),
            TaskFunction::Command(command) => Ok(GroupFunction::Command { command, env }),
        }
    }

    /// The function to apply to this function's own output when combining again (merging
    /// spills): `count` then adds up counts; the others are applied again as they are.
    pub fn recombining(self) -> Self {
        match self {
            GroupFunction::Builtin(BuiltinReducer::Count) => GroupFunction::Builtin(BuiltinReducer::Sum),
            other => other,
        }
    }
}

/// What one run of a combiner or reducer consumed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCounts {
    pub input_records: u64,
    pub input_groups: u64,
}

/// Runs `function` over sorted `records`, passing what it emits to `emit` (a command's output
/// in the order it writes it).
pub fn reduce_sorted<S, E>(function: GroupFunction<'_>, records: &mut S, mut emit: E) -> TaskResult<GroupCounts>
where
    S: SortedRecords + Send,
    E: FnMut(&[u8], &[u8]) -> TaskResult<()>,
{
    let mut counts = GroupCounts::default();
    match function {
        GroupFunction::Builtin(reducer) => {
            let mut folder = GroupFolder::new(reducer);
            let mut current_key: Vec<u8> = Vec::new();
            while let Some((key, value)) = records.next_record()? {
                if counts.input_records == 0 || key != current_key.as_slice() {
                    if counts.input_records > 0 {
                        folder.finish_group(&current_key, &mut emit)?;
                    }
                    current_key.clear();
                    current_key.extend_from_slice(key);
                    counts.input_groups += 1;
                }
                counts.input_records += 1;
                folder.add(key, value, &mut emit)?;
            }
            if counts.input_records > 0 {
                folder.finish_group(&current_key, &mut emit)?;
            }
        }
        GroupFunction::Command { command, env } => {
            let feed_counts = &mut counts;
            run_streaming(
                command,
                env,
                move |stdin| {
                    let mut previous_key: Option<Vec<u8>> = None;
                    while let Some((key, value)) = records.next_record()? {
                        feed_counts.input_records += 1;
                        if previous_key.as_deref() != Some(key) {
                            feed_counts.input_groups += 1;
                            let previous = previous_key.get_or_insert_with(Vec::new);
                            previous.clear();
                            previous.extend_from_slice(key);
                        }
                        write_text_record(stdin, key, value).map_err(stdin_error)?;
                    }
                    stdin.flush().map_err(stdin_error)
                },
                emit,
            )?;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::VecRecords;

    fn records(pairs: &[(&str, &str)]) -> VecRecords {
        VecRecords::sorted(pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect())
    }

    fn run(function: GroupFunction<'_>, pairs: &[(&str, &str)]) -> TaskResult<(Vec<String>, GroupCounts)> {
        let mut out = Vec::new();
        let counts = reduce_sorted(function, &mut records(pairs), |key, value| {
            out.push(format!("{}={}", String::from_utf8_lossy(key), String::from_utf8_lossy(value)));
            Ok(())
        })?;
        Ok((out, counts))
    }

    #[test]
    fn built_ins_fold_each_group() {
        let input = [("b", "2"), ("a", "1"), ("b", "5"), ("", "7")];
        let (sums, counts) = run(GroupFunction::Builtin(BuiltinReducer::Sum), &input).unwrap();
        assert_eq!(sums, ["=7", "a=1", "b=7"]);
        assert_eq!(
            counts,
            GroupCounts {
                input_records: 4,
                input_groups: 3
            }
        );
        let (tallies, _) = run(GroupFunction::Builtin(BuiltinReducer::Count), &input).unwrap();
        assert_eq!(tallies, ["=1", "a=1", "b=2"]);
        let (all, _) = run(GroupFunction::Builtin(BuiltinReducer::PassThrough), &input).unwrap();
        assert_eq!(all, ["=7", "a=1", "b=2", "b=5"]);
        assert!(run(GroupFunction::Builtin(BuiltinReducer::Sum), &[]).unwrap().0.is_empty());
    }

    #[test]
    fn recombining_a_count_adds_the_counts() {
        let recount = GroupFunction::Builtin(BuiltinReducer::Count).recombining();
        assert_eq!(run(recount, &[("a", "2"), ("a", "3")]).unwrap().0, ["a=5"]);
    }

    #[test]
    fn a_command_gets_sorted_lines() {
        let env = BTreeMap::new();
        let awk = GroupFunction::Command {
            command: r#"awk -F'\t' '{ s[$1] += $2 } END { for (k in s) print k "\t" s[k] }' | sort"#,
            env: &env,
        };
        let (out, counts) = run(awk, &[("b", "2"), ("a", "1"), ("b", "5")]).unwrap();
        assert_eq!(out, ["a=1", "b=7"]);
        assert_eq!(
            counts,
            GroupCounts {
                input_records: 3,
                input_groups: 2
            }
        );
    }
}
