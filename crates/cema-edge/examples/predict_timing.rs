//! Median time of one `Edge::predict` call (offline: model, selection, no network) for batches of
//! 1 and 64 Fashion-MNIST frames: the Rust side of `bench/python_overhead.py`.
//!
//!   cargo run --release -p cema-edge --example predict_timing -- [CALLS]

use std::time::Instant;

use cema_edge::Edge;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: usize = std::env::args().nth(1).map_or(Ok(200), |s| s.parse())?;
    let model = cema_model::Model::load("models/edge.safetensors".as_ref(), &cema_model::cpu())?;
    let frames = cema_data::Dataset::FashionMnist.load(None, cema_data::Split::Test)?;
    let per = frames.image_size();
    let mut out = serde_json::Map::new();
    for batch in [1usize, 64] {
        let mut edge = Edge::new(model.clone(), Default::default(), None)?;
        // The first batch (of 64) adopts its statistics, as every timed edge's does.
        edge.predict(&frames.images[..64 * per])?;
        let mut times = Vec::with_capacity(calls);
        for k in 0..calls {
            let at = (k * batch) % (frames.len() - batch);
            let t = Instant::now();
            edge.predict(&frames.images[at * per..(at + batch) * per])?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        out.insert(format!("b{batch}_median_s"), times[calls / 2].into());
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
