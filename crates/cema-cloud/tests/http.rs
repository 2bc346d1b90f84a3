//! The cloud over real loopback sockets, on tiny models: sessions, uploads, pushed updates,
//! every kind of bad request, restarts, backpressure.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cema_edge::ClientError;
use cema_model::NormState;
use cema_wire::{encode_upload, Dtype, FrameDecoder, UploadHeader};
use common::*;

#[test]
fn a_session_learns_from_uploads_and_pushes_versions_on_the_stream() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    let info = c.open_session(&edge_state(0).to_bytes()).unwrap();
    assert!(info.created);
    assert_eq!(
        (info.version, info.next_seq, info.model_id.as_str()),
        (0, 0, MODEL_ID)
    );
    // Opening again resumes.
    assert!(!c.open_session(&edge_state(0).to_bytes()).unwrap().created);

    let mut stream = c.updates(0).unwrap();
    let ack = c.upload(&upload(0, 16), true).unwrap();
    assert_eq!((ack.seq, ack.next_seq, ack.version), (0, 1, Some(1)));
    // An empty upload is a round too (replay is still cold here: nothing to publish).
    let ack = c.upload(&upload(1, 0), true).unwrap();
    assert_eq!(ack.version, Some(1));

    let mut dec = FrameDecoder::new(1 << 20);
    let mut buf = [0u8; 4096];
    let state = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended");
        dec.push(&buf[..n]);
        if let Some(f) = dec.next_frame().unwrap() {
            if !f.is_empty() {
                break NormState::from_bytes(&f, "frame").unwrap();
            }
        }
    };
    assert_eq!((state.model_id.as_str(), state.version), (MODEL_ID, 1));
    let latest = NormState::from_bytes(&c.latest_state().unwrap(), "state").unwrap();
    assert_eq!(latest, state);
    let s = &cloud.sessions()[0];
    assert_eq!((s.version, s.next_seq, s.uploads, s.samples), (1, 2, 2, 16));

    let health: serde_json::Value = serde_json::from_str(&cloud.get("/health")).unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = cloud.get("/metrics");
    assert!(metrics.contains("cema_cloud_uploads_total 2"), "{metrics}");
    assert!(
        metrics.contains("cema_cloud_published_total 1"),
        "{metrics}"
    );
    let page = cloud.get("");
    // The dashboard, drawn by its script from /v1/dashboard (tests/dashboard.rs runs it).
    assert!(page.contains("id=\"version\"") && page.contains("/v1/dashboard"));
    let dash: serde_json::Value = serde_json::from_str(&cloud.get("/v1/dashboard")).unwrap();
    assert_eq!(dash["model_id"], MODEL_ID);
    assert_eq!(dash["sessions"], 1);
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    c.upload(&upload(0, 16), true).unwrap();
    let before = cloud.sessions();

    // Unknown device, wrong token: the same 401.
    for (d, t) in [("dev-x", "tok-a"), ("dev-a", "wrong")] {
        let bad = cloud.client(d, t);
        assert_eq!(refused_code(bad.upload(&upload(1, 1), false)).0, 401);
        assert_eq!(
            refused_code(bad.open_session(&edge_state(0).to_bytes())).1,
            "unauthorized"
        );
        assert_eq!(refused_code(bad.latest_state()).0, 401);
    }
    // A registered device without a session.
    let b = cloud.client("dev-b", "tok-b");
    assert_eq!(refused_code(b.upload(&upload(0, 1), false)).1, "no_session");
    assert_eq!(refused_code(b.updates(0).map(|_| ())).1, "no_session");
    // Unknown model, in the session body and in an upload.
    let mut other = edge_state(0);
    other.model_id = "resnet-999".into();
    assert_eq!(
        refused_code(b.open_session(&other.to_bytes())).1,
        "unknown_model"
    );
    let mut h = UploadHeader {
        seq: 1,
        norm_version: 0,
        model_id: "resnet-999".into(),
        n: 1,
        height: 28,
        width: 28,
        channels: 1,
        dtype: Dtype::U8,
    };
    assert_eq!(
        refused_code(c.upload(&encode_upload(&h, None, &images(0, 1)), false)).1,
        "unknown_model"
    );
    // Wrong geometry; floats instead of u8.
    h.model_id = MODEL_ID.into();
    h.height = 32;
    h.width = 32;
    let (status, code, _) =
        refused_code(c.upload(&encode_upload(&h, None, &vec![0u8; 32 * 32]), false));
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    h.height = 28;
    h.width = 28;
    h.dtype = Dtype::F32;
    assert_eq!(
        refused_code(c.upload(&encode_upload(&h, None, &vec![0u8; 4 * IMAGE]), false)).0,
        400
    );
    // Truncated body, garbage, oversize body (the hard limit is 64 KiB here).
    let good = upload(1, 2);
    assert_eq!(
        refused_code(c.upload(&good[..good.len() - 5], false)).0,
        400
    );
    assert_eq!(
        refused_code(c.upload(b"GET / HTTP/1.1 garbage", false)).0,
        400
    );
    assert_eq!(
        refused_code(c.upload(&upload(1, 100), false)).1,
        "too_large"
    );
    // Far over the limit (1.1 MB, more than the sockets buffer): the refusal still arrives,
    // because the cloud reads and discards the rest before closing instead of resetting the
    // connection under the client's feet.
    assert_eq!(
        refused_code(c.upload(&upload(1, 1400), false)).1,
        "too_large"
    );
    // Replayed and out-of-order sequence numbers name the expected one.
    assert_eq!(
        refused_code(c.upload(&upload(0, 1), false)),
        (409, "bad_sequence".into(), Some(1))
    );
    assert_eq!(
        refused_code(c.upload(&upload(5, 1), false)),
        (409, "bad_sequence".into(), Some(1))
    );
    // Session states with NaN, a missing tensor or a wrong shape.
    let mut nan = edge_state(0);
    nan.tensors.values_mut().next().unwrap().data[0] = f32::NAN;
    let mut missing = edge_state(0);
    let first = missing.tensors.keys().next().unwrap().clone();
    missing.tensors.remove(&first);
    let mut shape = edge_state(0);
    let t = shape.tensors.values_mut().next().unwrap();
    t.data.push(1.0);
    t.shape[0] += 1;
    for bad in [nan, missing, shape] {
        assert_eq!(
            refused_code(b.open_session(&bad.to_bytes())).1,
            "bad_request"
        );
    }
    assert_eq!(
        refused_code(b.open_session(b"not safetensors")).1,
        "bad_request"
    );
    // Raw garbage on the socket: the server answers 400 or closes, and keeps serving.
    let mut s = TcpStream::connect(cloud.addr).unwrap();
    s.write_all(b"\x00\x01\x02garbage\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut sink);
    assert!(
        sink.is_empty() || sink.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&sink)
    );

    assert_eq!(
        cloud.sessions(),
        before,
        "a refused request changed a session"
    );
    // And the session still works.
    assert_eq!(c.upload(&upload(1, 16), true).unwrap().seq, 1);
}

