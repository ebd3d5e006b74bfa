//! Several hosts, made with network namespaces: the RM on one, agents on two others, each
//! daemon bound to and advertising its host's own address (no loopback anywhere), the client
//! in the test's namespace across a bridge. A word count runs across them, its shuffle going
//! from host to host, and its output is exact; on an S3-compatible server on the bridge, a word
//! count and a streaming job (checkpointing to the store) survive kill -9 and are exact.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use spindle_protocol::{JobSpec, NodeState, RmClient};
use spindle_storage::{ObjectUrl, S3Settings};
use support::{
    ADMIN_TOKEN, Daemon, NetnsHosts, S3Server, read_counts, rm_config_toml, run_object_source_scenario, run_to_success, s3_env,
    task_containers, wait_for_app_end, wait_for_http, wait_until,
};

const RM_PORT: u16 = 8088;
const AGENT_PORT: u16 = 8042;

/// Deterministic text over a few words, and its counts.
fn write_text(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).unwrap();
    let words = ["north", "south", "east", "west", "up", "down"];
    let mut counts = BTreeMap::new();
    for file in 0..3 {
        let mut text = String::new();
        for line in 0..20_000u64 {
            let word = words[((line * 7 + file * 3) % words.len() as u64) as usize];
            text.push_str(word);
            text.push_str(if line % 3 == 0 { "\n" } else { " " });
            *counts.entry(word.to_owned()).or_insert(0) += 1;
        }
        std::fs::write(dir.join(format!("part-{file}.txt")), text).unwrap();
    }
    counts
}

/// An RM on host 0 (SQLite) and an agent on each of `agent_hosts`, all bound to their hosts'
/// addresses; returns once every agent is RUNNING.
struct HostCluster {
    hosts: NetnsHosts,
    dir: tempfile::TempDir,
    rm: Daemon,
    agents: Vec<Daemon>,
    admin: RmClient,
}

