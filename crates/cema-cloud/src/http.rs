//! The HTTP transport of protocol v1 (docs/protocol.md) over a [`Frontend`] (the one-process
//! [`crate::Cloud`], or a fleet gateway), with axum on hyper:
//! HTTP/1.1 and HTTP/2 over cleartext (prior knowledge), with header, idle and body timeouts,
//! a connection cap, and a shutdown that drains within a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{middleware, Json, Router};
use cema_wire::{
    encode_frame, ApiError, ErrorCode, NORM_STATE_CONTENT_TYPE, PROTOCOL_VERSION,
    UPDATES_CONTENT_TYPE,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::frontend::Frontend;
use crate::metrics::Metrics;
use crate::service::Refusal;

/// How often an idle update stream carries an empty frame, so a dead link shows as a read
/// timeout on the edge.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

struct App<F> {
    front: Arc<F>,
    shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
}

impl<F> Clone for App<F> {
    fn clone(&self) -> Self {
        App {
            front: self.front.clone(),
            shutdown: self.shutdown.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// How the transport guards itself against slow, idle and too many clients.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections at most; past it a new connection gets a 503 `unavailable` and is closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is closed
    /// after it.
    pub header_timeout: Duration,
    /// A request body may pause at most this long between chunks ...
    pub body_idle: Duration,
    /// ... and must arrive whole within this (at 8 MiB, a 1.2 Mbit/s link).
    pub body_total: Duration,
    /// On shutdown, in-flight requests get this long to finish before connections are cut.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(20),
            body_idle: Duration::from_secs(10),
            body_total: Duration::from_secs(60),
            drain: Duration::from_secs(10),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).expect("error codes carry valid statuses");
        let body = ApiError {
            expected_seq: self.expected_seq,
            ..ApiError::new(self.code, self.message)
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, s.to_string().parse().expect("digits"));
        }
        resp
    }
}

/// The router of every endpoint. `shutdown` turning true ends the update streams, so that a
/// graceful shutdown does not wait on them forever.
pub fn router<F: Frontend>(
    front: Arc<F>,
    shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
) -> Router {
    Router::new()
        .route("/", get(dashboard_page))
        .route("/v1/dashboard", get(dashboard::<F>))
        .route("/health", get(health::<F>))
        .route("/ready", get(ready::<F>))
        .route("/metrics", get(metrics::<F>))
        .route("/v1/sessions", get(sessions::<F>))
        .route("/v1/devices/{device}/session", put(open_session::<F>))
        .route("/v1/devices/{device}/uploads", post(upload::<F>))
        .route("/v1/devices/{device}/updates", get(updates::<F>))
        .route("/v1/devices/{device}/state", get(state::<F>))
        .route("/v1/devices/{device}/telemetry", put(telemetry::<F>))
        .route_layer(middleware::from_fn_with_state(front.clone(), observe::<F>))
        .fallback(|uri: Uri| async move {
            Refusal::new(ErrorCode::NotFound, format!("no route {}", uri.path())).into_response()
        })
        .method_not_allowed_fallback(|uri: Uri| async move {
            let msg = format!("{} does not take this method", uri.path());
            Refusal::new(ErrorCode::MethodNotAllowed, msg).into_response()
        })
        .with_state(App {
            front,
            shutdown,
            limits,
        })
}

/// Counts every routed request by its route template, method and status, and times it.
async fn observe<F: Frontend>(
    State(front): State<Arc<F>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_string());
    let method = req.method().clone();
    let t = Instant::now();
    let resp = next.run(req).await;
    let seconds = t.elapsed().as_secs_f64();
    front
        .metrics()
        .request(&route, method.as_str(), resp.status().as_u16(), seconds);
    resp
}

/// [`serve_with`] under the default [`HttpLimits`].
pub async fn serve<F: Frontend>(
    listener: TcpListener,
    front: Arc<F>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, front, HttpLimits::default(), signal).await
}

