//! An HTTP service on tokio and axum that hands each request's heavy work to a multiproc
//! `Pool` of worker processes and awaits the result, with no thread waiting for it.
//!
//! - `GET /fib/N` answers `fib(N)`, computed in a worker process.
//! - `GET /crash` runs a task whose worker process dies (SIGKILL): the request gets `502 Bad
//!   Gateway` naming `WorkerLost`, the pool replaces the worker, and the service goes on.
//!
//! `cargo run --example async_http_pool -p multiproc --features async -- --serve
//! 127.0.0.1:8080` serves until Ctrl-C (try `curl localhost:8080/fib/30`). Without
//! `--serve` it serves on a free port and is its own client: it sends requests (some at
//! once, one that crashes its worker) and checks the answers, as the examples test runs it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use multiproc::{ErrorKind, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Heavy work: Fibonacci, the slow way (N at most 40).
fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// A task whose worker dies.
fn crash(_: ()) -> u64 {
    // SAFETY: kill with our own pid and a valid signal.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("killed")
}

/// What a request gets from a pool task: the value, or `502` naming what went wrong.
async fn answer(pending: multiproc::Result<multiproc::AsyncResult<u64>>) -> (StatusCode, String) {
    let outcome = match pending {
        Ok(r) => r.get_async().await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(v) => (StatusCode::OK, format!("{v}\n")),
        Err(e) if e.kind() == ErrorKind::WorkerLost => {
            (StatusCode::BAD_GATEWAY, format!("WorkerLost: {e}\n"))
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn app(pool: Arc<Pool>) -> Router {
    Router::new()
        .route(
            "/fib/{n}",
            get(
                |State(pool): State<Arc<Pool>>, Path(n): Path<u32>| async move {
                    if n > 40 {
                        return (StatusCode::BAD_REQUEST, "N is at most 40\n".to_string());
                    }
                    answer(pool.apply_async(fib, n)).await
                },
            ),
        )
        .route(
            "/crash",
            get(|State(pool): State<Arc<Pool>>| async move {
                answer(pool.apply_async(crash, ())).await
            }),
        )
        .with_state(pool)
}

/// One HTTP/1.1 request over a fresh connection: the status code and the body.
async fn request(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {reply:?}")))?;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Its own client: checks the answers, a crash among them.
async fn check(addr: SocketAddr) -> std::io::Result<()> {
    let requests: Vec<_> = (20..36)
        .map(|n| tokio::spawn(async move { (n, request(addr, &format!("/fib/{n}")).await) }))
        .collect();
    let (status, body) = request(addr, "/crash").await?;
    println!("GET /crash -> {status} {}", body.trim());
    assert_eq!(status, 502);
    assert!(body.contains("WorkerLost"), "{body}");
    for r in requests {
        let (n, reply) = r.await.map_err(std::io::Error::other)?;
        let (status, body) = reply?;
        println!("GET /fib/{n} -> {status} {}", body.trim());
        assert_eq!((status, body.trim()), (200, fib(n).to_string().as_str()));
    }
    // Still serving after the crash.
    assert_eq!(request(addr, "/fib/10").await?, (200, "55\n".to_string()));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The pool's workers start before the runtime's threads.
    let pool = Arc::new(Pool::new(4)?);
    let serve: Option<SocketAddr> = match std::env::args().nth(1).as_deref() {
        Some("--serve") => Some(std::env::args().nth(2).ok_or("--serve ADDR")?.parse()?),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(serve.unwrap_or(([127, 0, 0, 1], 0).into())).await?;
        let addr = listener.local_addr()?;
        // The test reads this line to know where to connect.
        println!("listening on {addr}");
        let server = axum::serve(listener, app(pool));
        if serve.is_some() {
            server
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            return Ok(());
        }
        let serving = tokio::spawn(async move { server.await });
        check(addr).await?;
        serving.abort();
        println!("all answers right; the service survived a crashed worker");
        Ok(())
    })
}
