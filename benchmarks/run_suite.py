"""The Hetrix benchmark suite: Hetrix vs ONNX Runtime (and OpenVINO) on a fixed set of models.

    python benchmarks/run_suite.py            # the full suite (minutes)
    python benchmarks/run_suite.py --quick    # smoke run: 1 warm-up, 3 timed runs, sequence 32

Models: onnx's nine light model-zoo CNNs (batch 1; batch 8 on a copy with a symbolic batch where
no node pins it), BERT-base and GPT-2 small with random weights (``hetrix.testing.models``),
a MobileNetV2 and a graph of 1,200 tiny nodes (``suite_models.py``).  Exported models are cached
in ``benchmarks/.cache/``.  Prints a table and writes ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hetrix.backends.torch_setup import set_openmp_spin
from hetrix.bench import BenchConfig, BenchResult, count_steps, run_benchmark
from hetrix.bench.report import machine_info, package_versions
from hetrix.bench.runtimes import HETRIX, ONNXRUNTIME, OPENVINO, RUNTIMES

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import suite_models  # noqa: E402  (next to this script)

# the exporters here may import torch before Hetrix does: give OpenMP the thread policy Hetrix
# itself sets (hetrix.backends.torch_setup), so that the suite times what users get
set_openmp_spin()

logger = logging.getLogger("hetrix.benchmarks")

CACHE = HERE / ".cache"
BATCHES = (1, 8)


@dataclass
class Entry:
    """One model of the suite: how to get its file, its batches, its symbolic dims."""

    name: str
    build: Callable[[], Path]
    batch8: Callable[[], tuple[Path | None, str]] | None = None
    """Returns (model file with a symbolic batch or None, note); None: the model's own file."""
    dims: dict[str, int] = field(default_factory=dict)


@dataclass
class Row:
    """One line of the results table."""

    model: str
    batch: int
    result: BenchResult | None = None
    note: str = ""


# -- models ------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """``benchmarks/.cache``, created with a ``.gitignore`` of ``*`` so git never picks it up."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.is_file():
        ignore.write_text("# exported benchmark models (large): never commit\n*\n")
    return CACHE


def _cached(name: str, make: Callable[[Path], object]) -> Path:
    """``CACHE/name``, made by ``make(path)`` the first time."""
    path = _cache_dir() / name
    if not path.is_file():
        logger.info("building %s", path)
        partial = path.with_suffix(".partial.onnx")
        make(partial)
        partial.replace(path)
    return path


def _light_entries() -> list[Entry]:
    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    entries = []
    for path in sorted(folder.glob("light_*.onnx")):
        name = path.stem.removeprefix("light_")
        entries.append(Entry(name, functools.partial(Path, path),
                             functools.partial(_light_batch8, path)))
    return entries


def _light_batch8(path: Path) -> tuple[Path | None, str]:
    target = _cache_dir() / f"{path.stem}_symbolic_batch.onnx"
    if target.is_file():
        return target, ""
    reason = suite_models.make_batch_symbolic(path, target)
    return (None, f"batch fixed at 1: {reason}") if reason else (target, "")


def _transformer_exporters() -> tuple[Callable[..., object], Callable[..., object]]:
    try:
        from hetrix.testing.models import export_bert, export_gpt2
    except ImportError as exc:
        raise SystemExit("hetrix.testing.models (export_bert/export_gpt2) is missing: "
                         f"{exc}") from None
    return export_bert, export_gpt2


def entries(sequence: int) -> list[Entry]:
    """Every model of the suite, in table order."""
    export_bert, export_gpt2 = _transformer_exporters()
    seq = {"sequence": sequence}
    return [
        *_light_entries(),
        Entry("mobilenet_v2", lambda: _cached("mobilenet_v2.onnx", suite_models.export_mobilenet)),
        Entry("bert_base", lambda: _cached("bert_base.onnx",
                                           lambda p: export_bert(p, size="base")), dims=seq),
        Entry("gpt2_small", lambda: _cached("gpt2_small.onnx",
                                            lambda p: export_gpt2(p, size="small")), dims=seq),
        Entry("small_ops_1200", lambda: _cached(
            "small_ops.onnx", lambda p: onnx.save(suite_models.make_small_ops_model(), str(p)))),
    ]


# -- running -----------------------------------------------------------------------------------


def _competitors(openvino: bool) -> list[str]:
    names = [ONNXRUNTIME]
    if openvino and RUNTIMES[OPENVINO].available():
        names.append(OPENVINO)
    return names


