//! The physical plan of a streaming job, pure: which operators run as instances (stages),
//! the edges between them with the transforms fused into each, and where instances go.

use std::collections::{BTreeMap, BTreeSet};

use spindle_protocol::{OperatorSpec, StreamSpec};

use super::control::Range;
use super::keys::even_ranges;
use super::wire::InstanceId;

/// An operator that runs as instances of its own.
#[derive(Debug, Clone)]
pub struct Stage {
    pub spec: OperatorSpec,
}

/// Records from one stage to another, through fused transforms.
#[derive(Debug, Clone)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub chain: Vec<OperatorSpec>,
    /// The chain has a `key_by`: partition by key group.
    pub keyed: bool,
}

/// Stages and edges; edges of one stage are numbered by their order in `outgoing(stage)`.
#[derive(Debug, Clone)]
pub struct Graph {
    pub stages: Vec<Stage>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// Builds the graph of a validated spec.
    pub fn build(spec: &StreamSpec) -> Graph {
        let by_name: BTreeMap<&str, &OperatorSpec> = spec.operators.iter().map(|op| (op.name.as_str(), op)).collect();
        let stages: Vec<Stage> = spec
            .operators
            .iter()
            .filter(|op| !op.is_fused())
            .map(|op| Stage { spec: op.clone() })
            .collect();
        let index: BTreeMap<&str, usize> = stages.iter().enumerate().map(|(i, stage)| (stage.spec.name.as_str(), i)).collect();
        let mut edges = Vec::new();
        for (to, stage) in stages.iter().enumerate() {
            for input in &stage.spec.input {
                // Walk up through fused transforms to the stage that feeds them.
                let mut chain = Vec::new();
                let mut name = input.as_str();
                while let Some(op) = by_name.get(name).filter(|op| op.is_fused()) {
                    chain.push((*op).clone());
                    name = op.input.first().map(String::as_str).unwrap_or_default();
                }
                chain.reverse();
                let Some(&from) = index.get(name) else { continue };
                let keyed = chain.iter().any(|op| op.kind() == spindle_protocol::OperatorKind::KeyBy);
                edges.push(Edge { from, to, chain, keyed });
            }
        }
        Graph { stages, edges }
    }

    pub fn stage(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|stage| stage.spec.name == name)
    }

    /// Indices (into `edges`) of the edges leaving `stage`, in edge-number order.
    pub fn outgoing(&self, stage: usize) -> Vec<usize> {
        (0..self.edges.len()).filter(|&edge| self.edges[edge].from == stage).collect()
    }

    /// Indices of the edges entering `stage`.
    pub fn incoming(&self, stage: usize) -> Vec<usize> {
        (0..self.edges.len()).filter(|&edge| self.edges[edge].to == stage).collect()
    }

    /// Whether `edge` is *forward* in `layout` (Flink's forward partitioning): instance `i`
    /// sends only to instance `i`. It is when the edge partitions by nothing (no `key_by`, a
    /// downstream operator without keyed state) and both ends run as many instances; otherwise
    /// every upstream instance sends to every downstream one (by key group or round-robin).
    /// Forward edges are what split a pipeline into failover regions.
    pub fn is_forward(&self, edge: usize, layout: &Layout) -> bool {
        let Edge { from, to, keyed, .. } = self.edges[edge];
        !keyed && !self.stages[to].spec.is_keyed() && layout[from].len() == layout[to].len()
    }

    /// The instances `from` (an instance of `edge`'s upstream stage) sends to over `edge`.
    pub fn receivers<'a>(&self, layout: &'a Layout, edge: usize, from: &Placed) -> Vec<&'a Placed> {
        let forward = self.is_forward(edge, layout);
        layout[self.edges[edge].to]
            .iter()
            .filter(|to| !forward || to.index == from.index)
            .collect()
    }

    /// The instances that send to `to` (an instance of `edge`'s downstream stage) over `edge`.
    pub fn senders<'a>(&self, layout: &'a Layout, edge: usize, to: &Placed) -> Vec<&'a Placed> {
        let forward = self.is_forward(edge, layout);
        layout[self.edges[edge].from]
            .iter()
            .filter(|from| !forward || from.index == to.index)
            .collect()
    }

    /// The failover region of `failed` (Flink's): every instance connected to one of them by
    /// data, directly or through others. Records flow both ways along a connection's meaning:
    /// downstream instances hold what the failed ones sent since the checkpoint, upstream ones
    /// would have to send again what was lost in them, so all of them go back to the
    /// checkpoint together; instances outside the region exchange nothing with it and go on.
    pub fn region(&self, layout: &Layout, failed: &BTreeSet<InstanceId>) -> BTreeSet<InstanceId> {
        let mut neighbours: BTreeMap<InstanceId, Vec<InstanceId>> = BTreeMap::new();
        for (edge, Edge { from, .. }) in self.edges.iter().enumerate() {
            for sender in &layout[*from] {
                for receiver in self.receivers(layout, edge, sender) {
                    neighbours.entry(sender.id).or_default().push(receiver.id);
                    neighbours.entry(receiver.id).or_default().push(sender.id);
                }
            }
        }
        let mut region: BTreeSet<InstanceId> = BTreeSet::new();
        let mut frontier: Vec<InstanceId> = failed.iter().copied().collect();
        while let Some(instance) = frontier.pop() {
            if region.insert(instance) {
                frontier.extend(neighbours.get(&instance).into_iter().flatten().filter(|n| !region.contains(n)));
            }
        }
        region
    }

    /// The number of edge `edge` among its source stage's outgoing edges.
    pub fn local_edge(&self, edge: usize) -> usize {
        self.outgoing(self.edges[edge].from)
            .iter()
            .position(|&e| e == edge)
            .expect("an edge is among its stage's outgoing edges")
    }
}

