//! The server against real sockets on port 0, with short limits (real time: hyper's timer and
//! the kernel's sockets do not follow tokio's paused clock).

use std::net::SocketAddr;
use std::time::Instant;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling slack on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(2);

fn limits(max_connections: usize) -> ServerLimits {
    ServerLimits {
        header_read_timeout: HEADER_TIMEOUT,
        max_connections,
        shutdown_timeout: Duration::from_millis(500),
    }
}

fn router() -> Router {
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        }),
    );
    let timed = Router::new().route("/hello", get(|| async { "hello" })).merge(slow);
    // As a long poll would be: outside the request timeout.
    let untimed = Router::new().route(
        "/forever",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        }),
    );
    with_request_timeout(timed, Duration::from_millis(200)).merge(untimed)
}

struct Running {
    address: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

async fn start(limits: ServerLimits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(serve(listener, router(), limits, None, async move { stop.cancelled().await }));
    Running { address, shutdown, server }
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(HEADER_TIMEOUT + MARGIN, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the server kept the connection open for {:?}", started.elapsed()),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

async fn get_once(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream).await.0
}

#[tokio::test]
async fn idle_and_half_sent_heads_are_closed_at_the_header_timeout() {
    let running = start(limits(16)).await;
    let opened = Instant::now();
    let mut idle = TcpStream::connect(running.address).await.unwrap();
    let mut half = TcpStream::connect(running.address).await.unwrap();
    half.write_all(b"GET /hello HTTP/1.1\r\nhost: te").await.unwrap();

    let (idle_reply, _) = read_until_closed(&mut idle).await;
    assert!(idle_reply.is_empty(), "an idle connection gets no answer: {idle_reply}");
    let idle_after = opened.elapsed();
    read_until_closed(&mut half).await;
    for after in [idle_after, opened.elapsed()] {
        assert!(
            after >= HEADER_TIMEOUT / 2 && after < HEADER_TIMEOUT + MARGIN,
            "closed after {after:?}"
        );
    }
    assert!(get_once(running.address, "/hello").await.ends_with("hello"));
    running.shutdown.cancel();
    running.server.await.unwrap();
}

#[tokio::test]
async fn a_kept_alive_connection_serves_several_requests() {
    let running = start(limits(16)).await;
    let mut stream = TcpStream::connect(running.address).await.unwrap();
    for _ in 0..2 {
        stream.write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        let reply = String::from_utf8_lossy(&buffer[..n]);
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("hello"), "{reply}");
    }
    // Then idle: closed at the header timeout like any other.
    let (_, after) = read_until_closed(&mut stream).await;
    assert!(after < HEADER_TIMEOUT + MARGIN, "closed after {after:?}");
}

#[tokio::test]
async fn a_slow_route_answers_503_at_the_request_timeout() {
    let running = start(limits(16)).await;
    let reply = get_once(running.address, "/slow").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("\"code\":\"unavailable\"") && reply.contains("retry"), "{reply}");
    let unknown = get_once(running.address, "/nowhere").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let running = start(limits(1)).await;
    let holder = TcpStream::connect(running.address).await.unwrap();
    // Give the server time to accept the first connection and take the only permit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = tokio::spawn(get_once(running.address, "/hello"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "a second connection was served beside the first");
    drop(holder);
    let reply = tokio::time::timeout(MARGIN, waiting).await.unwrap().unwrap();
    assert!(reply.ends_with("hello"), "{reply}");
}

#[tokio::test]
async fn shutdown_is_bounded_even_with_a_request_in_flight() {
    let running = start(ServerLimits {
        header_read_timeout: Duration::from_secs(60),
        ..limits(16)
    })
    .await;
    // A request that would run for an hour, on a route without a request timeout.
    let mut in_flight = TcpStream::connect(running.address).await.unwrap();
    in_flight.write_all(b"GET /forever HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    let mut idle = TcpStream::connect(running.address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    running.shutdown.cancel();
    tokio::time::timeout(Duration::from_millis(500) + MARGIN, running.server)
        .await
        .expect("serve returns after the shutdown timeout")
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500) + MARGIN);
    for stream in [&mut idle, &mut in_flight] {
        let (_, after) = read_until_closed(stream).await;
        assert!(after < MARGIN, "still open {after:?} after the server stopped");
    }
    assert!(TcpStream::connect(running.address).await.is_err(), "the listener is closed");
}
