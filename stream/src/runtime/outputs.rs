//! An instance's outgoing edges: fused transforms, partitioning by key group or round-robin,
//! per-target batch buffers, and the switch to new targets at a rescale barrier.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::runtime::Handle;

use super::net::{SendError, Sender};
use crate::control::{EdgePlan, TargetPlan};
use crate::keys::key_group;
use crate::operator::OperatorError;
use crate::ops::{Chain, build_chain};
use crate::record::Batch;
use crate::wire::{DataEvent, DataHello, InstanceId};

/// A batch is sent once it holds this many bytes (or at the next flush).
pub const BATCH_BYTES: usize = 32 << 10;
/// How long a sender waits for a target instance to be deployed.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

struct Target {
    id: InstanceId,
    sender: Sender,
    buffer: Batch,
}

struct Edge {
    chain: Option<Chain>,
    keyed: bool,
    /// Key group → index in `targets`.
    owners: Vec<u32>,
    targets: Vec<Target>,
    next: usize,
    /// Targets to switch to at a barrier (already connected), with their ranges.
    pending: Option<(u64, Vec<PreparedTarget>)>,
}

/// A target of a coming switch, with its connection if it is new.
type PreparedTarget = (TargetPlan, Option<Sender>);

/// Everything an instance sends.
pub struct Outputs {
    edges: Vec<Edge>,
    key_groups: u32,
    from: InstanceId,
    token: String,
    handle: Handle,
    /// The instance's cancel flag: connecting gives up when it is set.
    cancel: Arc<AtomicBool>,
    scratch: Batch,
    /// Records routed, summed over the edges (after each edge's fused transforms).
    pub records_out: u64,
    /// Their bytes in the batch format.
    pub bytes_out: u64,
    pub backpressured: Duration,
}

impl Outputs {
    /// Builds the edges and connects to every target (retrying until they are deployed).
    pub fn connect(
        plans: &[EdgePlan],
        key_groups: u32,
        from: InstanceId,
        token: &str,
        handle: &Handle,
        cancel: Arc<AtomicBool>,
    ) -> Result<Outputs, OperatorError> {
        let mut edges = Vec::with_capacity(plans.len());
        for plan in plans {
            let chain = if plan.chain.is_empty() {
                None
            } else {
                Some(build_chain(&plan.chain.iter().collect::<Vec<_>>())?)
            };
            let mut targets = Vec::with_capacity(plan.targets.len());
            for target in &plan.targets {
                let sender = connect(handle, target, from, token, &cancel)?;
                targets.push(Target {
                    id: target.id,
                    sender,
                    buffer: Batch::with_capacity(BATCH_BYTES + 4096),
                });
            }
            let owners = owners(key_groups, &plan.targets);
            edges.push(Edge {
                chain,
                keyed: plan.keyed,
                owners,
                targets,
                next: 0,
                pending: None,
            });
        }
        Ok(Outputs {
            edges,
            key_groups,
            from,
            token: token.to_owned(),
            handle: handle.clone(),
            cancel,
            scratch: Batch::with_capacity(BATCH_BYTES * 2),
            records_out: 0,
            bytes_out: 0,
            backpressured: Duration::ZERO,
        })
    }

