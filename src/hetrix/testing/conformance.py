"""The ONNX specification's own test cases, run through Hetrix.

Every case of ``onnx.backend.test.case.node.collect_testcases(None)`` is a small model with input
and expected output data.  :func:`run_case` runs one through a full :class:`InferenceSession` and
compares every output with the expected one at the case's rtol/atol (dtype and shape must match
too).  A case passes "natively" when every node ran on Hetrix's own kernels, and "via fallback" when
some node needed onnx's reference evaluator.

Command line (used while writing kernels)::

    python -m hetrix.testing.conformance --op Relu --op Conv -v
"""

from __future__ import annotations

import argparse
import collections
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PASS, FAIL, UNSUPPORTED, ERROR = "pass", "fail", "unsupported", "error"


@dataclass
class CaseResult:
    """The outcome of one spec case."""

    name: str
    status: str
    reason: str = ""
    fallback_ops: tuple[str, ...] = ()
    on_first_provider: bool = False
    """Every node ran on the session's first provider (shape arithmetic kept on the CPU aside)."""

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def native(self) -> bool:
        """Passed with every node on Hetrix's own kernels."""
        return self.passed and not self.fallback_ops


def collect_cases(prefixes: Sequence[str] = ()) -> list[Any]:
    """The spec's node test cases, optionally only those whose name starts with a prefix."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            cases = node.collect_testcases(None)
    if prefixes:
        cases = [c for c in cases if any(c.name.startswith(p) for p in prefixes)]
    return sorted(cases, key=lambda c: c.name)


def case_ops(case: Any) -> list[str]:
    """The operators a case's model uses at top level, e.g. ``['Conv']``."""
    return sorted(
        {(n.domain + "::" if n.domain else "") + n.op_type for n in case.model.graph.node}
    )


def run_case(
    case: Any, providers: Sequence[str] | None = None, fallback: bool = True
) -> CaseResult:
    """Run one case and compare with its expected outputs."""
    from hetrix import InferenceSession, SessionOptions, UnsupportedOperatorError

    options = SessionOptions(enable_reference_fallback=fallback)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            session = InferenceSession(case.model, options, providers=providers)
    except UnsupportedOperatorError as exc:
        return CaseResult(case.name, UNSUPPORTED, str(exc).splitlines()[-1].strip())
    except Exception as exc:
        return CaseResult(case.name, ERROR, f"load: {type(exc).__name__}: {exc}"[:300])
    placement = session.get_placement()
    fallback_ops = tuple(
        sorted({p.op_type for p in placement if p.backend.startswith("onnx-reference")})
    )
    first = session.get_providers()[0]
    on_first = all(p.backend == first or p.reason.startswith("shape arithmetic") for p in placement)
    input_names = [i.name for i in case.model.graph.input]
    output_names = [o.name for o in case.model.graph.output]
    for raw_inputs, raw_expected in case.data_sets:
        inputs = [_normalize(value) for value in raw_inputs]
        expected = [_normalize(value) for value in raw_expected]
        feeds = dict(zip(input_names, inputs))
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                actual = session.run(output_names, feeds)
        except Exception as exc:
            return CaseResult(
                case.name, ERROR, f"run: {type(exc).__name__}: {exc}"[:300], fallback_ops, on_first
            )
        for name, want, got in zip(output_names, expected, actual):
            problem = compare(want, got, case.rtol, case.atol)
            if problem:
                return CaseResult(
                    case.name, FAIL, f"output '{name}': {problem}", fallback_ops, on_first
                )
    return CaseResult(case.name, PASS, "", fallback_ops, on_first)


