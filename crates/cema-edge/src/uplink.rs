//! The background uplink: a bounded queue of uploads sent in order under a byte budget.
//!
//! Drop policy: when queued samples would exceed the bound, the *oldest* queued samples are
//! dropped (their upload still goes out, empty, so the cloud's rounds keep pace with the edge's
//! batches). Under drift the freshest samples are the ones worth learning from. Every dropped
//! sample is counted. Inference never waits on this thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cema_wire::{EdgeTelemetry, ErrorCode, SessionInfo, UploadStamp, FEATURE_EDGE_STATS};

use crate::client::{ClientError, CloudClient};

/// One batch's upload, before it has a sequence number.
struct Item {
    pixels: Vec<u8>,
    n: usize,
    norm_version: u64,
    /// The edge's statistics, encoded, when it shares them (kept when the samples are dropped).
    stats: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UplinkCounters {
    /// Samples acknowledged by the cloud.
    pub acked_samples: u64,
    pub acked_uploads: u64,
    /// Samples dropped by the queue bound (the stated policy), never sent.
    pub dropped_samples: u64,
    /// Samples the cloud refused for good (bad request, too large): logged, not retried.
    pub refused_samples: u64,
    /// Upload bodies acknowledged, bytes (header + pixels).
    pub bytes_up: u64,
    /// Session (re)openings, bytes (the edge's norm state).
    pub session_bytes_up: u64,
    pub retries: u64,
    pub sessions_opened: u64,
    /// The cloud's published version at the last session opening.
    pub session_version: u64,
    /// Calls that got no answer (cloud unreachable, connection dropped, timeout).
    pub network_errors: u64,
}

struct Shared {
    queue: VecDeque<Item>,
    queued_samples: usize,
    /// The norm state to open (or reopen) the session with; `None` until the edge has one.
    session_state: Option<Vec<u8>>,
    session_open: bool,
    counters: UplinkCounters,
    /// A refusal no retry can fix (a bad token, a model the cloud does not serve): the thread
    /// stops and the runtime ends the stream with it.
    fatal: Option<ClientError>,
    /// The latest totals to report, if the edge reports them, and whether they were sent.
    telemetry: Option<(EdgeTelemetry, bool)>,
}

/// Telemetry goes out at most this often (it is for a dashboard that samples every second).
const TELEMETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Model id and geometry stamped on every upload.
    pub stamp: UploadStamp,
    /// Queue bound, samples.
    pub max_queued_samples: usize,
    /// Uplink budget in kilobits per second (`None`: unlimited).
    pub kbps: Option<f64>,
    /// The edge sends its statistics with its uploads: a cloud must list
    /// [`FEATURE_EDGE_STATS`] when the session opens, or the uplink stops with a clear error.
    pub share_stats: bool,
}

pub struct Uplink {
    client: CloudClient,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    max_queued: usize,
}

