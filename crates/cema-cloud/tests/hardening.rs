//! The cloud against clients that misbehave and a disk that fills: every error is a JSON
//! `ApiError` with authorisation checked first, slow, idle and stalled clients are cut, the
//! connection count is capped, shutdown drains within its deadline, HTTP/2 over cleartext is
//! served, `/metrics` passes `promtool`, a full disk is survived without a restart.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cema_cloud::{Cloud, CloudOptions, HttpLimits};
use cema_wire::{ApiError, MAX_NORM_VERSION};
use common::*;

/// One raw HTTP/1.1 exchange on a fresh connection (`Connection: close`): status, headers
/// (lower-case names), body.
fn http(addr: SocketAddr, request: &str, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_response(&out)
}

fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A request's status and its `ApiError` (which every error must be, as JSON).
fn api_error(addr: SocketAddr, request: &str, body: &[u8]) -> (u16, ApiError) {
    let (status, headers, body) = http(addr, request, body);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/json"),
        "{request:?} → {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let e: ApiError = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{request:?}: not an ApiError ({e}): {body:?}"));
    (status, e)
}

fn get(path: &str, auth: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: t\r\nauthorization: {auth}\r\nconnection: close\r\n\r\n")
}

fn post(path: &str, auth: &str, len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: {auth}\r\ncontent-length: {len}\r\n\
         connection: close\r\n\r\n"
    )
}

#[test]
fn every_error_is_json_and_authorisation_comes_first() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let a = cloud.addr;
    cloud
        .client("dev-a", "tok-a")
        .open_session(&edge_state(0).to_bytes())
        .unwrap();
    let body = upload(0, 1);
    // An unknown device with a bad query: 401, not 400.
    for q in ["?wait=yes", "?wait=null", ""] {
        let (s, e) = api_error(
            a,
            &post(
                &format!("/v1/devices/dev-x/uploads{q}"),
                "Bearer tok-a",
                body.len(),
            ),
            &body,
        );
        assert_eq!((s, e.code.as_str()), (401, "unauthorized"), "{q}");
    }
    let (s, e) = api_error(
        a,
        &get("/v1/devices/dev-x/updates?after=-1", "Bearer tok-a"),
        b"",
    );
    assert_eq!((s, e.code.as_str()), (401, "unauthorized"));
    // An authorised device with a bad query: a JSON 400 naming the query, and nothing stored.
    for q in ["?wait=yes", "?wait=null"] {
        let (s, e) = api_error(
            a,
            &post(
                &format!("/v1/devices/dev-a/uploads{q}"),
                "Bearer tok-a",
                body.len(),
            ),
            &body,
        );
        assert_eq!((s, e.code.as_str()), (400, "bad_request"), "{q}");
        assert!(e.message.contains(&q[1..]), "{}", e.message);
    }
    for q in ["-1", "x", "18446744073709551616"] {
        let (s, e) = api_error(
            a,
            &get(
                &format!("/v1/devices/dev-a/updates?after={q}"),
                "Bearer tok-a",
            ),
            b"",
        );
        assert_eq!((s, e.code.as_str()), (400, "bad_request"), "{q}");
    }
    assert_eq!(
        cloud.sessions()[0].next_seq,
        0,
        "a refused upload was stored"
    );
    // The scheme is case-insensitive (RFC 9110): lower-case `bearer` is the same credential.
    let (s, h, _) = http(a, &get("/v1/devices/dev-a/state", "bearer tok-a"), b"");
    assert_eq!(s, 200);
    assert_eq!(
        header(&h, "content-type"),
        Some(cema_wire::NORM_STATE_CONTENT_TYPE)
    );
    let (s, _, _) = http(
        a,
        &post("/v1/devices/dev-a/uploads", "BEARER   tok-a", body.len()),
        &body,
    );
    assert_eq!(s, 202);
    for auth in ["Basic tok-a", "Bearertok-a", "tok-a", ""] {
        let (s, e) = api_error(a, &get("/v1/devices/dev-a/state", auth), b"");
        assert_eq!((s, e.code.as_str()), (401, "unauthorized"), "{auth:?}");
    }
    // Telemetry: oversize, malformed, impossible totals; the dashboard's query.
    let put = |len: usize| {
        format!(
            "PUT /v1/devices/dev-a/telemetry HTTP/1.1\r\nhost: t\r\nauthorization: Bearer tok-a\r\n\
             content-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };
    for (body, status, code) in [
        (vec![b' '; 2000], 413, "too_large"),
        (b"{not json".to_vec(), 400, "bad_request"),
        (
            br#"{"images": 1, "correct": 2, "norm_version": 0}"#.to_vec(),
            400,
            "bad_request",
        ),
    ] {
        let (s, e) = api_error(a, &put(body.len()), &body);
        assert_eq!((s, e.code.as_str()), (status, code), "{}", e.message);
    }
    let ok = br#"{"images": 2, "correct": 1, "norm_version": 0}"#;
    let (s, _, _) = http(a, &put(ok.len()), ok);
    assert_eq!(s, 204);
    let (s, e) = api_error(a, &get("/v1/dashboard?since=soon", ""), b"");
    assert_eq!((s, e.code.as_str()), (400, "bad_request"));
    // Unknown routes and methods answer in the same shape.
    let (s, e) = api_error(a, &get("/v2/nothing", ""), b"");
    assert_eq!((s, e.code.as_str()), (404, "not_found"));
    let (s, e) = api_error(a, &post("/v1/sessions", "", 0), b"");
    assert_eq!((s, e.code.as_str()), (405, "method_not_allowed"));
}

/// `bytes` (a norm state) with one metadata entry rewritten.
fn with_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut head: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    head["__metadata__"][key] = value.into();
    let h = serde_json::to_vec(&head).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    out
}

