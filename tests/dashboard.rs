//! The web dashboard in headless Chromium (Debian's `chromium`; `.ci/run` installs it), against
//! a cluster running a real MapReduce word count, a streaming job and a shell job: each page
//! loads with the token given once, shows the expected values (read from the DOM the page's
//! script built), and leaves a screenshot under `target/dashboard-screenshots/` (one of them at
//! 420 px wide). Without Chromium the test skips, saying so, unless SPINDLE_REQUIRE_CHROMIUM is
//! set.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spindle_protocol::{AppState, JobSpec};
use support::{ADMIN_TOKEN, Db, TestCluster, run_to_success, shell_job, stream_detail, wait_until};

/// What Chromium is asked to render: one view of the dashboard at one width.
struct Page<'a> {
    name: &'a str,
    view: String,
    width: u32,
}

/// Renders `page` and returns its DOM after the script ran; writes its screenshot to `out`.
fn render(chromium: &Path, rm_url: &str, page: &Page, out: &Path) -> String {
    let url = format!("{rm_url}/#{}&token={ADMIN_TOKEN}", page.view);
    let profile = tempfile::tempdir().expect("a browser profile dir");
    let common = |command: &mut Command| {
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={},1400", page.width))
            .arg("--virtual-time-budget=8000");
    };
    let mut screenshot = Command::new(chromium);
    common(&mut screenshot);
    let shot = out.join(format!("{}.png", page.name));
    let status = screenshot
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("run chromium");
    assert!(
        status.status.success() && shot.exists(),
        "no screenshot of {}: {}",
        page.name,
        String::from_utf8_lossy(&status.stderr)
    );
    let mut dom = Command::new(chromium);
    common(&mut dom);
    let output = dom.arg("--dump-dom").arg(&url).output().expect("run chromium");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"].into_iter().find_map(|name| {
        Command::new(name)
            .arg("--version")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|_| PathBuf::from(name))
    });
    if found.is_none() {
        support::skip_unless_required(
            "SPINDLE_REQUIRE_CHROMIUM",
            "no chromium to render the dashboard with (apt-get install chromium)",
        );
    }
    found
}

fn wordcount_job(input: &Path, output: &Path) -> JobSpec {
    serde_json::from_value(serde_json::json!({
        "name": "dashboard-wordcount",
        "kind": "mapreduce",
        "mapreduce": {
            "input": [input.display().to_string()],
            "output": output.display().to_string(),
            "mapper": "wordcount", "combiner": "sum", "reducer": "sum", "reducers": 2,
            "map": {"vcores": 1, "memory_mb": 256}, "reduce": {"vcores": 1, "memory_mb": 256},
        },
    }))
    .expect("a valid job")
}

