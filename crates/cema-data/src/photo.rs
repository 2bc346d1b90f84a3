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

/// Where `cema` looks for the labelled ImageNet photographs (`scripts/setup.sh` links foolbox's
/// 20 there): files named `…_<label>.<ext>`, the label an ImageNet class index.
pub const IMAGENET_PHOTOS_DIR: &str = "data/imagenet-photos";
/// Side of the views [`load_imagenet_photos`] makes (EfficientNet-Lite0's and ResNets' input).
pub const IMAGENET_PHOTOS_SIDE: usize = 224;
/// Views per photograph: the evaluation crop and 15 random crops, half of them mirrored.
pub const IMAGENET_PHOTOS_VIEWS: usize = 16;

/// A small labelled ImageNet test set from a folder of photographs: each photograph as
/// `views` `side × side` RGB views — view 0 its evaluation centre crop (87.5 %), the others a
/// random square crop of 50–100 % of the shorter side, mirrored with probability ½, resized
/// bicubically — ordered view-major, so any prefix mixes the classes. Deterministic: view `v` of
/// photograph `i` draws from a hash of (`i`, `v`). A smoke test for real models, not a benchmark:
/// the views of one photograph are not independent images.
pub fn load_imagenet_photos(dir: &Path, side: usize, views: usize) -> Result<crate::ImageSet> {
    let paths = photo_paths(dir)?;
    let mut labelled = Vec::with_capacity(paths.len());
    for path in paths {
        let label = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('_').next())
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&l| l < 1000)
            .ok_or_else(|| DataError::InvalidArgument {
                path: path.clone(),
                reason: "the name does not end in _<ImageNet class index 0–999>".into(),
            })?;
        let img = ImageReader::open(&path)
            .map_err(|e| io_error(&path, e))?
            .with_guessed_format()
            .map_err(|e| io_error(&path, e))?
            .decode()
            .map_err(|source| DataError::Decode {
                path: path.clone(),
                source: Box::new(source),
            })?;
        labelled.push((img, label));
    }
    let per = side * side * 3;
    let mut images = Vec::with_capacity(views * labelled.len() * per);
    let mut labels = Vec::with_capacity(views * labelled.len());
    for v in 0..views {
        for (i, (img, label)) in labelled.iter().enumerate() {
            let (h, w) = (img.height(), img.width());
            let short = h.min(w) as f64;
            let mut r = splitmix64(((i as u64) << 32) ^ v as u64);
            let mut uniform = || {
                r = splitmix64(r);
                (r >> 11) as f64 / (1u64 << 53) as f64
            };
            let (c, top, left, flip) = if v == 0 {
                let s = side as f64;
                let c = ((s / (s + (s * (1.0 / 0.875 - 1.0)).round())) * short) as u32;
                (c, (h - c).div_ceil(2), (w - c).div_ceil(2), false)
            } else {
                let c = ((0.5 + 0.5 * uniform()) * short) as u32;
                let top = (uniform() * (h - c + 1) as f64) as u32;
                let left = (uniform() * (w - c + 1) as f64) as u32;
                (c, top.min(h - c), left.min(w - c), uniform() < 0.5)
            };
            let mut view = img.crop_imm(left, top, c, c).resize_exact(
                side as u32,
                side as u32,
                FilterType::CatmullRom,
            );
            if flip {
                view = view.fliph();
            }
            images.extend(view.to_rgb8().into_raw());
            labels.push(*label);
        }
    }
    Ok(crate::ImageSet {
        images,
        labels,
        height: side,
        width: side,
        channels: 3,
    })
}

/// One step of SplitMix64 (Steele et al.): a fixed, well-mixed hash for the crop draws.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path) {
        image::RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn photographs_become_labelled_views_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("cat_281.png"));
        png(&dir.path().join("dog_207.png"));
        let set = load_imagenet_photos(dir.path(), 16, 3).unwrap();
        assert_eq!(
            (set.len(), set.height, set.width, set.channels),
            (6, 16, 16, 3)
        );
        assert_eq!(set.labels, [281, 207, 281, 207, 281, 207]);
        // A name without a class index, and one past 999: refused, naming the file.
        png(&dir.path().join("holiday.png"));
        let err = load_imagenet_photos(dir.path(), 16, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holiday.png") && err.contains("class index"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("holiday.png")).unwrap();
        png(&dir.path().join("x_1000.png"));
        let err = load_imagenet_photos(dir.path(), 16, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x_1000.png"), "{err}");
        // A file that is not an image, and a folder with none.
        std::fs::write(dir.path().join("x_1000.png"), b"not a png").unwrap();
        let err = load_photo(&dir.path().join("x_1000.png"), (16, 16, 3), Prepare::Exact)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x_1000.png"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = load_imagenet_photos(empty.path(), 16, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no images"), "{err}");
    }

    #[test]
    fn imagenet_photos_have_no_training_split() {
        let err = crate::Dataset::ImagenetPhotos
            .load(Some(Path::new("/nonexistent")), crate::Split::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("test split only"), "{err}");
    }
}
