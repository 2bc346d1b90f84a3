//! Accuracy of a checkpoint on the first N Fashion-MNIST test images: `cargo run --release --example quick_eval -- models/foundation.safetensors 1000`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device = cema_model::cpu();
    let mut m = cema_model::Model::load(std::path::Path::new(&args[1]), &device).unwrap();
    let n: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let test = cema_data::fashion_mnist::load(None, cema_data::Split::Test)
        .unwrap()
        .take(n);
    for mode in [cema_model::NormMode::Running, cema_model::NormMode::Batch] {
        let t = std::time::Instant::now();
        let set = cema_model::Labelled::new(&test.images, &test.labels, test.geometry()).unwrap();
        let acc = m.accuracy(set, mode, 64).unwrap();
        println!(
            "{:?}: acc {acc:.4} ({:.0} img/s)",
            mode,
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
}
