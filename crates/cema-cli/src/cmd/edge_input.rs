//! `cema edge --input DIR`: the edge on the user's own images. Labelled when the folder has class
//! sub-folders named by class index, otherwise each image's predicted class is printed as a JSON
//! line; either way the edge selects, uploads and installs the cloud's norm states as on a test
//! stream.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cema_data::photo::{load_photo, photo_paths, Prepare};
use cema_edge::{CloudLink, Edge, EdgeCounters, EdgeError};
use cema_model::Model;
use cema_wire::EdgeTelemetry;
use serde_json::json;

use super::edge::Args;
use super::{write_json, Context};
use crate::exit::{CliError, ResultExt};

/// The images of `dir` in order, each with its class when the folder is labelled: class folders
/// are named by class index or by the model card's class names.
fn images(
    dir: &Path,
    names: &[String],
    classes: usize,
) -> Result<Vec<(PathBuf, Option<u32>)>, CliError> {
    let flag = || format!("--input {}", dir.display());
    let subdirs = cema_data::folder::list_classes(dir).usage_err(flag())?;
    if subdirs.is_empty() {
        let files = photo_paths(dir).usage_err(flag())?;
        return Ok(files.into_iter().map(|f| (f, None)).collect());
    }
    let mut out = Vec::new();
    for name in subdirs {
        let by_name = names.iter().position(|n| *n == name).map(|i| i as u32);
        let by_index = name.parse::<u32>().ok().filter(|&c| (c as usize) < classes);
        let class = by_name.or(by_index).ok_or_else(|| {
            CliError::usage(anyhow::anyhow!(
                "{}: class folder `{name}` is neither a class index of the model (0..{}) nor one \
                 of its card's class names",
                flag(),
                classes - 1
            ))
        })?;
        let files = photo_paths(&dir.join(&name)).usage_err(flag())?;
        out.extend(files.into_iter().map(|f| (f, Some(class))));
    }
    // Labelled folders are read class by class; a stream in that order would be one class after
    // another, so it is interleaved by name across classes (deterministic, roughly mixed).
    out.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// Reads up to `n` whole frames of `size` bytes; fewer only at the end of the input. A trailing
/// partial frame is an error naming how many bytes it had.
fn read_frames(input: &mut impl Read, n: usize, size: usize) -> Result<Vec<u8>, CliError> {
    let mut buf = vec![0u8; n * size];
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::usage(anyhow::anyhow!("--input -: {e}"))),
        }
    }
    if got % size != 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--input -: the input ended {} bytes into a frame of {size} bytes (frames must be \
             exactly the model's input, u8)",
            got % size
        )));
    }
    buf.truncate(got);
    Ok(buf)
}

/// `--input -`: raw frames from stdin, unlabelled, one JSON line per frame.
fn run_stdin(args: &Args, mut edge: Edge, size: usize) -> Result<EdgeCounters, CliError> {
    let mut stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut frame = 0u64;
    loop {
        let frames = read_frames(&mut stdin, args.batch, size)?;
        if frames.is_empty() {
            break;
        }
        let batch = edge.predict(&frames).map_err(refused)?;
        for (i, p) in batch.predictions.iter().enumerate() {
            let line = json!({
                "frame": frame,
                "class": p,
                "selected": batch.selected.contains(&i),
                "version": batch.version,
            });
            let _ = writeln!(out, "{line}");
            frame += 1;
        }
        let _ = out.flush();
    }
    edge.finish(Duration::from_secs(10)).map_err(refused)
}

fn refused(e: EdgeError) -> CliError {
    if e.is_usage() {
        CliError::usage(anyhow::anyhow!(e).context("--cloud / --device / --token"))
    } else {
        CliError::failed(anyhow::anyhow!(e))
    }
}

