//! A node agent and an application master, as the tests drive them against the `Rm`.

use super::*;

/// Plays a node agent: it runs what it is given, reports every container in each heartbeat
/// (ended ones until the RM acks them), and kills what a reply tells it to kill, reporting that
/// in its next heartbeat.
pub(super) struct Agent {
    pub(super) node_id: NodeId,
    pub(super) capacity: Resources,
    pub(super) healthy: bool,
    /// Node labels it registers with.
    pub(super) labels: Vec<String>,
    pub(super) containers: BTreeMap<ContainerId, ContainerStatus>,
}

/// A new agent at `address` that registers with the RM.
pub(super) fn register(rm: &mut Rm, address: &str, vcores: u32, memory_mb: u64, now: u64) -> Agent {
    register_labelled(rm, address, vcores, memory_mb, &[], now)
}

/// A new agent carrying `labels` that registers with the RM.
pub(super) fn register_labelled(rm: &mut Rm, address: &str, vcores: u32, memory_mb: u64, labels: &[&str], now: u64) -> Agent {
    let mut agent = Agent {
        node_id: node_id(address),
        capacity: Resources::new(vcores, memory_mb),
        healthy: true,
        labels: labels.iter().map(|label| (*label).to_owned()).collect(),
        containers: BTreeMap::new(),
    };
    agent.register(rm, now);
    agent
}

impl Agent {
    pub(super) fn register(&mut self, rm: &mut Rm, now: u64) -> RegisterNodeReply {
        let request = RegisterNodeRequest {
            node_id: self.node_id.clone(),
            address: self.node_id.0.clone(),
            capacity: self.capacity,
            rack: "/default".to_owned(),
            labels: self.labels.clone(),
            containers: self.containers.values().cloned().collect(),
            isolation: Default::default(),
        };
        let reply = rm
            .mutate(|cluster| cluster.register_node(request, now))
            .expect("the RM takes the registration");
        self.obey(&reply.kill, &reply.acked, now);
        reply
    }

    pub(super) fn heartbeat(&mut self, rm: &mut Rm, now: u64) -> NodeHeartbeatReply {
        let request = NodeHeartbeatRequest {
            node_id: self.node_id.clone(),
            usage: NodeUsage::default(),
            healthy: self.healthy,
            health_report: if self.healthy { String::new() } else { "disk full".to_owned() },
            containers: self.containers.values().cloned().collect(),
        };
        let reply = rm.mutate(|cluster| cluster.node_heartbeat(request, now));
        self.obey(&reply.kill, &reply.acked, now);
        reply
    }

    /// Forgets acked completions, and kills (as KILLED_BY_RM) what the RM says must not run.
    fn obey(&mut self, kill: &[ContainerId], acked: &[ContainerId], now: u64) {
        for id in acked {
            if self
                .containers
                .get(id)
                .is_some_and(|status| status.state == ContainerState::Complete)
            {
                self.containers.remove(id);
            }
        }
        for id in kill {
            if self
                .containers
                .get(id)
                .is_some_and(|status| status.state == ContainerState::Running)
            {
                self.end(*id, Some(143), ExitReason::KilledByRm, "killed by the resource manager", now);
            }
        }
    }

    /// Starts a container it was given (the token is checked by whoever calls this).
    pub(super) fn launch(&mut self, container_id: ContainerId, now: u64) {
        let status = ContainerStatus {
            container_id,
            state: ContainerState::Running,
            exit_code: None,
            exit_reason: None,
            diagnostics: String::new(),
            started_at_ms: Some(now),
            finished_at_ms: None,
        };
        assert!(
            self.containers.insert(container_id, status).is_none(),
            "{container_id} launched twice"
        );
    }

    /// A container's process exits by itself with `code`.
    pub(super) fn exit(&mut self, container_id: ContainerId, code: i32, now: u64) {
        let reason = if code == 0 { ExitReason::Success } else { ExitReason::Failed };
        self.end(container_id, Some(code), reason, "", now);
    }

    fn end(&mut self, container_id: ContainerId, code: Option<i32>, reason: ExitReason, diagnostics: &str, now: u64) {
        let status = self.containers.get_mut(&container_id).expect("the agent runs it");
        assert_eq!(status.state, ContainerState::Running, "{container_id} ends once");
        status.state = ContainerState::Complete;
        status.exit_code = code;
        status.exit_reason = Some(reason);
        status.diagnostics = diagnostics.to_owned();
        status.finished_at_ms = Some(now);
    }

    pub(super) fn running(&self) -> Vec<ContainerId> {
        self.containers
            .values()
            .filter(|status| status.state == ContainerState::Running)
            .map(|status| status.container_id)
            .collect()
    }

