//! The `[mapreduce]` section of a job spec: map and reduce stages over files every node can
//! read, with built-in functions or any executable with Hadoop Streaming semantics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::DataUrl;
use crate::job::{SpecError, validate_resources};
use crate::resources::Resources;

/// Most reduce tasks one job may have.
pub const MAX_REDUCERS: u32 = 10_000;

/// A MapReduce job (`kind = "mapreduce"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapReduceSpec {
    /// Absolute paths of files, directories (every file below them) or globs (`*`, `?`, `[…]`);
    /// or the same on an object store: `s3://bucket/prefix` (every object below it), globs too.
    pub input: Vec<String>,
    /// The output directory (an absolute path) or object prefix (`s3://bucket/prefix`); it gets
    /// `part-r-00000` … and `_SUCCESS`.
    pub output: String,
    /// Replace `output` if it exists; without this an existing output fails the job at start.
    #[serde(default)]
    pub overwrite: bool,
    /// A built-in (`wordcount`, `grep PATTERN`, `identity`, `sort`) or a command run with
    /// `sh -c` that reads input lines on stdin and writes `key<TAB>value` lines on stdout.
    pub mapper: String,
    /// Runs on each map's sorted output before the shuffle (`sum`, `count`, or a command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combiner: Option<String>,
    /// A built-in (`sum`, `count`, `identity`, `sort`) or a command reading sorted
    /// `key<TAB>value` lines.
    #[serde(default = "default_reducer")]
    pub reducer: String,
    /// Number of reduce tasks, hence of output files.
    #[serde(default = "one")]
    pub reducers: u32,
    /// Target size of one map task's input, in MB (splits end on line boundaries).
    #[serde(default = "default_split_size_mb")]
    pub split_size_mb: u64,
    /// Container size of each map task.
    #[serde(default = "default_task_resources")]
    pub map: Resources,
    /// Container size of each reduce task.
    #[serde(default = "default_task_resources")]
    pub reduce: Resources,
    /// How many times one task may be tried before the job fails (preemption does not count).
    #[serde(default = "default_max_task_attempts")]
    pub max_task_attempts: u32,
    /// Memory a map task sorts its output in before spilling to disk, in MB.
    #[serde(default = "default_sort_buffer_mb")]
    pub sort_buffer_mb: u64,
    /// Start a second attempt of a straggling task and keep whichever finishes first.
    #[serde(default = "yes")]
    pub speculation: bool,
    /// Most task containers the job holds at once (default: as many as it has runnable tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<u32>,
    /// Extra environment of the task processes (and of mapper/reducer commands).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where input lives on node-local disks: a path prefix → the nodes (`host:port` ids) that
    /// hold the files under it. Map tasks of those files ask for those nodes first (delay
    /// scheduling); without an entry a split has no preference.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_locations: BTreeMap<String, Vec<String>>,
}

/// What runs as a mapper, combiner or reducer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFunction {
    Builtin(Builtin),
    /// A command line for `sh -c`, with Hadoop Streaming's line protocol.
    Command(String),
}

/// The built-in functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// Map: each whitespace-separated word → `word<TAB>1`.
    Wordcount,
    /// Map: lines containing the pattern (a plain substring) → `line<TAB>1`.
    Grep(String),
    /// Combine/reduce: sum of the values (integers) of each key.
    Sum,
    /// Combine/reduce: number of values of each key.
    Count,
    /// Map: `key<TAB>value` lines as they are (a line without a tab is a key with an empty
    /// value); reduce: every value of every key.
    Identity,
    /// Total-order sort: map keys each line by its first tab-separated field, a sampled range
    /// partitioner sends key ranges to reducers in order; reduce writes them out sorted.
    Sort,
}

/// Which stage a function is named for: not every built-in makes sense in every stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Map,
    Combine,
    Reduce,
}

impl TaskFunction {
    /// Reads a function name as written in the spec; `field` names it in errors.
    pub fn parse(field: &str, text: &str, stage: Stage) -> Result<TaskFunction, SpecError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid(field, "must name a built-in or a command"));
        }
        let (name, argument) = match text.split_once(char::is_whitespace) {
            Some((name, rest)) => (name, rest.trim()),
            None => (text, ""),
        };
        let builtin = match name {
            "wordcount" => Builtin::Wordcount,
            "grep" if argument.is_empty() => return Err(invalid(field, "grep needs a pattern: `grep PATTERN`")),
            "grep" => Builtin::Grep(argument.to_owned()),
            "sum" => Builtin::Sum,
            "count" => Builtin::Count,
            "identity" => Builtin::Identity,
            "sort" => Builtin::Sort,
            _ => return Ok(TaskFunction::Command(text.to_owned())),
        };
        if !matches!(builtin, Builtin::Grep(_)) && !argument.is_empty() {
            return Err(invalid(field, format!("built-in `{name}` takes no argument")));
        }
        let allowed = match stage {
            Stage::Map => matches!(builtin, Builtin::Wordcount | Builtin::Grep(_) | Builtin::Identity | Builtin::Sort),
            Stage::Combine => matches!(builtin, Builtin::Sum | Builtin::Count),
            Stage::Reduce => matches!(builtin, Builtin::Sum | Builtin::Count | Builtin::Identity | Builtin::Sort),
        };
        if !allowed {
            return Err(invalid(
                field,
                format!("built-in `{name}` is not a {}", format!("{stage:?}").to_lowercase()),
            ));
        }
        Ok(TaskFunction::Builtin(builtin))
    }
}

