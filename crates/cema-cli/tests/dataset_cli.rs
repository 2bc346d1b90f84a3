//! `--dataset cifar10|cifar100` through the real binary: train a model on CIFAR-10 binary batches,
//! evaluate it, and benchmark it on a folder in the CIFAR-10-C layout written here byte by byte as
//! the published CIFAR-10-C is (uint8 `(5·N, 32, 32, 3)` arrays, uint8 labels), independently of
//! cema's own writer; and `corrupt` and on-the-fly corruptions at 32×32×3. The pixels are
//! synthetic (no CIFAR can be downloaded here); the formats are the real ones.

mod common;

use std::fs;
use std::path::Path;

use common::{cema, stderr};
use serde_json::Value;

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// A deterministic image of class `label`: a class-dependent colour gradient plus hashed noise,
/// as interleaved RGB (NHWC).
fn image(i: usize, label: u8) -> Vec<u8> {
    (0..PIXELS)
        .map(|p| {
            let (y, c) = (p / (3 * SIDE), p % 3);
            let base = (usize::from(label) * 25 + y * 3 + c * 40) % 256;
            let noise = (i * 7919 + p * 104_729) % 31;
            ((base + noise) % 256) as u8
        })
        .collect()
}

/// CIFAR binary records: label bytes, then the image as planes (R, G, B), each row-major.
fn records(n: usize, first: usize, label_bytes: impl Fn(u8) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..first + n {
        let label = (i % 10) as u8;
        out.extend(label_bytes(label));
        let img = image(i, label);
        for c in 0..3 {
            out.extend(img.iter().skip(c).step_by(3));
        }
    }
    out
}

/// `cifar-10-batches-bin/` under `root`: five training batches of 40 images and a test batch of 64.
fn write_cifar10(root: &Path) {
    let dir = root.join("cifar-10-batches-bin");
    fs::create_dir_all(&dir).unwrap();
    for b in 0..5 {
        let bytes = records(40, b * 40, |l| vec![l]);
        fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), bytes).unwrap();
    }
    fs::write(dir.join("test_batch.bin"), records(64, 1000, |l| vec![l])).unwrap();
}

/// A NumPy .npy file (format 1.0) of u8 values, header written by hand.
fn npy_u8(path: &Path, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    fs::write(path, bytes).unwrap();
}

