//! IDX files, the container of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! Layout: two zero bytes, a type byte, the number of dimensions, then one big-endian u32 per
//! dimension, then the data in C order. Only unsigned bytes (type `0x08`) are read, which is what
//! every image and label file of both datasets uses.
//!
//! The parser never trusts the header: the declared size is computed with overflow checks and
//! compared with the bytes actually present before anything of that size is allocated.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{DataError, Result};
use crate::fsutil::{read_up_to, write_atomic};
use crate::ImageSet;

/// First two bytes of every gzip stream.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// IDX type code for unsigned bytes.
pub const TYPE_U8: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "u8",
        0x09 => "i8",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// Reads an IDX file; gzip is detected from the content, not the name.
pub fn read(path: &Path) -> Result<IdxArray> {
    let bytes = fs::read(path).map_err(|e| DataError::open(path, e, "no such IDX file"))?;
    decode(&bytes, path)
}

/// Parses IDX bytes (raw or gzip); `path` is only used in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.starts_with(&GZIP_MAGIC) {
        parse_stream(&mut GzDecoder::new(bytes), None, path)
    } else {
        let mut r = bytes;
        parse_stream(&mut r, Some(bytes.len() as u64), path)
    }
}

/// `known_len` is the total length when the stream is not compressed, so that the declared size
/// can be checked before allocating; for gzip the data are read through a `take` of the declared
/// size instead, which bounds memory by what the stream really holds.
fn parse_stream(r: &mut dyn Read, known_len: Option<u64>, path: &Path) -> Result<IdxArray> {
    let gz = known_len.is_none();
    let stream_err = |e: std::io::Error| {
        if gz {
            DataError::Gzip {
                path: path.to_path_buf(),
                source: e,
            }
        } else {
            DataError::io(path, e)
        }
    };

    let mut magic = [0u8; 4];
    let got = read_up_to(r, &mut magic).map_err(stream_err)?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected_bytes: 4,
            got: got as u64,
        });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: "0x0000TTNN (two zero bytes, type, number of dimensions)".into(),
            found: format!("0x{:08x}", u32::from_be_bytes(magic)),
        });
    }
    if magic[2] != TYPE_U8 {
        return Err(DataError::UnknownDtype {
            path: path.to_path_buf(),
            dtype: format!(
                "IDX type 0x{:02x} ({}); only 0x08 (u8) is supported",
                magic[2],
                type_name(magic[2])
            ),
        });
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(DataError::bad_header(path, "zero dimensions"));
    }
    let header_len = 4 + 4 * ndims;
    let mut dim_bytes = vec![0u8; 4 * ndims];
    let got = read_up_to(r, &mut dim_bytes).map_err(stream_err)?;
    if got < dim_bytes.len() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected_bytes: header_len as u64,
            got: (4 + got) as u64,
        });
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let declared = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= usize::MAX as u64)
        .ok_or_else(|| {
            DataError::bad_header(
                path,
                format!("dimensions {dims:?} overflow the address space"),
            )
        })?;
    let expected_total = header_len as u64 + declared;

    let data = match known_len {
        Some(total) => {
            if total < expected_total {
                return Err(DataError::Truncated {
                    path: path.to_path_buf(),
                    expected_bytes: expected_total,
                    got: total,
                });
            }
            if total > expected_total {
                return Err(DataError::TrailingData {
                    path: path.to_path_buf(),
                    expected_bytes: expected_total,
                    got: total,
                });
            }
            let mut data = vec![0u8; declared as usize];
            r.read_exact(&mut data).map_err(stream_err)?;
            data
        }
        None => {
            let mut data = Vec::new();
            Read::take(&mut *r, declared)
                .read_to_end(&mut data)
                .map_err(stream_err)?;
            if (data.len() as u64) < declared {
                return Err(DataError::Truncated {
                    path: path.to_path_buf(),
                    expected_bytes: expected_total,
                    got: (header_len + data.len()) as u64,
                });
            }
            // Reading to the end also makes flate2 check the gzip CRC and length trailer.
            let mut rest = Vec::new();
            Read::take(&mut *r, 1 << 16)
                .read_to_end(&mut rest)
                .map_err(stream_err)?;
            if !rest.is_empty() {
                return Err(DataError::TrailingData {
                    path: path.to_path_buf(),
                    expected_bytes: expected_total,
                    got: expected_total + rest.len() as u64,
                });
            }
            data
        }
    };
    Ok(IdxArray { dims, data })
}

