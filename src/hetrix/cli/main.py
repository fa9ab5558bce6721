"""The ``hetrix`` command line: inspect, run and check ONNX models, list devices, run the demo.

User errors (a missing or unreadable model, a bad option, a feed that does not match) print one
red line on stderr and exit with status 2; ``hetrix demo`` exits 1 when a model's output is wrong.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hetrix.cli import bench as bench_mod
from hetrix.cli import check as check_mod
from hetrix.cli import demo as demo_mod
from hetrix.cli import feeds as feeds_mod
from hetrix.cli.modelinfo import summarize_model
from hetrix.cli.render import (
    format_error,
    format_seconds,
    format_shape,
    human_bytes,
    human_count,
    make_table,
    percent,
)
from hetrix.errors import HetrixError

app = typer.Typer(
    name="hetrix",
    help="Run ONNX models with Hetrix: inspect, run, check conformance, list devices, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

ProvidersOption = Annotated[
    str | None,
    typer.Option("--providers", "-p", help="Providers in priority order, comma-separated "
                 "(cpu, numpy:cpu, CPUExecutionProvider)."),
]


PIPE_WIDTH = 140
"""Console width when the output is not a terminal (rich would use 80 and squeeze tables)."""


def _out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors the user caused into one red line on stderr and exit status 2."""
    try:
        yield
    except (HetrixError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _err().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
        raise typer.Exit(2) from None


def _providers(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [p.strip() for p in value.split(",") if p.strip()]


def _version(value: bool) -> None:
    if value:
        from hetrix import __version__

        typer.echo(f"hetrix {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="Log more (-v info, -vv debug).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Hetrix: run ONNX models behind an ONNX Runtime-compatible API."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# -- info --------------------------------------------------------------------------------------


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="The .onnx model file.")],
    optimized: Annotated[bool, typer.Option(
        "--optimized", help="Also show the graph after the optimization passes and what each "
        "pass changed.")] = False,
    level: Annotated[int, typer.Option(help="Optimization level for --optimized (0, 1, 2, 99)."
                                       )] = 99,
) -> None:
    """Describe a model: inputs, outputs, opsets, operators, parameters (no kernels run)."""
    with user_errors():
        summary = summarize_model(model)
    out = _out()
    out.print(f"[bold]{escape(summary.source)}[/bold]", soft_wrap=True)
    out.print(f"IR version {summary.ir_version}, producer {escape(summary.producer or '-')}, "
              f"graph '{escape(summary.graph_name)}'")
    opsets = ", ".join(f"{d} {v}" for d, v in summary.opsets.items())
    out.print(f"opset imports: {escape(opsets)}")
    for title, values in (("Inputs", summary.inputs), ("Outputs", summary.outputs)):
        table = make_table(title, "name", "type", "shape")
        for value in values:
            table.add_row(escape(value.name), value.type, escape(format_shape(value.shape)))
        out.print(table)
    if summary.overridable_initializers:
        out.print(f"{len(summary.overridable_initializers)} initializers are also graph inputs "
                  "(overridable)")
    _print_op_histogram(out, summary.op_counts, summary.nodes, summary.subgraph_nodes)
    out.print(f"parameters: {human_count(summary.parameters)} ({summary.parameters:,}), "
              f"{human_bytes(summary.parameter_bytes)} in {summary.initializers} initializers "
              f"and {summary.constants} Constant nodes")
    if optimized:
        _print_optimized(out, model, level)


def _print_optimized(out: Console, model: Path, level: int) -> None:
    """Plan the model at ``level`` and show the passes' report and the resulting operators."""
    import collections

    import hetrix

    with user_errors():
        # planned to be shown, never run: no warm-up run at load
        options = hetrix.SessionOptions(graph_optimization_level=level, warm_up=False)
        session = hetrix.InferenceSession(str(model), options)
    report = session.get_optimization_report()
    out.print(escape(report.table()), soft_wrap=True)
    counts = collections.Counter(
        f"{p.domain}::{p.op_type}" if p.domain else p.op_type for p in session.get_placement()
    )
    _print_op_histogram(out, dict(counts.most_common()), sum(counts.values()), 0)


