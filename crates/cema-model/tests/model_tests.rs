//! cema-model against PyTorch golden numbers (tools/make_fixtures.py) and its own invariants.

mod common;

use std::path::Path;

use cema_model::{
    cpu, cross_entropy, tensors, Arch, Kind, Model, ModelError, NormMode, NormState, Sgd,
    SgdConfig, Trainable,
};
use common::*;

fn foundation() -> Model {
    Model::load(&repo_root().join("models/foundation.safetensors"), &cpu()).unwrap()
}

fn small_from_pth() -> Model {
    let t = tensors::read_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resnet8_w4.pth"),
    )
    .unwrap();
    let card = fmnist_card(Arch::CifarResnet {
        depth: 8,
        width: 4,
        in_channels: 1,
        num_classes: 10,
    });
    Model::from_tensors(card, &t, "resnet8_w4.pth", &cpu()).unwrap()
}

#[test]
fn foundation_logits_match_pytorch_running_and_batch_statistics() {
    let Some((px, _)) = first_test_images(8) else {
        return;
    };
    let g = golden();
    let mut m = foundation();
    let running = m.logits(&px, 8, NormMode::Running).unwrap();
    let d = max_abs_diff(&running, &golden_vec(&g, "foundation_running"));
    assert!(
        d < 1e-3,
        "running-statistics logits differ from PyTorch by {d}"
    );
    let batch = m.logits(&px, 8, NormMode::Batch).unwrap();
    let d = max_abs_diff(&batch, &golden_vec(&g, "foundation_batch"));
    assert!(
        d < 1e-3,
        "batch-statistics logits differ from PyTorch train-mode BN by {d}"
    );
}

#[test]
fn pth_state_dict_loads_by_pytorch_names() {
    let Some((px, _)) = first_test_images(8) else {
        return;
    };
    let mut m = small_from_pth();
    let logits = m.logits(&px, 8, NormMode::Running).unwrap();
    let d = max_abs_diff(&logits, &golden_vec(&golden(), "resnet8_w4_running"));
    assert!(
        d < 1e-4,
        "logits of the .pth model differ from PyTorch by {d}"
    );
}

#[test]
fn norm_affine_gradients_match_pytorch() {
    let Some((px, labels)) = first_test_images(8) else {
        return;
    };
    let g = golden();
    let mut m = small_from_pth();
    let x = cema_model::to_input(&m.card.input, &px, 8, &cpu()).unwrap();
    let out = m.backward(x, NormMode::Batch, false, Trainable::NormAffine, |l| {
        cross_entropy(l, &labels)
    });
    assert!((out.loss - g["resnet8_w4_batch_ce"].as_f64().unwrap() as f32).abs() < 1e-4);
    let store = m.store();
    let grad = |name: &str| {
        let i = store.index_of(name).unwrap();
        let (_, t) = out
            .grads
            .iter()
            .find(|(j, _)| *j == i)
            .unwrap_or_else(|| panic!("no grad for {name}"));
        t.clone().into_data().as_slice::<f32>().unwrap().to_vec()
    };
    assert!(
        max_abs_diff(
            &grad("bn1.weight"),
            &golden_vec(&g, "resnet8_w4_grad_bn1_weight")
        ) < 1e-4
    );
    assert!(
        max_abs_diff(
            &grad("layer3.0.bn2.bias"),
            &golden_vec(&g, "resnet8_w4_grad_layer3_0_bn2_bias")
        ) < 1e-4
    );
    // Only norm affine parameters received gradients.
    for (i, _) in &out.grads {
        assert!(
            store.kind(*i).is_norm_affine(),
            "{} got a gradient",
            store.name(*i)
        );
    }
    assert_eq!(out.grads.len(), m.norm_affine_names().len());
}

