//! cema's wire protocol, version 1 (documented in `docs/protocol.md`, described as OpenAPI in
//! `docs/openapi.yaml`).
//!
//! Two binary encodings travel over HTTP, everything else is JSON:
//! - **Upload** (edge → cloud, `POST /v1/devices/{device}/uploads`): a fixed little-endian
//!   header, then the selected samples as raw u8 pixels (NHWC). Raw bytes, not floats: a
//!   28×28 image is 784 bytes, a quarter of its f32 form, and the cloud normalises it itself.
//! - **Update stream** (cloud → edge, `GET /v1/devices/{device}/updates`): a long-lived
//!   response body of length-prefixed frames, each a norm state as safetensors bytes (model
//!   id and version in its header). An empty frame is a heartbeat.
//!
//! The decoders are written by hand because the format is a dozen fixed fields; every length
//! is checked against the body and a hard limit before anything is allocated.

use serde::{Deserialize, Serialize};

mod errors;
mod norm_state;

pub use errors::ErrorCode;
pub use norm_state::{
    decode_norm_state, encode_norm_state, NormStateError, WireNormState, WireTensor,
    MAX_NORM_VERSION, NORM_STATE_FORMAT,
};

/// Protocol version; the upload magic carries it, `/health` and session bodies report it.
pub const PROTOCOL_VERSION: u32 = 1;

/// First 8 bytes of an upload body without a statistics section.
pub const UPLOAD_MAGIC: &[u8; 8] = b"CEMAUP01";

/// First 8 bytes of an upload body that carries the edge's running statistics (the
/// [`FEATURE_EDGE_STATS`] extension of v1): the same fields, then the statistics section, then
/// the pixels. A cloud without the extension answers it as any unknown magic: 400.
pub const UPLOAD_MAGIC_STATS: &[u8; 8] = b"CEMAUS01";

/// Longest statistics section accepted, in bytes (a ResNet-50's running statistics are about
/// 0.2 MB; the body limit applies as well).
pub const MAX_EDGE_STATS: usize = 4 << 20;

/// What a cloud lists in [`SessionInfo::features`] (and `/health`) when it takes uploads with
/// the edge's statistics ([`UPLOAD_MAGIC_STATS`]); an edge that shares its statistics checks
/// for it before sending any.
pub const FEATURE_EDGE_STATS: &str = "edge-stats";

/// Content type of upload bodies.
pub const UPLOAD_CONTENT_TYPE: &str = "application/x-cema-upload";

/// Content type of the update stream.
pub const UPDATES_CONTENT_TYPE: &str = "application/x-cema-updates";

/// Longest telemetry body accepted, in bytes (it is a few numbers of JSON).
pub const MAX_TELEMETRY: usize = 1024;

/// Content type of a single norm state (the session request body).
pub const NORM_STATE_CONTENT_TYPE: &str = "application/x-cema-norm-state";

/// Longest model id accepted, in bytes.
pub const MAX_MODEL_ID: usize = 256;

/// Pixel element types. Only u8 is accepted by the v1 cloud; the field exists so that a
/// client sending floats gets a clear "wrong dtype" instead of a size mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    U8 = 0,
    F32 = 1,
}

impl Dtype {
    fn from_u8(b: u8) -> Option<Dtype> {
        match b {
            0 => Some(Dtype::U8),
            1 => Some(Dtype::F32),
            _ => None,
        }
    }
    pub fn bytes(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 => 4,
        }
    }
}

/// The fixed fields of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadHeader {
    /// Per-device sequence number: 0, 1, 2, … with no gaps. One upload is one cloud round,
    /// so an edge sends one per batch even when it selected nothing (`n = 0`).
    pub seq: u64,
    /// The norm-state version the edge predicted with.
    pub norm_version: u64,
    pub model_id: String,
    pub n: u32,
    pub height: u16,
    pub width: u16,
    pub channels: u8,
    pub dtype: Dtype,
}

