//! A restarted agent takes over the containers its previous process left behind (`recovery`):
//! those still running are supervised again (kills, exit, report), those that ended while no
//! agent ran are reported with the end its init script recorded. The RM then hears of
//! them at registration as if the agent had never stopped; if it has given the node up
//! meanwhile, it answers with kills, which reach adopted containers like any other.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use spindle_protocol::{ContainerId, ContainerState, ContainerStatus, ExitReason, Resources};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};

use super::supervise::sleep_until_optional;
use super::{ContainerManager, ContainerRecord};
use crate::container_init;
use crate::exit::ProcessExit;
use crate::launcher::{self, CONTAINER_KILL_GRACE};
use crate::recovery::{self, SavedContainer};
use crate::retention;

impl ContainerManager {
    /// Loads what an earlier agent process saved and adopts it; returns (running adopted,
    /// ended while away). Call before serving and registering.
    pub(crate) fn adopt_saved(self: &Arc<Self>) -> (usize, usize) {
        let (saved, tokens) = recovery::load(&self.context.work_dir);
        self.lock().shuffle_tokens.extend(tokens);
        let (mut running, mut ended) = (0, 0);
        for container in saved {
            let live = container.completed.is_none() && recovery::still_running(&container);
            let kill_signal = Arc::new(Notify::new());
            let completed = container.completed.is_some();
            let status = container.completed.clone().unwrap_or(ContainerStatus {
                container_id: container.container_id,
                state: ContainerState::Running,
                exit_code: None,
                exit_reason: None,
                diagnostics: String::new(),
                started_at_ms: Some(container.started_at_ms),
                finished_at_ms: None,
            });
            let record = ContainerRecord {
                status,
                resources: container.resources,
                token_signature: container.token_signature.clone(),
                process_group: live.then_some(container.pid),
                sampled: live && container.sampled,
                kill: None,
                kill_signal: kill_signal.clone(),
                finished: watch::Sender::new(completed),
                acked: false,
                finished_at: completed.then(Instant::now),
                files_removed: false,
            };
            self.lock().containers.insert(container.container_id, record);
            if completed {
                continue;
            }
            if container.pid == recovery::STARTING {
                // The agent died while spawning it, before the launch was answered: whoever
                // asked took it as failed. Whatever did start is killed, unseen by anyone.
                ended += 1;
                let dir = launcher::container_dir(&self.context.work_dir, &container.container_id);
                for leader in recovery::leaders_in(&dir) {
                    launcher::signal_process_group(leader, libc::SIGKILL);
                }
                self.complete(
                    container.container_id,
                    None,
                    ExitReason::Failed,
                    "the node agent stopped while starting the container; it was not run".to_owned(),
                );
                continue;
            }
            if live {
                running += 1;
                let cgroups = self.cgroup_dirs_of(container.pid);
                self.tasks
                    .spawn(Arc::clone(self).supervise_adopted(container, kill_signal, cgroups));
            } else {
                ended += 1;
                self.record_end(container.container_id, container.resources, None, Vec::new());
            }
        }
        if running + ended > 0 {
            tracing::info!(running, ended, "adopted the containers of the previous agent process");
        }
        (running, ended)
    }

    /// The container cgroups (memory, v1 cpu) of an adopted container's leader.
    fn cgroup_dirs_of(&self, pid: i32) -> Vec<PathBuf> {
        let memory = self.context.cgroups.as_ref().and_then(|root| root.container_dir_of(pid));
        let cpu = self.context.cpu.as_ref().and_then(|root| root.container_dir_of(pid));
        memory.into_iter().chain(cpu).collect()
    }

    /// Supervises a container this agent did not start: waits for its leader to exit (a pidfd
    /// works on any process), carries out kills on its process group, and records its end
    /// from its exit file. At the agent's stop it is left running again.
    async fn supervise_adopted(self: Arc<Self>, container: SavedContainer, kill_signal: Arc<Notify>, cgroups: Vec<PathBuf>) {
        let process_group = container.pid;
        let Some(exited) = watch_exit(container.pid) else {
            // Gone between the check and now: it ended while no agent watched.
            self.record_end(container.container_id, container.resources, None, cgroups);
            return;
        };
        tokio::pin!(exited);
        let mut kill_deadline: Option<tokio::time::Instant> = None;
        let mut sigkilled = false;
        loop {
            tokio::select! {
                () = &mut exited => break,
                _ = kill_signal.notified(), if kill_deadline.is_none() => {
                    launcher::signal_process_group(process_group, libc::SIGTERM);
                    kill_deadline = Some(tokio::time::Instant::now() + CONTAINER_KILL_GRACE);
                }
                () = sleep_until_optional(kill_deadline), if kill_deadline.is_some() && !sigkilled => {
                    launcher::signal_process_group(process_group, libc::SIGKILL);
                    sigkilled = true;
                }
                () = self.stop.cancelled() => return,
            }
        }
        launcher::signal_process_group(process_group, libc::SIGKILL);
        self.record_end(container.container_id, container.resources, Some(sigkilled), cgroups);
    }

    /// Records how an adopted container ended, from its exit file: as any container's end
    /// when the file says, or as FAILED when it ended without one (killed with its whole
    /// process group while no agent ran). `sigkilled`: whether this agent SIGKILLed it.
    fn record_end(&self, container_id: ContainerId, resources: Resources, sigkilled: Option<bool>, cgroups: Vec<PathBuf>) {
        let container_dir = launcher::container_dir(&self.context.work_dir, &container_id);
        let exit =
            container_init::read_exit(&container_dir).or(sigkilled.filter(|killed| *killed).map(|_| ProcessExit::Signal(libc::SIGKILL)));
        let kill = self.lock().containers.get(&container_id).and_then(|record| record.kill.clone());
        match exit {
            Some(exit) => {
                let stderr_tail = if kill.is_none() && exit != ProcessExit::Code(0) {
                    launcher::read_tail(&container_dir.join("stderr"))
                } else {
                    String::new()
                };
                let outcome = launcher::classify_exit(exit, kill.as_ref(), false, resources.memory_mb, &stderr_tail);
                self.complete(container_id, Some(outcome.exit_code), outcome.reason, outcome.diagnostics);
            }
            None => {
                let (reason, diagnostics) = match kill {
                    Some(kill) => (kill.reason, kill.detail),
                    None => (
                        ExitReason::Failed,
                        "the container ended while its node agent was down, and left no exit status".to_owned(),
                    ),
                };
                self.complete(container_id, None, reason, diagnostics);
            }
        }
        self.tasks.spawn_blocking(move || {
            retention::mark_finished(&container_dir);
            for dir in cgroups {
                let _ = std::fs::remove_dir(dir);
            }
        });
    }
}

/// A future that ends when process `pid` has exited, or `None` if it is gone already.
fn watch_exit(pid: i32) -> Option<impl Future<Output = ()>> {
    // SAFETY: pidfd_open makes a new fd (or fails); we own it from here.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same fd until it drops.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.ok()?;
    Some(async move {
        // A pidfd turns readable once its process has exited, and stays so.
        let _ = pidfd.readable().await;
    })
}