#[test]
fn versions_never_wrap_and_other_formats_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    let good = edge_state(0).to_bytes();
    for bad in [
        edge_state(MAX_NORM_VERSION).to_bytes(),
        with_meta(&good, "version", &u64::MAX.to_string()),
        with_meta(&good, "format", "cema-norm-state/2"),
    ] {
        let (status, code, _) = refused_code(c.open_session(&bad));
        assert_eq!((status, code.as_str()), (400, "bad_request"));
    }
    assert!(
        cloud.sessions().is_empty(),
        "a refused state opened a session"
    );
    // A session one short of the last version publishes it, then refuses to go further: its
    // version never wraps to 0.
    c.open_session(&edge_state(MAX_NORM_VERSION - 1).to_bytes())
        .unwrap();
    let ack = c.upload(&upload(0, 16), true).unwrap();
    assert_eq!(ack.version, Some(MAX_NORM_VERSION));
    let ack = c.upload(&upload(1, 16), true).unwrap();
    assert_eq!(ack.version, Some(MAX_NORM_VERSION));
    let state = cema_model::NormState::from_bytes(&c.latest_state().unwrap(), "state").unwrap();
    assert_eq!(state.version, MAX_NORM_VERSION);
}

fn closes_within(mut s: TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("still open after {:?} ({e}), read {got:?}", t.elapsed()),
    }
    got
}