def _print_op_histogram(out: Console, counts: dict[str, int], nodes: int, nested: int) -> None:
    total = sum(counts.values())
    table = make_table("Operators", "op", "nodes", "share", right=("nodes", "share"))
    for op, count in counts.items():
        table.add_row(escape(op), str(count), percent(count, total))
    out.print(table)
    where = f"{nodes} nodes" + (f" + {nested} in subgraphs" if nested else "")
    out.print(f"{len(counts)} operator types, {where}")


# -- run ---------------------------------------------------------------------------------------


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="The .onnx model file.")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", help="NAME=FILE.npy for one input (repeatable).")] = None,
    random: Annotated[bool, typer.Option(
        "--random", help="Random data for inputs not given with --input.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random data.")] = 0,
    dims: Annotated[list[str] | None, typer.Option(
        "--dim", help="NAME=VALUE for a symbolic dimension (default 1; repeatable).")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Folder to write each output to as <output>.npy.")] = None,
    providers: ProvidersOption = None,
    no_fallback: Annotated[bool, typer.Option(
        "--no-fallback", help="Fail instead of running nodes on the reference fallback.")] = False,
) -> None:
    """Run a model on .npy or random inputs and describe its outputs."""
    from hetrix import InferenceSession, SessionOptions

    out = _out()
    with user_errors():
        files = feeds_mod.parse_pairs(inputs or [], "--input")
        dim_values = feeds_mod.parse_dims(dims or [])
        start = time.perf_counter()
        # one run: a warm-up at load would only run the model twice
        session = InferenceSession(str(model), SessionOptions(disable_fallback=no_fallback,
                                                              warm_up=False),
                                   providers=_providers(providers))
        load_s = time.perf_counter() - start
        feeds = feeds_mod.build_feeds(session.get_inputs(), files, random, seed, dim_values)
        start = time.perf_counter()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outputs = session.run(None, feeds)
        run_s = time.perf_counter() - start
        names = [o.name for o in session.get_outputs()]
        saved = _save_outputs(save, names, outputs) if save is not None else []
    out.print(f"[bold]{escape(str(model))}[/bold]: load+plan {format_seconds(load_s)}, "
              f"run {format_seconds(run_s)}", soft_wrap=True)
    _print_feeds(out, feeds)
    _print_outputs(out, names, outputs)
    _print_placement(out, session.get_placement())
    for path in saved:
        out.print(f"saved {escape(str(path))}", soft_wrap=True)


