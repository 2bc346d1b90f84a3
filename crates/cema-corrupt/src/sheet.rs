//! Contact sheets for eyeballing the suite: one row per corruption (in the order given), columns
//! clean, severity 1…5, each cell showing the first `samples` images side by side.
//!
//! There are no text labels (no font ships); the row order is exactly the `corruptions` slice,
//! so callers print that as the legend.

use std::path::Path;

use cema_data::ImageSet;
use image::{Rgb, RgbImage};

use crate::{CorruptError, Corruption, Plan, Table};

/// Gap between samples inside a cell, and between cells.
const SAMPLE_GAP: u32 = 1;
const CELL_GAP: u32 = 4;
const BACKGROUND: Rgb<u8> = Rgb([96, 96, 96]);

/// Nearest-neighbour upscale used for a `height`×`width` image: ×3 up to 32 px, ×2 up to 64 px,
/// ×1 above.
pub fn sheet_scale(height: usize, width: usize) -> u32 {
    match height.max(width) {
        0..=32 => 3,
        33..=64 => 2,
        _ => 1,
    }
}

/// Builds the sheet. Sample j of every cell is image j of `set` corrupted with index j, so a
/// column of the sheet matches what [`crate::corrupt_set`] gives for the same seed and table.
pub fn contact_sheet(
    set: &ImageSet,
    corruptions: &[Corruption],
    samples: usize,
    seed: u64,
    table: Option<Table>,
) -> Result<RgbImage, CorruptError> {
    let (h, w, c) = (set.height, set.width, set.channels);
    let samples = samples.min(set.len()).max(1);
    if set.is_empty() || h == 0 || w == 0 {
        return Err(CorruptError::ZeroSize {
            height: h,
            width: w,
            channels: c,
        });
    }
    let table = table.unwrap_or_else(|| Table::for_size(h, w));
    let s = sheet_scale(h, w);
    let (iw, ih) = (w as u32 * s, h as u32 * s);
    let cell_w = samples as u32 * iw + (samples as u32 - 1) * SAMPLE_GAP;
    let cols = 6u32;
    let rows = corruptions.len().max(1) as u32;
    let sheet_w = cols * cell_w + (cols + 1) * CELL_GAP;
    let sheet_h = rows * ih + (rows + 1) * CELL_GAP;
    let mut img = RgbImage::from_pixel(sheet_w, sheet_h, BACKGROUND);
    let mut blit = |px: &[u8], col: u32, row: u32, j: usize| {
        let x0 = CELL_GAP + col * (cell_w + CELL_GAP) + j as u32 * (iw + SAMPLE_GAP);
        let y0 = CELL_GAP + row * (ih + CELL_GAP);
        for y in 0..ih {
            for x in 0..iw {
                let p = ((y / s) as usize * w + (x / s) as usize) * c;
                let rgb = if c == 3 {
                    [px[p], px[p + 1], px[p + 2]]
                } else {
                    [px[p]; 3]
                };
                img.put_pixel(x0 + x, y0 + y, Rgb(rgb));
            }
        }
    };
    for (row, &corr) in corruptions.iter().enumerate() {
        for j in 0..samples {
            blit(set.image(j), 0, row as u32, j);
        }
        for sev in 1..=5u8 {
            let plan = Plan::new(corr, sev, table, h, w, c)?;
            for j in 0..samples {
                let out = plan.apply(set.image(j), seed, j as u64)?;
                blit(&out, u32::from(sev), row as u32, j);
            }
        }
    }
    Ok(img)
}

/// Writes a sheet as PNG.
pub fn save_contact_sheet(sheet: &RgbImage, path: &Path) -> image::ImageResult<()> {
    sheet.save_with_format(path, image::ImageFormat::Png)
}
