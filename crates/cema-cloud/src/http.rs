//! The HTTP transport of protocol v1 (docs/protocol.md) over [`Cloud`], with axum.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cema_wire::{
    encode_frame, ApiError, NORM_STATE_CONTENT_TYPE, PROTOCOL_VERSION, UPDATES_CONTENT_TYPE,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::service::{Cloud, Refusal};

/// How often an idle update stream carries an empty frame, so a dead link shows as a read
/// timeout on the edge.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct App {
    cloud: Arc<Cloud>,
    shutdown: watch::Receiver<bool>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ApiError {
            code: self.code.to_string(),
            message: self.message,
            expected_seq: self.expected_seq,
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
pub fn router(cloud: Arc<Cloud>, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/sessions", get(sessions))
        .route("/v1/devices/{device}/session", put(open_session))
        .route("/v1/devices/{device}/uploads", post(upload))
        .route("/v1/devices/{device}/updates", get(updates))
        .route("/v1/devices/{device}/state", get(state))
        .with_state(App { cloud, shutdown })
}

/// Serves until `signal` resolves, then drains: update streams end, in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cloud: Arc<Cloud>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    let app = router(cloud, rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            signal.await;
            let _ = tx.send(true);
        })
        .await
}

fn refuse(cloud: &Cloud, r: Refusal) -> Response {
    cloud.metrics.reject(r.code);
    r.into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Reads the body under the hard limit; an over-long body (declared or actual) is refused
/// without being buffered.
///
/// The rest of a refused body is read and discarded, up to [`DRAIN_CAP`] bytes or
/// [`DRAIN_TIME`] (a lingering close, as web servers do it): closing a connection whose request
/// bytes were never read makes the kernel send a reset, and a reset that reaches the client
/// before it reads the 413 discards that response, so the edge would see "peer disconnected"
/// instead of `too_large`. Past either bound the connection is closed anyway.
async fn read_body(cloud: &Cloud, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
    use futures_util::StreamExt;
    let limit = cloud.options().max_body;
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
    while let Some(chunk) = stream.next().await {
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

async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "protocol": PROTOCOL_VERSION,
        "model_id": app.cloud.model_id,
        "sessions": app.cloud.session_count(),
        "uptime_s": app.cloud.uptime_s(),
    }))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.cloud.metrics.render(),
    )
}

async fn sessions(State(app): State<App>) -> impl IntoResponse {
    Json(app.cloud.sessions_view())
}

async fn status_page(State(app): State<App>) -> Html<String> {
    let rows: String = app
        .cloud
        .sessions_view()
        .iter()
        .map(|s| {
            let f = |x: Option<f32>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                html_escape(&s.device),
                s.version,
                s.uploads,
                s.samples,
                s.rounds,
                s.queued,
                s.replay,
                f(s.last_foundation_loss),
                f(s.last_distill_loss),
                s.session_bytes as f64 / 1024.0,
                s.replay_bytes as f64 / 1024.0,
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
         <title>cema cloud</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 10px;text-align:right}}</style></head>\
         <body><h1>cema cloud</h1><p>model <b>{}</b> · protocol v{} · {} sessions · up {:.0} s</p>\
         <table><tr><th>device</th><th>version</th><th>uploads</th><th>samples</th><th>rounds</th><th>queued</th>\
         <th>replay</th><th>foundation loss</th><th>distill loss</th><th>session KiB</th><th>replay KiB</th></tr>{rows}</table>\
         <p><a href=/metrics>metrics</a> · <a href=/v1/sessions>sessions JSON</a> · <a href=/health>health</a></p></body></html>",
        html_escape(&app.cloud.model_id),
        PROTOCOL_VERSION,
        app.cloud.session_count(),
        app.cloud.uptime_s(),
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The preamble of every device request that carries a body: authorise, read the body within
/// the size limit, then run `work` on a blocking thread (it touches the store and may fsync).
async fn device_call<T, F>(
    cloud: &Arc<Cloud>,
    device: String,
    headers: &HeaderMap,
    body: Body,
    what: &str,
    work: F,
) -> Result<T, Refusal>
where
    T: Send + 'static,
    F: FnOnce(&Cloud, &str, &[u8]) -> Result<T, Refusal> + Send + 'static,
{
    if let Err(r) = cloud.authorize(&device, bearer(headers)) {
        // Read the body first (bounded, see `read_body`): refusing with it unread resets the
        // connection, which loses the 401 or breaks the client's next request on it.
        drain(body.into_data_stream(), cloud.options().max_body).await;
        return Err(r);
    }
    let bytes = read_body(cloud, headers, body).await?;
    let c = cloud.clone();
    tokio::task::spawn_blocking(move || work(&c, &device, &bytes))
        .await
        .map_err(|e| Refusal::bad_request(format!("{what} task: {e}")))?
}

async fn open_session(
    State(app): State<App>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cloud = app.cloud.clone();
    let result = device_call(&cloud, device, &headers, body, "session", |c, d, b| {
        c.open_session(d, b)
    })
    .await;
    match result {
        Ok(info) => Json(info).into_response(),
        Err(r) => refuse(&cloud, r),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(default)]
    wait: bool,
}

async fn upload(
    State(app): State<App>,
    Path(device): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cloud = app.cloud.clone();
    let result = device_call(&cloud, device, &headers, body, "upload", |c, d, b| {
        c.upload(d, b)
    })
    .await;
    let (mut ack, session) = match result {
        Ok(x) => x,
        Err(r) => return refuse(&cloud, r),
    };
    if q.wait {
        session.wait_applied(ack.seq).await;
        ack.version = Some(session.latest().version);
    }
    (StatusCode::ACCEPTED, Json(ack)).into_response()
}

#[derive(Deserialize)]
struct UpdatesQuery {
    #[serde(default)]
    after: u64,
}

async fn updates(
    State(app): State<App>,
    Path(device): Path<String>,
    Query(q): Query<UpdatesQuery>,
    headers: HeaderMap,
) -> Response {
    let cloud = app.cloud.clone();
    if let Err(r) = cloud.authorize(&device, bearer(&headers)) {
        return refuse(&cloud, r);
    }
    let session = match cloud.session(&device) {
        Ok(s) => s,
        Err(r) => return refuse(&cloud, r),
    };
    let rx = session.subscribe();
    let stream = futures_util::stream::unfold(
        (rx, app.shutdown.clone(), q.after),
        |(mut rx, mut stop, last)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                let cur = rx.borrow_and_update().clone();
                if cur.version > last {
                    let frame = Bytes::from(encode_frame(&cur.bytes));
                    return Some((Ok::<_, Infallible>(frame), (rx, stop, cur.version)));
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    _ = stop.changed() => return None,
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        return Some((Ok(Bytes::from(encode_frame(&[]))), (rx, stop, last)));
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

async fn state(State(app): State<App>, Path(device): Path<String>, headers: HeaderMap) -> Response {
    let cloud = app.cloud.clone();
    if let Err(r) = cloud.authorize(&device, bearer(&headers)) {
        return refuse(&cloud, r);
    }
    match cloud.session(&device) {
        Ok(s) => (
            [(header::CONTENT_TYPE, NORM_STATE_CONTENT_TYPE)],
            s.latest().bytes.to_vec(),
        )
            .into_response(),
        Err(r) => refuse(&cloud, r),
    }
}