pub fn run(
    args: &Args,
    dir: &Path,
    model: Model,
    selection: cema_adapt::EdgeConfig,
    selector: Option<cema_adapt::RandomSelector>,
    ctx: &Context,
) -> Result<(), CliError> {
    if args.batch == 0 {
        return Err(CliError::usage(anyhow::anyhow!("--batch must be positive")));
    }
    if dir == Path::new("-") {
        let i = &model.card.input;
        let size = i.height * i.width * i.channels;
        let link = CloudLink {
            uplink_kbps: args.uplink_kbps,
            max_queued_samples: args.max_queued_samples,
            ..CloudLink::new(&args.cloud, &args.device, &args.token)
        };
        let mut edge = Edge::new(model, selection, Some(&link)).map_err(refused)?;
        edge.set_selector(selector);
        let c = run_stdin(args, edge, size)?;
        if !ctx.quiet {
            eprintln!(
                "{}: {} frames from stdin, uploaded {}, version {}",
                args.device, c.images, c.uploaded, c.version
            );
        }
        if let Some(path) = &args.json {
            write_json(path, &json!(c), "--json")?;
        }
        return Ok(());
    }
    let spec = model.card.input.clone();
    let prepare = match &model.card.preprocess {
        Some(p) => Prepare::CenterCrop {
            fraction: p.crop_fraction,
        },
        // No recipe on the card: the largest centred square, resized to the input.
        None => Prepare::CenterCrop { fraction: 1.0 },
    };
    let (names, classes) = (
        model.card.classes.clone(),
        model.card.architecture.num_classes(),
    );
    let limit = args.limit.unwrap_or(usize::MAX);
    let labelled = !cema_data::folder::list_classes(dir)
        .usage_err(format!("--input {}", dir.display()))?
        .is_empty();
    let mut files = match images(dir, &names, classes) {
        // A watched folder may start empty.
        Err(_) if args.watch && !labelled => Vec::new(),
        r => r?,
    };
    files.truncate(limit);
    let mut seen: std::collections::HashSet<PathBuf> =
        files.iter().map(|(p, _)| p.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if args.watch {
        // SIGINT and SIGTERM end the watch; what was queued is still uploaded before exit.
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())
                .run_err("installing a signal handler")?;
        }
    }
    let link = CloudLink {
        uplink_kbps: args.uplink_kbps,
        max_queued_samples: args.max_queued_samples,
        ..CloudLink::new(&args.cloud, &args.device, &args.token)
    };
    let mut edge = Edge::new(model, selection, Some(&link)).map_err(refused)?;
    edge.set_selector(selector);
    let t0 = Instant::now();
    let mut correct = 0u64;
    let mut out = std::io::stdout().lock();
    let mut done = 0usize;
    loop {
        for chunk in files.chunks(args.batch) {
            let mut frames = Vec::new();
            for (path, _) in chunk {
                let px = load_photo(path, (spec.height, spec.width, spec.channels), prepare)
                    .usage_err(format!("--input {}", dir.display()))?;
                frames.extend(px);
            }
            let batch = edge.predict(&frames).map_err(refused)?;
            let selected: std::collections::HashSet<usize> =
                batch.selected.iter().copied().collect();
            for (i, ((path, label), p)) in chunk.iter().zip(&batch.predictions).enumerate() {
                correct += u64::from(*label == Some(*p));
                if !labelled {
                    let line = json!({
                        "file": path,
                        "class": p,
                        "selected": selected.contains(&i),
                        "version": batch.version,
                    });
                    let _ = writeln!(out, "{line}");
                }
            }
            if labelled && args.report_accuracy {
                let c = edge.counters();
                edge.report(EdgeTelemetry {
                    images: c.images,
                    correct,
                    source_correct: None,
                    norm_version: c.version,
                });
            }
            if args.pace_ms > 0 {
                std::thread::sleep(Duration::from_millis(args.pace_ms));
            }
        }
        let _ = out.flush();
        done += files.len();
        if !args.watch || done >= limit {
            break;
        }
        // Watching: the files that appeared since, once they have stopped changing (a file still
        // being written is picked up at a later look).
        files = loop {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                break Vec::new();
            }
            std::thread::sleep(Duration::from_millis(300));
            let settled = |p: &Path| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > Duration::from_millis(300)))
            };
            let fresh: Vec<(PathBuf, Option<u32>)> = match images(dir, &names, classes) {
                Ok(all) => all
                    .into_iter()
                    .filter(|(p, l)| !seen.contains(p) && settled(p) && l.is_some() == labelled)
                    .take(limit - done)
                    .collect(),
                Err(_) => Vec::new(),
            };
            if !fresh.is_empty() {
                seen.extend(fresh.iter().map(|(p, _)| p.clone()));
                break fresh;
            }
        };
        if files.is_empty() {
            break;
        }
    }
    drop(out);
    let c = edge.finish(Duration::from_secs(10)).map_err(refused)?;
    let accuracy = (labelled && c.images > 0).then(|| correct as f64 / c.images as f64);
    let report = json!({
        "device": args.device,
        "input": dir,
        "labelled": labelled,
        "images": c.images,
        "accuracy": accuracy,
        "selected": c.selected,
        "uploaded": c.uploaded,
        "dropped": c.dropped,
        "refused": c.refused,
        "bytes_up": c.bytes_up,
        "bytes_down": c.bytes_down,
        "norm_version": c.version,
        "updates_applied": c.updates_applied,
        "updates_rejected": c.updates_rejected,
        "network_errors": c.network_errors,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    if let Some(path) = &args.json {
        write_json(path, &report, "--json")?;
    }
    if !ctx.quiet {
        let acc = accuracy.map_or("unlabelled".to_string(), |a| {
            format!("accuracy {:.2}%", 100.0 * a)
        });
        eprintln!(
            "{}: {} images from {}, {acc}, uploaded {}, version {}, {} B up, {} B down",
            args.device,
            c.images,
            dir.display(),
            c.uploaded,
            c.version,
            c.bytes_up,
            c.bytes_down
        );
    }
    Ok(())
}
