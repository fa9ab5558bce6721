"""Latency after an idle pause, each runtime alone in a process of its own.

A request that arrives after a quiet moment meets idle worker threads and cold caches; a
server under load does not.  This script times both: each configuration runs in a fresh Python
process (so runtimes never share threads, caches or allocators), first ``--runs`` runs each
after a ``--pause`` of sleep, then as many back to back, and reports the medians and the 90th
percentile after the pause.  Configurations take turns, ``--rounds`` times, so that the
machine's drift touches all of them alike.

``--unbound`` adds Hetrix with its OpenMP workers left unbound (``OMP_PROC_BIND=false``), the
setting before Hetrix bound them (see ``hetrix/backends/torch_setup.py``).

    python benchmarks/idle_latency.py MODEL.onnx [--vs onnxruntime] [--unbound] [--pause 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_CHILD_MARK = "idle-latency-result: "


def _child(model: str, runtime: str, pause: float, runs: int, batch: int) -> None:
    """Load ``model`` with ``runtime`` here and print the timings as one JSON line."""
    import numpy as np

    if runtime == "hetrix":
        import hetrix

        session = hetrix.InferenceSession(model)
        inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
        run = session.run
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
        run = session.run
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape, type_name in inputs:
        dims = [d if isinstance(d, int) else batch for d in shape]
        feeds[name] = (rng.standard_normal(dims).astype(np.float32) if "float" in type_name
                       else np.ones(dims, np.int64))
    for _ in range(3):
        run(None, feeds)
    after_pause, back_to_back = [], []
    for _ in range(runs):
        time.sleep(pause)
        start = time.perf_counter()
        run(None, feeds)
        after_pause.append(time.perf_counter() - start)
    for _ in range(runs):
        start = time.perf_counter()
        run(None, feeds)
        back_to_back.append(time.perf_counter() - start)
    print(_CHILD_MARK + json.dumps({"after_pause": after_pause, "back_to_back": back_to_back}))


def _measure(model: str, runtime: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", runtime, model, "--pause", str(args.pause),
               "--runs", str(args.runs), "--batch", str(args.batch)]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_CHILD_MARK):
            return dict(json.loads(line[len(_CHILD_MARK):]))
    raise RuntimeError(f"{runtime} failed: {done.stderr.strip().splitlines()[-1:]}")


def _ms(values: list[float], q: float | None = None) -> float:
    if q is None:
        return statistics.median(values) * 1e3
    return statistics.quantiles(values, n=10)[int(q * 10) - 1] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--vs", action="append", default=[], choices=["onnxruntime"])
    parser.add_argument("--unbound", action="store_true",
                        help="also Hetrix with OMP_PROC_BIND=false (workers not bound)")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds before each run")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.model, args.child, args.pause, args.runs, args.batch)
        return
    configurations = [("hetrix", "hetrix", {})]
    if args.unbound:
        configurations.append(("hetrix, unbound", "hetrix", {"OMP_PROC_BIND": "false"}))
    configurations += [(name, name, {}) for name in args.vs]
    print(f"{os.path.basename(args.model)}, batch {args.batch}: {args.runs} runs after a "
          f"{args.pause} s pause, then {args.runs} back to back; one fresh process per line")
    print(f"{'round':>5}  {'configuration':18} {'after pause':>12} {'p90':>8} {'back to back':>13}")
    for round_ in range(1, args.rounds + 1):
        for label, runtime, env in configurations:
            result = _measure(args.model, runtime, env, args)
            pause, busy = result["after_pause"], result["back_to_back"]
            print(f"{round_:>5}  {label:18} {_ms(pause):9.2f} ms {_ms(pause, 0.9):5.2f} ms "
                  f"{_ms(busy):10.2f} ms")


if __name__ == "__main__":
    main()
