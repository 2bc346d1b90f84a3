//! The subcommands, one file each.
//!
//! # Adding a subcommand
//! 1. Write `src/cmd/<name>.rs` with
//!    * `pub struct Args` deriving `clap::Args`, every flag documented by its doc comment (that is
//!      the `--help` text), and a doc comment on the struct (the subcommand's one-line `about`);
//!    * `pub fn run(args: Args, ctx: &Context) -> Result<(), CliError>`.
//! 2. Add `pub mod <name>;` and one line `Variant(<name>::Args) => <name>,` to the
//!    [`commands!`] invocation below. That generates the enum variant, its name and its dispatch.
//!
//! Errors: return [`CliError::usage`] (exit 2) for bad flags, missing or invalid input files and
//! unwritable outputs, naming the flag or file; anything else that stops the run exits 1 (plain
//! `?` on an `anyhow::Error` does that). Report-producing subcommands take `--json FILE`
//! (SPEC §7); [`write_json`] writes it atomically.

use std::path::{Path, PathBuf};

use cema_data::{Dataset, ImageSet, Split};

use crate::exit::{CliError, ResultExt};

pub mod bench;
mod children;
pub mod cloud;
pub mod corrupt;
pub mod demo;
pub mod edge;
mod edge_input;
pub mod eval;
pub mod gateway;
pub mod import;
pub mod load;
pub mod plot;
pub mod predict;
pub mod speed;
pub mod train;
pub mod worker;

/// What every subcommand gets besides its own flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--quiet`: no progress bars or status lines.
    pub quiet: bool,
    /// The command line as typed, for manifests and model cards.
    pub argv: Vec<String>,
    /// `--backend`: the device the cloud-side models (and bench, eval, train, speed) run on.
    pub device: cema_model::Device,
    /// `--backend` as given (`cpu`, `cuda`, `cuda:N`), for manifests and reports.
    pub backend: String,
}

impl Context {
    /// The engine as reports name it: `burn 0.22 flex` on the CPU, else with the backend given.
    pub fn engine(&self) -> String {
        match self.backend.as_str() {
            "cpu" => "burn 0.22 flex".into(),
            other => format!("burn 0.22 {other}"),
        }
    }
}

/// `--dataset` and `--data-dir`: the clean dataset a command trains on, evaluates or corrupts
/// (shared so that train, eval, corrupt and bench name and resolve it the same way).
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Dataset: fashion-mnist (Debian's dataset-fashion-mnist), cifar10 or cifar100 (their
    /// "binary version" tarballs; cifar100 with its 100 fine labels), imagenet-photos (labelled
    /// ImageNet photographs, test split only), folder (your own labelled images in class
    /// sub-folders of --data-dir, test split only: eval, bench, edge, demo, load).
    #[arg(long, value_enum, default_value_t = DatasetArg::FashionMnist)]
    pub dataset: DatasetArg,
    /// Folder with the dataset's files. fashion-mnist: the four IDX files, .gz or not (default
    /// $CEMA_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist); cifar10 / cifar100: the
    /// extracted cifar-10-batches-bin / cifar-100-binary folder or the folder holding it
    /// (default data/); imagenet-photos: JPEG/PNG files named `…_<class index>` (default
    /// data/imagenet-photos); folder: class sub-folders named by class index or by the model
    /// card's class names (in DIR/test/ if there is one, else DIR), images resized to the
    /// model's input.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The values of `--dataset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetArg {
    FashionMnist,
    Cifar10,
    Cifar100,
    /// The labelled ImageNet photographs `scripts/setup.sh` installs (data/imagenet-photos), 16
    /// views each at 224 px, for the EfficientNet-Lite pair; a test split only.
    ImagenetPhotos,
    /// Labelled images of your own, in class sub-folders of --data-dir.
    Folder,
}

