"""What an optimization did: rewrites by pass and rule, node counts, the rejected matches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hetrix.passes.rewrite import Rejection


@dataclass(frozen=True)
class PassRun:
    """One run of one pass: the rewrites by rule and the node counts around it."""

    iteration: int
    name: str
    counts: dict[str, int]
    nodes_before: int
    nodes_after: int
    seconds: float


@dataclass
class OptimizationReport:
    """The record of one :func:`hetrix.passes.optimize` call.

    Invariant: ``runs`` lists every pass run in order; ``rejections`` holds, per pass, the matches
    turned down in its last run (what still did not fire at the fixpoint) and why.
    """

    level: int
    nodes_before: int = 0
    nodes_after: int = 0
    iterations: int = 0
    seconds: float = 0.0
    runs: list[PassRun] = field(default_factory=list)
    rejections: dict[str, list[Rejection]] = field(default_factory=dict)

    def rewrites(self) -> Counter[str]:
        """Rewrites of the whole optimization, by rule name."""
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run.counts)
        return total

    def count(self, rule: str) -> int:
        """How often ``rule`` fired (0 when it never did)."""
        return self.rewrites()[rule]

    def by_pass(self) -> dict[str, Counter[str]]:
        """Rewrites by pass, then by rule, in pipeline order."""
        passes: dict[str, Counter[str]] = {}
        for run in self.runs:
            passes.setdefault(run.name, Counter()).update(run.counts)
        return passes

    def table(self) -> str:
        """The report as a fixed-width text table (``hetrix info --optimized``)."""
        lines = [
            f"graph optimization level {self.level}: {self.nodes_before} -> {self.nodes_after} "
            f"nodes, {self.iterations} iteration(s), {self.seconds:.2f} s",
            f"{'pass':<28} {'rule':<36} {'rewrites':>8} {'nodes +/-':>10}",
        ]
        for name, counts in self.by_pass().items():
            runs = [r for r in self.runs if r.name == name]
            delta = sum(r.nodes_after - r.nodes_before for r in runs)
            nodes = f"{delta:+d}"
            rules = sorted(counts.items(), key=lambda item: -item[1]) or [("-", 0)]
            for index, (rule, n) in enumerate(rules):
                lines.append(
                    f"{name if index == 0 else '':<28} {rule:<36} {n:>8} "
                    f"{nodes if index == 0 else '':>10}"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
