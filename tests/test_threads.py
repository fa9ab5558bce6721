"""SessionOptions.intra_op_num_threads: the compute libraries use that many threads during a run,
and get their own setting back after it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.errors import InvalidArgumentError
from hetrix.runtime import executor


def _model() -> bytes:
    """y = relu(x @ w): one product for the BLAS or PyTorch, one elementwise op."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.linspace(-1, 1, 64 * 64).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Relu", ["xw"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return model.SerializeToString()


def _threads_seen_in_run(monkeypatch: pytest.MonkeyPatch, count_threads) -> list[int]:
    """Make every plan walk record ``count_threads()`` as it starts."""
    seen: list[int] = []
    walk = executor._walk_lean

    def recording_walk(plan, slots):
        seen.append(count_threads())
        return walk(plan, slots)

    monkeypatch.setattr(executor, "_walk_lean", recording_walk)
    return seen


def _reference(x: np.ndarray) -> np.ndarray:
    w = np.linspace(-1, 1, 64 * 64).reshape(64, 64)
    return np.maximum(x.astype(np.float64) @ w, 0)


def test_torch_threads_follow_the_session_and_are_restored(monkeypatch) -> None:
    if _library.torch_functional() is None:
        pytest.skip("PyTorch is not installed, or HETRIX_NUMPY_ONLY=1")
    import torch

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    session = hetrix.InferenceSession(_model(), hetrix.SessionOptions(intra_op_num_threads=want))
    seen = _threads_seen_in_run(monkeypatch, torch.get_num_threads)
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    for _ in range(3):  # the third run takes the shape-specialized plan
        y = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-4)
    assert seen == [want] * 3
    assert torch.get_num_threads() == before


def test_default_leaves_torch_threads_alone(monkeypatch) -> None:
    if _library.torch_functional() is None:
        pytest.skip("PyTorch is not installed, or HETRIX_NUMPY_ONLY=1")
    import torch

    before = torch.get_num_threads()
    session = hetrix.InferenceSession(_model())
    seen = _threads_seen_in_run(monkeypatch, torch.get_num_threads)
    session.run(None, {"x": np.ones((32, 64), np.float32)})
    assert seen == [before]


def test_numpy_only_sessions_set_the_blas_threads(monkeypatch) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(_library, "_FUNCTIONAL", False)  # the NumPy-only kernels

    def blas_threads() -> int:
        infos = threadpoolctl.threadpool_info()
        return min(i["num_threads"] for i in infos if i["user_api"] == "blas")

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        session = hetrix.InferenceSession(_model(), hetrix.SessionOptions(intra_op_num_threads=1))
        seen = _threads_seen_in_run(monkeypatch, blas_threads)
        x = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
        y = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-4)
        assert seen == [1]
        assert blas_threads() == 2


@pytest.mark.parametrize("count", [-1, 1.5, "2"])
def test_bad_thread_count_is_refused_by_name(count) -> None:
    with pytest.raises(InvalidArgumentError, match="intra_op_num_threads"):
        hetrix.InferenceSession(_model(), hetrix.SessionOptions(intra_op_num_threads=count))


_BINDING_PROBE = """
import json, os, threading
from hetrix.backends.torch_setup import import_torch
before = sorted(os.sched_getaffinity(0))
torch = import_torch()
x = torch.randn(512, 512)
for _ in range(3):
    x @ x  # a parallel region: OpenMP starts its workers
tasks = {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
print(json.dumps({"before": before, "main": tasks.pop(threading.get_native_id()),
                  "others": list(tasks.values()), "threads": torch.get_num_threads(),
                  "env": sorted(k for k in os.environ if k in ("OMP_PROC_BIND", "OMP_PLACES"))}))
"""


def _binding_in_fresh_process(extra_env: dict[str, str], prelude: str = "") -> dict:
    """Run the probe in a new interpreter (OpenMP binds only when it starts) and read its report;
    ``prelude`` runs first (what loads libgomp first decides its set-up)."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("binding needs Linux and at least two usable CPUs")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY",
                        "OMP_NUM_THREADS")}
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-c", prelude + _BINDING_PROBE], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


_DNNL_FIRST = """
from hetrix.backends.numpy_cpu.kernels import _dnnl
assert _dnnl.library() is not None  # oneDNN's library loads libgomp before PyTorch does
"""


@pytest.mark.parametrize("first", ["torch", "onednn"])
def test_openmp_workers_are_bound_and_the_main_thread_is_not(first: str) -> None:
    if first == "onednn":
        from hetrix.backends.numpy_cpu.kernels import _dnnl

        if not _dnnl.available():
            pytest.skip("the onednn extra is not installed")
    report = _binding_in_fresh_process({}, _DNNL_FIRST if first == "onednn" else "")
    assert report["main"] == report["before"]  # the user's thread keeps its own affinity
    assert report["env"] == []  # child processes of the user's inherit nothing
    if report["threads"] > 1:
        # one core per worker: a single CPU, or a core's hyperthreads where the machine has them
        bound = [mask for mask in report["others"] if len(mask) < len(report["before"])]
        assert len(bound) >= report["threads"] - 1
        assert all(set(mask) <= set(report["before"]) for mask in bound)


def test_openmp_binding_chosen_by_the_user_is_kept() -> None:
    report = _binding_in_fresh_process({"OMP_PROC_BIND": "false"})
    assert report["main"] == report["before"]
    assert all(mask == report["before"] for mask in report["others"])
