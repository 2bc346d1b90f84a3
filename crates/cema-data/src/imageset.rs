/// A labelled set of images, u8 pixels, NHWC (`len × height × width × channels`), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (height, width, channels).
    pub fn geometry(&self) -> (usize, usize, usize) {
        (self.height, self.width, self.channels)
    }

    /// Bytes per image.
    pub fn image_size(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.images[i * s..(i + 1) * s]
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut images = Vec::with_capacity(indices.len() * self.image_size());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        ImageSet {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }

    /// The first `n` images (all of them when `n >= len`).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            images: self.images[..n * self.image_size()].to_vec(),
            labels: self.labels[..n].to_vec(),
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }
}
