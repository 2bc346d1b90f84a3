//! Pure-Rust port of the ImageNet-C / CIFAR-10-C common corruptions (Hendrycks & Dietterich,
//! ICLR 2019): the 15 benchmark corruptions and the 4 held-out ones, severities 1–5.
//!
//! The implementation spec is `docs/corruptions.md` (cited as §n below). Statistical parity with
//! the Python originals is the goal, not bit parity (§6: the original never seeded anything).
//!
//! # Tables
//! Every corruption has a CIFAR-10-C row (HR-C, tuned for 32 px) and an ImageNet-C row (HR-I,
//! 224 px). [`Table::for_size`] picks **CIFAR when the shorter side is ≤ 64 px**, ImageNet
//! otherwise; pass `Some(table)` to override. So Fashion-MNIST (28 px) and CIFAR (32 px) use the
//! CIFAR rows, 224-px images the ImageNet rows.
//!
//! # Gray images
//! 1-channel images are first-class (spec preamble): per-channel math runs on the one channel,
//! and the places where the original mixes colours use luminance 0.299R + 0.587G + 0.114B:
//! snow's haze uses the pixel itself as its gray value; frost blends with the luminance of the
//! synthetic texture; spatter's water and mud colours become their luminance; brightness is
//! min(x + c, 1); saturate returns the luminance of the HSV result for a gray pixel,
//! V·(1 − 0.701·S') with S' = clamp01(b), which is the identity for severities 1–3 (b = 0: there
//! is no saturation to scale); JPEG codes a single-component gray JPEG as Pillow does for "L".
//!
//! # Determinism
//! Each image draws from its own ChaCha8 stream seeded by [`image_seed`]`(seed, corruption,
//! severity, index)`, so results are identical whatever the thread count or processing order
//! (§6 recommendation). Within an image the draws follow the per-corruption order of §6.
//!
//! # Sizes
//! Images may be any H×W (the originals assume square S×S; each axis then uses its own length).
//! Parameters given in pixels are not rescaled except for elastic_transform, whose table is a
//! fraction of the image side (§3.13, see [`params`]).
//!
//! # Deviations from the spec, and why
//! * frost: the synthetic bank of §4.2 is generated in process at first use (fixed seed, ~3 s
//!   in release, once per process) instead of being stored as PNG files; its Fourier-domain
//!   layers are made on a power-of-two torus and cropped. See [`frost`].
//! * jpeg_compression: an in-memory model of the lossy stages (4:2:0, IJG tables, float DCT),
//!   not `image`'s encoder, which only writes 4:4:4; pixels may differ by ±1 from libjpeg.
//! * Arithmetic is f32 where the original uses float64; statistical parity is unaffected.
//! * spatter: the 8-bit liquid layer is clamped rather than wrapped (§3.18 step 3.1 suggests
//!   this); a liquid layer with no edges at all gets distance 20 everywhere.
//! * frost on an image larger than the texture (only with a table override) wraps around the
//!   texture instead of failing.

use std::fmt;
use std::str::FromStr;

use cema_data::ImageSet;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

mod blur;
mod digital;
mod fft;
mod filter;
pub mod frost;
mod geom;
mod jpeg;
mod noise;
pub mod params;
mod sheet;
mod spatter;
mod util;
mod weather;

pub use frost::write_frost_bank_png;
pub use sheet::{contact_sheet, save_contact_sheet, sheet_scale};

/// The 19 corruptions, named as the released CIFAR-10-C / ImageNet-C folders and files (§8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Corruption {
    GaussianNoise,
    ShotNoise,
    ImpulseNoise,
    DefocusBlur,
    GlassBlur,
    MotionBlur,
    ZoomBlur,
    Snow,
    Frost,
    Fog,
    Brightness,
    Contrast,
    ElasticTransform,
    Pixelate,
    JpegCompression,
    SpeckleNoise,
    GaussianBlur,
    Spatter,
    Saturate,
}

/// The 15 benchmark corruptions in ImageNet-C order: noise, blur, weather, digital.
pub const BENCHMARK: [Corruption; 15] = [
    Corruption::GaussianNoise,
    Corruption::ShotNoise,
    Corruption::ImpulseNoise,
    Corruption::DefocusBlur,
    Corruption::GlassBlur,
    Corruption::MotionBlur,
    Corruption::ZoomBlur,
    Corruption::Snow,
    Corruption::Frost,
    Corruption::Fog,
    Corruption::Brightness,
    Corruption::Contrast,
    Corruption::ElasticTransform,
    Corruption::Pixelate,
    Corruption::JpegCompression,
];

/// The 4 held-out corruptions (ImageNet-C's extra.tar).
pub const HELD_OUT: [Corruption; 4] = [
    Corruption::SpeckleNoise,
    Corruption::GaussianBlur,
    Corruption::Spatter,
    Corruption::Saturate,
];

