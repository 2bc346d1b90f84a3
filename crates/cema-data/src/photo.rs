//! Single photographs prepared for a model: decoded, converted to its channel count, and brought to
//! its input size the way its card says (a centre crop of the shorter side, then a bicubic
//! resize: TensorFlow's evaluation recipe for ImageNet models), or taken as they are when the card
//! gives no recipe and the sizes already agree.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::ImageReader;

use crate::error::{DataError, Result};
use crate::folder::EXTENSIONS;
use crate::fsutil::is_hidden;

/// How a photograph of any size becomes a model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prepare {
    /// Keep the central square of side `int(S / (S + round(S·(1/f − 1))) · min(h, w))` (`f` is
    /// `fraction`, `S` the input side; offsets rounded up, as TensorFlow's
    /// `preprocess_for_eval`), then resize it to the input size with a bicubic (Catmull-Rom)
    /// filter.
    CenterCrop { fraction: f32 },
    /// The image must already have the input size.
    Exact,
}

/// `path` decoded and prepared for a `height × width × channels` (1 or 3) input: u8 NHWC.
pub fn load_photo(
    path: &Path,
    (height, width, channels): (usize, usize, usize),
    prepare: Prepare,
) -> Result<Vec<u8>> {
    let bad = |reason: String| DataError::InvalidArgument {
        path: path.to_path_buf(),
        reason,
    };
    let img = ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?
        .decode()
        .map_err(|source| DataError::Decode {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    let img = match prepare {
        Prepare::Exact => {
            if (img.height() as usize, img.width() as usize) != (height, width) {
                return Err(bad(format!(
                    "{}×{} pixels, the model takes {height}×{width} and its card gives no crop recipe",
                    img.height(),
                    img.width()
                )));
            }
            img
        }
        Prepare::CenterCrop { fraction } => {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(bad(format!("crop fraction {fraction} is not in (0, 1]")));
            }
            let (h, w) = (img.height() as f64, img.width() as f64);
            let s = height.min(width) as f64;
            let pad = (s * (1.0 / fraction as f64 - 1.0)).round();
            let c = ((s / (s + pad)) * h.min(w)) as u32;
            if c == 0 {
                return Err(bad(format!("{w}×{h} pixels is too small to crop")));
            }
            let top = (img.height() - c).div_ceil(2);
            let left = (img.width() - c).div_ceil(2);
            img.crop_imm(left, top, c, c).resize_exact(
                width as u32,
                height as u32,
                FilterType::CatmullRom,
            )
        }
    };
    Ok(match channels {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        c => return Err(bad(format!("a model with {c} input channels"))),
    })
}

/// The image files an argument names: the file itself, or a folder's images (extensions
/// [`EXTENSIONS`], case-insensitive; hidden files skipped) in name order. A path that does not
/// exist, or a folder without images, is an error naming it.
pub fn photo_paths(arg: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(arg).map_err(|e| io_error(arg, e))?;
    if !meta.is_dir() {
        return Ok(vec![arg.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(arg)
        .map_err(|e| io_error(arg, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| !is_hidden(n)) && p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::Empty {
            path: arg.to_path_buf(),
            what: format!("images ({})", EXTENSIONS.join(", ")),
        });
    }
    Ok(files)
}

fn io_error(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::Missing {
            path: path.to_path_buf(),
            hint: "give an image file or a folder of images".into(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}