#[test]
fn a_connection_dropped_mid_upload_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    let before = cloud.sessions();
    let body = upload(0, 16);
    let mut s = TcpStream::connect(cloud.addr).unwrap();
    write!(
        s,
        "POST /v1/devices/dev-a/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-a\r\n\
         Content-Type: application/x-cema-upload\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cloud.sessions(), before);
    // The same sequence number goes through afterwards.
    assert_eq!(c.upload(&body, true).unwrap().seq, 0);
}

#[test]
fn a_restarted_cloud_resumes_every_session_exactly() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = edge_state(0).to_bytes();
    // One cloud restarted after 4 uploads, one never restarted: the same 6 uploads must give
    // the same versions and bytes.
    let cloud = TestCloud::start(d1.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&state).unwrap();
    for seq in 0..4 {
        c.upload(&upload(seq, 24), true).unwrap();
    }
    let before = cloud.sessions();
    let v_before = NormState::from_bytes(&c.latest_state().unwrap(), "s").unwrap();
    cloud.stop();

    let cloud = TestCloud::start(d1.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    let info = c.open_session(&state).unwrap();
    assert!(!info.created);
    assert_eq!((info.version, info.next_seq), (v_before.version, 4));
    let after = NormState::from_bytes(&c.latest_state().unwrap(), "s").unwrap();
    assert_eq!(after, v_before, "the published state survived the restart");
    let s = &cloud.sessions()[0];
    assert_eq!(
        (s.samples, s.rounds, s.replay),
        (before[0].samples, before[0].rounds, before[0].replay)
    );
    for seq in 4..6 {
        c.upload(&upload(seq, 24), true).unwrap();
    }
    let resumed = c.latest_state().unwrap();

    let straight = TestCloud::start(d2.path(), |_| {});
    let c2 = straight.client("dev-a", "tok-a");
    c2.open_session(&state).unwrap();
    for seq in 0..6 {
        c2.upload(&upload(seq, 24), true).unwrap();
    }
    let (a, b) = (
        NormState::from_bytes(&c2.latest_state().unwrap(), "straight").unwrap(),
        NormState::from_bytes(&resumed, "resumed").unwrap(),
    );
    assert_eq!(a.version, b.version);
    let diff: Vec<String> = a
        .tensors
        .iter()
        .filter(|(k, t)| t.data != b.tensors[*k].data)
        .map(|(k, t)| {
            let d = t
                .data
                .iter()
                .zip(&b.tensors[k].data)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            format!("{k}: {d:e}")
        })
        .collect();
    assert!(
        diff.is_empty(),
        "resumed and uninterrupted sessions differ: {diff:?}"
    );
}

#[test]
fn a_slow_cloud_answers_429_with_a_retry_hint_and_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |o| {
        o.max_queued = 2;
        o.round_delay = Duration::from_millis(300);
    });
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    let (mut acked, mut overloaded) = (0u64, 0);
    let mut seq = 0;
    while seq < 6 {
        match c.upload(&upload(seq, 8), false) {
            Ok(_) => {
                acked += 8;
                seq += 1;
            }
            Err(ClientError::Refused {
                status: 429,
                retry_after_s,
                ..
            }) => {
                assert_eq!(retry_after_s, Some(1));
                overloaded += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        overloaded > 0,
        "a queue bound of 2 with 300 ms rounds must push back"
    );
    let t = Instant::now();
    while cloud.sessions()[0].samples < acked && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = &cloud.sessions()[0];
    assert_eq!((s.samples, s.next_seq, s.queued), (acked, 6, 0));
}