impl MapReduceSpec {
    /// Checks everything that can be checked without reading the file system.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.input.is_empty() {
            return Err(invalid("mapreduce.input", "must name at least one file, directory or glob"));
        }
        let mut inputs = Vec::with_capacity(self.input.len());
        for (index, path) in self.input.iter().enumerate() {
            // Relative paths are refused: tasks run on other nodes, in other directories.
            let url = DataUrl::parse(path).map_err(|error| invalid(format!("mapreduce.input[{index}]"), error.to_string()))?;
            inputs.push(url.to_string());
        }
        let output = DataUrl::parse(&self.output).map_err(|error| invalid("mapreduce.output", error.to_string()))?;
        let root = match &output {
            DataUrl::Local(path) => path.parent().is_none(),
            DataUrl::S3 { key, .. } => key.is_empty(),
        };
        if root {
            return Err(invalid(
                "mapreduce.output",
                format!(
                    "`{}` must be a directory or prefix below the root of its file system or bucket",
                    self.output
                ),
            ));
        }
        let output = output.to_string();
        if let Some(index) = inputs
            .iter()
            .position(|input| input.trim_end_matches('/') == output.trim_end_matches('/'))
        {
            return Err(invalid(
                "mapreduce.output",
                format!("is also input[{index}]: the job would read its own output"),
            ));
        }
        let mapper = TaskFunction::parse("mapreduce.mapper", &self.mapper, Stage::Map)?;
        let combiner = self
            .combiner
            .as_deref()
            .map(|combiner| TaskFunction::parse("mapreduce.combiner", combiner, Stage::Combine))
            .transpose()?;
        let reducer = TaskFunction::parse("mapreduce.reducer", &self.reducer, Stage::Reduce)?;
        // A count combiner turns values into counts: only summing them gives the right answer.
        if combiner == Some(TaskFunction::Builtin(Builtin::Count)) && reducer != TaskFunction::Builtin(Builtin::Sum) {
            return Err(invalid(
                "mapreduce.reducer",
                "with combiner = \"count\" the reducer must be \"sum\" (it adds the partial counts)",
            ));
        }
        let sorts = |function: &TaskFunction| matches!(function, TaskFunction::Builtin(Builtin::Sort));
        if sorts(&mapper) != sorts(&reducer) {
            return Err(invalid(
                "mapreduce.reducer",
                "a total-order sort needs both mapper = \"sort\" and reducer = \"sort\"",
            ));
        }
        if !(1..=MAX_REDUCERS).contains(&self.reducers) {
            return Err(invalid(
                "mapreduce.reducers",
                format!("{} is out of range: use 1 to {MAX_REDUCERS}", self.reducers),
            ));
        }
        if !(1..=65_536).contains(&self.split_size_mb) {
            return Err(invalid(
                "mapreduce.split_size_mb",
                format!("{} is out of range: use 1 to 65536", self.split_size_mb),
            ));
        }
        validate_resources("mapreduce.map", &self.map)?;
        validate_resources("mapreduce.reduce", &self.reduce)?;
        if !(1..=100).contains(&self.max_task_attempts) {
            return Err(invalid(
                "mapreduce.max_task_attempts",
                format!("{} is out of range: use 1 to 100", self.max_task_attempts),
            ));
        }
        if self.sort_buffer_mb == 0 || self.sort_buffer_mb * 2 > self.map.memory_mb {
            return Err(invalid(
                "mapreduce.sort_buffer_mb",
                format!(
                    "{} must be at least 1 and at most half of map.memory_mb ({})",
                    self.sort_buffer_mb, self.map.memory_mb
                ),
            ));
        }
        for (prefix, nodes) in &self.input_locations {
            if !prefix.starts_with('/') {
                return Err(invalid(
                    "mapreduce.input_locations",
                    format!("`{prefix}` must be an absolute path prefix"),
                ));
            }
            if nodes.is_empty() || nodes.iter().any(|node| node.trim().is_empty()) || nodes.len() > 100 {
                return Err(invalid(
                    format!("mapreduce.input_locations.{prefix}"),
                    "must list 1 to 100 node ids (host:port, as `spindle nodes` shows them)",
                ));
            }
        }
        if self.max_containers == Some(0) {
            return Err(invalid(
                "mapreduce.max_containers",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        Ok(())
    }

    /// The mapper, combiner and reducer, parsed (call after `validate`).
    pub fn functions(&self) -> Result<(TaskFunction, Option<TaskFunction>, TaskFunction), SpecError> {
        Ok((
            TaskFunction::parse("mapreduce.mapper", &self.mapper, Stage::Map)?,
            self.combiner
                .as_deref()
                .map(|combiner| TaskFunction::parse("mapreduce.combiner", combiner, Stage::Combine))
                .transpose()?,
            TaskFunction::parse("mapreduce.reducer", &self.reducer, Stage::Reduce)?,
        ))
    }

    /// The larger of the map and reduce container sizes.
    pub fn largest_task(&self) -> Resources {
        Resources::new(
            self.map.vcores.max(self.reduce.vcores),
            self.map.memory_mb.max(self.reduce.memory_mb),
        )
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn default_reducer() -> String {
    "identity".to_owned()
}
fn one() -> u32 {
    1
}
fn default_split_size_mb() -> u64 {
    64
}
fn default_task_resources() -> Resources {
    Resources::new(1, 512)
}
fn default_max_task_attempts() -> u32 {
    4
}
fn default_sort_buffer_mb() -> u64 {
    64
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordcount() -> MapReduceSpec {
        toml::from_str(
            r#"
            input = ["/data/books"]
            output = "/data/out/wordcount"
            mapper = "wordcount"
            combiner = "sum"
            reducer = "sum"
            reducers = 2
            "#,
        )
        .expect("the design's example parses")
    }

    #[test]
    fn the_design_example_is_valid_with_defaults() {
        let spec = wordcount();
        spec.validate().unwrap();
        assert_eq!((spec.split_size_mb, spec.max_task_attempts, spec.sort_buffer_mb), (64, 4, 64));
        let (mapper, combiner, reducer) = spec.functions().unwrap();
        assert_eq!(mapper, TaskFunction::Builtin(Builtin::Wordcount));
        assert_eq!(combiner, Some(TaskFunction::Builtin(Builtin::Sum)));
        assert_eq!(reducer, TaskFunction::Builtin(Builtin::Sum));
    }

    #[test]
    fn functions_parse_builtins_arguments_and_commands() {
        let parse = |text: &str, stage| TaskFunction::parse("f", text, stage);
        assert_eq!(
            parse("grep  needle in", Stage::Map).unwrap(),
            TaskFunction::Builtin(Builtin::Grep("needle in".into()))
        );
        assert_eq!(
            parse("python3 map.py", Stage::Map).unwrap(),
            TaskFunction::Command("python3 map.py".into())
        );
        assert!(parse("grep", Stage::Map).unwrap_err().reason.contains("needs a pattern"));
        assert!(parse("sum 3", Stage::Reduce).unwrap_err().reason.contains("takes no argument"));
        assert!(parse("wordcount", Stage::Reduce).unwrap_err().reason.contains("is not a reduce"));
        assert!(parse("identity", Stage::Combine).unwrap_err().reason.contains("is not a combine"));
    }

    #[test]
    fn bad_fields_are_named() {
        type Breakage = fn(&mut MapReduceSpec);
        let cases: [(Breakage, &str); 13] = [
            (
                |spec| {
                    spec.combiner = Some("count".into());
                    spec.reducer = "count".into();
                },
                "mapreduce.reducer",
            ),
            (|spec| spec.input.clear(), "mapreduce.input"),
            (|spec| spec.input = vec!["books".into()], "mapreduce.input[0]"),
            (|spec| spec.output = "/".into(), "mapreduce.output"),
            (|spec| spec.output = "/data/books/".into(), "mapreduce.output"),
            (|spec| spec.output = "s3://bucket".into(), "mapreduce.output"),
            (|spec| spec.output = "s3://Bucket/out".into(), "mapreduce.output"),
            (|spec| spec.input = vec!["s3:///in".into()], "mapreduce.input[0]"),
            (|spec| spec.reducers = 0, "mapreduce.reducers"),
            (|spec| spec.mapper = "sort".into(), "mapreduce.reducer"),
            (|spec| spec.sort_buffer_mb = 300, "mapreduce.sort_buffer_mb"),
            (|spec| spec.map.vcores = 0, "mapreduce.map.vcores"),
            (|spec| spec.max_task_attempts = 0, "mapreduce.max_task_attempts"),
        ];
        for (break_it, field) in cases {
            let mut spec = wordcount();
            break_it(&mut spec);
            assert_eq!(spec.validate().unwrap_err().field, field);
        }
    }
}
