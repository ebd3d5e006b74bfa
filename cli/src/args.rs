//! The command line, as clap parses it. Only shapes and help texts live here; what each command
//! does lives in the module named after it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use spindle_node_agent::DEFAULT_LOG_RETENTION;
use spindle_protocol::{AppId, AppState};

/// Spindle: a cluster resource manager and job runner in the lineage of Hadoop YARN.
#[derive(Debug, Parser)]
#[command(name = "spindle", version, propagate_version = true)]
#[command(after_help = "Start a cluster on this machine with `spindle local`, or see it work with `spindle demo`.")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Global options that mean nothing to a command: still accepted (an exported `SPINDLE_RM` or a
/// habit of `--json` never breaks it), but left out of its `--help`. A local cluster is its own
/// RM, plain HTTP (it refuses a CA) and prints no reports; a simulation reaches no RM and logs
/// nothing; the RM takes its TLS and users from its config file and prints no reports; an agent
/// uses `--rm` and `--ca-file` but holds no API token.
const GLOBAL_OPTIONS_NOT_APPLYING: &[(&str, &[&str])] = &[
    ("resource-manager", &["rm", "token", "ca_file", "json"]),
    ("node-agent", &["token", "json"]),
    ("local", &["rm", "token", "ca_file", "json"]),
    ("demo", &["rm", "token", "ca_file", "json"]),
    ("simulate", &["rm", "token", "ca_file", "log_format"]),
    // Its fake agents serve plain HTTP (no TLS), and it always prints JSON.
    ("loadgen", &["ca_file", "json"]),
];

impl Cli {
    /// The command line as `--help` shows it: each command lists the global options that apply
    /// to it, and no others.
    pub fn command_with_applicable_help() -> clap::Command {
        let command = Cli::command();
        let globals: Vec<clap::Arg> = command.get_arguments().filter(|arg| arg.is_global_set()).cloned().collect();
        // clap copies each global option into every subcommand that has none of that id when it
        // builds the command; a hidden copy put there first is the one the subcommand keeps.
        command.mut_subcommands(|subcommand| {
            let hidden = GLOBAL_OPTIONS_NOT_APPLYING
                .iter()
                .find(|(name, _)| *name == subcommand.get_name())
                .map_or(&[][..], |(_, ids)| ids);
            globals
                .iter()
                .filter(|arg| hidden.contains(&arg.get_id().as_str()))
                .fold(subcommand, |subcommand, arg| subcommand.arg(arg.clone().hide(true)))
        })
    }

    /// Parses the process's arguments as [`Cli::command_with_applicable_help`] describes them;
    /// prints the help or the usage error and exits when that is what they ask for.
    pub fn parse_args() -> Cli {
        let mut command = Cli::command_with_applicable_help();
        let matches = command.get_matches_mut();
        Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.format(&mut command).exit())
    }
}

/// Help heading of the flags every command accepts.
const GLOBAL: &str = "Global options";