@app.command()
def profile(
    model: Annotated[Path, typer.Argument(help="The .onnx model file.")],
    runs: Annotated[int, typer.Option(min=1, help="Timed runs after the warm-up.")] = 5,
    warmup: Annotated[int, typer.Option(min=1, help=(
        "Untimed runs first.  Five reach the steady state: a plan specialized to the feeds' "
        "shapes serves from the third run, its direct calls from the fourth, joined calls "
        "from the fifth."))] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    dims: Annotated[list[str] | None, typer.Option(
        "--dim", help="NAME=VALUE for a symbolic dimension (default 1; repeatable).")] = None,
    providers: ProvidersOption = None,
    top: Annotated[int, typer.Option(help="How many of the slowest nodes to list.")] = 15,
    precision: Annotated[str, typer.Option(
        help="fp32, or bf16/fp16 (Hetrix's reduced-precision mode).")] = "fp32",
) -> None:
    """Where a model's time goes: per op and per node, with the GFLOP/s of convolutions and
    matrix products against this machine's float32 GEMM peak through the same library."""
    from hetrix import InferenceSession, SessionOptions

    out = _out()
    with user_errors():
        options = SessionOptions(enable_profiling=True, precision=precision)
        session = InferenceSession(str(model), options, providers=_providers(providers))
        feeds = feeds_mod.build_feeds(session.get_inputs(), {}, True, seed,
                                      feeds_mod.parse_dims(dims or []))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for _ in range(warmup):
                session.run(None, feeds)
            session._timings.clear()  # the warm-up is not part of the profile
            for _ in range(runs):
                session.run(None, feeds)
    peak, library = _gemm_peak_gflops()
    total = sum(seconds for _op, _backend, _calls, seconds in session.profile_summary()) / runs
    out.print(f"[bold]{escape(str(model))}[/bold]: {format_seconds(total)} per run in kernels "
              f"(mean of {runs}); float32 GEMM peak here {peak:.0f} GFLOP/s ({library}, "
              "2048x2048x2048, best of 5)", soft_wrap=True)
    by_op = make_table("By operator", "op", "backend", "calls/run", "ms/run", "share",
                       right=("calls/run", "ms/run", "share"))
    for op, backend, calls, seconds in session.profile_summary():
        by_op.add_row(escape(op), backend, str(calls // runs), f"{seconds / runs * 1e3:.2f}",
                      percent(seconds / runs, total))
    out.print(by_op)
    nodes = make_table(f"Slowest {top} nodes", "node", "op", "library kernel", "ms", "GFLOP/s",
                       "of peak", right=("ms", "GFLOP/s", "of peak"))
    for row in session.profile_nodes()[:top]:
        rate = row["gflops_per_s"]
        nodes.add_row(escape(row["node"] or "-"), row["op_type"], escape(row["kernel"] or "-"),
                      f"{row['mean_ms']:.3f}",
                      f"{rate:.1f}" if rate is not None else "-",
                      f"{rate / peak:.0%}" if rate is not None and peak else "-")
    out.print(nodes)
    for row in session.get_joined_calls()[-1:]:  # the plan that served the timed runs
        if row["joined_calls"]:
            out.print(f"Runs without profiling join {row['joined_steps']} of these "
                      f"{row['steps']} steps into {row['joined_calls']} call(s) that replay "
                      "their kept oneDNN primitives, one library call each (from the second "
                      "run; the table above times the steps one by one).", soft_wrap=True)


def _gemm_peak_gflops(size: int = 2048, repeats: int = 5) -> tuple[float, str]:
    """Best float32 GFLOP/s of a square matmul (after a warm-up call) through the library the
    CPU kernels use for layer products (oneDNN's GEMM with the ``onednn`` extra, else
    PyTorch's, else NumPy's BLAS), and its name.  The best of a few, not the median: a peak
    this noisy VM reaches now and then is still a peak (the median of five 1024-wide products
    once read 96 GFLOP/s here against convolutions at 230)."""
    from hetrix.backends.numpy_cpu.kernels import _dnnl, _library

    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    matmul: Any = np.matmul
    library = "NumPy's BLAS"
    if _library.torch_functional() is not None:
        import torch

        tensor = torch.from_numpy(a)
        matmul, library = (lambda _a, _b: torch.mm(tensor, tensor)), "PyTorch's oneDNN/MKL"
        if _dnnl.available():
            out = np.empty_like(a)
            matmul, library = (lambda _a, _b: _dnnl.gemm(a, a, out, False)), "oneDNN's sgemm"
    matmul(a, a)  # warm-up: thread pool start, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9, library


def _print_feeds(out: Console, feeds: dict[str, Any]) -> None:
    table = make_table("Inputs", "name", "dtype", "shape")
    for name, value in feeds.items():
        shape = list(value.shape) if isinstance(value, np.ndarray) else None
        table.add_row(escape(name), str(getattr(value, "dtype", type(value).__name__)),
                      format_shape(shape))
    out.print(table)


def _print_outputs(out: Console, names: Sequence[str], outputs: Sequence[Any]) -> None:
    table = make_table("Outputs", "name", "dtype", "shape", "min", "max", "mean", "std",
                       right=("min", "max", "mean", "std"))
    non_finite = []
    for name, value in zip(names, outputs, strict=True):
        stats = feeds_mod.output_stats(value)
        if isinstance(value, np.ndarray):
            dtype, shape = str(value.dtype), format_shape(list(value.shape))
        else:
            dtype, shape = stats.get("kind", type(value).__name__), "-"
        table.add_row(escape(name), dtype, shape,
                      *(stats.get(k, "-") for k in ("min", "max", "mean", "std")))
        if stats.get("non-finite", "0") != "0":
            non_finite.append(f"{name} has {stats['non-finite']} NaN/inf values")
    out.print(table)
    for line in non_finite:
        out.print(f"[yellow]{escape(line)}[/yellow]")


def _print_placement(out: Console, placements: Sequence[Any]) -> None:
    by_backend = collections.Counter(p.backend for p in placements)
    parts = ", ".join(f"{count} on {backend}" for backend, count in by_backend.most_common())
    out.print(f"placement: {len(placements)} nodes: {escape(parts or 'none')}")
    moved = collections.Counter((p.op_type, p.backend, p.reason) for p in placements if p.reason)
    for (op_type, backend, reason), count in moved.most_common():
        out.print(f"  [yellow]{count} x {escape(op_type)} -> {escape(backend)}[/yellow]: "
                  f"{escape(reason)}")


def _save_outputs(folder: Path, names: Sequence[str], outputs: Sequence[Any]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for name, value in zip(names, outputs, strict=True):
        if not isinstance(value, np.ndarray):
            raise HetrixError(f"output '{name}' is a {type(value).__name__}, not saved as .npy")
        path = folder / f"{feeds_mod.safe_filename(name)}.npy"
        np.save(path, value, allow_pickle=value.dtype == object)
        saved.append(path)
    return saved


# -- devices -----------------------------------------------------------------------------------


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    measure: Annotated[bool, typer.Option(
        "--measure", help="(Re)measure each device's figures (seconds per device) and cache "
        "them.")] = False,
    size: Annotated[str | None, typer.Option(
        "--size", help="Measurement size: default, or tiny for a smoke run "
        "(default: $HETRIX_MEASURE_SIZE or default).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--device", "-d", help="Only this device, e.g. cpu:0 or cuda:1 (repeatable).")] = None,
) -> None:
    """List the devices Hetrix can run on (CPU, accelerators) with their measured figures.

    Figures (matmul GFLOP/s per dtype, memory and host<->device bandwidth, latencies) are read
    from the cache when the device's fingerprint matches; --measure measures them again.
    """
    from hetrix.devices import get_figures, list_devices, load_figures, measure_config

    try:
        config = measure_config(size) if measure else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--size") from None
    found = _select_devices(list_devices(), only or [])
    entries = []
    for device in found:
        if measure:
            _err().print(f"measuring {device.id} ({escape(device.name)})...", soft_wrap=True)
            figures = get_figures(device, remeasure=True, config=config)
        else:
            figures = load_figures(device)
        entries.append((device, figures))
    if as_json:
        typer.echo(json.dumps([_device_json(d, f) for d, f in entries], indent=2))
        return
    out = _out()
    for device, figures in entries:
        table = make_table(f"{device.id}: {escape(device.name)}", "property", "value")
        for key, value in _device_rows(device) + _figure_rows(figures):
            table.add_row(key, escape(value))
        out.print(table)
    if measure:
        from hetrix.devices.cache import figures_dir

        out.print(f"figures cached in {escape(str(figures_dir()))}", soft_wrap=True)


def _select_devices(found: Sequence[Any], only: Sequence[str]) -> list[Any]:
    """The devices named in ``only`` (``cuda`` means ``cuda:0``), all when it is empty."""
    if not only:
        return list(found)
    wanted = {name if ":" in name else f"{name}:0" for name in only}
    unknown = wanted - {d.id for d in found}
    if unknown:
        known = ", ".join(d.id for d in found)
        raise typer.BadParameter(f"no device {', '.join(sorted(unknown))} here (found: {known})",
                                 param_hint="--device")
    return [d for d in found if d.id in wanted]


def _device_json(device: Any, figures: Any) -> dict[str, Any]:
    from hetrix.devices.cache import cache_file, fingerprint, fingerprint_key

    facts = fingerprint(device)
    return {**device.to_dict(), "fingerprint": facts, "fingerprint_key": fingerprint_key(facts),
            "cache_file": str(cache_file(device, facts)),
            "figures": figures.to_dict() if figures is not None else None}


def _device_rows(device: Any) -> list[tuple[str, str]]:
    rows = [("kind", device.kind), ("memory", human_bytes(device.memory_bytes))]
    if device.kind != "cpu":
        return rows + _accelerator_rows(device)
    physical = device.physical_cores if device.physical_cores is not None else "?"
    rows += [
        ("architecture", device.arch or "?"),
        ("vendor", device.vendor or "?"),
        ("cores", f"{device.logical_cores} logical, {physical} physical, "
                  f"{device.usable_cores} usable by this process"),
        ("available memory", human_bytes(device.available_memory_bytes)),
    ]
    if device.memory_limit_bytes is not None:
        rows.append(("memory limit (cgroup)", human_bytes(device.memory_limit_bytes)))
    source = f" (from {device.feature_source})" if device.feature_source else ""
    rows += [
        ("ISA features", (" ".join(device.features) or "none detected") + source),
        ("NumPy BLAS", " ".join(x for x in (device.blas.name, device.blas.version) if x)),
        ("NumPy SIMD", " ".join(device.numpy_simd) or "-"),
    ]
    if device.blas.config:
        rows.append(("BLAS build", device.blas.config))
    return rows


def _accelerator_rows(device: Any) -> list[tuple[str, str]]:
    labels = (("backend", "backend"), ("library device", "library_device"),
              ("vendor", "vendor"), ("compute capability", "compute_capability"),
              ("compute units", "compute_units"), ("driver", "driver_version"),
              ("runtime", "runtime_version"), ("library version", "library_version"))
    rows = [(label, str(getattr(device, name))) for label, name in labels
            if getattr(device, name, None) not in (None, "")]
    rows += [(key, str(value)) for key, value in getattr(device, "details", {}).items()]
    return rows


def _figure_rows(figures: Any) -> list[tuple[str, str]]:
    if figures is None:
        return [("figures", "not measured for this configuration (hetrix devices --measure)")]
    rows = [(f"matmul {dtype}", f"{value:,.1f} GFLOP/s")
            for dtype, value in figures.matmul_gflops.items()]
    if figures.memory_bandwidth_gbs is not None:
        rows.append(("memory bandwidth", f"{figures.memory_bandwidth_gbs:,.1f} GB/s"))
    for label, values, unit in (
            ("host -> device", figures.host_to_device_gbs, "GB/s"),
            ("device -> host", figures.device_to_host_gbs, "GB/s"),
            ("host -> device latency", figures.host_to_device_latency_us, "µs"),
            ("device -> host latency", figures.device_to_host_latency_us, "µs")):
        if values:
            rows.append((label, ", ".join(f"{k} {v:,.1f} {unit}" for k, v in values.items())))
    if figures.launch_latency_us is not None:
        rows.append(("kernel launch", f"{figures.launch_latency_us:,.1f} µs, "
                     f"{figures.launch_sync_latency_us or 0:,.1f} µs with synchronize"))
    rows.append(("measured", f"{figures.measured_at} ({figures.size} size, "
                 f"{figures.duration_s:.1f} s)"))
    rows += [(f"not measured: {k}", v) for k, v in figures.skipped.items()]
    return rows


# -- check -------------------------------------------------------------------------------------


@app.command()
def check(
    ops: Annotated[list[str] | None, typer.Option(
        "--op", help="Only the cases of this operator, e.g. Conv (repeatable).")] = None,
    cases: Annotated[list[str] | None, typer.Option(
        "--case", help="Only cases whose name starts with this prefix (repeatable).")] = None,
    providers: ProvidersOption = None,
    no_fallback: Annotated[bool, typer.Option(
        "--no-fallback", help="Do not use the reference fallback for missing kernels.")] = False,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Write every case's result to this JSON file.")] = None,
    max_failures: Annotated[int, typer.Option(
        help="How many failures to list (all are in --json).")] = 30,
) -> None:
    """Run the ONNX specification's node test cases and report the pass rate."""
    from hetrix.testing.conformance import run_case

    out = _out()
    with user_errors():
        selected = check_mod.select_cases(ops or [], cases or [])
        provider_list = _providers(providers)
        if provider_list:
            from hetrix.runtime.providers import canonical_name

            for provider in provider_list:
                canonical_name(provider)  # unknown names fail here, not once per case
    results = []
    with _progress(out) as progress:
        task = progress.add_task("spec cases", total=len(selected))
        for case in selected:
            progress.update(task, description=case.name)
            results.append(run_case(case, provider_list, fallback=not no_fallback))
            progress.advance(task)
    _print_check(out, selected, results, ops or [], max_failures)
    if provider_list:
        s = check_mod.summarize(results)
        first = provider_list[0] if isinstance(provider_list[0], str) else provider_list[0][0]
        out.print(f"{s['on_first_provider']} cases ran wholly on {escape(str(first))} (shape "
                  f"arithmetic aside); {s['passed_on_first_provider']} of them passed; the rest "
                  "fell back per node to the next provider (see get_placement())")
    if json_file is not None:
        with user_errors():
            json_file.write_text(json.dumps(check_mod.report(selected, results, ops or []),
                                            indent=1))
        out.print(f"wrote {escape(str(json_file))}")


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}", style="cyan"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


