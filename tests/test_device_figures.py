"""Accelerator discovery, measured device figures, their on-disk cache and `hetrix devices`."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from hetrix.cli.main import app
from hetrix.devices import (
    AcceleratorInfo,
    CpuInfo,
    DeviceFigures,
    detect_cpu,
    discover_accelerators,
    fingerprint,
    get_figures,
    list_devices,
    load_figures,
    measure_config,
    measure_device,
    store_figures,
)
from hetrix.devices import accelerators as accel_mod
from hetrix.devices import cache as cache_mod
from hetrix.devices import measure as measure_mod
from hetrix.devices.accelerators import module_available

TINY = measure_config("tiny")
HAS_TORCH = module_available("torch")


def _cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return bool(torch.cuda.is_available())


gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not _cuda_available(), reason="torch sees no CUDA/ROCm device")
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HETRIX_CACHE_DIR for the test."""
    monkeypatch.setenv(cache_mod.ENV_CACHE_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cpu() -> CpuInfo:
    return detect_cpu()


def _figures(device_id: str = "cpu:0", gflops: float = 42.0) -> DeviceFigures:
    return DeviceFigures(device_id=device_id, matmul_gflops={"float32": gflops},
                         memory_bandwidth_gbs=10.5, measured_at=measure_mod.now_iso(),
                         size="tiny", method={"matmul.float32": "synthetic"})


# -- import and discovery ----------------------------------------------------------------------


def test_import_hetrix_does_not_import_torch() -> None:
    code = textwrap.dedent("""
        import json, sys
        import hetrix, hetrix.devices, hetrix.devices.cache, hetrix.devices.measure
        import hetrix.cli.main
        heavy = ("torch", "jax", "torch_npu")
        print(json.dumps([name for name in heavy if name in sys.modules]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_without_torch_only_the_cpu(monkeypatch: pytest.MonkeyPatch, cpu: CpuInfo) -> None:
    """A None entry in sys.modules makes find_spec (and import) report the module absent."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "jax", None)
    assert not module_available("torch")
    assert discover_accelerators() == []
    devices = list_devices()
    assert len(devices) == 1 and isinstance(devices[0], CpuInfo)
    figures = measure_device(cpu, TINY)
    assert "bfloat16" not in figures.matmul_gflops
    assert figures.skipped["matmul.bfloat16"] == "torch is not installed"


@needs_torch
def test_torch_discovery_on_this_machine() -> None:
    """Every accelerator torch reports is listed; on a CPU-only machine, none at all."""
    import torch

    found = discover_accelerators()
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None)
    expected += int(mps is not None and mps.is_available())
    xpu = getattr(torch, "xpu", None)
    expected += xpu.device_count() if xpu is not None and xpu.is_available() else 0
    if not module_available("jax") and not module_available("torch_npu"):
        assert len(found) == expected
    if expected == 0:
        assert found == [] and [d.kind for d in list_devices()] == ["cpu"]


def _fake_torch(hip: str | None) -> Any:
    props = SimpleNamespace(name="Fake GPU", total_memory=80 << 30, major=9, minor=0,
                            multi_processor_count=132, gcnArchName="gfx90a:sramecc+:xnack-",
                            uuid="GPU-1234", L2_cache_size=50 << 20)
    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                           get_device_properties=lambda index: props)
    return SimpleNamespace(cuda=cuda, version=SimpleNamespace(cuda="12.4", hip=hip),
                           __version__="2.9.0")


def test_cuda_discovery_reads_torch_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel_mod, "_nvidia_driver_version", lambda: "550.54.15")
    found = accel_mod._cuda_devices(_fake_torch(hip=None))
    assert [d.id for d in found] == ["cuda:0", "cuda:1"]
    first = found[0]
    assert (first.name, first.memory_bytes, first.compute_capability) == ("Fake GPU", 80 << 30,
                                                                          "9.0")
    assert (first.driver_version, first.runtime_version, first.library_version) == (
        "550.54.15", "12.4", "2.9.0")
    assert first.compute_units == 132 and first.vendor == "NVIDIA"
    assert first.library_device == "cuda:0" and first.details["uuid"] == "GPU-1234"
    assert json.loads(json.dumps(first.to_dict()))["id"] == "cuda:0"


