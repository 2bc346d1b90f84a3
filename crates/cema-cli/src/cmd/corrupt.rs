//! `cema corrupt`: writes a corrupted copy of a dataset in the CIFAR-10-C layout, plus a contact
//! sheet PNG.
//!
//! Output folder (`--out`):
//! * `<corruption>.npy` — uint8 (5·N, H, W) for gray images, (5·N, H, W, C) otherwise: severities
//!   1…5 stacked, rows `[(s−1)·N, s·N)` are severity s (written by `cifar_c::write_corruption`);
//! * `labels.npy` — int64, the N labels repeated five times;
//! * `manifest.json` — how the folder was generated (command line, dataset, split, seed, table,
//!   date, crate version, sha256 and size of every file); used to decide whether an existing file
//!   can be kept on a rerun;
//! * `README.txt` — the same for humans, with the contact-sheet legend;
//! * `contact_sheet.png` (or `--sheet`) — one row per corruption in the order generated, columns
//!   clean, s1…s5, each cell the first `--samples` images.
//!
//! Reruns without `--force` keep a corruption file that already exists when its header has the
//! expected shape and the manifest says it was made with the same dataset, split, image count,
//! seed and table; a file that exists but does not match is an error (exit 2) naming it, so data
//! made with other settings is never overwritten silently.
//!
//! Everything is deterministic in (dataset, split, --limit, --seed, --table): each image draws
//! from its own seeded stream (see `cema_corrupt::image_seed`), whatever the thread count.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cema_corrupt::{Corruption, Table};
use cema_data::cifar_c::{self, SEVERITIES};
use cema_data::npy::{Dtype, NpyFile};
use cema_data::{ImageSet, Split};
use rayon::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{ensure_writable_dir, parent_dir, shell_line, utc_now, write_atomic, write_json};
use super::{Context, DataArgs};
use crate::exit::{CliError, ResultExt};
use crate::ui::Progress;

const MANIFEST: &str = "manifest.json";
const README: &str = "README.txt";

/// Write a corrupted copy of a dataset (CIFAR-10-C layout) and a contact sheet PNG.
///
/// Generates every requested corruption at all five severities for every image of the split,
/// writes <OUT>/<corruption>.npy, <OUT>/labels.npy, <OUT>/manifest.json, <OUT>/README.txt and the
/// contact sheet. Deterministic in (dataset, split, --limit, --seed, --table).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,

    /// Which split to corrupt.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub split: SplitArg,

    /// Output folder (created if missing). Default: data/<dataset>-c, where eval, bench and edge
    /// look for it (data/fashion-mnist-c for the default dataset).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Corruptions to generate, comma-separated or repeated: names such as gaussian_noise,fog
    /// (dashes allowed), or the groups `benchmark` (the 15 of ImageNet-C), `held-out` (speckle_noise,
    /// gaussian_blur, spatter, saturate) and `all` (the 19). Duplicates are dropped; the order
    /// given is the row order of the contact sheet.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "benchmark",
          value_parser = parse_selection)]
    pub corruptions: Vec<Selection>,

    /// Severities to generate. The CIFAR-10-C layout stacks all five severities in every file,
    /// so only the full range is accepted (`1-5`, `1,2,3,4,5` or `all`); to use a subset, pick
    /// the rows of that severity when reading (e.g. `cema eval`).
    #[arg(long, value_name = "RANGE", default_value = "1-5", value_parser = parse_severities)]
    pub severities: Severities,

    /// Seed of the corruption noise. Image i at severity s of corruption c always gets the same
    /// random stream for a given seed, whatever the thread count.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Severity table: `cifar` (CIFAR-10-C parameters, for small images), `imagenet`
    /// (ImageNet-C parameters, for 224-px images), or `auto`: cifar when the shorter image side
    /// is at most 64 px, imagenet otherwise.
    #[arg(long, value_enum, default_value_t = TableArg::Auto)]
    pub table: TableArg,

    /// Use only the first N images of the split (quick runs, tests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Images per contact-sheet cell (the first K images of the split).
    #[arg(long, value_name = "K", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub samples: u64,

    /// Where to write the contact sheet PNG [default: <OUT>/contact_sheet.png].
    #[arg(long, value_name = "PATH")]
    pub sheet: Option<PathBuf>,

    /// Also write a machine-readable summary of the run to FILE (JSON).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Regenerate corruption files that already exist. Without it, an existing file made with the
    /// same settings is kept (and reported as skipped), and one made with other settings is an
    /// error.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    Test,
    Train,
}

