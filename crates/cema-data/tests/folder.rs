mod common;

use std::fs;
use std::path::{Path, PathBuf};

use cema_data::folder::{self, ColorMode, FolderOptions, SizePolicy};
use cema_data::DataError;
use common::assert_names;
use image::{GrayImage, ImageFormat, RgbImage};

fn rgb(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed.wrapping_add(x as u8 * 10), y as u8 * 20, seed ^ 0x55])
    })
}

fn save_png(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, ImageFormat::Png).unwrap();
}

#[test]
fn class_folders_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Created out of order: labels must follow sorted class names and sorted file names.
    save_png(&r.join("zebra/b.png"), &rgb(4, 3, 1));
    save_png(&r.join("zebra/a.png"), &rgb(4, 3, 2));
    save_png(&r.join("ant/x.PNG"), &rgb(4, 3, 3));
    fs::create_dir_all(r.join("empty")).unwrap();
    fs::write(r.join("zebra/notes.txt"), "not an image").unwrap();
    fs::write(r.join("zebra/.hidden.png"), "not an image").unwrap();
    fs::write(r.join("README"), "stray file at the root").unwrap();

    let got = folder::load_class_folders(r, &FolderOptions::default()).unwrap();
    assert_eq!(got.classes, ["ant", "empty", "zebra"]);
    assert_eq!(got.set.labels, [0, 2, 2]);
    assert_eq!((got.set.height, got.set.width, got.set.channels), (3, 4, 3));
    let want: Vec<u8> = [rgb(4, 3, 3), rgb(4, 3, 2), rgb(4, 3, 1)]
        .into_iter()
        .flat_map(|i| i.into_raw())
        .collect();
    assert_eq!(got.set.images, want);
    assert_eq!(
        got.files,
        [
            r.join("ant/x.PNG"),
            r.join("zebra/a.png"),
            r.join("zebra/b.png")
        ]
    );
    assert_eq!(folder::list_classes(r).unwrap(), got.classes);
}

#[test]
fn luma_and_jpeg() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let gray = GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 16 + y) as u8]));
    fs::create_dir_all(r.join("c")).unwrap();
    gray.save_with_format(r.join("c/g.png"), ImageFormat::Png)
        .unwrap();
    rgb(8, 8, 9)
        .save_with_format(r.join("c/photo.JPEG"), ImageFormat::Jpeg)
        .unwrap();
    let opts = FolderOptions {
        color: ColorMode::Luma,
        ..Default::default()
    };
    let got = folder::load_class_folders(r, &opts).unwrap();
    assert_eq!(got.set.len(), 2);
    assert_eq!(got.set.channels, 1);
    assert_eq!(got.set.image(0), gray.as_raw().as_slice());
    assert_eq!(got.files[1], r.join("c/photo.JPEG"));
    // Grey PNG read as RGB repeats the value in each channel.
    let got = folder::load_class_folders(r, &FolderOptions::default()).unwrap();
    assert_eq!(got.set.channels, 3);
    assert_eq!(&got.set.image(0)[..3], [0, 0, 0]);
    assert_eq!(&got.set.image(0)[3..6], [16, 16, 16]);
}

#[test]
fn mixed_sizes_error_or_resize() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    save_png(&r.join("a/1.png"), &rgb(4, 3, 0));
    save_png(&r.join("a/2.png"), &rgb(4, 3, 0));
    save_png(&r.join("b/3.png"), &rgb(5, 6, 0));
    let err = folder::load_class_folders(r, &FolderOptions::default()).unwrap_err();
    match &err {
        DataError::MixedSizes {
            expected,
            found,
            reference,
            ..
        } => {
            assert_eq!((*expected, *found), ((3, 4), (6, 5)));
            assert_eq!(reference, &r.join("a/1.png"));
        }
        e => panic!("{e}"),
    }
    assert_names(&err, &r.join("b/3.png"));
    let msg = err.to_string();
    assert!(msg.contains("6x5") && msg.contains("3x4"), "{msg}");

    let opts = FolderOptions {
        size: SizePolicy::Resize {
            height: 8,
            width: 7,
        },
        ..Default::default()
    };
    let got = folder::load_class_folders(r, &opts).unwrap();
    assert_eq!((got.set.len(), got.set.height, got.set.width), (3, 8, 7));
    assert_eq!(got.set.images.len(), 3 * 8 * 7 * 3);
}

#[test]
fn imagenet_c_layout() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for (sev, seed) in [(1u8, 10u8), (3, 30)] {
        for wnid in ["n01440764", "n01443537"] {
            save_png(
                &r.join(format!("fog/{sev}/{wnid}/ILSVRC2012_val_1.png")),
                &rgb(2, 2, seed),
            );
        }
    }
    let got = folder::load_imagenet_c(r, "fog", 3, &FolderOptions::default()).unwrap();
    assert_eq!(got.classes, ["n01440764", "n01443537"]);
    assert_eq!(got.set.labels, [0, 1]);
    assert_eq!(got.set.image(1), rgb(2, 2, 30).as_raw().as_slice());
    assert_eq!(folder::imagenet_c_dir(r, "fog", 3), r.join("fog/3"));

    let err = folder::load_imagenet_c(r, "fog", 2, &FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &r.join("fog/2"));
    let err = folder::load_imagenet_c(r, "fog", 6, &FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument { .. }), "{err}");
}

#[test]
fn undecodable_image() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    save_png(&r.join("a/good.png"), &rgb(2, 2, 0));
    let bad: PathBuf = r.join("a/z-bad.png");
    fs::write(&bad, b"\x89PNG\r\n\x1a\n but then garbage").unwrap();
    let err = folder::load_class_folders(r, &FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    assert_names(&err, &bad);
}

#[test]
fn empty_and_missing_roots() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let err = folder::load_class_folders(r, &FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
    assert_names(&err, r);

    fs::create_dir(r.join("cls")).unwrap();
    fs::write(r.join("cls/a.txt"), "x").unwrap();
    let err = folder::load_class_folders(r, &FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");

    let nowhere = r.join("nowhere");
    let err = folder::load_class_folders(&nowhere, &FolderOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &nowhere);
}

#[test]
fn many_files_decode_in_order() {
    // More files than one decoding thread takes, to exercise the split across threads.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for i in 0..40u8 {
        save_png(&r.join(format!("c{}/{i:02}.png", i % 3)), &rgb(3, 3, i));
    }
    let got = folder::load_class_folders(r, &FolderOptions::default()).unwrap();
    assert_eq!(got.set.len(), 40);
    for (k, f) in got.files.iter().enumerate() {
        let i: u8 = f.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(got.set.labels[k], u32::from(i % 3));
        assert_eq!(got.set.image(k), rgb(3, 3, i).as_raw().as_slice());
    }
}