def test_rocm_discovery_is_kind_rocm_on_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel_mod, "_amdgpu_driver_version", lambda: "6.7.0")
    found = accel_mod._cuda_devices(_fake_torch(hip="6.2.41133"))
    assert [d.id for d in found] == ["rocm:0", "rocm:1"]
    assert found[1].library_device == "cuda:1"
    assert found[0].compute_capability == "gfx90a:sramecc+:xnack-"
    assert (found[0].runtime_version, found[0].driver_version) == ("6.2.41133", "6.7.0")


def test_a_failing_backend_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[AcceleratorInfo]:
        raise RuntimeError("driver too old")

    with caplog.at_level(logging.WARNING):
        assert accel_mod._guarded("torch cuda", broken) == []
    assert "driver too old" in caplog.text


def test_parse_nvidia_proc_version() -> None:
    text = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 "
            "UTC 2024\nGCC version:  gcc version 12.2.0\n")
    assert accel_mod.parse_nvidia_proc_version(text) == "550.54.15"
    open_module = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  560.35.03  Release"
    assert accel_mod.parse_nvidia_proc_version(open_module) == "560.35.03"
    assert accel_mod.parse_nvidia_proc_version("") is None


# -- fingerprint and cache ---------------------------------------------------------------------


def test_fingerprint_is_stable(cpu: CpuInfo) -> None:
    facts = fingerprint(cpu)
    assert facts == fingerprint(detect_cpu())
    assert cache_mod.fingerprint_key(facts) == cache_mod.fingerprint_key(fingerprint(cpu))
    assert facts["name"] == cpu.name and facts["usable_cores"] == cpu.usable_cores
    assert facts["libraries"]["numpy"] and facts["blas"].startswith(cpu.blas.name)
    json.dumps(facts)


def test_fingerprint_changes_with_cores_and_libraries(cpu: CpuInfo,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key = cache_mod.fingerprint_key(fingerprint(cpu))
    fewer = dataclasses.replace(cpu, usable_cores=cpu.usable_cores + 1)
    assert cache_mod.fingerprint_key(fingerprint(fewer)) != key
    versions = {**cache_mod.library_versions(), "torch": "99.0"}
    monkeypatch.setattr(cache_mod, "library_versions", lambda: versions)
    assert cache_mod.fingerprint_key(fingerprint(cpu)) != key


def test_accelerator_fingerprint_follows_the_driver() -> None:
    gpu_info = AcceleratorInfo(kind="cuda", name="Fake GPU", memory_bytes=1 << 34,
                               library_device="cuda:0", driver_version="550.54.15")
    newer = dataclasses.replace(gpu_info, driver_version="560.35.03")
    assert fingerprint(gpu_info)["driver_version"] == "550.54.15"
    assert cache_mod.cache_file(gpu_info) != cache_mod.cache_file(newer)


def test_cache_dir_override(cache_dir: Path) -> None:
    assert cache_mod.cache_dir() == cache_dir
    assert cache_mod.figures_dir().parent == cache_dir


def test_cache_round_trip(cache_dir: Path, cpu: CpuInfo) -> None:
    assert load_figures(cpu) is None
    figures = _figures()
    path = store_figures(cpu, figures)
    assert path.parent == cache_dir / "devices" and path.name.startswith("cpu-0-")
    assert load_figures(cpu) == figures
    document = json.loads(path.read_text())
    assert document["fingerprint"] == fingerprint(cpu)
    assert document["device"]["name"] == cpu.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_cache_invalidated_by_a_new_fingerprint(cache_dir: Path, cpu: CpuInfo,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store_figures(cpu, _figures())
    versions = {**cache_mod.library_versions(), "numpy": "0.0.1"}
    with monkeypatch.context() as patch:
        patch.setattr(cache_mod, "library_versions", lambda: versions)
        assert load_figures(cpu) is None
    assert load_figures(cpu) is not None  # the old configuration's file is still there


def test_get_figures_measures_on_miss_and_on_request(cache_dir: Path, cpu: CpuInfo,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_measure(device: Any, config: Any = None) -> DeviceFigures:
        calls.append(device.id)
        return _figures(device.id, gflops=float(len(calls)))

    monkeypatch.setattr(cache_mod, "measure_device", fake_measure)
    assert get_figures(cpu, measure_missing=False) is None and calls == []
    first = get_figures(cpu)
    assert first is not None and first.matmul_gflops["float32"] == 1.0
    assert get_figures(cpu) == first and len(calls) == 1
    again = get_figures(cpu, remeasure=True)
    assert again is not None and again.matmul_gflops["float32"] == 2.0
    assert load_figures(cpu) == again


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2, 3]",
    '{"format": 1, "fingerprint": FP, "figures": {"device_id": "cpu:0", '
    '"matmul_gflops": {"float32": "fast"}}}',
    '{"format": 1, "fingerprint": FP, "figures": {"device_id": "cpu:0", "speed": 3}}',
    '{"format": 1, "fingerprint": FP, "figures": {"device_id": "cuda:0"}}',
    '{"format": 1, "fingerprint": FP}',
])
def test_corrupt_cache_is_ignored(cache_dir: Path, cpu: CpuInfo, content: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    path = cache_mod.cache_file(cpu)
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("FP", json.dumps(fingerprint(cpu))))
    with caplog.at_level(logging.WARNING, logger="hetrix.devices.cache"):
        assert load_figures(cpu) is None
    assert "ignoring corrupt device figures cache" in caplog.text
    fresh = _figures()
    store_figures(cpu, fresh)  # a fresh measurement replaces the corrupt file
    assert load_figures(cpu) == fresh


