//! One tiny HTTP/1.1 responder for all the endpoints: read the request head, route on the
//! method and path, answer with `Connection: close`. Probes and load balancers need no
//! more of HTTP, and it spares a web framework dependency.

use super::{ProxyHealth, Timestamp};
use crate::metrics::{HealthPath, Metrics};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bounds what a client can make us buffer.
const MAX_HEAD: usize = 8 * 1024;
// Bound how long a slow client holds a connection.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: String,
    /// Without query or fragment; `*` for `OPTIONS *`.
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

pub(super) const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    pub(super) fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn not_found() -> Self {
        Response::new(404, TEXT, "404 page not found\n")
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Parses `METHOD target HTTP/1.x`. The target may be in absolute form
/// (`http://host:port/healthz`), as proxies send it.
fn parse_request_line(line: &str) -> Option<Request> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    let path = if target == "*" {
        "*"
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // Absolute form: the path starts after the authority.
        rest.find(['/', '?', '#']).map_or("/", |at| &rest[at..])
    } else if target.starts_with('/') {
        target
    } else {
        return None;
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The request line.
    Line(String),
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// The client closed before the end of the head.
    Closed,
}

/// Reads up to the blank line ending the request head; returns its first line.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // Look for the end from a little before the new bytes (it may straddle reads).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let end = buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| from + at)
            .or_else(|| {
                // Be lenient with bare LF line ends.
                buf[from..]
                    .windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|at| from + at)
            });
        match end {
            Some(end) if end <= MAX_HEAD => {
                let head = String::from_utf8_lossy(&buf[..end]);
                let line = head.lines().next().unwrap_or_default();
                return Ok(Head::Line(line.trim_end_matches('\r').to_string()));
            }
            _ if buf.len() > MAX_HEAD => return Ok(Head::TooLarge),
            _ => {}
        }
    }
}

/// The bytes of `response`; a HEAD request gets no body.
fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

/// Answers one request on `stream` with `route`, then closes.
async fn handle_connection<S, F>(mut stream: S, route: &F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&str) -> Response,
{
    let (response, head_only) =
        match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => (Response::new(408, TEXT, "request timeout\n"), false),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading an HTTP request");
                return;
            }
            Ok(Ok(Head::Closed)) => return,
            Ok(Ok(Head::TooLarge)) => (Response::new(431, TEXT, "request too large\n"), false),
            Ok(Ok(Head::Line(line))) => match parse_request_line(&line) {
                None => (Response::new(400, TEXT, "bad request\n"), false),
                Some(req) if req.method == "GET" => (route(&req.path), false),
                Some(req) if req.method == "HEAD" => (route(&req.path), true),
                Some(_) => (Response::new(405, TEXT, "method not allowed\n"), false),
            },
        };
    let bytes = encode(&response, head_only);
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "writing an HTTP response"),
        Err(_) => tracing::debug!("writing an HTTP response timed out"),
    }
}