def _normalize(value: Any) -> Any:
    """Spec data holds numpy arrays, numpy scalars, TensorProtos, lists (sequences) or None."""
    import onnx
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def compare(expected: Any, actual: Any, rtol: float, atol: float) -> str:
    """Empty string when ``actual`` matches ``expected``, else what differs."""
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"expected a sequence of {len(expected)}, got {_kind(actual)}"
        for index, (want, got) in enumerate(zip(expected, actual)):
            problem = compare(want, got, rtol, atol)
            if problem:
                return f"sequence item {index}: {problem}"
        return ""
    if expected is None:
        return "" if actual is None else f"expected an empty optional, got {_kind(actual)}"
    want = np.asarray(expected)
    if not isinstance(actual, np.ndarray):
        return f"expected an ndarray, got {_kind(actual)}"
    if want.dtype != actual.dtype:
        return f"dtype {actual.dtype}, expected {want.dtype}"
    if want.shape != actual.shape:
        return f"shape {list(actual.shape)}, expected {list(want.shape)}"
    if want.dtype == object or want.dtype.kind in "SUb":
        return "" if np.array_equal(want, actual) else "values differ"
    if want.dtype.kind in "iu":
        want64 = want.astype(np.float64)
        diff = np.abs(want64 - actual.astype(np.float64))
        ok = np.all(diff <= atol + rtol * np.abs(want64))
        return "" if ok else f"max abs diff {diff.max()}"
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2**-6)  # two bfloat16 ulps: the rule of onnx's own backend test runner
    want64, got64 = want.astype(np.float64), actual.astype(np.float64)
    if want.dtype.kind == "c":
        want64, got64 = want.astype(np.complex128), actual.astype(np.complex128)
    if np.allclose(got64, want64, rtol=rtol, atol=atol, equal_nan=True):
        return ""
    diff = np.abs(got64 - want64)
    finite = diff[np.isfinite(diff)]
    worst = finite.max() if finite.size else float("nan")
    return f"values differ (max abs diff {worst:.3g}, rtol {rtol}, atol {atol})"


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype}{list(value.shape)}"
    return type(value).__name__


def run_cases(
    cases: Iterable[Any], providers: Sequence[str] | None = None, fallback: bool = True
) -> list[CaseResult]:
    """Run each case; the list follows the input order."""
    return [run_case(case, providers, fallback) for case in cases]


def summarize(results: Sequence[CaseResult]) -> dict[str, int]:
    """Counts: total, passed, native (own kernels only), via_fallback, each failure status, and
    the cases that ran wholly on the first provider (how many, how many of those passed)."""
    counts = collections.Counter(r.status for r in results)
    native = sum(r.native for r in results)
    passed = counts[PASS]
    return {
        "total": len(results),
        "passed": passed,
        "native": native,
        "via_fallback": passed - native,
        "failed": counts[FAIL],
        "errors": counts[ERROR],
        "unsupported": counts[UNSUPPORTED],
        "on_first_provider": sum(r.on_first_provider for r in results),
        "passed_on_first_provider": sum(r.on_first_provider and r.passed for r in results),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ONNX spec's node test cases on Hetrix")
    parser.add_argument("--op", action="append", default=[], help="operator, e.g. Conv")
    parser.add_argument("--case", action="append", default=[], help="case name prefix")
    parser.add_argument("--fallback", action="store_true", help="allow onnx reference fallback")
    parser.add_argument("--provider", action="append", default=None, help="provider name")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    prefixes = [f"test_{op.lower()}" for op in args.op] + list(args.case)
    cases = collect_cases(prefixes)
    if args.op:  # test_add also matches test_addmul...: keep cases that use one of the ops
        wanted = set(args.op)
        cases = [
            c
            for c in cases
            if wanted & {o.split("::")[-1] for o in case_ops(c)} or "_expanded" in c.name
        ]
    results = run_cases(cases, args.provider, args.fallback)
    for result in results:
        if args.verbose or not result.passed:
            via = f" [fallback: {','.join(result.fallback_ops)}]" if result.fallback_ops else ""
            print(f"{result.status.upper():11} {result.name}{via} {result.reason}")
    summary = summarize(results)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