impl UploadHeader {
    /// Bytes of pixel payload the header announces.
    pub fn payload_len(&self) -> u64 {
        self.n as u64
            * self.height as u64
            * self.width as u64
            * self.channels as u64
            * self.dtype.bytes() as u64
    }
}

/// A decoded upload: header, pixels (u8, NHWC) and, from an edge that shares them, its running
/// statistics (`cema_model::NormState::to_stats_bytes`: a layout fingerprint and the values; the
/// cloud reads them against its model, which this crate does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub header: UploadHeader,
    pub pixels: Vec<u8>,
    pub stats: Option<Vec<u8>>,
}

/// Why bytes were not a valid message. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("body is {0} bytes, shorter than the upload header")]
    Truncated(usize),
    #[error("bad magic {0:?}: not a cema v1 upload (expected \"CEMAUP01\" or \"CEMAUS01\")")]
    BadMagic(Vec<u8>),
    #[error("statistics section of {0} bytes: expected 1 to {MAX_EDGE_STATS}")]
    BadStatsLength(u64),
    #[error("model id is {0} bytes (at most {MAX_MODEL_ID}) or not UTF-8")]
    BadModelId(usize),
    #[error("unknown dtype code {0}")]
    BadDtype(u8),
    #[error("header announces {announced} bytes of pixels, body carries {actual}")]
    LengthMismatch { announced: u64, actual: u64 },
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("image geometry {0}×{1}×{2} has a zero dimension")]
    EmptyGeometry(u16, u16, u8),
}

/// Serialises an upload (the edge side); with `stats`, in the statistics layout
/// ([`UPLOAD_MAGIC_STATS`]).
pub fn encode_upload(header: &UploadHeader, stats: Option<&[u8]>, pixels: &[u8]) -> Vec<u8> {
    let id = header.model_id.as_bytes();
    let extra = stats.map_or(0, |s| 4 + s.len());
    let mut out = Vec::with_capacity(8 + 8 + 8 + 2 + id.len() + 10 + extra + pixels.len());
    out.extend_from_slice(if stats.is_some() {
        UPLOAD_MAGIC_STATS
    } else {
        UPLOAD_MAGIC
    });
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(&header.norm_version.to_le_bytes());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&header.n.to_le_bytes());
    out.extend_from_slice(&header.height.to_le_bytes());
    out.extend_from_slice(&header.width.to_le_bytes());
    out.push(header.channels);
    out.push(header.dtype as u8);
    if let Some(stats) = stats {
        let len = u32::try_from(stats.len()).expect("statistics under 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(stats);
    }
    out.extend_from_slice(pixels);
    out
}

/// What every upload of one device carries besides its sequence number, version and pixels: the
/// model id and the image geometry. The one place an upload header is assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStamp {
    pub model_id: String,
    pub height: u16,
    pub width: u16,
    pub channels: u8,
}

