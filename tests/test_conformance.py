"""The ONNX specification's own node test cases: a pass-count floor that may only go up.

Every case of ``onnx.backend.test.case.node.collect_testcases(None)`` runs through a full session
and is compared with its expected outputs at the case's own rtol/atol.  The floor
(``floor.json``) holds the number of passing cases in total and on Hetrix's own kernels (no
reference-evaluator fallback); ``known_failures.txt`` lists every case still failing, each with a
one-line reason.  A case failing that is not listed fails this test, so a regression cannot hide
behind the floor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hetrix.testing.conformance import collect_cases, run_cases, summarize

HERE = Path(__file__).parent / "conformance"


def _known_failures() -> dict[str, str]:
    known = {}
    for line in (HERE / "known_failures.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(":")
            known[name.strip()] = reason.strip()
    return known


@pytest.fixture(scope="module")
def results():
    return run_cases(collect_cases(), fallback=True)


def test_pass_counts_do_not_fall_below_floor(results) -> None:
    floor = json.loads((HERE / "floor.json").read_text())
    summary = summarize(results)
    print("spec cases:", summary)
    assert summary["total"] >= floor["total"], "fewer spec cases collected than recorded"
    assert summary["passed"] >= floor["passed"], summary
    assert summary["native"] >= floor["native"], summary
    assert summary["passed"] / summary["total"] >= 0.95
    assert summary["native"] / summary["total"] >= 0.85


def test_every_failing_case_is_listed_with_a_reason(results) -> None:
    known = _known_failures()
    assert all(known.values()), "every known failure needs a reason"
    unexpected = [
        f"{r.name}: {r.status} {r.reason}" for r in results if not r.passed and r.name not in known
    ]
    assert not unexpected, "new failures:\n" + "\n".join(unexpected)


def test_torch_cpu_backend_passes_the_cases_it_claims() -> None:
    """With providers=["torch:cpu"], nodes torch cannot run fall back to numpy per op; the cases
    that ran wholly on torch are counted, and none of them may fail unless listed."""
    pytest.importorskip("torch")
    floor = json.loads((HERE / "floor.json").read_text())["torch_cpu"]
    results = run_cases(collect_cases(), providers=["torch:cpu"], fallback=True)
    summary = summarize(results)
    print("spec cases on torch:cpu:", summary)
    assert summary["on_first_provider"] >= floor["on_first_provider"], summary
    assert summary["passed_on_first_provider"] >= floor["passed_on_first_provider"], summary
    assert summary["passed"] >= floor["passed"], summary
    known = _known_failures()
    unexpected = [f"{r.name}: {r.reason}" for r in results if not r.passed and r.name not in known]
    assert not unexpected, "new failures on torch:cpu:\n" + "\n".join(unexpected)
