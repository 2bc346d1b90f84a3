//! The protocol through the library, on tiny models and a synthetic 28×28 test set: every method
//! sees the same streams, random upload follows CEMA's rate stream by stream, the report's forms
//! agree, and a rerun with `resume` takes every result from its record.

use std::path::Path;

use cema_adapt::{CloudConfig, GradConfig, Pick};
use cema_bench::{
    BenchConfig, BenchError, MethodKey, Models, Preset, Protocol, RandomRate, Settings, StreamSpec,
};
use cema_corrupt::Corruption;
use cema_data::ImageSet;
use cema_model::{cpu, Arch, Model, ModelCard};
use serde_json::Map;

fn model(name: &str, width: usize, seed: u64) -> (Model, String) {
    let arch = Arch::CifarResnet {
        depth: 8,
        width,
        in_channels: 1,
        num_classes: 10,
    };
    let card = ModelCard::fashion_mnist(name, "edge", arch, vec![]);
    (
        Model::init(card, &cpu(), seed).unwrap(),
        format!("sha-{name}"),
    )
}

fn test_set(n: usize) -> ImageSet {
    ImageSet {
        images: (0..n * 784)
            .map(|i| ((i * 37 + i / 784 * 11) % 251) as u8)
            .collect(),
        labels: (0..n as u32).map(|i| i % 10).collect(),
        height: 28,
        width: 28,
        channels: 1,
    }
}

fn config(records: &Path, resume: bool) -> BenchConfig {
    BenchConfig {
        methods: vec![
            MethodKey::RandomUpload,
            MethodKey::Cema,
            MethodKey::Source,
            MethodKey::BnAdapt,
        ],
        protocol: Protocol::Episodic,
        streams: StreamSpec::grid(&[Corruption::GaussianNoise, Corruption::Fog], &[3]),
        limit: Some(96),
        batch: 32,
        seed: 0,
        corruption_seed: 0,
        corrupted: cema_bench::Corrupted::default_at("/nonexistent"),
        settings: Settings {
            tent: GradConfig::default(),
            eata: GradConfig::default(),
            edge: Preset::Paper.edge_config(),
            cloud: CloudConfig {
                batch: 8,
                replay_min: 16,
                ..CloudConfig::default()
            },
            random_seed: Settings::random_seed_for(0),
            random_pick: Pick::Uniform,
            diagnose_teacher: false,
        },
        random_rate: RandomRate::FollowCema,
        records: records.to_path_buf(),
        resume,
        environment: Map::new(),
    }
}

#[test]
fn every_method_runs_on_the_same_streams_and_a_resumed_run_reuses_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let models = Models {
        edge: Some(model("edge", 4, 1)),
        foundation: Some(model("foundation", 8, 2)),
    };
    let test = test_set(128);
    let first = cema_bench::run(&config(dir.path(), false), &test, &models, &()).unwrap();
    let r = &first.report;
    assert_eq!(
        r.method_order,
        ["source", "bn_adapt", "cema", "random_upload"]
    );
    assert_eq!(r.streams, ["gaussian_noise", "fog"]);
    assert_eq!(r.images_per_stream, 96);
    for m in r.methods.values() {
        for s in m.corruptions.values() {
            assert_eq!((s.images, s.batch_correct.len()), (96, 3));
        }
    }
    for key in &r.streams {
        let (cema, random) = (
            &r.methods["cema"].corruptions[key],
            &r.methods["random_upload"].corruptions[key],
        );
        assert_eq!(
            cema.selected, random.selected,
            "random upload follows CEMA on {key}"
        );
        assert_eq!(r.methods["source"].corruptions[key].upload_fraction, 0.0);
    }
    assert_eq!(r.csv().lines().count(), 1 + 4 * 2);
    // Header and rule, one row per stream, then mean, upload % and bytes up per image.
    assert_eq!(r.table().lines().count(), 2 + 2 + 3);
    let json = r.to_json();
    assert_eq!(json["methods"]["cema"]["corruptions"]["fog"]["severity"], 3);

    let again = cema_bench::run(&config(dir.path(), true), &test, &models, &()).unwrap();
    assert_eq!(again.resumed.len(), 4 * 2, "{:?}", again.resumed);
    for (m, s) in &r.methods {
        assert_eq!(s.avg_accuracy, again.report.methods[m].avg_accuracy, "{m}");
    }
    // Without resume the records are cleared and everything runs again.
    let fresh = cema_bench::run(&config(dir.path(), false), &test, &models, &()).unwrap();
    assert!(fresh.resumed.is_empty());
    assert_eq!(
        fresh.report.methods["cema"].avg_accuracy, r.methods["cema"].avg_accuracy,
        "a rerun is deterministic"
    );
}

#[test]
fn a_configuration_that_cannot_run_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let test = test_set(32);
    let mut c = config(dir.path(), false);
    c.methods = vec![MethodKey::RandomUpload];
    let e = cema_bench::run(&c, &test, &Models::default(), &()).unwrap_err();
    assert!(
        matches!(e, BenchError::Input(_)) && e.to_string().contains("cema"),
        "{e}"
    );
    let mut c = config(dir.path(), false);
    c.methods = vec![MethodKey::Source];
    let e = cema_bench::run(&c, &test, &Models::default(), &()).unwrap_err();
    assert!(e.to_string().contains("edge model"), "{e}");
    c.batch = 0;
    assert!(matches!(c.check(), Err(BenchError::Input(_))));
}

#[test]
fn uncertain_upload_takes_random_uploads_quota_with_its_own_selection_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let models = Models {
        edge: Some(model("edge", 4, 1)),
        foundation: Some(model("foundation", 8, 2)),
    };
    let test = test_set(128);
    let mut c = config(dir.path(), false);
    c.methods = vec![
        MethodKey::UncertainUpload,
        MethodKey::Cema,
        MethodKey::RandomUpload,
    ];
    c.streams = StreamSpec::grid(&[Corruption::Fog], &[3]);
    let r = cema_bench::run(&c, &test, &models, &()).unwrap().report;
    assert_eq!(
        r.method_order,
        ["cema", "random_upload", "uncertain_upload"]
    );
    let (cema, random, uncertain) = (
        &r.methods["cema"].corruptions["fog"],
        &r.methods["random_upload"].corruptions["fog"],
        &r.methods["uncertain_upload"].corruptions["fog"],
    );
    assert_eq!(
        uncertain.selected, cema.selected,
        "the same quota as CEMA's uploads"
    );
    assert_eq!(uncertain.selected, random.selected);
    // The rule's hyperparameters say what it is: highest entropy first, the edge's statistics
    // tracked at the default momentum and shared.
    let h = &c.settings.to_json(&[MethodKey::UncertainUpload])["uncertain_upload"];
    assert_eq!(h["pick"], "highest-entropy");
    assert_eq!(h["edge"]["share_stats"], true);
    assert!((h["edge"]["track_stats"].as_f64().unwrap() - 0.1).abs() < 1e-6);
    // Without cema and without a rate it cannot run.
    c.methods = vec![MethodKey::UncertainUpload];
    let e = cema_bench::run(&c, &test, &models, &()).unwrap_err();
    assert!(e.to_string().contains("cema"), "{e}");
    // With a rate it runs alone, and uploads that share of the stream.
    c.random_rate = RandomRate::Fixed(0.25);
    let r = cema_bench::run(&c, &test, &models, &()).unwrap().report;
    assert_eq!(
        r.methods["uncertain_upload"].corruptions["fog"].selected,
        24
    );
}