/// Serves until `signal` resolves, then drains: the listener closes, update streams end,
/// in-flight requests get `limits.drain` to finish; connections still open then are cut.
pub async fn serve_with<F: Frontend>(
    listener: TcpListener,
    front: Arc<F>,
    limits: HttpLimits,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let app = router(front.clone(), rx, limits.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(signal);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the listener itself is fine; back off a moment instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            front.metrics().reject(ErrorCode::Unavailable);
            tokio::spawn(refuse_connection(stream, limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        let open = front.metrics().connections.clone();
        tokio::spawn(async move {
            let _slot = slot;
            open.inc();
            // hyper's protocol sniff (HTTP/1 or the HTTP/2 preface) has no timeout of its own.
            if first_bytes(&stream, header_timeout).await {
                let mut b = auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                b.http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(header_timeout))
                    .keep_alive_timeout(header_timeout);
                let conn = b.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!("connection: {e}");
                }
            }
            open.dec();
        });
    }
    drop(listener);
    let _ = tx.send(true);
    let t = Instant::now();
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(open, seconds = t.elapsed().as_secs_f64(), "drained"),
        () = tokio::time::sleep(limits.drain) => {
            tracing::warn!(open, "connections still open after the {:?} drain deadline: cut", limits.drain);
        }
    }
    Ok(())
}

/// Waits until the client has sent enough to tell HTTP/1 from the HTTP/2 preface (or closed),
/// at most `within`. False: nothing usable came in time.
async fn first_bytes(stream: &TcpStream, within: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let sniff = async {
        let mut buf = [0u8; 24];
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 || n == PREFACE.len() || buf[..n] != PREFACE[..n] {
                return n > 0;
            }
            // A partial preface: peek returns at once while bytes are waiting.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(within, sniff).await.unwrap_or(false)
}

/// Past the connection cap: one HTTP/1.1 503 with an [`ApiError`], then close (after reading
/// what the client sent, for at most a second: see [`read_body`] on resets).
async fn refuse_connection(mut stream: TcpStream, cap: usize) {
    let refusal = Refusal {
        retry_after_s: Some(1),
        ..Refusal::new(
            ErrorCode::Unavailable,
            format!("the cloud holds its maximum of {cap} connections"),
        )
    };
    let body = serde_json::to_vec(&ApiError::new(refusal.code, refusal.message))
        .expect("serialising an error body");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

fn refuse(metrics: &Metrics, r: Refusal) -> Response {
    metrics.reject(r.code);
    r.into_response()
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// The query string as `T`, read only after the request is authorised: a bad query is a JSON
/// `bad_request` like every other refusal.
fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, Refusal> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| {
            Refusal::bad_request(format!(
                "query `{}`: {}",
                uri.query().unwrap_or(""),
                e.body_text()
            ))
        })
}

/// Reads the body under the hard limit; an over-long body (declared or actual) is refused
/// without being buffered.
///
/// The rest of a refused body is read and discarded, up to [`DRAIN_CAP`] bytes or
/// [`DRAIN_TIME`] (a lingering close, as web servers do it): closing a connection whose request
/// bytes were never read makes the kernel send a reset, and a reset that reaches the client
/// before it reads the 413 discards that response, so the edge would see "peer disconnected"
/// instead of `too_large`. Past either bound the connection is closed anyway.
///
/// A body that stalls for `limits.body_idle`, or is not whole after `limits.body_total`, is
/// refused with `request_timeout` (a slow client must not hold a connection forever).
async fn read_body(
    limit: usize,
    limits: &HttpLimits,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Refusal> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + limits.body_total;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut stream = body.into_data_stream();
    if let Some(n) = declared.filter(|&n| n > limit) {
        drain(stream, n.min(DRAIN_CAP)).await;
        return Err(Refusal::too_large(n, limit));
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        let wait = deadline.min(tokio::time::Instant::now() + limits.body_idle);
        let Ok(next) = tokio::time::timeout_at(wait, stream.next()).await else {
            return Err(Refusal::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the body stalled after {} bytes (a pause over {:?}, or not whole within {:?})",
                    buf.len(),
                    limits.body_idle,
                    limits.body_total
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk
            .map_err(|e| Refusal::bad_request(format!("body could not be read whole: {e}")))?;
        if buf.len() + chunk.len() > limit {
            let seen = buf.len() + chunk.len();
            drain(stream, DRAIN_CAP.saturating_sub(seen)).await;
            return Err(Refusal::too_large(seen, limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// At most this many bytes of a refused body are read and discarded (see [`read_body`]); an
/// unauthorised request's body, at most `max_body`.
const DRAIN_CAP: usize = 32 << 20;
/// ... and for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(5);

async fn drain(
    mut stream: impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
    cap: usize,
) {
    use futures_util::StreamExt;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0;
        while seen < cap {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// Ready to take uploads: the models are loaded (they are, once the server runs) and the store
/// writes. 503 `unavailable` otherwise, e.g. while the disk is full.
async fn ready<F: Frontend>(State(app): State<App<F>>) -> Response {
    match app.front.clone().ready().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => Refusal::unavailable(format!("not ready: {e}")).into_response(),
    }
}

async fn health<F: Frontend>(State(app): State<App<F>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "protocol": PROTOCOL_VERSION,
        "features": crate::service::features(),
        "model_id": app.front.model_id(),
        "sessions": app.front.session_count(),
        "uptime_s": app.front.uptime_s(),
    }))
}

/// Prometheus' classic text format, or OpenMetrics for a scraper that asks for it.
async fn metrics<F: Frontend>(State(app): State<App<F>>, headers: HeaderMap) -> Response {
    metrics_response(app.front.metrics(), &headers)
}

fn metrics_response(m: &Metrics, headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            m.render(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, CLASSIC_CONTENT_TYPE)],
            m.render_classic(),
        )
            .into_response()
    }
}

/// `/metrics` and `/health` alone, for a process that serves no device (a fleet worker), until
/// `signal` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State(m): State<Arc<Metrics>>, headers: HeaderMap| async move {
                    metrics_response(&m, &headers)
                },
            ),
        )
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn sessions<F: Frontend>(State(app): State<App<F>>) -> impl IntoResponse {
    Json(app.front.sessions_view())
}