impl Uplink {
    pub fn start(client: CloudClient, config: UplinkConfig) -> Uplink {
        let shared = Arc::new((
            Mutex::new(Shared {
                queue: VecDeque::new(),
                queued_samples: 0,
                session_state: None,
                session_open: false,
                counters: UplinkCounters::default(),
                fatal: None,
                telemetry: None,
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let max_queued = config.max_queued_samples;
        let (s, st, c) = (shared.clone(), stop.clone(), client.clone());
        let thread = std::thread::Builder::new()
            .name("cema-uplink".into())
            .spawn(move || run(c, config, s, st))
            .expect("spawn uplink thread");
        Uplink {
            client,
            shared,
            stop,
            thread: Some(thread),
            max_queued,
        }
    }

    /// Sets the norm state the session is opened with (and reopened with, should the cloud
    /// lose it).
    pub fn set_session_state(&self, state: Vec<u8>) {
        let (m, cv) = &*self.shared;
        m.lock().expect("uplink lock").session_state = Some(state);
        cv.notify_all();
    }

    /// Replaces the session state without waking the thread (it is only needed on a reopen).
    pub fn set_session_state_quiet(&self, state: Vec<u8>) {
        self.shared.0.lock().expect("uplink lock").session_state = Some(state);
    }

    /// Queues one batch's selected samples (possibly none) and, from an edge that shares them,
    /// its statistics (encoded). Never blocks on the network.
    pub fn push(&self, pixels: Vec<u8>, n: usize, norm_version: u64, stats: Option<Vec<u8>>) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().expect("uplink lock");
        s.queue.push_back(Item {
            pixels,
            n,
            norm_version,
            stats,
        });
        s.queued_samples += n;
        // Drop the oldest queued samples past the bound. The head may be in flight and the
        // newest is what was just pushed: neither is emptied.
        let mut i = 1;
        while s.queued_samples > self.max_queued && i + 1 < s.queue.len() {
            let dropped = s.queue[i].n;
            if dropped > 0 {
                s.queue[i].pixels.clear();
                s.queue[i].n = 0;
                s.queued_samples -= dropped;
                s.counters.dropped_samples += dropped as u64;
            }
            i += 1;
        }
        cv.notify_all();
    }

    pub fn counters(&self) -> UplinkCounters {
        self.shared.0.lock().expect("uplink lock").counters.clone()
    }

    /// Replaces the totals reported to the cloud's dashboard (sent at most once a second).
    pub fn set_telemetry(&self, t: EdgeTelemetry) {
        self.shared.0.lock().expect("uplink lock").telemetry = Some((t, false));
    }

    /// The refusal that stopped the uplink for good, if one did.
    pub fn fatal(&self) -> Option<ClientError> {
        self.shared.0.lock().expect("uplink lock").fatal.clone()
    }

    /// Uploads not yet acknowledged.
    pub fn backlog(&self) -> usize {
        self.shared.0.lock().expect("uplink lock").queue.len()
    }

    /// Waits up to `deadline` for the queue to drain, then stops the thread.
    /// The final counters, or the refusal that stopped the thread for good.
    pub fn finish(mut self, deadline: Duration) -> Result<UplinkCounters, ClientError> {
        let t = Instant::now();
        while self.backlog() > 0 && self.fatal().is_none() && t.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Release);
        self.shared.1.notify_all();
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
        // The final totals, so the dashboard shows how the stream ended.
        let last = self.shared.0.lock().expect("uplink lock").telemetry.take();
        if let Some((t, false)) = last {
            if let Err(e) = self.client.telemetry(&t) {
                tracing::debug!(device = self.client.device(), "telemetry: {e}");
            }
        }
        match self.fatal() {
            Some(e) => Err(e),
            None => Ok(self.counters()),
        }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.shared.1.notify_all();
    }
}

/// Token bucket over bytes, at most one second of burst.
struct Budget {
    bytes_per_s: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// At `now`: takes `bytes` of tokens and returns zero if the bucket holds them, else how long
    /// until it will (taking nothing). A body larger than one second's budget passes once the
    /// bucket is full, so no upload waits forever.
    fn delay(&mut self, bytes: usize, now: Instant) -> Duration {
        let Some(rate) = self.bytes_per_s else {
            return Duration::ZERO;
        };
        let cap = rate.max(bytes as f64);
        self.tokens = (self.tokens + rate * (now - self.last).as_secs_f64()).min(cap);
        self.last = now;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            return Duration::ZERO;
        }
        Duration::from_secs_f64((bytes as f64 - self.tokens) / rate)
    }

    fn wait_for(&mut self, bytes: usize, stop: &AtomicBool) {
        loop {
            let wait = self.delay(bytes, Instant::now());
            if wait.is_zero() || stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(wait.min(Duration::from_millis(50)));
        }
    }
}

fn run(
    client: CloudClient,
    config: UplinkConfig,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stop: Arc<AtomicBool>,
) {
    let (m, cv) = &*shared;
    let mut next_seq = 0u64;
    let mut backoff = Backoff::default();
    let mut link = LinkHealth::default();
    let mut telemetry_at: Option<Instant> = None;
    let mut budget = Budget {
        bytes_per_s: config.kbps.map(|k| k * 1000.0 / 8.0),
        tokens: 0.0,
        last: Instant::now(),
    };
    while !stop.load(Ordering::Acquire) {
        // Open the session first: uploads before it would be refused.
        let session = {
            let s = m.lock().expect("uplink lock");
            if s.session_open {
                None
            } else if let Some(state) = &s.session_state {
                Some(state.clone())
            } else {
                let _ = cv.wait_timeout(s, Duration::from_millis(100));
                continue;
            }
        };
        if let Some(state) = session {
            let opened = client.open_session(&state);
            link.observe(
                &client,
                &opened,
                &mut m.lock().expect("uplink lock").counters,
            );
            let opened =
                opened.and_then(|info| check_features(info, config.share_stats, client.base()));
            match opened {
                Ok(info) => {
                    next_seq = info.next_seq;
                    let mut s = m.lock().expect("uplink lock");
                    s.session_open = true;
                    s.counters.sessions_opened += 1;
                    s.counters.session_bytes_up += state.len() as u64;
                    s.counters.session_version = info.version;
                    backoff.reset();
                    tracing::info!(
                        device = client.device(),
                        next_seq,
                        version = info.version,
                        created = info.created,
                        "session open"
                    );
                }
                Err(e) if is_fatal(&e) => {
                    tracing::error!(device = client.device(), "opening the session: {e}");
                    m.lock().expect("uplink lock").fatal = Some(e);
                    return;
                }
                Err(e @ ClientError::Refused { .. }) => {
                    tracing::warn!(device = client.device(), "opening the session: {e}");
                    backoff.sleep(&stop);
                }
                // The network (an unsupported cloud is fatal, above).
                Err(_) => backoff.sleep(&stop),
            }
            continue;
        }
        if telemetry_at.is_none_or(|t| t.elapsed() >= TELEMETRY_EVERY) {
            let due = m
                .lock()
                .expect("uplink lock")
                .telemetry
                .as_mut()
                .filter(|(_, sent)| !sent)
                .map(|(t, sent)| {
                    *sent = true;
                    t.clone()
                });
            if let Some(t) = due {
                telemetry_at = Some(Instant::now());
                if let Err(e) = client.telemetry(&t) {
                    tracing::debug!(device = client.device(), "telemetry: {e}");
                }
            }
        }
        let (body, n) = {
            let mut s = m.lock().expect("uplink lock");
            let Some(item) = s.queue.front() else {
                let _ = cv.wait_timeout(s, Duration::from_millis(100));
                continue;
            };
            let body = config.stamp.encode(
                next_seq,
                item.norm_version,
                &item.pixels,
                item.stats.as_deref(),
            );
            let n = item.n;
            s.counters.retries += u64::from(backoff.failures > 0);
            drop(s);
            (body, n)
        };
        budget.wait_for(body.len(), &stop);
        let outcome = client.upload(&body, false);
        let mut s = m.lock().expect("uplink lock");
        link.observe(&client, &outcome, &mut s.counters);
        match outcome {
            Ok(ack) => {
                next_seq = ack.next_seq;
                complete(&mut s, n, body.len(), true);
                backoff.reset();
            }
            Err(e) if is_fatal(&e) => {
                tracing::error!(device = client.device(), "upload: {e}");
                s.fatal = Some(e);
                return;
            }
            Err(ClientError::Refused {
                error,
                retry_after_s,
                ..
            }) => match error.error_code() {
                Some(ErrorCode::BadSequence) => {
                    let expected = error.expected_seq.unwrap_or(next_seq);
                    if expected > next_seq {
                        // The cloud has this upload already: its acknowledgement was lost.
                        complete(&mut s, n, body.len(), true);
                    }
                    next_seq = expected;
                }
                Some(ErrorCode::Overloaded | ErrorCode::Unavailable) => {
                    // Nothing was stored: the same upload goes again after the hinted wait.
                    drop(s);
                    let wait = Duration::from_secs(retry_after_s.unwrap_or(1).clamp(1, 30));
                    sleep_unless(wait, &stop);
                }
                Some(ErrorCode::RequestTimeout) => {
                    drop(s);
                    backoff.sleep(&stop);
                }
                Some(ErrorCode::NoSession) => {
                    // The cloud lost the session (e.g. a fresh data dir): reopen it.
                    tracing::warn!(
                        device = client.device(),
                        "{}: reopening the session",
                        error.message
                    );
                    s.session_open = false;
                    drop(s);
                    backoff.sleep(&stop);
                }
                _ => {
                    tracing::error!(
                        device = client.device(),
                        "upload refused for good: {}",
                        error.message
                    );
                    complete(&mut s, n, 0, false);
                }
            },
            // The network (fatal refusals returned above).
            Err(_) => {
                drop(s);
                backoff.sleep(&stop);
            }
        }
    }
}

fn complete(s: &mut Shared, n: usize, bytes: usize, acked: bool) {
    if let Some(item) = s.queue.pop_front() {
        s.queued_samples -= item.n;
    }
    if acked {
        s.counters.acked_samples += n as u64;
        s.counters.acked_uploads += 1;
        s.counters.bytes_up += bytes as u64;
    } else {
        s.counters.refused_samples += n as u64;
    }
}

fn sleep_unless(d: Duration, stop: &AtomicBool) {
    let t = Instant::now();
    while t.elapsed() < d && !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
}

/// Refusals no retry can fix: the device's token, a model or norm state this cloud will
/// never take, an extension it lacks. Everything else (overload, a full disk, a lost session,
/// the network) is retried.
fn is_fatal(e: &ClientError) -> bool {
    match e {
        ClientError::Refused { error, .. } => matches!(
            error.error_code(),
            Some(ErrorCode::Unauthorized | ErrorCode::UnknownModel | ErrorCode::NotFound)
        ),
        ClientError::Unsupported(_) => true,
        ClientError::Network(_) => false,
    }
}

/// The extensions this edge uses, against those the cloud listed when the session opened.
pub(crate) fn check_features(
    info: SessionInfo,
    share_stats: bool,
    cloud: &str,
) -> Result<SessionInfo, ClientError> {
    if share_stats && !info.features.iter().any(|f| f == FEATURE_EDGE_STATS) {
        return Err(ClientError::Unsupported(format!(
            "the cloud at {cloud} does not take edge statistics (its session answer lists no \
             `{FEATURE_EDGE_STATS}`; an older cloud?): run the edge without sharing its \
             statistics, or upgrade the cloud"
        )));
    }
    Ok(info)
}

/// Counts calls that got no answer and says so once per outage, not once per retry.
#[derive(Default)]
struct LinkHealth {
    down_since: Option<Instant>,
}

impl LinkHealth {
    fn observe<T>(
        &mut self,
        client: &CloudClient,
        r: &Result<T, ClientError>,
        counters: &mut UplinkCounters,
    ) {
        match (r, self.down_since) {
            (Err(e @ ClientError::Network(_)), None) => {
                tracing::warn!(
                    device = client.device(),
                    "cloud {} unreachable ({e}); retrying with backoff, inference goes on",
                    client.base()
                );
                self.down_since = Some(Instant::now());
                counters.network_errors += 1;
            }
            (Err(ClientError::Network(_)), Some(_)) => counters.network_errors += 1,
            (_, Some(t)) => {
                tracing::warn!(
                    device = client.device(),
                    "cloud {} reachable again after {:.1} s",
                    client.base(),
                    t.elapsed().as_secs_f64()
                );
                self.down_since = None;
            }
            (_, None) => {}
        }
    }
}

/// Exponential backoff with jitter: the n-th wait is uniform in [d/2, d], d = 50 ms doubling to
/// 2 s. The jitter keeps a fleet that lost its cloud from reconnecting in lockstep.
#[derive(Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait before the next retry.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let ms = (50u64 << self.failures.min(6)).min(2000);
        self.failures += 1;
        Duration::from_millis(ms / 2 + random_u64() % (ms / 2 + 1))
    }

    pub(crate) fn sleep(&mut self, stop: &AtomicBool) {
        let wait = self.next_wait();
        sleep_unless(wait, stop);
    }
}

