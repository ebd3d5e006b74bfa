//! CPU is shared by vcores: two busy containers of 1 and 3 vcores on one node get CPU time in
//! proportion 1:3 when they compete for it (cgroup `cpu.shares` / `cpu.weight` from vcores).

mod support;

use std::time::Duration;

use spindle_protocol::{AppId, JobSpec, NodeIsolation, RmClient};
use support::{Db, TestCluster};

/// How long each container keeps the CPU busy.
const BUSY_SECONDS: u32 = 10;

/// A shell job of one container of `vcores` that waits for the second `start_s` (Unix time,
/// the same for both jobs, so their busy windows overlap whole), keeps two processes spinning
/// for `BUSY_SECONDS` — with the other job's, more runnable processes than this 2-core
/// machine's cores — then prints the CPU seconds its children used (the shell's `times`,
/// which in a pipe would run in a subshell that has no children).
fn busy_job(vcores: u32, start_s: u64) -> JobSpec {
    let script = format!(
        "while [ $(date +%s) -lt {start_s} ]; do sleep 0.05; done; \
         for worker in 1 2; do timeout {BUSY_SECONDS} sh -c 'while :; do :; done' & done; wait; \
         times > times.txt; tail -n 1 times.txt"
    );
    let mut spec = support::shell_job(&format!("busy-{vcores}"), &script, 1, 64, 0);
    spec.shell.as_mut().expect("a shell job").vcores = vcores;
    spec
}

/// User CPU seconds from the last line of `times` (`0m9.870s 0m0.010s`).
fn user_cpu_seconds(times_line: &str) -> f64 {
    let user = times_line
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no `times` output: {times_line:?}"));
    let (minutes, seconds) = user
        .trim_end_matches('s')
        .split_once('m')
        .unwrap_or_else(|| panic!("odd `times` output: {user:?}"));
    minutes.parse::<f64>().unwrap() * 60.0 + seconds.parse::<f64>().unwrap()
}

async fn cpu_seconds_of(client: &RmClient, app_id: AppId) -> f64 {
    let task = support::task_containers(client, app_id).await.pop().expect("the busy task");
    let stdout = client.logs(task.container_id, "stdout").await.expect("the task's stdout");
    user_cpu_seconds(stdout.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_containers_share_cpu_in_proportion_to_their_vcores() {
    let mut cluster = TestCluster::start(Db::Sqlite).await;
    // More vcores than the machine's 2 cores, so that both jobs run at once and must share
    // them (and AMs may hold only a tenth of the queue: two need 20 vcores).
    cluster.start_agent(32, 8192).await;
    let client = cluster.user();
    let node = client.nodes().await.unwrap().pop().expect("one node");
    if !node.isolation.limits.contains("cpu.shares") && !node.isolation.limits.contains("cpu.weight") {
        let NodeIsolation { limits, .. } = node.isolation;
        eprintln!("skipped: this node cannot divide CPU by vcores ({limits})");
        return;
    }
    let start_s = spindle_protocol::now_ms() / 1000 + 4;
    let small = client.submit(&busy_job(1, start_s)).await.unwrap();
    let large = client.submit(&busy_job(3, start_s)).await.unwrap();
    let timeout = Duration::from_secs(u64::from(BUSY_SECONDS) + 70);
    for app_id in [small, large] {
        let report = support::wait_for_app_end(&client, app_id, timeout).await;
        assert_eq!(report.final_status, spindle_protocol::FinalStatus::Succeeded, "{report:#?}");
    }
    let (small_cpu, large_cpu) = (cpu_seconds_of(&client, small).await, cpu_seconds_of(&client, large).await);
    let ratio = large_cpu / small_cpu;
    eprintln!("CPU seconds over {BUSY_SECONDS} s: 1 vcore {small_cpu:.2}, 3 vcores {large_cpu:.2}, ratio {ratio:.2} (want 3 ± 20%)");
    assert!(
        (2.4..=3.6).contains(&ratio),
        "CPU split {small_cpu:.2} s : {large_cpu:.2} s is not within 20% of 1:3"
    );
}

#[test]
fn times_lines_parse() {
    assert!((user_cpu_seconds("0m9.870s 0m0.010s") - 9.87).abs() < 1e-9);
    assert!((user_cpu_seconds("1m2.5s 0m0s") - 62.5).abs() < 1e-9);
}
