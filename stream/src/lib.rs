//! The streaming engine (`kind = "stream"`): operator pipelines in task containers, exchanging
//! batches of records over TCP with credit-based backpressure, checkpointed with aligned
//! barriers for exactly-once results, rescaled live by moving key groups.
//!
//! ```text
//! AM (coordinator) ── control (TCP, JSON frames) ── worker (spindle stream-task) × N
//!                                                     └ instances: source │ operator │ sink
//! instance ──data (TCP, batch frames, credits)──▶ instance
//! ```

pub mod checkpoints;
pub mod control;
pub mod counts;
pub mod graph;
pub mod keys;
pub mod location;
pub mod master;
pub mod operator;
pub mod ops;
pub mod record;
pub mod runtime;
pub mod savepoint;
pub mod state;
pub mod wire;

pub use keys::{KeyGroupRange, key_group};
pub use master::StreamMaster;
pub use operator::{Commit, InstanceContext, Operator, OperatorError, OperatorRegistry, Sink, Source, SourceStatus};
pub use record::{Batch, EventTime, Record};
pub use state::{BufferedState, CapturedState, StateReader, StateWriter};
