//! `cema plot`: the benchmark's figures from a results.json (e.g. one merged from several runs).

use std::path::PathBuf;

use crate::exit::{CliError, ResultExt};

use super::Context;

/// Draws the benchmark figures (SVG) from a `cema bench` results.json.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A results.json written by `cema bench`.
    #[arg(long)]
    pub results: PathBuf,
    /// Folder for the SVG files.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&args.results)
        .usage_err(format!("--results {}", args.results.display()))?;
    let results: serde_json::Value =
        serde_json::from_str(&text).usage_err(format!("--results {}", args.results.display()))?;
    if !results["methods"].is_object() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--results {}: not a cema bench results.json (no `methods`)",
            args.results.display()
        )));
    }
    for f in crate::plots::write_all(&results, &args.out).run_err("plots")? {
        if !ctx.quiet {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}
