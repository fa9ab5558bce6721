"""``hetrix bench``: time Hetrix against ONNX Runtime or OpenVINO on one model, side by side.

Wire it into the application with ``register(app)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hetrix.errors import HetrixError

_VS_HELP = "Competitor to time alongside Hetrix: onnxruntime or openvino (repeatable)."


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors the user caused: one red line on stderr, exit status 2."""
    try:
        yield
    except (HetrixError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message)}",
                                                    soft_wrap=True)
        raise typer.Exit(2) from None


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def bench(
    model: Annotated[Path, typer.Argument(help="The .onnx model file.")],
    vs: Annotated[list[str] | None, typer.Option("--vs", help=_VS_HELP)] = None,
    batch: Annotated[int, typer.Option(min=1, help="Size of the symbolic batch dim.")] = 1,
    threads: Annotated[int, typer.Option(
        min=0, help="Threads for every runtime (0: each runtime's default).")] = 0,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs per runtime first.")] = 3,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per runtime.")] = 20,
    dims: Annotated[list[str] | None, typer.Option(
        "--dim", help="NAME=VALUE for a symbolic dim other than the batch (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Write every number and the machine's description to this file.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Write a bar chart PNG (needs matplotlib).")] = None,
    providers: Annotated[str | None, typer.Option(
        "--providers", "-p", help="Hetrix providers in priority order, comma-separated.")] = None,
    memory: Annotated[bool, typer.Option(
        "--memory/--no-memory", help="Measure peak RSS growth, each runtime in a fresh process."
    )] = True,
    precision: Annotated[str, typer.Option(
        help="fp32, or bf16/fp16: Hetrix's reduced-precision mode and OpenVINO's matching hint "
        "(ONNX Runtime stays float32); the output difference is reported.")] = "fp32",
    gap: Annotated[float, typer.Option(
        min=0.0, help="Seconds of pause before each run, so that the other runtime's "
        "spinning threads go idle first (0: alternate without pause, each runtime then running "
        "beside the other's spinning threads).")] = 0.1,
    block: Annotated[int, typer.Option(
        min=1, help="Timed runs per turn: 1 alternates run by run, each after the pause (an "
        "idle server); N > 1 gives each runtime turns of one untimed run then N back-to-back "
        "timed runs (a busy server).")] = 1,
) -> None:
    """Time Hetrix and a competitor on the same random inputs, alternating runs.

    Reports latency (median, p10/p90), throughput, peak memory, the ratio and output agreement.
    """
    from hetrix.bench import BenchConfig, count_steps, run_benchmark
    from hetrix.bench import report as report_mod
    from hetrix.cli.feeds import parse_dims

    out = Console(highlight=False)
    with _user_errors():
        config = BenchConfig(str(model), _split(vs), batch, threads, warmup, repeat,
                             parse_dims(dims or []), _split([providers or ""]) or None, seed,
                             memory, precision=precision, gap_s=gap, block=block)
        if plot is not None:
            _check_matplotlib()
        with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=out,
                      transient=True) as progress:
            task = progress.add_task("bench", total=count_steps(config))
            result = run_benchmark(config, lambda text: progress.update(
                task, description=text, advance=1))
    out.print(report_mod.results_table(result))
    for line in report_mod.summary_lines(result):
        out.print(line)
    with _user_errors():
        if json_file is not None:
            report_mod.write_json(result, json_file)
            out.print(f"wrote {escape(str(json_file))}")
        if plot is not None:
            report_mod.write_plot(result, plot)
            out.print(f"wrote {escape(str(plot))}")
    hetrix = result.runtime("hetrix")
    if hetrix is None or hetrix.error:
        raise typer.Exit(1)


def _check_matplotlib() -> None:
    """Fail before the (long) run when --plot cannot be honoured."""
    from hetrix.errors import InvalidArgumentError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidArgumentError(
            "--plot needs matplotlib: pip install matplotlib (or pip install 'hetrix[bench]')"
        ) from None


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to ``app``."""
    app.command("bench")(bench)
