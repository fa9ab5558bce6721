"""A/B of one graph rewrite rule in one process: the model with the rule and without it.

The machine drifts by tens of percent between processes, so both arms are sessions of the same
process, run alternately (the order swapped every round), on the same seeded inputs (those of
``hetrix bench``): arm A built with every pass as shipped, arm B with the named rule declining
every match (the report then lists it under the rejections).  Checks that both arms compute the
same outputs, then prints the median and 25th percentile of each arm and their ratio.

    python benchmarks/ab_rule.py MODEL.onnx "ChannelShuffle" [--runs 200] [--pause 0.1]
        [--batch N] [--threads N] [--precision bf16]

``RULE`` is a rule's name as the optimization report counts it (``hetrix info MODEL
--optimized``): "activation fusion", "ChannelShuffle", "Attention", "Conv+Add", ...
"""

from __future__ import annotations

import argparse
import functools

import _ab  # benchmarks/_ab.py, beside this script
import numpy as np

import hetrix
from hetrix.bench.inputs import make_feeds, model_inputs
from hetrix.passes.rewrite import Reject, Rule


def _rule_classes(name: str) -> list[type[Rule]]:
    """Every Rule subclass whose ``name`` is ``name`` (subclasses that share it included)."""
    found, pending = [], list(Rule.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "name", None) == name:
            found.append(cls)
    return found


def _declining(_self: Rule, _node: object, _ctx: object) -> None:
    raise Reject("switched off for the A/B")


def _session(model: str, threads: int, precision: str,
             without: list[type[Rule]]) -> hetrix.InferenceSession:
    saved = {cls: cls.__dict__.get("match") for cls in without}
    for cls in without:
        cls.match = _declining  # type: ignore[method-assign]
    try:
        return hetrix.InferenceSession(model, hetrix.SessionOptions(
            intra_op_num_threads=threads, precision=precision))
    finally:
        for cls, match in saved.items():
            if match is None:
                del cls.match  # it inherited its match: inherit again
            else:
                cls.match = match  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _ab.add_options(parser)
    parser.add_argument("rule")
    args = parser.parse_args()

    rules = _rule_classes(args.rule)
    if not rules:
        parser.error(f"no rewrite rule is named {args.rule!r}")
    arms = {"with": _session(args.model, args.threads, args.precision, []),
            "without": _session(args.model, args.threads, args.precision, rules)}
    fired = arms["with"].get_optimization_report().count(args.rule)
    if not fired:
        parser.error(f"the rule {args.rule!r} does not fire on {args.model}")
    # the inputs `hetrix bench` makes: seeded, by dtype and name (token ids, masks, images...)
    feeds = make_feeds(model_inputs(args.model), args.batch, {})
    outputs = {name: session.run(None, feeds) for name, session in arms.items()}
    for a, b in zip(outputs["with"], outputs["without"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    for session in arms.values():
        for _ in range(5):
            session.run(None, feeds)

    median = _ab.alternate({name: functools.partial(session.run, None, feeds)
                            for name, session in arms.items()}, args.runs, args.pause)
    print(f"{args.model}: {args.rule!r} fired {fired} times; with/without "
          f"{median['with'] / median['without']:.3f} ({args.runs} alternating runs per arm, "
          f"pause {args.pause} s, {args.precision})")


if __name__ == "__main__":
    main()
