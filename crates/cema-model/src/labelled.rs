//! [`Labelled`]: the borrowed view of labelled u8 images that evaluation and training read. The
//! model crate names only this view, so it needs no data loader (cema-data's `ImageSet` lends
//! one field by field; the CLI and the benchmark hold the sets).

use crate::error::{ModelError, Result};

/// `labels.len()` images of `height × width × channels` u8 pixels, NHWC, back to back.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    pixels: &'a [u8],
    labels: &'a [u32],
    geometry: (usize, usize, usize),
}

impl<'a> Labelled<'a> {
    /// Refuses pixels whose length is not one image of `geometry` per label.
    pub fn new(
        pixels: &'a [u8],
        labels: &'a [u32],
        geometry: (usize, usize, usize),
    ) -> Result<Labelled<'a>> {
        let size = geometry.0 * geometry.1 * geometry.2;
        if pixels.len() != labels.len() * size {
            return Err(ModelError::Input(format!(
                "{} pixel bytes for {} labels of {}×{}×{} images",
                pixels.len(),
                labels.len(),
                geometry.0,
                geometry.1,
                geometry.2
            )));
        }
        Ok(Labelled {
            pixels,
            labels,
            geometry,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (height, width, channels).
    pub fn geometry(&self) -> (usize, usize, usize) {
        self.geometry
    }

    /// Bytes per image.
    pub fn image_size(&self) -> usize {
        self.geometry.0 * self.geometry.1 * self.geometry.2
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &'a [u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// Pixels of images `range`.
    pub fn images(&self, range: std::ops::Range<usize>) -> &'a [u8] {
        let s = self.image_size();
        &self.pixels[range.start * s..range.end * s]
    }

    pub fn labels(&self) -> &'a [u32] {
        self.labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_that_is_not_one_image_per_label_is_refused() {
        let px = [0u8; 12];
        assert!(Labelled::new(&px, &[1, 2, 3], (2, 2, 1)).is_ok());
        let e = Labelled::new(&px, &[1, 2], (2, 2, 1)).unwrap_err();
        assert!(
            e.to_string()
                .contains("12 pixel bytes for 2 labels of 2×2×1"),
            "{e}"
        );
        let v = Labelled::new(&px[..8], &[7, 9], (2, 2, 1)).unwrap();
        assert_eq!((v.len(), v.image(1).len(), v.labels()[1]), (2, 4, 9));
    }
}