impl SplitArg {
    fn split(self) -> Split {
        match self {
            SplitArg::Test => Split::Test,
            SplitArg::Train => Split::Train,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SplitArg::Test => "test",
            SplitArg::Train => "train",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableArg {
    Auto,
    Cifar,
    Imagenet,
}

/// One item of `--corruptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    One(Corruption),
    Benchmark,
    HeldOut,
    All,
}

pub(crate) fn parse_selection(s: &str) -> Result<Selection, String> {
    match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "all" => return Ok(Selection::All),
        "benchmark" => return Ok(Selection::Benchmark),
        "held-out" | "heldout" | "extra" => return Ok(Selection::HeldOut),
        _ => {}
    }
    s.parse::<Corruption>().map(Selection::One).map_err(|_| {
        format!(
            "unknown corruption {s:?}; valid names: {}; or the groups benchmark, held-out, all",
            Corruption::ALL.map(Corruption::name).join(", ")
        )
    })
}

/// The ordered, duplicate-free list of corruptions a `--corruptions` value names.
pub(crate) fn expand(selection: &[Selection]) -> Vec<Corruption> {
    let mut out: Vec<Corruption> = Vec::new();
    for sel in selection {
        let items: &[Corruption] = match sel {
            Selection::One(c) => std::slice::from_ref(c),
            Selection::Benchmark => &cema_corrupt::BENCHMARK,
            Selection::HeldOut => &cema_corrupt::HELD_OUT,
            Selection::All => &Corruption::ALL,
        };
        for c in items {
            if !out.contains(c) {
                out.push(*c);
            }
        }
    }
    out
}

/// `--severities`: always 1..=5 once parsed (subsets are rejected, see the flag's doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Severities(Vec<u8>);

fn parse_severities(s: &str) -> Result<Severities, String> {
    let s = s.trim();
    let mut set = Vec::new();
    if s.eq_ignore_ascii_case("all") {
        set.extend(1..=SEVERITIES);
    } else {
        for part in s.split(',').map(str::trim) {
            let bad = || format!("{part:?} is not a severity or range of severities (1-5)");
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u8 = lo.parse().map_err(|_| bad())?;
            let hi: u8 = hi.parse().map_err(|_| bad())?;
            if lo < 1 || hi > SEVERITIES || lo > hi {
                return Err(bad());
            }
            set.extend(lo..=hi);
        }
    }
    set.sort_unstable();
    set.dedup();
    if set != (1..=SEVERITIES).collect::<Vec<_>>() {
        return Err(format!(
            "{s:?} selects severities {set:?}, but the CIFAR-10-C layout stacks all five \
             severities in every file, so only 1-5 is supported; read a single severity's rows \
             when evaluating instead"
        ));
    }
    Ok(Severities(set))
}

/// The settings that must match for an existing file to be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    dataset: String,
    split: String,
    images: usize,
    seed: u64,
    table: String,
}

impl Settings {
    fn to_json(&self) -> Value {
        json!({
            "dataset": self.dataset,
            "split": self.split,
            "images_per_severity": self.images,
            "seed": self.seed,
            "table": self.table,
        })
    }

    fn from_manifest(m: &Value) -> Option<Settings> {
        Some(Settings {
            dataset: m.get("dataset")?.as_str()?.to_string(),
            split: m.get("split")?.as_str()?.to_string(),
            images: usize::try_from(m.get("images_per_severity")?.as_u64()?).ok()?,
            seed: m.get("seed")?.as_u64()?,
            table: m.get("table")?.as_str()?.to_string(),
        })
    }
}

/// Size and sha256 of a file.
fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

/// Why an existing corruption file cannot be kept, or None when it can.
fn existing_mismatch(
    path: &Path,
    expected_shape: &[usize],
    manifest: Option<&Settings>,
    wanted: &Settings,
) -> Option<String> {
    let file = match NpyFile::open(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("it cannot be read ({e})")),
    };
    if file.dtype() != Dtype::U8 || file.shape() != expected_shape {
        return Some(format!(
            "it holds {} {:?} where this run makes uint8 {:?}",
            file.dtype().descr(),
            file.shape(),
            expected_shape
        ));
    }
    match manifest {
        Some(m) if m != wanted => Some(format!(
            "{MANIFEST} says it was made with {} where this run uses {}",
            m.to_json(),
            wanted.to_json()
        )),
        _ => None,
    }
}