def test_unwritable_cache_still_returns_figures(tmp_path: Path, cpu: CpuInfo,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(cache_mod.ENV_CACHE_DIR, str(blocker))
    fresh = _figures()
    monkeypatch.setattr(cache_mod, "measure_device", lambda device, config=None: fresh)
    assert get_figures(cpu) == fresh


# -- measurement -------------------------------------------------------------------------------


def test_measure_config_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(measure_mod.ENV_MEASURE_SIZE, raising=False)
    assert measure_config().name == "default"
    monkeypatch.setenv(measure_mod.ENV_MEASURE_SIZE, "tiny")
    assert measure_config() is TINY
    with pytest.raises(ValueError, match="unknown measurement size"):
        measure_config("huge")


def test_timer_median_syncs_every_batch() -> None:
    syncs: list[int] = []
    timer = measure_mod.Timer(sync=lambda: syncs.append(1), repeats=3, budget_s=1.0,
                              min_batch_s=1e-3)
    seconds = timer.median(lambda: time.sleep(2e-3))
    assert 1.5e-3 < seconds < 0.05
    assert len(syncs) >= 2 + 3 * 2  # warm-up, calibration, then before and after each batch


def test_matmul_size_grows_past_slow_small_sizes() -> None:
    """Overhead-dominated small sizes must not stop the size search."""
    sizes: list[int] = []

    def make(n: int) -> Any:
        sizes.append(n)
        return lambda: time.sleep(1e-3)  # the same time at every size

    timer = measure_mod.Timer(repeats=2, budget_s=0.2, min_batch_s=0)
    gflops, n = measure_mod.matmul_gflops(make, 512, timer)
    assert sizes == [64, 128, 256, 512] and n == 512
    assert gflops == pytest.approx(2 * 512**3 / 1e-3 / 1e9, rel=0.6)


def test_measured_cpu_figures_are_plausible(cpu: CpuInfo) -> None:
    start = time.perf_counter()
    figures = measure_device(cpu, TINY)
    assert time.perf_counter() - start < 5
    assert figures.device_id == "cpu:0" and figures.size == "tiny"
    assert figures.matmul_gflops["float32"] > 1.0
    assert figures.memory_bandwidth_gbs is not None and figures.memory_bandwidth_gbs > 0.5
    assert all(value > 0 for value in figures.matmul_gflops.values())
    if HAS_TORCH:
        assert {"bfloat16", "float16"} <= set(figures.matmul_gflops) | set(figures.skipped)
    assert "numpy.matmul" in figures.method["matmul.float32"]
    assert datetime.datetime.fromisoformat(figures.measured_at).tzinfo is not None
    assert DeviceFigures.from_dict(json.loads(json.dumps(figures.to_dict()))) == figures


@needs_torch
def test_torch_accelerator_path_on_the_cpu_device() -> None:
    """The accelerator microbenchmark, run against torch's CPU device: every figure or a reason."""
    device = AcceleratorInfo(kind="torchcpu", name="torch CPU", library_device="cpu")
    figures = measure_device(device, TINY)
    assert figures.matmul_gflops["float32"] > 0
    assert figures.memory_bandwidth_gbs is not None and figures.memory_bandwidth_gbs > 0
    assert figures.host_to_device_gbs["pageable"] > 0
    assert figures.device_to_host_latency_us["pageable"] > 0
    assert "pinned" in figures.host_to_device_gbs or "transfer.pinned" in figures.skipped
    assert figures.launch_latency_us is not None and figures.launch_latency_us > 0
    assert figures.launch_sync_latency_us is not None
    assert set(figures.method) >= {"matmul.float32", "memory_bandwidth", "transfer.pageable",
                                   "launch_latency"}


def test_a_failing_figure_is_skipped_not_raised() -> None:
    figures = DeviceFigures(device_id="cpu:0")
    measure_mod.attempt(figures, "matmul.float8", lambda: (_ for _ in ()).throw(
        TypeError("float8 is not supported")))
    assert figures.skipped == {"matmul.float8": "TypeError: float8 is not supported"}


# -- GPU ---------------------------------------------------------------------------------------


@gpu
@needs_cuda
def test_cuda_devices_are_discovered() -> None:
    import torch

    found = [d for d in discover_accelerators() if d.kind in ("cuda", "rocm")]
    assert len(found) == torch.cuda.device_count()
    first = found[0]
    assert first.memory_bytes and first.memory_bytes > 1 << 30
    assert first.compute_capability and first.runtime_version
    assert first.name == torch.cuda.get_device_name(0)


@gpu
@needs_cuda
def test_cuda_figures_are_measured() -> None:
    device = next(d for d in discover_accelerators() if d.kind in ("cuda", "rocm"))
    figures = measure_device(device, TINY)
    assert figures.matmul_gflops["float32"] > 100
    assert figures.memory_bandwidth_gbs is not None and figures.memory_bandwidth_gbs > 10
    for memory in ("pinned", "pageable"):
        assert figures.host_to_device_gbs[memory] > 0.1
        assert figures.device_to_host_gbs[memory] > 0.1
        assert 0 < figures.host_to_device_latency_us[memory] < 10_000
    assert figures.launch_latency_us is not None and 0 < figures.launch_latency_us < 1_000


# -- CLI ---------------------------------------------------------------------------------------


def _invoke(*args: str, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env})


