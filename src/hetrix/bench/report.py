"""Reports of a :class:`~hetrix.bench.runner.BenchResult`: rich tables, JSON, a bar chart PNG."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from hetrix.bench.runner import BenchResult, RuntimeResult
from hetrix.bench.runtimes import HETRIX, threadpoolctl_available
from hetrix.errors import InvalidArgumentError

VERSIONED_PACKAGES = ("hetrix", "numpy", "onnx", "onnx-ir", "onnxruntime", "openvino",
                      "threadpoolctl", "torch", "onednn-cpu-gomp")


# -- machine -----------------------------------------------------------------------------------


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Distribution -> installed version (None when it is not installed); nothing is imported."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, BLAS, OS and Python: what a benchmark number depends on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
    }
    try:
        from hetrix.devices import detect_cpu

        cpu = detect_cpu()
    except Exception:  # the device probe is optional here
        return info
    info.update(cpu=cpu.name, arch=cpu.arch, logical_cores=cpu.logical_cores,
                physical_cores=cpu.physical_cores, usable_cores=cpu.usable_cores,
                memory_bytes=cpu.memory_bytes, blas=f"{cpu.blas.name} {cpu.blas.version}".strip())
    return info


# -- JSON --------------------------------------------------------------------------------------


def to_dict(result: BenchResult, machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of one benchmark: config, machine, versions, every number."""
    ratios = result.ratios()
    return {
        "model": str(result.config.model),
        "date": result.date,
        "batch": result.batch,
        "inputs": result.inputs,
        "config": dataclasses.asdict(result.config),
        "machine": machine if machine is not None else machine_info(),
        "versions": package_versions(),
        "threadpoolctl": threadpoolctl_available(),
        "runtimes": [dataclasses.asdict(r) for r in result.runtimes],
        "ratios": {f"{HETRIX}/{name}": value for name, value in ratios.items()},
        "agreement": [dataclasses.asdict(a) for a in result.agreement],
    }