#[test]
fn norm_affine_step_changes_only_norm_state() {
    let Some((px, labels)) = first_test_images(16) else {
        return;
    };
    let mut m = small_from_pth();
    let before = m.state_dict();
    let x = cema_model::to_input(&m.card.input, &px, 16, &cpu()).unwrap();
    let out = m.backward(x, NormMode::Tbr, true, Trainable::NormAffine, |l| {
        cross_entropy(l, &labels)
    });
    let mut sgd = Sgd::new(SgdConfig::momentum(0.01, 0.9));
    sgd.step(m.store_mut(), out.grads, 0.01);
    let after = m.state_dict();
    let store = m.store();
    for (name, t) in &before {
        let kind = store.kind(store.index_of(name).unwrap());
        let changed = t.data != after[name].data;
        if kind.is_norm_state() {
            assert!(changed, "{name} ({kind:?}) did not move");
        } else {
            assert!(
                !changed,
                "{name} ({kind:?}) moved: frozen weights must not change"
            );
        }
    }
}

#[test]
fn tbr_forward_equals_running_statistics_and_gradient_equals_batch_norm_when_stats_agree() {
    let Some((px, labels)) = first_test_images(16) else {
        return;
    };
    let mut m = small_from_pth();
    let running = m.logits(&px, 16, NormMode::Running).unwrap();
    let tbr = m.logits(&px, 16, NormMode::Tbr).unwrap();
    assert!(
        max_abs_diff(&running, &tbr) < 1e-4,
        "TBR forward value must equal running-statistics normalisation"
    );

    // Make the running statistics equal to this batch's (a few momentum-1 updates are not available,
    // so iterate BN-train updates to convergence): then r = 1, d = 0 and TBR's gradient is BN's.
    for _ in 0..200 {
        let x = cema_model::to_input(&m.card.input, &px, 16, &cpu()).unwrap();
        m.forward(x, NormMode::Batch, true);
    }
    let grad_of = |m: &mut Model, mode| {
        let x = cema_model::to_input(&m.card.input, &px, 16, &cpu()).unwrap();
        let out = m.backward(x, mode, false, Trainable::NormAffine, |l| {
            cross_entropy(l, &labels)
        });
        let mut all = Vec::new();
        for (_, g) in out.grads {
            all.extend(g.into_data().as_slice::<f32>().unwrap().to_vec());
        }
        all
    };
    let g_tbr = grad_of(&mut m, NormMode::Tbr);
    let g_bn = grad_of(&mut m, NormMode::Batch);
    let scale = g_bn.iter().map(|v| v.abs()).fold(0.0, f32::max);
    let d = max_abs_diff(&g_tbr, &g_bn);
    // Running variance is stored unbiased (n/(n−1)), so r = sqrt((n−1)/n) ≈ 1 − 1/(2n), not exactly 1.
    assert!(
        d <= 0.02 * scale,
        "TBR gradient differs from BN gradient by {d} (scale {scale})"
    );
}

#[test]
fn norm_state_round_trips_and_rejects_bad_updates_without_changing_the_model() {
    let mut m = small_from_pth();
    let state = m.norm_state("edge", 3);
    assert_eq!(state.tensors.len(), m.norm_layers().len() * 4);
    let bytes = state.to_bytes();
    let back = NormState::from_bytes(&bytes, "blob").unwrap();
    assert_eq!(back, state);
    assert!(
        state.payload_bytes() < 4096,
        "a ResNet-8 w4 norm state is a few KB, got {}",
        state.payload_bytes()
    );

    let original = m.state_dict();
    let mut nan = state.clone();
    nan.tensors.get_mut("layer2.0.bn1.weight").unwrap().data[1] = f32::NAN;
    assert!(matches!(
        m.apply_norm_state(&nan),
        Err(ModelError::NonFinite { .. })
    ));
    let mut missing = state.clone();
    missing.tensors.remove("bn1.running_var");
    let e = m.apply_norm_state(&missing).unwrap_err();
    assert!(e.to_string().contains("bn1.running_var"), "{e}");
    let mut shape = state.clone();
    shape.tensors.get_mut("bn1.bias").unwrap().shape = vec![2, 2];
    assert!(matches!(
        m.apply_norm_state(&shape),
        Err(ModelError::ShapeMismatch { .. })
    ));
    let mut extra = state.clone();
    extra
        .tensors
        .insert("conv1.weight".into(), original["conv1.weight"].clone());
    assert!(matches!(
        m.apply_norm_state(&extra),
        Err(ModelError::UnexpectedTensor { .. })
    ));
    assert_eq!(
        m.state_dict(),
        original,
        "a rejected norm state must leave the model untouched"
    );

    assert!(NormState::from_bytes(b"garbage bytes", "blob").is_err());

    let mut moved = state.clone();
    moved.tensors.get_mut("bn1.bias").unwrap().data[0] = 0.5;
    m.apply_norm_state(&moved).unwrap();
    assert_eq!(m.state_dict()["bn1.bias"].data[0], 0.5);
}

