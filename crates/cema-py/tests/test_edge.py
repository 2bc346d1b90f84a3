"""cema.Edge from Python against a real `cema cloud` and the `cema edge` CLI on the same frames.

Run by scripts/test.sh after `maturin develop` (the binary: target/debug/cema)."""

import gzip
import json
import pathlib
import subprocess

import numpy as np
import pytest

import cema

REPO = pathlib.Path(__file__).resolve().parents[3]
CEMA = REPO / "target" / "debug" / "cema"
MODEL = str(REPO / "models" / "edge.safetensors")
IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def frames(n):
    raw = gzip.open(IMAGES).read()[16:]
    return np.frombuffer(raw, np.uint8)[: n * 784].reshape(n, 28, 28, 1)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    store = tmp_path_factory.mktemp("cloud")
    p = subprocess.Popen(
        [str(CEMA), "-q", "cloud", "--listen", "127.0.0.1:0", "--store-dir", str(store),
         "--device", "py:tok-py", "--device", "cli:tok-cli", "--device", "rule:tok-rule"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    yield "http://" + json.loads(line)["listening"]
    p.terminate()
    p.wait(timeout=30)


def test_predictions_are_the_clis_on_the_same_frames(cloud):
    x = frames(256)
    cli = subprocess.run(
        [str(CEMA), "-q", "edge", "--cloud", cloud, "--device", "cli", "--token", "tok-cli",
         "--edge", MODEL, "--input", "-", "--batch", "64"],
        cwd=REPO, input=x.tobytes(), capture_output=True, check=True)
    lines = [json.loads(l) for l in cli.stdout.decode().splitlines()]
    assert len(lines) == 256
    edge = cema.Edge(MODEL, cloud=cloud, device="py", token="tok-py")
    assert edge.input_shape == (28, 28, 1)
    compared = 0
    for b in range(4):
        out = edge.predict(x[b * 64:(b + 1) * 64])
        mine = [l for l in lines[b * 64:(b + 1) * 64]]
        # Both start from the same model; until either installs a cloud update, they agree.
        if out["version"] == 0 and all(l["version"] == 0 for l in mine):
            assert out["predictions"] == [l["class"] for l in mine]
            assert sorted(out["selected"]) == [i for i, l in enumerate(mine) if l["selected"]]
            compared += 1
    assert compared >= 1
    c = edge.finish(drain_s=10)
    assert c["images"] == 256 and c["uploaded"] > 0 and c["network_errors"] == 0


def test_offline_and_bad_input():
    edge = cema.Edge(MODEL)
    out = edge.predict(np.ascontiguousarray(frames(8)))
    assert len(out["predictions"]) == 8 and out["version"] == 0
    assert edge.counters()["uploaded"] == 0
    with pytest.raises(ValueError, match="not whole frames"):
        edge.predict(np.zeros(100, np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        edge.predict(frames(8)[:, ::2])
    edge.finish(drain_s=0)
    with pytest.raises(RuntimeError, match="finished"):
        edge.predict(frames(8))
    with pytest.raises(ValueError, match="together"):
        cema.Edge(MODEL, cloud="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="nope"):
        cema.Edge(str(REPO / "nope.safetensors"))
    with pytest.raises(ValueError, match="cloud URL"):
        cema.Edge(MODEL, cloud="127.0.0.1:1", device="d", token="t")


def test_bench_results_load_as_python_objects(tmp_path):
    out = tmp_path / "bench"
    subprocess.run(
        [str(CEMA), "-q", "bench", "--methods", "source,bn_adapt", "--corruptions", "fog",
         "--limit", "128", "--out", str(out)], cwd=REPO, check=True)
    r = cema.load_results(out)
    assert r["streams"] == ["fog"]
    acc = r["methods"]["bn_adapt"]["corruptions"]["fog"]["accuracy"]
    assert 0.0 <= acc <= 1.0
    assert cema.load_results(out / "results.json") == r
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not the results of cema bench"):
        cema.load_results(tmp_path / "other.json")
    with pytest.raises(ValueError, match="nothing.json"):
        cema.load_results(tmp_path / "nothing.json")


def test_issue_25s_rule_uploads_its_quota_with_the_edges_statistics(cloud):
    x = frames(256)
    edge = cema.Edge(MODEL, cloud=cloud, device="rule", token="tok-rule",
                     select="uncertain", rate=0.25)
    for b in range(4):
        out = edge.predict(x[b * 64:(b + 1) * 64])
        assert len(out["selected"]) == 16
    c = edge.finish(drain_s=10)
    # Every upload, statistics section included, was taken by the cloud.
    assert (c["selected"], c["uploaded"], c["refused"]) == (64, 64, 0)


def test_a_byte_budget_bounds_what_an_offline_edge_selects():
    # 100 bytes per 784-byte image: 64 frames earn 6 400 bytes, eight images' worth.
    x = frames(256)
    edge = cema.Edge(MODEL, select="random", byte_budget=100.0)
    picked = 0
    for b in range(4):
        picked += len(edge.predict(x[b * 64:(b + 1) * 64])["selected"])
        assert picked * 784 <= 100 * 64 * (b + 1)
    assert picked == 256 * 100 // 784


def test_a_bad_selection_is_a_value_error_naming_it():
    for kwargs, says in [({"select": "uncertain"}, "rate"),
                         ({"select": "random", "rate": 0.0}, "rate 0"),
                         ({"select": "cema", "rate": 0.5}, "rate"),
                         ({"select": "sometimes", "rate": 0.5}, "sometimes"),
                         ({"select": "random", "byte_budget": 0.0}, "byte-budget 0"),
                         ({"select": "random", "rate": 0.5, "byte_budget": 40.0},
                          "one of the two")]:
        with pytest.raises(ValueError, match=says):
            cema.Edge(MODEL, **kwargs)


def test_bf16_products_predict_as_f32_does_or_are_refused():
    assert cema.precision() == "f32"
    with pytest.raises(ValueError, match="bf8"):
        cema.set_precision("bf8")
    x = np.ascontiguousarray(frames(256))
    want = cema.Edge(MODEL).predict(x)["predictions"]
    bf16 = "avx512_bf16" in pathlib.Path("/proc/cpuinfo").read_text()
    if not bf16:
        with pytest.raises(ValueError, match="AVX512_BF16"):
            cema.set_precision("bf16")
        assert cema.precision() == "f32"
        return
    cema.set_precision("bf16")
    try:
        assert cema.precision() == "bf16"
        got = cema.Edge(MODEL).predict(x)["predictions"]
    finally:
        cema.set_precision("f32")
    same = sum(a == b for a, b in zip(got, want))
    # Rounding moves a few borderline frames, never the model: 256 frames, at most 5 differ.
    assert same >= 251, f"{same} of 256 predictions agree"