fn stream_job(out: &Path, checkpoints: &Path) -> JobSpec {
    let mut job: JobSpec = toml::from_str(include_str!("../examples/stream-window-count.toml")).expect("the example parses");
    let stream = job.stream.as_mut().expect("a stream job");
    stream.checkpoint_dir = Some(checkpoints.display().to_string());
    stream.worker.memory_mb = 256;
    let events = stream
        .operators
        .iter_mut()
        .find(|operator| operator.name == "events")
        .expect("a generator");
    // Throttled, so the job runs quietly while the pages are taken.
    events.event_rate = None;
    events.rate = Some(2_000);
    events.keys = Some(50);
    let sink = stream.operators.iter_mut().find(|operator| operator.name == "out").expect("a sink");
    sink.kind = Some(spindle_protocol::OperatorKind::FileSink);
    sink.path = Some(out.display().to_string());
    job.name = "dashboard-stream".to_owned();
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_the_dashboard_shows_the_cluster_and_its_jobs() {
    let Some(chromium) = chromium() else { return };
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&out).expect("the screenshot dir");

    let mut cluster = TestCluster::start(Db::Sqlite).await;
    cluster.start_agent(4, 4096).await;
    cluster.start_agent(4, 4096).await;
    let admin = cluster.admin();
    let input = cluster.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("words.txt"), "dashboard spindle dashboard\n".repeat(2_000)).unwrap();
    let wordcount = run_to_success(
        &admin,
        &wordcount_job(&input, &cluster.path().join("counts")),
        Duration::from_secs(120),
    )
    .await;
    let hello = run_to_success(
        &admin,
        &shell_job("dashboard-hello", "echo hello from the dashboard test", 1, 128, 0),
        Duration::from_secs(60),
    )
    .await;
    let stream = admin
        .submit(&stream_job(&cluster.path().join("stream-out"), &cluster.path().join("checkpoints")))
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the stream job's first checkpoint", || async {
        stream_detail(&admin, stream).await.and_then(|detail| detail.last_checkpoint)
    })
    .await;
    let task = support::task_containers(&admin, hello.app_id).await[0].container_id;
    let rm = cluster.rm_url();

    let cluster_page = render(
        &chromium,
        &rm,
        &Page {
            name: "cluster",
            view: "/".to_owned(),
            width: 1280,
        },
        &out,
    );
    for node in [cluster.node_id(0), cluster.node_id(1)] {
        assert!(cluster_page.contains(&node.0), "node {node} on the cluster page:\n{cluster_page}");
    }
    for text in ["root.default", "Capacity", "8 vcores / 8.0 GB", &wordcount.app_id.to_string()] {
        assert!(cluster_page.contains(text), "`{text}` on the cluster page:\n{cluster_page}");
    }

    let apps = render(
        &chromium,
        &rm,
        &Page {
            name: "apps",
            view: "/apps".to_owned(),
            width: 1280,
        },
        &out,
    );
    for text in [
        &wordcount.app_id.to_string(),
        &stream.to_string(),
        "dashboard-hello",
        "FINISHED",
        "RUNNING",
        "running",
    ] {
        assert!(apps.contains(text), "`{text}` on the apps page:\n{apps}");
    }

    let mr = render(
        &chromium,
        &rm,
        &Page {
            name: "app-mapreduce",
            view: format!("/app/{}", wordcount.app_id),
            width: 1280,
        },
        &out,
    );
    for text in ["Stages", "map", "reduce", "map_input_records", "Counters", "SUCCEEDED", "logs"] {
        assert!(mr.contains(text), "`{text}` on the MapReduce app page:\n{mr}");
    }

    let pipeline = render(
        &chromium,
        &rm,
        &Page {
            name: "app-stream",
            view: format!("/app/{stream}"),
            width: 1280,
        },
        &out,
    );
    for text in ["Pipeline", "events", "count", "out", "Checkpoint: #", "Backpressured", "#1"] {
        assert!(pipeline.contains(text), "`{text}` on the stream app page:\n{pipeline}");
    }

    let logs = render(
        &chromium,
        &rm,
        &Page {
            name: "logs",
            view: format!("/logs/{task}"),
            width: 1280,
        },
        &out,
    );
    assert!(
        logs.contains("hello from the dashboard test"),
        "the container's stdout on the logs page:\n{logs}"
    );

    let narrow = render(
        &chromium,
        &rm,
        &Page {
            name: "cluster-narrow",
            view: "/".to_owned(),
            width: 420,
        },
        &out,
    );
    assert!(narrow.contains(&cluster.node_id(0).0), "the narrow cluster page:\n{narrow}");

    // Never an open page: without the token the page asks for it and shows nothing else.
    let profile = tempfile::tempdir().unwrap();
    let anonymous = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{rm}/#/"))
        .output()
        .expect("run chromium");
    let anonymous = String::from_utf8_lossy(&anonymous.stdout);
    assert!(
        anonymous.contains("Sign in") && !anonymous.contains(&cluster.node_id(0).0),
        "{anonymous}"
    );

    admin.kill(stream).await.unwrap();
    assert_eq!(
        support::wait_for_app_end(&admin, stream, Duration::from_secs(30)).await.state,
        AppState::Killed
    );
    eprintln!("screenshots in {}", out.display());
}