/// One placed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub id: u64,
    pub index: u32,
    pub range: Range,
    /// Index into the worker list the layout was made for.
    pub worker: usize,
}

/// Where every instance of every stage runs, by stage index.
pub type Layout = Vec<Vec<Placed>>;

/// Workers a job needs: as many as its widest stage (each worker hosts at most one instance of
/// each stage: Flink's slot sharing).
pub fn workers_needed(parallelism: &[u32]) -> usize {
    parallelism.iter().copied().max().unwrap_or(1).max(1) as usize
}

/// A fresh layout: instance `i` of every stage on worker `i`; keyed stages get even ranges.
pub fn fresh_layout(graph: &Graph, parallelism: &[u32], key_groups: u32, mut next_id: impl FnMut() -> u64) -> Layout {
    graph
        .stages
        .iter()
        .zip(parallelism)
        .map(|(stage, &p)| {
            let ranges = if stage.spec.is_keyed() {
                even_ranges(key_groups, p).into_iter().map(|r| (r.start, r.end)).collect()
            } else {
                vec![(0, key_groups); p as usize]
            };
            ranges
                .into_iter()
                .enumerate()
                .map(|(index, range)| Placed {
                    id: next_id(),
                    index: index as u32,
                    range,
                    worker: index,
                })
                .collect()
        })
        .collect()
}

/// The part of `a` inside `b`, if any.
pub fn intersect(a: Range, b: Range) -> Option<Range> {
    let start = a.0.max(b.0);
    let end = a.1.min(b.1);
    (start < end).then_some((start, end))
}

/// The example pipeline (examples/stream-window-count.toml: generator (2) → key_by → 1 s
/// window `count` (`count_parallelism`) → discard) that the tests of this crate plan, scale and
/// autoscale.
#[cfg(test)]
pub(crate) fn window_count_spec(count_parallelism: u32) -> StreamSpec {
    let job: spindle_protocol::JobSpec =
        toml::from_str(include_str!("../../examples/stream-window-count.toml")).expect("the example parses");
    let mut spec = job.stream.expect("a stream job");
    spec.set_parallelism("count", count_parallelism).expect("a valid parallelism");
    spec
}

