//! What each agent of a local cluster offers. Its agents share one machine, so unless told
//! otherwise each gets a share of it, not the whole machine each (N agents that each probed the
//! whole machine would promise N times its memory, and memory is a hard limit).

use anyhow::Context;
use spindle_protocol::Resources;

use crate::table;

/// Vcores each local agent offers at least, however few cores the machine has. CPU is divided
/// by weight, so a vcore more than the cores only slows containers down and never kills one;
/// below this the tour's stream job (an AM and 4 one-vcore workers once rescaled) would wait for
/// room on a two-core laptop. Memory has no such floor: it is never promised twice.
pub const MIN_AGENT_VCORES: u32 = 4;

/// What each agent of a local cluster offers, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCapacity {
    /// What the caller chose (`--agent-vcores`/`--agent-memory-mb`).
    Given(Resources),
    /// An even share of `machine` (what one agent alone would probe: every core, the memory
    /// less the OS reserve), with at least [`MIN_AGENT_VCORES`].
    Share { each: Resources, machine: Resources },
}

impl AgentCapacity {
    /// `given`, else a share of the machine between `agents` agents (probed on the blocking pool).
    pub async fn decide(given: Option<Resources>, agents: usize) -> anyhow::Result<AgentCapacity> {
        if let Some(given) = given {
            return Ok(AgentCapacity::Given(given));
        }
        let machine = tokio::task::spawn_blocking(spindle_node_agent::default_capacity)
            .await
            .context("probing the machine's size failed")?;
        Ok(AgentCapacity::Share {
            each: share_of(machine, agents),
            machine,
        })
    }

    /// What one agent offers.
    pub fn each(&self) -> Resources {
        match *self {
            AgentCapacity::Given(each) | AgentCapacity::Share { each, .. } => each,
        }
    }

    /// For `spindle local`'s banner: what each agent got and where it came from, in a few lines.
    pub fn describe(&self, agents: usize) -> Vec<String> {
        let each = table::resources(&self.each());
        match *self {
            AgentCapacity::Given(_) => vec![format!("{each} each (--agent-vcores, --agent-memory-mb)")],
            AgentCapacity::Share { each: share, machine } => {
                let floored = share.vcores > machine.vcores / u32::try_from(agents.max(1)).unwrap_or(u32::MAX);
                let mut lines = vec![format!(
                    "{each} each: this machine's {} cores and {} (its memory less the OS reserve) split {agents} ways{}",
                    machine.vcores,
                    table::memory(machine.memory_mb),
                    if floored { "," } else { ";" }
                )];
                if floored {
                    lines.push(format!(
                        "at least {MIN_AGENT_VCORES} vcores each (CPU is shared by weight: extra vcores slow jobs down, never kill them);"
                    ));
                }
                lines.push("--agent-vcores N --agent-memory-mb MB to choose".to_owned());
                lines
            }
        }
    }
}

/// One agent's share of `machine` among `agents`: its memory split evenly (a hard limit, so
/// never promised twice), its cores split evenly but at least [`MIN_AGENT_VCORES`].
pub fn share_of(machine: Resources, agents: usize) -> Resources {
    let agents = agents.max(1);
    Resources::new(
        (machine.vcores / u32::try_from(agents).unwrap_or(u32::MAX)).max(MIN_AGENT_VCORES),
        machine.memory_mb / agents as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_split_and_vcores_have_a_floor() {
        let laptop = Resources::new(2, 6144);
        assert_eq!(share_of(laptop, 2), Resources::new(MIN_AGENT_VCORES, 3072));
        let server = Resources::new(32, 120_000);
        assert_eq!(share_of(server, 2), Resources::new(16, 60_000));
        assert_eq!(share_of(server, 3), Resources::new(10, 40_000));
        assert_eq!(share_of(server, 0), share_of(server, 1), "no agents is not a division by zero");
        for agents in 1..=8 {
            let each = share_of(server, agents);
            assert!(each.memory_mb * agents as u64 <= server.memory_mb, "memory is never promised twice");
        }
    }

    #[test]
    fn the_tours_stream_job_fits_two_agents_of_a_small_laptop() {
        // The tour rescales its `count` to 4: an AM and 4 workers, 2 of them on each agent.
        let job: spindle_protocol::JobSpec =
            toml::from_str(include_str!("../../examples/stream-window-count.toml")).expect("the example parses");
        let worker = job.stream.expect("a stream job").worker;
        let each = share_of(Resources::new(2, 8192 - 1024), 2);
        assert!(each.vcores >= job.am.vcores + 2 * worker.vcores, "{each:?}");
        assert!(each.memory_mb >= job.am.memory_mb + 2 * worker.memory_mb, "{each:?}");
    }

    #[test]
    fn the_banner_says_where_the_capacity_came_from() {
        let given = AgentCapacity::Given(Resources::new(2, 2048)).describe(2).join("\n");
        assert!(
            given.starts_with("2 vcores / 2 GB each") && given.contains("--agent-vcores"),
            "{given}"
        );
        let machine = Resources::new(2, 6144);
        let floored = AgentCapacity::Share {
            each: share_of(machine, 2),
            machine,
        }
        .describe(2)
        .join("\n");
        assert!(
            floored.starts_with("4 vcores / 3 GB each: this machine's 2 cores and 6 GB") && floored.contains("at least 4 vcores"),
            "{floored}"
        );
        let machine = Resources::new(16, 32768);
        let even = AgentCapacity::Share {
            each: share_of(machine, 2),
            machine,
        }
        .describe(2)
        .join("\n");
        assert!(even.starts_with("8 vcores / 16 GB each") && !even.contains("at least"), "{even}");
    }
}
