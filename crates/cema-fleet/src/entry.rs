//! A session's record in the sessions bucket: a small JSON head and a blob, in one KV value so
//! that "snapshot + applied_seq" stays one compare-and-set write.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Written by the gateway on first contact: the blob is the edge's norm state; no round yet.
    Genesis,
    /// Written by the owning worker: the blob is the `CloudSnapshot` after round `applied_seq`.
    Snapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub kind: Kind,
    /// The last upload whose round is in the blob.
    pub applied_seq: Option<u64>,
    /// The norm-state version in the blob; published (in the norm bucket) after this record is
    /// written, so a reader that sees this record waits for at least this version there.
    pub version: u64,
    /// The worker that wrote or claimed the record last, and its lease's revision then: a
    /// worker taking a slot over rewrites each record (a claim), so the old owner's next
    /// compare-and-set fails.
    pub owner: Option<String>,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    pub head: Head,
    pub blob: Vec<u8>,
}

impl SessionEntry {
    pub fn to_bytes(&self) -> Vec<u8> {
        let head = serde_json::to_vec(&self.head).expect("serialising a session head");
        let mut out = Vec::with_capacity(4 + head.len() + self.blob.len());
        out.extend_from_slice(&(head.len() as u32).to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.blob);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<SessionEntry> {
        let n = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| {
                anyhow::anyhow!("session record of {} bytes has no head", bytes.len())
            })?;
        let head = bytes
            .get(4..4 + n)
            .ok_or_else(|| anyhow::anyhow!("session record head of {n} bytes is cut short"))?;
        Ok(SessionEntry {
            head: serde_json::from_slice(head)?,
            blob: bytes[4 + n..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_truncation() {
        let e = SessionEntry {
            head: Head {
                kind: Kind::Snapshot,
                applied_seq: Some(7),
                version: 2,
                owner: Some("w1".into()),
                epoch: 3,
            },
            blob: vec![1, 2, 3],
        };
        let b = e.to_bytes();
        assert_eq!(SessionEntry::from_bytes(&b).unwrap(), e);
        assert!(SessionEntry::from_bytes(&b[..2]).is_err());
        assert!(SessionEntry::from_bytes(&b[..8]).is_err());
    }
}