    /// Starts the AM containers the RM launches on this node, checking their tokens as the
    /// real agent does.
    pub(super) fn start_ams(&mut self, rm: &mut Rm, now: u64) -> Vec<ContainerId> {
        let (mine, others): (Vec<AmLaunch>, Vec<AmLaunch>) = rm
            .take_launches()
            .into_iter()
            .partition(|launch| launch.request.token.node_id == self.node_id);
        rm.launches = others;
        let mut started = Vec::new();
        for launch in mine {
            super::verify_container(&launch.request.token, &self.node_id, now).expect("the RM signs AM launches");
            self.launch(launch.request.token.container_id, now);
            started.push(launch.request.token.container_id);
        }
        started
    }

    /// Starts the one AM container the RM launches here.
    pub(super) fn start_am(&mut self, rm: &mut Rm, now: u64) -> ContainerId {
        let started = self.start_ams(rm, now);
        assert_eq!(started.len(), 1, "one AM launch on {}", self.node_id);
        started[0]
    }
}

/// Plays one attempt of an application master.
pub(super) struct Am {
    pub(super) app_id: AppId,
    pub(super) attempt: u32,
    /// Containers granted to it.
    pub(super) granted: BTreeMap<ContainerId, Allocation>,
    /// Completions it heard of, in order.
    pub(super) completed: Vec<ContainerStatus>,
}

impl Am {
    /// The AM of the app's current attempt.
    pub(super) fn of(rm: &Rm, app_id: AppId) -> Am {
        let attempt = rm.app(app_id).attempts.last().expect("an app has an attempt").attempt;
        Am {
            app_id,
            attempt,
            granted: BTreeMap::new(),
            completed: Vec::new(),
        }
    }

    pub(super) fn register(&self, rm: &mut Rm, now: u64) -> Result<RegisterAmReply, AppError> {
        let request = RegisterAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
        };
        rm.mutate(|cluster| cluster.register_am(&request, now))
    }

    pub(super) fn request(&self, asks: Vec<ResourceAsk>, releases: Vec<ContainerId>) -> AllocateRequest {
        AllocateRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            asks,
            releases,
            progress: 0.5,
            wait_ms: 0,
            response_id: None,
            detail: None,
        }
    }

    pub(super) fn update_asks(&self, rm: &mut Rm, request: &AllocateRequest, now: u64) -> Result<(), AppError> {
        rm.mutate(|cluster| cluster.update_asks(request, now))
    }

    /// Asks for `count` more task containers (an absolute count, as the protocol has it).
    pub(super) fn ask(&self, rm: &mut Rm, count: u32, now: u64) {
        self.update_asks(rm, &self.request(vec![task_ask(count)], Vec::new()), now)
            .expect("asks are taken");
    }

    pub(super) fn release(&self, rm: &mut Rm, container_ids: &[ContainerId], now: u64) {
        self.update_asks(rm, &self.request(Vec::new(), container_ids.to_vec()), now)
            .expect("releases are taken");
    }

    /// What an allocate call answers at once, remembered.
    pub(super) fn collect_news(&mut self, rm: &mut Rm) -> Option<AllocateReply> {
        let reply = rm.mutate(|cluster| cluster.collect_news(self.app_id, self.attempt))?;
        for allocation in &reply.allocated {
            self.granted.insert(allocation.container_id, allocation.clone());
        }
        self.completed.extend(reply.completed.iter().cloned());
        Some(reply)
    }

    pub(super) fn finish(&self, rm: &mut Rm, final_status: FinalStatus, now: u64) -> Result<(), AppError> {
        let request = FinishAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            final_status,
            diagnostics: "done".to_owned(),
        };
        rm.mutate(|cluster| cluster.finish_am(&request, now))
    }
}

/// Submits a shell job and starts its AM on `agent`; the AM registers.
pub(super) fn start_job(rm: &mut Rm, agent: &mut Agent, spec: JobSpec, now: u64) -> Am {
    let app_id = rm.submit(spec, now).expect("the job is accepted");
    agent.start_am(rm, now);
    let am = Am::of(rm, app_id);
    am.register(rm, now).expect("the AM registers");
    am
}

/// The AM asks for `count` tasks; all are granted on `agent`, which launches them.
pub(super) fn grant_and_launch(rm: &mut Rm, am: &mut Am, agent: &mut Agent, count: u32, now: u64) -> Vec<ContainerId> {
    am.ask(rm, count, now);
    let news = am.collect_news(rm).expect("grants are news");
    assert_eq!(news.allocated.len(), count as usize, "room for every task");
    for allocation in &news.allocated {
        assert_eq!(allocation.node_id, agent.node_id, "the tasks go to {}", agent.node_id);
        agent.launch(allocation.container_id, now);
    }
    agent.heartbeat(rm, now);
    news.allocated.iter().map(|allocation| allocation.container_id).collect()
}

/// A shell job of `tasks` containers whose AM and tasks all run on `agent`: where most tests start.
pub(super) fn running_job(rm: &mut Rm, agent: &mut Agent, tasks: u32, now: u64) -> (Am, Vec<ContainerId>) {
    let mut am = start_job(rm, agent, shell_spec(tasks), now);
    let ids = grant_and_launch(rm, &mut am, agent, tasks, now);
    (am, ids)
}