def _model_for(entry: Entry, batch: int) -> tuple[Path | None, str]:
    if batch == 1 or entry.batch8 is None:
        return entry.build(), ""
    return entry.batch8()


def run_suite(args: argparse.Namespace, console: Console) -> list[Row]:
    """Benchmark every (model, batch) pair; failures become rows with a note."""
    selected = [e for e in entries(args.sequence)
                if not args.models or any(m in e.name for m in args.models)]
    pairs = [(e, b) for e in selected for b in args.batches]
    rows = []
    with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        overall = progress.add_task("suite", total=len(pairs))
        for entry, batch in pairs:
            progress.update(overall, description=f"{entry.name} batch {batch}")
            rows.append(_run_one(entry, batch, args, progress))
            progress.advance(overall)
    return rows


def _run_one(entry: Entry, batch: int, args: argparse.Namespace, progress: Progress) -> Row:
    row = Row(entry.name, batch)
    try:
        path, row.note = _model_for(entry, batch)
    except Exception as exc:  # an export failing must not stop the suite
        logger.debug("building %s failed", entry.name, exc_info=True)
        row.note = f"model not built: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        return row
    if path is None:
        return row
    config = BenchConfig(str(path), _competitors(not args.no_openvino), batch, args.threads,
                         args.warmup, args.repeat, dict(entry.dims), seed=0, memory=args.memory,
                         precision=args.precision, block=args.block)
    task = progress.add_task("", total=count_steps(config))
    try:
        row.result = run_benchmark(config, lambda text: progress.update(
            task, description=f"  {text}", advance=1))
    except Exception as exc:  # e.g. inputs that cannot be generated: a row with a note
        logger.debug("benchmarking %s failed", entry.name, exc_info=True)
        row.note = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        progress.remove_task(task)
    return row


# -- reporting ---------------------------------------------------------------------------------


def _median(row: Row, runtime: str) -> float | None:
    result = row.result.runtime(runtime) if row.result else None
    return result.latency.median_ms if result and result.latency else None


def _ratio(row: Row, competitor: str = ONNXRUNTIME) -> float | None:
    ours, theirs = _median(row, HETRIX), _median(row, competitor)
    return ours / theirs if ours and theirs else None


def _agree(row: Row) -> str:
    if row.result is None:
        return "-"
    found = [a for a in row.result.agreement if a.competitor == ONNXRUNTIME]
    if not found:
        return "-"
    if row.result.config.precision != "fp32":
        # reduced precision against ORT's float32: the measured difference, not a verdict
        return f"{100 * found[0].max_abs_of_scale:.2g}% of max"
    return "yes" if found[0].agree else f"NO ({found[0].max_abs:.2g})"


def _notes(row: Row) -> str:
    notes = [row.note] if row.note else []
    if row.result:
        notes += [f"{r.name}: {r.error}" for r in row.result.runtimes if r.error]
    return "; ".join(notes)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def _memory(row: Row, runtime: str) -> float | None:
    result = row.result.runtime(runtime) if row.result else None
    return result.memory.peak_growth_mb if result and result.memory else None


COLUMNS = ("model", "batch", "Hetrix ms", "ORT ms", "ratio", "OpenVINO ms", "vs OpenVINO",
           "agree", "notes")
MEMORY_COLUMNS = ("Hetrix MiB", "ORT MiB")


def table_cells(row: Row, memory: bool) -> list[str]:
    """The cells of one row, in :data:`COLUMNS` order (memory columns before the notes)."""
    ratio, vs_openvino = _ratio(row), _ratio(row, OPENVINO)
    cells = [row.model, str(row.batch), _fmt(_median(row, HETRIX)),
             _fmt(_median(row, ONNXRUNTIME)), "-" if ratio is None else f"{ratio:.2f}x",
             _fmt(_median(row, OPENVINO)),
             "-" if vs_openvino is None else f"{vs_openvino:.2f}x", _agree(row)]
    if memory:
        cells += [_fmt(_memory(row, HETRIX)), _fmt(_memory(row, ONNXRUNTIME))]
    return [*cells, _notes(row)]


def geomean_ratio(rows: Sequence[Row], batch: int,
                  competitor: str = ONNXRUNTIME) -> tuple[float | None, int]:
    """Geometric mean of Hetrix/competitor over the rows at ``batch`` that have both times."""
    ratios = [r for row in rows
              if row.batch == batch and (r := _ratio(row, competitor)) is not None]
    if not ratios:
        return None, 0
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)), len(ratios)


