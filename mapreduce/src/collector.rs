//! The map side's output path: records from the mapper are partitioned and held in memory,
//! spilled sorted (and combined) when memory is full, and at the end merged into the map output.
//!
//! Two ways to hold records, one interface:
//! - a `SortBuffer` (any or no combiner): sorted by (partition, key) when full, combined per
//!   group of equal keys, spilled;
//! - with a built-in `sum`/`count` combiner, a hash table of running totals per key (the
//!   combiner applied as records arrive, "in-mapper combining"): no sort of raw records at all,
//!   which is what makes word count fast. It spills sorted like the buffer when it is full.
//!
//! A combiner runs zero or more times per record, as in Hadoop: at every spill and again when
//! spills are merged.

use std::fs;
use std::path::{Path, PathBuf};

use super::aggregate::Aggregator;
use super::combine::{GroupFunction, reduce_sorted};
use super::counters::TaskCounters;
use super::error::{TaskError, TaskResult, show_bytes};
use super::functions::BuiltinReducer;
use super::map_output::{MapOutputFiles, SegmentWriter, open_range, publish};
use super::merge::MergedRecords;
use super::records::{Partitioner, SortedRecords, VecRecords};
use super::sort_buffer::SortBuffer;

/// A spill on disk: `.data` layout, index in memory.
#[derive(Debug)]
struct SpillFile {
    /// The spill's data file (hidden, temporary name).
    data: PathBuf,
    /// Its `reducers + 1` partition offsets.
    index: Vec<u64>,
}

/// Where records wait before a spill.
#[derive(Debug)]
enum Staging {
    Sort(SortBuffer),
    Aggregate(Aggregator),
}

/// Collects a map task's output records into its map output files.
pub struct MapOutputCollector<'a> {
    /// Which partition (reducer) each key goes to.
    partitioner: &'a Partitioner,
    /// The combiner, if the job has one.
    combiner: Option<GroupFunction<'a>>,
    /// Records in memory since the last spill.
    staging: Staging,
    /// Spills written so far, in order (equal keys keep this order in the output).
    spills: Vec<SpillFile>,
    /// The map output's final paths.
    files: MapOutputFiles,
    /// The output directory; spills go there too, hidden.
    directory: PathBuf,
    /// The map output's name, also the prefix of its spills' names.
    name: String,
    /// Spill files made so far, for unique names.
    spill_files_created: u32,
    /// Most spills merged at once (open files, read buffers); more are merged in passes.
    merge_factor: usize,
    /// What was collected, combined and written so far.
    counters: TaskCounters,
}

/// The default `merge_factor`, Hadoop's `mapreduce.task.io.sort.factor` scaled to today's
/// file limits.
const MERGE_FACTOR: usize = 64;

impl<'a> MapOutputCollector<'a> {
    /// A collector holding about `memory_bytes` before spilling into `directory`.
    pub fn new(
        partitioner: &'a Partitioner,
        combiner: Option<GroupFunction<'a>>,
        memory_bytes: usize,
        directory: &Path,
        name: &str,
    ) -> Self {
        let staging = match combiner {
            Some(GroupFunction::Builtin(reducer @ (BuiltinReducer::Sum | BuiltinReducer::Count))) => {
                Staging::Aggregate(Aggregator::new(reducer, memory_bytes))
            }
            _ => Staging::Sort(SortBuffer::new(memory_bytes)),
        };
        MapOutputCollector {
            partitioner,
            combiner,
            staging,
            spills: Vec::new(),
            files: MapOutputFiles::at(directory, name),
            directory: directory.to_owned(),
            name: name.to_owned(),
            spill_files_created: 0,
            merge_factor: MERGE_FACTOR,
            counters: TaskCounters::default(),
        }
    }

    /// Merges at most `factor` (at least 2) spills at once (tests force merge passes with it).
    #[cfg(test)]
    pub fn with_merge_factor(mut self, factor: usize) -> Self {
        self.merge_factor = factor.max(2);
        self
    }

    /// Takes one record from the mapper.
    #[inline]
    pub fn collect(&mut self, key: &[u8], value: &[u8]) -> TaskResult<()> {
        if key.len() > u32::MAX as usize || value.len() > u32::MAX as usize {
            // The frame format has 32-bit lengths.
            return Err(TaskError::RecordTooLarge {
                key: show_bytes(key),
                bytes: key.len().max(value.len()),
            });
        }
        self.counters.map_output_records += 1;
        match &mut self.staging {
            Staging::Sort(buffer) => {
                if buffer.is_full_for(key.len(), value.len()) {
                    self.spill()?;
                }
                let partition = self.partitioner.partition(key);
                let Staging::Sort(buffer) = &mut self.staging else {
                    unreachable!("staging never changes")
                };
                buffer.push(partition, key, value);
            }
            Staging::Aggregate(aggregator) => {
                self.counters.combine_input_records += 1;
                aggregator.add(key, value)?;
                if aggregator.is_full() {
                    self.spill()?;
                }
            }
        }
        Ok(())
    }

    /// Writes what is in memory, sorted and combined, to `writer`.
    fn write_staged(&mut self, writer: &mut SegmentWriter) -> TaskResult<()> {
        let reducers = self.partitioner.reducers();
        match &mut self.staging {
            Staging::Sort(buffer) => {
                buffer.sort();
                for partition in 0..reducers {
                    writer.start_partition(partition);
                    write_partition(&mut buffer.partition(partition), self.combiner, writer, &mut self.counters)?;
                }
                buffer.clear();
            }
            Staging::Aggregate(aggregator) => {
                let written = aggregator.drain_sorted(self.partitioner, writer)?;
                self.counters.combine_output_records += written;
                self.counters.spilled_records += written;
            }
        }
        Ok(())
    }