/// Serves `listener` with `route` forever, a task per connection. Accept errors (out of
/// file descriptors, ...) are passing, so they are logged and retried.
pub(super) async fn serve<F>(listener: TcpListener, what: &'static str, route: F)
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let route = Arc::new(route);
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "serving {what}");
    }
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let route = Arc::clone(&route);
                tokio::spawn(async move { handle_connection(stream, &*route).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a {what} connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn health_route(health: &ProxyHealth, metrics: &Metrics, path: &str, now: Timestamp) -> Response {
    let (which, (status, body)) = match path {
        "/healthz" => (HealthPath::Healthz, health.status(now)),
        "/livez" => (HealthPath::Livez, health.livez_status(now)),
        _ => return Response::not_found(),
    };
    metrics.health_answered(which, status);
    Response::new(status, JSON, body)
}

/// Serves `/healthz` and `/livez` (see [`ProxyHealth::status`]) on `listener`, forever,
/// counting the answers in `metrics`.
pub async fn serve_health(listener: TcpListener, health: Arc<ProxyHealth>, metrics: Arc<Metrics>) {
    serve(listener, "proxy health", move |path| {
        health_route(&health, &metrics, path, Timestamp::now())
    })
    .await
}

fn metrics_route(metrics: &Metrics, path: &str) -> Response {
    match path {
        "/metrics" => Response::new(200, PROMETHEUS_TEXT, metrics.render()),
        // As on kube-proxy's metrics port, for probes pointed at it.
        "/healthz" => Response::new(200, TEXT, "ok"),
        _ => Response::not_found(),
    }
}

/// Serves `/metrics` (Prometheus text format 0.0.4) and a plain `/healthz` on `listener`,
/// forever.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    serve(listener, "metrics", move |path| {
        metrics_route(&metrics, path)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let ok = |line: &str, method: &str, path: &str| {
            let want = Request {
                method: method.to_string(),
                path: path.to_string(),
            };
            assert_eq!(parse_request_line(line), Some(want), "{line:?}");
        };
        ok("GET /healthz HTTP/1.1", "GET", "/healthz");
        ok("GET /livez HTTP/1.0", "GET", "/livez");
        ok("HEAD /metrics?x=1 HTTP/1.1", "HEAD", "/metrics");
        ok("GET /a#frag HTTP/1.1", "GET", "/a");
        ok("GET /?q HTTP/1.1", "GET", "/");
        ok(
            "GET http://10.0.0.1:10256/healthz?v HTTP/1.1",
            "GET",
            "/healthz",
        );
        ok("GET http://node HTTP/1.1", "GET", "/");
        ok("OPTIONS * HTTP/1.1", "OPTIONS", "*");
        ok("POST /healthz HTTP/1.1", "POST", "/healthz");
        for malformed in [
            "",
            "GET",
            "GET /healthz",
            "GET /healthz HTTP/2",
            "GET  /healthz HTTP/1.1",
            "GET /healthz HTTP/1.1 extra",
            "GET healthz HTTP/1.1",
            "G:T /healthz HTTP/1.1",
        ] {
            assert_eq!(parse_request_line(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn responses_are_encoded_with_length_and_close() {
        let r = Response::new(503, JSON, "{}");
        let text = String::from_utf8(encode(&r, false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n{}"
        );
        let head = String::from_utf8(encode(&r, true)).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"));
        assert!(head.contains("Content-Length: 2\r\n"));
        let r = Response::new(405, TEXT, "no\n");
        let text = String::from_utf8(encode(&r, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
    }

    /// Sends `request` to a connection answered by `route`, over an in-memory pipe (no
    /// socket), and returns the raw answer.
    async fn exchange<F: Fn(&str) -> Response>(request: &[u8], route: F) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let request = request.to_vec();
        let client_side = async move {
            // Send in small pieces, so the head straddles reads.
            for piece in request.chunks(5) {
                client.write_all(piece).await.unwrap();
            }
            // Half-close, as a client that has nothing more to send.
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        };
        let (answer, ()) = tokio::join!(client_side, handle_connection(server, &route));
        answer
    }

    fn status_line(answer: &str) -> &str {
        answer.lines().next().unwrap_or_default()
    }

    fn body_of(answer: &str) -> &str {
        answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn health_server_routes() {
        let health = ProxyHealth::new(Duration::from_secs(60));
        let metrics = Metrics::new();
        let route = |path: &str| health_route(&health, &metrics, path, Timestamp::now());

        let answer = exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
        assert!(answer.contains("Content-Type: application/json\r\n"));
        let v: serde_json::Value = serde_json::from_str(body_of(&answer)).unwrap();
        assert_eq!(v["nodeEligible"], true);
        let len = format!("\r\nContent-Length: {}\r\n", body_of(&answer).len());
        assert!(answer.contains(&len), "{answer}");

        health.set_node_eligible(false);
        let answer = exchange(b"GET /healthz HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 503 Service Unavailable");
        let answer = exchange(b"GET /livez HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(!body_of(&answer).contains("nodeEligible"));

        let answer = exchange(b"GET /other HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found");
        assert_eq!(body_of(&answer), "404 page not found\n");

        let answer = exchange(b"HEAD /livez HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert_eq!(body_of(&answer), "");

        let answer = exchange(b"POST /livez HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 405 Method Not Allowed");

        let answer = exchange(b"nonsense\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");

        // Bare LF line ends are accepted.
        let answer = exchange(b"GET /livez HTTP/1.1\nHost: x\n\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        // Every answer of either endpoint was counted, by status.
        let text = metrics.render();
        for counted in [
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 3",
        ] {
            assert!(text.lines().any(|l| l == counted), "{counted}:\n{text}");
        }

        let mut huge = b"GET /livez HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let answer = exchange(&huge, route).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn client_closing_early_gets_nothing() {
        let answer = exchange(b"GET /livez HTT", |_: &str| Response::not_found()).await;
        assert_eq!(answer, "");
    }

    #[tokio::test]
    async fn metrics_server_routes() {
        let metrics = Metrics::new();
        metrics.sync_failed();
        let route = |path: &str| metrics_route(&metrics, path);
        let answer = exchange(b"GET /metrics HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(answer.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(body_of(&answer).contains("\nsvcnft_sync_failures_total 1\n"));
        let answer = exchange(b"GET /healthz HTTP/1.1\r\n\r\n", route).await;
        assert_eq!(body_of(&answer), "ok");
        let answer = exchange(b"GET /metricsx HTTP/1.1\r\n\r\n", route).await;
        assert!(answer.starts_with("HTTP/1.1 404 "));
    }
}
