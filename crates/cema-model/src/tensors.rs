//! Named host tensors: the interchange format of checkpoints and norm states.
//!
//! Read and written with the `safetensors` crate (the format PyTorch users already have), and for
//! `.pth` state dicts with burn's `pytorch-reader`. Values are held as f32 on the host.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{ModelError, Result};

/// One host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by name, sorted (so serialisation is deterministic).
pub type NamedTensors = BTreeMap<String, HostTensor>;

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let v = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal half: renormalise into a normal f32.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(v)
}

/// Decodes one float tensor's little-endian bytes. Integer tensors (e.g. `num_batches_tracked`) → None.
fn decode(dtype: &str, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        _ => return None,
    })
}

/// Integer bookkeeping tensors PyTorch writes into state dicts; never weights.
pub(crate) fn is_ignored_key(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// Parses safetensors bytes. `source` names the file (or blob) in errors.
pub fn from_safetensors(bytes: &[u8], source: &str) -> Result<NamedTensors> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        path: source.into(),
        reason: e.to_string(),
    })?;
    let mut out = NamedTensors::new();
    for (name, view) in st.tensors() {
        let dtype = format!("{:?}", view.dtype());
        match decode(&dtype, view.data()) {
            Some(data) => {
                out.insert(
                    name,
                    HostTensor {
                        shape: view.shape().to_vec(),
                        data,
                    },
                );
            }
            None if is_ignored_key(&name) => {}
            None => {
                return Err(ModelError::Dtype {
                    source_name: source.into(),
                    name,
                    dtype,
                })
            }
        }
    }
    Ok(out)
}

/// Serialises to safetensors bytes (f32), with optional string metadata.
pub fn to_safetensors(
    tensors: &NamedTensors,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("consistent f32 view"),
            )
        })
        .collect();
    safetensors::serialize(views, metadata).expect("serialising in-memory f32 tensors cannot fail")
}

/// Reads `.safetensors` or a PyTorch `.pth`/`.pt` state dict (by extension).
pub fn read_file(path: &Path) -> Result<NamedTensors> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "pth" || ext == "pt" || ext == "bin" {
        return read_pth(path);
    }
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    from_safetensors(&bytes, &path.display().to_string())
}

fn read_pth(path: &Path) -> Result<NamedTensors> {
    if !path.exists() {
        return Err(ModelError::Io {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let err = |reason: String| ModelError::Pytorch {
        path: path.into(),
        reason,
    };
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| err(e.to_string()))?;
    let mut out = NamedTensors::new();
    for (name, t) in reader.into_tensors() {
        let dtype = format!("{:?}", t.dtype()).to_uppercase();
        let bytes = t.read().map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        match decode(&dtype, &bytes) {
            Some(data) => {
                out.insert(
                    name,
                    HostTensor {
                        shape: t.shape().to_vec(),
                        data,
                    },
                );
            }
            None if is_ignored_key(&name) => {}
            None => {
                return Err(ModelError::Dtype {
                    source_name: path.display().to_string(),
                    name,
                    dtype,
                })
            }
        }
    }
    Ok(out)
}

/// The first non-finite value, if any.
pub fn first_non_finite(t: &HostTensor) -> Option<usize> {
    t.data.iter().position(|v| !v.is_finite())
}