/// A random number from the standard library's randomly keyed hasher: jitter needs no more.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_bucket_paces_to_its_rate_with_one_second_of_burst() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 8 kbit/s = 1 000 bytes/s, starting empty.
        let mut b = Budget {
            bytes_per_s: Some(1000.0),
            tokens: 0.0,
            last: t0,
        };
        assert_eq!(b.delay(500, at(0)), Duration::from_millis(500));
        assert_eq!(b.delay(500, at(500)), Duration::ZERO);
        assert_eq!(b.delay(500, at(1000)), Duration::ZERO);
        // Idle for 10 s: the burst is capped at one second's worth.
        assert_eq!(b.delay(1000, at(11_000)), Duration::ZERO);
        assert_eq!(b.delay(1, at(11_000)), Duration::from_millis(1));
        // A body over one second's budget passes once the bucket holds it whole.
        assert_eq!(b.delay(3000, at(12_000)), Duration::from_millis(2000));
        assert_eq!(b.delay(3000, at(14_000)), Duration::ZERO);
        let mut free = Budget {
            bytes_per_s: None,
            tokens: 0.0,
            last: t0,
        };
        assert_eq!(free.delay(1 << 30, at(0)), Duration::ZERO);
    }

    /// An uplink whose thread never sends: it has no norm state to open a session with.
    fn idle_uplink(max_queued_samples: usize) -> Uplink {
        let client = CloudClient::new("http://127.0.0.1:9", "d", "t", Duration::from_secs(1));
        let stamp = UploadStamp {
            model_id: "m".into(),
            height: 1,
            width: 1,
            channels: 1,
        };
        Uplink::start(
            client,
            UplinkConfig {
                stamp,
                max_queued_samples,
                kbps: None,
                share_stats: false,
            },
        )
    }

    fn queued(u: &Uplink) -> Vec<usize> {
        let s = u.shared.0.lock().unwrap();
        s.queue.iter().map(|i| i.n).collect()
    }

    #[test]
    fn past_its_bound_the_queue_drops_the_oldest_samples_but_keeps_every_upload() {
        let u = idle_uplink(10);
        for n in [4, 4, 4] {
            u.push(vec![7; n], n, 0, Some(vec![n as u8]));
        }
        // 12 > 10: the oldest droppable batch (the second; the head may be in flight) is emptied.
        assert_eq!(queued(&u), vec![4, 0, 4]);
        assert_eq!(u.counters().dropped_samples, 4);
        u.push(vec![7; 6], 6, 0, None);
        assert_eq!(queued(&u), vec![4, 0, 0, 6]);
        assert_eq!(u.counters().dropped_samples, 8);
        // The newest batch is never emptied, even alone over the bound.
        u.push(vec![7; 20], 20, 0, None);
        assert_eq!(queued(&u), vec![4, 0, 0, 0, 20]);
        assert_eq!(u.counters().dropped_samples, 14);
        assert_eq!(
            u.backlog(),
            5,
            "every batch keeps its upload (its cloud round)"
        );
        let s = u.shared.0.lock().unwrap();
        assert!(
            s.queue[1].pixels.is_empty(),
            "a dropped batch's pixels are freed"
        );
        assert_eq!(
            s.queue[1].stats,
            Some(vec![4]),
            "its statistics still go up with its (empty) upload"
        );
    }

    #[test]
    fn an_edge_sharing_statistics_stops_at_a_cloud_without_the_extension() {
        // What a cloud from before the extension answers (no `features` field at all).
        let old: SessionInfo = serde_json::from_str(
            r#"{"protocol":1,"device":"d","model_id":"m","version":0,"next_seq":0,"created":true}"#,
        )
        .unwrap();
        let e = check_features(old.clone(), true, "http://old:7878").unwrap_err();
        assert!(is_fatal(&e), "no retry makes an old cloud take statistics");
        let msg = e.to_string();
        assert!(
            msg.contains(FEATURE_EDGE_STATS) && msg.contains("http://old:7878"),
            "{msg}"
        );
        assert!(check_features(old.clone(), false, "x").is_ok());
        let new = SessionInfo {
            features: vec![FEATURE_EDGE_STATS.into()],
            ..old
        };
        assert!(check_features(new, true, "x").is_ok());
    }

    #[test]
    fn backoff_doubles_within_jitter_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..9).map(|_| b.next_wait().as_millis()).collect();
        for (i, w) in waits.iter().enumerate() {
            let d = (50u128 << i.min(6)).min(2000);
            assert!(
                (d / 2..=d).contains(w),
                "wait {i}: {w} ms outside [{}, {d}]",
                d / 2
            );
        }
        // Equal waits at the cap would mean no jitter (the chance of 3 equal draws is ~1e-6).
        assert!(waits[6..].windows(2).any(|w| w[0] != w[1]), "{waits:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(50));
    }
}
