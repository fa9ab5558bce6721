"""``hetrix bench`` and the benchmark suite's helpers: correctness only, no timing assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from hetrix.bench import BenchConfig, compare_outputs, report, run_benchmark
from hetrix.bench import inputs as inputs_mod
from hetrix.cli.bench import register
from hetrix.errors import InvalidArgumentError

pytest.importorskip("onnxruntime")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _tiny_model(path: Path) -> Path:
    """``y = relu(x @ w) + 1`` with ``x: [batch, 8]``."""
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Add", ["r", "one"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.asarray(1.0, dtype=np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return _tiny_model(tmp_path / "tiny.onnx")


def _config(model: Path, **overrides: object) -> BenchConfig:
    settings: dict = dict(competitors=["onnxruntime"], batch=3, warmup=1, repeat=2, memory=False)
    settings.update(overrides)
    return BenchConfig(str(model), **settings)


def test_runner_times_both_and_outputs_agree(tiny: Path) -> None:
    steps: list[str] = []
    result = run_benchmark(_config(tiny), steps.append)
    assert [r.name for r in result.runtimes] == ["hetrix", "onnxruntime"]
    assert result.batch == 3
    assert result.inputs == {"x": {"shape": [3, 8], "dtype": "float32"}}
    for runtime in result.runtimes:
        assert not runtime.error
        assert runtime.latency is not None and runtime.latency.n == 2
        assert runtime.latency.p10_ms <= runtime.latency.median_ms <= runtime.latency.p90_ms
        assert runtime.throughput and runtime.throughput > 0
        assert runtime.load_s is not None and runtime.memory is None
    assert set(result.ratios()) == {"onnxruntime"}
    [agreement] = result.agreement
    assert agreement.agree and agreement.max_abs < 1e-5
    assert len(steps) == 2 * (1 + 1 + 2)  # per runtime: load, warm-up, timed runs


def test_memory_is_measured_in_fresh_processes(tiny: Path) -> None:
    result = run_benchmark(_config(tiny, memory=True, repeat=1, warmup=0))
    for runtime in result.runtimes:
        assert runtime.memory is not None, runtime.memory_error
        assert runtime.memory.baseline_mb > 0
        assert runtime.memory.import_mb > 0  # the runtime's package, measured in the child
        assert runtime.memory.peak_growth_mb >= runtime.memory.load_growth_mb - 1.0


def test_memory_child_failure_is_reported(tmp_path: Path) -> None:
    from hetrix.bench.memory import measure_memory

    with pytest.raises(RuntimeError, match="memory process of hetrix failed.*absent.onnx"):
        measure_memory("hetrix", str(tmp_path / "absent.onnx"), {}, runs=1)


def test_json_document_keys(tiny: Path, tmp_path: Path) -> None:
    result = run_benchmark(_config(tiny))
    document = report.write_json(result, tmp_path / "bench.json")
    loaded = json.loads((tmp_path / "bench.json").read_text())
    assert loaded == document
    assert {"model", "date", "batch", "inputs", "config", "machine", "versions", "runtimes",
            "ratios", "agreement"} <= set(loaded)
    assert {"cpu", "logical_cores", "platform", "python"} <= set(loaded["machine"])
    assert {"hetrix", "numpy", "onnx", "onnxruntime"} <= set(loaded["versions"])
    hetrix = loaded["runtimes"][0]
    assert hetrix["name"] == "hetrix"
    assert {"median_ms", "p10_ms", "p90_ms", "q1_ms", "q3_ms"} <= set(hetrix["latency"])
    assert {"throughput", "load_s", "memory", "threads", "error"} <= set(hetrix)
    assert set(loaded["ratios"]) == {"hetrix/onnxruntime"}
    assert loaded["agreement"][0]["agree"] is True


def test_cli_bench_writes_json(tiny: Path, tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test application."""

    register(app)
    target = tmp_path / "out.json"
    outcome = CliRunner().invoke(app, ["bench", str(tiny), "--vs", "onnxruntime", "--batch", "2",
                                       "--warmup", "1", "--repeat", "2", "--no-memory",
                                       "--gap", "0", "--json", str(target)])
    assert outcome.exit_code == 0, outcome.output
    assert "Hetrix / onnxruntime" in outcome.output and "agree" in outcome.output
    loaded = json.loads(target.read_text())
    assert loaded["batch"] == 2 and loaded["config"]["competitors"] == ["onnxruntime"]
    assert loaded["config"]["gap_s"] == 0.0  # back to back, as asked


