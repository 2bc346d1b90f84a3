//! The cloud's per-session replay buffer (SPEC §3 cloud step 4): the last `capacity` uploaded
//! samples as raw u8 pixels, FIFO.

use std::collections::VecDeque;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    image_size: usize,
    capacity: usize,
    images: VecDeque<Box<[u8]>>,
}

impl ReplayBuffer {
    pub fn new(image_size: usize, capacity: usize) -> Self {
        ReplayBuffer {
            image_size,
            capacity,
            // Grown as images arrive: reserving the capacity up front cost every session 160 KB
            // before its first upload.
            images: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `pixels.len() / image_size` images, evicting the oldest beyond capacity.
    pub fn push(&mut self, pixels: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        for img in pixels.chunks_exact(self.image_size) {
            if self.images.len() == self.capacity {
                self.images.pop_front();
            }
            self.images.push_back(img.into());
        }
    }

    /// Image `i`, oldest first.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.images[i]
    }

    /// `k` distinct images drawn uniformly (all of them, shuffled, if fewer are held), appended to
    /// `out`; returns how many were drawn.
    pub fn sample_into<R: Rng>(&self, rng: &mut R, k: usize, out: &mut Vec<u8>) -> usize {
        let k = k.min(self.len());
        for i in rand::seq::index::sample(rng, self.len(), k) {
            out.extend_from_slice(&self.images[i]);
        }
        k
    }
}
