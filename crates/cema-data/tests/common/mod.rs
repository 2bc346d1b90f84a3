//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use cema_data::{DataError, ImageSet};

/// Asserts that the error is about `path` and that its message names it.
pub fn assert_names(err: &DataError, path: &Path) {
    assert_eq!(err.path(), path, "error is about the wrong file: {err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name {}: {msg}",
        path.display()
    );
}

/// A small deterministic set with distinct pixels.
pub fn sample_set(n: usize, h: usize, w: usize, c: usize, seed: u8) -> ImageSet {
    let size = n * h * w * c;
    ImageSet {
        images: (0..size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect(),
        labels: (0..n as u32).map(|i| (i * 7 + seed as u32) % 10).collect(),
        height: h,
        width: w,
        channels: c,
    }
}