def test_block_turns_time_back_to_back_runs(tiny: Path, monkeypatch) -> None:
    """--block N: per runtime, turns of one untimed settle run then N timed runs in a row, the
    turns alternating between runtimes; a pause only before each turn."""
    from hetrix.bench import runner

    calls: list[str] = []
    sleeps: list[float] = []
    original = runner._timed_run
    monkeypatch.setattr(runner.time, "sleep", sleeps.append)

    def counting(fn, feeds):
        calls.append("run")
        return original(fn, feeds)

    monkeypatch.setattr(runner, "_timed_run", counting)
    steps: list[str] = []
    config = _config(tiny, warmup=1, repeat=5, block=2, gap_s=0.05)
    result = run_benchmark(config, steps.append)
    for runtime in result.runtimes:
        assert runtime.latency is not None and runtime.latency.n == 5
    # per runtime: 1 warm-up, then turns (settle + 2), (settle + 2), (settle + 1)
    assert len(calls) == 2 * (1 + 3 + 3 + 2)
    assert sleeps == [0.05] * (2 * 4)  # one pause per turn and runtime
    assert len(steps) == runner.count_steps(config)
    labels = [s for s in steps if "hetrix:" in s][1:]
    assert labels == ["hetrix: warm-up 1", "hetrix: settle run", "hetrix: run 1",
                      "hetrix: run 2", "hetrix: settle run", "hetrix: run 3", "hetrix: run 4",
                      "hetrix: settle run", "hetrix: run 5"]


def test_cli_bench_user_errors(tiny: Path, tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test application."""

    register(app)
    runner = CliRunner()
    missing = runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2
    unknown = runner.invoke(app, ["bench", str(tiny), "--vs", "tensorflow"])
    assert unknown.exit_code == 2
    negative_gap = runner.invoke(app, ["bench", str(tiny), "--gap", "-1"])
    assert negative_gap.exit_code == 2 and "gap" in negative_gap.output


def test_plot_writes_a_png(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = run_benchmark(_config(tiny))
    report.write_plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feeds_resolve_symbolic_dims() -> None:
    specs = [inputs_mod.InputSpec("input_ids", np.dtype(np.int64), ("batch", "sequence")),
             inputs_mod.InputSpec("attention_mask", np.dtype(np.int64), ("batch", "sequence")),
             inputs_mod.InputSpec("extra", np.dtype(np.float32), ("n", 3, "other"))]
    feeds = inputs_mod.make_feeds(specs, batch=4, dims={"other": 5}, seed=1)
    assert feeds["input_ids"].shape == (4, 128) and feeds["input_ids"].max() < 10
    assert (feeds["attention_mask"] == 1).all()
    assert feeds["extra"].shape == (4, 3, 5) and feeds["extra"].dtype == np.float32
    again = inputs_mod.make_feeds(specs, batch=4, dims={"other": 5}, seed=1)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert inputs_mod.effective_batch(specs, feeds) == 4


def test_compare_outputs_flags_differences() -> None:
    a = np.ones((2, 3), dtype=np.float32)
    assert compare_outputs("x", [a], [a.copy()]).agree
    off = compare_outputs("x", [a], [a + 0.1])
    assert not off.agree and off.max_abs == pytest.approx(0.1, rel=1e-5)
    shape = compare_outputs("x", [a], [a[:1]])
    assert not shape.agree and "shape" in shape.outputs[0].problem
    assert not compare_outputs("x", [a], [a, a]).agree


def test_unknown_competitor_is_a_user_error(tiny: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown runtime"):
        run_benchmark(_config(tiny, competitors=["tensorflow"]))


def test_suite_models_small_ops_and_batch_blocker(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import suite_models
    finally:
        sys.path.remove(str(BENCHMARKS))
    model = suite_models.make_small_ops_model(blocks=3)
    path = tmp_path / "small.onnx"
    onnx.save(model, str(path))
    result = run_benchmark(_config(path))
    assert result.agreement[0].agree
    assert suite_models.batch_blocker(model) is None
    pinned = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.asarray([1, 4], dtype=np.int64), "shape")])
    assert "Reshape" in (suite_models.batch_blocker(helper.make_model(pinned)) or "")


def test_compare_outputs_measures_the_difference_against_the_output_scale() -> None:
    ref = np.array([[4.0, -2.0, 1.0]], dtype=np.float32)
    ours = ref + np.array([[0.02, 0.0, -0.01]], dtype=np.float32)
    diff = compare_outputs("x", [ours, ref], [ref, 10 * ref])
    assert diff.outputs[0].scale == 4.0 and diff.outputs[1].scale == 40.0
    # the worst output: 0.02 of 4 (the second differs by 36 of 40)
    assert diff.max_abs_of_scale == pytest.approx(0.9, rel=1e-6)
    assert compare_outputs("x", [ours], [ref]).max_abs_of_scale == pytest.approx(0.005, rel=1e-4)


def test_reduced_precision_run_reports_the_difference_not_a_verdict(tiny: Path) -> None:
    pytest.importorskip("torch")
    from hetrix.backends.reduced_precision import _unsupported_reason

    if _unsupported_reason("bf16"):
        pytest.skip("this CPU runs no bfloat16 convolution")
    result = run_benchmark(_config(tiny, precision="bf16"))
    text = " ".join(report.summary_lines(result))
    assert "of the output's largest value" in text and "bf16" in text
    assert "DIFFER" not in text and "agree" not in text
    fp32 = " ".join(report.summary_lines(run_benchmark(_config(tiny))))
    assert "agree" in fp32
