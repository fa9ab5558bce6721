"""The ``hetrix`` command line, driven through typer's CliRunner."""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import hetrix
from hetrix.cli import demo as demo_mod
from hetrix.cli.check import select_cases
from hetrix.cli.main import app
from hetrix.devices import detect_cpu
from hetrix.testing.conformance import run_cases

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SQUEEZENET = LIGHT / "light_squeezenet.onnx"

runner = CliRunner()


def invoke(*args: str) -> object:
    """Run the CLI with a wide console so tables are not folded."""
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def _squeezenet_input() -> np.ndarray:
    n = 1 * 3 * 224 * 224
    return (np.arange(n).reshape(1, 3, 224, 224) / n).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """z = relu(x @ w) + c with a symbolic batch dim, a Constant node and an If subgraph."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
    branch = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["out"])], "branch", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Relu", ["xw"], ["r"]),
            helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
                np.array([0.5, 1.0, 1.5], np.float32))),
            helper.make_node("Constant", [], ["flag"], value_int=1),
            helper.make_node("Cast", ["flag"], ["cond"], to=TensorProto.BOOL),
            helper.make_node("If", ["cond"], ["picked"], then_branch=branch, else_branch=branch),
            helper.make_node("Add", ["picked", "c"], ["z"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="hetrix-tests", producer_version="1.2")
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(model, path)
    return path


def _tiny_reference(x: np.ndarray) -> np.ndarray:
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    return np.maximum(x @ w, 0) + np.array([0.5, 1.0, 1.5], np.float32)


# -- info --------------------------------------------------------------------------------------


def test_info_light_model_matches_the_file() -> None:
    result = invoke("info", str(SQUEEZENET))
    assert result.exit_code == 0, result.output
    proto = onnx.load(SQUEEZENET)
    assert "data_0" in result.output and "tensor(float)" in result.output
    assert "[1, 3, 224, 224]" in result.output and "[1, 1000, 1, 1]" in result.output
    assert f"IR version {proto.ir_version}" in result.output
    assert "ai.onnx 9" in result.output
    for op, count in collections.Counter(n.op_type for n in proto.graph.node).items():
        assert re.search(rf"│ {op}\s+│\s+{count} │", result.output), op
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert f"({params:,})" in result.output


def test_info_counts_constants_and_subgraphs(tiny_model: Path) -> None:
    result = invoke("info", str(tiny_model))
    assert result.exit_code == 0, result.output
    assert "[batch, 4]" in result.output and "[batch, 3]" in result.output
    assert "producer hetrix-tests 1.2" in result.output
    assert "7 nodes + 2 in subgraphs" in result.output  # the two Identity branches
    assert re.search(r"│ Identity\s+│\s+2 │", result.output)
    # 12 weights + 3 constant values + 1 value_int
    assert "(16)" in result.output and "1 initializers and 2 Constant nodes" in result.output


# -- run ---------------------------------------------------------------------------------------


def test_run_from_npy_matches_the_expected_output(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", _squeezenet_input())
    out_dir = tmp_path / "out"
    result = invoke("run", str(SQUEEZENET), "--input", f"data_0={tmp_path / 'x.npy'}",
                    "--save", str(out_dir), "--providers", "cpu")
    assert result.exit_code == 0, result.output
    expected = numpy_helper.to_array(onnx.load_tensor(LIGHT / "light_squeezenet_output_0.pb"))
    got = np.load(out_dir / "softmaxout_1.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    assert "softmaxout_1" in result.output and "[1, 1000, 1, 1]" in result.output
    assert re.search(r"placement: (\d+) nodes: \1 on \S+", result.output)


def test_run_and_info_run_the_model_once_and_never(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """``hetrix run`` makes one run (no warm-up run at load on top of it); ``info --optimized``
    only plans the model."""
    from hetrix.runtime import executor

    walks: list[int] = []
    walk = executor._walk_lean
    monkeypatch.setattr(executor, "_walk_lean",
                        lambda plan, slots: (walks.append(1), walk(plan, slots))[1])
    np.save(tmp_path / "x.npy", _squeezenet_input())
    result = invoke("run", str(SQUEEZENET), "--input", f"data_0={tmp_path / 'x.npy'}")
    assert result.exit_code == 0, result.output
    assert walks == [1]
    result = invoke("info", str(SQUEEZENET), "--optimized")
    assert result.exit_code == 0, result.output
    assert walks == [1]


def test_run_random_with_symbolic_dim(tiny_model: Path, tmp_path: Path) -> None:
    result = invoke("run", str(tiny_model), "--random", "--seed", "7", "--dim", "batch=5",
                    "--save", str(tmp_path))
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), _tiny_reference(x), rtol=1e-5)
    assert "[5, 3]" in result.output
    z = _tiny_reference(x)
    assert f"{z.min():.6g}" in result.output and f"{z.max():.6g}" in result.output


def test_run_without_data_names_the_input(tiny_model: Path) -> None:
    result = invoke("run", str(tiny_model))
    assert result.exit_code == 2
    assert "'x'" in result.stderr and "--random" in result.stderr
    assert "Traceback" not in result.output


def test_run_with_wrong_dtype_is_a_user_error(tiny_model: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float64))
    result = invoke("run", str(tiny_model), "-i", f"x={tmp_path / 'x.npy'}")
    assert result.exit_code == 2
    assert "float64" in result.stderr and "Traceback" not in result.output


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "run"])
def test_missing_model_exits_2_naming_the_path(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model.onnx"
    result = invoke(command, str(missing))
    assert result.exit_code == 2
    assert str(missing) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_corrupt_model_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a model" * 3)
    result = invoke("info", str(bad))
    assert result.exit_code == 2
    assert str(bad) in result.stderr and "Traceback" not in result.output


# -- devices -----------------------------------------------------------------------------------


def test_devices_table_and_json() -> None:
    cpu = detect_cpu()
    table = invoke("devices")
    assert table.exit_code == 0, table.output
    assert cpu.name in table.output
    assert all(feature in table.output for feature in cpu.features)
    as_json = invoke("devices", "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert data[0]["kind"] == "cpu"
    assert data[0]["logical_cores"] == cpu.logical_cores == (os.cpu_count() or 1)
    assert data[0]["features"] == list(cpu.features)


# -- check -------------------------------------------------------------------------------------


def test_check_relu_agrees_with_the_runner(tmp_path: Path) -> None:
    report_file = tmp_path / "check.json"
    result = invoke("check", "--op", "Relu", "--json", str(report_file))
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    names = [case["name"] for case in report["cases"]]
    assert "test_relu" in names and all(name.startswith("test_relu") for name in names)
    direct = run_cases(select_cases(["Relu"]))
    assert [r.status for r in direct] == [case["status"] for case in report["cases"]]
    summary = report["summary"]
    assert summary["total"] == len(direct)
    assert summary["passed"] == sum(r.passed for r in direct)
    assert f"passed {summary['passed']}/{summary['total']}" in result.output
    assert re.search(rf"│ Relu\s+│\s+{summary['total']} │", result.output)


def test_check_unknown_provider_exits_2() -> None:
    result = invoke("check", "--op", "Relu", "--providers", "tpu")
    assert result.exit_code == 2
    assert "tpu" in result.stderr


# -- demo --------------------------------------------------------------------------------------


def test_demo_one_model() -> None:
    result = invoke("demo", "squeezenet")
    assert result.exit_code == 0, result.output
    assert re.search(r"│ squeezenet\s+│\s+8 │\s+105 │", result.output)
    assert "OK" in result.output and "1/1 models match" in result.output


def test_demo_reports_a_wrong_output(monkeypatch: pytest.MonkeyPatch) -> None:
    real_case = demo_mod.light_case

    def shifted(model: demo_mod.LightModel) -> demo_mod.Case:
        feeds, expected = real_case(model)
        return feeds, [e + 0.01 for e in expected]

    monkeypatch.setattr(demo_mod, "light_case", shifted)
    result = invoke("demo", "squeezenet")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "0/1 models match" in result.output
    assert "1.0e-02" in result.output  # the max abs error is the shift


def test_demo_vs_onnxruntime_adds_a_ratio() -> None:
    pytest.importorskip("onnxruntime")
    result = invoke("demo", "light_squeezenet", "--vs-onnxruntime")
    assert result.exit_code == 0, result.output
    assert "Hetrix/ORT" in result.output and re.search(r"\d+\.\dx", result.output)


def test_demo_unknown_model_exits_2() -> None:
    result = invoke("demo", "not_a_model")
    assert result.exit_code == 2
    assert "not_a_model" in result.stderr and "squeezenet" in result.stderr


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and hetrix.__version__ in result.output


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("info", "run", "devices", "check", "demo"):
        assert re.search(rf"│ {command}\s", result.output), command


def test_select_cases_by_operator_use() -> None:
    names = {case.name for case in select_cases(["Conv"])}
    assert {"test_basic_conv_with_padding", "test_conv_with_strides_padding"} <= names
    assert not any(name.startswith("test_convtranspose") for name in names)
    relu = {case.name for case in select_cases(["Relu"])}
    assert {"test_relu", "test_relu_expanded_ver18"} <= relu


def test_info_optimized_shows_the_rewrites() -> None:
    from hetrix.testing.models import light_model_paths

    result = invoke("info", str(light_model_paths()["resnet50"]), "--optimized")
    assert result.exit_code == 0, result.output
    assert "415 -> 90 nodes" in result.output or "-> " in result.output
    assert "Conv+BatchNormalization" in result.output and "hetrix::FusedConv" in result.output


def test_profile_reports_ops_and_conv_throughput() -> None:
    from hetrix.testing.models import light_model_paths

    result = invoke("profile", str(light_model_paths()["squeezenet"]), "--runs", "2", "--top", "3")
    assert result.exit_code == 0, result.output
    assert "By operator" in result.output and "GEMM peak" in result.output
    # node, op, library kernel (oneDNN's, where PyTorch runs it), ms, GFLOP/s, share of peak
    assert re.search(r"FusedConv\s+│\s+(oneDNN [^│]+|-)\s+│\s+[\d.]+\s+│\s+[\d.]+\s+│\s+\d+%",
                     result.output)
    from hetrix.backends.numpy_cpu.kernels import _dnnl

    if _dnnl.available():  # the runs it does not show: every step joined
        assert "join 40 of these 40 steps into 1 call(s)" in " ".join(result.output.split())


def test_flops_of_heavy_nodes() -> None:
    import numpy as np

    from hetrix.runtime.flops import node_flops

    x, w = np.zeros((1, 3, 8, 8)), np.zeros((4, 3, 3, 3))
    assert node_flops("Conv", {}, [x, w], np.zeros((1, 4, 6, 6))) == 2 * 4 * 36 * 27
    a, b = np.zeros((2, 5, 7)), np.zeros((7, 3))
    assert node_flops("MatMul", {}, [a, b], np.zeros((2, 5, 3))) == 2 * 30 * 7
    assert node_flops("Gemm", {"transA": 1}, [np.zeros((7, 5)), b], np.zeros((5, 3))) == 2 * 15 * 7
    assert node_flops("Relu", {}, [x], x) is None
