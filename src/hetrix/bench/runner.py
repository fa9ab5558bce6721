"""Time Hetrix and its competitors side by side in one process, on the same seeded inputs.

:func:`run_benchmark` loads every runtime, warms each up, then alternates timed runs
(H, C, H, C, ...) so that machine noise (other processes, frequency changes) hits all runtimes
alike.  It then compares each competitor's outputs with Hetrix's and, unless disabled, measures
each runtime's peak memory in its own fresh process (:mod:`hetrix.bench.memory`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hetrix.bench import inputs as inputs_mod
from hetrix.bench.memory import MemoryStats, measure_memory
from hetrix.bench.runtimes import HETRIX, RunFn, Runtime, get_runtime
from hetrix.bench.runtimes import RUNTIMES as _RUNTIMES
from hetrix.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

RTOL = 1e-3
ATOL = 1e-4
"""Outputs agree when ``|h - c| <= ATOL * max(1, max|c|) + RTOL * |c|`` element-wise."""

StepFn = Callable[[str], None]
"""Progress hook: called with a description once per unit of work (see :func:`count_steps`)."""


@dataclass
class BenchConfig:
    """What to benchmark and how."""

    model: str
    competitors: list[str] = field(default_factory=list)
    batch: int = 1
    threads: int = 0
    warmup: int = 3
    repeat: int = 20
    dims: dict[str, int] = field(default_factory=dict)
    providers: list[str] | None = None
    seed: int = 0
    memory: bool = True
    memory_runs: int = 5
    """Runs in the memory process after loading: Hetrix's steady state comes with its fifth
    (shape specialization from the third, direct calls after a plan's first run, their joined
    replay traced on the next), and the memory it holds then must be counted."""
    precision: str = "fp32"
    """Hetrix's SessionOptions.precision, and OpenVINO's precision hint (ORT stays float32)."""
    gap_s: float = 0.1
    """Pause before each run.  Runtimes keep worker threads spinning after a run returns (ORT's
    pool, OpenVINO's TBB, OpenBLAS); on a small machine those steal the cores the next runtime's
    run needs, inflating both sides' times (measured here: squeezenet 20.6 -> 13.4 ms for Hetrix,
    9.1 -> 4.3 ms for ORT with a 0.1 s pause).  The pause lets them go idle first."""
    block: int = 1
    """Timed runs per turn.  1: the runtimes alternate run by run, each run after the pause (a
    request arriving at an idle server).  N > 1: each turn is one untimed run, which absorbs
    the pause and the switch from the other runtime, then N timed runs back to back (a busy
    server); turns still alternate, so that drift of the machine reaches both runtimes."""


@dataclass
class LatencyStats:
    """Latency of the timed runs in milliseconds."""

    n: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> LatencyStats:
        """Statistics of a list of run times given in seconds."""
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p10, q1, median, q3, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
        return cls(len(ms), float(median), float(p10), float(p90), float(q1), float(q3),
                   float(ms.min()), float(ms.max()), float(ms.mean()))


@dataclass
class RuntimeResult:
    """One runtime's numbers; ``error`` is set (and the numbers absent) when it failed."""

    name: str
    version: str = ""
    load_s: float | None = None
    latency: LatencyStats | None = None
    throughput: float | None = None
    """Items (batch rows) per second at the median latency."""
    memory: MemoryStats | None = None
    threads: str = "default"
    error: str = ""
    memory_error: str = ""


@dataclass
class OutputDiff:
    """How one output of a competitor differs from Hetrix's."""

    name: str
    max_abs: float
    max_rel: float
    agree: bool
    problem: str = ""
    scale: float = 0.0
    """The reference's largest finite magnitude (max |ref|), what ``max_abs`` is measured against
    when precisions differ."""


@dataclass
class Agreement:
    """Whether a competitor's outputs agree with Hetrix's (worst over all outputs)."""

    competitor: str
    agree: bool
    max_abs: float
    max_rel: float
    rtol: float = RTOL
    atol: float = ATOL
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def max_abs_of_scale(self) -> float:
        """The largest difference as a fraction of its output's largest value (worst output):
        the measure for a reduced-precision run, whose rounding float32 tolerances do not allow
        for."""
        return max((d.max_abs / d.scale for d in self.outputs if d.scale > 0), default=0.0)


