//! One stream: its order, its images (read or generated), and one method's pass over it.

use std::path::PathBuf;
use std::time::Instant;

use cema_adapt::{Dropped, Method};
use cema_corrupt::{Corruption, Plan, Table};
use cema_data::cifar_c::CorruptedDir;
use cema_data::ImageSet;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::run::Observer;

/// One method's numbers on one stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamResult {
    pub images: usize,
    pub correct: usize,
    pub uploaded: usize,
    pub selected: usize,
    /// Selected samples the method itself predicted correctly.
    pub selected_correct: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub updates: u64,
    pub seconds: f64,
    /// Of `seconds`, the cloud side's (CEMA and random upload).
    pub cloud_seconds: f64,
    /// Correct predictions per batch, in stream order (the continual plot's curve).
    pub batch_correct: Vec<u32>,
    /// With `--diagnose-teacher`: [uploaded, dropped] samples.
    pub teacher: Option<[TeacherCounts; 2]>,
    /// Dropped samples per selection criterion (cema, eata).
    pub dropped: Option<Dropped>,
}

/// The teacher against the edge on one group of samples (`--diagnose-teacher`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TeacherCounts {
    pub samples: usize,
    pub edge_correct: usize,
    pub teacher_correct: usize,
    /// Teacher right where the edge is wrong: what distilling on these could correct.
    pub teacher_corrects_edge: usize,
}

impl TeacherCounts {
    pub fn add(&mut self, o: &TeacherCounts) {
        self.samples += o.samples;
        self.edge_correct += o.edge_correct;
        self.teacher_correct += o.teacher_correct;
        self.teacher_corrects_edge += o.teacher_corrects_edge;
    }
    pub fn to_json(self) -> Value {
        let f = |k: usize| (self.samples > 0).then(|| k as f64 / self.samples as f64);
        json!({
            "samples": self.samples,
            "edge_accuracy": f(self.edge_correct),
            "teacher_accuracy": f(self.teacher_correct),
            "teacher_corrects_edge": f(self.teacher_corrects_edge),
        })
    }
}

pub fn teacher_json(t: &Option<[TeacherCounts; 2]>) -> Value {
    match t {
        Some([up, dropped]) => json!({ "uploaded": up.to_json(), "dropped": dropped.to_json() }),
        None => Value::Null,
    }
}

impl StreamResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
    pub fn upload_fraction(&self) -> f64 {
        self.selected as f64 / self.images.max(1) as f64
    }
    /// The method's own accuracy on the samples it selected (none selected: `None`): how much
    /// of what it uploads it already gets right, i.e. how little a teacher can correct there.
    pub fn selected_accuracy(&self) -> Option<f64> {
        (self.selected > 0).then(|| self.selected_correct as f64 / self.selected as f64)
    }
    pub fn to_json(&self, severity: u8) -> Value {
        json!({
            "accuracy": self.accuracy(),
            "upload_fraction": self.upload_fraction(),
            "uploaded": self.uploaded,
            "selected": self.selected,
            "selected_accuracy": self.selected_accuracy(),
            "dropped": self.dropped,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "updates": self.updates,
            "seconds": self.seconds,
            "cloud_seconds": self.cloud_seconds,
            "edge_images_per_s": self.images as f64 / (self.seconds - self.cloud_seconds).max(1e-9),
            "cloud_samples_per_s": (self.cloud_seconds > 0.0)
                .then(|| self.uploaded as f64 / self.cloud_seconds),
            "images": self.images,
            "severity": severity,
            "batch_correct": self.batch_correct,
            "teacher_diagnosis": teacher_json(&self.teacher),
        })
    }
}

/// Where the corrupted images come from: a folder in the CIFAR-10-C layout, or none (every
/// corruption generated). Given explicitly a folder is `required`: every corruption asked for must
/// be there, and none is generated in its place (a mistyped path must not quietly benchmark
/// generated data); the default folder is used for the corruptions it holds, the others generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupted {
    pub dir: Option<PathBuf>,
    pub required: bool,
    /// For a test set loaded from class folders: each image's path under the folder
    /// (`class/file`), in test-set order, so that a copy in the ImageNet-C layout
    /// (`<corruption>/<severity>/<class>/<file>`) is matched to it image by image.
    pub names: Option<std::sync::Arc<Vec<PathBuf>>>,
}

impl Corrupted {
    /// A folder the user named: it must hold every corruption asked for.
    pub fn given(dir: impl Into<PathBuf>) -> Self {
        Corrupted {
            dir: Some(dir.into()),
            required: true,
            names: None,
        }
    }

    /// The default folder: read what it holds, generate the rest.
    pub fn default_at(dir: impl Into<PathBuf>) -> Self {
        Corrupted {
            dir: Some(dir.into()),
            required: false,
            names: None,
        }
    }

    /// No folder: every corruption is generated from the clean test set.
    pub fn generated() -> Self {
        Corrupted {
            dir: None,
            required: false,
            names: None,
        }
    }

