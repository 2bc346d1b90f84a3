//! Names, slots and the JetStream resources of one model's fleet, created explicitly.
//!
//! Resources are created with plain stream requests rather than the client's KV helpers:
//! async-nats 0.52's `create_key_value` reads an account field a 2.9 server (Debian's) does not
//! send. A KV bucket is an ordinary stream named `KV_{bucket}` on `$KV.{bucket}.>`.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, stream};
use cema_cloud::SessionView;
use sha2::{Digest, Sha256};

/// How devices are spread over workers: a device's slot is fixed by its id; a slot is owned by
/// one worker at a time. Fixed for a deployment: gateways and workers must agree.
pub const SLOTS: u32 = 64;

/// The upload header carrying the device's sequence number.
pub const SEQ_HEADER: &str = "Cema-Seq";

/// Bytes of edge statistics heading an upload message's payload (issue #25's extension); a
/// message without it holds pixels only, as every message written before it did.
pub const STATS_HEADER: &str = "Cema-Stats-Len";

/// One upload as the stream holds it.
#[derive(Debug, Clone)]
pub struct LoggedUpload {
    pub seq: u64,
    /// u8 pixels, NHWC (possibly none).
    pub pixels: bytes::Bytes,
    /// The edge's statistics (`cema_wire::Upload::stats`), if it sent them.
    pub stats: Option<bytes::Bytes>,
}

impl LoggedUpload {
    /// From a stream message's headers and payload; `at` (its stream sequence) names it in
    /// errors.
    pub fn parse(
        headers: Option<&async_nats::HeaderMap>,
        payload: bytes::Bytes,
        at: u64,
    ) -> anyhow::Result<LoggedUpload> {
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let seq = get(SEQ_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("upload {at} has no {SEQ_HEADER}"))?;
        let (stats, pixels) = match get(STATS_HEADER) {
            None => (None, payload),
            Some(v) => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n <= payload.len())
                    .with_context(|| format!("upload {at}: {STATS_HEADER} {v:?}"))?;
                (Some(payload.slice(..n)), payload.slice(n..))
            }
        };
        Ok(LoggedUpload { seq, pixels, stats })
    }
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// A slot lease lapses this long after its holder's last renewal; a dead worker's slots move
    /// after at most this. Renewed every third of it.
    pub lease: Duration,
    /// Uploads kept per device (the replay buffer's source; older ones are dropped by the stream).
    pub uploads_per_device: i64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            lease: Duration::from_secs(6),
            uploads_per_device: 20_000,
        }
    }
}

