mod common;

use cema_corrupt::{
    contact_sheet, corrupt_image, corrupt_set, corrupt_set_with, save_contact_sheet, CorruptError,
    Corruption, Plan, Table, BENCHMARK, HELD_OUT,
};
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn names_and_parsing() {
    assert_eq!(BENCHMARK.len() + HELD_OUT.len(), Corruption::ALL.len());
    for c in Corruption::ALL {
        assert_eq!(c.name().parse::<Corruption>().unwrap(), c);
        assert_eq!(c.to_string(), c.name());
    }
    assert_eq!(
        "Gaussian-Noise".parse::<Corruption>().unwrap(),
        Corruption::GaussianNoise
    );
    let err = "blurry".parse::<Corruption>().unwrap_err().to_string();
    assert!(err.contains("blurry") && err.contains("jpeg_compression") && err.contains("saturate"));
    let names: Vec<&str> = BENCHMARK.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "gaussian_noise",
            "shot_noise",
            "impulse_noise",
            "defocus_blur",
            "glass_blur",
            "motion_blur",
            "zoom_blur",
            "snow",
            "frost",
            "fog",
            "brightness",
            "contrast",
            "elastic_transform",
            "pixelate",
            "jpeg_compression"
        ]
    );
    assert_eq!("imagenet".parse::<Table>().unwrap(), Table::ImageNet);
}

#[test]
fn table_rule() {
    assert_eq!(Table::for_size(28, 28), Table::Cifar);
    assert_eq!(Table::for_size(32, 32), Table::Cifar);
    assert_eq!(Table::for_size(64, 300), Table::Cifar);
    assert_eq!(Table::for_size(65, 65), Table::ImageNet);
    assert_eq!(Table::for_size(224, 224), Table::ImageNet);
}

#[test]
fn errors() {
    let px = vec![0u8; 28 * 28];
    let c = Corruption::Fog;
    for s in [0u8, 6] {
        assert_eq!(
            corrupt_image(&px, 28, 28, 1, c, s, Table::Cifar, 0, 0),
            Err(CorruptError::Severity(s))
        );
    }
    assert!(matches!(
        corrupt_image(&[], 0, 28, 1, c, 1, Table::Cifar, 0, 0),
        Err(CorruptError::ZeroSize { .. })
    ));
    assert!(matches!(
        corrupt_image(&px[1..], 28, 28, 1, c, 1, Table::Cifar, 0, 0),
        Err(CorruptError::BufferLength {
            got: 783,
            expected: 784,
            ..
        })
    ));
    for ch in [2, 4] {
        assert_eq!(
            corrupt_image(&vec![0; 28 * 28 * ch], 28, 28, ch, c, 1, Table::Cifar, 0, 0),
            Err(CorruptError::Channels(ch))
        );
    }
}

/// Every corruption changes the image at every severity, on gray (Fashion-MNIST or synthetic)
/// and on RGB. The one exception is mathematical: saturate with b = 0 (s1–s3) scales a
/// saturation that gray pixels do not have, so it is the identity on 1-channel images.
#[test]
fn every_corruption_changes_every_severity() {
    let gray = gray_set(4);
    let rgb = synthetic_set(2, 32, 32, 3);
    for set in [&gray, &rgb] {
        for c in Corruption::ALL {
            for s in 1..=5 {
                let out = corrupt_set(set, c, s, None, 7).unwrap();
                assert_eq!(out.images.len(), set.images.len());
                assert_eq!(
                    (out.height, out.width, out.channels),
                    (set.height, set.width, set.channels)
                );
                for i in 0..set.len() {
                    let changed = out.image(i) != set.image(i);
                    if set.channels == 1 && c == Corruption::Saturate && s <= 3 {
                        assert!(!changed, "{c} s{s} should be the identity on gray");
                    } else {
                        assert!(
                            changed,
                            "{c} s{s} left image {i} ({}ch) unchanged",
                            set.channels
                        );
                    }
                }
            }
        }
    }
}