    /// With the test set's image names (see [`Corrupted::names`]).
    pub fn with_names(self, names: Option<Vec<PathBuf>>) -> Self {
        Corrupted {
            names: names.map(std::sync::Arc::new),
            ..self
        }
    }

    /// Whether `dir` holds corruption `c`: `<c>.npy` (the CIFAR-10-C layout) or `<c>/` (ImageNet-C).
    fn holds(dir: &std::path::Path, c: Corruption) -> bool {
        dir.join(format!("{}.npy", c.name())).exists() || dir.join(c.name()).is_dir()
    }

    pub fn file(&self, c: Corruption) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}.npy", c.name())))
    }

    /// Checks, before anything runs, that a given folder exists and holds every corruption.
    pub fn check(&self, corruptions: &[Corruption]) -> anyhow::Result<()> {
        let (Some(dir), true) = (&self.dir, self.required) else {
            return Ok(());
        };
        anyhow::ensure!(dir.is_dir(), "{}: no such folder", dir.display());
        let missing: Vec<String> = corruptions
            .iter()
            .filter(|&&c| !Self::holds(dir, c))
            .map(|c| format!("{0}.npy or {0}/", c.name()))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{}: has no {} (given explicitly, the folder must hold every corruption asked for; \
             leave it out to generate them)",
            dir.display(),
            missing.join(", ")
        );
        Ok(())
    }
}

/// The fixed stream order for `seed`: a ChaCha8 shuffle of `0..len`.
pub fn stream_order(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// The test images at `indices` under one corruption: read from `dir` when it holds that
/// corruption, else generated image by image with the image's index in the test set, which gives
/// the same bytes as `cema corrupt --seed seed` (and `corrupt_set`) without corrupting the rest.
pub fn stream(
    corrupted: &Corrupted,
    test: &ImageSet,
    indices: &[usize],
    c: Corruption,
    severity: u8,
    seed: u64,
) -> anyhow::Result<(ImageSet, &'static str)> {
    if let Some(dir) = corrupted.dir.as_ref().filter(|d| d.join(c.name()).is_dir()) {
        return imagenet_c(dir, corrupted, test, indices, c, severity);
    }
    let file = corrupted.file(c);
    if let (Some(dir), Some(file)) = (&corrupted.dir, file.as_ref().filter(|f| f.exists())) {
        let set = CorruptedDir::open(dir)?.load(c.name(), severity)?;
        anyhow::ensure!(
            (set.height, set.width, set.channels) == (test.height, test.width, test.channels),
            "{}: {}×{}×{} images, but the clean test set's are {}×{}×{} (a corrupted copy of \
             another dataset? check --dataset and --corrupted)",
            dir.join(format!("{}.npy", c.name())).display(),
            set.height,
            set.width,
            set.channels,
            test.height,
            test.width,
            test.channels
        );
        anyhow::ensure!(
            set.len() >= test.len(),
            "{}: {} images per severity, fewer than the clean test set's {}: a partial copy \
             cannot be streamed in the seed's order of the whole test set (write a complete one \
             with `cema corrupt`, or leave the folder out to generate the corruption)",
            file.display(),
            set.len(),
            test.len()
        );
        anyhow::ensure!(
            set.labels[..test.len()] == test.labels[..],
            "{}: labels do not match the clean test set (generated from another split or dataset?)",
            dir.display()
        );
        return Ok((set.select(indices), "file"));
    }
    if let (Some(file), true) = (&file, corrupted.required) {
        anyhow::bail!(
            "{}: no such file, and the folder was given explicitly, so nothing is generated in \
             its place",
            file.display()
        );
    }
    let (h, w, ch) = (test.height, test.width, test.channels);
    let plan = Plan::new(c, severity, Table::for_size(h, w), h, w, ch)?;
    let images = indices
        .par_iter()
        .map(|&i| plan.apply(test.image(i), seed, i as u64))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let set = ImageSet {
        images,
        labels: indices.iter().map(|&i| test.labels[i]).collect(),
        height: h,
        width: w,
        channels: ch,
    };
    Ok((set, "generated"))
}

/// A stream's images from a copy in the ImageNet-C layout, matched to the test set by name.
fn imagenet_c(
    dir: &std::path::Path,
    corrupted: &Corrupted,
    test: &ImageSet,
    indices: &[usize],
    c: Corruption,
    severity: u8,
) -> anyhow::Result<(ImageSet, &'static str)> {
    use cema_data::folder::{
        imagenet_c_dir, load_imagenet_c, ColorMode, FolderOptions, SizePolicy,
    };
    let root = imagenet_c_dir(dir, c.name(), severity);
    let names = corrupted.names.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the ImageNet-C layout is read for a test set of class folders (--dataset \
             folder), whose images it matches by class folder and file name",
            dir.join(c.name()).display()
        )
    })?;
    let opts = FolderOptions {
        color: if test.channels == 1 {
            ColorMode::Luma
        } else {
            ColorMode::Rgb
        },
        size: SizePolicy::Resize {
            height: test.height as u32,
            width: test.width as u32,
        },
    };
    let copy = load_imagenet_c(dir, c.name(), severity, &opts)?;
    let by_name: std::collections::HashMap<&std::path::Path, usize> = copy
        .files
        .iter()
        .enumerate()
        .map(|(k, f)| (f.strip_prefix(&root).unwrap_or(f), k))
        .collect();
    let per = test.image_size();
    let mut images = Vec::with_capacity(indices.len() * per);
    for &i in indices {
        let name = &names[i];
        let k = by_name.get(name.as_path()).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: has no {} (the clean test set's image {i})",
                root.display(),
                name.display()
            )
        })?;
        images.extend_from_slice(copy.set.image(*k));
    }
    let set = ImageSet {
        images,
        labels: indices.iter().map(|&i| test.labels[i]).collect(),
        height: test.height,
        width: test.width,
        channels: test.channels,
    };
    Ok((set, "file"))
}

