//! The daemon's HTTP listener with limits on every socket (axum's `serve` has none): a client
//! must send a request's headers within `header_read_timeout` (slowloris), a request must be
//! answered within `request_timeout` (a slow body cannot hold a handler), an idle keep-alive
//! connection is closed after `header_read_timeout` too, and at most `max_connections` are
//! open at once — a connection beyond that is closed as soon as it is accepted and counted in
//! `flotilla_http_connections_refused_total`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Socket limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Serves `router` on `listener` until the task is aborted. Accept errors (e.g. out of file
/// descriptors) are logged and retried after a short pause instead of ending the server.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    refused: impl Fn() + Send + Sync + 'static,
) -> Result<(), std::io::Error> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    let builder = Arc::new(builder);
    let router = with_request_timeout(router, limits.request_timeout);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused();
            tracing::warn!(%peer, max = limits.max_connections, "too many connections; closing a new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// `router` with every request bounded by `limit` (a 408 answer after that).
pub(crate) fn with_request_timeout(router: Router, limit: Duration) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request<Body>, next: axum::middleware::Next| async move {
            match tokio::time::timeout(limit, next.run(req)).await {
                Ok(r) => r,
                Err(_) => timeout_response(),
            }
        },
    ))
}

fn timeout_response() -> Response<Body> {
    let mut r = Response::new(Body::from("{\"error\":\"request timed out\"}"));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new()
            .route("/ok", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late\n"
                }),
            );
        let refused = Arc::new(AtomicUsize::new(0));
        let r = refused.clone();
        tokio::spawn(serve(listener, router, limits, move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        (addr, refused)
    }

    /// Reads until the peer closes; the text read, or `None` if still open after `within`.
    async fn read_to_close(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into()),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        read_to_close(&mut s, Duration::from_secs(10))
            .await
            .expect("answer")
    }

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(700),
            max_connections: 4,
        }
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let (addr, _) = start(limits()).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        // The server closes it (hyper answers 408 first) well before the 5 s we wait.
        let closed = read_to_close(&mut slow, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a partial request was held open");
        assert!(started.elapsed() < Duration::from_secs(3));
        // An idle connection that sends nothing is closed too.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(
            read_to_close(&mut idle, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(get(addr, "/ok").await.ends_with("ok\n"));
    }

    #[tokio::test]
    async fn a_handler_that_takes_too_long_answers_408() {
        let (addr, _) = start(limits()).await;
        let answer = get(addr, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request timed out"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_counted_and_others_still_served() {
        let (addr, refused) = start(Limits {
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /ok HTTP/1.1\r\n").await.expect("write");
            held.push(s);
        }
        // Let the server accept all four before the fifth arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let closed = read_to_close(&mut extra, Duration::from_secs(5)).await;
        assert_eq!(
            closed.as_deref(),
            Some(""),
            "the fifth connection was not closed"
        );
        assert_eq!(refused.load(Ordering::SeqCst), 1);
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(addr, "/ok").await.ends_with("ok\n"));
    }
}
