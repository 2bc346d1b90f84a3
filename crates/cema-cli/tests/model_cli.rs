//! `cema train`, `cema eval` and `cema speed` through the real binary: happy paths on tiny runs and
//! every bad-input path with its exit code and message.

mod common;

use std::path::Path;

use common::{cema, repo, stderr};

fn have_fmnist() -> bool {
    let ok = Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists();
    if !ok {
        eprintln!("note: Fashion-MNIST absent, skipping");
    }
    ok
}

#[test]
fn train_then_eval_tiny_model_writes_card_and_json() {
    if !have_fmnist() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let run_json = dir.path().join("run.json");
    let o = cema(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--depth",
        "8",
        "--width",
        "4",
        "--epochs",
        "1",
        "--limit",
        "256",
        "--batch",
        "64",
        "--json",
        run_json.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(card["architecture"]["family"], "cifar_resnet");
    assert_eq!(card["history"].as_array().unwrap().len(), 1);
    assert!(card["sha256"].as_str().unwrap().len() == 64);
    assert!(card["training"]["command"]
        .as_str()
        .unwrap()
        .contains("--width 4"));
    assert!(run_json.exists());
    assert!(dir.path().join("m.safetensors.ckpt/state.json").exists());

    let eval_json = dir.path().join("eval.json");
    let o = cema(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--norm",
        "batch",
        "--corruptions",
        "fog,contrast",
        "--severities",
        "1,5",
        "--limit",
        "128",
        "--generate-corruptions",
        "--json",
        eval_json.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    assert_eq!(v["norm"], "batch");
    let acc = v["corrupted"]["fog"]["5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(v["clean_accuracy"].as_f64().unwrap() >= 0.0);
    assert!(v["corrupted"]["contrast"]["1"].is_number());
}

#[test]
fn eval_matches_between_generated_and_written_corruptions() {
    if !have_fmnist() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("c");
    let o = cema(&[
        "corrupt",
        "--out",
        cdir.to_str().unwrap(),
        "--corruptions",
        "gaussian_noise",
        "--limit",
        "100",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = repo().join("models/foundation.safetensors");
    let run = |source: &[&str], json: &Path| {
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--corruptions",
            "gaussian_noise",
            "--severities",
            "3",
            "--limit",
            "100",
            "--json",
            json.to_str().unwrap(),
            "-q",
        ];
        args.extend(source);
        let o = cema(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        v["corrupted"]["gaussian_noise"]["3"].as_f64().unwrap()
    };
    let a = run(
        &["--corrupted", cdir.to_str().unwrap()],
        &dir.path().join("a.json"),
    );
    let b = run(&["--generate-corruptions"], &dir.path().join("b.json"));
    assert_eq!(
        a, b,
        "on-the-fly corruptions must equal cema corrupt's files"
    );
}

#[test]
fn eval_bad_inputs_are_usage_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let o = cema(&["eval", "--model", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));

    // A card whose weights are garbage.
    let w = dir.path().join("bad.safetensors");
    std::fs::write(&w, b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}").unwrap();
    let card = std::fs::read_to_string(repo().join("models/foundation.json")).unwrap();
    let card = card.replace("\"sha256\"", "\"sha256_original\"");
    std::fs::write(dir.path().join("bad.json"), card).unwrap();
    let o = cema(&["eval", "--model", w.to_str().unwrap(), "--clean-only"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.safetensors"), "{}", stderr(&o));

    let o = cema(&["eval", "--norm", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("running, batch or tbr"),
        "{}",
        stderr(&o)
    );
    let o = cema(&["eval", "--severities", "6"]);
    assert_eq!(o.status.code(), Some(2));
    // A mistyped --corrupted is refused, not replaced by generated corruptions.
    if have_fmnist() {
        let model = repo().join("models/edge.safetensors");
        let missing = dir.path().join("fashion-mnist-c-typo");
        let o = cema(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--corrupted",
            missing.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("--corrupted") && stderr(&o).contains("fashion-mnist-c-typo"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn train_bad_inputs_are_usage_errors() {
    let o = cema(&["train", "--depth", "9", "--out", "/tmp/never.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("6n+2"), "{}", stderr(&o));
    let o = cema(&[
        "train",
        "--data-dir",
        "/nonexistent-dir",
        "--out",
        "/tmp/never.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("apt-get install -y dataset-fashion-mnist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn speed_bad_inputs_are_usage_errors_naming_the_file() {
    let o = cema(&[
        "speed",
        "--models",
        "/nonexistent/m.safetensors",
        "--seconds",
        "0.1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/m.safetensors"),
        "{}",
        stderr(&o)
    );
    let o = cema(&["speed", "--seconds", "soon"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn import_recognises_a_checkpoint_and_refuses_a_damaged_one_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = repo().join("models/edge.safetensors");
    let out = dir.path().join("imported.safetensors");
    let o = cema(&[
        "import",
        shipped.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--input-size",
        "28x28",
        "--mean",
        "0.286",
        "--std",
        "0.353",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = cema_model::Model::load(&shipped, &cema_model::cpu()).unwrap();
    let b = cema_model::Model::load(&out, &cema_model::cpu()).unwrap();
    assert_eq!(a.card.architecture, b.card.architecture);
    assert_eq!(b.card.name, "imported");
    assert_eq!(a.state_dict(), b.state_dict());

    // Weights without a card: the error says how to make one.
    let bare = dir.path().join("bare.safetensors");
    std::fs::copy(&shipped, &bare).unwrap();
    let o = cema(&["eval", "--model", bare.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bare.json") && stderr(&o).contains("cema import"));

    // Not a checkpoint at all: refused, naming the file.
    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, b"just some text").unwrap();
    let o = cema(&[
        "import",
        text.to_str().unwrap(),
        "--out",
        dir.path().join("y.safetensors").to_str().unwrap(),
        "--input-size",
        "28x28",
        "--mean",
        "0.5",
        "--std",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("notes.safetensors"), "{}", stderr(&o));

    // One BatchNorm statistic missing: refused, naming it.
    let mut t = a.state_dict();
    t.remove("layer3.0.bn2.running_mean");
    let damaged = dir.path().join("damaged.safetensors");
    std::fs::write(&damaged, cema_model::tensors::to_safetensors(&t, None)).unwrap();
    let o = cema(&[
        "import",
        damaged.to_str().unwrap(),
        "--out",
        dir.path().join("x.safetensors").to_str().unwrap(),
        "--input-size",
        "28x28",
        "--mean",
        "0.5",
        "--std",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("layer3.0.bn2.running_mean"),
        "{}",
        stderr(&o)
    );
    // Flags the tensors cannot answer are checked.
    for (flag, value) in [("--input-size", "28"), ("--mean", "0.1,0.2")] {
        let mut args = vec![
            "import",
            shipped.to_str().unwrap(),
            "--out",
            "/tmp/never.safetensors",
            "--input-size",
            "28x28",
            "--mean",
            "0.5",
            "--std",
            "0.5",
        ];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = value;
        let o = cema(&args);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{}", stderr(&o));
    }
}

#[test]
fn import_takes_a_timm_vit_given_its_architecture_and_says_why_it_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let arch = r#"{"family": "vit", "image_size": 16, "patch": 4, "in_channels": 3, "dim": 32,
                   "depth": 2, "heads": 4, "mlp_dim": 64, "num_classes": 5}"#;
    let card = cema_model::ModelCard::new(
        "timm",
        "foundation",
        serde_json::from_str(arch).unwrap(),
        cema_model::InputSpec {
            height: 16,
            width: 16,
            channels: 3,
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
        },
        vec![],
        "test",
    );
    let m = cema_model::Model::init(card, &cema_model::cpu(), 2).unwrap();
    // A bare state dict by timm's names, as `safetensors.torch.save_file(model.state_dict())`.
    let ckpt = dir.path().join("vit_tiny_timm.safetensors");
    std::fs::write(
        &ckpt,
        cema_model::tensors::to_safetensors(&m.state_dict(), None),
    )
    .unwrap();
    let out = dir.path().join("vit.safetensors");
    let import = |extra: &[&str]| {
        let mut args = vec![
            "import",
            ckpt.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--mean",
            "0.5",
            "--std",
            "0.5",
            "--role",
            "foundation",
        ];
        args.extend_from_slice(extra);
        cema(&args)
    };
    let o = import(&["--input-size", "16x16"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("heads"), "{}", stderr(&o));
    let o = import(&["--input-size", "20x20", "--arch", arch]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("pos_embed"), "{}", stderr(&o));
    let o = import(&["--input-size", "16x16", "--arch", arch]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = cema_model::Model::load(&out, &cema_model::cpu()).unwrap();
    assert_eq!(back.state_dict(), m.state_dict());
    back.hand_written_paths().unwrap();
}
