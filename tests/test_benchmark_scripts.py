"""The A/B script of benchmarks/ runs and reports what it measured (a smoke test: timing
itself is never asserted, only that the script works and refuses what it cannot measure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_rule.py"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not next to the tests")


def _conv_relu(path: Path) -> Path:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_ab_rule_compares_a_model_with_and_without_a_rule(tmp_path: Path) -> None:
    done = _run(str(_conv_relu(tmp_path / "m.onnx")), "activation fusion", "--runs", "3")
    assert done.returncode == 0, done.stderr
    assert "'activation fusion' fired 1 times" in done.stdout
    assert "with/without" in done.stdout


def test_ab_rule_refuses_a_rule_that_does_not_fire_or_exist(tmp_path: Path) -> None:
    model = str(_conv_relu(tmp_path / "m.onnx"))
    idle = _run(model, "ChannelShuffle", "--runs", "1")
    assert idle.returncode != 0 and "does not fire" in idle.stderr
    unknown = _run(model, "no such rule", "--runs", "1")
    assert unknown.returncode != 0 and "no rewrite rule is named" in unknown.stderr


def test_ab_dnnl_compares_kept_primitives_with_pytorch_calls(tmp_path: Path) -> None:
    from hetrix.backends.numpy_cpu.kernels import _dnnl, _library

    if not _dnnl.available() or _library.torch_functional() is None:
        pytest.skip("needs PyTorch and the onednn extra")
    script = SCRIPT.parent / "ab_dnnl.py"
    done = subprocess.run([sys.executable, str(script), str(_conv_relu(tmp_path / "m.onnx")),
                           "--runs", "3"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "1 nodes on the paths compared (all); kept/pytorch" in done.stdout
    assert "largest output difference 0" in done.stdout  # the same kernel: bit-identical


def test_ab_dnnl_compares_the_plain_gemm_with_the_packed_product(tmp_path: Path) -> None:
    from hetrix.backends.numpy_cpu.kernels import _dnnl, _library

    if not _dnnl.available() or _library.torch_functional() is None:
        pytest.skip("needs PyTorch and the onednn extra")
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((256, 4096)).astype(np.float32), "w")])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    script = SCRIPT.parent / "ab_dnnl.py"
    done = subprocess.run([sys.executable, str(script), str(path), "--part", "gemm",
                           "--runs", "3"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "1 nodes on the paths compared (gemm); gemm/packed" in done.stdout


def test_ops_vs_ort_reports_both_runtimes_per_operator(tmp_path: Path) -> None:
    script = SCRIPT.parent / "ops_vs_ort.py"
    done = subprocess.run([sys.executable, str(script), str(_conv_relu(tmp_path / "m.onnx")),
                           "--runs", "3", "--pause", "0"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "median wall: hetrix" in done.stdout
    assert "hetrix:" in done.stdout and "onnxruntime:" in done.stdout
    assert "Conv" in done.stdout  # each side lists the conv it ran


def _patterns_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("patterns", SCRIPT.parent / "patterns.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["unet_step", "yolo_head", "conv_transpose", "split_add",
                                  "spatial_gate", "se_block", "pixel_shuffle", "reflect_pad",
                                  "bilinear_up", "group_norm", "hard_swish"])
def test_each_layer_pattern_computes_what_onnxruntime_does(name: str) -> None:
    """The patterns' models (benchmarks/patterns.py) give ORT's outputs, in C order."""
    import onnxruntime as ort

    import hetrix

    patterns = _patterns_module()
    assert name in patterns.PATTERNS
    model = patterns.build(name).SerializeToString()
    shape = [d.dim_value for d in onnx.load_from_string(model).graph.input[0].type.tensor_type
             .shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    theirs = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    session = hetrix.InferenceSession(model)
    for _ in range(2):  # the kernels' first run, then the direct calls
        [ours] = session.run(None, {"x": x})
        assert ours.flags.c_contiguous
        scale = float(np.abs(theirs[0]).max())
        np.testing.assert_allclose(ours, theirs[0], rtol=1e-4, atol=1e-4 * scale)


def test_patterns_script_reports_ratio_and_agreement(tmp_path: Path) -> None:
    script = SCRIPT.parent / "patterns.py"
    table = tmp_path / "patterns.md"
    done = subprocess.run([sys.executable, str(script), "--only", "pixel_shuffle", "--repeat",
                           "2", "--warmup", "1", "--pause", "0", "--output", str(table)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "pixel_shuffle |" in done.stdout and "| yes" in done.stdout
    assert "geomean Hetrix/onnxruntime" in table.read_text()


def test_ab_joined_compares_joined_calls_with_the_steps() -> None:
    from hetrix.backends.numpy_cpu.kernels import _dnnl

    if not _dnnl.available():
        pytest.skip("needs the onednn extra")
    model = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / \
        "light_squeezenet.onnx"
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "ab_joined.py"), str(model),
                           "--runs", "2"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "plan of 40 steps run as 1 call\n" in done.stdout  # every step joined
    assert "joined / steps" in done.stdout
