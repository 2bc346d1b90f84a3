//! u8 ↔ float conversions with the original's final quantisation (§1, §9 item 1).

/// u8 → [0, 1].
pub fn to_unit(px: &[u8]) -> Vec<f32> {
    px.iter().map(|&v| f32::from(v) / 255.0).collect()
}

/// clamp01, ×255, then **truncate** like NumPy's uint8 cast. Clipping first means values outside
/// [0, 1] saturate instead of wrapping.
pub fn quantise(v: &[f32]) -> Vec<u8> {
    v.iter().map(|&x| quantise1(x)).collect()
}

#[inline]
pub fn quantise1(x: f32) -> u8 {
    // NaN maps to 0 through `as`, which is also what clamp-then-cast gives for 0/0 in §3.18.
    (x.clamp(0.0, 1.0) * 255.0) as u8
}

/// Luminance 0.299R + 0.587G + 0.114B (§1 RGB→gray), the one used for every gray conversion.
#[inline]
pub fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_roundtrip_is_exact() {
        // §10: the u8 → float → u8 round trip is exact in float32, so an identity corruption
        // stays an identity despite truncation.
        let px: Vec<u8> = (0..=255).collect();
        assert_eq!(quantise(&to_unit(&px)), px);
    }

    #[test]
    fn clips_instead_of_wrapping() {
        assert_eq!(quantise(&[-0.5, 1.7, f32::NAN]), [0, 255, 0]);
    }
}