def _print_check(out: Console, cases: Sequence[Any], results: Sequence[Any],
                 only: Sequence[str], max_failures: int) -> None:
    table = make_table("Operators", "op", "cases", "passed", "native",
                       right=("cases", "passed", "native"))
    for row in check_mod.op_stats(cases, results, only):
        table.add_row(escape(row.op), str(row.cases), str(row.passed), str(row.native))
    out.print(table)
    failures = [r for r in results if not r.passed]
    if failures:
        shown = make_table(f"Failures ({len(failures)})", "case", "status", "reason")
        for result in failures[:max_failures]:
            shown.add_row(escape(result.name), result.status, escape(result.reason))
        out.print(shown)
        if len(failures) > max_failures:
            out.print(f"... and {len(failures) - max_failures} more (use --json FILE for all)")
    s = check_mod.summarize(results)
    out.print(f"[bold]passed {s['passed']}/{s['total']} ({percent(s['passed'], s['total'])})"
              f"[/bold]: {s['native']} on Hetrix kernels ({percent(s['native'], s['total'])}), "
              f"{s['via_fallback']} via fallback ({percent(s['via_fallback'], s['total'])}); "
              f"{s['failed']} failed, {s['errors']} errors, {s['unsupported']} unsupported")


# -- demo --------------------------------------------------------------------------------------