    fn spill(&mut self) -> TaskResult<()> {
        let data = self.next_spill_path();
        let mut writer = SegmentWriter::create(&data, self.partitioner.reducers())?;
        self.write_staged(&mut writer)?;
        let (data, index) = writer.finish_spill()?;
        self.spills.push(SpillFile { data, index });
        self.counters.spills += 1;
        Ok(())
    }

    /// Writes the map output (merging spills if there are any) and returns it with the index
    /// and the counters.
    pub fn finish(mut self) -> TaskResult<(MapOutputFiles, Vec<u64>, TaskCounters)> {
        let reducers = self.partitioner.reducers();
        let index = if self.spills.is_empty() {
            let mut writer = SegmentWriter::create(&self.files.data, reducers)?;
            self.write_staged(&mut writer)?;
            writer.finish_output(&self.files)?
        } else {
            let staged = match &self.staging {
                Staging::Sort(buffer) => !buffer.is_empty(),
                Staging::Aggregate(aggregator) => !aggregator.is_empty(),
            };
            if staged {
                self.spill()?;
            }
            if let [only] = self.spills.as_slice() {
                publish(&self.files, &only.data, &only.index)?;
                only.index.clone()
            } else {
                self.merge_spills()?
            }
        };
        self.counters.bytes_written = index.last().copied().unwrap_or(0);
        Ok((self.files, index, self.counters))
    }

    /// Merges every spill, partition by partition, combining again. More than `merge_factor`
    /// spills are merged in passes, the first ones first, so equal keys keep their order.
    fn merge_spills(&mut self) -> TaskResult<Vec<u64>> {
        let combiner = self.combiner.map(GroupFunction::recombining);
        let reducers = self.partitioner.reducers();
        while self.spills.len() > self.merge_factor {
            let batch: Vec<SpillFile> = self.spills.drain(..self.merge_factor).collect();
            let mut writer = SegmentWriter::create(&self.next_spill_path(), reducers)?;
            merge_into(&batch, &self.name, combiner, &mut writer, &mut self.counters)?;
            let (data, index) = writer.finish_spill()?;
            remove_spills(&batch);
            self.spills.insert(0, SpillFile { data, index });
        }
        let mut writer = SegmentWriter::create(&self.files.data, reducers)?;
        merge_into(&self.spills, &self.name, combiner, &mut writer, &mut self.counters)?;
        let index = writer.finish_output(&self.files)?;
        remove_spills(&self.spills);
        Ok(index)
    }

    /// A new spill file's path (numbered, hidden once `SegmentWriter` makes it temporary).
    fn next_spill_path(&mut self) -> PathBuf {
        self.spill_files_created += 1;
        self.directory.join(format!("{}.spill{}.data", self.name, self.spill_files_created))
    }
}

/// Merges `spills` partition by partition into `writer`, through the combiner if any.
fn merge_into(
    spills: &[SpillFile],
    name: &str,
    combiner: Option<GroupFunction<'_>>,
    writer: &mut SegmentWriter,
    counters: &mut TaskCounters,
) -> TaskResult<()> {
    let reducers = spills.first().map_or(0, |spill| spill.index.len() - 1);
    for p in 0..reducers {
        writer.start_partition(p as u32);
        let mut sources = Vec::with_capacity(spills.len());
        for spill in spills {
            let length = spill.index[p + 1] - spill.index[p];
            if length > 0 {
                sources.push((
                    format!("spill {} of map output {name}", spill.data.display()),
                    open_range(&spill.data, spill.index[p], length)?,
                ));
            }
        }
        write_partition(&mut MergedRecords::new(sources), combiner, writer, counters)?;
    }
    Ok(())
}

/// Removes merged spills (best effort: they are hidden, and the task's directory goes anyway).
fn remove_spills(spills: &[SpillFile]) {
    for spill in spills {
        let _ = fs::remove_file(&spill.data);
    }
}

/// Writes one partition's sorted records, through the combiner if there is one.
fn write_partition<S>(
    records: &mut S,
    combiner: Option<GroupFunction<'_>>,
    writer: &mut SegmentWriter,
    counters: &mut TaskCounters,
) -> TaskResult<()>
where
    S: SortedRecords + Send,
{
    let mut written = 0;
    match combiner {
        None => {
            while let Some((key, value)) = records.next_record()? {
                writer.write(key, value)?;
                written += 1;
            }
        }
        Some(function @ GroupFunction::Builtin(_)) => {
            let counts = reduce_sorted(function, records, |key, value| {
                written += 1;
                writer.write(key, value)
            })?;
            counters.combine_input_records += counts.input_records;
            counters.combine_output_records += written;
        }
        Some(function @ GroupFunction::Command { .. }) => {
            // A command may write its output in any order: sort it before it joins the segment.
            let mut output = Vec::new();
            let counts = reduce_sorted(function, records, |key, value| {
                output.push((key.to_vec(), value.to_vec()));
                Ok(())
            })?;
            let mut output = VecRecords::sorted(output);
            while let Some((key, value)) = output.next_record()? {
                writer.write(key, value)?;
                written += 1;
            }
            counters.combine_input_records += counts.input_records;
            counters.combine_output_records += written;
        }
    }
    counters.spilled_records += written;
    Ok(())
}