/// The ImageNet rows run on a 224-px RGB image and on a gray one, and keep the shape.
#[test]
fn imagenet_table_at_224() {
    let rgb = synthetic(224, 224, 3, 1);
    let gray = synthetic(224, 224, 1, 2);
    for c in Corruption::ALL {
        for (px, ch) in [(&rgb, 3), (&gray, 1)] {
            // s5 everywhere; elastic s1 too, whose field kernel (σ = 170.8) is wider than the image.
            let sevs: &[u8] = if c == Corruption::ElasticTransform {
                &[1, 5]
            } else {
                &[5]
            };
            for &s in sevs {
                let out = corrupt_image(px, 224, 224, ch, c, s, Table::ImageNet, 0, 0).unwrap();
                assert_eq!(out.len(), px.len());
                assert_ne!(&out, px, "{c} s{s} ImageNet {ch}ch unchanged");
            }
        }
    }
}

/// Values outside [0, 1] clip instead of wrapping. Brightening never makes a pixel darker;
/// noise (CIFAR rows, where no draw can reach more than ~5σ) on a near-white image never gives a
/// near-black pixel and vice versa: a wrapped 256…300 would land in 0…44.
#[test]
fn clipping_not_wrapping() {
    let bright = vec![250u8; 32 * 32 * 3];
    let dark = vec![3u8; 32 * 32 * 3];
    for s in 1..=5 {
        for t in [Table::Cifar, Table::ImageNet] {
            let b = corrupt_image(&bright, 32, 32, 3, Corruption::Brightness, s, t, 0, 0).unwrap();
            assert!(b.iter().zip(&bright).all(|(o, i)| o >= i));
        }
        let t = Table::Cifar;
        for c in [
            Corruption::GaussianNoise,
            Corruption::ShotNoise,
            Corruption::SpeckleNoise,
        ] {
            let o = corrupt_image(&bright, 32, 32, 3, c, s, t, 0, 0).unwrap();
            assert!(o.iter().all(|&v| v > 44), "{c} s{s} wrapped on white");
            assert!(
                o.contains(&255),
                "{c} s{s}: white + noise must saturate somewhere"
            );
            let o = corrupt_image(&dark, 32, 32, 3, c, s, t, 0, 0).unwrap();
            assert!(o.iter().all(|&v| v < 211), "{c} s{s} wrapped on black");
        }
        // Not fog: it rescales by m/(m + c) by design (§3.10), so fog-free areas darken.
        for c in [Corruption::Snow, Corruption::Frost] {
            let o = corrupt_image(&bright, 32, 32, 3, c, s, t, 0, 0).unwrap();
            assert!(o.iter().all(|&v| v > 100), "{c} s{s} wrapped on white");
        }
    }
}

#[test]
fn determinism_and_seed_sensitivity() {
    let px = synthetic(28, 28, 1, 3);
    for c in Corruption::ALL {
        let a = corrupt_image(&px, 28, 28, 1, c, 3, Table::Cifar, 42, 5).unwrap();
        let b = corrupt_image(&px, 28, 28, 1, c, 3, Table::Cifar, 42, 5).unwrap();
        assert_eq!(a, b, "{c} is not deterministic");
        if c.is_random() {
            let other_seed = corrupt_image(&px, 28, 28, 1, c, 3, Table::Cifar, 43, 5).unwrap();
            let other_index = corrupt_image(&px, 28, 28, 1, c, 3, Table::Cifar, 42, 6).unwrap();
            assert_ne!(a, other_seed, "{c} ignores the seed");
            assert_ne!(a, other_index, "{c} ignores the index");
        }
    }
}

/// corrupt_set is identical in a 1-thread and a 2-thread pool, matches corrupt_image per index,
/// and reports progress once per image.
#[test]
fn thread_count_independence() {
    let gray = gray_set(24);
    let rgb = synthetic_set(12, 32, 32, 3);
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let (p1, p2) = (pool(1), pool(2));
    for set in [&gray, &rgb] {
        for c in Corruption::ALL {
            let one = p1.install(|| corrupt_set(set, c, 4, None, 11).unwrap());
            let counter = AtomicUsize::new(0);
            let two = p2.install(|| {
                corrupt_set_with(set, c, 4, None, 11, &|n| {
                    counter.fetch_add(n, Ordering::Relaxed);
                })
                .unwrap()
            });
            assert_eq!(one, two, "{c} depends on the thread count");
            assert_eq!(counter.load(Ordering::Relaxed), set.len());
            let i = set.len() - 1;
            let single = corrupt_image(
                set.image(i),
                set.height,
                set.width,
                set.channels,
                c,
                4,
                Table::Cifar,
                11,
                i as u64,
            )
            .unwrap();
            assert_eq!(single, one.image(i));
            assert_eq!(one.labels, set.labels);
        }
    }
}

