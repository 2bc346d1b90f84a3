//! `cema predict`: the top-5 classes of a model for image files and folders of images.

use std::path::PathBuf;

use cema_data::photo::{load_photo, photo_paths, Prepare};
use cema_model::{softmax_rows, Model, NormMode};
use serde_json::{json, Value};

use super::{write_json, Context};
use crate::exit::{CliError, ResultExt};

/// Classify images: for each file (and each image of each folder, in name order) the five most
/// probable classes, in argument order. Photographs of any size are centre-cropped and resized
/// as the model card says.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint (safetensors or .pth; its model card `<model>.json` beside it).
    #[arg(long)]
    model: PathBuf,
    /// Image files (PNG, JPEG) or folders of them.
    #[arg(required = true, value_name = "IMAGE|FOLDER")]
    images: Vec<PathBuf>,
    /// Also write `[{"path": ..., "top5": [[class_index, probability], ...]}, ...]` here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    if args.batch == 0 {
        return Err(CliError::usage(anyhow::anyhow!("--batch must be positive")));
    }
    let mut model = Model::load(&args.model, &ctx.device)
        .usage_err(format!("--model {}", args.model.display()))?;
    let spec = model.card.input.clone();
    let prepare = match &model.card.preprocess {
        Some(p) => Prepare::CenterCrop {
            fraction: p.crop_fraction,
        },
        None => Prepare::Exact,
    };
    let mut paths = Vec::new();
    for arg in &args.images {
        paths.extend(photo_paths(arg).usage_err("IMAGE|FOLDER")?);
    }
    let classes = model.card.architecture.num_classes();
    let per = spec.height * spec.width * spec.channels;
    let mut rows = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(args.batch) {
        let mut pixels = Vec::with_capacity(chunk.len() * per);
        for path in chunk {
            let px = load_photo(path, (spec.height, spec.width, spec.channels), prepare)
                .usage_err("IMAGE|FOLDER")?;
            pixels.extend(px);
        }
        let logits = model
            .logits(&pixels, chunk.len(), NormMode::Running)
            .run_err("forward pass")?;
        let probs = softmax_rows(&logits, classes);
        for (path, p) in chunk.iter().zip(probs.chunks_exact(classes)) {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            order.truncate(5);
            rows.push((
                path.clone(),
                order.into_iter().map(|k| (k, p[k])).collect::<Vec<_>>(),
            ));
        }
    }
    let name = |k: usize| model.card.classes.get(k).map_or("", String::as_str);
    for (path, top) in &rows {
        println!("{}", path.display());
        for (k, p) in top {
            println!("  {k:>5}  {:>6.2} %  {}", p * 100.0, name(*k));
        }
    }
    if let Some(file) = &args.json {
        let value: Vec<Value> = rows
            .iter()
            .map(|(path, top)| {
                json!({
                    "path": path.display().to_string(),
                    "top5": top.iter().map(|(k, p)| json!([k, p])).collect::<Vec<_>>(),
                })
            })
            .collect();
        write_json(file, &Value::Array(value), "--json")?;
    }
    Ok(())
}