@app.command()
def demo(
    model_name: Annotated[str | None, typer.Argument(
        help="One light model, e.g. squeezenet (default: all nine).")] = None,
    vs_onnxruntime: Annotated[bool, typer.Option(
        "--vs-onnxruntime", help="Also time ONNX Runtime on the same model and feeds.")] = False,
    providers: ProvidersOption = None,
) -> None:
    """Run onnx's model-zoo light models and compare each with its expected output."""
    out = _out()
    with user_errors():
        models = demo_mod.select_models(model_name)
        provider_list = _providers(providers)
    if vs_onnxruntime and not demo_mod.onnxruntime_available():
        out.print("[yellow]onnxruntime is not installed: no comparison[/yellow]")
        vs_onnxruntime = False
    results = []
    with _progress(out) as progress:
        task = progress.add_task("models", total=len(models))
        for name, model in models.items():
            def step(what: str, name: str = name) -> None:
                progress.update(task, description=f"{name}: {what}")

            results.append(demo_mod.run_demo_model(model, provider_list, vs_onnxruntime, step))
            progress.advance(task)
    _print_demo(out, results, vs_onnxruntime)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _print_demo(out: Console, results: Sequence[demo_mod.DemoResult], vs_ort: bool) -> None:
    columns = ["model", "ops", "nodes", "load+plan", "run"]
    columns += ["ORT run", "Hetrix/ORT"] if vs_ort else []
    columns += ["max abs err", "max rel err", "result"]
    table = make_table(f"Light models (rtol {demo_mod.RTOL:g}, atol {demo_mod.ATOL:g}; "
                       f"run = median of {demo_mod.TIMED_RUNS} after a warm-up)", *columns,
                       right=[c for c in columns if c not in ("model", "result")])
    for r in results:
        row = [r.name, str(r.ops), str(r.nodes), format_seconds(r.load_s), format_seconds(r.run_s)]
        if vs_ort:
            row += [format_seconds(r.ort_s), f"{r.ratio:.1f}x" if r.ratio is not None else "-"]
        status = "[green]OK[/green]" if r.ok else "[red]FAIL[/red]"
        row += [format_error(r.max_abs), format_error(r.max_rel), status]
        table.add_row(*row)
    out.print(table)
    for r in results:
        if r.fallback_nodes:
            out.print(f"[yellow]{r.name}: {r.fallback_nodes} nodes on the reference fallback"
                      "[/yellow]")
        if r.error:
            out.print(f"[red]{escape(r.name)}: {escape(r.error)}[/red]")
    passed = sum(r.ok for r in results)
    out.print(f"[bold]{passed}/{len(results)} models match their expected outputs[/bold]")


# -- bench (its own module) -------------------------------------------------------------------

bench_mod.register(app)


if __name__ == "__main__":
    app()
