//! The `shell` job kind (YARN's DistributedShell): a pure task table and the loop around it.

mod master;
mod tasks;
#[cfg(test)]
mod tasks_tests;

pub use master::{ShellMaster, TASK_INDEX_ENV, task_launch_spec};
pub use tasks::{JobOutcome, MAX_UNCOUNTED_LAUNCH_FAILURES, ShellTasks, TaskCounts, TaskLaunch, TaskState};
