//! `cema predict` through the real binary on real photographs: the 20 ImageNet validation JPEGs
//! foolbox ships, classified by EfficientNet-Lite0 and Lite2 with their real weights (both
//! installed by scripts/setup.sh), and every bad-input path with its exit code and message.

mod common;

use std::path::{Path, PathBuf};

use common::{cema, repo, stderr};

fn need(path: PathBuf) -> String {
    assert!(
        path.exists(),
        "{}: missing; scripts/setup.sh installs it (pip) and links it there",
        path.display()
    );
    path.to_str().unwrap().to_string()
}

/// Top-1 hits of `model` on the 20 photographs, the label being the last part of each name.
fn top1(model: &str, dir: &Path) -> usize {
    let photos = need(repo().join("data/imagenet-photos"));
    let model = need(repo().join(format!("models/imagenet/{model}.pth")));
    let json = dir.join("top5.json");
    let o = cema(&[
        "-q",
        "predict",
        "--model",
        &model,
        "--json",
        json.to_str().unwrap(),
        &photos,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), 20);
    let stdout = String::from_utf8_lossy(&o.stdout);
    rows.iter()
        .filter(|row| {
            let path = row["path"].as_str().unwrap();
            let label: usize = Path::new(path)
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('_').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no label in {path}"));
            let top5 = row["top5"].as_array().unwrap();
            assert_eq!(top5.len(), 5);
            let probs: Vec<f64> = top5.iter().map(|t| t[1].as_f64().unwrap()).collect();
            assert!(
                probs.windows(2).all(|w| w[0] >= w[1]),
                "{path}: top-5 in order"
            );
            assert!(probs.iter().sum::<f64>() <= 1.0 + 1e-5);
            assert!(stdout.contains(path), "{path} printed");
            top5[0][0].as_u64() == Some(label as u64)
        })
        .count()
}

#[test]
fn efficientnet_lite_pair_classifies_real_photographs() {
    let dir = tempfile::tempdir().unwrap();
    let lite0 = top1("efficientnet-lite0", dir.path());
    let lite2 = top1("efficientnet-lite2", dir.path());
    eprintln!("top-1 on the 20 photographs: Lite0 {lite0}/20, Lite2 {lite2}/20");
    assert!(lite0 >= 16, "Lite0 top-1 {lite0}/20, target 16");
    assert!(lite2 >= 17, "Lite2 top-1 {lite2}/20, target 17");
}

#[test]
fn predict_names_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = need(repo().join("models/imagenet/efficientnet-lite0.pth"));
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"not a jpeg at all").unwrap();
    let missing = dir.path().join("nowhere.png");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (arg, says) in [
        (&broken, "broken.jpg"),
        (&missing, "nowhere.png"),
        (&empty, "no images"),
    ] {
        let o = cema(&["-q", "predict", "--model", &model, arg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{says}: {}", stderr(&o));
    }
    // A model without a crop recipe takes only images of its own size, and says so.
    let fmnist = repo().join("models/edge.safetensors");
    let photo = need(repo().join("data/imagenet-photos/imagenet_00_243.jpg"));
    let o = cema(&["-q", "predict", "--model", fmnist.to_str().unwrap(), &photo]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no crop recipe"), "{}", stderr(&o));
    let o = cema(&["-q", "predict", "--model", "nowhere.safetensors", &photo]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--model"), "{}", stderr(&o));
}

/// The mini ImageNet-C of the EfficientNet pair: `cema corrupt` writes the photographs' views
/// with the ImageNet-size constants, and Lite0 scores that copy exactly as it scores the same
/// corruptions generated in memory.
#[test]
fn a_mini_imagenet_c_written_by_cema_corrupt_scores_as_generated() {
    let dir = tempfile::tempdir().unwrap();
    let lite0 = need(repo().join("models/imagenet/efficientnet-lite0.pth"));
    let photos = need(repo().join("data/imagenet-photos"));
    let out = dir.path().join("mini-c");
    // The same 16 views and two corruptions for the copy and both evaluations.
    let set = [
        "--dataset",
        "imagenet-photos",
        "--data-dir",
        photos.as_str(),
        "--corruptions",
        "fog,jpeg_compression",
        "--limit",
        "16",
    ];
    let mut args = vec!["-q", "corrupt", "--out", out.to_str().unwrap()];
    args.extend(set);
    let o = cema(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["table"], "imagenet", "{manifest}");
    assert_eq!(manifest["image_shape"], serde_json::json!([224, 224, 3]));
    let eval = |corrupted: Option<&Path>, json: &str| -> serde_json::Value {
        let json = dir.path().join(json);
        let mut args = vec![
            "-q",
            "eval",
            "--model",
            lite0.as_str(),
            "--severities",
            "1,5",
        ];
        args.extend(set);
        args.extend(["--json", json.to_str().unwrap()]);
        let c;
        if let Some(p) = corrupted {
            c = p.to_str().unwrap().to_string();
            args.extend(["--corrupted", &c]);
        }
        let o = cema(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
    };
    let read = eval(Some(&out), "read.json");
    let generated = eval(None, "generated.json");
    assert_eq!(read["corrupted"], generated["corrupted"]);
    // Severity 5 fog hurts a real ImageNet model: the copy holds corruptions, not clean views.
    let (clean, fog5) = (
        read["clean_accuracy"].as_f64().unwrap(),
        read["corrupted"]["fog"]["5"].as_f64().unwrap(),
    );
    assert!(fog5 < clean, "fog s5 {fog5} vs clean {clean}");
}
