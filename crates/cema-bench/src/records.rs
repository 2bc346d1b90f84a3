//! Each (method, stream) result is written as soon as it is measured, with what it was measured
//! under (its fingerprint), so that an interrupted run resumes: a record is reused only under an
//! identical fingerprint, and one from another configuration is refused, never mixed in.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::run::BenchError;
use crate::{MethodKey, StreamResult};

/// Where one (method, stream) result is recorded under a run's `records` folder.
pub fn record_path(records: &Path, method: MethodKey, stream: &str) -> PathBuf {
    records.join(method.key()).join(format!("{stream}.json"))
}

/// One recorded (method, stream) result: what it was measured under, where its stream's images
/// came from (`file` or `generated`), and the numbers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: Value,
    pub source: String,
    pub result: StreamResult,
}

/// `value` as it reads back from its JSON text. serde_json's default float parser may differ
/// from the written value in the last bit, so a fingerprint is compared only after the same trip
/// through text that the recorded one made.
fn through_text(value: &Value) -> Value {
    serde_json::from_str(&value.to_string()).expect("a Value serialises to valid JSON")
}

pub fn save_record(
    path: &Path,
    fingerprint: Value,
    source: &str,
    result: &StreamResult,
) -> Result<(), BenchError> {
    let record = Record {
        fingerprint,
        source: source.to_string(),
        result: result.clone(),
    };
    let text = serde_json::to_string(&record).map_err(|e| BenchError::Run(e.into()))?;
    cema_data::write_file_atomic(path, text.as_bytes())
        .map_err(|e| BenchError::Output(anyhow::Error::new(e)))
}

/// The result recorded at `path` if there is one, provided it was measured under `fingerprint`.
pub fn load_record(path: &Path, fingerprint: &Value) -> Result<Option<Record>, BenchError> {
    let refuse = |why: String| BenchError::Resume {
        path: path.to_path_buf(),
        why,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(e.to_string())),
    };
    let record: Record = serde_json::from_str(&text)
        .map_err(|e| refuse(format!("not a stream record of cema bench ({e})")))?;
    let now = through_text(fingerprint);
    if record.fingerprint != now {
        let clip = |v: &Value| {
            let t = v.to_string();
            match t.char_indices().nth(160) {
                Some((i, _)) => format!("{}…", &t[..i]),
                None => t,
            }
        };
        let diff = now
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, v)| record.fingerprint.get(k.as_str()) != Some(*v))
            .map_or_else(
                || "its fingerprint has other fields".to_string(),
                |(k, v)| {
                    let was = record.fingerprint.get(k.as_str()).unwrap_or(&Value::Null);
                    format!("{k} was {}, now {}", clip(was), clip(v))
                },
            );
        return Err(refuse(format!(
            "measured under another configuration ({diff})"
        )));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_is_reused_only_under_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path(), MethodKey::Tent, "fog");
        let fp = json!({ "seed": 0, "lr": 0.004 });
        let result = StreamResult {
            images: 64,
            correct: 40,
            ..StreamResult::default()
        };
        assert!(load_record(&path, &fp).unwrap().is_none());
        save_record(&path, fp.clone(), "generated", &result).unwrap();
        let back = load_record(&path, &fp).unwrap().unwrap();
        assert_eq!((back.result.images, back.result.correct), (64, 40));
        assert_eq!(back.source, "generated");
        let e = load_record(&path, &json!({ "seed": 1, "lr": 0.004 })).unwrap_err();
        assert!(e.to_string().contains("seed was 0, now 1"), "{e}");
        std::fs::write(&path, b"{").unwrap();
        let e = load_record(&path, &fp).unwrap_err();
        assert!(e.to_string().contains("not a stream record"), "{e}");
    }
}
