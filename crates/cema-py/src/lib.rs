//! `import cema`: the edge from Python (PyO3), over the same `cema_edge::Edge` the CLI and Rust
//! programs use, so predictions are the same bytes in, the same classes out.
//!
//! ```python
//! import cema, numpy as np
//! edge = cema.Edge("models/edge.safetensors", cloud="http://127.0.0.1:7878",
//!                  device="cam-1", token="secret")       # or cema.Edge(path) offline
//! out = edge.predict(frames)          # frames: uint8, N×H×W×C (any C-contiguous buffer)
//! out["predictions"], out["selected"], out["version"]
//! edge.counters(); edge.finish()
//! ```

use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// An edge device: forward-only predictions, background uploads of the frames its filters
/// select, and the cloud's norm states installed between calls.
#[pyclass(unsendable, module = "cema")]
struct Edge {
    /// Boxed: the edge holds 64-byte-aligned parts, and Python allocates objects 16-aligned.
    inner: Option<Box<cema_edge::Edge>>,
    shape: (usize, usize, usize),
}

fn counters_dict<'py>(
    py: Python<'py>,
    c: &cema_edge::EdgeCounters,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("images", c.images)?;
    d.set_item("selected", c.selected)?;
    d.set_item("uploaded", c.uploaded)?;
    d.set_item("dropped", c.dropped)?;
    d.set_item("refused", c.refused)?;
    d.set_item("bytes_up", c.bytes_up)?;
    d.set_item("bytes_down", c.bytes_down)?;
    d.set_item("updates_applied", c.updates_applied)?;
    d.set_item("updates_rejected", c.updates_rejected)?;
    d.set_item("network_errors", c.network_errors)?;
    d.set_item("version", c.version)?;
    Ok(d)
}

fn edge_error(e: cema_edge::EdgeError) -> PyErr {
    if e.is_usage() {
        PyValueError::new_err(e.to_string())
    } else {
        PyRuntimeError::new_err(e.to_string())
    }
}

impl Edge {
    fn inner(&mut self) -> PyResult<&mut cema_edge::Edge> {
        self.inner
            .as_deref_mut()
            .ok_or_else(|| PyRuntimeError::new_err("this edge has finished"))
    }
}

