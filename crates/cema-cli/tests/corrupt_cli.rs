//! `cema corrupt` end to end: runs the real binary in a temporary folder.
//!
//! Tests that need Fashion-MNIST skip (with a note) when /usr/share/datasets/fashion-mnist is
//! absent; install it with `apt-get install -y dataset-fashion-mnist`.

use std::path::Path;
use std::process::{Command, Output};

use cema_corrupt::Corruption;
use cema_data::cifar_c::CorruptedDir;
use cema_data::{fashion_mnist, Split};

const DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn have_data() -> bool {
    let ok = Path::new(DATA_DIR)
        .join("t10k-images-idx3-ubyte.gz")
        .is_file();
    if !ok {
        eprintln!(
            "note: {DATA_DIR} is absent; skipping (apt-get install -y dataset-fashion-mnist)"
        );
    }
    ok
}

fn cema(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cema"))
        .args(args)
        .env_remove("CEMA_FASHION_MNIST_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run cema")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn small_run_writes_layout_sheet_and_json_deterministically() {
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fmc");
    let json = tmp.path().join("summary.json");
    let o = cema(&[
        "corrupt",
        "--data-dir",
        DATA_DIR,
        "--limit",
        "50",
        "--corruptions",
        "gaussian_noise,fog",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains("cema corrupt:"), "{}", stdout(&o));

    // Layout.
    let dir = CorruptedDir::open(&out).unwrap();
    assert_eq!(dir.corruptions(), ["fog", "gaussian_noise"]);
    assert_eq!(dir.labels().unwrap().len(), 250);
    let clean = fashion_mnist::load(Some(Path::new(DATA_DIR)), Split::Test)
        .unwrap()
        .take(50);
    for c in [Corruption::GaussianNoise, Corruption::Fog] {
        assert_eq!(dir.images_per_severity(c.name()).unwrap(), 50);
        for s in 1..=5u8 {
            let got = dir.load(c.name(), s).unwrap();
            let want = cema_corrupt::corrupt_set(&clean, c, s, None, 7).unwrap();
            assert_eq!(got.labels, clean.labels, "{c} s{s}");
            assert!(got.images == want.images, "{c} s{s}: bytes differ");
            assert_eq!((got.height, got.width, got.channels), (28, 28, 1));
        }
    }

    // Contact sheet: 2 rows of 28·3 px, 6 columns of 4 samples, labels ("gaussian_noise", 14
    // glyphs of 8 px, on the left; one line on top).
    let sheet = image::open(out.join("contact_sheet.png")).unwrap();
    assert_eq!(sheet.height(), 8 + 4 + 2 * 84 + 3 * 4);
    assert_eq!(sheet.width(), 14 * 8 + 4 + 6 * (4 * 84 + 3) + 7 * 4);

    // JSON summary.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["out_dir"], out.to_str().unwrap());
    assert_eq!(
        v["corruptions"],
        serde_json::json!(["gaussian_noise", "fog"])
    );
    assert_eq!(v["severities"], serde_json::json!([1, 2, 3, 4, 5]));
    assert_eq!(v["images"], 50);
    assert_eq!(v["images_generated"], 500);
    assert_eq!(v["seed"], 7);
    assert_eq!(v["table"], "cifar");
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files
        .iter()
        .all(|f| f["sha256"].as_str().unwrap().len() == 64));

    // Manifest and README.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["seed"], 7);
    assert_eq!(m["contact_sheet"]["rows"], v["corruptions"]);
    assert!(m["command_line"].as_str().unwrap().contains("--limit 50"));
    let readme = std::fs::read_to_string(out.join("README.txt")).unwrap();
    assert!(readme.contains("1. gaussian_noise") && readme.contains("2. fog"));
}

#[test]
fn rerun_skips_matching_files_and_refuses_other_settings() {
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fmc");
    let out_s = out.to_str().unwrap();
    let base = [
        "corrupt",
        "--data-dir",
        DATA_DIR,
        "--limit",
        "20",
        "--samples",
        "2",
        "--out",
        out_s,
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        cema(&a)
    };
    assert!(run(&["--corruptions", "brightness"]).status.success());
    let first = std::fs::read(out.join("brightness.npy")).unwrap();

    // Same settings: kept, and a new corruption added next to it; the manifest lists both.
    let o = run(&["--corruptions", "brightness,contrast"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipping brightness"), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("brightness.npy")).unwrap(), first);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert!(m["corruptions"]["brightness"]["sha256"].is_string());
    assert!(m["corruptions"]["contrast"]["sha256"].is_string());

    // Other seed: refused without --force, naming the file and the flag.
    let o = run(&["--corruptions", "brightness", "--seed", "3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("brightness.npy") && stderr(&o).contains("--force"));
    let o = run(&["--corruptions", "brightness", "--seed", "3", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn unknown_corruption_is_a_usage_error_listing_valid_names() {
    let o = cema(&["corrupt", "--corruptions", "gaussian_noise,fogg"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("fogg") && err.contains("--corruptions"),
        "{err}"
    );
    for c in Corruption::ALL {
        assert!(err.contains(c.name()), "{c} missing from: {err}");
    }
}

#[test]
fn severity_subset_is_a_usage_error() {
    let o = cema(&["corrupt", "--severities", "1-3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--severities"), "{}", stderr(&o));
}

#[test]
fn missing_data_dir_is_an_input_error_with_install_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cema(&[
        "corrupt",
        "--data-dir",
        "/nonexistent",
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("apt-get install -y dataset-fashion-mnist"),
        "{err}"
    );
    assert!(err.contains("/nonexistent"), "{err}");
    assert!(
        !tmp.path().join("o").exists(),
        "nothing is created on bad input"
    );
}

#[test]
fn unwritable_out_dir_is_an_input_error_naming_it() {
    if !have_data() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("sub");
    let o = cema(&[
        "corrupt",
        "--data-dir",
        DATA_DIR,
        "--limit",
        "5",
        "--corruptions",
        "brightness",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("--out") && err.contains(out.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn help_lists_subcommand_and_flags() {
    let o = cema(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("corrupt"));
    let o = cema(&["corrupt", "--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for flag in [
        "--dataset",
        "--data-dir",
        "--split",
        "--out",
        "--corruptions",
        "--severities",
        "--seed",
        "--table",
        "--limit",
        "--samples",
        "--sheet",
        "--json",
        "--force",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let o = cema(&["corrupt", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
}