impl DataArgs {
    /// The named dataset; `--dataset folder` is none of them (a usage error here: the commands
    /// that take it ask [`DataArgs::load_for`]).
    pub fn dataset(&self) -> Result<Dataset, CliError> {
        Ok(match self.dataset {
            DatasetArg::FashionMnist => Dataset::FashionMnist,
            DatasetArg::Cifar10 => Dataset::Cifar10,
            DatasetArg::Cifar100 => Dataset::Cifar100,
            DatasetArg::ImagenetPhotos => Dataset::ImagenetPhotos,
            DatasetArg::Folder => {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--dataset folder: this command needs a dataset of fixed-size images \
                     (folder works with eval, bench, edge, demo and load)"
                )))
            }
        })
    }

    /// The dataset's name as reports and child processes take it.
    pub fn name(&self) -> &'static str {
        match self.dataset() {
            Ok(d) => d.name(),
            Err(_) => "folder",
        }
    }

    /// The folder the files are read from, after defaults and `$CEMA_FASHION_MNIST_DIR`.
    pub fn dir(&self) -> PathBuf {
        match self.dataset() {
            Ok(d) => d.resolve_dir(self.data_dir.as_deref()),
            Err(_) => self.data_dir.clone().unwrap_or_default(),
        }
    }

    /// The test split for `model`: a named dataset as [`DataArgs::load`]; a folder loaded at the
    /// model's input size and channels, its class folders mapped to the model's classes by the
    /// card's class names or by index.
    pub fn load_for(&self, split: Split, model: &cema_model::Model) -> Result<ImageSet, CliError> {
        Ok(self.load_named(split, model)?.0)
    }

    /// [`DataArgs::load_for`], and for a folder each image's path under it (`class/file`), which
    /// a corrupted copy in the ImageNet-C layout is matched by.
    pub fn load_named(
        &self,
        split: Split,
        model: &cema_model::Model,
    ) -> Result<(ImageSet, Option<Vec<PathBuf>>), CliError> {
        if self.dataset != DatasetArg::Folder {
            return Ok((self.load(split)?, None));
        }
        let root = self.data_dir.as_deref().ok_or_else(|| {
            CliError::usage(anyhow::anyhow!("--dataset folder needs --data-dir DIR"))
        })?;
        if split != Split::Test {
            return Err(CliError::usage(anyhow::anyhow!(
                "--dataset folder has a test split only"
            )));
        }
        let dir = if root.join("test").is_dir() {
            root.join("test")
        } else {
            root.to_path_buf()
        };
        let at = || format!("--data-dir {}", dir.display());
        let i = &model.card.input;
        let opts = cema_data::folder::FolderOptions {
            color: if i.channels == 1 {
                cema_data::folder::ColorMode::Luma
            } else {
                cema_data::folder::ColorMode::Rgb
            },
            size: cema_data::folder::SizePolicy::Resize {
                height: i.height as u32,
                width: i.width as u32,
            },
        };
        let mut loaded = cema_data::folder::load_class_folders(&dir, &opts).usage_err(at())?;
        let classes = model.card.architecture.num_classes();
        let map: Vec<u32> = loaded
            .classes
            .iter()
            .map(|name| {
                let by_name = model.card.classes.iter().position(|n| n == name);
                let by_index = name.parse::<usize>().ok().filter(|&c| c < classes);
                by_name.or(by_index).map(|c| c as u32).ok_or_else(|| {
                    CliError::usage(anyhow::anyhow!(
                        "{}: class folder `{name}` is neither a class index of the model \
                         (0..{}) nor one of its card's class names",
                        at(),
                        classes - 1
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        for l in &mut loaded.set.labels {
            *l = map[*l as usize];
        }
        let names = loaded
            .files
            .iter()
            .map(|f| f.strip_prefix(&dir).unwrap_or(f).to_path_buf())
            .collect();
        Ok((loaded.set, Some(names)))
    }

    /// The corrupted copy's folder: `given`, else `data/<dataset>-c` (where `cema corrupt`'s
    /// default for Fashion-MNIST writes, and a natural home for an extracted CIFAR-10-C).
    pub fn corrupted_dir(&self, given: Option<&Path>) -> PathBuf {
        given
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("data/{}-c", self.name())))
    }

    /// Where streams read their corruptions: `--corrupted` if given (then every corruption asked
    /// for must be there), else the default folder for what it holds.
    /// With `generate`, no folder: every corruption is generated.
    pub fn corrupted(&self, given: Option<&Path>, generate: bool) -> cema_bench::Corrupted {
        match (given, generate) {
            (_, true) => cema_bench::Corrupted::generated(),
            (Some(dir), false) => cema_bench::Corrupted::given(dir),
            // A folder of the user's images has no default corrupted copy: generated.
            (None, false) if self.dataset == DatasetArg::Folder => {
                cema_bench::Corrupted::generated()
            }
            (None, false) => cema_bench::Corrupted::default_at(self.corrupted_dir(None)),
        }
    }

    /// `model` can run on `set` (this dataset's images): the same geometry and as many classes.
    pub fn check_model(
        &self,
        model: &cema_model::Model,
        set: &ImageSet,
        flag: &str,
        path: &Path,
    ) -> Result<(), CliError> {
        let at = || format!("{flag} {}", path.display());
        model.check_geometry(set.geometry()).usage_err(at())?;
        // A folder's labels were mapped to this model's classes as it was loaded.
        let Ok(dataset) = self.dataset() else {
            return Ok(());
        };
        let (have, want) = (model.card.architecture.num_classes(), dataset.num_classes());
        if have != want {
            return Err(CliError::usage(anyhow::anyhow!(
                "{}: the model has {have} classes but --dataset {dataset} has {want}",
                at(),
            )));
        }
        Ok(())
    }

    /// One split; a missing or malformed file is a usage error naming both flags.
    pub fn load(&self, split: Split) -> Result<ImageSet, CliError> {
        let d = self.dataset()?;
        d.load(self.data_dir.as_deref(), split)
            .usage_err(format!("--dataset {d} --data-dir {}", self.dir().display()))
    }
}

/// Declares the [`Command`] enum (the subcommand list of `cema --help`), its names and dispatch.
macro_rules! commands {
    ($( $(#[$meta:meta])* $variant:ident($module:ident::Args) ),* $(,)?) => {
        /// The subcommands.
        #[derive(Debug, clap::Subcommand)]
        pub enum Command {
            $( $(#[$meta])* $variant($module::Args), )*
        }

        impl Command {
            /// The subcommand as typed on the command line.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Command::$variant(_) => stringify!($module), )*
                }
            }

            /// Runs the subcommand.
            pub fn run(self, ctx: &Context) -> Result<(), CliError> {
                match self {
                    $( Command::$variant(args) => $module::run(args, ctx), )*
                }
            }
        }
    };
}

commands! {
    Bench(bench::Args),
    Cloud(cloud::Args),
    Corrupt(corrupt::Args),
    Demo(demo::Args),
    Edge(edge::Args),
    Eval(eval::Args),
    Gateway(gateway::Args),
    Import(import::Args),
    Load(load::Args),
    Plot(plot::Args),
    Predict(predict::Args),
    Speed(speed::Args),
    Train(train::Args),
    Worker(worker::Args),
}

/// Writes `value` as pretty JSON to `path` atomically (temp file + rename). Failure to write is
/// an output error (exit 2) naming `flag` and the path.
pub fn write_json(path: &Path, value: &serde_json::Value, flag: &str) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value).run_err("serialising JSON")?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).usage_err(format!("{flag} {}", path.display()))
}

/// Writes a file through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // Temporary files are created 0600; results are meant to be read by others as well.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Checks early that files can be created in `dir` (creating it if needed), so a long run does
/// not fail at its end. The error names `flag` and the folder (exit 2).
pub fn ensure_writable_dir(dir: &Path, flag: &str) -> Result<(), CliError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let ctx = || format!("{flag}: cannot write to folder {}", dir.display());
    std::fs::create_dir_all(dir).usage_err(ctx())?;
    tempfile::NamedTempFile::new_in(dir).usage_err(ctx())?;
    Ok(())
}

/// Parent folder of a file path ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The command line as one shell-pasteable string.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A statistics momentum from the command line: in (0, 1], or a usage error naming the flag.
pub(crate) fn check_momentum(m: Option<f32>, flag: &str) -> Result<Option<f32>, CliError> {
    match m {
        Some(v) if !(v > 0.0 && v <= 1.0) => Err(CliError::usage(anyhow::anyhow!(
            "{flag} {v}: expected a momentum in (0, 1]"
        ))),
        _ => Ok(m),
    }
}

/// The model crate's view of a loaded set (cema-model reads no datasets itself).
pub(crate) fn labelled(set: &ImageSet) -> cema_model::Result<cema_model::Labelled<'_>> {
    cema_model::Labelled::new(&set.images, &set.labels, set.geometry())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn shell_quoting() {
        let argv = ["cema", "corrupt", "--out", "a b", "it's"].map(String::from);
        assert_eq!(shell_line(&argv), r"cema corrupt --out 'a b' 'it'\''s'");
    }
}