def _clean(value: Any) -> Any:
    """NaN and infinity become null so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(result: BenchResult, path: str | Path) -> dict[str, Any]:
    """Write :func:`to_dict` to ``path``; returns the document."""
    document = _clean(to_dict(result))
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    return document


# -- tables ------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.3g}" if value < 10 else f"{value:,.1f}")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def results_table(result: BenchResult) -> Table:
    """One row per runtime: load time, latency median and p10-p90, throughput, memory growth."""
    cfg = result.config
    title = (f"{Path(cfg.model).name}: batch {result.batch}, "
             f"threads {cfg.threads or 'default'}, {cfg.warmup} warm-up + {cfg.repeat} timed runs"
             + (f" in back-to-back turns of {cfg.block}" if cfg.block > 1 else ""))
    table = Table(title=title, title_justify="left")
    table.add_column("runtime")
    for column in ("load s", "median ms", "p10-p90 ms", "items/s", "load/peak MiB",
                   "import MiB"):
        table.add_column(column, justify="right")
    for r in result.runtimes:
        table.add_row(*_row(r))
    return table


def _row(r: RuntimeResult) -> list[str]:
    lat, mem = r.latency, r.memory
    load = "-" if r.load_s is None else f"{r.load_s:.2f}"
    spread = "-" if lat is None else f"{_ms(lat.p10_ms)}–{_ms(lat.p90_ms)}"
    memory = "-" if mem is None else f"{_mb(mem.load_growth_mb)}/{_mb(mem.peak_growth_mb)}"
    return [r.name, load, _ms(lat.median_ms if lat else None), spread,
            "-" if r.throughput is None else f"{r.throughput:,.1f}", memory,
            "-" if mem is None else _mb(mem.import_mb)]


def summary_lines(result: BenchResult) -> list[str]:
    """Ratios, output agreement, thread notes and errors, one line each (rich markup)."""
    lines = ["versions: " + ", ".join(f"{r.name} {r.version.split('-')[0]}"
                                      for r in result.runtimes)]
    lines += [f"[bold]Hetrix / {name}: {ratio:.2f}x[/bold] the median latency "
             f"({'slower' if ratio > 1 else 'faster'})"
             for name, ratio in result.ratios().items()]
    reduced = result.config.precision != "fp32"
    for a in result.agreement:
        if reduced:  # a measurement of what the precision costs, not a pass/fail
            lines.append(f"outputs vs {a.competitor}: differ by up to "
                         f"{100 * a.max_abs_of_scale:.2g}% of the output's largest value (max abs "
                         f"{a.max_abs:.3g}) in {result.config.precision}; float32 tolerances "
                         f"(rtol {a.rtol:g}) are not applied to a reduced-precision run")
            lines += [f"  output {d.name}: {d.problem}" for d in a.outputs if d.problem]
            continue
        status = "[green]agree[/green]" if a.agree else "[red]DIFFER[/red]"
        lines.append(f"outputs vs {a.competitor}: {status} (max abs {a.max_abs:.3g}, "
                     f"max rel {a.max_rel:.3g}; rtol {a.rtol:g}, atol {a.atol:g} x max|ref|)")
        lines += [f"  output {d.name}: {d.problem}" for d in a.outputs if d.problem]
    for r in result.runtimes:
        if r.error:
            lines.append(f"[red]{r.name} failed: {r.error}[/red]")
        if r.memory_error:
            lines.append(f"[yellow]{r.name} memory not measured: {r.memory_error}[/yellow]")
    if any(r.load_s is not None for r in result.runtimes):
        lines.append("load: seconds to create the session, once the runtime and the libraries it "
                     "computes with are imported")
    if any(r.memory for r in result.runtimes):
        lines.append("memory: RSS growth, each runtime in a fresh process, over a baseline taken "
                     "once the runtime and the libraries it computes with are imported and have "
                     "run a tiny model, and the heap is trimmed (load = after creating the "
                     "session, peak = during "
                     "creation + runs); import = what importing those and that first run cost, "
                     "over Python + NumPy")
    return lines


# -- plot --------------------------------------------------------------------------------------


def write_plot(result: BenchResult, path: str | Path) -> None:
    """A bar chart PNG: median latency with p10-p90 whiskers, and peak memory growth."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgumentError(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'hetrix[bench]')"
        ) from None
    timed = [r for r in result.runtimes if r.latency is not None]
    if not timed:
        raise InvalidArgumentError("no runtime produced timings: nothing to plot")
    with_memory = [r for r in timed if r.memory is not None]
    fig, axes = plt.subplots(1, 2 if with_memory else 1, figsize=(10 if with_memory else 6, 4.5),
                             squeeze=False)
    _latency_axis(axes[0][0], timed, result.ratios())
    if with_memory:
        _memory_axis(axes[0][1], with_memory)
    cfg = result.config
    fig.suptitle(f"{Path(cfg.model).name} - batch {result.batch}, threads "
                 f"{cfg.threads or 'default'}, {cfg.repeat} runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_COLORS = {HETRIX: "#d1495b", "onnxruntime": "#30638e", "openvino": "#00798c"}


def _latency_axis(ax: Any, timed: Sequence[RuntimeResult], ratios: dict[str, float]) -> None:
    names = [r.name for r in timed]
    medians = [r.latency.median_ms for r in timed if r.latency]
    low = [r.latency.median_ms - r.latency.p10_ms for r in timed if r.latency]
    high = [r.latency.p90_ms - r.latency.median_ms for r in timed if r.latency]
    ax.bar(names, medians, yerr=[low, high], capsize=6,
           color=[_COLORS.get(n, "#888888") for n in names])
    for index, r in enumerate(timed):
        if r.latency is None:
            continue
        label = f"{_ms(r.latency.median_ms)} ms"
        if r.name in ratios:
            label += f"\nratio {ratios[r.name]:.2f}x"
        ax.annotate(label, (index, r.latency.p90_ms), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("latency, ms (median, p10-p90)")
    if ratios:
        ax.set_xlabel("ratio = hetrix median / that runtime's median")
    ax.set_title("Latency (lower is better)")
    ax.set_ylim(0, max(r.latency.p90_ms for r in timed if r.latency) * 1.35)


def _memory_axis(ax: Any, results: Sequence[RuntimeResult]) -> None:
    names = [r.name for r in results]
    peaks = [r.memory.peak_growth_mb for r in results if r.memory]
    bars = ax.bar(names, peaks, color=[_COLORS.get(n, "#888888") for n in names])
    ax.bar_label(bars, labels=[f"{p:,.0f} MiB" for p in peaks], padding=3, fontsize=9)
    ax.set_ylabel("peak RSS growth, MiB")
    ax.set_title("Memory (lower is better)")
    ax.set_ylim(0, max(max(peaks), 1.0) * 1.25)