#[test]
fn slow_idle_and_stalled_clients_are_cut() {
    let data = tempfile::tempdir().unwrap();
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(1),
        body_idle: Duration::from_secs(1),
        body_total: Duration::from_secs(3),
        ..HttpLimits::default()
    };
    let cloud = TestCloud::start_with(data.path(), |_| {}, limits);
    let a = cloud.addr;
    cloud
        .client("dev-a", "tok-a")
        .open_session(&edge_state(0).to_bytes())
        .unwrap();
    // Silent, dribbling (slowloris), a partial HTTP/2 preface, idle after one request.
    let silent = TcpStream::connect(a).unwrap();
    let mut dribble = TcpStream::connect(a).unwrap();
    dribble
        .write_all(b"GET /health HTTP/1.1\r\nhost: t\r\nx-a: ")
        .unwrap();
    let mut preface = TcpStream::connect(a).unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut idle = TcpStream::connect(a).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    for s in [silent, dribble, preface] {
        closes_within(s, Duration::from_secs(5));
    }
    let answered = closes_within(idle, Duration::from_secs(5));
    assert_eq!(parse_response(&answered).0, 200);

    // An authorised upload stalled mid-body: 408 in JSON, nothing stored.
    let body = upload(0, 16);
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(post("/v1/devices/dev-a/uploads", "Bearer tok-a", body.len()).as_bytes())
        .unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    let t = Instant::now();
    let raw = closes_within(s, Duration::from_secs(6));
    let (status, headers, answer) = parse_response(&raw);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let e: ApiError = serde_json::from_slice(&answer).unwrap();
    assert_eq!(e.code, "request_timeout");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // A dribbled body (a byte every half second: never idle a whole second) is cut by the
    // total deadline.
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(post("/v1/devices/dev-a/uploads", "Bearer tok-a", body.len()).as_bytes())
        .unwrap();
    let t = Instant::now();
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for b in &body {
        if s.write_all(&[*b]).is_err() || s.read_to_end(&mut answer).is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(8), "never cut");
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(parse_response(&answer).0, 408);
    assert_eq!(cloud.sessions()[0].next_seq, 0, "a cut upload was stored");
}

#[test]
fn connections_past_the_cap_get_a_json_503() {
    let data = tempfile::tempdir().unwrap();
    let limits = HttpLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    };
    let cloud = TestCloud::start_with(data.path(), |_| {}, limits);
    let a = cloud.addr;
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(a).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, body) = http(a, &get("/health", ""), b"");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let e: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.code, "unavailable");
    assert!(e.message.contains("2 connections"), "{}", e.message);
    drop(held);
    let t = Instant::now();
    loop {
        let (status, _, _) = http(a, &get("/health", ""), b"");
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "slots never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn shutdown_drains_within_its_deadline() {
    let data = tempfile::tempdir().unwrap();
    let limits = HttpLimits {
        drain: Duration::from_secs(1),
        body_idle: Duration::from_secs(60),
        body_total: Duration::from_secs(60),
        ..HttpLimits::default()
    };
    let cloud = TestCloud::start_with(data.path(), |_| {}, limits);
    cloud
        .client("dev-a", "tok-a")
        .open_session(&edge_state(0).to_bytes())
        .unwrap();
    // A half-sent request: headers whole, the body a few bytes short, and the client silent.
    let body = upload(0, 1);
    let mut s = TcpStream::connect(cloud.addr).unwrap();
    s.write_all(post("/v1/devices/dev-a/uploads", "Bearer tok-a", body.len()).as_bytes())
        .unwrap();
    s.write_all(&body[..body.len() - 3]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    cloud.stop();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    // The cut request changed nothing: the session resumes at sequence 0.
    let again = TestCloud::start(data.path(), |_| {});
    assert_eq!(again.sessions()[0].next_seq, 0);
}

#[test]
fn http2_over_cleartext_is_served() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}"])
        .arg(format!("{}/health", cloud.url()))
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

#[test]
fn metrics_are_classic_text_by_default_and_pass_promtool() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    c.upload(&upload(0, 16), true).unwrap();
    let _ = cloud.client("dev-a", "wrong").latest_state();
    let (s, h, body) = http(cloud.addr, &get("/metrics", ""), b"");
    assert_eq!(s, 200);
    assert_eq!(
        header(&h, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("cema_cloud_uploads_total 1\n"), "{text}");
    assert!(
        text.contains("cema_cloud_rejected_total{code=\"unauthorized\"} 1"),
        "{text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup.sh installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {} {}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A scraper asking for OpenMetrics gets it.
    let req = "GET /metrics HTTP/1.1\r\nhost: t\r\naccept: application/openmetrics-text; version=1.0.0\r\nconnection: close\r\n\r\n";
    let (_, h, body) = http(cloud.addr, req, b"");
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(String::from_utf8(body).unwrap().ends_with("# EOF\n"));
}

#[test]
fn an_empty_store_file_is_refused_not_started_over() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("cloud.redb"), b"").unwrap();
    let dir = models_dir();
    let opts = CloudOptions::new(
        dir.join("edge.safetensors"),
        dir.join("foundation.safetensors"),
        data.path().to_path_buf(),
    );
    let e = match Cloud::open(opts) {
        Ok(_) => panic!("an empty store opened"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("cloud.redb") && e.contains("empty"), "{e}");
    assert_eq!(
        std::fs::metadata(data.path().join("cloud.redb"))
            .unwrap()
            .len(),
        0
    );
}