def test_cli_devices_json_has_fingerprint_and_figures(cache_dir: Path, cpu: CpuInfo) -> None:
    result = _invoke("devices", "--json", HETRIX_CACHE_DIR=str(cache_dir))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[0]["id"] == "cpu:0" and data[0]["figures"] is None
    assert data[0]["fingerprint"] == fingerprint(cpu)
    assert data[0]["fingerprint_key"] == cache_mod.fingerprint_key(fingerprint(cpu))
    table = _invoke("devices", HETRIX_CACHE_DIR=str(cache_dir))
    assert "not measured for this configuration" in table.output


def test_cli_measure_writes_the_cache(cache_dir: Path, cpu: CpuInfo) -> None:
    env = {"HETRIX_CACHE_DIR": str(cache_dir), "HETRIX_MEASURE_SIZE": "tiny"}
    result = _invoke("devices", "--measure", "--json", "--device", "cpu", **env)
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)[0]["figures"]
    assert measured["size"] == "tiny" and measured["matmul_gflops"]["float32"] > 0
    assert Path(json.loads(result.stdout)[0]["cache_file"]).is_file()
    assert load_figures(cpu) is not None
    listed = _invoke("devices", "--json", **env)
    assert json.loads(listed.stdout)[0]["figures"] == measured
    table = _invoke("devices", **env)
    assert "matmul float32" in table.output and "GFLOP/s" in table.output
    assert "(tiny size," in table.output


def test_cli_rejects_unknown_size_and_device(cache_dir: Path) -> None:
    assert _invoke("devices", "--measure", "--size", "huge").exit_code == 2
    result = _invoke("devices", "--device", "nosuch:3")
    assert result.exit_code == 2 and "no device nosuch:3" in result.output
