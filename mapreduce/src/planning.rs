//! What a MapReduce job will run, worked out by its AM before the first task: the input's
//! splits (one map task each) and the partitioner every map uses.

use spindle_protocol::{Builtin, MapReduceSpec, NodeId, TaskFunction};

use spindle_storage::S3Settings;

use super::{Partitioner, Split, TaskResult, compute_splits, expand_inputs, sample_input_keys, sample_split_points};

/// Keys a total-order sort samples over the whole input to choose its range boundaries.
const SORT_SAMPLE_KEYS: usize = 10_000;

/// The map stage of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct MapPlan {
    /// One map task per split, in input order.
    pub splits: Vec<Split>,
    pub partitioner: Partitioner,
    /// Per split, the nodes whose local disks hold it (from `input_locations`); empty when
    /// unknown.
    pub preferred_nodes: Vec<Vec<NodeId>>,
    /// Total size of the input files.
    pub input_bytes: u64,
}

/// Expands the input, cuts it into splits of `split_size_mb`, and picks the partitioner: hash,
/// or for `sort` key ranges from a sample of the input, so reducer `i` gets keys below reducer
/// `i + 1`'s (TeraSort's sampled range partitioner).
pub fn plan_maps(spec: &MapReduceSpec) -> TaskResult<MapPlan> {
    let s3 = S3Settings::from_env(&spec.env);
    let files = expand_inputs(&spec.input, &s3)?;
    let input_bytes = files.iter().map(|file| file.size).sum();
    let splits = compute_splits(&files, spec.split_size_mb.saturating_mul(1024 * 1024));
    let sorts = TaskFunction::parse("mapreduce.mapper", &spec.mapper, spindle_protocol::Stage::Map)
        .is_ok_and(|mapper| mapper == TaskFunction::Builtin(Builtin::Sort));
    let partitioner = if sorts && spec.reducers > 1 {
        let per_split = (SORT_SAMPLE_KEYS / splits.len().max(1)).max(10);
        let sample = sample_input_keys(&splits, &s3, per_split)?;
        Partitioner::Range {
            boundaries: sample_split_points(sample, spec.reducers),
        }
    } else {
        Partitioner::Hash { reducers: spec.reducers }
    };
    let preferred_nodes = splits
        .iter()
        .map(|split| nodes_holding(&spec.input_locations, &split.path))
        .collect();
    Ok(MapPlan {
        splits,
        partitioner,
        preferred_nodes,
        input_bytes,
    })
}

/// The nodes of the longest `input_locations` prefix that contains `path` (whole path
/// components: `/data/n1` covers `/data/n1/a.txt`, not `/data/n10/a.txt`). Objects have no
/// locality (every node reads them over the network as fast): none, so nothing waits for one.
fn nodes_holding(locations: &std::collections::BTreeMap<String, Vec<String>>, path: &str) -> Vec<NodeId> {
    if !path.starts_with('/') {
        return Vec::new();
    }
    let path = std::path::Path::new(path);
    locations
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, nodes)| nodes.iter().map(|node| NodeId(node.clone())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(input: &std::path::Path, mapper: &str, reducer: &str) -> MapReduceSpec {
        let text = format!(
            "input = [{:?}]\noutput = \"/tmp/never-written\"\nmapper = \"{mapper}\"\nreducer = \"{reducer}\"\nreducers = 3\nsplit_size_mb = 1\n",
            input.display().to_string()
        );
        let spec: MapReduceSpec = toml::from_str(&text).unwrap();
        spec.validate().unwrap();
        spec
    }

    #[test]
    fn splits_cover_the_input_and_sort_gets_ordered_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..200_000u32).map(|n| format!("{:08}\n", (n * 7_919) % 200_000)).collect();
        std::fs::write(dir.path().join("keys.txt"), &lines).unwrap();

        let counted = plan_maps(&spec(dir.path(), "wordcount", "sum")).unwrap();
        assert_eq!(counted.input_bytes, lines.len() as u64);
        assert_eq!(counted.splits.len(), 2, "1.8 MB in 1 MiB splits");
        assert_eq!(counted.partitioner, Partitioner::Hash { reducers: 3 });

        let sorted = plan_maps(&spec(dir.path(), "sort", "sort")).unwrap();
        let Partitioner::Range { boundaries } = sorted.partitioner else {
            panic!("sort uses ranges");
        };
        assert_eq!(boundaries.len(), 2);
        assert!(boundaries[0] < boundaries[1]);
    }

    #[test]
    fn splits_prefer_the_nodes_of_the_longest_location_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for node in ["n1", "n10"] {
            std::fs::create_dir_all(dir.path().join(node)).unwrap();
            std::fs::write(dir.path().join(node).join("a.txt"), "x y\n").unwrap();
        }
        let mut spec = spec(dir.path(), "wordcount", "sum");
        let root = dir.path().display().to_string();
        spec.input_locations = [
            (format!("{root}/n1"), vec!["n1:8042".to_owned()]),
            (format!("{root}/n1/a.txt"), vec!["n1:8042".to_owned(), "n2:8042".to_owned()]),
        ]
        .into();
        spec.validate().unwrap();
        let plan = plan_maps(&spec).unwrap();
        let by_path: Vec<(String, Vec<NodeId>)> = plan
            .splits
            .iter()
            .zip(&plan.preferred_nodes)
            .map(|(split, nodes)| {
                (
                    std::path::Path::new(&split.path)
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string(),
                    nodes.clone(),
                )
            })
            .collect();
        assert_eq!(
            by_path,
            [
                ("n1/a.txt".to_owned(), vec![NodeId("n1:8042".into()), NodeId("n2:8042".into())]),
                ("n10/a.txt".to_owned(), vec![]),
            ]
        );
    }

    #[test]
    fn a_missing_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = plan_maps(&spec(&dir.path().join("nope"), "wordcount", "sum"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("nope"), "{error}");
    }
}