pub fn run(args: Args, ctx: &Context) -> Result<(), CliError> {
    let started = Instant::now();
    let corruptions = expand(&args.corruptions);
    let severities = args.severities.0.clone();
    let out = args.data.corrupted_dir(args.out.as_deref());
    let sheet_path = args
        .sheet
        .clone()
        .unwrap_or_else(|| out.join("contact_sheet.png"));

    // Inputs first: nothing is created before the dataset is known to load.
    let set = args.data.load(args.split.split())?;
    let data_dir = args.data.dir();
    let set = match args.limit {
        Some(n) => set.take(usize::try_from(n).unwrap_or(usize::MAX)),
        None => set,
    };
    let n = set.len();
    let table = match args.table {
        TableArg::Auto => Table::for_size(set.height, set.width),
        TableArg::Cifar => Table::Cifar,
        TableArg::Imagenet => Table::ImageNet,
    };
    let settings = Settings {
        dataset: args.data.name().to_string(),
        split: args.split.name().to_string(),
        images: n,
        seed: args.seed,
        table: table.name().to_string(),
    };

    // Outputs: fail now, not after minutes of work.
    ensure_writable_dir(&out, "--out")?;
    ensure_writable_dir(parent_dir(&sheet_path), "--sheet")?;
    if let Some(json) = &args.json {
        ensure_writable_dir(parent_dir(json), "--json")?;
    }

    let old_manifest: Option<Value> = fs::read(out.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let old_settings = old_manifest.as_ref().and_then(Settings::from_manifest);

    let mut expected_shape = vec![n * SEVERITIES as usize, set.height, set.width];
    if set.channels != 1 {
        expected_shape.push(set.channels);
    }
    let mut todo = Vec::new();
    let mut skipped = Vec::new();
    for &c in &corruptions {
        let path = out.join(format!("{}.npy", c.name()));
        if args.force || !path.exists() {
            todo.push(c);
            continue;
        }
        match existing_mismatch(&path, &expected_shape, old_settings.as_ref(), &settings) {
            None => skipped.push(c),
            Some(why) => {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--out {}: {} already exists but {why}; pass --force to overwrite it, or \
                     choose another --out",
                    out.display(),
                    path.display()
                )))
            }
        }
    }

    let total = (n * SEVERITIES as usize * todo.len()) as u64;
    let progress = Progress::new(total, "img", ctx.quiet);
    progress.note(format!(
        "cema corrupt: {} {} images ({}x{}x{}), {} corruption(s) x 5 severities, table {}, seed {} -> {}",
        settings.dataset,
        n,
        set.height,
        set.width,
        set.channels,
        corruptions.len(),
        table.name(),
        args.seed,
        out.display()
    ));
    let confirmed = if old_settings.is_some() {
        format!("same shape and settings per {MANIFEST}")
    } else {
        format!("same shape; no {MANIFEST} to confirm the seed and table")
    };
    for c in &skipped {
        progress.note(format!(
            "skipping {c}: {} already exists ({confirmed}); --force regenerates it",
            out.join(format!("{c}.npy")).display()
        ));
    }

    // The contact sheet first: cheap, and something to look at while the rest runs.
    let samples = usize::try_from(args.samples).unwrap_or(usize::MAX).min(n);
    let sheet = cema_corrupt::contact_sheet(&set, &corruptions, samples, args.seed, Some(table))
        .run_err("building the contact sheet")?;
    cema_corrupt::save_contact_sheet(&sheet, &sheet_path)
        .usage_err(format!("--sheet: cannot write {}", sheet_path.display()))?;

    let gen_started = Instant::now();
    let mut written = Vec::new();
    for &c in &todo {
        let t0 = Instant::now();
        let mut per_severity = Vec::with_capacity(SEVERITIES as usize);
        for severity in 1..=SEVERITIES {
            progress.set_message(format!("{c} s{severity}"));
            let on_done = |k: usize| progress.inc(k as u64);
            let corrupted =
                cema_corrupt::corrupt_set_with(&set, c, severity, Some(table), args.seed, &on_done)
                    .run_err(format!("corrupting with {c} at severity {severity}"))?;
            per_severity.push(corrupted);
        }
        let per_severity: [ImageSet; 5] = per_severity
            .try_into()
            .map_err(|_| CliError::failed(anyhow::anyhow!("expected five severities")))?;
        cifar_c::write_corruption(&out, c.name(), &per_severity)
            .usage_err(format!("--out {}: cannot write {c}", out.display()))?;
        let secs = t0.elapsed().as_secs_f64();
        progress.note(format!(
            "{c}: {} images in {secs:.1} s",
            n * SEVERITIES as usize
        ));
        written.push(c);
    }
    let gen_secs = gen_started.elapsed().as_secs_f64();
    cifar_c::write_labels(&out, &set.labels)
        .usage_err(format!("--out {}: cannot write labels", out.display()))?;
    progress.finish();

    // Describe every file: this run's, and those kept from an earlier run with the same settings.
    let mut files: BTreeMap<String, Value> = BTreeMap::new();
    if old_settings.as_ref() == Some(&settings) {
        if let Some(old) = old_manifest
            .as_ref()
            .and_then(|m| m.get("corruptions"))
            .and_then(Value::as_object)
        {
            for (name, entry) in old {
                if out.join(format!("{name}.npy")).is_file() {
                    files.insert(name.clone(), entry.clone());
                }
            }
        }
    }
    let describe = |path: &Path, status: &'static str| -> Result<Value, CliError> {
        let (bytes, sha256) =
            file_digest(path).usage_err(format!("--out: cannot read back {}", path.display()))?;
        Ok(json!({
            "path": path.display().to_string(),
            "status": status,
            "bytes": bytes,
            "sha256": sha256,
        }))
    };
    // Hash the corruption files in parallel: ~40 MB each for the Fashion-MNIST test split.
    let entries: Vec<Result<Value, CliError>> = corruptions
        .par_iter()
        .map(|&c| {
            let status = if written.contains(&c) {
                "written"
            } else {
                "skipped"
            };
            describe(&out.join(format!("{c}.npy")), status)
        })
        .collect();
    let mut run_files = Vec::new();
    for (&c, entry) in corruptions.iter().zip(entries) {
        let entry = entry?;
        files.insert(
            c.name().to_string(),
            json!({"file": format!("{c}.npy"), "bytes": entry["bytes"], "sha256": entry["sha256"]}),
        );
        run_files.push(entry);
    }
    let labels_entry = describe(&out.join(cifar_c::LABELS_FILE), "written")?;
    run_files.push(labels_entry.clone());
    run_files.push(describe(&sheet_path, "written")?);

    if let Ok(entries) = fs::read_dir(&out) {
        let mut stray: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| Some(f.strip_suffix(".npy")?.to_string()))
            .filter(|stem| stem != "labels" && !stem.starts_with('.') && !files.contains_key(stem))
            .collect();
        stray.sort();
        if !stray.is_empty() {
            tracing::warn!(
                "{} also holds {} made with other or unknown settings; they are not in {MANIFEST}",
                out.display(),
                stray.join(".npy, ") + ".npy"
            );
        }
    }

    let legend: Vec<&str> = corruptions.iter().map(|c| c.name()).collect();
    let columns = ["clean", "s1", "s2", "s3", "s4", "s5"];
    let command_line = shell_line(&ctx.argv);
    let date = utc_now();
    let version = env!("CARGO_PKG_VERSION");

    let mut manifest = settings.to_json();
    let m = manifest.as_object_mut().expect("object");
    m.insert("generator".into(), json!("cema corrupt"));
    m.insert("version".into(), json!(version));
    m.insert("date".into(), json!(date));
    m.insert("command_line".into(), json!(command_line));
    m.insert("source_dir".into(), json!(data_dir.display().to_string()));
    m.insert(
        "image_shape".into(),
        json!([set.height, set.width, set.channels]),
    );
    m.insert("severities".into(), json!(severities));
    m.insert(
        "layout".into(),
        json!(
            "CIFAR-10-C: <corruption>.npy uint8 (5*N, H, W[, C]), rows [(s-1)*N, s*N) are \
               severity s; labels.npy int64, the N labels repeated 5 times"
        ),
    );
    m.insert("corruptions".into(), json!(files));
    m.insert(
        "labels".into(),
        json!({"file": cifar_c::LABELS_FILE, "bytes": labels_entry["bytes"], "sha256": labels_entry["sha256"]}),
    );
    m.insert(
        "contact_sheet".into(),
        json!({"path": sheet_path.display().to_string(), "rows": legend, "columns": columns, "samples_per_cell": samples}),
    );
    write_json(&out.join(MANIFEST), &manifest, "--out")?;

    let readme = readme_text(
        &settings,
        &command_line,
        &date,
        version,
        &data_dir,
        &sheet_path,
        &legend,
        samples,
        &files,
    );
    write_atomic(&out.join(README), readme.as_bytes())
        .usage_err(format!("--out {}: cannot write {README}", out.display()))?;

    let generated = (n * SEVERITIES as usize * written.len()) as u64;
    let rate = if gen_secs > 0.0 {
        generated as f64 / gen_secs
    } else {
        0.0
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(json_path) = &args.json {
        let summary = json!({
            "command": "corrupt",
            "version": version,
            "date": date,
            "command_line": command_line,
            "dataset": settings.dataset,
            "split": settings.split,
            "data_dir": data_dir.display().to_string(),
            "out_dir": out.display().to_string(),
            "corruptions": legend,
            "written": written.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "skipped": skipped.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "severities": severities,
            "images": n,
            "image_shape": [set.height, set.width, set.channels],
            "images_generated": generated,
            "seed": args.seed,
            "table": table.name(),
            "threads": rayon::current_num_threads(),
            "seconds": seconds,
            "generation_seconds": gen_secs,
            "images_per_second": rate,
            "sheet": sheet_path.display().to_string(),
            "files": run_files,
        });
        write_json(json_path, &summary, "--json")?;
    }

    println!(
        "cema corrupt: {} corruption(s) x 5 severities x {n} images -> {} ({} written, {} kept) \
         in {seconds:.1} s ({rate:.0} images/s); sheet {}",
        corruptions.len(),
        out.display(),
        written.len(),
        skipped.len(),
        sheet_path.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn readme_text(
    s: &Settings,
    command_line: &str,
    date: &str,
    version: &str,
    data_dir: &Path,
    sheet: &Path,
    legend: &[&str],
    samples: usize,
    files: &BTreeMap<String, Value>,
) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "Corrupted {} ({} split) in the CIFAR-10-C layout, made by cema corrupt {version}.\n\n",
        s.dataset, s.split
    ));
    t.push_str(&format!("command line: {command_line}\n"));
    t.push_str(&format!("date (UTC):   {date}\n"));
    t.push_str(&format!("source:       {}\n", data_dir.display()));
    t.push_str(&format!("images:       {} per severity\n", s.images));
    t.push_str(&format!("seed:         {}\n", s.seed));
    t.push_str(&format!("table:        {}\n\n", s.table));
    t.push_str(
        "Layout: <corruption>.npy is uint8 (5*N, H, W) for gray images, (5*N, H, W, C) otherwise;\n\
         rows [(s-1)*N, s*N) hold severity s (1..5). labels.npy is int64: the N labels repeated\n\
         five times. manifest.json holds the same facts plus sha256 sums.\n\n",
    );
    t.push_str(&format!("Files ({}):\n", files.len()));
    for name in files.keys() {
        t.push_str(&format!("  {name}.npy\n"));
    }
    t.push_str(&format!(
        "\nContact sheet: {}\n  columns: clean, s1, s2, s3, s4, s5; each cell shows the first {samples} \
         image(s)\n  rows, top to bottom:\n",
        sheet.display()
    ));
    for (i, name) in legend.iter().enumerate() {
        t.push_str(&format!("  {:>2}. {name}\n", i + 1));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_expand_in_order_without_duplicates() {
        let sel = ["fog", "held-out", "Gaussian-Noise", "fog"].map(|s| parse_selection(s).unwrap());
        let names: Vec<_> = expand(&sel).into_iter().map(Corruption::name).collect();
        assert_eq!(
            names,
            [
                "fog",
                "speckle_noise",
                "gaussian_blur",
                "spatter",
                "saturate",
                "gaussian_noise"
            ]
        );
        assert_eq!(expand(&[Selection::All]).len(), 19);
        assert_eq!(expand(&[Selection::Benchmark]), cema_corrupt::BENCHMARK);
        let err = parse_selection("fogg").unwrap_err();
        assert!(err.contains("valid names: gaussian_noise") && err.contains("saturate"));
    }

    #[test]
    fn only_full_severity_range() {
        for ok in ["1-5", "all", "1,2,3,4,5", "5,1-4", " 1 - 5 "] {
            assert_eq!(parse_severities(ok).unwrap().0, [1, 2, 3, 4, 5], "{ok}");
        }
        for bad in ["1-3", "3", "0-5", "1-6", "x", "5-1", ""] {
            assert!(parse_severities(bad).is_err(), "{bad}");
        }
    }
}
