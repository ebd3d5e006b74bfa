//! Random operations.

use super::*;

/// Three agents of different sizes; each task and AM container fits every one of them.
const AGENTS: [(&str, u32, u64); 3] = [("a:8042", 4, 4096), ("b:8042", 2, 1024), ("c:8042", 8, 8192)];

/// One thing that may happen to the cluster.
#[derive(Debug, Clone)]
enum Op {
    Submit {
        tasks: u32,
    },
    Register {
        agent: usize,
    },
    /// The agent launches what it may launch (AM containers, and tasks their AM acquired) if
    /// `launch`, some of its containers end, and it reports; told to, it registers again.
    Heartbeat {
        agent: usize,
        launch: bool,
        exits: Vec<(usize, i32)>,
    },
    /// Every agent launches what it may and reports.
    HeartbeatAll,
    /// The agent's health check changes; its next heartbeat tells.
    SetHealth {
        agent: usize,
        healthy: bool,
    },
    /// What a real AM does in a loop: register once its container runs, ask, hear the news.
    AmLoop {
        app: usize,
        count: u32,
    },
    RegisterAm {
        app: usize,
    },
    Ask {
        app: usize,
        count: u32,
    },
    Release {
        app: usize,
        choice: usize,
    },
    Collect {
        app: usize,
    },
    FinishAm {
        app: usize,
        status: FinalStatus,
    },
    Kill {
        app: usize,
    },
    Decommission {
        agent: usize,
        timeout_s: u64,
        force: bool,
    },
    Tick {
        advance_ms: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS.len();
    let app = 0..4usize;
    let exit_code = prop_oneof![Just(0), Just(1), Just(137)];
    let status = prop_oneof![Just(FinalStatus::Succeeded), Just(FinalStatus::Failed), Just(FinalStatus::Killed)];
    // Mostly heartbeat-sized steps; now and then long enough to lose silent nodes or expire grants.
    let advance_ms = prop_oneof![4 => 0u64..3_000, 1 => 9_000u64..70_000];
    prop_oneof![
        2 => (1u32..5).prop_map(|tasks| Op::Submit { tasks }),
        1 => agent.clone().prop_map(|agent| Op::Register { agent }),
        6 => (agent.clone(), proptest::bool::weighted(0.8), proptest::collection::vec((any::<usize>(), exit_code), 0..3))
            .prop_map(|(agent, launch, exits)| Op::Heartbeat { agent, launch, exits }),
        3 => Just(Op::HeartbeatAll),
        1 => (agent.clone(), proptest::bool::weighted(0.6)).prop_map(|(agent, healthy)| Op::SetHealth { agent, healthy }),
        4 => (app.clone(), 0u32..5).prop_map(|(app, count)| Op::AmLoop { app, count }),
        1 => app.clone().prop_map(|app| Op::RegisterAm { app }),
        1 => (app.clone(), 0u32..5).prop_map(|(app, count)| Op::Ask { app, count }),
        2 => (app.clone(), any::<usize>()).prop_map(|(app, choice)| Op::Release { app, choice }),
        1 => app.clone().prop_map(|app| Op::Collect { app }),
        1 => (app.clone(), status).prop_map(|(app, status)| Op::FinishAm { app, status }),
        1 => app.prop_map(|app| Op::Kill { app }),
        1 => (agent, 0u64..20, any::<bool>()).prop_map(|(agent, timeout_s, force)| Op::Decommission { agent, timeout_s, force }),
        3 => advance_ms.prop_map(|advance_ms| Op::Tick { advance_ms }),
        1 => Just(Op::Restart),
    ]
}

/// The `index`-th app, wrapping around; none before the first submit.
fn pick(apps: &[AppId], index: usize) -> Option<AppId> {
    (!apps.is_empty()).then(|| apps[index % apps.len()])
}

/// The cluster, its agents and AMs, driven by random operations.
struct Sim {
    rm: Rm,
    agents: Vec<Agent>,
    /// Apps in submission order.
    apps: Vec<AppId>,
    /// The latest AM of each app that registered.
    ams: BTreeMap<AppId, Am>,
    now: u64,
}

impl Sim {
    /// A cluster whose agents have all registered.
    fn new() -> Sim {
        let mut rm = cluster();
        let agents = AGENTS
            .iter()
            .map(|(address, vcores, memory_mb)| register(&mut rm, address, *vcores, *memory_mb, 0))
            .collect();
        Sim {
            rm,
            agents,
            apps: Vec::new(),
            ams: BTreeMap::new(),
            now: 0,
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Submit { tasks } => self
                .apps
                .push(self.rm.submit(shell_spec(tasks), now).expect("every node holds these containers")),
            Op::Register { agent } => {
                self.agents[agent].register(&mut self.rm, now);
            }
            Op::Heartbeat { agent, launch, ref exits } => self.heartbeat(agent, launch, exits),
            Op::HeartbeatAll => (0..self.agents.len()).for_each(|agent| self.heartbeat(agent, true, &[])),
            Op::SetHealth { agent, healthy } => self.agents[agent].healthy = healthy,
            Op::AmLoop { app, count } => {
                let Some(app_id) = pick(&self.apps, app) else { return };
                self.register_am(app_id);
                let Some(am) = self.ams.get_mut(&app_id) else { return };
                am.ask(&mut self.rm, count, now);
                am.collect_news(&mut self.rm);
            }
            Op::RegisterAm { app } => {
                if let Some(app_id) = pick(&self.apps, app) {
                    self.register_am(app_id);
                }
            }
            Op::Ask { app, count } => {
                if let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get_mut(&app_id)) {
                    am.ask(&mut self.rm, count, now);
                }
            }
            Op::Release { app, choice } => {
                let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get_mut(&app_id)) else {
                    return;
                };
                let granted: Vec<ContainerId> = am.granted.keys().copied().collect();
                if !granted.is_empty() {
                    am.release(&mut self.rm, &[granted[choice % granted.len()]], now);
                }
            }
            Op::Collect { app } => {
                if let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get_mut(&app_id)) {
                    am.collect_news(&mut self.rm);
                }
            }
            Op::FinishAm { app, status } => {
                let Some(am) = pick(&self.apps, app).and_then(|app_id| self.ams.get_mut(&app_id)) else {
                    return;
                };
                if let Err(error) = am.finish(&mut self.rm, status, now) {
                    assert!(matches!(error, AppError::Conflict(_)), "{error}");
                }
            }
            Op::Kill { app } => {
                let Some(app_id) = pick(&self.apps, app) else { return };
                if let Err(error) = self.rm.kill(&caller(), app_id, now) {
                    assert!(matches!(error, AppError::Conflict(_)), "{error}");
                }
            }
            Op::Decommission { agent, timeout_s, force } => {
                if let Err(error) = self.rm.decommission(AGENTS[agent].0, timeout_s, force, now) {
                    assert!(matches!(error, NodeError::Conflict { .. }), "{error}");
                }
            }
            Op::Tick { advance_ms } => {
                self.now += advance_ms;
                self.rm.tick(self.now);
            }
            Op::Restart => self.rm.restart(now),
        }
    }

    fn heartbeat(&mut self, agent: usize, launch: bool, exits: &[(usize, i32)]) {
        let (rm, agent, now) = (&mut self.rm, &mut self.agents[agent], self.now);
        if launch {
            // As the AMs (and the RM, for AM containers) would, with tokens not yet expired.
            let launchable: Vec<ContainerId> = rm
                .all_containers()
                .into_iter()
                .filter(|c| c.node_id == agent.node_id && !agent.containers.contains_key(&c.container_id))
                .filter(|c| c.state == ContainerState::Acquired || (c.is_am && c.state == ContainerState::Allocated))
                .filter(|c| rm.store.containers[&c.container_id].launch_deadline_ms >= now)
                .map(|c| c.container_id)
                .collect();
            for container_id in launchable {
                agent.launch(container_id, now);
            }
        }
        for &(choice, code) in exits {
            let running = agent.running();
            if !running.is_empty() {
                agent.exit(running[choice % running.len()], code, now);
            }
        }
        if agent.heartbeat(rm, now).resync {
            agent.register(rm, now);
        }
    }

    /// The app's current AM registers once its container runs.
    fn register_am(&mut self, app_id: AppId) {
        let report = self.rm.app(app_id);
        let Some(attempt) = report.attempts.last() else { return };
        let am_running = attempt
            .am_container
            .is_some_and(|id| self.rm.container(id).state == ContainerState::Running);
        let known = self.ams.get(&app_id).is_some_and(|am| am.attempt == attempt.attempt);
        if report.state.is_terminal() || !am_running || known {
            return;
        }
        let am = Am::of(&self.rm, app_id);
        am.register(&mut self.rm, self.now).expect("the current attempt registers");
        self.ams.insert(app_id, am);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(20_240_917),
        ..ProptestConfig::default()
    })]

    /// Whatever happens, in whatever order, the invariants and transition tables hold after
    /// every step (`Rm::mutate` checks them).
    #[test]
    fn random_operations_keep_the_cluster_consistent(ops in proptest::collection::vec(op(), 1..60)) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.apply(op);
        }
    }
}