/// examples/stream-parallel-etl.toml: generator (3) → filter → file sink (3), every edge
/// forward, so three failover regions.
#[cfg(test)]
pub(crate) fn parallel_etl_spec() -> StreamSpec {
    let job: spindle_protocol::JobSpec =
        toml::from_str(include_str!("../../examples/stream-parallel-etl.toml")).expect("the example parses");
    job.stream.expect("a stream job")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamSpec {
        window_count_spec(3)
    }

    #[test]
    fn fused_transforms_ride_on_the_edge_into_the_next_stage() {
        let graph = Graph::build(&spec());
        let names: Vec<&str> = graph.stages.iter().map(|stage| stage.spec.name.as_str()).collect();
        assert_eq!(names, ["events", "count", "out"]);
        assert_eq!(graph.edges.len(), 2);
        assert_eq!((graph.edges[0].from, graph.edges[0].to, graph.edges[0].keyed), (0, 1, true));
        assert_eq!(graph.edges[0].chain[0].name, "by_key");
        assert_eq!((graph.edges[1].from, graph.edges[1].to, graph.edges[1].keyed), (1, 2, false));
        assert_eq!(graph.local_edge(1), 0);
    }

    #[test]
    fn a_fresh_layout_shares_workers_between_stages() {
        let graph = Graph::build(&spec());
        let mut id = 0;
        let layout = fresh_layout(&graph, &[2, 3, 1], 128, || {
            id += 1;
            id
        });
        assert_eq!(workers_needed(&[2, 3, 1]), 3);
        assert_eq!(
            layout[1].iter().map(|p| p.range).collect::<Vec<_>>(),
            vec![(0, 43), (43, 86), (86, 128)]
        );
        assert_eq!(layout[1][2].worker, 2);
        assert_eq!(layout[0].len(), 2);
        assert_eq!(intersect((0, 10), (5, 20)), Some((5, 10)));
        assert_eq!(intersect((0, 5), (5, 20)), None);
    }

    fn layout_of(graph: &Graph, parallelism: &[u32]) -> Layout {
        let mut id = 0;
        fresh_layout(graph, parallelism, 128, || {
            id += 1;
            id
        })
    }

    #[test]
    fn unkeyed_edges_between_equal_parallelisms_are_forward_and_make_one_region_per_index() {
        let graph = Graph::build(&parallel_etl_spec());
        let layout = layout_of(&graph, &[3, 3]);
        assert!(graph.is_forward(0, &layout));
        let receivers: Vec<u64> = graph.receivers(&layout, 0, &layout[0][1]).iter().map(|p| p.id).collect();
        assert_eq!(receivers, [layout[1][1].id]);
        let senders: Vec<u64> = graph.senders(&layout, 0, &layout[1][2]).iter().map(|p| p.id).collect();
        assert_eq!(senders, [layout[0][2].id]);
        // The sink's instance 1 fails: its generator goes back with it, nothing else.
        let region = graph.region(&layout, &BTreeSet::from([layout[1][1].id]));
        assert_eq!(region, BTreeSet::from([layout[0][1].id, layout[1][1].id]));

        // Different parallelisms: round-robin to every instance, one region.
        let layout = layout_of(&graph, &[3, 2]);
        assert!(!graph.is_forward(0, &layout));
        assert_eq!(graph.receivers(&layout, 0, &layout[0][0]).len(), 2);
        assert_eq!(graph.region(&layout, &BTreeSet::from([layout[1][0].id])).len(), 5);
    }

    #[test]
    fn keyed_edges_join_everything_behind_them_into_one_region() {
        let graph = Graph::build(&spec());
        // events (2) → key_by → count (2) → out (2): the count → out edge is forward, but the
        // keyed edge ties every instance to every other.
        let layout = layout_of(&graph, &[2, 2, 2]);
        assert!(!graph.is_forward(0, &layout), "keyed");
        assert!(graph.is_forward(1, &layout));
        let all: BTreeSet<u64> = layout.iter().flatten().map(|p| p.id).collect();
        assert_eq!(graph.region(&layout, &BTreeSet::from([layout[2][1].id])), all);
    }
}
