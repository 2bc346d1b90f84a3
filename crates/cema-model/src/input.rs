//! From u8 pixels (NHWC, what datasets hold and edges upload) to the model's normalised NCHW floats.

use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::InputSpec;
use crate::error::{ModelError, Result};

/// Converts `n` images of `spec`'s geometry to a normalised NCHW tensor.
pub fn to_input(spec: &InputSpec, pixels: &[u8], n: usize, device: &Device) -> Result<Tensor<4>> {
    check_pixels(spec, pixels, n)?;
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let per = h * w * c;
    let mut out = vec![0f32; pixels.len()];
    let (scale, shift) = pixel_affine(spec);
    for i in 0..n {
        let src = &pixels[i * per..(i + 1) * per];
        let dst = &mut out[i * per..(i + 1) * per];
        for ch in 0..c {
            let plane = &mut dst[ch * h * w..(ch + 1) * h * w];
            for (p, v) in plane.iter_mut().enumerate() {
                *v = src[p * c + ch] as f32 * scale[ch] - shift[ch];
            }
        }
    }
    Ok(Tensor::<4>::from_data(
        TensorData::new(out, [n, c, h, w]),
        device,
    ))
}

/// `pixels` must hold exactly `n` images of `spec`'s geometry.
pub(crate) fn check_pixels(spec: &InputSpec, pixels: &[u8], n: usize) -> Result<()> {
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    if pixels.len() != n * h * w * c {
        return Err(ModelError::Input(format!(
            "{} bytes for {n} images of {h}×{w}×{c} (expected {})",
            pixels.len(),
            n * h * w * c
        )));
    }
    Ok(())
}

/// Per channel, `(scale, shift)` with `x = u8 · scale − shift`: `(u8/255 − mean)/std` in the one
/// rounding both forward paths use, so they see identical floats.
pub(crate) fn pixel_affine(spec: &InputSpec) -> (Vec<f32>, Vec<f32>) {
    let scale = spec.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift = spec
        .mean
        .iter()
        .zip(&spec.std)
        .map(|(m, s)| m / s)
        .collect();
    (scale, shift)
}