impl Corruption {
    /// All 19: the benchmark ones, then the held-out ones.
    pub const ALL: [Corruption; 19] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::DefocusBlur,
        Corruption::GlassBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
        Corruption::Snow,
        Corruption::Frost,
        Corruption::Fog,
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::ElasticTransform,
        Corruption::Pixelate,
        Corruption::JpegCompression,
        Corruption::SpeckleNoise,
        Corruption::GaussianBlur,
        Corruption::Spatter,
        Corruption::Saturate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::DefocusBlur => "defocus_blur",
            Corruption::GlassBlur => "glass_blur",
            Corruption::MotionBlur => "motion_blur",
            Corruption::ZoomBlur => "zoom_blur",
            Corruption::Snow => "snow",
            Corruption::Frost => "frost",
            Corruption::Fog => "fog",
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::ElasticTransform => "elastic_transform",
            Corruption::Pixelate => "pixelate",
            Corruption::JpegCompression => "jpeg_compression",
            Corruption::SpeckleNoise => "speckle_noise",
            Corruption::GaussianBlur => "gaussian_blur",
            Corruption::Spatter => "spatter",
            Corruption::Saturate => "saturate",
        }
    }

    /// Stable numeric id (position in [`Corruption::ALL`]); part of the seed derivation, so it
    /// must never be renumbered.
    pub fn id(self) -> u64 {
        self as u64
    }

    /// Whether the corruption draws random numbers at all (§6).
    pub fn is_random(self) -> bool {
        !matches!(
            self,
            Corruption::DefocusBlur
                | Corruption::ZoomBlur
                | Corruption::Brightness
                | Corruption::Contrast
                | Corruption::Pixelate
                | Corruption::JpegCompression
                | Corruption::GaussianBlur
                | Corruption::Saturate
        )
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Corruption {
    type Err = CorruptError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Corruption::ALL
            .into_iter()
            .find(|c| c.name() == key)
            .ok_or_else(|| CorruptError::UnknownCorruption {
                name: s.to_string(),
                valid: Corruption::ALL.map(Corruption::name).join(", "),
            })
    }
}

/// Which severity table to use (§3: one CIFAR-10-C row and one ImageNet-C row per corruption).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// CIFAR-10-C (HR-C), for small images.
    Cifar,
    /// ImageNet-C (HR-I), for 224-px images.
    ImageNet,
}

impl Table {
    /// The rule: shorter side ≤ 64 px → CIFAR, otherwise ImageNet.
    pub fn for_size(height: usize, width: usize) -> Table {
        if height.min(width) <= 64 {
            Table::Cifar
        } else {
            Table::ImageNet
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Cifar => "cifar",
            Table::ImageNet => "imagenet",
        }
    }
}