@dataclass
class BenchResult:
    """Everything one ``hetrix bench`` run measured."""

    config: BenchConfig
    batch: int
    inputs: dict[str, dict[str, Any]]
    runtimes: list[RuntimeResult]
    agreement: list[Agreement]
    date: str

    def runtime(self, name: str) -> RuntimeResult | None:
        """The result of the runtime called ``name``, if it took part."""
        return next((r for r in self.runtimes if r.name == name), None)

    def ratios(self) -> dict[str, float]:
        """Competitor name -> Hetrix median latency / competitor median latency."""
        hetrix = self.runtime(HETRIX)
        if hetrix is None or hetrix.latency is None:
            return {}
        return {r.name: hetrix.latency.median_ms / r.latency.median_ms
                for r in self.runtimes
                if r.name != HETRIX and r.latency is not None and r.latency.median_ms > 0}


def count_steps(config: BenchConfig) -> int:
    """How many times :func:`run_benchmark` calls its progress hook."""
    n = 1 + len(config.competitors)
    runs = sum(len(turn) for turn in _turns(config))
    return n * (1 + runs) + (n if config.memory else 0)


def run_benchmark(config: BenchConfig, on_step: StepFn | None = None) -> BenchResult:
    """Time, compare and (optionally) measure the memory of Hetrix and ``config.competitors``."""
    step = on_step or (lambda _text: None)
    path = str(Path(config.model))
    if not Path(path).is_file():
        raise InvalidArgumentError(f"model file '{path}' does not exist")
    runtimes = [_RUNTIMES[HETRIX], *(_unique_competitors(config.competitors))]
    specs = inputs_mod.model_inputs(path)
    feeds = inputs_mod.make_feeds(specs, config.batch, config.dims, config.seed)
    batch = inputs_mod.effective_batch(specs, feeds)
    if batch != config.batch and not inputs_mod.has_symbolic_batch(specs):
        logger.warning("the model's batch is fixed at %d: --batch %d ignored", batch, config.batch)
    results = [RuntimeResult(r.name, version=_version(r)) for r in runtimes]
    with _quiet():
        outputs = _time_all(runtimes, results, path, feeds, config, batch, step)
    agreement = _agreements(results, outputs)
    if config.memory:
        _measure_all(results, path, feeds, config, step)
    described = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return BenchResult(config, batch, described, results, agreement, now)


def _unique_competitors(names: Sequence[str]) -> list[Runtime]:
    found: list[Runtime] = []
    for name in names:
        runtime = get_runtime(name)
        if runtime.name != HETRIX and runtime not in found:
            found.append(runtime)
    return found


def _version(runtime: Runtime) -> str:
    try:
        return runtime.version()
    except ImportError:
        return "not installed"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence NumPy floating-point warnings (random inputs overflow some ops) while timing."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _time_all(
    runtimes: Sequence[Runtime], results: Sequence[RuntimeResult], path: str,
    feeds: Mapping[str, np.ndarray], config: BenchConfig, batch: int, step: StepFn,
) -> dict[str, list[Any]]:
    """Load every runtime, warm up, alternate the timed runs; the last outputs by runtime."""
    runs: dict[str, RunFn] = {}
    for runtime, result in zip(runtimes, results, strict=True):
        step(f"{runtime.name}: load")
        fn = _guard(result, functools.partial(_timed_load, runtime, path, feeds, config, result))
        if fn is not None:
            runs[runtime.name] = fn
    outputs: dict[str, list[Any]] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    by_name = {r.name: r for r in results}
    for turn in _turns(config):
        for name in list(runs):
            if config.gap_s > 0:
                time.sleep(config.gap_s)
            for label, timed_run in turn:
                step(f"{name}: {label}")
                timed = _guard(by_name[name], functools.partial(_timed_run, runs[name], feeds))
                if timed is None:
                    del runs[name]
                    break
                outputs[name], seconds = timed
                if timed_run:
                    times[name].append(seconds)
    for name, seconds in times.items():
        if seconds and not by_name[name].error:
            stats = LatencyStats.from_seconds(seconds)
            by_name[name].latency = stats
            by_name[name].throughput = batch / (stats.median_ms / 1e3)
    return outputs


def _turns(config: BenchConfig) -> list[list[tuple[str, bool]]]:
    """The runs of each turn, as (progress label, timed): the warm-up runs one per turn, then
    the timed runs in turns of ``config.block`` (see :class:`BenchConfig`)."""
    turns = [[(f"warm-up {i + 1}", False)] for i in range(config.warmup)]
    done = 0
    while done < config.repeat:
        size = min(config.block, config.repeat - done)
        settle = [("settle run", False)] if config.block > 1 else []
        turns.append(settle + [(f"run {done + i + 1}", True) for i in range(size)])
        done += size
    return turns