#[test]
fn partial_norm_updates_install_only_their_half_and_validate_the_whole_state() {
    let mut m = small_from_pth();
    let original = m.state_dict();
    let mut moved = m.norm_state("edge", 1);
    moved.tensors.get_mut("bn1.bias").unwrap().data[0] = 0.5;
    moved.tensors.get_mut("bn1.running_mean").unwrap().data[0] = 7.0;

    // A NaN in the half that would not be installed still rejects the update.
    let mut nan = moved.clone();
    nan.tensors.get_mut("bn1.running_var").unwrap().data[0] = f32::NAN;
    assert!(matches!(
        m.apply_norm_affine(&nan),
        Err(ModelError::NonFinite { .. })
    ));
    // Statistics alone travel in their own form: exactly the running means and variances.
    let mut stats = m.norm_stats("edge", 1);
    stats.tensors.get_mut("bn1.running_mean").unwrap().data[0] = 7.0;
    assert!(stats.tensors.keys().all(|k| k.contains(".running_")));
    assert!(
        matches!(
            m.apply_norm_stats(&moved),
            Err(ModelError::UnexpectedTensor { .. })
        ),
        "a whole norm state is not a statistics update"
    );
    let mut nan = stats.clone();
    nan.tensors.get_mut("bn1.running_var").unwrap().data[1] = f32::INFINITY;
    assert!(matches!(
        m.apply_norm_stats(&nan),
        Err(ModelError::NonFinite { .. })
    ));
    let mut negative = stats.clone();
    negative.tensors.get_mut("bn1.running_var").unwrap().data[2] = -1.0;
    let e = m.check_norm_stats(&negative).unwrap_err().to_string();
    assert!(
        e.contains("bn1.running_var") && e.contains("negative"),
        "{e}"
    );
    let mut missing = stats.clone();
    missing.tensors.remove("bn1.running_mean");
    assert!(matches!(
        m.apply_norm_stats(&missing),
        Err(ModelError::MissingTensor { .. })
    ));
    let mut shape = moved.clone();
    shape.tensors.get_mut("bn1.running_mean").unwrap().shape = vec![1, 4];
    assert!(matches!(
        m.apply_norm_affine(&shape),
        Err(ModelError::ShapeMismatch { .. })
    ));
    let mut missing = moved.clone();
    missing.tensors.remove("bn1.running_var");
    assert!(m.apply_norm_affine(&missing).is_err());
    assert_eq!(m.state_dict(), original, "rejected updates change nothing");

    m.apply_norm_affine(&moved).unwrap();
    let after = m.state_dict();
    assert_eq!(after["bn1.bias"].data[0], 0.5);
    assert_eq!(after["bn1.running_mean"], original["bn1.running_mean"]);

    // The compact wire form: a layout fingerprint, then the values; read back against the
    // model's own layout only.
    let bytes = stats.to_stats_bytes();
    let values: usize = stats.tensors.values().map(|t| t.data.len()).sum();
    assert_eq!(bytes.len(), 8 + 4 * values);
    assert_eq!(m.norm_stats_from_bytes(&bytes, "edge", 1).unwrap(), stats);
    assert!(m
        .norm_stats_from_bytes(&bytes[..bytes.len() - 4], "edge", 1)
        .is_err());
    let mut foreign = bytes.clone();
    foreign[3] ^= 0x10;
    let e = m
        .norm_stats_from_bytes(&foreign, "edge", 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another layout"), "{e}");
    let negative_bytes = negative.to_stats_bytes();
    assert!(m.norm_stats_from_bytes(&negative_bytes, "edge", 1).is_err());

    let mut m = small_from_pth();
    m.check_norm_stats(&stats).unwrap();
    m.apply_norm_stats(&stats).unwrap();
    let after = m.state_dict();
    assert_eq!(after["bn1.running_mean"].data[0], 7.0);
    assert_eq!(after["bn1.bias"], original["bn1.bias"]);
}

#[test]
fn tracking_forward_predicts_from_running_statistics_then_moves_them_toward_the_batch() {
    let Some((px, _)) = first_test_images(16) else {
        return;
    };
    let mut m = small_from_pth();
    let running = m.logits(&px, 16, NormMode::Running).unwrap();
    let before = m.state_dict();
    let tracked = m.logits_tracking(&px, 16, 0.25).unwrap();
    assert!(
        max_abs_diff(&running, &tracked) < 1e-4,
        "the prediction must use the statistics from before the batch"
    );
    let mut reference = small_from_pth();
    let x = cema_model::to_input(&reference.card.input, &px, 16, &cpu()).unwrap();
    reference.forward(x, NormMode::Tbr, true);
    let after = m.state_dict();
    for (name, t) in &after {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            let (old, new) = (&before[name].data, &t.data);
            assert!(old != new, "{name} did not move");
            // Momentum 0.25 moves 2.5× as far as the default 0.1 from the same starting point.
            let by_default = &reference.state_dict()[name].data;
            for i in 0..old.len() {
                let expect = old[i] + 2.5 * (by_default[i] - old[i]);
                assert!(
                    (new[i] - expect).abs() <= 1e-3 * (1.0 + expect.abs()),
                    "{name}[{i}]: {} vs {expect}",
                    new[i]
                );
            }
        } else {
            assert_eq!(before[name], *t, "{name} must not change");
        }
    }
}