/// Feeds `set` to `method` batch by batch and scores the predictions it returns.
pub fn run_stream(
    method: &mut dyn Method,
    set: &ImageSet,
    batch: usize,
    progress: &dyn Observer,
) -> anyhow::Result<StreamResult> {
    let size = set.image_size();
    let mut r = StreamResult {
        images: set.len(),
        ..StreamResult::default()
    };
    let t0 = Instant::now();
    for start in (0..set.len()).step_by(batch) {
        let n = batch.min(set.len() - start);
        let pixels = &set.images[start * size..(start + n) * size];
        let out = method.process(pixels, n)?;
        anyhow::ensure!(
            out.predictions.len() == n,
            "{} returned {} predictions for {n} images",
            method.name(),
            out.predictions.len()
        );
        let labels = &set.labels[start..start + n];
        let correct = out
            .predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
        r.selected_correct += out
            .selected
            .iter()
            .filter(|&&i| out.predictions[i] == labels[i])
            .count();
        if let Some(teacher) = &out.teacher {
            let t = r.teacher.get_or_insert_with(Default::default);
            let mut uploaded = vec![false; n];
            out.selected.iter().for_each(|&i| uploaded[i] = true);
            for i in 0..n {
                let g = &mut t[usize::from(!uploaded[i])];
                let (e, te) = (out.predictions[i] == labels[i], teacher[i] == labels[i]);
                g.samples += 1;
                g.edge_correct += usize::from(e);
                g.teacher_correct += usize::from(te);
                g.teacher_corrects_edge += usize::from(te && !e);
            }
        }
        r.correct += correct;
        r.batch_correct.push(correct as u32);
        r.uploaded += out.uploaded;
        r.selected += out.selected.len();
        r.bytes_up += out.bytes_up;
        r.bytes_down += out.bytes_down;
        r.updates += u64::from(out.updated);
        r.cloud_seconds += out.cloud_seconds;
        if let Some(d) = &out.dropped {
            r.dropped.get_or_insert_with(Dropped::default).add(d);
        }
        progress.advanced(n as u64);
    }
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_order_is_a_seeded_permutation() {
        let a = stream_order(100, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, stream_order(100, 0));
        assert_ne!(a, stream_order(100, 1));
        assert_ne!(a, sorted);
    }

    #[test]
    fn generated_streams_equal_corrupt_set_on_the_same_indices() {
        let test = ImageSet {
            images: (0..6 * 16).map(|i| (i * 7 % 251) as u8).collect(),
            labels: (0..6).collect(),
            height: 4,
            width: 4,
            channels: 1,
        };
        let c = Corruption::GaussianNoise;
        let whole = cema_corrupt::corrupt_set(&test, c, 3, None, 9).unwrap();
        let idx = [4, 1, 5];
        let dir = Corrupted::default_at("/nonexistent");
        let (s, from) = stream(&dir, &test, &idx, c, 3, 9).unwrap();
        assert_eq!(from, "generated");
        assert_eq!(s.images, whole.select(&idx).images);
        assert_eq!(s.labels, vec![4, 1, 5]);
        // Given explicitly, a folder without the corruption generates nothing.
        let given = Corrupted::given("/nonexistent");
        let e = stream(&given, &test, &idx, c, 3, 9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/gaussian_noise.npy"), "{e}");
        let e = given.check(&[c]).unwrap_err().to_string();
        assert!(e.contains("no such folder"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = Corrupted::given(dir.path())
            .check(&[c])
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no gaussian_noise.npy"), "{e}");
        assert!(Corrupted::default_at(dir.path()).check(&[c]).is_ok());
        // An ImageNet-C-layout folder is matched by image names, which only class-folder test
        // sets have.
        std::fs::create_dir_all(dir.path().join("gaussian_noise/3")).unwrap();
        let imagenet_c = Corrupted::given(dir.path());
        assert!(imagenet_c.check(&[c]).is_ok());
        let e = stream(&imagenet_c, &test, &idx, c, 3, 9)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ImageNet-C layout") && e.contains("--dataset"),
            "{e}"
        );
    }
}
