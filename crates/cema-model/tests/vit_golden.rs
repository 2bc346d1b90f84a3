//! The ViT (timm's `VisionTransformer`, by timm's names) against timm itself on random weights:
//! logits and the LayerNorm γ/β gradients of the mean prediction entropy. Fixtures:
//! `python tools/vit_fixtures.py` (a tiny configuration; the architecture is in the file's metadata).

mod common;

use std::collections::BTreeMap;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};
use cema_model::{
    cpu, Arch, HostTensor, InputSpec, Model, ModelCard, NamedTensors, NormKind, NormMode, Trainable,
};
use common::max_abs_diff;
use safetensors::SafeTensors;

struct Fixture {
    arch: Arch,
    weights: NamedTensors,
    input: HostTensor,
    logits: Vec<f32>,
    grads: BTreeMap<String, Vec<f32>>,
}

fn fixture() -> Fixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vit/vit_tiny.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let arch: Arch =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["architecture"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut f = Fixture {
        arch,
        weights: NamedTensors::new(),
        input: HostTensor {
            shape: vec![],
            data: vec![],
        },
        logits: vec![],
        grads: BTreeMap::new(),
    };
    for (name, view) in st.tensors() {
        let t = HostTensor {
            shape: view.shape().to_vec(),
            data: view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        };
        match name.as_str() {
            "input" => f.input = t,
            "logits" => f.logits = t.data,
            _ => match name.strip_prefix("grad.") {
                Some(param) => {
                    f.grads.insert(param.to_string(), t.data);
                }
                None => {
                    f.weights.insert(name, t);
                }
            },
        }
    }
    f
}

fn card(arch: Arch, side: usize) -> ModelCard {
    let classes = (0..arch.num_classes()).map(|k| format!("c{k}")).collect();
    let mut card = ModelCard::fashion_mnist("vit-tiny", "foundation", arch, classes);
    card.input = InputSpec {
        height: side,
        width: side,
        channels: 3,
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    card
}

fn model(f: &Fixture) -> Model {
    Model::from_tensors(card(f.arch.clone(), 16), &f.weights, "vit fixture", &cpu()).unwrap()
}

fn input(f: &Fixture) -> Tensor<4> {
    let s = &f.input.shape;
    Tensor::<4>::from_data(
        TensorData::new(f.input.data.clone(), [s[0], s[1], s[2], s[3]]),
        &cpu(),
    )
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn vit_logits_match_timm() {
    let f = fixture();
    let mut m = model(&f);
    assert_eq!(
        m.norm_layers().len(),
        5,
        "two blocks of two, and the final norm"
    );
    assert!(m
        .norm_layers()
        .iter()
        .all(|l| l.kind == NormKind::LayerNorm));
    for mode in [NormMode::Running, NormMode::Batch, NormMode::Tbr] {
        // LayerNorm normalises every token by its own statistics: the mode changes nothing.
        let ours = host(m.forward(input(&f), mode, true));
        let d = max_abs_diff(&ours, &f.logits);
        eprintln!("{mode:?}: max |Δ logit| {d:.2e}");
        assert!(d <= 1e-4, "{mode:?}: max |Δ logit| {d} against timm");
    }
}

#[test]
fn vit_layernorm_gradients_of_the_entropy_match_timm() {
    let f = fixture();
    let mut m = model(&f);
    let out = m.backward(
        input(&f),
        NormMode::Running,
        false,
        Trainable::NormAffine,
        |logits| {
            let n = logits.dims()[0] as f32;
            let p = softmax(logits.clone(), 1);
            (p * log_softmax(logits, 1)).sum().neg() / n
        },
    );
    let store = m.net().store();
    assert_eq!(out.grads.len(), f.grads.len(), "every LayerNorm γ and β");
    for (i, g) in &out.grads {
        let name = store.name(*i);
        let ours = g.clone().into_data().try_to_vec::<f32>().unwrap();
        let theirs = &f.grads[name];
        let d = max_abs_diff(&ours, theirs);
        let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs()));
        eprintln!("{name}: max |Δ grad| {d:.2e} (largest {scale:.2e})");
        assert!(scale > 1e-4, "{name}: a gradient this small tests nothing");
        assert!(d <= 1e-4, "{name}: max |Δ grad| {d} against timm");
    }
}