    /// Routes a batch of emitted records to the edges' targets.
    pub fn route(&mut self, batch: &Batch, cancel: &AtomicBool) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let Outputs {
            edges,
            key_groups,
            scratch,
            records_out,
            bytes_out,
            backpressured,
            ..
        } = self;
        for edge in edges.iter_mut() {
            let records = match &edge.chain {
                Some(chain) => {
                    scratch.clear();
                    for record in batch {
                        chain.apply(record, scratch);
                    }
                    &*scratch
                }
                None => batch,
            };
            *records_out += records.len() as u64;
            *bytes_out += records.byte_len() as u64;
            if edge.targets.is_empty() {
                continue;
            }
            if edge.keyed {
                for record in records {
                    let target = &mut edge.targets[edge.owners[key_group(record.key, *key_groups) as usize] as usize];
                    target.buffer.push_record(record);
                    if target.buffer.byte_len() >= BATCH_BYTES {
                        *backpressured += target.sender.send(DataEvent::Batch(target.buffer.take()), cancel)?;
                    }
                }
            } else {
                let next = edge.next;
                edge.next = (next + 1) % edge.targets.len();
                let target = &mut edge.targets[next];
                for record in records {
                    target.buffer.push_record(record);
                }
                if target.buffer.byte_len() >= BATCH_BYTES {
                    *backpressured += target.sender.send(DataEvent::Batch(target.buffer.take()), cancel)?;
                }
            }
        }
        Ok(())
    }

    /// Sends every buffered record.
    pub fn flush(&mut self, cancel: &AtomicBool) -> Result<(), SendError> {
        for edge in &mut self.edges {
            for target in &mut edge.targets {
                if !target.buffer.is_empty() {
                    self.backpressured += target.sender.send(DataEvent::Batch(target.buffer.take()), cancel)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes, then sends `event` to every target (watermarks, barriers, ends).
    pub fn broadcast(&mut self, event: &DataEvent, cancel: &AtomicBool) -> Result<(), SendError> {
        self.flush(cancel)?;
        for edge in &self.edges {
            for target in &edge.targets {
                target.sender.send(event.clone(), cancel)?;
            }
        }
        Ok(())
    }

    /// A rescale: after barrier `checkpoint`, edge `edge` goes to `targets`. Connects to the
    /// new ones now, so the switch itself costs nothing.
    pub fn prepare_retarget(&mut self, checkpoint: u64, edge: usize, targets: Vec<TargetPlan>) -> Result<(), OperatorError> {
        let Some(current) = self.edges.get(edge) else {
            return Err(OperatorError::failed(format!(
                "rescale names edge {edge}, which this instance does not have"
            )));
        };
        let existing: Vec<InstanceId> = current.targets.iter().map(|target| target.id).collect();
        let mut prepared = Vec::with_capacity(targets.len());
        for target in targets {
            let sender = if existing.contains(&target.id) {
                None
            } else {
                Some(connect(&self.handle, &target, self.from, &self.token, &self.cancel)?)
            };
            prepared.push((target, sender));
        }
        self.edges[edge].pending = Some((checkpoint, prepared));
        Ok(())
    }

    /// Called right after barrier `checkpoint` went out: switches edges prepared for it, and
    /// tells targets that are no longer fed that this sender is done with them.
    pub fn switch_at(&mut self, checkpoint: u64, cancel: &AtomicBool) -> Result<(), SendError> {
        for edge in &mut self.edges {
            let Some((at, _)) = &edge.pending else { continue };
            if *at != checkpoint {
                continue;
            }
            let (_, prepared) = edge.pending.take().expect("checked");
            let mut old: HashMap<InstanceId, Target> = edge.targets.drain(..).map(|target| (target.id, target)).collect();
            let plans: Vec<TargetPlan> = prepared.iter().map(|(plan, _)| plan.clone()).collect();
            for (plan, sender) in prepared {
                let target = match sender {
                    Some(sender) => Target {
                        id: plan.id,
                        sender,
                        buffer: Batch::with_capacity(BATCH_BYTES + 4096),
                    },
                    None => old.remove(&plan.id).expect("kept targets were connected"),
                };
                edge.targets.push(target);
            }
            for (_, retired) in old {
                retired.sender.send(DataEvent::End { last: false }, cancel)?;
            }
            edge.owners = owners(self.key_groups, &plans);
            edge.next = 0;
        }
        Ok(())
    }
}

fn connect(handle: &Handle, target: &TargetPlan, from: InstanceId, token: &str, cancel: &AtomicBool) -> Result<Sender, OperatorError> {
    let hello = DataHello {
        token: token.to_owned(),
        from,
        to: target.id,
        starts_after: target.starts_after,
    };
    handle
        .block_on(Sender::connect(&target.address, hello, CONNECT_PATIENCE, cancel))
        .map_err(|error| OperatorError::failed(format!("connecting to instance {} at {}: {error}", target.id, target.address)))
}

/// Key group → index of the target owning it (targets of keyed edges cover every group).
fn owners(key_groups: u32, targets: &[TargetPlan]) -> Vec<u32> {
    let mut owners = vec![0u32; key_groups as usize];
    for (index, target) in targets.iter().enumerate() {
        for group in target.range.0..target.range.1.min(key_groups) {
            owners[group as usize] = index as u32;
        }
    }
    owners
}
