//! Writes a contact sheet of all 19 corruptions: `cargo run --release --example sheet -- out.png
//! [cifar|imagenet] [name,name,...]`. Uses Fashion-MNIST when present, else a synthetic RGB pattern.

use std::io::Read;

use cema_corrupt::{contact_sheet, save_contact_sheet, Corruption, Table};
use cema_data::ImageSet;

fn fashion(n: usize) -> Option<ImageSet> {
    let f =
        std::fs::File::open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").ok()?;
    let mut gz = flate2::read::GzDecoder::new(f);
    let mut head = [0u8; 16];
    gz.read_exact(&mut head).ok()?;
    let mut images = vec![0u8; n * 784];
    gz.read_exact(&mut images).ok()?;
    Some(ImageSet {
        images,
        labels: vec![0; n],
        height: 28,
        width: 28,
        channels: 1,
    })
}

fn synthetic(n: usize, side: usize) -> ImageSet {
    let mut images = Vec::new();
    for i in 0..n {
        for y in 0..side {
            for x in 0..side {
                let (fy, fx) = (y as f64 / side as f64, x as f64 / side as f64);
                let blob = (-((fx - 0.5).powi(2) + (fy - 0.45).powi(2)) / 0.05).exp();
                let v = 0.3 + 0.4 * blob + 0.15 * ((fx * 9.0 + i as f64).sin() * (fy * 7.0).cos());
                images.extend(
                    [v * 230.0, v * 200.0 + 20.0, (1.0 - v) * 200.0 + 30.0]
                        .map(|c| c.clamp(0.0, 255.0) as u8),
                );
            }
        }
    }
    ImageSet {
        images,
        labels: vec![0; n],
        height: side,
        width: side,
        channels: 3,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).map(String::as_str).unwrap_or("corruptions.png");
    let imagenet = args.get(2).is_some_and(|a| a == "imagenet");
    let set = if imagenet {
        synthetic(2, 224)
    } else {
        fashion(3).unwrap_or_else(|| synthetic(3, 32))
    };
    let table = imagenet.then_some(Table::ImageNet);
    let rows: Vec<Corruption> = match args.get(3) {
        Some(list) => list
            .split(',')
            .map(|n| n.parse().expect("corruption name"))
            .collect(),
        None => Corruption::ALL.to_vec(),
    };
    let sheet = contact_sheet(&set, &rows, set.len(), 0, table).expect("sheet");
    save_contact_sheet(&sheet, std::path::Path::new(out)).expect("save");
    println!("wrote {out}; rows, top to bottom:");
    for c in &rows {
        println!("  {c}");
    }
}
