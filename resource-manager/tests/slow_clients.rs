//! The RM against slow and idle clients: a real RM on port 0 with short HTTP limits from its
//! config. Idle connections and half-sent request heads are closed at the header-read timeout,
//! a body sent too slowly gets 503 at the request timeout, normal requests still work, and a
//! stop is bounded. Real time throughout: the kernel's sockets do not follow a paused clock.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use spindle_resource_manager::RmError;
use spindle_resource_manager::config::{ApiUser, RmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "slow-clients-secret-0123456789";
const TOKEN: &str = "slow-clients-token-0123456789";
const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(400);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(600);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(2);

struct RunningRm {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RmError>>,
}

/// An RM on port 0 with the short limits above, `request_timeout` aside.
async fn start_rm(request_timeout: Duration) -> RunningRm {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = RmConfig {
        listen: address,
        db: "sqlite::memory:".to_owned(),
        cluster_secret: SECRET.to_owned(),
        ..RmConfig::default()
    };
    config.users.push(ApiUser {
        name: "ann".to_owned(),
        token: TOKEN.to_owned(),
        admin: false,
        unix_user: None,
    });
    config.http.header_read_timeout = HEADER_READ_TIMEOUT;
    config.http.request_timeout = request_timeout;
    config.http.shutdown_timeout = SHUTDOWN_TIMEOUT;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(spindle_resource_manager::run(config, listener, shutdown.clone()));
    let rm = RunningRm { address, shutdown, task };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(rm.address, "/healthz")
        .await
        .is_some_and(|reply| reply.contains("\"role\":\"active\""))
    {
        assert!(Instant::now() < deadline, "the RM did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rm
}

/// Reads until the server closes the connection: what it sent, and how long that took.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(MARGIN * 5, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the RM kept the connection open for {:?}", started.elapsed()),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

/// A submit whose head and first body bytes are sent, and the rest never.
async fn stalled_submit(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/apps HTTP/1.1\r\nhost: rm\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// One request on a connection of its own; `None` if the RM cannot be reached yet.
async fn get(address: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: rm\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    Some(read_until_closed(&mut stream).await.0)
}

fn assert_closed_at_the_timeout(what: &str, after: Duration, timeout: Duration) {
    assert!(
        after >= timeout / 2 && after < timeout + MARGIN,
        "{what}: closed after {after:?}, expected about {timeout:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_requests_are_cut_off_and_normal_ones_still_work() {
    let rm = start_rm(REQUEST_TIMEOUT).await;
    let opened = Instant::now();
    let mut idle = TcpStream::connect(rm.address).await.unwrap();
    let mut half_head = TcpStream::connect(rm.address).await.unwrap();
    half_head
        .write_all(b"GET /v1/cluster HTTP/1.1\r\nhost: rm\r\nauthoriz")
        .await
        .unwrap();

    let (idle_reply, _) = read_until_closed(&mut idle).await;
    assert!(idle_reply.is_empty(), "an idle connection got {idle_reply:?}");
    assert_closed_at_the_timeout("an idle connection", opened.elapsed(), HEADER_READ_TIMEOUT);
    read_until_closed(&mut half_head).await;
    assert_closed_at_the_timeout("a half-sent head", opened.elapsed(), HEADER_READ_TIMEOUT);

    // A body that never arrives: 503 at the request timeout, and the connection is closed.
    let mut slow_body = stalled_submit(rm.address).await;
    let (reply, after) = read_until_closed(&mut slow_body).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("\"code\":\"unavailable\""), "{reply}");
    assert_closed_at_the_timeout("a slow body", after, REQUEST_TIMEOUT);

    // Meanwhile, and after, the RM serves everyone else.
    let cluster = get(rm.address, "/v1/cluster").await.unwrap();
    assert!(cluster.starts_with("HTTP/1.1 200"), "{cluster}");

    rm.shutdown.cancel();
    rm.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_bounded_by_the_shutdown_timeout() {
    // A request in flight that would last a minute, longer than the shutdown timeout.
    let rm = start_rm(Duration::from_secs(60)).await;
    let mut in_flight = stalled_submit(rm.address).await;
    let mut idle = TcpStream::connect(rm.address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    rm.shutdown.cancel();
    tokio::time::timeout(SHUTDOWN_TIMEOUT + MARGIN, rm.task)
        .await
        .expect("the RM stops within its shutdown timeout")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < SHUTDOWN_TIMEOUT + MARGIN, "took {:?}", started.elapsed());
    for stream in [&mut in_flight, &mut idle] {
        let (_, after) = read_until_closed(stream).await;
        assert!(after < MARGIN, "a connection stayed open {after:?} after the RM stopped");
    }
}
