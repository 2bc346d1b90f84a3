//! `cema`: the command-line front end of cema (SPEC §7).
//!
//! Layout: this file holds the top-level [`Cli`] (global flags), tracing set-up and the mapping
//! from a subcommand's result to the process exit code; [`cmd`] holds one file per subcommand;
//! [`exit`] holds the error type that carries the exit code; [`ui`] holds progress bars and
//! status lines shared by the subcommands.
//!
//! Exit codes: 0 success, 1 a failed check or run, 2 usage or input error (clap's own usage errors
//! exit 2 as well).

use std::process::ExitCode;

use clap::Parser;

mod cmd;
mod exit;
mod plots;
mod ui;

/// Cloud-edge test-time adaptation: datasets, corruptions, training, evaluation, benchmarks.
///
/// Exit codes: 0 success, 1 a failed check or run, 2 usage or input error.
#[derive(Debug, Parser)]
#[command(name = "cema", version, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    verbose: u8,

    /// No progress bars or status lines on stderr (results and errors are still printed).
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,

    /// Worker threads for data-parallel work (default: one per CPU core).
    #[arg(long, global = true, env = "CEMA_THREADS", value_name = "N", help_heading = "Global options",
          value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,

    /// Where the models run: `cpu` (burn's flex backend with cema's hand-written kernels) or
    /// `cuda` / `cuda:N` (a build with `--features cuda`). The edge runtime (`cema edge`, `cema
    /// load`) always runs on the CPU: edges have no GPU.
    #[arg(
        long,
        global = true,
        env = "CEMA_BACKEND",
        default_value = "cpu",
        value_name = "DEVICE",
        help_heading = "Global options"
    )]
    backend: String,

    /// Number type of the matrix products on the CPU (convolutions, linear layers, attention):
    /// `f32`, or `bf16` (operands rounded to bfloat16, sums in f32, on the AVX512_BF16
    /// instruction; an error on a CPU without it). Norms, losses and the optimiser stay f32.
    #[arg(
        long,
        global = true,
        env = "CEMA_PRECISION",
        default_value = "f32",
        value_name = "P",
        help_heading = "Global options"
    )]
    precision: cema_model::Precision,

    #[command(subcommand)]
    command: cmd::Command,
}

fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, 0) => "error",
        (false, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (only possible in tests) is harmless, so its error is ignored.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in logs and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    // `parse` prints usage errors and exits 2 itself (0 for --help / --version).
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.quiet);
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
        {
            tracing::warn!("--threads {n} ignored: {e}");
        }
    }
    if let Err(e) = cema_model::set_precision(cli.precision) {
        eprintln!("error: --precision: {e}");
        return ExitCode::from(2);
    }
    let device = match cema_model::device(&cli.backend) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --backend: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = cmd::Context {
        quiet: cli.quiet,
        device,
        backend: cli.backend.clone(),
        argv: std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    };
    let name = cli.command.name();
    match cli.command.run(&ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::debug!("cema {name} failed: {e:?}");
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every subcommand says what it is for, and one concept has one name: no two
    /// subcommands use the names that once meant different things.
    #[test]
    fn every_flag_has_help_and_the_vocabulary_is_one() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        let mut check = |cmd: &clap::Command, path: &str| {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_long().unwrap_or(id)));
                }
                // Old names that meant different things in different subcommands are aliases
                // only now, never a flag's own name.
                if let Some(long) = a.get_long() {
                    let ambiguous =
                        matches!(long, "max-queued" | "preset" | "track-stats" | "student-lr")
                            || (path == "cema cloud" && long == "data-dir");
                    assert!(!ambiguous, "{path} --{long}: an ambiguous name");
                }
            }
        };
        check(&cli, "cema");
        for sub in cli.get_subcommands() {
            check(sub, &format!("cema {}", sub.get_name()));
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