impl HostCluster {
    /// With `private_fs`, each agent's host sees only its own work dir and a /tmp of its own
    /// (`Daemon::spawn_in_private_host`): for jobs that name only object-store data.
    async fn start(host_count: usize, agent_hosts: &[usize], private_fs: bool) -> HostCluster {
        let hosts = NetnsHosts::create(host_count).expect("network-namespace hosts (needs root and `ip`)");
        let dir = support::shared_tempdir("spindle-hosts-");
        let rm_address = format!("{}:{RM_PORT}", hosts.address(0));
        let rm_url = format!("http://{rm_address}");
        std::fs::write(
            dir.path().join("rm.toml"),
            rm_config_toml(&format!("sqlite://{}", dir.path().join("rm.db").display())),
        )
        .unwrap();
        let rm_args = [
            "resource-manager".to_owned(),
            "--config".to_owned(),
            dir.path().join("rm.toml").display().to_string(),
            "--listen".to_owned(),
            rm_address,
        ];
        let mut rm = Daemon::spawn_in_netns("rm".to_owned(), dir.path(), hosts.name(0), &rm_args);
        wait_for_http(&mut rm, &format!("{rm_url}/healthz"))
            .await
            .unwrap_or_else(|logs| panic!("{logs}"));
        let token_file = dir.path().join("join-token");
        std::fs::write(&token_file, support::join_token()).unwrap();
        let mut agents = Vec::new();
        for &host in agent_hosts {
            let work_dir = dir.path().join(format!("agent{host}"));
            std::fs::create_dir_all(&work_dir).unwrap();
            // A private host cannot see the cluster dir: its join token goes into its own.
            let token_file = if private_fs {
                std::fs::copy(&token_file, work_dir.join("join-token")).unwrap();
                work_dir.join("join-token")
            } else {
                token_file.clone()
            };
            let args: Vec<String> = [
                "node-agent",
                "--rm",
                &rm_url,
                "--listen",
                &format!("{}:{AGENT_PORT}", hosts.address(host)),
                "--work-dir",
                &work_dir.display().to_string(),
                "--join-token-file",
                &token_file.display().to_string(),
                "--vcores",
                "3",
                "--memory-mb",
                "4096",
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            let name = format!("agent{host}");
            agents.push(if private_fs {
                let stash = stash_dir(hosts.name(host));
                std::fs::create_dir_all(&stash).unwrap();
                Daemon::spawn_in_private_host(name, dir.path(), hosts.name(host), &work_dir, &stash, &args)
            } else {
                Daemon::spawn_in_netns(name, dir.path(), hosts.name(host), &args)
            });
        }
        let admin = RmClient::new(std::slice::from_ref(&rm_url), Some(ADMIN_TOKEN.to_owned()));
        wait_until(Duration::from_secs(30), "the agents to register", || async {
            let nodes = admin.nodes().await.ok()?;
            (nodes.iter().filter(|node| node.state == NodeState::Running).count() == agent_hosts.len()).then_some(())
        })
        .await;
        HostCluster {
            hosts,
            dir,
            rm,
            agents,
            admin,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HostCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            support::dump_logs_under(self.dir.path());
        }
        self.agents.clear();
        self.rm.kill9();
        support::kill_processes_under(self.dir.path());
        for index in 0..self.hosts.count() {
            let _ = std::fs::remove_dir_all(stash_dir(self.hosts.name(index)));
        }
    }
}

/// Where a private host's work dir waits while its /tmp is covered (outside /tmp).
fn stash_dir(host: &str) -> std::path::PathBuf {
    Path::new("/run/spindle-test-stash").join(host)
}

/// A word count over `input` into `output`: 2 reducers running `reducer`.
fn wordcount(input: &Path, output: &Path, reducer: &str) -> JobSpec {
    wordcount_urls(&input.display().to_string(), &output.display().to_string(), reducer)
}

fn wordcount_urls(input: &str, output: &str, reducer: &str) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": "wordcount-across-hosts",
        "kind": "mapreduce",
        "mapreduce": {
            "input": [input],
            "output": output,
            "mapper": "wordcount",
            "combiner": "sum",
            "reducer": reducer,
            "reducers": 2,
            "split_size_mb": 1,
            "speculation": false,
            "map": {"vcores": 1, "memory_mb": 256},
            "reduce": {"vcores": 1, "memory_mb": 256},
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rm_and_agents_on_three_hosts_run_a_word_count_with_a_cross_host_shuffle() {
    let cluster = HostCluster::start(3, &[1, 2], false).await;
    let hosts = &cluster.hosts;
    let admin = &cluster.admin;
    let mut node_ids: Vec<String> = admin.nodes().await.unwrap().iter().map(|node| node.node_id.to_string()).collect();
    node_ids.sort();
    assert_eq!(
        node_ids,
        [
            format!("{}:{AGENT_PORT}", hosts.address(1)),
            format!("{}:{AGENT_PORT}", hosts.address(2))
        ],
        "each agent is known by its host's address"
    );
    let input = cluster.path().join("input");
    let expected = write_text(&input);
    let output = cluster.path().join("out");
    let report = run_to_success(admin, &wordcount(&input, &output, "sum"), Duration::from_secs(120)).await;
    assert_eq!(read_counts(&output), expected, "the output is exact");
    let tasks = task_containers(admin, report.app_id).await;
    let used: std::collections::BTreeSet<String> = tasks.iter().map(|task| task.node_id.to_string()).collect();
    assert_eq!(used.len(), 2, "tasks ran on both hosts, so map output crossed hosts: {used:?}");
}

/// The host of an agent running a reducer is cut off from the network past the node expiry:
/// the RM declares it LOST and the reducer runs again elsewhere, while the old copy runs on,
/// cut off. Healed, the agent's stale containers are killed; the output is exact, with no
/// part written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agents_reducer_runs_again_elsewhere_and_the_output_is_exact() {
    let cluster = HostCluster::start(4, &[1, 2, 3], false).await;
    let admin = &cluster.admin;
    let input = cluster.path().join("input");
    let expected = write_text(&input);
    let output = cluster.path().join("out");
    let slow_reducer = "sleep 6; awk -F'\\t' '{ sum[$1] += $2 } END { for (w in sum) print w \"\\t\" sum[w] }'";
    let app_id = admin.submit(&wordcount(&input, &output, slow_reducer)).await.unwrap();
    let am_node = wait_until(Duration::from_secs(30), "the AM to be placed", || async {
        admin.app(app_id).await.ok()?.attempts.first()?.node_id.clone()
    })
    .await;
    let victim = wait_until(Duration::from_secs(60), "a reducer on another host than the AM's", || async {
        let report = admin.app(app_id).await.ok()?;
        if report.progress < 0.5 {
            return None;
        }
        task_containers(admin, app_id)
            .await
            .into_iter()
            .find(|task| task.state == spindle_protocol::ContainerState::Running && task.node_id != am_node)
            .map(|task| task.node_id)
    })
    .await;
    let host = (1..=3)
        .find(|host| victim.0 == format!("{}:{AGENT_PORT}", cluster.hosts.address(*host)))
        .expect("the victim is one of the agents' hosts");
    cluster.hosts.partition(host);
    wait_until(Duration::from_secs(30), "the cut-off node to be LOST", || async {
        (admin.node(&victim).await.ok()?.state == NodeState::Lost).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.hosts.heal(host);
    let report = wait_for_app_end(admin, app_id, Duration::from_secs(120)).await;
    assert_eq!(
        (report.state, report.final_status),
        (spindle_protocol::AppState::Finished, spindle_protocol::FinalStatus::Succeeded),
        "{report:#?}"
    );
    assert_eq!(read_counts(&output), expected, "the output is exact: nothing counted twice");
    let parts = std::fs::read_dir(&output)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().starts_with("part-r-"))
        .count();
    assert_eq!(parts, 2, "one file per reducer");
}

/// Object storage across hosts: the RM on host 0, agents on hosts 1 and 2, an S3-compatible
/// server in the test's namespace on the bridge. The job names only `s3://` data, so nothing
/// relies on a directory the hosts share: each agent's host sees only its own work dir and a /tmp
/// of its own (a mount namespace per host). With
/// speculation on, the agent that does not host the AM is killed with SIGKILL while a reducer
/// of its runs; its tasks run again on the other host and the output equals the reference,
/// with `_SUCCESS` and the winners' parts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_count_from_s3_to_s3_across_hosts_survives_kill_9_of_an_agent() {
    let mut cluster = HostCluster::start(3, &[1, 2], true).await;
    let Some(s3) = S3Server::start(&cluster.hosts.bridge_address(), 8014) else {
        return;
    };
    let env = s3_env(&s3.endpoint);
    let open = |url: &str| ObjectUrl::parse(url, &S3Settings::from_env(&env)).unwrap();
    let local = cluster.path().join("text");
    let expected = write_text(&local);
    for entry in std::fs::read_dir(&local).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        open(&format!("s3://{}/in/{name}", support::S3_BUCKET))
            .upload_file(&path)
            .await
            .unwrap();
    }
    std::fs::remove_dir_all(&local).unwrap();

