//! A container's supervising task: it waits for the process to exit, turns a kill request into
//! SIGTERM, a grace period and SIGKILL for the whole process group, and records how it ended.

use std::sync::Arc;

use spindle_protocol::{ContainerId, Resources};
use tokio::sync::Notify;

use super::ContainerManager;
use crate::cgroup::{ContainerCgroup, CpuCgroup};
use crate::launcher::{self, CONTAINER_KILL_GRACE, CPU_WEIGHT_DELAY, ProcessExit, SpawnedContainer};
use crate::retention;

impl ContainerManager {
    /// Waits for the container's exit, carries out a kill if one is asked for, and records the end.
    pub(super) async fn supervise(
        self: Arc<Self>,
        container_id: ContainerId,
        spawned: SpawnedContainer,
        kill_signal: Arc<Notify>,
        resources: Resources,
    ) {
        let SpawnedContainer { process, cgroup, .. } = spawned;
        // Its cgroup in the v1 CPU hierarchy, once it has run `CPU_WEIGHT_DELAY`.
        let mut cpu_cgroup: Option<CpuCgroup> = None;
        let memory_limit_mb = resources.memory_mb;
        let cgroup = cgroup.map(Arc::new);
        // The leader's pid is its process group's id (`spawn.rs` makes it a group leader).
        let process_group = process.pid();
        let waited = {
            let wait = process.wait();
            tokio::pin!(wait);
            // Set once SIGTERM went out: when the grace period ends.
            let mut kill_deadline: Option<tokio::time::Instant> = None;
            let mut sigkilled = false;
            // When the container gets its CPU weight (v1 `cpu` hierarchy only).
            let mut weigh_at = self.context.cpu.as_ref().map(|_| tokio::time::Instant::now() + CPU_WEIGHT_DELAY);
            loop {
                tokio::select! {
                    status = &mut wait => break status,
                    _ = sleep_until_optional(weigh_at), if weigh_at.is_some() && kill_deadline.is_none() => {
                        weigh_at = None;
                        cpu_cgroup = self.weigh(container_id, resources.vcores, process_group, cgroup.clone()).await;
                    }
                    _ = kill_signal.notified(), if kill_deadline.is_none() => {
                        launcher::signal_process_group(process_group, libc::SIGTERM);
                        kill_deadline = Some(tokio::time::Instant::now() + CONTAINER_KILL_GRACE);
                    }
                    _ = sleep_until_optional(kill_deadline), if kill_deadline.is_some() && !sigkilled => {
                        launcher::signal_process_group(process_group, libc::SIGKILL);
                        sigkilled = true;
                    }
                    _ = self.stop.cancelled() => {
                        // The agent is stopping on its own (not decommissioned): like a YARN
                        // NodeManager with recovery, leave the container running.
                        tracing::debug!(container_id = %container_id, "agent stopping; container left running");
                        return;
                    }
                }
            }
        };
        // The leader is gone; whatever is left of its process group goes with it.
        launcher::signal_process_group(process_group, libc::SIGKILL);

        let exit = match waited {
            Ok(status) => ProcessExit::from(status),
            Err(err) => {
                tracing::warn!(container_id = %container_id, error = %err, "cannot wait for a container's process");
                ProcessExit::Code(-1)
            }
        };
        let kill = self.lock().containers.get(&container_id).and_then(|record| record.kill.clone());
        // Only an unexplained failure needs the OOM counter and the stderr tail (file reads).
        let (oom_killed, stderr_tail) = if kill.is_none() && exit != ProcessExit::Code(0) {
            let cgroup = cgroup.clone();
            let stderr_path = launcher::container_dir(&self.context.work_dir, &container_id).join("stderr");
            tokio::task::spawn_blocking(move || {
                let oom = cgroup
                    .as_deref()
                    .is_some_and(|cgroup: &ContainerCgroup| cgroup.oom_killed(exit == ProcessExit::Signal(libc::SIGKILL)));
                let tail = if oom { String::new() } else { launcher::read_tail(&stderr_path) };
                (oom, tail)
            })
            .await
            .unwrap_or_default()
        } else {
            (false, String::new())
        };
        let outcome = launcher::classify_exit(exit, kill.as_ref(), oom_killed, memory_limit_mb, &stderr_tail);
        tracing::debug!(container_id = %container_id, exit_code = outcome.exit_code, reason = ?outcome.reason, "container ended");
        self.complete(container_id, Some(outcome.exit_code), outcome.reason, outcome.diagnostics);
        // After the report, on the blocking pool: the directory's mtime marks the end for the
        // retention sweep, and emptying a cgroup may wait on the kernel.
        let container_dir = launcher::container_dir(&self.context.work_dir, &container_id);
        self.tasks.spawn_blocking(move || {
            retention::mark_finished(&container_dir);
            match cgroup.map(Arc::try_unwrap) {
                Some(Ok(cgroup)) => cgroup.release(),
                Some(Err(shared)) => shared.remove(),
                None => {}
            }
            if let Some(cpu_cgroup) = cpu_cgroup {
                cpu_cgroup.release();
            }
        });
    }
}

impl ContainerManager {
    /// Moves a running container into a `cpu` cgroup weighted by its vcores: every process of
    /// its memory cgroup, or its leader when memory is sampled (children it forked before stay
    /// unweighted). A failure leaves it unweighted, logged once.
    async fn weigh(&self, container_id: ContainerId, vcores: u32, leader: i32, cgroup: Option<Arc<ContainerCgroup>>) -> Option<CpuCgroup> {
        let cpu = self.context.cpu.clone()?;
        let name = launcher::cgroup_name(&self.context, &container_id);
        let members = move || match &cgroup {
            Some(cgroup) => cgroup.member_pids(),
            None => vec![leader],
        };
        match tokio::task::spawn_blocking(move || cpu.adopt(&name, vcores, members)).await {
            Ok(Ok(cpu_cgroup)) => Some(cpu_cgroup),
            Ok(Err(err)) => {
                tracing::warn!(container_id = %container_id, error = %err, "cannot move a container into a cpu cgroup: it runs without a CPU weight");
                None
            }
            Err(_) => None,
        }
    }
}

pub(super) async fn sleep_until_optional(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