#[test]
fn checkpoint_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = small_from_pth();
    let path = dir.path().join("m.safetensors");
    m.save(&path).unwrap();
    let loaded = Model::load(&path, &cpu()).unwrap();
    assert_eq!(loaded.state_dict(), m.state_dict());

    let mut sd = m.state_dict();
    sd.remove("layer2.0.downsample.1.running_mean");
    let e = Model::from_tensors(m.card.clone(), &sd, "x.safetensors", &cpu()).unwrap_err();
    assert!(
        e.to_string().contains("layer2.0.downsample.1.running_mean")
            && e.to_string().contains("missing"),
        "{e}"
    );

    let mut sd = m.state_dict();
    sd.get_mut("fc.weight").unwrap().shape = vec![10, 8];
    sd.get_mut("fc.weight").unwrap().data.truncate(80);
    let e = Model::from_tensors(m.card.clone(), &sd, "x.safetensors", &cpu()).unwrap_err();
    assert!(
        e.to_string().contains("fc.weight") && e.to_string().contains("[10, 8]"),
        "{e}"
    );

    // Tampered weights: the card's sha256 catches it.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Model::load(&path, &cpu()),
        Err(ModelError::Checksum { .. })
    ));

    std::fs::write(dir.path().join("m.json"), "{not json").unwrap();
    let e = Model::load(&path, &cpu()).unwrap_err();
    assert!(e.to_string().contains("m.json"), "{e}");
    std::fs::write(dir.path().join("z.safetensors"), b"12345678garbage").unwrap();
    std::fs::write(
        dir.path().join("z.json"),
        serde_json::to_string(&m.card)
            .unwrap()
            .replace("\"sha256\"", "\"x\""),
    )
    .unwrap();
    let e = Model::load(&dir.path().join("z.safetensors"), &cpu()).unwrap_err();
    assert!(e.to_string().contains("z.safetensors"), "{e}");
}

#[test]
fn torchvision_layouts_have_pytorch_names_and_parameter_counts() {
    // torchvision's published parameter counts.
    let r18 = cema_model::Net::new(&Arch::resnet18(1000), &cpu(), 0).unwrap();
    assert_eq!(r18.store().parameter_count(), 11_689_512);
    let names: Vec<&str> = r18.store().names().collect();
    assert_eq!(
        names.len(),
        102,
        "resnet18 state dict without num_batches_tracked"
    );
    for n in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
        "fc.weight",
    ] {
        assert!(names.contains(&n), "{n}");
    }
    let r50 = cema_model::Net::new(&Arch::resnet50(1000), &cpu(), 0).unwrap();
    assert_eq!(r50.store().parameter_count(), 25_557_032);
    assert!(r50
        .store()
        .names()
        .any(|n| n == "layer1.0.downsample.1.weight"));
    assert!(r50.store().names().any(|n| n == "layer3.5.conv3.weight"));
}

