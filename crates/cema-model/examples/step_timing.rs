//! Times training steps of a CIFAR ResNet: `cargo run --release --example step_timing -- 8 16 128`.
use cema_model::*;
fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (depth, width, batch) = (a[0], a[1], a[2]);
    let device = cpu();
    let mut net = Net::new(
        &Arch::CifarResnet {
            depth,
            width,
            in_channels: 1,
            num_classes: 10,
        },
        &device,
        0,
    )
    .unwrap();
    let spec = InputSpec {
        height: 28,
        width: 28,
        channels: 1,
        mean: vec![0.3],
        std: vec![0.35],
    };
    let px: Vec<u8> = (0..batch * 784).map(|i| (i * 7 % 255) as u8).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let mut sgd = Sgd::new(SgdConfig::momentum(0.1, 0.9));
    for (name, which, mode) in [
        ("all/batch", Trainable::All, NormMode::Batch),
        ("norm/tbr", Trainable::NormAffine, NormMode::Tbr),
        ("norm/batch", Trainable::NormAffine, NormMode::Batch),
    ] {
        for rep in 0..2 {
            let t = std::time::Instant::now();
            let n = 5;
            for _ in 0..n {
                let x = to_input(&spec, &px, batch, &device).unwrap();
                let out = net.backward(x, mode, true, which, |l| cross_entropy(l, &labels));
                sgd.step(net.store_mut(), out.grads, 0.01);
            }
            if rep == 1 {
                println!(
                    "{name}: {:.0} img/s",
                    (n * batch) as f64 / t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let t = std::time::Instant::now();
    for _ in 0..5 {
        let x = to_input(&spec, &px, batch, &device).unwrap();
        let _ = store_vec(net.forward(x, NormMode::Running, false));
    }
    println!(
        "forward running: {:.0} img/s",
        (5 * batch) as f64 / t.elapsed().as_secs_f64()
    );
}
fn store_vec(t: Tensor<2>) -> usize {
    t.into_data().num_elements()
}
