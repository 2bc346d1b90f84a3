//! Release-mode throughput: every benchmark corruption × severities 1–5 over the Fashion-MNIST
//! test set (10 000 images of 28×28; synthetic images of that shape when the file is absent).
//! `cargo run --release -p cema-corrupt --example throughput [n_images]`

use std::io::Read;
use std::time::Instant;

use cema_corrupt::{corrupt_set, Corruption, BENCHMARK, HELD_OUT};
use cema_data::ImageSet;

fn load(n: usize) -> ImageSet {
    let path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    if let Ok(f) = std::fs::File::open(path) {
        let mut gz = flate2::read::GzDecoder::new(f);
        let mut head = [0u8; 16];
        gz.read_exact(&mut head).expect("IDX header");
        let mut images = vec![0u8; n * 784];
        gz.read_exact(&mut images).expect("IDX images");
        return ImageSet {
            images,
            labels: vec![0; n],
            height: 28,
            width: 28,
            channels: 1,
        };
    }
    eprintln!("{path} not found: synthetic images");
    let images = (0..n * 784)
        .map(|i| ((i * 2_654_435_761usize) >> 7) as u8 / 2 + 40)
        .collect();
    ImageSet {
        images,
        labels: vec![0; n],
        height: 28,
        width: 28,
        channels: 1,
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let set = load(n);
    println!(
        "{n} images 28×28×1, {} rayon threads",
        rayon::current_num_threads()
    );
    let mut total = 0.0;
    let run = |c: Corruption| -> f64 {
        let t = Instant::now();
        for s in 1..=5 {
            let out = corrupt_set(&set, c, s, None, 0).expect("corrupt");
            std::hint::black_box(out);
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:18} {:>10.0} images/s  ({secs:.2} s for 5 severities)",
            c.name(),
            5.0 * n as f64 / secs
        );
        secs
    };
    // Build the frost bank outside the timed loop's first severity, as a CLI run would pay it once.
    let t = Instant::now();
    let _ = cema_corrupt::frost::bank(cema_corrupt::Table::Cifar, 1);
    println!(
        "frost bank generation: {:.2} s (once per process)",
        t.elapsed().as_secs_f64()
    );
    for c in BENCHMARK {
        total += run(c);
    }
    println!(
        "benchmark total: {total:.1} s for {} images → {:.0} images/s; 750 000 images ≈ {:.0} s",
        15 * 5 * n,
        (15 * 5 * n) as f64 / total,
        total * 750_000.0 / (15 * 5 * n) as f64
    );
    println!("held-out:");
    for c in HELD_OUT {
        run(c);
    }
}