/// A CIFAR-10-C-layout folder holding `gaussian_noise.npy` for the 64 test images: severity s adds
/// ±8·s of hashed noise to every pixel.
fn write_cifar10_c(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for s in 1..=5usize {
        for i in 1000..1064 {
            let label = (i % 10) as u8;
            pixels.extend(image(i, label).iter().enumerate().map(|(p, &v)| {
                let d = ((i * 31 + p * 17 + s) % 17) as i32 - 8;
                (i32::from(v) + d * s as i32).clamp(0, 255) as u8
            }));
            labels.push(label);
        }
    }
    npy_u8(
        &dir.join("gaussian_noise.npy"),
        &[5 * 64, SIDE, SIDE, 3],
        &pixels,
    );
    npy_u8(&dir.join("labels.npy"), &[5 * 64], &labels);
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// `cema train --dataset cifar10` of a ResNet-8 of this width for one epoch into `out`.
fn train_cifar10(data: &str, width: &str, batch: &str, out: &Path) {
    ok(&cema(&[
        "-q",
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        data,
        "--depth",
        "8",
        "--width",
        width,
        "--epochs",
        "1",
        "--batch",
        batch,
        "--out",
        out.to_str().unwrap(),
    ]));
}

#[test]
fn cifar10_trains_evaluates_and_benchmarks_on_a_cifar10_c_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_cifar10(root);
    write_cifar10_c(&root.join("CIFAR-10-C"));
    let data = root.to_str().unwrap();
    let model = root.join("edge.safetensors");
    let model_s = model.to_str().unwrap();

    train_cifar10(data, "4", "40", &model);
    let card = read_json(&root.join("edge.json"));
    assert_eq!(card["dataset"], "cifar10");
    assert_eq!(card["input"]["height"], 32);
    assert_eq!(card["input"]["channels"], 3);
    assert_eq!(card["architecture"]["in_channels"], 3);
    assert_eq!(card["classes"][9], "truck");
    // Mean and std measured on the 200 training images, one per channel.
    let mean = card["input"]["mean"].as_array().unwrap();
    assert_eq!(mean.len(), 3);
    assert!(mean
        .iter()
        .all(|m| (0.0..1.0).contains(&m.as_f64().unwrap())));

    let eval_json = root.join("eval.json");
    ok(&cema(&[
        "-q",
        "eval",
        "--dataset",
        "cifar10",
        "--data-dir",
        data,
        "--model",
        model_s,
        "--corrupted",
        root.join("CIFAR-10-C").to_str().unwrap(),
        "--corruptions",
        "gaussian_noise",
        "--severities",
        "5",
        "--json",
        eval_json.to_str().unwrap(),
    ]));
    let eval = read_json(&eval_json);
    assert_eq!(eval["dataset"], "cifar10");
    let eval_acc = eval["corrupted"]["gaussian_noise"]["5"].as_f64().unwrap();

    let out = root.join("bench");
    let bench = |source: &[&str], corruptions: &str, methods: &str, out: &Path| {
        let mut args = vec![
            "-q",
            "bench",
            "--dataset",
            "cifar10",
            "--data-dir",
            data,
            "--edge",
            model_s,
            "--foundation",
            model_s,
            "--corruptions",
            corruptions,
            "--methods",
            methods,
            "--batch",
            "32",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(source);
        cema(&args)
    };
    let folder = root.join("CIFAR-10-C");
    let given = ["--corrupted", folder.to_str().unwrap()];
    // The folder holds gaussian_noise only: asking it for fog is refused, never generated.
    let o = bench(&given, "gaussian_noise,fog", "source", &out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("fog.npy") && stderr(&o).contains("--corrupted"));
    ok(&bench(
        &given,
        "gaussian_noise",
        "source,bn_adapt,cema",
        &out,
    ));
    let generated = root.join("bench-generated");
    ok(&bench(
        &["--generate-corruptions"],
        "fog",
        "source",
        &generated,
    ));
    let fog = read_json(&generated.join("manifest.json"));
    let results = read_json(&out.join("results.json"));
    let manifest = read_json(&out.join("manifest.json"));
    assert_eq!(manifest["dataset"], "cifar10");
    assert_eq!(manifest["images_per_stream"], 64);
    // The stream was read from the folder, not generated.
    assert_eq!(manifest["stream_sources"]["gaussian_noise"], "file");
    // fog generated from the clean CIFAR test set at 32×32×3.
    assert_eq!(fog["stream_sources"]["fog"], "generated");
    // Source with running statistics does not depend on the order: bench's online accuracy on the
    // file's severity-5 rows is eval's accuracy on them.
    let source = results["methods"]["source"]["corruptions"]["gaussian_noise"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!((source - eval_acc).abs() < 1e-9, "{source} vs {eval_acc}");
    let cema_m = &results["methods"]["cema"]["corruptions"]["gaussian_noise"];
    assert!(cema_m["accuracy"].as_f64().unwrap().is_finite(), "{cema_m}");
}

#[test]
fn cifar10_corrupt_writes_data_cifar10_c_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_cifar10(root);
    // Run from `root` so that the default --out (data/<dataset>-c) lands there.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cema"))
        .args([
            "-q",
            "corrupt",
            "--dataset",
            "cifar10",
            "--data-dir",
            root.to_str().unwrap(),
            "--corruptions",
            "fog,jpeg_compression",
            "--limit",
            "16",
        ])
        .current_dir(root)
        .env("CEMA_THREADS", "2")
        .output()
        .unwrap();
    ok(&o);
    let dir = root.join("data/cifar10-c");
    let manifest = read_json(&dir.join("manifest.json"));
    assert_eq!(manifest["dataset"], "cifar10");
    // (5·16, 32, 32, 3) u8: the header names the shape.
    let fog = fs::read(dir.join("fog.npy")).unwrap();
    let header = String::from_utf8_lossy(&fog[10..128]);
    assert!(header.contains("(80, 32, 32, 3)"), "{header}");
    let header_len = 10 + usize::from(u16::from_le_bytes([fog[8], fog[9]]));
    assert_eq!(
        fog.len(),
        header_len + 80 * PIXELS,
        "pixel bytes after the header"
    );
}

#[test]
fn a_model_or_folder_of_another_dataset_is_an_input_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_cifar10(root);
    // CIFAR-100's binary version: coarse and fine label bytes, then the image.
    let c100 = root.join("cifar-100-binary");
    fs::create_dir_all(&c100).unwrap();
    fs::write(c100.join("test.bin"), records(20, 0, |l| vec![0, l * 9])).unwrap();
    let data = root.to_str().unwrap();
    let model = root.join("m.safetensors");
    train_cifar10(data, "2", "100", &model);

    // A 10-class model on 100-class data.
    let o = cema(&[
        "eval",
        "--dataset",
        "cifar100",
        "--data-dir",
        data,
        "--model",
        model.to_str().unwrap(),
        "--clean-only",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--model") && err.contains("10 classes") && err.contains("cifar100 has 100"),
        "{err}"
    );

    // A corrupted folder whose images are another size than the dataset's.
    let bad = root.join("bad-c");
    fs::create_dir_all(&bad).unwrap();
    npy_u8(
        &bad.join("fog.npy"),
        &[5 * 64, 28, 28],
        &vec![0; 5 * 64 * 28 * 28],
    );
    npy_u8(&bad.join("labels.npy"), &[5 * 64], &[0; 5 * 64]);
    let o = cema(&[
        "bench",
        "--dataset",
        "cifar10",
        "--data-dir",
        data,
        "--edge",
        model.to_str().unwrap(),
        "--methods",
        "source",
        "--corrupted",
        bad.to_str().unwrap(),
        "--corruptions",
        "fog",
        "--out",
        root.join("b").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("fog.npy") && err.contains("28×28×1"), "{err}");

    // No CIFAR files where --data-dir points: the message names the file and the download.
    let o = cema(&[
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        "/nonexistent",
        "--out",
        root.join("x.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--dataset cifar10") && err.contains("cifar-10-binary.tar.gz"),
        "{err}"
    );
    assert!(!root.join("x.safetensors").exists());
}

#[test]
fn demo_and_load_run_real_processes_on_cifar10() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_cifar10(root);
    let data = root.to_str().unwrap();
    let model = root.join("m.safetensors");
    let m = model.to_str().unwrap();
    train_cifar10(data, "2", "100", &model);

    // `cmd` on CIFAR-10 here with this edge model and `foundation`, then `rest`.
    let on_cifar = |cmd: &str, foundation: &str, rest: &[&str]| {
        let mut args = vec![
            "-q",
            cmd,
            "--dataset",
            "cifar10",
            "--data-dir",
            data,
            "--edge",
            m,
            "--foundation",
            foundation,
        ];
        args.extend_from_slice(rest);
        cema(&args)
    };

    // One cloud and one edge as real processes on loopback, on the 64-image CIFAR-10 test batch
    // (fog generated at 32×32×3); the same model serves as edge and foundation.
    let report = root.join("demo.json");
    let r = report.to_str().unwrap();
    let demo = ["--edges", "1", "--corruptions", "fog", "--limit", "64"];
    ok(&on_cifar("demo", m, &[&demo[..], &["--json", r]].concat()));
    let edge = &read_json(&report)["edges"][0];
    assert_eq!(edge["corruption"], "fog");
    assert_eq!(edge["images"], 64);
    let acc = edge["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{edge}");

    // The synthetic edges upload CIFAR images the cloud accepts for a 32×32×3 model.
    let report = root.join("load.json");
    let r = report.to_str().unwrap();
    let load = ["--edges", "2", "--seconds", "2", "--interval-ms", "300"];
    ok(&on_cifar("load", m, &[&load[..], &["--json", r]].concat()));
    let load = read_json(&report);
    assert!(load["uploads_acked"].as_u64().unwrap() > 0, "{load}");
    assert_eq!(load["errors"], 0, "{load}");

    // Refused before any process starts, naming the flag: a CIFAR model with the default dataset
    // (Fashion-MNIST, 28×28×1); the shipped Fashion-MNIST foundation beside a CIFAR edge model;
    // a data folder without the CIFAR-10 files.
    let fashion = common::repo().join("models/foundation.safetensors");
    let fashion = fashion.to_str().unwrap();
    let empty = root.join("empty");
    fs::create_dir_all(&empty).unwrap();
    for cmd in ["demo", "load"] {
        let o = cema(&[cmd, "--edge", m, "--foundation", m, "--edges", "1"]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(stderr(&o).contains("--edge"), "{cmd}: {}", stderr(&o));
        let o = on_cifar(cmd, fashion, &["--edges", "1"]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(stderr(&o).contains("--foundation"), "{cmd}: {}", stderr(&o));
        let o = cema(&[
            cmd,
            "--dataset",
            "cifar10",
            "--data-dir",
            empty.to_str().unwrap(),
            "--edge",
            m,
            "--foundation",
            m,
            "--edges",
            "1",
        ]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--data-dir") && stderr(&o).contains("test_batch.bin"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    // `cema cloud` itself refuses to start with a foundation that cannot teach its edge model
    // (before, it started and answered every device's session with a 500).
    let o = cema(&[
        "cloud",
        "--listen",
        "127.0.0.1:0",
        "--edge",
        m,
        "--foundation",
        fashion,
        "--data-dir",
        root.join("cloud").to_str().unwrap(),
        "--device",
        "a:b",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--edge / --foundation") && err.contains("28×28×1 images, student 32×32×3"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "it must not have listened");
}