/// Flags every command accepts, before or after its name. The node agent uses `--rm` too.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// RM URL(s), comma-separated; tried in order [env: SPINDLE_RM] [default: from
    /// $SPINDLE_HOME/config.toml, else http://127.0.0.1:8088]
    #[arg(long, global = true, value_name = "URL[,URL…]", help_heading = GLOBAL)]
    pub rm: Option<String>,
    /// API token [env: SPINDLE_TOKEN] [default: from $SPINDLE_HOME/config.toml]
    #[arg(long, global = true, value_name = "TOKEN", help_heading = GLOBAL)]
    pub token: Option<String>,
    /// The CA of a TLS cluster (PEM): every daemon's certificate is checked against it, and
    /// addresses without a scheme are reached over https
    #[arg(long, global = true, value_name = "FILE", env = "SPINDLE_CA_FILE", help_heading = GLOBAL)]
    pub ca_file: Option<PathBuf>,
    /// Print the JSON of the API's reports instead of tables.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// How the daemons log; filter with RUST_LOG (default info).
    #[arg(long, global = true, help_heading = GLOBAL, env = "SPINDLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The two log formats of the daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the resource manager.
    ResourceManager(ResourceManagerArgs),
    /// Run a node agent.
    NodeAgent(NodeAgentArgs),
    /// Run an application master (started by node agents inside containers, never by hand).
    #[command(hide = true)]
    AppMaster,
    /// Run one MapReduce task attempt (started by node agents for a MapReduce AM, never by hand).
    #[command(hide = true)]
    MrTask,
    /// Run a streaming job's worker (started by node agents for a stream AM, never by hand).
    #[command(hide = true)]
    StreamTask,
    /// Run an RM and N node agents in this process, and write the client config (mode 0600:
    /// it holds the admin token, which is never printed).
    Local(LocalArgs),
    /// Start a throwaway local cluster, run a job on it and show the results.
    Demo,
    /// Submit a job file (TOML).
    Submit(SubmitArgs),
    /// List applications.
    Apps(AppsArgs),
    /// Show one application: report, attempts, containers.
    App {
        /// application_<cluster-ts>_<seq>
        app_id: AppId,
    },
    /// Wait for an application to end, showing its progress (as `submit --wait` does); exit 0
    /// only if it SUCCEEDED. Ctrl-C stops waiting, not the app.
    Wait {
        /// application_<cluster-ts>_<seq>
        app_id: AppId,
    },
    /// Kill an application.
    Kill {
        /// application_<cluster-ts>_<seq>
        app_id: AppId,
    },
    /// Set the parallelism of a streaming job's operator; its AM rescales it while it runs.
    Scale(ScaleArgs),
    /// Take a savepoint of a running streaming job (a checkpoint you own: never deleted, and a
    /// job file's `from_savepoint` starts from it); waits until it is complete and prints its
    /// path.
    Savepoint(SavepointArgs),
    /// Stop a streaming job with a final savepoint (Flink's stop-with-savepoint): its sources
    /// stop, its sinks commit what came before, it ends FINISHED; prints the savepoint's path.
    Stop(StopArgs),
    /// List node agents (DECOMMISSIONED and LOST ones only with --all).
    Nodes {
        /// Also nodes that were decommissioned or lost.
        #[arg(long)]
        all: bool,
    },
    /// Show the queue tree with each queue's shares, usage and users; `queues reload` applies
    /// the RM config file's [queues] again.
    Queues {
        #[command(subcommand)]
        action: Option<QueuesAction>,
    },
    /// Drain a node, then remove it from the cluster.
    Decommission(DecommissionArgs),
    /// Call a drain off: a DECOMMISSIONING node runs new containers again.
    Recommission {
        /// Node id (host:port), as `spindle nodes` shows it.
        node_id: String,
    },
    /// Make a token that lets new node agents join (cluster admins only); prints it.
    JoinToken(JoinTokenArgs),
    /// Print the stdout (or stderr) of a container, or of every container of an app; --follow
    /// while they run.
    Logs(LogsArgs),
    /// Watch the cluster live: totals, the busiest nodes, running and accepted apps, redrawn
    /// every --interval seconds (one snapshot per interval when stdout is not a terminal).
    Top(TopArgs),
    /// Run the scheduler against a synthetic workload in simulated time; report speed and fairness.
    Simulate(SimulateArgs),
    /// Load-test a running RM: play N node agents and M application masters against it over
    /// HTTP and print its throughput, latencies and CPU as one JSON line (exit 1 if an
    /// invariant broke).
    Loadgen(LoadgenArgs),
}

#[derive(Debug, Subcommand)]
pub enum QueuesAction {
    /// Make the RM read its config file again and apply its [queues] (admins only; like
    /// SIGHUP). Refused, changing nothing, if running apps would lose their queue.
    Reload,
}

#[derive(Debug, Args)]
pub struct ResourceManagerArgs {
    /// RM config file (TOML); without one, defaults plus SPINDLE_CLUSTER_SECRET.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store: sqlite://PATH or postgres://… [default: from the config, else sqlite://spindle.db]
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// Address of the REST API [default: from the config, else 0.0.0.0:8088]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// URL others reach this RM at, where standbys send clients while it is active
    /// [default: from the config, else http://LISTEN with the host name for 0.0.0.0]
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
}

