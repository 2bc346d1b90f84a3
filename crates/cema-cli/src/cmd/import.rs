//! `cema import`: a foreign checkpoint (a PyTorch state dict or safetensors) becomes a cema model
//! (weights + model card, docs/model-card.md). The architecture is recognised from the tensors
//! (`cema_model::infer_arch`); what the tensors cannot say — the input size and normalisation, the
//! class names — is asked for with flags.

use std::path::PathBuf;

use cema_model::{cpu, infer_arch, tensors, Arch, InputSpec, Model, ModelCard, Preprocess};
use serde_json::json;

use crate::exit::{CliError, ResultExt};

use super::{write_json, Context};

/// Turns a foreign checkpoint into a cema model: recognises its architecture from the tensor
/// names and shapes, checks every tensor, writes weights and model card.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint: a PyTorch state dict (`.pth`, `.pt`, `.bin`) or safetensors.
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Where to write the model (safetensors), its card beside it as `<stem>.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// The input size the model was trained at, HxW (the tensors do not say it).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub input_size: (usize, usize),
    /// Per-channel mean of pixels scaled to [0, 1], comma-separated (one value or one per channel).
    #[arg(long, value_delimiter = ',', required = true)]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, as --mean.
    #[arg(long, value_delimiter = ',', required = true)]
    pub std: Vec<f32>,
    /// A file of class names, one per line in label order (default: none in the card).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Photographs of another size are centre-cropped to this fraction of their shorter side and
    /// resized (TensorFlow's ImageNet evaluation recipe; 0.875 for EfficientNet-Lite).
    #[arg(long)]
    pub crop_fraction: Option<f32>,
    /// The architecture as in a model card (JSON), when it cannot be recognised.
    #[arg(long, value_name = "JSON")]
    pub arch: Option<String>,
    /// The model id in the card (default: the file stem of --out).
    #[arg(long)]
    pub name: Option<String>,
    /// The card's role: edge or foundation.
    #[arg(long, default_value = "edge")]
    pub role: String,
    /// Write what was found (architecture, parameters, card) here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}': expected HxW, e.g. 224x224"))?;
    let p = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0);
    match (p(h), p(w)) {
        (Some(h), Some(w)) => Ok((h, w)),
        _ => Err(format!("'{s}': expected two positive numbers, HxW")),
    }
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    let source = || format!("CHECKPOINT {}", args.checkpoint.display());
    let tensors = tensors::read_file(&args.checkpoint).usage_err(source())?;
    let arch: Arch = match &args.arch {
        Some(text) => serde_json::from_str(text).usage_err(format!("--arch {text}"))?,
        None => infer_arch(&tensors)
            .map_err(|e| CliError::usage(anyhow::anyhow!("{}: {e}; give --arch", source())))?,
    };
    let c = arch.in_channels();
    let per_channel = |v: &[f32], flag: &str| -> Result<Vec<f32>, CliError> {
        match v.len() {
            1 => Ok(vec![v[0]; c]),
            n if n == c => Ok(v.to_vec()),
            n => Err(CliError::usage(anyhow::anyhow!(
                "{flag}: {n} values for a model with {c} input channels"
            ))),
        }
    };
    let input = InputSpec {
        height: args.input_size.0,
        width: args.input_size.1,
        channels: c,
        mean: per_channel(&args.mean, "--mean")?,
        std: per_channel(&args.std, "--std")?,
    };
    if input.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(CliError::usage(anyhow::anyhow!("--std must be positive")));
    }
    let classes = match &args.classes {
        Some(p) => std::fs::read_to_string(p)
            .usage_err(format!("--classes {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut card = ModelCard::new(&name, &args.role, arch, input, classes, "");
    card.preprocess = args.crop_fraction.map(|f| Preprocess { crop_fraction: f });
    card.training = json!({
        "imported_from": args.checkpoint,
        "command": super::shell_line(&ctx.argv),
    });
    card.validate()
        .map_err(|e| CliError::usage(anyhow::anyhow!("the card: {e}")))?;
    let mut model = Model::from_tensors(card, &tensors, &source(), &cpu()).usage_err(source())?;
    model
        .save(&args.out)
        .usage_err(format!("--out {}", args.out.display()))?;
    let found = json!({
        "out": args.out,
        "architecture": model.card.architecture,
        "parameters": model.card.parameters,
        "card": model.card,
    });
    println!(
        "{}: {} ({} parameters, {}×{}×{} input) → {}",
        args.checkpoint.display(),
        serde_json::to_string(&model.card.architecture).unwrap_or_default(),
        model.card.parameters.unwrap_or(0),
        args.input_size.0,
        args.input_size.1,
        c,
        args.out.display()
    );
    if let Some(p) = &args.json {
        write_json(p, &found, "--json")?;
    }
    Ok(())
}
