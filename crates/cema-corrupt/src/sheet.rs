//! Contact sheets for eyeballing the suite: one row per corruption (in the order given), columns
//! clean, severity 1…5, each cell showing the first `samples` images side by side. Rows are labelled
//! with the corruption's name and columns with the severity, in the `font8x8` bitmap font.

use std::path::Path;

use cema_data::ImageSet;
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::{CorruptError, Corruption, Plan, Table};

/// Gap between samples inside a cell, and between cells.
const SAMPLE_GAP: u32 = 1;
const CELL_GAP: u32 = 4;
const BACKGROUND: Rgb<u8> = Rgb([96, 96, 96]);
const INK: Rgb<u8> = Rgb([240, 240, 240]);
/// Pixels of one glyph of the label font.
const GLYPH: u32 = 8;

/// Draws `text` with its top-left corner at (x, y), clipped to the image.
fn label(img: &mut RgbImage, text: &str, x: u32, y: u32) {
    for (i, ch) in text.chars().enumerate() {
        let Some(rows) = font8x8::BASIC_FONTS.get(ch) else {
            continue;
        };
        for (dy, bits) in rows.iter().enumerate() {
            for dx in 0..GLYPH {
                let (px, py) = (x + i as u32 * GLYPH + dx, y + dy as u32);
                if bits >> dx & 1 == 1 && px < img.width() && py < img.height() {
                    img.put_pixel(px, py, INK);
                }
            }
        }
    }
}

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
    // Room for the labels: the longest corruption name on the left, one text line on top.
    let longest = corruptions
        .iter()
        .map(|c| c.name().len())
        .max()
        .unwrap_or(0) as u32;
    let (left, top) = (longest * GLYPH + CELL_GAP, GLYPH + CELL_GAP);
    let sheet_w = left + cols * cell_w + (cols + 1) * CELL_GAP;
    let sheet_h = top + rows * ih + (rows + 1) * CELL_GAP;
    let mut img = RgbImage::from_pixel(sheet_w, sheet_h, BACKGROUND);
    let cell_x = |col: u32| left + CELL_GAP + col * (cell_w + CELL_GAP);
    let row_y = |row: u32| top + CELL_GAP + row * (ih + CELL_GAP);
    for col in 0..cols {
        let text = match col {
            0 => "clean".to_string(),
            s if cell_w >= 10 * GLYPH => format!("severity {s}"),
            s => s.to_string(),
        };
        let x = cell_x(col) + cell_w.saturating_sub(text.len() as u32 * GLYPH) / 2;
        label(&mut img, &text, x, CELL_GAP / 2);
    }
    for (row, c) in corruptions.iter().enumerate() {
        let y = row_y(row as u32) + ih.saturating_sub(GLYPH) / 2;
        label(&mut img, c.name(), CELL_GAP / 2, y);
    }
    let mut blit = |px: &[u8], col: u32, row: u32, j: usize| {
        let x0 = cell_x(col) + j as u32 * (iw + SAMPLE_GAP);
        let y0 = row_y(row);
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