#[derive(Debug, Args)]
pub struct NodeAgentArgs {
    /// Address of the agent's API.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8042")]
    pub listen: SocketAddr,
    /// Where containers run and keep their logs [default: $SPINDLE_HOME/node-agent]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// File holding a join token from `spindle join-token` (needed until the node has a
    /// credential saved in its work dir) [env: SPINDLE_JOIN_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate chain (PEM; needs --tls-key and --ca-file).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Vcores to offer, instead of the probed count (needs --memory-mb).
    #[arg(long, value_name = "N", requires = "memory_mb")]
    pub vcores: Option<u32>,
    /// Memory to offer in MB, instead of the probed size (needs --vcores).
    #[arg(long, value_name = "N", requires = "vcores")]
    pub memory_mb: Option<u64>,
    /// Rack of this node, for locality [default: the agent's]
    #[arg(long, value_name = "RACK")]
    pub rack: Option<String>,
    /// Node label (repeatable).
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Host name or IP the RM and AMs reach this agent at [default: the agent's guess]
    #[arg(long, value_name = "HOST")]
    pub advertise_host: Option<String>,
    /// Seconds a finished container's directory (its stdout, stderr and files) is kept before
    /// it is deleted.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LOG_RETENTION.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub log_retention_s: u64,
    /// Connections the agent's API serves at once; more wait until one closes.
    #[arg(long, value_name = "N", default_value_t = spindle_node_agent::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..=1_000_000), |n| n as usize))]
    pub max_connections: usize,
    /// Containers never run as accounts with a lower uid (an agent running as root runs each
    /// container as its user's account; uid 0 is always refused).
    #[arg(long, value_name = "UID", default_value_t = spindle_node_agent::DEFAULT_MIN_UID)]
    pub min_uid: u32,
    /// Cap each container's CPU time at its vcores (cgroup CFS quota), not only weigh it.
    #[arg(long)]
    pub cpu_hard_cap: bool,
    /// Kill the node's containers when the agent stops, and adopt none at start. By default
    /// containers outlive a restart of the agent (an upgrade, a crash) and the next start,
    /// within the RM's node expiry, adopts them.
    #[arg(long)]
    pub no_recovery: bool,
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// How many node agents to run.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub agents: usize,
    /// Address of the RM's REST API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// Store, secrets and agent work dirs; created owner-only [default: $SPINDLE_HOME/local]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Vcores each agent offers [default: the cores split between the agents, at least 4 each]
    /// (needs --agent-memory-mb)
    #[arg(long, value_name = "N", requires = "agent_memory_mb")]
    pub agent_vcores: Option<u32>,
    /// Memory in MB each agent offers [default: the memory less the OS reserve, split between
    /// the agents] (needs --agent-vcores)
    #[arg(long, value_name = "N", requires = "agent_vcores")]
    pub agent_memory_mb: Option<u64>,
    /// An RM config file (TOML) for its [queues], [scheduler] and [[users]]; the local RM keeps
    /// its own listen address, store, secret, admin user and log directory, and plain HTTP (a
    /// [tls] in the file is ignored, with a warning). `spindle queues reload` re-reads it.
    #[arg(long, value_name = "FILE")]
    pub rm_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job spec (TOML), e.g. examples/hello-shell.toml.
    #[arg(value_name = "JOB.toml")]
    pub job_file: PathBuf,
    /// Wait until the app ends; exit 0 only if it SUCCEEDED.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct AppsArgs {
    /// Only apps in this state (NEW, SUBMITTED, ACCEPTED, RUNNING, FINISHED, FAILED, KILLED).
    #[arg(long, value_name = "STATE")]
    pub state: Option<AppState>,
    /// Only apps in this queue.
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Only apps of this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// At most this many apps.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// application_<cluster-ts>_<seq>
    pub app_id: AppId,
    /// The operator's name, as in the job file and `spindle app ID`.
    pub operator: String,
    /// How many instances it should run.
    #[arg(value_name = "N")]
    pub parallelism: u32,
}

#[derive(Debug, Args)]
pub struct SavepointArgs {
    /// application_<cluster-ts>_<seq>
    pub app_id: AppId,
    /// Directory to put it in: an absolute path (or file:// URL) that the job's account may
    /// write and every node sees [default: the job's savepoint_dir, else
    /// <checkpoint_dir>/savepoints]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<String>,
    /// Stop waiting after this many seconds (the savepoint may still complete: `spindle app`
    /// shows it).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// application_<cluster-ts>_<seq>
    pub app_id: AppId,
    /// Take a final savepoint and stop after it (required: to end a job without one, `spindle
    /// kill` it).
    #[arg(long)]
    pub savepoint: bool,
    /// Directory to put the savepoint in, as for `spindle savepoint`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<String>,
    /// Stop waiting after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct DecommissionArgs {
    /// Node id (host:port), as `spindle nodes` shows it.
    pub node_id: String,
    /// How long running containers may go on before they are killed.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub timeout_s: u64,
    /// Kill running containers now instead of letting them finish.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// An app (application_<cluster-ts>_<seq>: every container of it, under headers) or one
    /// container (container_e<epoch>_<cluster-ts>_<app-seq>_<attempt>_<seq>).
    #[arg(value_name = "APP|CONTAINER")]
    pub target: crate::client::logs::LogTarget,
    /// Print stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Only the last N lines (of each container's log).
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<u64>,
    /// Only the last BYTES bytes (of each container's log).
    #[arg(long, value_name = "BYTES")]
    pub tail_bytes: Option<u64>,
    /// Keep printing what is appended until the container (or every container of the app) has
    /// ended; an app's lines are prefixed with their container's <attempt>_<seq>.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between two refreshes.
    #[arg(long, value_name = "SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Print one snapshot and exit (with --json: the cluster, nodes and apps reports as one
    /// JSON object).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Nodes at the start (about 1% more join and 1% are lost and come back during the run).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub nodes: usize,
    /// Apps submitted over the run (about 15% streaming, the rest batch).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub apps: usize,
    /// Leaf queues under root, with uneven guarantees summing to 100%.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub queues: usize,
    /// Seed of the workload; the same seed gives the same decisions.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Simulated seconds at most (the run ends earlier once every batch app has finished).
    #[arg(long, value_name = "S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub horizon_s: u64,
    /// Simulated seconds a container under a preemption notice runs before it is killed.
    #[arg(long, value_name = "S", default_value_t = 15)]
    pub grace_s: u64,
}

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// File holding the RM's cluster_secret: the fake agents join with a token made from it
    /// [default: SPINDLE_CLUSTER_SECRET]
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// File holding the API token of a user who may submit jobs to --queue (it also reads
    /// /metrics) [default: --token, SPINDLE_TOKEN or $SPINDLE_HOME/config.toml]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Node agents to play.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub agents: usize,
    /// Application masters live at once: when one finishes, another app is submitted.
    #[arg(long, value_name = "M", default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    pub ams: usize,
    /// Seconds of the measured window.
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_s: u64,
    /// Seconds of load before the window, once every agent has registered.
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub warmup_s: u64,
    /// Seconds the live apps get to finish after the window (nothing new is submitted).
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub drain_s: u64,
    /// Vcores each fake node offers.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub node_vcores: u32,
    /// Memory in MB each fake node offers.
    #[arg(long, value_name = "MB", default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_memory_mb: u64,
    /// Task containers each AM asks for over its life, in waves of up to 8.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub containers_per_am: u32,
    /// Mean run time of a task container in ms (each runs 0.5 to 1.5 times this).
    #[arg(long, value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub task_ms: u64,
    /// The RM's process id (on this machine): the summary then has its CPU and memory.
    #[arg(long, value_name = "PID")]
    pub rm_pid: Option<u32>,
    /// Leaf queue the apps are submitted to.
    #[arg(long, value_name = "QUEUE", default_value = "default")]
    pub queue: String,
    /// Seed of the AMs' choices (wave sizes, shapes, durations, releases).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Threads of the load generator's runtime: it shares the machine with the RM it measures.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub workers: usize,
    /// Report container starts and ends in the next periodic heartbeat only, instead of at
    /// once as the real agent does.
    #[arg(long)]
    pub no_immediate_heartbeats: bool,
    /// Let the fake agents share a few connections to the RM instead of keeping one each, as
    /// real agents do (the RM then holds far fewer connections than a real cluster's).
    #[arg(long)]
    pub shared_connections: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_help_of_a_command_lists_only_the_global_options_that_apply() {
        let mut command = Cli::command_with_applicable_help();
        command.clone().debug_assert();
        let global_ids: Vec<String> = Cli::command()
            .get_arguments()
            .filter(|arg| arg.is_global_set())
            .map(|arg| arg.get_id().to_string())
            .collect();
        for (name, ids) in GLOBAL_OPTIONS_NOT_APPLYING {
            assert!(command.find_subcommand(name).is_some(), "no {name} command");
            assert!(ids.iter().all(|id| global_ids.iter().any(|global| global == id)), "{ids:?}");
        }
        // As `--help` sees it: with the global options copied into the subcommands.
        command.build();
        // The long options a command's help lists.
        let mut listed = |name: &str| -> Vec<String> {
            let help = command
                .find_subcommand_mut(name)
                .unwrap_or_else(|| panic!("no {name} command"))
                .render_help()
                .to_string();
            help.lines()
                .filter_map(|line| line.trim_start().trim_start_matches("-h, ").strip_prefix("--"))
                .filter_map(|option| option.split_whitespace().next().map(str::to_owned))
                .collect()
        };
        let globals = |options: &[String]| -> Vec<String> {
            ["rm", "token", "ca-file", "json", "log-format"]
                .into_iter()
                .filter(|global| options.iter().any(|option| option == global))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(globals(&listed("demo")), ["log-format"]);
        assert_eq!(globals(&listed("local")), ["log-format"]);
        assert_eq!(globals(&listed("simulate")), ["json"]);
        assert_eq!(globals(&listed("resource-manager")), ["log-format"]);
        assert_eq!(globals(&listed("node-agent")), ["rm", "ca-file", "log-format"]);
        assert_eq!(globals(&listed("apps")), ["rm", "token", "ca-file", "json", "log-format"]);
        // Hidden, not gone: a global option in the environment or out of habit still parses.
        let matches = Cli::command_with_applicable_help()
            .try_get_matches_from(["spindle", "demo", "--json", "--rm", "h:1"])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert!(matches!(cli.command, Command::Demo) && cli.global.json);
        assert_eq!(cli.global.rm.as_deref(), Some("h:1"));
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["spindle", "apps", "--rm", "h:1", "--json"]).unwrap();
        assert_eq!(cli.global.rm.as_deref(), Some("h:1"));
        assert!(cli.global.json);
        let cli = Cli::try_parse_from(["spindle", "--token", "t", "nodes"]).unwrap();
        assert_eq!(cli.global.token.as_deref(), Some("t"));
    }

