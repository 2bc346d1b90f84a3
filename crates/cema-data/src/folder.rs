//! Folders of image files: plain class folders and the ImageNet-C layout.
//!
//! - Class folders: `root/<class>/*.{png,jpg,jpeg}`. Classes are the sub-folders sorted by name and
//!   numbered in that order (the torchvision `ImageFolder` convention, which for ImageNet wnids is
//!   the standard class index).
//! - ImageNet-C: `root/<corruption>/<severity>/<class>/*`, i.e. class folders one level down.
//!
//! Extensions match case-insensitively (ImageNet uses `.JPEG`); hidden files and other files are
//! ignored; files are taken in name order so a set is the same on every machine. Images are decoded
//! on all cores with the `image` crate and converted to RGB or grey as asked.

use std::fs;
use std::path::{Path, PathBuf};

use image::error::{DecodingError, ImageFormatHint};
use image::imageops::{self, FilterType};
use image::{ImageError, ImageReader};

use crate::error::{DataError, Result};
use crate::fsutil::is_hidden;
use crate::ImageSet;

/// File extensions read (compared case-insensitively).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The pixel format of the loaded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    /// Three channels.
    #[default]
    Rgb,
    /// One channel (luma).
    Luma,
}

impl ColorMode {
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Rgb => 3,
            ColorMode::Luma => 1,
        }
    }
}

/// What to do with images whose size differs from the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SizePolicy {
    /// Every image must have the size of the first; otherwise [`DataError::MixedSizes`].
    #[default]
    Strict,
    /// Every image is resized (bilinear, aspect ratio not kept) to this size.
    Resize { height: u32, width: u32 },
}

/// Options for the folder loaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FolderOptions {
    pub color: ColorMode,
    pub size: SizePolicy,
}

/// A loaded folder: the images, the class names (index = label) and the file of each image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImages {
    pub set: ImageSet,
    pub classes: Vec<String>,
    pub files: Vec<PathBuf>,
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Names of the visible sub-folders of `root`, sorted.
pub fn list_classes(root: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(root).map_err(|e| {
        DataError::open(
            root,
            e,
            "expected a folder holding one sub-folder of images per class",
        )
    })?;
    let mut classes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(root, e))?;
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        // Follows symlinks, which dataset folders often are.
        if entry.path().is_dir() {
            classes.push(name.to_string_lossy().into_owned());
        }
    }
    classes.sort();
    Ok(classes)
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if !is_hidden(&entry.file_name()) && has_image_extension(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Decoded pixels of one file, already converted (and resized when asked).
struct Decoded {
    height: usize,
    width: usize,
    pixels: Vec<u8>,
}

fn decode(path: &Path, opts: &FolderOptions) -> Result<Decoded> {
    let img = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| DataError::Decode {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
    let (width, height, pixels) = match (opts.color, opts.size) {
        (ColorMode::Rgb, SizePolicy::Strict) => {
            let b = img.to_rgb8();
            (b.width(), b.height(), b.into_raw())
        }
        (ColorMode::Luma, SizePolicy::Strict) => {
            let b = img.to_luma8();
            (b.width(), b.height(), b.into_raw())
        }
        (ColorMode::Rgb, SizePolicy::Resize { height, width }) => {
            let b = imageops::resize(&img.to_rgb8(), width, height, FilterType::Triangle);
            (width, height, b.into_raw())
        }
        (ColorMode::Luma, SizePolicy::Resize { height, width }) => {
            let b = imageops::resize(&img.to_luma8(), width, height, FilterType::Triangle);
            (width, height, b.into_raw())
        }
    };
    Ok(Decoded {
        height: height as usize,
        width: width as usize,
        pixels,
    })
}

/// A decoder panic on a hostile file becomes that file's decode error instead of aborting a load of
/// thousands of images without saying which one was at fault.
fn decode_guarded(path: &Path, opts: &FolderOptions) -> Result<Decoded> {
    std::panic::catch_unwind(|| decode(path, opts)).unwrap_or_else(|_| {
        Err(DataError::Decode {
            path: path.to_path_buf(),
            source: Box::new(ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Unknown,
                "the image decoder panicked on this file",
            ))),
        })
    })
}

/// Decodes `files` on all cores, keeping their order.
fn decode_all(files: &[PathBuf], opts: &FolderOptions) -> Vec<Result<Decoded>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len().div_ceil(8))
        .max(1);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| decode_guarded(p, opts))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // decode_guarded catches codec panics, so a join error would be a bug in this module.
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Loads `root/<class>/*` into one set; labels are class indices in sorted-name order.
pub fn load_class_folders(root: &Path, opts: &FolderOptions) -> Result<LabelledImages> {
    let classes = list_classes(root)?;
    if classes.is_empty() {
        return Err(DataError::Empty {
            path: root.to_path_buf(),
            what: "class sub-folders".into(),
        });
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let found = list_images(&root.join(class))?;
        labels.extend(std::iter::repeat_n(label as u32, found.len()));
        files.extend(found);
    }
    if files.is_empty() {
        return Err(DataError::Empty {
            path: root.to_path_buf(),
            what: format!("images ({}) in any class folder", EXTENSIONS.join(", ")),
        });
    }

    let channels = opts.color.channels();
    let mut images = Vec::new();
    let mut size: Option<(usize, usize)> = None;
    for (i, decoded) in decode_all(&files, opts).into_iter().enumerate() {
        let d = decoded?;
        let found = (d.height, d.width);
        match size {
            None => {
                size = Some(found);
                images.reserve_exact(files.len() * d.pixels.len());
            }
            Some(expected) if expected != found => {
                return Err(DataError::MixedSizes {
                    path: files[i].clone(),
                    reference: files[0].clone(),
                    expected,
                    found,
                });
            }
            Some(_) => {}
        }
        images.extend_from_slice(&d.pixels);
    }
    let (height, width) = size.unwrap_or((0, 0));
    Ok(LabelledImages {
        set: ImageSet {
            images,
            labels,
            height,
            width,
            channels,
        },
        classes,
        files,
    })
}

/// The class-folder root of one corruption and severity in the ImageNet-C layout.
pub fn imagenet_c_dir(root: &Path, corruption: &str, severity: u8) -> PathBuf {
    root.join(corruption).join(severity.to_string())
}

/// Loads `root/<corruption>/<severity>/<class>/*` (ImageNet-C).
pub fn load_imagenet_c(
    root: &Path,
    corruption: &str,
    severity: u8,
    opts: &FolderOptions,
) -> Result<LabelledImages> {
    if !(1..=5).contains(&severity) {
        return Err(DataError::invalid(
            &root.join(corruption),
            format!("severity {severity} is outside 1..=5"),
        ));
    }
    if corruption.is_empty() || corruption.contains(['/', '\\']) || corruption.starts_with('.') {
        return Err(DataError::invalid(
            root,
            format!("'{corruption}' is not a valid corruption name"),
        ));
    }
    let dir = imagenet_c_dir(root, corruption, severity);
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir,
            hint: "expected the ImageNet-C layout <root>/<corruption>/<severity>/<class>/*.JPEG"
                .into(),
        });
    }
    load_class_folders(&dir, opts)
}