    let slow_reducer = "sleep 4; awk -F'\\t' '{ sum[$1] += $2 } END { for (w in sum) print w \"\\t\" sum[w] }'";
    let output_url = format!("s3://{}/out", support::S3_BUCKET);
    let mut spec = wordcount_urls(&format!("s3://{}/in", support::S3_BUCKET), &output_url, slow_reducer);
    let mapreduce = spec.mapreduce.as_mut().unwrap();
    mapreduce.speculation = true;
    mapreduce.env = env.clone();
    let admin = cluster.admin.clone();
    let app_id = admin.submit(&spec).await.unwrap();
    let am_node = wait_until(Duration::from_secs(30), "the AM to be placed", || async {
        admin.app(app_id).await.ok()?.attempts.first()?.node_id.clone()
    })
    .await;
    let victim = wait_until(Duration::from_secs(60), "a reducer on the other host than the AM's", || async {
        let report = admin.app(app_id).await.ok()?;
        if report.progress < 0.5 {
            return None;
        }
        task_containers(&admin, app_id)
            .await
            .into_iter()
            .find(|task| task.state == spindle_protocol::ContainerState::Running && task.node_id != am_node)
            .map(|task| task.node_id)
    })
    .await;
    let host = (1..=2)
        .find(|host| victim.0 == format!("{}:{AGENT_PORT}", cluster.hosts.address(*host)))
        .expect("the victim is one of the agents' hosts");
    cluster.agents[host - 1].kill9();
    let report = wait_for_app_end(&admin, app_id, Duration::from_secs(180)).await;
    assert_eq!(
        (report.state, report.final_status),
        (spindle_protocol::AppState::Finished, spindle_protocol::FinalStatus::Succeeded),
        "{report:#?}"
    );
    let output = open(&output_url);
    let mut counts = BTreeMap::new();
    let mut names = Vec::new();
    for entry in output.list().await.unwrap() {
        let name = entry.key.rsplit('/').next().unwrap().to_owned();
        if name.starts_with("part-r-") {
            let text = String::from_utf8(output.at(&entry.key).get().await.unwrap().to_vec()).unwrap();
            for line in text.lines() {
                let (word, count) = line.split_once('\t').unwrap();
                assert!(
                    counts.insert(word.to_owned(), count.parse::<u64>().unwrap()).is_none(),
                    "{word} twice"
                );
            }
        }
        names.push(name);
    }
    assert_eq!(names, ["_SUCCESS", "part-r-00000", "part-r-00001"], "no attempt left anything");
    assert_eq!(counts, expected, "the output is exact");
}

/// Streaming across hosts that share nothing but the network: the RM on host 0, agents on
/// hosts 1 and 2 (each seeing only its own work dir and a /tmp of its own), an S3-compatible
/// server on the bridge. A
/// `file_source` over an object prefix → keyed window → exactly-once `file_sink` on the store,
/// checkpointing to the store, so moved key groups and restored state travel through it:
/// through a live rescale 2 → 4 and a `kill -9` of a worker, the committed counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_s3_to_s3_checkpointing_to_s3_across_hosts_survives_a_rescale_and_kill_9() {
    let cluster = HostCluster::start(3, &[1, 2], true).await;
    let Some(s3) = S3Server::start(&cluster.hosts.bridge_address(), 8014) else {
        return;
    };
    let env = s3_env(&s3.endpoint);
    let agent_dirs: Vec<_> = [1, 2].iter().map(|host| cluster.path().join(format!("agent{host}"))).collect();
    let scratch = cluster.path().join("scratch");
    let root = format!("s3://{}/stream", support::S3_BUCKET);
    run_object_source_scenario(&cluster.admin, &env, &root, &agent_dirs, &scratch).await;
}