    #[test]
    fn malformed_ids_are_usage_errors_that_say_what_was_expected() {
        let err = Cli::try_parse_from(["spindle", "app", "app_1"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("application_<cluster-ts>_<seq>"), "{err}");
    }

    #[test]
    fn scale_takes_an_app_an_operator_and_a_number() {
        let cli = Cli::try_parse_from(["spindle", "scale", "application_1700000000000_0001", "count", "4"]).unwrap();
        let Command::Scale(scale) = cli.command else { panic!("not scale") };
        assert_eq!((scale.operator.as_str(), scale.parallelism), ("count", 4));
        assert!(Cli::try_parse_from(["spindle", "scale", "application_1700000000000_0001", "count", "four"]).is_err());
    }

    #[test]
    fn capacity_overrides_come_in_pairs() {
        assert!(Cli::try_parse_from(["spindle", "node-agent", "--vcores", "4"]).is_err());
        let cli = Cli::try_parse_from(["spindle", "local", "--agent-vcores", "2", "--agent-memory-mb", "512"]).unwrap();
        let Command::Local(local) = cli.command else { panic!("not local") };
        assert_eq!((local.agents, local.agent_vcores, local.agent_memory_mb), (2, Some(2), Some(512)));
    }

    #[test]
    fn log_retention_defaults_to_a_day_and_must_be_positive() {
        let retention = |args: &[&str]| {
            let cli = Cli::try_parse_from(["spindle", "node-agent"].iter().chain(args)).map_err(|err| err.to_string())?;
            let Command::NodeAgent(agent) = cli.command else {
                panic!("not node-agent")
            };
            Ok::<u64, String>(agent.log_retention_s)
        };
        assert_eq!(retention(&[]), Ok(86_400));
        assert_eq!(retention(&["--log-retention-s", "600"]), Ok(600));
        assert!(retention(&["--log-retention-s", "0"]).is_err());
    }
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// How long the token lets agents register, in seconds (at most 30 days).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub ttl_s: u64,
}