/// The live dashboard (crates/cema-cloud/src/dashboard.html, served from the binary).
async fn dashboard_page() -> Html<&'static str> {
    Html(crate::dashboard::PAGE)
}

#[derive(Deserialize)]
struct DashboardQuery {
    #[serde(default = "before_start")]
    since: f64,
}

fn before_start() -> f64 {
    -1.0
}

/// The dashboard's history after `since` (seconds since the cloud started).
async fn dashboard<F: Frontend>(State(app): State<App<F>>, uri: Uri) -> Response {
    let f = &app.front;
    let q = match query::<DashboardQuery>(&uri) {
        Ok(q) => q,
        Err(r) => return refuse(f.metrics(), r),
    };
    Json(serde_json::json!({
        "model_id": f.model_id(),
        "protocol": PROTOCOL_VERSION,
        "uptime_s": f.uptime_s(),
        "sessions": f.session_count(),
        "points": f.history().since(q.since),
    }))
    .into_response()
}

async fn telemetry<F: Frontend>(
    State(app): State<App<F>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match authorized_body(&app, &device, &headers, body).await {
        Ok(bytes) => app.front.clone().telemetry(device, bytes).await,
        Err(r) => Err(r),
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refuse(app.front.metrics(), r),
    }
}

/// The preamble of every device request that carries a body: authorise, then read the body
/// within the size limit.
async fn authorized_body<F: Frontend>(
    app: &App<F>,
    device: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Refusal> {
    if let Err(r) = app.front.authorize(device, bearer(headers)) {
        return Err(refuse_unread(app.front.max_body(), body, r).await);
    }
    read_body(app.front.max_body(), &app.limits, headers, body).await
}

/// A refusal before the body was read: the body is read first (bounded, see `read_body`), since
/// refusing with it unread resets the connection, which loses the answer or breaks the client's
/// next request on it.
async fn refuse_unread(max_body: usize, body: Body, r: Refusal) -> Refusal {
    drain(body.into_data_stream(), max_body).await;
    r
}

async fn open_session<F: Frontend>(
    State(app): State<App<F>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match authorized_body(&app, &device, &headers, body).await {
        Ok(bytes) => app.front.clone().open_session(device, bytes).await,
        Err(r) => Err(r),
    };
    match result {
        Ok(info) => Json(info).into_response(),
        Err(r) => refuse(app.front.metrics(), r),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(default)]
    wait: bool,
}

async fn upload<F: Frontend>(
    State(app): State<App<F>>,
    Path(device): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let front = app.front.clone();
    // Authorised first; the query is checked before the body is taken, so a bad query changes
    // nothing.
    let result = match front
        .authorize(&device, bearer(&headers))
        .and_then(|()| query::<UploadQuery>(&uri))
    {
        Ok(q) => match read_body(front.max_body(), &app.limits, &headers, body).await {
            Ok(bytes) => front
                .clone()
                .upload(device.clone(), bytes)
                .await
                .map(|a| (q, a)),
            Err(r) => Err(r),
        },
        Err(r) => Err(refuse_unread(front.max_body(), body, r).await),
    };
    let (q, mut ack) = match result {
        Ok(x) => x,
        Err(r) => return refuse(front.metrics(), r),
    };
    if q.wait {
        match front.clone().wait_applied(device, ack.seq).await {
            Ok(version) => ack.version = Some(version),
            Err(r) => return refuse(front.metrics(), r),
        }
    }
    (StatusCode::ACCEPTED, Json(ack)).into_response()
}

#[derive(Deserialize)]
struct UpdatesQuery {
    #[serde(default)]
    after: u64,
}

async fn updates<F: Frontend>(
    State(app): State<App<F>>,
    Path(device): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let front = app.front.clone();
    let q = match front
        .authorize(&device, bearer(&headers))
        .and_then(|()| query::<UpdatesQuery>(&uri))
    {
        Ok(q) => q,
        Err(r) => return refuse(front.metrics(), r),
    };
    let rx = match front.clone().updates(device.clone()).await {
        Ok(rx) => rx,
        Err(r) => return refuse(front.metrics(), r),
    };
    let open = OpenStream::new(front, device);
    let stream = futures_util::stream::unfold(
        (rx, app.shutdown.clone(), q.after, open),
        |(mut rx, mut stop, last, open)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                let cur = rx.borrow_and_update().clone();
                if cur.version > last {
                    open.front
                        .metrics()
                        .bytes_down
                        .inc_by(cur.bytes.len() as u64);
                    open.front.sent(&open.device, cur.bytes.len());
                    let frame = Bytes::from(encode_frame(&cur.bytes));
                    return Some((Ok::<_, Infallible>(frame), (rx, stop, cur.version, open)));
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    _ = stop.changed() => return None,
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        let beat = Bytes::from(encode_frame(&[]));
                        return Some((Ok(beat), (rx, stop, last, open)));
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, UPDATES_CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .expect("static headers")
}

/// Counts an update stream as open from its start until its body is dropped (the client left
/// or the cloud stopped).
struct OpenStream<F: Frontend> {
    front: Arc<F>,
    device: String,
}

impl<F: Frontend> OpenStream<F> {
    fn new(front: Arc<F>, device: String) -> Self {
        front.metrics().update_streams.inc();
        OpenStream { front, device }
    }
}

impl<F: Frontend> Drop for OpenStream<F> {
    fn drop(&mut self) {
        self.front.metrics().update_streams.dec();
    }
}

async fn state<F: Frontend>(
    State(app): State<App<F>>,
    Path(device): Path<String>,
    headers: HeaderMap,
) -> Response {
    let front = app.front.clone();
    if let Err(r) = front.authorize(&device, bearer(&headers)) {
        return refuse(front.metrics(), r);
    }
    match front.clone().latest(device.clone()).await {
        Ok(latest) => {
            let bytes = latest.bytes.to_vec();
            front.metrics().bytes_down.inc_by(bytes.len() as u64);
            front.sent(&device, bytes.len());
            ([(header::CONTENT_TYPE, NORM_STATE_CONTENT_TYPE)], bytes).into_response()
        }
        Err(r) => refuse(front.metrics(), r),
    }
}