impl UploadStamp {
    /// Bytes of one u8 image.
    pub fn image_size(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// The header of upload `seq` carrying `n` u8 images, predicted with `norm_version`.
    pub fn header(&self, seq: u64, norm_version: u64, n: usize) -> UploadHeader {
        UploadHeader {
            seq,
            norm_version,
            model_id: self.model_id.clone(),
            n: u32::try_from(n).expect("fewer than 2^32 images in one upload"),
            height: self.height,
            width: self.width,
            channels: self.channels,
            dtype: Dtype::U8,
        }
    }

    /// The body of upload `seq`: `pixels` holds whole u8 images (NHWC) of this geometry;
    /// `stats`, the edge's running statistics when it shares them.
    pub fn encode(
        &self,
        seq: u64,
        norm_version: u64,
        pixels: &[u8],
        stats: Option<&[u8]>,
    ) -> Vec<u8> {
        let size = self.image_size().max(1);
        assert_eq!(
            pixels.len() % size,
            0,
            "upload pixels are not whole {}×{}×{} images",
            self.height,
            self.width,
            self.channels
        );
        let header = self.header(seq, norm_version, pixels.len() / size);
        encode_upload(&header, stats, pixels)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(WireError::Truncated(self.buf.len()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
}

/// Parses an upload body of at most `limit` bytes. The payload length must equal what the
/// header announces; nothing is allocated before that is known to hold.
pub fn decode_upload(body: &[u8], limit: usize) -> Result<Upload, WireError> {
    if body.len() > limit {
        return Err(WireError::TooLarge {
            size: body.len() as u64,
            limit: limit as u64,
        });
    }
    let mut r = Reader { buf: body, pos: 0 };
    let magic = r.take(8)?;
    let with_stats = magic == UPLOAD_MAGIC_STATS;
    if magic != UPLOAD_MAGIC && !with_stats {
        return Err(WireError::BadMagic(magic.to_vec()));
    }
    let seq = r.u64()?;
    let norm_version = r.u64()?;
    let id_len = r.u16()? as usize;
    if id_len > MAX_MODEL_ID {
        return Err(WireError::BadModelId(id_len));
    }
    let model_id = std::str::from_utf8(r.take(id_len)?)
        .map_err(|_| WireError::BadModelId(id_len))?
        .to_string();
    let n = r.u32()?;
    let height = r.u16()?;
    let width = r.u16()?;
    let channels = r.u8()?;
    let code = r.u8()?;
    let dtype = Dtype::from_u8(code).ok_or(WireError::BadDtype(code))?;
    if height == 0 || width == 0 || channels == 0 {
        return Err(WireError::EmptyGeometry(height, width, channels));
    }
    let header = UploadHeader {
        seq,
        norm_version,
        model_id,
        n,
        height,
        width,
        channels,
        dtype,
    };
    let stats = if with_stats {
        let len = r.u32()? as usize;
        if len == 0 || len > MAX_EDGE_STATS {
            return Err(WireError::BadStatsLength(len as u64));
        }
        Some(r.take(len)?.to_vec())
    } else {
        None
    };
    let actual = (body.len() - r.pos) as u64;
    if header.payload_len() != actual {
        return Err(WireError::LengthMismatch {
            announced: header.payload_len(),
            actual,
        });
    }
    Ok(Upload {
        header,
        pixels: body[r.pos..].to_vec(),
        stats,
    })
}

/// One frame of the update stream: u32 little-endian length, then the payload.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Incremental decoder of the update stream: feed it whatever the socket delivered, take
/// complete frames out. A frame longer than the limit is an error (the stream is then
/// unusable and the client reconnects).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl FrameDecoder {
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            limit,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame (empty for a heartbeat), `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4")) as usize;
        if len > self.limit {
            return Err(WireError::TooLarge {
                size: len as u64,
                limit: self.limit as u64,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// `PUT /v1/devices/{device}/session` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub protocol: u32,
    pub device: String,
    pub model_id: String,
    /// The latest published norm-state version (0: none yet).
    pub version: u64,
    /// The sequence number the cloud expects next from this device.
    pub next_seq: u64,
    /// Whether this call created the session (false: an existing one was resumed).
    pub created: bool,
    /// Optional extensions of v1 this cloud takes (e.g. [`FEATURE_EDGE_STATS`]); absent from
    /// clouds that take none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// `POST /v1/devices/{device}/uploads` answer (202: durably queued).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAck {
    pub seq: u64,
    pub next_seq: u64,
    /// Uploads queued for this session and not yet learned from.
    pub queued: u64,
    /// With `?wait=true`: the latest published norm-state version once this upload's round ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// `PUT /v1/devices/{device}/telemetry`: what an edge that knows its labels (a demo, a labelled
/// trial) reports for the dashboard. Running totals since the edge started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeTelemetry {
    /// Images predicted.
    #[serde(deserialize_with = "whole::number")]
    pub images: u64,
    /// Of those, predicted correctly.
    #[serde(deserialize_with = "whole::number")]
    pub correct: u64,
    /// Correct predictions of the unadapted model on the same images, if the edge runs it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::optional"
    )]
    pub source_correct: Option<u64>,
    /// The norm-state version the edge predicts with.
    #[serde(deserialize_with = "whole::number")]
    pub norm_version: u64,
}

/// Counts in JSON bodies: a whole number in any JSON spelling (`12` or `12.0`, both integers to
/// JSON Schema and to JavaScript), never a fraction or a negative.
mod whole {
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number from 0 to 2^64 - 1")
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 itself is not representable; every f64 below it that is whole converts exactly.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number from 0 to 2^64 - 1"
                )))
            }
        }
    }

    pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct Maybe;
        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null or a whole number")
            }
            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                number(d).map(Some)
            }
        }
        d.deserialize_option(Maybe)
    }
}

impl EdgeTelemetry {
    /// Totals that cannot be: more correct than predicted.
    pub fn check(&self) -> Result<(), String> {
        let over = |c: u64| c > self.images;
        if over(self.correct) || self.source_correct.is_some_and(over) {
            return Err(format!(
                "telemetry counts more correct predictions than the {} images",
                self.images
            ));
        }
        Ok(())
    }
}

/// Every error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code ([`ErrorCode`] as text). A string on the wire, so that a
    /// client reads codes a newer cloud introduces (see [`ApiError::error_code`]).
    pub code: String,
    pub message: String,
    /// For `bad_sequence`: the sequence number the cloud expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code: code.as_str().to_string(),
            message: message.into(),
            expected_seq: None,
        }
    }

    /// The code, if this client knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn telemetry_counts_are_whole_numbers_in_any_spelling() {
        let t: EdgeTelemetry = serde_json::from_str(
            r#"{"images": 12.0, "correct": 7, "source_correct": null, "norm_version": 3}"#,
        )
        .unwrap();
        assert_eq!((t.images, t.correct, t.source_correct), (12, 7, None));
        for bad in [
            r#"{"images": 1.5, "correct": 0, "norm_version": 0}"#,
            r#"{"images": -1, "correct": 0, "norm_version": 0}"#,
            r#"{"images": 1e300, "correct": 0, "norm_version": 0}"#,
            r#"{"images": 1, "correct": 0, "norm_version": 0, "extra": 1}"#,
            r#"{"images": 1, "norm_version": 0}"#,
        ] {
            assert!(serde_json::from_str::<EdgeTelemetry>(bad).is_err(), "{bad}");
        }
        let over = EdgeTelemetry {
            images: 2,
            correct: 3,
            ..EdgeTelemetry::default()
        };
        assert!(over.check().is_err());
    }

    fn header(n: u32) -> UploadHeader {
        UploadHeader {
            seq: 7,
            norm_version: 3,
            model_id: "edge-r8".into(),
            n,
            height: 28,
            width: 28,
            channels: 1,
            dtype: Dtype::U8,
        }
    }

    #[test]
    fn upload_round_trips() {
        let pixels: Vec<u8> = (0..2 * 784).map(|i| i as u8).collect();
        let bytes = encode_upload(&header(2), None, &pixels);
        let up = decode_upload(&bytes, 1 << 20).unwrap();
        assert_eq!(up.header, header(2));
        assert_eq!(up.pixels, pixels);
        let empty = decode_upload(&encode_upload(&header(0), None, &[]), 1 << 20).unwrap();
        assert_eq!(empty.header.n, 0);
        assert_eq!((up.stats, empty.stats), (None, None));
    }

    #[test]
    fn an_upload_with_statistics_round_trips_and_a_bad_section_names_itself() {
        let pixels: Vec<u8> = (0..784).map(|i| i as u8).collect();
        let stats = b"statistics".to_vec();
        let bytes = encode_upload(&header(1), Some(&stats), &pixels);
        assert_eq!(&bytes[..8], UPLOAD_MAGIC_STATS);
        let up = decode_upload(&bytes, 1 << 20).unwrap();
        assert_eq!(
            (up.header, up.pixels, up.stats),
            (header(1), pixels.clone(), Some(stats))
        );
        // Statistics with nothing selected are well-formed too (the cloud decides).
        let none = decode_upload(&encode_upload(&header(0), Some(b"s"), &[]), 1 << 20).unwrap();
        assert_eq!(none.stats.as_deref(), Some(&b"s"[..]));
        let at = 8 + 8 + 8 + 2 + 7 + 4 + 2 + 2 + 1 + 1;
        for (len, want) in [
            (0u32, Some(0)),
            (u32::MAX, Some(u32::MAX as u64)),
            (11, None),
        ] {
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&len.to_le_bytes());
            match (decode_upload(&bad, 1 << 20), want) {
                (Err(WireError::BadStatsLength(got)), Some(want)) => assert_eq!(got, want),
                // One byte more of statistics leaves one byte short of the pixels.
                (Err(WireError::LengthMismatch { .. }), None) => {}
                (other, _) => panic!("length {len}: {other:?}"),
            }
        }
        assert!(matches!(
            decode_upload(&bytes[..at + 6], 1 << 20),
            Err(WireError::Truncated(_))
        ));
    }

    #[test]
    fn bad_uploads_name_the_fault() {
        let pixels = vec![0u8; 784];
        let good = encode_upload(&header(1), None, &pixels);
        assert!(matches!(
            decode_upload(&good, 100),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_upload(&good[..good.len() - 1], 1 << 20),
            Err(WireError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_upload(&good[..20], 1 << 20),
            Err(WireError::Truncated(20))
        ));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            decode_upload(&magic, 1 << 20),
            Err(WireError::BadMagic(_))
        ));
        let f32s = encode_upload(
            &UploadHeader {
                dtype: Dtype::F32,
                ..header(1)
            },
            None,
            &pixels,
        );
        // A float upload with u8-sized payload: the announced size (4×) does not match.
        assert!(matches!(
            decode_upload(&f32s, 1 << 20),
            Err(WireError::LengthMismatch { .. })
        ));
        let mut dtype = good.clone();
        let at = 8 + 8 + 8 + 2 + 7 + 4 + 2 + 2 + 1;
        dtype[at] = 9;
        assert_eq!(decode_upload(&dtype, 1 << 20), Err(WireError::BadDtype(9)));
    }

    #[test]
    fn frames_decode_across_arbitrary_splits() {
        let mut stream = encode_frame(b"hello");
        stream.extend(encode_frame(b""));
        stream.extend(encode_frame(&[1u8; 300]));
        for split in 0..stream.len() {
            let mut d = FrameDecoder::new(1000);
            d.push(&stream[..split]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            d.push(&stream[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![b"hello".to_vec(), vec![], vec![1u8; 300]]);
            assert_eq!(d.buffered(), 0);
        }
        let mut d = FrameDecoder::new(10);
        d.push(&encode_frame(&[0u8; 11]));
        assert!(d.next_frame().is_err());
    }

    proptest! {
        // Garbage never panics and never decodes into a payload the header does not announce.
        #[test]
        fn decode_upload_never_panics(body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(up) = decode_upload(&body, 1 << 16) {
                prop_assert_eq!(up.header.payload_len(), up.pixels.len() as u64);
            }
        }

        #[test]
        fn corrupted_magic_prefix_is_handled(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut body = UPLOAD_MAGIC.to_vec();
            body.extend(tail);
            let _ = decode_upload(&body, 1 << 16);
        }

        #[test]
        fn frame_decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
            let mut d = FrameDecoder::new(1 << 12);
            for c in chunks {
                d.push(&c);
                while let Ok(Some(_)) = d.next_frame() {}
            }
        }
    }
}
