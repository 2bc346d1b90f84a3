//! The norm-state encoding: every normalization layer's γ, β and running statistics as f32
//! safetensors, with the model id, the version and a format marker in the header's metadata.
//! It is both the session request body and each frame of the update stream.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};

/// The `format` metadata every norm state carries. A state with any other marker (a future
/// `cema-norm-state/2`, or a checkpoint sent by mistake) is refused, not guessed at.
pub const NORM_STATE_FORMAT: &str = "cema-norm-state/1";

/// Versions above this are refused on both sides: the next version must exist (a version never
/// repeats or regresses), and every version stays exact as a JSON number in any client
/// (2^53 − 1, JavaScript's largest safe integer).
pub const MAX_NORM_VERSION: u64 = (1 << 53) - 1;

/// One tensor of a norm state, f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A decoded norm state. Names, shapes and finiteness are checked against the model by the
/// receiver (cema-model), which knows what they must be.
#[derive(Debug, Clone, PartialEq)]
pub struct WireNormState {
    pub model_id: String,
    pub version: u64,
    pub tensors: BTreeMap<String, WireTensor>,
}

/// Why bytes were not a norm state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormStateError {
    #[error("not safetensors: {0}")]
    Safetensors(String),
    #[error("metadata has no `{0}`")]
    MissingMetadata(&'static str),
    #[error("format `{0}` is not {NORM_STATE_FORMAT}")]
    Format(String),
    #[error("version `{0}` is not a whole number up to {MAX_NORM_VERSION}")]
    Version(String),
    #[error("tensor `{name}` is {dtype}; norm states are F32")]
    Dtype { name: String, dtype: String },
}

/// Serialises a norm state. Tensors are written in name order, so equal states are equal bytes.
pub fn encode_norm_state<'a>(
    model_id: &str,
    version: u64,
    tensors: impl IntoIterator<Item = (&'a str, &'a WireTensor)>,
) -> Vec<u8> {
    let mut bytes: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n, t.shape.as_slice(), b)
        })
        .collect();
    bytes.sort_by(|a, b| a.0.cmp(b.0));
    let views = bytes.iter().map(|(n, shape, b)| {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), b).expect("consistent f32 view");
        (n.to_string(), view)
    });
    let meta = HashMap::from([
        ("model_id".to_string(), model_id.to_string()),
        ("version".to_string(), version.to_string()),
        ("format".to_string(), NORM_STATE_FORMAT.to_string()),
    ]);
    safetensors::serialize(views, Some(meta)).expect("serialising in-memory f32 tensors")
}

/// Parses bytes from [`encode_norm_state`]: safetensors whose metadata carries this format's
/// marker, a model id and a version within [`MAX_NORM_VERSION`], and only F32 tensors.
pub fn decode_norm_state(bytes: &[u8]) -> Result<WireNormState, NormStateError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| NormStateError::Safetensors(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| NormStateError::Safetensors(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |key: &'static str| meta.get(key).ok_or(NormStateError::MissingMetadata(key));
    let format = get("format")?;
    if format != NORM_STATE_FORMAT {
        return Err(NormStateError::Format(format.clone()));
    }
    let model_id = get("model_id")?.clone();
    let version_text = get("version")?;
    let version = version_text
        .parse::<u64>()
        .ok()
        .filter(|&v| v <= MAX_NORM_VERSION)
        .ok_or_else(|| NormStateError::Version(version_text.clone()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(NormStateError::Dtype {
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().to_vec();
        tensors.insert(name, WireTensor { shape, data });
    }
    Ok(WireNormState {
        model_id,
        version,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> BTreeMap<String, WireTensor> {
        BTreeMap::from([
            (
                "bn.weight".to_string(),
                WireTensor {
                    shape: vec![2],
                    data: vec![1.0, -0.5],
                },
            ),
            (
                "bn.running_var".to_string(),
                WireTensor {
                    shape: vec![2],
                    data: vec![0.25, 4.0],
                },
            ),
        ])
    }

    fn encode(version: u64) -> Vec<u8> {
        let t = tensors();
        encode_norm_state("edge-r8", version, t.iter().map(|(n, t)| (n.as_str(), t)))
    }

    #[test]
    fn round_trips() {
        let s = decode_norm_state(&encode(7)).unwrap();
        assert_eq!((s.model_id.as_str(), s.version), ("edge-r8", 7));
        assert_eq!(s.tensors, tensors());
    }

    /// Rewrites the metadata of a norm state (safetensors: u64 header length, JSON header).
    fn with_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"][key] = value.into();
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(&bytes[8 + n..]);
        out
    }

    #[test]
    fn another_format_or_an_unusable_version_is_refused() {
        let good = encode(1);
        assert!(decode_norm_state(&with_meta(&good, "version", "12")).is_ok());
        assert_eq!(
            decode_norm_state(&with_meta(&good, "format", "cema-norm-state/2")),
            Err(NormStateError::Format("cema-norm-state/2".into()))
        );
        for v in ["18446744073709551615", "9007199254740992", "-1", "1.5", ""] {
            assert_eq!(
                decode_norm_state(&with_meta(&good, "version", v)),
                Err(NormStateError::Version(v.into())),
                "{v}"
            );
        }
        let max = MAX_NORM_VERSION.to_string();
        assert!(decode_norm_state(&with_meta(&good, "version", &max)).is_ok());
        assert!(matches!(
            decode_norm_state(&good[..good.len() - 1]),
            Err(NormStateError::Safetensors(_))
        ));
    }

    #[test]
    fn missing_marker_or_non_f32_tensors_are_refused() {
        let plain = safetensors::serialize(
            [(
                "x",
                TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap(),
            )],
            None,
        )
        .unwrap();
        assert_eq!(
            decode_norm_state(&plain),
            Err(NormStateError::MissingMetadata("format"))
        );
        let meta = HashMap::from([
            ("format".to_string(), NORM_STATE_FORMAT.to_string()),
            ("model_id".to_string(), "m".to_string()),
            ("version".to_string(), "0".to_string()),
        ]);
        let half = safetensors::serialize(
            [(
                "x",
                TensorView::new(Dtype::F16, vec![1], &[0u8; 2]).unwrap(),
            )],
            Some(meta),
        )
        .unwrap();
        assert!(matches!(
            decode_norm_state(&half),
            Err(NormStateError::Dtype { .. })
        ));
    }
}
