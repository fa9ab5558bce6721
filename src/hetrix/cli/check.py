"""``hetrix check``: the ONNX specification's node test cases run through Hetrix, tallied."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hetrix.testing.conformance import CaseResult, case_ops, collect_cases, summarize


@dataclass
class OpStats:
    """One operator's row: the cases that test it, how many passed, how many natively.

    A case tests the operators its model uses; an ``_expanded`` case (the operator's function
    body) tests the operators of the case it expands.  ``native`` counts passed cases in which
    every node ran on Hetrix's own kernels.
    """

    op: str
    cases: int = 0
    passed: int = 0
    native: int = 0


def select_cases(ops: Sequence[str] = (), prefixes: Sequence[str] = ()) -> list[Any]:
    """Spec cases that test the given operators and/or whose names start with a prefix.

    Both empty: every case.  ``--op Conv`` selects the cases whose model uses Conv
    (``test_conv_*``, ``test_basic_conv_*``...) and the ``_expanded`` variants of those.
    """
    cases = collect_cases()
    if not ops and not prefixes:
        return cases
    wanted = set(ops)
    return [
        case for case, tested in zip(cases, tested_ops(cases), strict=True)
        if wanted & {op.split("::")[-1] for op in tested}
        or any(case.name.startswith(p) for p in prefixes)
    ]


def tested_ops(cases: Sequence[Any]) -> list[list[str]]:
    """The operators each case tests (see :class:`OpStats`), in the order of ``cases``."""
    own = {c.name: case_ops(c) for c in cases}
    tested = []
    for case in cases:
        base = case.name.split("_expanded")[0]
        tested.append(own.get(base, own[case.name]) if base != case.name else own[case.name])
    return tested


def op_stats(
    cases: Sequence[Any], results: Sequence[CaseResult], only: Sequence[str] = ()
) -> list[OpStats]:
    """Per-operator rows, sorted by op name; restricted to the ops in ``only`` when given."""
    rows: dict[str, OpStats] = {}
    wanted = set(only)
    for ops, result in zip(tested_ops(cases), results, strict=True):
        for op in ops:
            if wanted and op.split("::")[-1] not in wanted:
                continue
            row = rows.setdefault(op, OpStats(op))
            row.cases += 1
            row.passed += result.passed
            row.native += result.native
    return sorted(rows.values(), key=lambda r: (r.op.split("::")[-1].lower(), r.op))


def report(
    cases: Sequence[Any], results: Sequence[CaseResult], only: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON document ``hetrix check --json`` writes."""
    return {
        "summary": summarize(results),
        "statuses": dict(collections.Counter(r.status for r in results)),
        "ops": [dataclasses.asdict(row) for row in op_stats(cases, results, only)],
        "cases": [
            {**dataclasses.asdict(r), "fallback_ops": list(r.fallback_ops), "ops": ops}
            for ops, r in zip(tested_ops(cases), results, strict=True)
        ],
    }
