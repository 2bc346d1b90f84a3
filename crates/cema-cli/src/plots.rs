//! The benchmark's figures, as SVG (plotters' SVG backend: no font or image dependencies), drawn
//! from a `results.json` so that merged or old runs can be re-plotted (`cema plot`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::Value;

const COLORS: [RGBColor; 8] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

fn methods(results: &Value) -> Vec<String> {
    const ORDER: [&str; 8] = [
        "source",
        "bn_adapt",
        "tent",
        "eata",
        "cema",
        "foundation",
        "random_upload",
        "uncertain_upload",
    ];
    let present = results["methods"].as_object().cloned().unwrap_or_default();
    ORDER
        .iter()
        .filter(|m| present.contains_key(**m))
        .map(|m| m.to_string())
        .collect()
}

fn streams(results: &Value) -> Vec<String> {
    results["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes every figure the results support into `dir`; returns their paths.
pub fn write_all(results: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut out = Vec::new();
    let p = dir.join("accuracy_per_corruption.svg");
    per_corruption(results, &p)?;
    out.push(p);
    let p = dir.join("accuracy_vs_upload.svg");
    vs_upload(results, &p)?;
    out.push(p);
    if results["protocol"] == "continual" {
        let p = dir.join("online_accuracy.svg");
        online(results, &p)?;
        out.push(p);
    }
    Ok(out)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e}")
}

/// Grouped bars: accuracy per stream, one bar per method.
fn per_corruption(results: &Value, path: &Path) -> anyhow::Result<()> {
    let (ms, ss) = (methods(results), streams(results));
    let group = ms.len() * 9 + 14;
    // Room right of the last group for the legend (about 130 px), so it covers no bar.
    let spare = 130usize.div_ceil(group);
    let width = (120 + (ss.len() + spare) * group).max(640) as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Online accuracy per stream ({} protocol, {} images per stream)",
                results["protocol"].as_str().unwrap_or(""),
                results["images_per_stream"]
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(110)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(ss.len() + spare) as f64, 0f64..105f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("accuracy (%)")
        .draw()
        .map_err(err)?;
    let bar = 0.8 / ms.len().max(1) as f64;
    for (mi, m) in ms.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        let bars = ss.iter().enumerate().filter_map(|(si, s)| {
            let acc = results["methods"][m]["corruptions"][s]["accuracy"].as_f64()? * 100.0;
            let x0 = si as f64 + 0.1 + mi as f64 * bar;
            Some(Rectangle::new([(x0, 0.0), (x0 + bar, acc)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(m.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    // Stream names under their groups, rotated.
    let style = TextStyle::from(("sans-serif", 12).into_font())
        .transform(FontTransform::Rotate270)
        .color(&BLACK);
    for (si, s) in ss.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(si as f64 + 0.5, 0.0));
        root.draw_text(s, &style, (x - 6, y + 105)).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One point per method: mean accuracy against mean upload fraction.
fn vs_upload(results: &Value, path: &Path) -> anyhow::Result<()> {
    let ms = methods(results);
    let root = SVGBackend::new(path, (640, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let pts: Vec<(String, f64, f64)> = ms
        .iter()
        .filter_map(|m| {
            let r = &results["methods"][m];
            Some((
                m.clone(),
                r["upload_fraction"].as_f64()? * 100.0,
                r["avg_accuracy"].as_f64()? * 100.0,
            ))
        })
        .collect();
    let (lo, hi) = pts
        .iter()
        .fold((100f64, 0f64), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    let mut chart = ChartBuilder::on(&root)
        .caption("Mean accuracy vs samples uploaded", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-2f64..105f64, (lo - 3.0).max(0.0)..(hi + 3.0).min(100.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("uploaded / selected (% of the stream)")
        .y_desc("mean online accuracy (%)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    for (i, (m, x, y)) in pts.iter().enumerate() {
        let color = COLORS[ms.iter().position(|k| k == m).unwrap_or(i) % COLORS.len()];
        chart
            .draw_series(std::iter::once(Circle::new((*x, *y), 6, color.filled())))
            .map_err(err)?;
        chart
            // Alternate label offsets: methods often share a point (e.g. Tent and BN-adapt at 0 %).
            .draw_series(std::iter::once(Text::new(
                m.clone(),
                (*x + 1.5, *y + 0.3 + 0.9 * (i % 3) as f64),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Height of the continual plot's band of corruption names, in accuracy points above 100.
const BAND: f64 = 32.0;

/// Continual protocol: accuracy over a moving window of batches along the whole sequence.
fn online(results: &Value, path: &Path) -> anyhow::Result<()> {
    let (ms, ss) = (methods(results), streams(results));
    let batch = results["batch"].as_f64().unwrap_or(64.0);
    let window = 8usize;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let per_stream = results["images_per_stream"].as_f64().unwrap_or(0.0);
    let total = per_stream * ss.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Online accuracy over the continual stream ({window}-batch moving average)"),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        // Above 100 %: a band for the corruptions' names.
        .build_cartesian_2d(0f64..total.max(1.0), 0f64..(100.0 + BAND))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("images seen")
        .y_desc("accuracy (%)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v <= 100.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    // Each corruption's segment: a boundary line and its name in the band, rotated.
    let name_style = TextStyle::from(("sans-serif", 11).into_font())
        .transform(FontTransform::Rotate270)
        .color(&RGBColor(90, 90, 90));
    for (si, s) in ss.iter().enumerate() {
        let x = si as f64 * per_stream;
        if si > 0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, 0.0), (x, 100.0 + BAND)],
                    RGBColor(200, 200, 200).stroke_width(1),
                )))
                .map_err(err)?;
        }
        let (px, py) = chart.backend_coord(&(x + per_stream / 2.0, 101.0));
        root.draw_text(s, &name_style, (px - 6, py)).map_err(err)?;
    }
    for (mi, m) in ms.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        let mut correct: Vec<f64> = Vec::new();
        for s in &ss {
            if let Some(c) = results["methods"][m]["corruptions"][s]["batch_correct"].as_array() {
                correct.extend(c.iter().filter_map(Value::as_f64));
            }
        }
        let pts: Vec<(f64, f64)> = (window..=correct.len())
            .map(|end| {
                let sum: f64 = correct[end - window..end].iter().sum();
                (end as f64 * batch, 100.0 * sum / (window as f64 * batch))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(m.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