/// Mean MSE over 200 images rises with severity for every benchmark corruption, with a 3 %
/// tolerance, except for the steps below where the CIFAR-10-C table itself is not monotone in
/// MSE (the spec's parameters, not a port error):
/// * glass_blur: MSE is dominated by the pixel shuffle (d = 1 at every CIFAR severity), and
///   the σ = 0.4 blur of s3 and s5 both softens edges before the shuffle and averages the
///   shuffled pixels afterwards, so s3 < s2 and s5 < s4 in MSE (s1 ≈ s2 since σ 0.05 and 0.25
///   are practically no blur, §3.5). Only the iteration count orders it: s4, s5 > s1–s3.
/// * elastic_transform: the CIFAR row's affine jitter A = 0.08, 0.07, 0.06, 0.05, 0.03·S
///   dominates MSE and shrinks with severity, while the elastic field that grows is tiny
///   (displacement sd 0, 0.05, 0.24, 0.45, 0.56 px, §3.13). So MSE *falls* with severity; the
///   test asserts that documented ordering instead (same 3 % tolerance).
/// * frost s3 → s4: only c_img falls (0.9 → 0.85, c_frost stays 0.4); darkening the image
///   partly cancels the brightening frost, so the squared error shrinks.
#[test]
fn distortion_rises_with_severity() {
    let set = gray_set(200);
    let mut report = String::new();
    for c in BENCHMARK {
        let d: Vec<f64> = (1..=5)
            .map(|s| {
                mse(
                    &corrupt_set(&set, c, s, None, 0).unwrap().images,
                    &set.images,
                )
            })
            .collect();
        report.push_str(&format!(
            "{:18} {:?}\n",
            c.name(),
            d.iter().map(|v| v.round()).collect::<Vec<_>>()
        ));
        let allowed: &[usize] = match c {
            Corruption::GlassBlur => &[1, 2, 4],
            Corruption::ElasticTransform => &[1, 2, 3, 4],
            Corruption::Frost => &[3],
            _ => &[],
        };
        for s in 1..5 {
            if allowed.contains(&s) {
                continue;
            }
            assert!(
                d[s] >= d[s - 1] * 0.97,
                "{c}: MSE at s{} ({:.1}) < s{} ({:.1})\n{report}",
                s + 1,
                d[s],
                s,
                d[s - 1]
            );
        }
        if c == Corruption::ElasticTransform {
            for s in 1..5 {
                assert!(
                    d[s] <= d[s - 1] * 1.03,
                    "{c}: expected falling MSE\n{report}"
                );
            }
        } else {
            assert!(d[4] > d[0], "{c}: s5 not above s1\n{report}");
        }
        if c == Corruption::GlassBlur {
            assert!(
                d[3].min(d[4]) > d[0].max(d[1]).max(d[2]),
                "{c}: 2 passes not above 1"
            );
        }
    }
    println!("{report}");
}

/// Golden outputs on a fixed synthetic image with seed 0 and index 0: (corruption, severity,
/// table, channels, mean ×1000 rounded, FNV-1a of the bytes). They pin the exact algorithms
/// (RNG streams included; also libm's exp/sin/cos, so another platform's libm could move a
/// hash by one rounding, in which case the means still agree). To regenerate after an intended change, run
/// `cargo test -p cema-corrupt --test suite golden -- --nocapture` and copy the printed table.
#[test]
fn golden_statistics() {
    #[rustfmt::skip]
    let cases: [(Corruption, u8, Table, usize, u64, u64); 8] = [
        (Corruption::GaussianNoise, 3, Table::Cifar, 3, 143362, 0xf782e0257f9a7411),
        (Corruption::Fog, 5, Table::Cifar, 3, 109706, 0x1f5b68175e8dfee7),
        (Corruption::JpegCompression, 2, Table::Cifar, 3, 144772, 0x421ac8db892542c9),
        (Corruption::ElasticTransform, 4, Table::Cifar, 3, 145740, 0x0358eb3dad8b8367),
        (Corruption::Frost, 3, Table::Cifar, 1, 170596, 0x837e9e5bb53510fd),
        (Corruption::MotionBlur, 5, Table::Cifar, 1, 136015, 0x630a1b628d211d94),
        (Corruption::Snow, 4, Table::Cifar, 3, 185501, 0x8164a06ad1d548d8),
        (Corruption::Pixelate, 5, Table::ImageNet, 3, 144255, 0xf7a4e875b3b313b5),
    ];
    let mut printed = String::new();
    let mut ok = true;
    for (c, s, t, ch, want_mean, want_hash) in cases {
        let px = synthetic(32, 32, ch, 0);
        let out = corrupt_image(&px, 32, 32, ch, c, s, t, 0, 0).unwrap();
        let mean =
            (out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64 * 1000.0).round() as u64;
        let hash = fnv1a(&out);
        printed.push_str(&format!(
            "        (Corruption::{c:?}, {s}, Table::{t:?}, {ch}, {mean}, {hash:#018x}),\n"
        ));
        ok &= mean == want_mean && hash == want_hash;
    }
    println!("{printed}");
    assert!(ok, "golden statistics changed; new table:\n{printed}");
}