/// A device id as one subject token and KV key part: letters, digits, `-` and `_` stand for
/// themselves, every other byte is `=XX` (NATS reserves `.`, `*`, `>` and whitespace).
pub fn token(device: &str) -> String {
    let mut out = String::with_capacity(device.len());
    for b in device.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The inverse of [`token`].
pub fn device_of(token: &str) -> Option<String> {
    let b = token.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

pub fn slot_of(device: &str) -> u32 {
    (hash64(&[device.as_bytes()]) % SLOTS as u64) as u32
}

/// The live worker that owns `slot` (rendezvous hashing: a worker joining or leaving moves only
/// the slots it wins or held).
pub fn owner_of(slot: u32, workers: &[String]) -> Option<&str> {
    workers
        .iter()
        .max_by_key(|w| (hash64(&[&slot.to_le_bytes(), w.as_bytes()]), w.as_str()))
        .map(String::as_str)
}

/// One model's fleet resources on a NATS server.
#[derive(Clone)]
pub struct Fleet {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub model_id: String,
    pub config: FleetConfig,
    /// Uploads: `cema.up.{tag}.{slot}.{device}`, payload the raw u8 pixels.
    pub uploads: stream::Stream,
    /// `{slot}.{device}` → [`crate::entry::SessionEntry`].
    pub sessions: kv::Store,
    /// `{device}` → the latest published norm state (safetensors).
    pub norm: kv::Store,
    /// `{device}` → [`Progress`]: a few bytes a gateway reads per upload (for 429s) and watches
    /// (for `?wait=true`) instead of the whole record.
    pub progress: kv::Store,
    /// `slot{n}` → the owning worker's id; entries lapse after [`FleetConfig::lease`].
    pub leases: kv::Store,
    /// `{worker}` → its start time; lapses like a lease, renewed with them.
    pub members: kv::Store,
    tag: String,
}

impl Fleet {
    /// Connects and creates what is missing (idempotent: every gateway and worker does it).
    pub async fn connect(url: &str, model_id: &str, config: FleetConfig) -> anyhow::Result<Fleet> {
        let client = async_nats::ConnectOptions::new()
            .name("cema")
            .retry_on_initial_connect()
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        // retry_on_initial_connect returns at once; wait for the first connection, bounded.
        let t = std::time::Instant::now();
        while client.connection_state() != async_nats::connection::State::Connected {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "no NATS server answers at {url} (10 s)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let js = jetstream::new(client.clone());
        let tag = model_tag(model_id);
        let uploads = ensure_stream(
            &js,
            stream::Config {
                name: format!("CEMA_UP_{tag}"),
                subjects: vec![format!("cema.up.{tag}.>")],
                storage: stream::StorageType::File,
                max_messages_per_subject: config.uploads_per_device,
                ..Default::default()
            },
        )
        .await?;
        let sessions = ensure_bucket(&js, &format!("cema_sess_{tag}"), None).await?;
        let norm = ensure_bucket(&js, &format!("cema_norm_{tag}"), None).await?;
        let progress = ensure_bucket(&js, &format!("cema_prog_{tag}"), None).await?;
        let leases = ensure_bucket(&js, &format!("cema_lease_{tag}"), Some(config.lease)).await?;
        let members = ensure_bucket(&js, &format!("cema_member_{tag}"), Some(config.lease)).await?;
        Ok(Fleet {
            client,
            js,
            model_id: model_id.to_string(),
            config,
            uploads,
            sessions,
            norm,
            progress,
            leases,
            members,
            tag,
        })
    }

    pub fn upload_subject(&self, device: &str) -> String {
        format!("cema.up.{}.{}.{}", self.tag, slot_of(device), token(device))
    }

    pub fn slot_subjects(&self, slot: u32) -> String {
        format!("cema.up.{}.{slot}.*", self.tag)
    }

    pub fn session_key(device: &str) -> String {
        format!("{}.{}", slot_of(device), token(device))
    }

    pub fn lease_key(slot: u32) -> String {
        format!("slot{slot}")
    }

    /// The last stored upload of a device: (its stream sequence, its seq), `None` before any.
    pub async fn last_upload(&self, device: &str) -> anyhow::Result<Option<(u64, u64)>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .uploads
            .get_last_raw_message_by_subject(&self.upload_subject(device))
            .await
        {
            Ok(m) => {
                let up = LoggedUpload::parse(Some(&m.headers), m.payload, m.sequence)?;
                Ok(Some((m.sequence, up.seq)))
            }
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// What the fleet holds of a device's session, as `cema cloud`'s `/v1/sessions` shows it
    /// (from its progress key and upload log: two small reads; `None`: no session).
    pub async fn session_view(&self, device: &str) -> anyhow::Result<Option<SessionView>> {
        let Some(bytes) = self.progress.get(token(device)).await? else {
            return Ok(None);
        };
        let p = Progress::from_bytes(&bytes)?;
        let next_seq = self.last_upload(device).await?.map_or(0, |(_, s)| s + 1);
        let learned = p.applied_seq.map_or(0, |a| a + 1);
        Ok(Some(SessionView {
            device: device.to_string(),
            version: p.version,
            next_seq,
            queued: next_seq.saturating_sub(learned) as usize,
            samples: p.samples,
            rounds: p.rounds,
            session_bytes: p.record_bytes as usize,
            ..SessionView::default()
        }))
    }

    /// Every stored upload of a device, in order.
    pub async fn read_log(&self, device: &str) -> anyhow::Result<Vec<LoggedUpload>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = self.upload_subject(device);
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            match self
                .uploads
                .get_first_raw_message_by_subject(&subject, from)
                .await
            {
                Ok(m) => {
                    from = m.sequence + 1;
                    out.push(LoggedUpload::parse(
                        Some(&m.headers),
                        m.payload,
                        m.sequence,
                    )?);
                }
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                    return Ok(out)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Appends upload `seq` of a device whose last stored upload is `last` (stream sequence,
    /// seq), so that a racing append of the same seq fails. `Ok(false)`: it lost the race (or
    /// was a duplicate), nothing was appended. With `stats`, they head the payload
    /// ([`STATS_HEADER`]).
    pub async fn append_upload(
        &self,
        device: &str,
        seq: u64,
        last: Option<(u64, u64)>,
        pixels: bytes::Bytes,
        stats: Option<&[u8]>,
    ) -> anyhow::Result<bool> {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SEQ_HEADER, seq.to_string().as_str());
        headers.insert("Nats-Msg-Id", format!("{}:{seq}", token(device)).as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.map_or(0, |(s, _)| s).to_string().as_str(),
        );
        let payload = match stats {
            None => pixels,
            Some(stats) => {
                headers.insert(STATS_HEADER, stats.len().to_string().as_str());
                [stats, &pixels[..]].concat().into()
            }
        };
        let ack = self
            .js
            .publish_with_headers(self.upload_subject(device), headers, payload)
            .await?
            .await;
        match ack {
            Ok(a) => Ok(!a.duplicate),
            Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every device with a session.
    pub async fn devices(&self) -> anyhow::Result<Vec<String>> {
        use futures_util::StreamExt;
        let mut keys = self.progress.keys().await?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.extend(device_of(&k?));
        }
        out.sort();
        Ok(out)
    }
}

/// How far a session's rounds have got: written by the owning worker after each commit and
/// publish (and by the gateway when the session opens), so it may trail the record, never lead
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The last upload whose round is committed.
    pub applied_seq: Option<u64>,
    /// The version published after it.
    pub version: u64,
    /// The session's counters then (for `/v1/sessions`).
    #[serde(default)]
    pub samples: u64,
    #[serde(default)]
    pub rounds: u64,
    /// The bytes of its record (the snapshot).
    #[serde(default)]
    pub record_bytes: u64,
}

impl Progress {
    pub fn to_bytes(self) -> bytes::Bytes {
        serde_json::to_vec(&self)
            .expect("serialising progress")
            .into()
    }

    pub fn from_bytes(b: &[u8]) -> anyhow::Result<Progress> {
        Ok(serde_json::from_slice(b)?)
    }
}

/// The newest `max_samples` samples of `uploads` (in order), oldest first: the replay buffer a
/// session had, as `RedbStore::replay_tail` reads it.
pub fn replay_tail(uploads: &[&LoggedUpload], image_size: usize, max_samples: usize) -> Vec<u8> {
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut held = 0usize;
    for up in uploads.iter().rev() {
        let px = &up.pixels[..];
        let n = px.len() / image_size.max(1);
        let take = n.min(max_samples - held);
        chunks.push(&px[(n - take) * image_size..]);
        held += take;
        if held >= max_samples {
            break;
        }
    }
    chunks.into_iter().rev().flatten().copied().collect()
}

/// A model id as a stream/bucket name part: readable, and unique by a hash suffix.
fn model_tag(model_id: &str) -> String {
    let readable: String = model_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    format!("{readable}_{:08x}", hash64(&[model_id.as_bytes()]) as u32)
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(s) => Ok(s),
        Err(_) => match js.create_stream(config).await {
            Ok(s) => Ok(s),
            // Another process created it meanwhile.
            Err(_) => js
                .get_stream(&name)
                .await
                .with_context(|| format!("JetStream stream {name}")),
        },
    }
}

async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<kv::Store> {
    ensure_stream(
        js,
        stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl.unwrap_or_default(),
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
    )
    .await?;
    js.get_key_value(bucket)
        .await
        .with_context(|| format!("KV bucket {bucket}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_subject_safe() {
        for d in ["cam-1", "a.b", "x y*>", "é", "=41", ""] {
            let t = token(d);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{t}"
            );
            assert_eq!(device_of(&t).as_deref(), Some(d));
        }
        assert_eq!(device_of("=4"), None);
    }

    #[test]
    fn slots_move_only_from_a_leaving_worker() {
        let three: Vec<String> = ["w1", "w2", "w3"].map(String::from).to_vec();
        let two: Vec<String> = ["w1", "w3"].map(String::from).to_vec();
        let mut owned = [0; 3];
        for s in 0..SLOTS {
            let before = owner_of(s, &three).unwrap();
            owned[three.iter().position(|w| w == before).unwrap()] += 1;
            if before != "w2" {
                assert_eq!(owner_of(s, &two), Some(before), "slot {s} moved");
            }
        }
        assert!(owned.iter().all(|&n| n > 8), "{owned:?}");
        assert_eq!(owner_of(0, &[]), None);
    }
}