/// Reads an image file: (N, H, W) or (N, H, W, C).
pub fn read_images(path: &Path) -> Result<IdxArray> {
    let a = read(path)?;
    if a.dims.len() != 3 && a.dims.len() != 4 {
        return Err(DataError::BadShape {
            path: path.to_path_buf(),
            shape: a.dims,
            reason: "images must be (N, H, W) or (N, H, W, C)".into(),
        });
    }
    Ok(a)
}

/// Reads a label file: (N,).
pub fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let a = read(path)?;
    if a.dims.len() != 1 {
        return Err(DataError::BadShape {
            path: path.to_path_buf(),
            shape: a.dims,
            reason: "labels must be one-dimensional".into(),
        });
    }
    Ok(a.data.into_iter().map(u32::from).collect())
}

/// Reads an images file and its labels file into one set; labels must be below `num_classes`
/// when it is given.
pub fn load(images_path: &Path, labels_path: &Path, num_classes: Option<u32>) -> Result<ImageSet> {
    let images = read_images(images_path)?;
    let labels = read_labels(labels_path)?;
    if images.dims[0] != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: images.dims[0],
            labels: labels.len(),
        });
    }
    if let Some(limit) = num_classes {
        if let Some((index, &value)) = labels.iter().enumerate().find(|(_, &l)| l >= limit) {
            return Err(DataError::BadLabel {
                path: labels_path.to_path_buf(),
                index,
                value: value.into(),
                limit: limit.into(),
            });
        }
    }
    Ok(ImageSet {
        images: images.data,
        labels,
        height: images.dims[1],
        width: images.dims[2],
        channels: images.dims.get(3).copied().unwrap_or(1),
    })
}

/// Encodes an IDX array (u8), gzip-compressed when `gzip`.
pub fn encode(dims: &[usize], data: &[u8], gzip: bool, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 4 + 4 * dims.len());
    write_to(&mut out, dims, data, gzip, path)?;
    Ok(out)
}

/// Writes an IDX array (u8) atomically, gzip-compressed when `gzip`.
pub fn write(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    check_dims(dims, data, path)?;
    write_atomic(path, |w| write_unchecked(w, dims, data, gzip))
}

/// Writes `set` as an images file ((N,H,W) for one channel, else (N,H,W,C)) and a labels file.
pub fn write_image_set(
    images_path: &Path,
    labels_path: &Path,
    set: &ImageSet,
    gzip: bool,
) -> Result<()> {
    let labels: Vec<u8> = set
        .labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            u8::try_from(l).map_err(|_| {
                DataError::invalid(
                    labels_path,
                    format!("label #{i} is {l}; IDX labels are bytes"),
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut dims = vec![set.len(), set.height, set.width];
    if set.channels != 1 {
        dims.push(set.channels);
    }
    write(images_path, &dims, &set.images, gzip)?;
    write(labels_path, &[labels.len()], &labels, gzip)
}

fn check_dims(dims: &[usize], data: &[u8], path: &Path) -> Result<()> {
    if dims.is_empty() || dims.len() > 255 {
        return Err(DataError::invalid(
            path,
            format!("IDX needs 1 to 255 dimensions, got {}", dims.len()),
        ));
    }
    if let Some(d) = dims.iter().find(|&&d| u32::try_from(d).is_err()) {
        return Err(DataError::invalid(
            path,
            format!("dimension {d} does not fit IDX's u32"),
        ));
    }
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(data.len()) {
        return Err(DataError::invalid(
            path,
            format!("dimensions {dims:?} do not match {} data bytes", data.len()),
        ));
    }
    Ok(())
}

fn write_to(out: &mut Vec<u8>, dims: &[usize], data: &[u8], gzip: bool, path: &Path) -> Result<()> {
    check_dims(dims, data, path)?;
    write_unchecked(out, dims, data, gzip).map_err(|e| DataError::io(path, e))
}

fn write_unchecked(
    w: &mut dyn Write,
    dims: &[usize],
    data: &[u8],
    gzip: bool,
) -> std::io::Result<()> {
    if gzip {
        let mut enc = GzEncoder::new(w, Compression::default());
        write_raw(&mut enc, dims, data)?;
        enc.finish()?;
        Ok(())
    } else {
        write_raw(w, dims, data)
    }
}

fn write_raw(w: &mut dyn Write, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    // check_dims has bounded both casts.
    w.write_all(&[0, 0, TYPE_U8, dims.len() as u8])?;
    for &d in dims {
        w.write_all(&(d as u32).to_be_bytes())?;
    }
    w.write_all(data)
}