def _columns(memory: bool) -> list[str]:
    return [*COLUMNS[:-1], *(MEMORY_COLUMNS if memory else ()), COLUMNS[-1]]


def print_table(console: Console, rows: Sequence[Row], memory: bool) -> None:
    """The results as a rich table, then the geomean ratios."""
    table = Table(title="Hetrix vs ONNX Runtime (median latency)", title_justify="left")
    for column in _columns(memory):
        table.add_column(column, justify="left" if column in ("model", "notes") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*table_cells(row, memory))
    console.print(table)
    for line in geomean_lines(rows):
        console.print(line)


def geomean_lines(rows: Sequence[Row]) -> list[str]:
    """``geomean Hetrix/ORT at batch N: R x over K models`` for each batch."""
    lines = []
    for competitor, label in ((ONNXRUNTIME, "ORT"), (OPENVINO, "OpenVINO")):
        for batch in sorted({row.batch for row in rows}):
            value, count = geomean_ratio(rows, batch, competitor)
            if count:
                lines.append(f"geomean Hetrix/{label} at batch {batch}: {value:.2f}x "
                             f"over {count} models")
    return lines


def write_markdown(path: Path, rows: Sequence[Row], args: argparse.Namespace,
                   command: str) -> None:
    """``RESULTS.md``: machine, date, versions, command, the table and the geomeans."""
    machine = machine_info()
    versions = {k: v for k, v in package_versions().items() if v}
    columns = _columns(args.memory)
    lines = [
        "# Hetrix benchmark results", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- machine: {machine.get('cpu')}, {machine.get('logical_cores')} logical cores "
        f"({machine.get('usable_cores', '?')} usable), {machine.get('platform')}, "
        f"Python {machine.get('python')}, BLAS {machine.get('blas', '?')}",
        "- versions: " + ", ".join(f"{k} {v.split('-')[0]}" for k, v in versions.items()),
        f"- settings: {args.warmup} warm-up + {args.repeat} timed runs per runtime, "
        + ("alternating, with a 0.1 s pause before each run so that the previous runtime's "
           "spinning worker threads are idle; " if args.block == 1 else
           f"in alternating turns of one untimed run then {args.block} timed runs back to back "
           "(a busy server), with a 0.1 s pause before each turn; ") +
        f"threads {args.threads or 'default'}; precision {args.precision} (Hetrix's "
        "SessionOptions.precision and OpenVINO's inference precision hint; ORT is float32); "
        f"transformer sequence length {args.sequence}; "
        "random seeded inputs; ratio = Hetrix median / ORT median (lower is better)"
        + ("; agree = Hetrix's largest difference from ORT's float32 outputs, as a share of "
           "the output's largest value (float32 tolerances do not apply to a reduced "
           "precision)" if args.precision != "fp32" else ""),
        "", "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("model", "notes") else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in table_cells(r, args.memory)) + " |"
              for r in rows]
    lines += ["", *(f"- {line}" for line in geomean_lines(rows)), ""]
    path.write_text("\n".join(lines))


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The suite's options; ``--quick`` changes the defaults of warm-up, repeat and sequence."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 warm-up, 3 timed runs, sequence length 32")
    parser.add_argument("--models", nargs="*", default=[],
                        help="only models whose name contains one of these")
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument("--threads", type=int, default=0, help="0: each runtime's default")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--sequence", type=int, help="transformer sequence length")
    parser.add_argument("--block", type=int, default=1,
                        help="timed runs per turn: 1 alternates run by run after a pause (an "
                        "idle server); N > 1 times N back-to-back runs per turn (a busy server)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak RSS growth (a fresh process per runtime, slow)")
    parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="Hetrix's precision and OpenVINO's hint (ORT stays float32)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.repeat = args.repeat if args.repeat is not None else (3 if quick else 10)
    args.sequence = args.sequence if args.sequence is not None else (32 if quick else 128)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the suite, print the table, write the Markdown report."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    console = Console(highlight=False)
    console = Console(highlight=False, width=max(console.width, 140))
    rows = run_suite(args, console)
    print_table(console, rows, args.memory)
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/run_suite.py",
                                                *(sys.argv[1:] if argv is None else argv)])
    write_markdown(args.output, rows, args, command)
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