#[pymethods]
impl Edge {
    /// `model`: a cema checkpoint with its model card beside it. With `cloud`, `device` and
    /// `token`, connected; without, offline (predictions and selection only). `select`: how
    /// uploads are picked, "cema" (the entropy filters), "random" or "uncertain" (issue #25's
    /// rule, the edge's statistics sent along), the last two at `rate` of every batch, drawn
    /// from `seed` as `cema edge --seed` does; or any of the three within `byte_budget` bytes
    /// per image seen (as `cema edge --byte-budget`).
    #[new]
    #[pyo3(signature = (model, cloud=None, device=None, token=None, uplink_kbps=None, select="cema", rate=None, seed=0, byte_budget=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &str,
        cloud: Option<&str>,
        device: Option<&str>,
        token: Option<&str>,
        uplink_kbps: Option<f64>,
        select: &str,
        rate: Option<f64>,
        seed: u64,
        byte_budget: Option<f64>,
    ) -> PyResult<Self> {
        let rule = cema_adapt::UploadRule::from_choice(select, rate, byte_budget, "")
            .map_err(PyValueError::new_err)?;
        let (config, selector) = rule.configure(
            cema_adapt::EdgeConfig::default(),
            cema_adapt::UploadRule::seed_for(seed),
        );
        let m = cema_model::Model::load(model.as_ref(), &cema_model::cpu())
            .map_err(|e| PyValueError::new_err(format!("{model}: {e}")))?;
        let i = &m.card.input;
        let shape = (i.height, i.width, i.channels);
        let link = match (cloud, device, token) {
            (Some(c), Some(d), Some(t)) => Some(cema_edge::CloudLink {
                uplink_kbps,
                ..cema_edge::CloudLink::new(c, d, t)
            }),
            (None, None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "give cloud, device and token together (or none, offline)",
                ))
            }
        };
        let mut edge = cema_edge::Edge::new(m, config, link.as_ref()).map_err(edge_error)?;
        edge.set_selector(selector);
        Ok(Edge {
            inner: Some(Box::new(edge)),
            shape,
        })
    }

    /// The input every frame must have: (height, width, channels), u8.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// The norm-state version predictions are made with now.
    #[getter]
    fn version(&mut self) -> PyResult<u64> {
        Ok(self.inner()?.version())
    }

    /// Predicts a batch of frames: a C-contiguous uint8 buffer of N×H×W×C bytes (a numpy array
    /// of shape (N, H, W, C) or (H, W, C)). Returns {"predictions", "selected", "version"}.
    fn predict<'py>(
        &mut self,
        py: Python<'py>,
        frames: PyBuffer<u8>,
    ) -> PyResult<Bound<'py, PyDict>> {
        if !frames.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "frames must be C-contiguous uint8 (numpy: np.ascontiguousarray(frames, np.uint8))",
            ));
        }
        let bytes = frames.to_vec(py)?;
        let out = self.inner()?.predict(&bytes).map_err(edge_error)?;
        let d = PyDict::new(py);
        d.set_item("predictions", out.predictions)?;
        d.set_item("selected", out.selected)?;
        d.set_item("version", out.version)?;
        Ok(d)
    }

    /// Running totals: images, selected, uploaded, dropped, refused, bytes, updates, version.
    fn counters<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner()?.counters();
        counters_dict(py, &c)
    }

    /// Waits up to `drain_s` seconds for queued uploads, installs the last updates, stops the
    /// link; the final counters. The edge cannot predict afterwards.
    #[pyo3(signature = (drain_s=10.0))]
    fn finish<'py>(&mut self, py: Python<'py>, drain_s: f64) -> PyResult<Bound<'py, PyDict>> {
        let edge = self
            .inner
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this edge has finished"))?;
        let c = edge
            .finish(Duration::from_secs_f64(drain_s.max(0.0)))
            .map_err(edge_error)?;
        counters_dict(py, &c)
    }
}

/// A `cema bench` run's results (its `results.json`, or the `--out` folder holding it) as Python
/// objects: {"protocol", "streams", "methods": {method: {"avg_accuracy", …, "corruptions": {stream:
/// {"accuracy", "upload_fraction", …}}}}, …}. A file that is not one is a ValueError naming it.
#[pyfunction]
fn load_results<'py>(py: Python<'py>, path: std::path::PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let file = if path.is_dir() {
        path.join("results.json")
    } else {
        path
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| PyValueError::new_err(format!("{}: {e}", file.display())))?;
    let results = py.import("json")?.call_method1("loads", (text,))?;
    let ok = ["protocol", "streams", "methods"]
        .iter()
        .all(|k| results.contains(*k).unwrap_or(false));
    if !ok {
        return Err(PyValueError::new_err(format!(
            "{}: not the results of cema bench (no protocol, streams and methods)",
            file.display()
        )));
    }
    Ok(results)
}

/// Sets this process's matrix-product precision, "f32" or "bf16" (as `cema --precision`: bf16
/// needs a CPU with AVX512_BF16, else a ValueError and the process stays f32).
#[pyfunction]
fn set_precision(precision: &str) -> PyResult<()> {
    let p: cema_model::Precision = precision.parse().map_err(PyValueError::new_err)?;
    cema_model::set_precision(p).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The matrix-product precision in force ("f32" unless [`set_precision`] said otherwise).
#[pyfunction]
fn precision() -> String {
    cema_model::precision().to_string()
}

#[pymodule]
fn cema(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Edge>()?;
    m.add_function(wrap_pyfunction!(load_results, m)?)?;
    m.add_function(wrap_pyfunction!(set_precision, m)?)?;
    m.add_function(wrap_pyfunction!(precision, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