def _timed_load(
    runtime: Runtime, path: str, feeds: Mapping[str, np.ndarray], config: BenchConfig,
    result: RuntimeResult,
) -> RunFn:
    # the load alone: the runtime's package and its compute libraries imported first, for
    # every runtime alike (ONNX Runtime's import maps its whole native library; Hetrix imports
    # PyTorch and oneDNN's library on first use, about a second here, which would otherwise
    # count as the first model's load)
    runtime.prepare()
    start = time.perf_counter()
    fn = runtime.load(path, feeds, config.threads, config.providers, config.precision)
    result.load_s = time.perf_counter() - start
    result.threads = f"{config.threads} threads" if config.threads else "default"
    return fn


def _timed_run(fn: RunFn, feeds: Mapping[str, np.ndarray]) -> tuple[list[Any], float]:
    start = time.perf_counter()
    out = fn(feeds)
    return out, time.perf_counter() - start


def _guard(result: RuntimeResult, action: Callable[[], Any]) -> Any:
    """Run ``action``; on failure record the error on ``result`` and return None."""
    try:
        return action()
    except Exception as exc:  # one runtime failing must not stop the others
        logger.debug("%s failed", result.name, exc_info=True)
        result.error = result.error or f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return None


def _agreements(results: Sequence[RuntimeResult],
                outputs: Mapping[str, list[Any]]) -> list[Agreement]:
    hetrix = outputs.get(HETRIX)
    if hetrix is None:
        return []
    return [compare_outputs(r.name, hetrix, outputs[r.name])
            for r in results if r.name != HETRIX and r.name in outputs]


def compare_outputs(competitor: str, ours: Sequence[Any], theirs: Sequence[Any],
                    names: Sequence[str] | None = None) -> Agreement:
    """Compare Hetrix's outputs with a competitor's (the reference), output by output."""
    if len(ours) != len(theirs):
        diff = OutputDiff("*", float("nan"), float("nan"), False,
                          f"{len(ours)} outputs vs {len(theirs)}")
        return Agreement(competitor, False, float("nan"), float("nan"), outputs=[diff])
    labels = list(names) if names else [str(i) for i in range(len(ours))]
    diffs = [_diff(label, np.asarray(a), np.asarray(b))
             for label, a, b in zip(labels, ours, theirs, strict=True)]
    return Agreement(competitor, all(d.agree for d in diffs),
                     max((d.max_abs for d in diffs), default=0.0),
                     max((d.max_rel for d in diffs), default=0.0), outputs=diffs)


def _diff(name: str, ours: np.ndarray, ref: np.ndarray) -> OutputDiff:
    if ours.shape != ref.shape:
        return OutputDiff(name, float("nan"), float("nan"), False,
                          f"shape {list(ours.shape)} vs {list(ref.shape)}")
    if ours.size == 0:
        return OutputDiff(name, 0.0, 0.0, True)
    if ours.dtype.kind not in "biufc" or ref.dtype.kind not in "biufc":
        same = bool(np.array_equal(ours, ref))
        return OutputDiff(name, 0.0 if same else float("nan"), 0.0 if same else float("nan"),
                          same, "" if same else "values differ")
    a, b = ours.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(a - b)
    finite = np.isfinite(b)
    scale = float(np.abs(b[finite]).max()) if finite.any() else 1.0
    atol = ATOL * max(1.0, scale)
    max_abs = float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0
    max_rel = float(np.nanmax(diff / np.maximum(np.abs(b), atol))) if max_abs else 0.0
    agree = bool(np.allclose(a, b, rtol=RTOL, atol=atol, equal_nan=True))
    return OutputDiff(name, max_abs, max_rel, agree, scale=scale if finite.any() else 0.0)


def _measure_all(results: Sequence[RuntimeResult], path: str, feeds: Mapping[str, np.ndarray],
                 config: BenchConfig, step: StepFn) -> None:
    """Peak memory of each runtime that ran, each in its own spawned process."""
    for result in results:
        step(f"{result.name}: memory (fresh process)")
        if result.error:
            continue
        try:
            result.memory = measure_memory(result.name, path, feeds, config.threads,
                                           config.providers if result.name == HETRIX else None,
                                           config.memory_runs, config.precision)
        except Exception as exc:  # memory is a bonus: its failure keeps the timings
            logger.debug("memory of %s failed", result.name, exc_info=True)
            result.memory_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