/// A tmpfs of `mib` MiB at `dir`, unmounted on drop. Needs root (the suite runs as root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: usize) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs to fill (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` to the last byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    let mut step = chunk.len();
    while step > 0 {
        if f.write_all(&chunk[..step]).is_err() {
            step /= 2;
        }
    }
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_is_survived_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(root.path(), 8);
    let data = root.path().join("store");
    let cloud = TestCloud::start(&data, |_| {});
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    let mut seq = 0;
    c.upload(&upload(seq, 16), true).unwrap();
    seq += 1;
    fill(&root.path().join("ballast"));
    // Uploads are acknowledged while the store has room in its file, then refused with 503
    // and a retry hint; readiness says so.
    let refused = loop {
        match c.upload(&upload(seq, 16), false) {
            Ok(_) => seq += 1,
            Err(e) => break e,
        }
        assert!(seq < 400, "the disk never filled");
    };
    let (status, code, _) = refused_code(Err::<(), _>(refused.clone()));
    assert_eq!((status, code.as_str()), (503, "unavailable"), "{refused}");
    let (s, _, body) = http(cloud.addr, &get("/ready", ""), b"");
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&body));
    let (s, _, _) = http(cloud.addr, &get("/health", ""), b"");
    assert_eq!(s, 200, "alive, only not ready");
    // Space back: ready again, the refused upload goes through, rounds commit and publish.
    std::fs::remove_file(root.path().join("ballast")).unwrap();
    let (s, _, body) = http(cloud.addr, &get("/ready", ""), b"");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let ack = c.upload(&upload(seq, 16), true).unwrap();
    assert_eq!(ack.next_seq, seq + 1, "an acknowledged upload was lost");
    let before = cloud.sessions()[0].version;
    c.upload(&upload(seq + 1, 16), true).unwrap();
    assert!(cloud.sessions()[0].version > before);
    // And a restart finds every acknowledged upload.
    cloud.stop();
    let again = TestCloud::start(&data, |_| {});
    assert_eq!(again.sessions()[0].next_seq, seq + 2);
}

#[test]
fn the_openapi_document_agrees_with_the_server() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tools = repo.join("tools");
    let exe = tools.join(".venv/bin/schemathesis");
    assert!(
        exe.exists(),
        "{} missing: scripts/setup.sh installs schemathesis there",
        exe.display()
    );
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let state = data.path().join("state.safetensors");
    std::fs::write(&state, edge_state(0).to_bytes()).unwrap();
    let out = Command::new(&exe)
        // Its cache folder goes there, not into the source tree.
        .current_dir(data.path())
        .arg("--config-file")
        .arg(tools.join("schemathesis.toml"))
        .arg("run")
        .arg(repo.join("docs/openapi.yaml"))
        .args(["--url", &cloud.url(), "-H", "Authorization: Bearer tok-a"])
        .args(["--max-examples", "25", "--seed", "1"])
        .args(["--generation-database", "none", "--no-color"])
        // The update stream never ends on its own: its answers are checked by the Rust tests.
        .args([
            "--exclude-operation-id",
            "getUpdates",
            "--request-timeout",
            "10",
        ])
        .env("SCHEMATHESIS_HOOKS", "api_hooks")
        .env("PYTHONPATH", &tools)
        .env("CEMA_NORM_STATE", &state)
        .env("CEMA_MODEL_ID", MODEL_ID)
        .env("CEMA_GEOMETRY", "28x28x1")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "schemathesis found disagreements:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
