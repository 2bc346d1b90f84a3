//! `cema bench` through the real binary on tiny streams: the JSON/CSV/manifest contract,
//! determinism, and bad input with exit code 2.

mod common;

use std::path::{Path, PathBuf};

use common::{cema, repo, stderr};

use cema_model::{cpu, Arch, InputSpec, Model, ModelCard};
use serde_json::Value;

fn foundation() -> PathBuf {
    repo().join("models/foundation.safetensors")
}

fn have_inputs() -> bool {
    let ok = Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists()
        && foundation().exists();
    if !ok {
        eprintln!("note: Fashion-MNIST or models/foundation.safetensors absent, skipping");
    }
    ok
}

/// A tiny ResNet-8 (width 4) edge with the foundation's input spec, its classifier scaled up so
/// that its predictions are confident enough for CEMA's filters to upload some samples (an
/// untrained or barely trained model is near uniform: every sample fails `E < E_max`).
fn tiny_edge(dir: &Path) -> PathBuf {
    let card = ModelCard {
        name: "tiny-edge".into(),
        role: "edge".into(),
        architecture: Arch::CifarResnet {
            depth: 8,
            width: 4,
            in_channels: 1,
            num_classes: 10,
        },
        input: InputSpec {
            height: 28,
            width: 28,
            channels: 1,
            mean: vec![0.286],
            std: vec![0.353],
        },
        preprocess: None,
        classes: vec![],
        dataset: "fashion-mnist".into(),
        clean_accuracy: None,
        parameters: None,
        sha256: None,
        training: Value::Null,
        history: None,
    };
    let mut model = Model::init(card, &cpu(), 4).unwrap();
    let store = model.store_mut();
    for name in ["fc.weight", "fc.bias"] {
        let i = store.index_of(name).unwrap();
        let v: Vec<f32> = store.values(i).iter().map(|x| x * 20.0).collect();
        store.set_values(i, v);
    }
    let path = dir.join("edge.safetensors");
    model.save(&path).unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs bench on gaussian_noise and fog, 64 images each, into `out`; returns results.json.
fn bench(edge: &Path, out: &Path, methods: &str) -> Value {
    bench_with(edge, out, methods, &[])
}

/// The arguments of [`bench_with`].
fn bench_args(edge: &Path, out: &Path, methods: &str, extra: &[&str]) -> Vec<String> {
    let foundation = foundation();
    let mut args: Vec<String> = [
        "bench",
        "--edge",
        edge.to_str().unwrap(),
        "--foundation",
        foundation.to_str().unwrap(),
        "--methods",
        methods,
        "--corruptions",
        "gaussian_noise,fog",
        "--limit",
        "64",
        "--batch",
        "32",
        "--cloud-batch",
        "8",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// [`bench`] with extra flags.
fn bench_with(edge: &Path, out: &Path, methods: &str, extra: &[&str]) -> Value {
    let args = bench_args(edge, out, methods, extra);
    let o = cema(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("upload %") && table.contains("mean") && table.contains("bytes up / image"),
        "{table}"
    );
    read_json(&out.join("results.json"))
}

#[test]
fn bench_writes_results_csv_and_manifest() {
    if !have_inputs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = tiny_edge(dir.path());
    let out = dir.path().join("out");
    let v = bench(&edge, &out, "source,bn_adapt,cema,foundation");
    let methods = v["methods"].as_object().unwrap();
    assert_eq!(
        methods.keys().collect::<Vec<_>>(),
        ["bn_adapt", "cema", "foundation", "source"]
    );
    for (name, m) in methods {
        for key in ["avg_accuracy", "upload_fraction"] {
            let x = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{name}.{key} = {x}");
        }
        for c in ["gaussian_noise", "fog"] {
            let s = &m["corruptions"][c];
            for key in ["accuracy", "upload_fraction"] {
                let x = s[key].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&x), "{name}.{c}.{key} = {x}");
            }
            for key in ["uploaded", "bytes_up", "bytes_down", "updates"] {
                assert!(s[key].is_u64(), "{name}.{c}.{key}: {}", s[key]);
            }
            assert!(s["seconds"].as_f64().unwrap() >= 0.0);
        }
    }
    assert_eq!(methods["source"]["upload_fraction"].as_f64(), Some(0.0));
    assert_eq!(methods["bn_adapt"]["upload_fraction"].as_f64(), Some(0.0));
    assert_eq!(methods["foundation"]["upload_fraction"].as_f64(), Some(1.0));
    // The foundation selects everything: its accuracy on what it selected is its accuracy.
    let f = &methods["foundation"]["corruptions"]["fog"];
    assert_eq!(f["selected_accuracy"], f["accuracy"]);
    assert!(methods["source"]["selected_accuracy"].is_null());
    let sel = methods["cema"]["selected_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&sel), "{sel}");
    assert_eq!(
        methods["foundation"]["corruptions"]["fog"]["bytes_up"].as_u64(),
        Some(64 * 28 * 28)
    );
    let cema = methods["cema"]["upload_fraction"].as_f64().unwrap();
    assert!(cema > 0.0 && cema <= 1.0, "cema uploads {cema}");
    // Every sample CEMA saw was uploaded or dropped by exactly one criterion; with its defaults
    // (E_min on) at least the E_max criterion drops some of an untrained edge's samples.
    for c in ["gaussian_noise", "fog"] {
        let s = &methods["cema"]["corruptions"][c];
        let d = &s["dropped"];
        let n = |k: &str| {
            d[k].as_u64()
                .unwrap_or_else(|| panic!("{c}: dropped.{k} = {d}"))
        };
        assert_eq!(
            s["uploaded"].as_u64().unwrap()
                + n("too_uncertain")
                + n("too_certain")
                + n("redundant"),
            64,
            "{c}: {s}"
        );
        assert!(n("too_uncertain") > 0, "{c}: {d}");
    }
    for m in ["source", "bn_adapt", "foundation"] {
        assert!(methods[m]["corruptions"]["fog"]["dropped"].is_null(), "{m}");
    }
    assert!(
        methods["cema"]["updates"].as_u64().unwrap() > 0,
        "the cloud published norm states"
    );
    assert!(methods["cema"]["bytes_down"].as_u64().unwrap() > 0);
    // Uplink: the selected pixels, plus the edge's norm state sent once after its first batch
    // set the running statistics (a few KB).
    let g = &methods["cema"]["corruptions"]["gaussian_noise"];
    let extra = g["bytes_up"].as_u64().unwrap() - g["uploaded"].as_u64().unwrap() * 28 * 28;
    assert!(
        (1000..20_000).contains(&extra),
        "{extra} bytes besides pixels"
    );

    for fig in ["accuracy_per_corruption.svg", "accuracy_vs_upload.svg"] {
        let svg = std::fs::read_to_string(out.join(fig)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("cema"), "{fig}");
    }
    assert!(
        !out.join("online_accuracy.svg").exists(),
        "episodic: no continual curve"
    );
    // Per-batch counts (the continual figure's data) add up to the stream's accuracy.
    let fog = &methods["cema"]["corruptions"]["fog"];
    let sum: u64 = fog["batch_correct"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let images = fog["images"].as_f64().unwrap();
    assert!((sum as f64 / images - fog["accuracy"].as_f64().unwrap()).abs() < 1e-9);

    let manifest = read_json(&out.join("manifest.json"));
    let sha = |p: &Path| cema_model::sha256_file(p).unwrap();
    assert_eq!(
        manifest["checkpoints"]["edge"]["sha256"],
        sha(&edge).as_str()
    );
    assert_eq!(
        manifest["checkpoints"]["foundation"]["sha256"],
        sha(&foundation()).as_str()
    );
    assert_eq!(manifest["seed"], 0);
    assert_eq!(manifest["protocol"], "episodic");
    assert_eq!(manifest["stream_key"], "<corruption>");
    assert!(manifest["git_revision"].as_str().unwrap().len() >= 7);
    // The binary that ran, by content.
    assert_eq!(
        manifest["binary"]["sha256"].as_str().unwrap(),
        cema_model::sha256_file(Path::new(env!("CARGO_BIN_EXE_cema"))).unwrap()
    );
    assert!(manifest["command"].as_str().unwrap().contains("bench"));
    assert!(manifest["date"].as_str().unwrap().ends_with('Z'));
    // The exact stream order, for other implementations (bench/torch_cema_stream.py).
    let order = cema_data::npy::read_labels(&out.join("stream_order.npy")).unwrap();
    assert_eq!(order.len() as f64, images);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        order.len(),
        "a permutation prefix: no repeats"
    );

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("method,stream,corruption,severity"));
    assert_eq!(lines.len(), 1 + 4 * 2, "{csv}");
    assert!(lines.iter().any(|l| l.starts_with("cema,fog,fog,5,64,")));
}

#[test]
fn bench_is_deterministic_and_random_upload_follows_cema_rate() {
    if !have_inputs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = tiny_edge(dir.path());
    let a = bench(&edge, &dir.path().join("a"), "cema,random_upload");
    let b = bench(&edge, &dir.path().join("b"), "cema,random_upload");
    for m in ["cema", "random_upload"] {
        for c in ["gaussian_noise", "fog"] {
            for key in ["accuracy", "uploaded", "bytes_down", "updates"] {
                assert_eq!(
                    a["methods"][m]["corruptions"][c][key], b["methods"][m]["corruptions"][c][key],
                    "{m}.{c}.{key}"
                );
            }
            let rate = |m: &str| {
                a["methods"][m]["corruptions"][c]["uploaded"]
                    .as_u64()
                    .unwrap()
            };
            // Same rate: the quota rounds down per batch, so at most one sample per batch apart.
            assert!(
                rate("cema").abs_diff(rate("random_upload")) <= 2,
                "{c}: {} vs {}",
                rate("cema"),
                rate("random_upload")
            );
        }
    }

    // Random upload alone, in another process, following a's CEMA rates from its results.json,
    // is the random upload of a to the sample.
    let rates = dir.path().join("a/results.json");
    let c = bench_with(
        &edge,
        &dir.path().join("c"),
        "random_upload",
        &["--random-rates-from", rates.to_str().unwrap()],
    );
    for corruption in ["gaussian_noise", "fog"] {
        for key in ["accuracy", "uploaded", "bytes_up", "updates"] {
            assert_eq!(
                c["methods"]["random_upload"]["corruptions"][corruption][key],
                a["methods"]["random_upload"]["corruptions"][corruption][key],
                "{corruption}.{key}"
            );
        }
    }
    let manifest = read_json(&dir.path().join("c/manifest.json"));
    assert_eq!(
        manifest["random_upload_rates"]["fog"],
        a["methods"]["cema"]["corruptions"]["fog"]["upload_fraction"]
    );

    // Rates that cannot be followed are refused with exit 2, naming the flag and what is wrong.
    let refused = |rates: &Path, limit: &str| {
        let o = cema(&[
            "bench",
            "-q",
            "--edge",
            edge.to_str().unwrap(),
            "--methods",
            "random_upload",
            "--foundation",
            foundation().to_str().unwrap(),
            "--corruptions",
            "gaussian_noise,fog",
            "--limit",
            limit,
            "--batch",
            "32",
            "--random-rates-from",
            rates.to_str().unwrap(),
            "--out",
            dir.path().join("d").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--random-rates-from"), "{e}");
        e
    };
    // Measured on other streams (another --limit).
    assert!(refused(&rates, "32").contains("images_per_stream"));
    // Not JSON at all.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "not json {").unwrap();
    refused(&junk, "64");
    // The same streams, but no cema in it (a baselines-only run).
    let mut no_cema = a.clone();
    no_cema["methods"].as_object_mut().unwrap().remove("cema");
    let no_cema_path = dir.path().join("no-cema.json");
    std::fs::write(&no_cema_path, no_cema.to_string()).unwrap();
    assert!(refused(&no_cema_path, "64").contains("methods.cema"));
}

#[test]
fn random_pick_highest_entropy_uploads_as_many_but_other_samples() {
    if !have_inputs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = tiny_edge(dir.path());
    let run = |pick: &str| {
        let out = dir.path().join(pick);
        let v = bench_with(
            &edge,
            &out,
            "random_upload",
            &[
                "--random-rate",
                "0.25",
                "--random-pick",
                pick,
                "--diagnose-teacher",
            ],
        );
        (v, read_json(&out.join("manifest.json")))
    };
    let (u, um) = run("uniform");
    let (h, hm) = run("highest-entropy");
    assert_eq!(um["hyperparameters"]["random_upload"]["pick"], "uniform");
    assert_eq!(
        hm["hyperparameters"]["random_upload"]["pick"],
        "highest-entropy"
    );
    for c in ["gaussian_noise", "fog"] {
        let (a, b) = (
            &u["methods"]["random_upload"]["corruptions"][c],
            &h["methods"]["random_upload"]["corruptions"][c],
        );
        // 0.25 · 64 = 16 per stream either way.
        assert_eq!(a["uploaded"], 16, "{c}");
        assert_eq!(b["uploaded"], 16, "{c}");
    }
    // Other samples went up: the edge's and the teacher's accuracy on them differ (checked on fog,
    // where the tiny edge's entropies spread; were the pick not wired through, they would match).
    let up = |v: &Value| {
        v["methods"]["random_upload"]["corruptions"]["fog"]["teacher_diagnosis"]["uploaded"].clone()
    };
    assert_ne!(up(&u), up(&h));
}

#[test]
fn bench_bad_inputs_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = cema(&["bench", "--methods", "source,tentt"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for m in [
        "source",
        "bn_adapt",
        "tent",
        "eata",
        "cema",
        "foundation",
        "random_upload",
        "uncertain_upload",
    ] {
        assert!(e.contains(m), "{e}");
    }
    assert!(e.contains("tentt"), "{e}");

    let missing = dir.path().join("nope-edge.safetensors");
    let o = cema(&[
        "bench",
        "--edge",
        missing.to_str().unwrap(),
        "--methods",
        "source",
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nope-edge.safetensors"),
        "{}",
        stderr(&o)
    );

    let o = cema(&[
        "bench",
        "--foundation",
        dir.path().join("nope-f.safetensors").to_str().unwrap(),
        "--methods",
        "foundation",
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope-f.safetensors"), "{}", stderr(&o));

    let o = cema(&["bench", "--random-pick", "best"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("highest-entropy"), "{}", stderr(&o));

    for m in ["random_upload", "uncertain_upload"] {
        let o = cema(&["bench", "--methods", m]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--random-rate") && e.contains(m), "{e}");
    }
    for bad in [
        "--cema-budget=-0.1",
        "--cema-budget=1.5",
        "--cema-budget=NaN",
    ] {
        let o = cema(&["bench", "--methods", "cema", bad]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--cema-budget"), "{}", stderr(&o));
    }

    for (extra, names) in [
        (&["--byte-budget=0"][..], "--byte-budget 0"),
        (&["--byte-budget=-40"][..], "--byte-budget -40"),
        (&["--byte-budget=inf"][..], "--byte-budget inf"),
        (
            &["--byte-budget=40", "--cema-budget=0.1"][..],
            "--cema-budget",
        ),
        (
            &["--byte-budget=40", "--random-rate=0.1"][..],
            "--random-rate",
        ),
    ] {
        let mut args = vec!["bench", "--methods", "cema,random_upload"];
        args.extend_from_slice(extra);
        let o = cema(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(names), "{args:?}: {}", stderr(&o));
    }

    for bad in ["0", "1.5", "NaN"] {
        let o = cema(&["bench", "--methods", "cema", "--cema-track-stats", bad]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--cema-track-stats"), "{}", stderr(&o));
    }
    let o = cema(&["bench", "--methods", "cema", "--cema-share-stats"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--cema-track-stats"), "{}", stderr(&o));
}

#[test]
fn plot_redraws_the_figures_of_a_results_file_and_refuses_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let results = repo().join("docs/results/continual-s5-l1000.json");
    let out = dir.path().join("figs");
    let o = cema(&[
        "plot",
        "--results",
        results.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for fig in [
        "accuracy_per_corruption.svg",
        "accuracy_vs_upload.svg",
        "online_accuracy.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(fig)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("eata"), "{fig}");
    }

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"\x00not json").unwrap();
    let other = dir.path().join("other.json");
    std::fs::write(&other, br#"{"accuracy": 0.5}"#).unwrap();
    let missing = dir.path().join("missing.json");
    for (file, says) in [
        (&garbage, "garbage.json"),
        (&other, "not a cema bench results.json"),
        (&missing, "missing.json"),
    ] {
        let o = cema(&[
            "plot",
            "--results",
            file.to_str().unwrap(),
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    assert!(!dir.path().join("x").exists(), "nothing written on refusal");
}

#[test]
fn diagnose_teacher_reports_both_groups_and_changes_no_result() {
    if !have_inputs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = tiny_edge(dir.path());
    let plain = bench(&edge, &dir.path().join("plain"), "cema");
    let diag = bench_with(
        &edge,
        &dir.path().join("diag"),
        "cema",
        &["--diagnose-teacher"],
    );
    let (a, b) = (&plain["methods"]["cema"], &diag["methods"]["cema"]);
    // The diagnostic observes; the run is the same.
    for key in ["avg_accuracy", "uploaded", "updates"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert!(a["teacher_diagnosis"].is_null());
    let t = &b["teacher_diagnosis"];
    let (up, dropped) = (&t["uploaded"], &t["dropped"]);
    assert_eq!(
        up["samples"].as_u64().unwrap() + dropped["samples"].as_u64().unwrap(),
        128,
        "every sample in one group: {t}"
    );
    assert_eq!(up["samples"], b["uploaded"]);
    for g in [up, dropped] {
        if g["samples"].as_u64().unwrap() > 0 {
            let teacher = g["teacher_accuracy"].as_f64().unwrap();
            let fix = g["teacher_corrects_edge"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&teacher) && fix <= teacher, "{g}");
        }
    }
    // The per-stream entries carry it too.
    assert!(!b["corruptions"]["fog"]["teacher_diagnosis"].is_null());
}

/// Copies the files of `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Every count and accuracy of every (method, stream) of `a` equals `b`'s (not the timings).
fn assert_same_results(a: &Value, b: &Value, what: &str) {
    let methods = a["methods"].as_object().unwrap();
    assert_eq!(
        methods.keys().collect::<Vec<_>>(),
        b["methods"].as_object().unwrap().keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (m, v) in methods {
        for (c, r) in v["corruptions"].as_object().unwrap() {
            for key in [
                "accuracy",
                "uploaded",
                "selected",
                "bytes_up",
                "bytes_down",
                "updates",
                "batch_correct",
                "dropped",
            ] {
                assert_eq!(
                    r[key], b["methods"][m]["corruptions"][c][key],
                    "{what}: {m}.{c}.{key}"
                );
            }
        }
    }
}

#[test]
fn an_interrupted_bench_resumes_from_its_stream_records() {
    if !have_inputs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = tiny_edge(dir.path());
    let methods = "source,cema,random_upload";
    let a = bench(&edge, &dir.path().join("a"), methods);
    for m in ["source", "cema", "random_upload"] {
        for c in ["gaussian_noise", "fog"] {
            let record = read_json(&dir.path().join(format!("a/streams/{m}/{c}.json")));
            assert_eq!(
                record["result"]["correct"].as_f64().unwrap() / 64.0,
                a["methods"][m]["corruptions"][c]["accuracy"]
                    .as_f64()
                    .unwrap(),
                "{m}/{c}"
            );
            assert_eq!(record["fingerprint"]["method"], m);
        }
    }

    // Killed while CEMA ran on fog: the results, the manifest and fog's CEMA and random upload
    // records are not there. --resume loads the other four and measures those two again.
    let b = dir.path().join("b");
    copy_tree(&dir.path().join("a"), &b);
    for f in [
        "results.json",
        "manifest.json",
        "streams/cema/fog.json",
        "streams/random_upload/fog.json",
    ] {
        std::fs::remove_file(b.join(f)).unwrap();
    }
    let resumed = bench_with(&edge, &b, methods, &["--resume"]);
    assert_same_results(&a, &resumed, "resumed after losing fog's cema");
    let manifest = read_json(&b.join("manifest.json"));
    assert_eq!(
        manifest["resumed"],
        serde_json::json!([
            "source/gaussian_noise",
            "cema/gaussian_noise",
            "random_upload/gaussian_noise",
            "source/fog"
        ])
    );
    // A loaded result keeps the wall time it was measured in.
    assert_eq!(
        resumed["methods"]["cema"]["corruptions"]["gaussian_noise"]["seconds"],
        a["methods"]["cema"]["corruptions"]["gaussian_noise"]["seconds"]
    );

    // A real interruption: SIGKILL once the first record is written (or after the run, if it is
    // faster than the poll), then --resume in the same folder.
    let k = dir.path().join("k");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cema"))
        .args(bench_args(&edge, &k, methods, &[]))
        .env("CEMA_THREADS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = k.join("streams/source/gaussian_noise.json");
    let t0 = std::time::Instant::now();
    while !first.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = bench_with(&edge, &k, methods, &["--resume"]);
    assert_same_results(&a, &after_kill, "resumed after SIGKILL");

    // Records from another configuration are refused, naming the flag, the file and the field.
    let refused = |extra: &[&str]| {
        let args = bench_args(&edge, &b, methods, extra);
        let o = cema(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("--resume") && e.contains("gaussian_noise.json"),
            "{e}"
        );
        e
    };
    let e = refused(&["--resume", "--seed", "1"]);
    assert!(e.contains("seed was 0, now 1"), "{e}");
    let e = refused(&["--resume", "--cema-student-lr", "0.01"]);
    assert!(e.contains("hyperparameters"), "{e}");
    std::fs::write(b.join("streams/source/gaussian_noise.json"), "{ truncated").unwrap();
    let e = refused(&["--resume"]);
    assert!(e.contains("not a stream record"), "{e}");

    // Without --resume the records of an earlier run are cleared, and the run starts over.
    let stale = b.join("streams/tent/snow.json");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, "{}").unwrap();
    let fresh = bench(&edge, &b, methods);
    assert_same_results(&a, &fresh, "rerun without --resume");
    assert!(!stale.exists());
    assert_eq!(
        read_json(&b.join("manifest.json"))["resumed"],
        serde_json::json!([])
    );

    // Continual: a method's state runs through every stream, so a method missing one record
    // starts over from the first stream; one recorded on all is loaded.
    let ca = dir.path().join("ca");
    let continual = ["--protocol", "continual"];
    let full = bench_with(&edge, &ca, "source,cema", &continual);
    let cb = dir.path().join("cb");
    copy_tree(&ca, &cb);
    std::fs::remove_file(cb.join("streams/cema/fog.json")).unwrap();
    let resumed = bench_with(
        &edge,
        &cb,
        "source,cema",
        &["--protocol", "continual", "--resume"],
    );
    assert_same_results(&full, &resumed, "continual, resumed");
    assert_eq!(
        read_json(&cb.join("manifest.json"))["resumed"],
        serde_json::json!(["source/gaussian_noise", "source/fog"])
    );
    // The episodic records of another --out are not a continual run's.
    copy_tree(&dir.path().join("a/streams"), &cb.join("streams"));
    let args = bench_args(
        &edge,
        &cb,
        "source",
        &["--protocol", "continual", "--resume"],
    );
    let o = cema(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("protocol was \"episodic\", now \"continual\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_takes_a_vit_foundation() {
    if !have_inputs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let edge = tiny_edge(dir.path());
    let mut card = cema_model::ModelCard::fashion_mnist(
        "tiny-vit",
        "foundation",
        Arch::Vit {
            image_size: 28,
            patch: 7,
            in_channels: 1,
            dim: 16,
            depth: 1,
            heads: 2,
            mlp_dim: 32,
            num_classes: 10,
        },
        vec![],
    );
    card.dataset = "fashion-mnist".into();
    let vit = dir.path().join("vit.safetensors");
    Model::init(card, &cpu(), 5).unwrap().save(&vit).unwrap();
    let out = dir.path().join("out");
    let mut args = bench_args(&edge, &out, "cema,foundation", &[]);
    let at = args.iter().position(|a| a == "--foundation").unwrap();
    args[at + 1] = vit.to_str().unwrap().into();
    let o = cema(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = read_json(&out.join("results.json"));
    for method in ["cema", "foundation"] {
        let acc = v["methods"][method]["avg_accuracy"].as_f64();
        assert!(acc.is_some_and(|a| a.is_finite()), "{method}: {v}");
    }
    // CEMA's cloud ran rounds with the ViT teacher and sent updates down.
    assert!(v["methods"]["cema"]["updates"].as_u64() > Some(0), "{v}");
}