#[test]
fn torchvision_resnet18_round_trips_through_safetensors_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut card = fmnist_card(Arch::TorchvisionResnet {
        depth: 18,
        in_channels: 3,
        num_classes: 5,
    });
    card.input = cema_model::InputSpec {
        height: 64,
        width: 64,
        channels: 3,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    };
    let mut m = Model::init(card, &cpu(), 7).unwrap();
    let path = dir.path().join("r18.safetensors");
    m.save(&path).unwrap();
    let mut back = Model::load(&path, &cpu()).unwrap();
    let px: Vec<u8> = (0..2 * 64 * 64 * 3).map(|i| (i * 31 % 251) as u8).collect();
    let a = m.logits(&px, 2, NormMode::Running).unwrap();
    let b = back.logits(&px, 2, NormMode::Running).unwrap();
    assert_eq!(a.len(), 10);
    assert_eq!(a, b);
}

#[test]
fn shipped_foundation_has_at_least_four_times_the_edge_flops() {
    let edge = Arch::resnet8(1, 10).macs(28, 28);
    let f = foundation();
    let found = f.card.architecture.macs(28, 28);
    assert!(found >= 4 * edge, "foundation {found} MACs vs edge {edge}");
    assert!(f.store().names().all(|n| !n.is_empty()));
    assert_eq!(f.store().kind(0), Kind::ConvWeight);
}

#[test]
fn wrong_input_size_is_a_clear_error() {
    let mut m = small_from_pth();
    let e = m.logits(&[0u8; 100], 1, NormMode::Running).unwrap_err();
    assert!(e.to_string().contains("100 bytes"), "{e}");
}

#[test]
fn device_specs_name_cpu_or_cuda_and_refuse_anything_else() {
    assert!(cema_model::device("cpu").unwrap() == cpu());
    for bad in ["gpu", "cpu:0", "cuda:", "cuda:-1", ""] {
        let e = cema_model::device(bad).unwrap_err();
        assert!(matches!(e, ModelError::Backend { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(&format!("`{bad}`")), "{bad}: {e}");
    }
    // The CPU-only build (the default) refuses CUDA with the way to get it.
    #[cfg(not(feature = "cuda"))]
    for spec in ["cuda", "cuda:1"] {
        let e = cema_model::device(spec).unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}

#[test]
fn efficientnet_lite_layouts_have_the_reference_names_counts_and_macs() {
    // Numbers counted on the reference PyTorch modules (efficientnet-lite-pytorch 0.1.0):
    // parameters without running statistics, BatchNorm layers, multiply-accumulates at the
    // native resolution (convolutions and classifier).
    for (variant, params, norms, macs, side) in [
        (0, 4_652_008, 49, 385_187_552u64, 224),
        (2, 6_092_072, 64, 859_736_272, 260),
    ] {
        let arch = Arch::efficientnet_lite(variant, 1000);
        assert_eq!(arch.native_resolution(), Some(side));
        let net = cema_model::Net::new(&arch, &cpu(), 0).unwrap();
        assert_eq!(
            net.store().parameter_count(),
            params,
            "lite{variant} parameters"
        );
        assert_eq!(net.norm_layers().len(), norms, "lite{variant} norm layers");
        assert!(net.norm_layers().iter().all(|l| l.eps == 1e-3));
        assert_eq!(arch.macs(side, side), macs, "lite{variant} MACs");
        let names: Vec<&str> = net.store().names().collect();
        for name in [
            "_conv_stem.weight",
            "_bn0.running_var",
            "_blocks.0._depthwise_conv.weight",
            "_blocks.1._expand_conv.weight",
            "_blocks.1._bn2.bias",
            "_conv_head.weight",
            "_bn1.weight",
            "_fc.bias",
        ] {
            assert!(names.contains(&name), "lite{variant}: {name}");
        }
    }
    assert!(Arch::efficientnet_lite(5, 10).validate().is_err());
}