#[test]
fn a_vit_norm_state_is_its_layernorm_affine_only_and_round_trips_the_wire() {
    let f = fixture();
    let mut m = model(&f);
    let state = m.norm_state("vit-tiny", 3);
    assert_eq!(state.tensors.len(), 10);
    assert!(state
        .tensors
        .keys()
        .all(|k| k.ends_with(".weight") || k.ends_with(".bias")));
    assert_eq!(state.payload_bytes(), 10 * 32 * 4);
    let back = cema_model::NormState::from_bytes(&state.to_bytes(), "test").unwrap();
    assert_eq!(back, state);
    m.apply_norm_state(&back).unwrap();
    // A BatchNorm-style entry is refused by name, and the model is unchanged.
    let mut bad = back.clone();
    bad.tensors.insert(
        "norm.running_mean".into(),
        HostTensor {
            shape: vec![32],
            data: vec![0.0; 32],
        },
    );
    let err = m.apply_norm_state(&bad).unwrap_err().to_string();
    assert!(err.contains("norm.running_mean"), "{err}");
    assert_eq!(m.norm_state("vit-tiny", 3), state);
}

#[test]
fn a_vit_refuses_another_resolution_naming_its_position_table() {
    let f = fixture();
    let Err(err) = Model::from_tensors(card(f.arch.clone(), 20), &f.weights, "vit", &cpu()) else {
        panic!("a 20×20 input does not fit a 16×16 position table")
    };
    let err = err.to_string();
    assert!(err.contains("pos_embed"), "{err}");
}

#[test]
fn the_token_path_computes_what_burn_computes() {
    let f = fixture();
    let mut m = model(&f);
    m.hand_written_paths().unwrap();
    // 20 images: 340 token rows, enough for the projections to split over the pool.
    let n = 20;
    let px: Vec<u8> = (0..n * 16 * 16 * 3)
        .map(|i| ((i as u64 * 2654435761) >> 7) as u8)
        .collect();
    let classes = 5;
    let token = m.logits(&px, n, NormMode::Running).unwrap();
    let token_back = m
        .norm_affine_backward(&px, n, NormMode::Tbr, true, |l| {
            cema_model::mean_entropy_grad(l, classes)
        })
        .unwrap();
    m.set_fold_inference(false);
    m.set_native_backward(false);
    let burn = m.logits(&px, n, NormMode::Running).unwrap();
    let burn_back = m
        .norm_affine_backward(&px, n, NormMode::Tbr, true, |l| {
            cema_model::mean_entropy_grad(l, classes)
        })
        .unwrap();
    let d = max_abs_diff(&token, &burn);
    eprintln!("logits: max |Δ| {d:.2e}");
    assert!(d <= 1e-4, "logits: max |Δ| {d}");
    assert!(max_abs_diff(&token_back.logits, &burn) <= 1e-4);
    assert!((token_back.loss - burn_back.loss).abs() <= 1e-5);
    let burn_grads: BTreeMap<usize, Vec<f32>> = burn_back.grads.into_iter().collect();
    assert_eq!(token_back.grads.len(), burn_grads.len(), "every γ and β");
    for (i, g) in &token_back.grads {
        let name = m.net().store().name(*i).to_string();
        let d = max_abs_diff(g, &burn_grads[i]);
        let scale = g.iter().fold(0f32, |a, v| a.max(v.abs()));
        eprintln!("{name}: max |Δ grad| {d:.2e} (largest {scale:.2e})");
        assert!(d <= 1e-4 * scale.max(1e-2), "{name}: max |Δ grad| {d}");
    }
}

#[test]
fn a_malformed_vit_card_is_refused_naming_the_number() {
    let f = fixture();
    let with = |edit: fn(&mut Arch)| {
        let mut arch = f.arch.clone();
        edit(&mut arch);
        match Model::from_tensors(card(arch, 16), &f.weights, "vit", &cpu()) {
            Ok(_) => panic!("accepted a malformed architecture"),
            Err(e) => e.to_string(),
        }
    };
    let e = with(|a| {
        if let Arch::Vit { heads, .. } = a {
            *heads = 5;
        }
    });
    assert!(e.contains("32") && e.contains("5 heads"), "{e}");
    let e = with(|a| {
        if let Arch::Vit { patch, .. } = a {
            *patch = 5;
        }
    });
    assert!(e.contains("patch 5"), "{e}");
    let e = with(|a| {
        if let Arch::Vit { depth, .. } = a {
            *depth = 0;
        }
    });
    assert!(e.contains("positive"), "{e}");
    // Weights of another shape (a wider MLP) are refused naming the tensor.
    let e = with(|a| {
        if let Arch::Vit { mlp_dim, .. } = a {
            *mlp_dim = 128;
        }
    });
    assert!(e.contains("mlp.fc1"), "{e}");
}
