//! What runs inside a worker container: the instances' threads, their inputs and outputs, the
//! data connections, and the worker process that hosts them (`spindle stream-task`).

pub mod inputs;
pub mod instance;
pub mod net;
pub mod outputs;
pub mod snapshots;
pub mod worker;