impl FromStr for Table {
    type Err = CorruptError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cifar" | "cifar10" | "cifar-10-c" | "cifar10c" => Ok(Table::Cifar),
            "imagenet" | "imagenet-c" | "imagenetc" => Ok(Table::ImageNet),
            _ => Err(CorruptError::UnknownTable(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CorruptError {
    #[error("severity {0} is out of range: it must be 1..=5")]
    Severity(u8),
    #[error("image has zero size ({height}x{width}x{channels})")]
    ZeroSize {
        height: usize,
        width: usize,
        channels: usize,
    },
    #[error("pixel buffer has {got} bytes, but {height}x{width}x{channels} needs {expected}")]
    BufferLength {
        got: usize,
        expected: usize,
        height: usize,
        width: usize,
        channels: usize,
    },
    #[error("unsupported channel count {0}: only 1 (gray) and 3 (RGB) are supported")]
    Channels(usize),
    #[error("unknown corruption {name:?}; valid names: {valid}")]
    UnknownCorruption { name: String, valid: String },
    #[error("unknown severity table {0:?}; valid: cifar, imagenet")]
    UnknownTable(String),
}

/// The per-image seed: SplitMix64 chained over (seed, corruption id, severity, index).
pub fn image_seed(seed: u64, c: Corruption, severity: u8, index: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let h = mix(seed);
    let h = mix(h ^ c.id());
    let h = mix(h ^ u64::from(severity));
    mix(h ^ index)
}

/// Everything about one (corruption, severity, table, image size) that does not depend on the
/// pixels, precomputed once: kernels, resampling maps, quantisation tables, the frost bank.
#[derive(Debug, Clone)]
pub struct Plan {
    corruption: Corruption,
    severity: u8,
    table: Table,
    height: usize,
    width: usize,
    channels: usize,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Gaussian(f32),
    Shot(f64, Vec<Option<rand_distr::Poisson<f64>>>),
    Impulse(f64),
    Speckle(f32),
    Defocus(filter::Kernel2d),
    Glass(filter::SepFilter, usize, usize),
    Motion(f64, f64),
    Zoom(Vec<(geom::AxisMap, geom::AxisMap)>),
    Snow(params::Snow, Option<(geom::AxisMap, geom::AxisMap)>),
    Frost((f32, f32), &'static [frost::Texture; 4]),
    Fog((f32, f64)),
    Brightness(f32),
    Contrast(f32),
    Elastic(digital::Elastic),
    Pixelate(digital::Pixelate),
    Jpeg(Box<jpeg::Jpeg>),
    GaussianBlur(filter::SepFilter),
    Spatter(params::Spatter, filter::SepFilter, filter::SepFilter),
    Saturate((f32, f32)),
}

fn validate(h: usize, w: usize, c: usize, severity: u8) -> Result<(), CorruptError> {
    if !(1..=5).contains(&severity) {
        return Err(CorruptError::Severity(severity));
    }
    if h == 0 || w == 0 || c == 0 {
        return Err(CorruptError::ZeroSize {
            height: h,
            width: w,
            channels: c,
        });
    }
    if c != 1 && c != 3 {
        return Err(CorruptError::Channels(c));
    }
    Ok(())
}

impl Plan {
    pub fn new(
        corruption: Corruption,
        severity: u8,
        table: Table,
        height: usize,
        width: usize,
        channels: usize,
    ) -> Result<Plan, CorruptError> {
        validate(height, width, channels, severity)?;
        let (t, s, h, w) = (table, severity, height, width);
        use filter::{Border, SepFilter};
        let kind = match corruption {
            Corruption::GaussianNoise => Kind::Gaussian(params::gaussian_noise(t, s)),
            Corruption::ShotNoise => {
                let lam = params::shot_noise(t, s);
                Kind::Shot(lam, noise::shot_table(lam))
            }
            Corruption::ImpulseNoise => Kind::Impulse(params::impulse_noise(t, s)),
            Corruption::SpeckleNoise => Kind::Speckle(params::speckle(t, s)),
            Corruption::DefocusBlur => {
                let (r, a) = params::defocus(t, s);
                Kind::Defocus(blur::disk_kernel(r, a))
            }
            Corruption::GlassBlur => {
                let (sigma, d, it) = params::glass(t, s);
                Kind::Glass(
                    SepFilter::gaussian(sigma, 4.0, h, w, Border::Nearest),
                    d,
                    it,
                )
            }
            Corruption::MotionBlur => {
                let (r, sg) = params::motion(t, s);
                Kind::Motion(r, sg)
            }
            Corruption::ZoomBlur => Kind::Zoom(
                params::zoom_factors(t, s)
                    .into_iter()
                    .map(|z| {
                        (
                            geom::AxisMap::clipped_zoom(h, z),
                            geom::AxisMap::clipped_zoom(w, z),
                        )
                    })
                    .collect(),
            ),
            Corruption::Snow => {
                let p = params::snow(t, s);
                let zoom = (p.zoom != 1.0).then(|| {
                    (
                        geom::AxisMap::clipped_zoom(h, p.zoom),
                        geom::AxisMap::clipped_zoom(w, p.zoom),
                    )
                });
                Kind::Snow(p, zoom)
            }
            Corruption::Frost => Kind::Frost(params::frost(t, s), frost::bank(t, channels)),
            Corruption::Fog => Kind::Fog(params::fog(t, s)),
            Corruption::Brightness => Kind::Brightness(params::brightness(t, s)),
            Corruption::Contrast => Kind::Contrast(params::contrast(t, s)),
            Corruption::ElasticTransform => Kind::Elastic(digital::Elastic::new(
                params::elastic_fractions(t, s),
                params::elastic_scale(t, h.min(w)),
                h,
                w,
            )),
            Corruption::Pixelate => {
                Kind::Pixelate(digital::Pixelate::new(params::pixelate(t, s), h, w))
            }
            Corruption::JpegCompression => {
                Kind::Jpeg(Box::new(jpeg::Jpeg::new(params::jpeg_quality(t, s))))
            }
            Corruption::GaussianBlur => Kind::GaussianBlur(SepFilter::gaussian(
                params::gaussian_blur(t, s),
                4.0,
                h,
                w,
                Border::Nearest,
            )),
            Corruption::Spatter => {
                let p = params::spatter(t, s);
                Kind::Spatter(
                    p,
                    SepFilter::gaussian(p.sigma, 4.0, h, w, Border::Nearest),
                    SepFilter::gaussian(f64::from(p.k), 4.0, h, w, Border::Nearest),
                )
            }
            Corruption::Saturate => Kind::Saturate(params::saturate(t, s)),
        };
        Ok(Plan {
            corruption,
            severity,
            table,
            height,
            width,
            channels,
            kind,
        })
    }

    pub fn corruption(&self) -> Corruption {
        self.corruption
    }

    pub fn severity(&self) -> u8 {
        self.severity
    }

    pub fn table(&self) -> Table {
        self.table
    }

    /// Corrupts image number `index` of a run seeded with `seed`.
    pub fn apply(&self, pixels: &[u8], seed: u64, index: u64) -> Result<Vec<u8>, CorruptError> {
        let (h, w, c) = (self.height, self.width, self.channels);
        if pixels.len() != h * w * c {
            return Err(CorruptError::BufferLength {
                got: pixels.len(),
                expected: h * w * c,
                height: h,
                width: w,
                channels: c,
            });
        }
        let mut rng =
            ChaCha8Rng::seed_from_u64(image_seed(seed, self.corruption, self.severity, index));
        let rng = &mut rng;
        Ok(match &self.kind {
            Kind::Gaussian(sigma) => noise::gaussian(pixels, *sigma, rng),
            Kind::Shot(lam, table) => noise::shot(pixels, *lam, table, rng),
            Kind::Impulse(p) => noise::impulse(pixels, *p, rng),
            Kind::Speckle(sigma) => noise::speckle(pixels, *sigma, rng),
            Kind::Defocus(k) => blur::defocus(pixels, h, w, c, k),
            Kind::Glass(f, d, it) => blur::glass(pixels, h, w, c, f, *d, *it, rng),
            Kind::Motion(r, s) => blur::motion(pixels, h, w, c, *r, *s, rng),
            Kind::Zoom(maps) => blur::zoom(pixels, w, c, maps),
            Kind::Snow(p, zoom) => weather::snow(pixels, h, w, c, p, zoom.as_ref(), rng),
            Kind::Frost(p, bank) => weather::frost(pixels, h, w, c, *p, bank, rng),
            Kind::Fog(p) => weather::fog(pixels, h, w, c, *p, rng),
            Kind::Brightness(a) => weather::brightness(pixels, c, *a),
            Kind::Contrast(a) => digital::contrast(pixels, c, *a),
            Kind::Elastic(e) => e.apply(pixels, h, w, c, rng),
            Kind::Pixelate(p) => p.apply(pixels, h, w, c),
            Kind::Jpeg(j) => j.roundtrip(pixels, h, w, c),
            Kind::GaussianBlur(f) => blur::gaussian_blur(pixels, h, w, c, f),
            Kind::Spatter(p, f1, f2) => spatter::spatter(pixels, h, w, c, p, f1, f2, rng),
            Kind::Saturate(p) => digital::saturate(pixels, c, *p),
        })
    }
}

/// Corrupts one image (u8, H×W×C interleaved, C = 1 or 3). Deterministic per
/// (seed, corruption, severity, index). For many images of one size, build a [`Plan`] once.
#[allow(clippy::too_many_arguments)]
pub fn corrupt_image(
    pixels: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    c: Corruption,
    severity: u8,
    table: Table,
    seed: u64,
    index: u64,
) -> Result<Vec<u8>, CorruptError> {
    Plan::new(c, severity, table, height, width, channels)?.apply(pixels, seed, index)
}

/// Corrupts every image of `set` in parallel; image i uses index i. `table` None picks
/// [`Table::for_size`]. Labels are kept.
pub fn corrupt_set(
    set: &ImageSet,
    c: Corruption,
    severity: u8,
    table: Option<Table>,
    seed: u64,
) -> Result<ImageSet, CorruptError> {
    corrupt_set_with(set, c, severity, table, seed, &|_| {})
}

/// [`corrupt_set`] with a progress callback, called from worker threads with the number of
/// images just finished (1 per image), e.g. `&|n| bar.inc(n as u64)`.
pub fn corrupt_set_with(
    set: &ImageSet,
    c: Corruption,
    severity: u8,
    table: Option<Table>,
    seed: u64,
    on_done: &(dyn Fn(usize) + Sync),
) -> Result<ImageSet, CorruptError> {
    let (h, w, ch) = (set.height, set.width, set.channels);
    let table = table.unwrap_or_else(|| Table::for_size(h, w));
    let plan = Plan::new(c, severity, table, h, w, ch)?;
    let size = set.image_size();
    if set.images.len() != size * set.len() {
        return Err(CorruptError::BufferLength {
            got: set.images.len(),
            expected: size * set.len(),
            height: h,
            width: w,
            channels: ch,
        });
    }
    let mut images = vec![0u8; set.images.len()];
    images
        .par_chunks_mut(size)
        .zip(set.images.par_chunks(size))
        .enumerate()
        .try_for_each(|(i, (dst, src))| {
            dst.copy_from_slice(&plan.apply(src, seed, i as u64)?);
            on_done(1);
            Ok(())
        })?;
    Ok(ImageSet {
        images,
        labels: set.labels.clone(),
        height: h,
        width: w,
        channels: ch,
    })
}