#[test]
fn contact_sheet_layout() {
    let set = gray_set(3);
    let rows = [Corruption::Fog, Corruption::Frost, Corruption::Saturate];
    let sheet = contact_sheet(&set, &rows, 2, 0, None).unwrap();
    // ×3 for 28 px; cell = 2·84 + 1 = 169; 6 columns + 7 gaps of 4; 3 rows of 84 + 4 gaps; the
    // labels: "saturate" (8 glyphs of 8 px) and a gap on the left, a line and a gap on top.
    assert_eq!(
        sheet.dimensions(),
        (8 * 8 + 4 + 6 * 169 + 7 * 4, 8 + 4 + 3 * 84 + 4 * 4)
    );
    // Label pixels are drawn in the left and top margins, never over an image.
    let ink = image::Rgb([240, 240, 240]);
    let inked = |x0: u32, x1: u32, y0: u32, y1: u32| {
        (x0..x1).any(|x| (y0..y1).any(|y| *sheet.get_pixel(x, y) == ink))
    };
    assert!(inked(0, 68, 12, sheet.height()), "row labels");
    assert!(inked(68, sheet.width(), 0, 12), "column labels");
    let dir = std::env::temp_dir().join(format!("cema-corrupt-sheet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sheet.png");
    save_contact_sheet(&sheet, &path).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!(back, sheet);
    std::fs::remove_dir_all(&dir).ok();
}

/// The in-memory JPEG model (4:2:0, float DCT) against `image`'s real codec on a gray image,
/// where subsampling does not enter: the two must agree to within rounding-level differences.
#[test]
fn jpeg_model_matches_a_real_codec_on_gray() {
    let px = synthetic(32, 32, 1, 9);
    for (s, q) in [(1u8, 80u8), (3, 58), (5, 40)] {
        let ours = corrupt_image(
            &px,
            32,
            32,
            1,
            Corruption::JpegCompression,
            s,
            Table::Cifar,
            0,
            0,
        )
        .unwrap();
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q)
            .encode(&px, 32, 32, image::ExtendedColorType::L8)
            .unwrap();
        let theirs = image::load_from_memory(&buf).unwrap().to_luma8().into_raw();
        let mad = ours
            .iter()
            .zip(&theirs)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / 1024.0;
        let err_ours = mse(&ours, &px);
        let err_theirs = mse(&theirs, &px);
        assert!(mad < 1.0, "q{q}: mean |ours − image| = {mad}");
        assert!(
            (err_ours - err_theirs).abs() < 0.15 * err_theirs + 0.5,
            "q{q}: {err_ours} vs {err_theirs}"
        );
    }
}

/// A plan reused across images gives the same as one-off calls (the CLI's fast path).
#[test]
fn plan_matches_corrupt_image() {
    let px = synthetic(32, 32, 3, 4);
    let plan = Plan::new(Corruption::ZoomBlur, 5, Table::Cifar, 32, 32, 3).unwrap();
    assert_eq!(
        plan.apply(&px, 1, 2).unwrap(),
        corrupt_image(&px, 32, 32, 3, Corruption::ZoomBlur, 5, Table::Cifar, 1, 2).unwrap()
    );
    assert!(plan.apply(&px[1..], 1, 2).is_err());
}
