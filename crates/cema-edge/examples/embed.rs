//! Embedding the edge in a program: predict on frames as they come, let the edge upload what it
//! selects and install what the cloud sends back.
//!
//!   cargo run --release -p cema-edge --example embed                  # offline
//!   cargo run --release -p cema-edge --example embed -- http://127.0.0.1:7878 cam-1 secret
//!
//! (with a cloud started as `cema cloud --device cam-1:secret`). The frames here are Fashion-MNIST
//! test images, 64 at a time; a camera's would be its frames, resized to the model's input.

use std::time::Duration;

use cema_edge::{CloudLink, Edge};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = cema_model::Model::load("models/edge.safetensors".as_ref(), &cema_model::cpu())?;
    let link = match args.as_slice() {
        [cloud, device, token] => Some(CloudLink::new(cloud, device, token)),
        [] => None,
        _ => return Err("usage: embed [CLOUD_URL DEVICE TOKEN]".into()),
    };
    let frames = cema_data::Dataset::FashionMnist.load(None, cema_data::Split::Test)?;
    let mut edge = Edge::new(model, Default::default(), link.as_ref())?;
    let (mut correct, per) = (0, frames.image_size());
    for (k, batch) in frames.images.chunks(64 * per).take(40).enumerate() {
        let out = edge.predict(batch)?;
        let labels = &frames.labels[k * 64..k * 64 + out.predictions.len()];
        correct += out
            .predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
        if k % 10 == 0 {
            println!(
                "batch {k}: {} selected{}, norm state v{}",
                out.selected.len(),
                if link.is_some() { " for upload" } else { "" },
                out.version
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = edge.finish(Duration::from_secs(5))?;
    println!(
        "{} images, accuracy {:.2}%, {} selected, {} uploaded, {} updates applied, v{}",
        c.images,
        100.0 * correct as f64 / c.images as f64,
        c.selected,
        c.uploaded,
        c.updates_applied,
        c.version
    );
    Ok(())
}
