"""Local rewrite rules and the pass that applies them.

A :class:`Rule` has the three parts of a fusion: a *pattern* (the op types of its anchor node,
then :meth:`Rule.match` walking from it), a *check* (``match`` raises :class:`Reject` with the
reason when a precondition fails) and a *rewrite* (:meth:`Rule.apply`).  :class:`RewritePass`
runs its rules (a subclass names their classes in ``rule_types``) over every graph of a
model, counts what fired by rule name and keeps the rejections, so ``hetrix info --optimized``
can say why a fusion did not fire::

    class ConvRelu(Rule):
        name = "Conv+Relu"
        op_types = ("Relu",)

        def match(self, node, ctx):
            conv = producer(node.inputs[0])
            if not is_op(conv, "Conv"):
                raise Reject("input is not produced by a Conv")
            return conv, node

        def apply(self, match, ctx): ...
"""

from __future__ import annotations

import abc
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir

from hetrix.passes._ir import HETRIX_DOMAIN, normal_domain, opset

logger = logging.getLogger(__name__)


class Reject(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :meth:`Rule.match` when the pattern or a precondition does not hold."""


@dataclass(frozen=True)
class Rejection:
    """One match a rule turned down, and why."""

    rule: str
    node: str
    reason: str


@dataclass
class RewriteContext:
    """What rules may read and change besides the graph: the model's opsets and imports."""

    model: ir.Model

    def opset(self, domain: str = "") -> int | None:
        """The version the model imports for ``domain`` (None when it does not import it)."""
        return opset(self.model, domain)

    def import_hetrix(self) -> None:
        """Import the ``hetrix`` domain, version 1 (call before adding a hetrix op)."""
        self.model.opset_imports.setdefault(HETRIX_DOMAIN, 1)


class Rule(abc.ABC):
    """A pattern rooted at one node, its preconditions and its rewrite.

    Invariant: :meth:`match` never changes the graph; :meth:`apply` only runs on what ``match``
    returned for the same node in the same, unchanged graph.
    """

    name: ClassVar[str]
    """Rule name as counted in the optimization report."""
    op_types: ClassVar[tuple[str, ...]]
    """Op types of the anchor node the pattern starts from."""
    domain: ClassVar[str] = ""

    @abc.abstractmethod
    def match(self, node: ir.Node, ctx: RewriteContext) -> Any:
        """What :meth:`apply` needs, or raise :class:`Reject` with the reason."""

    @abc.abstractmethod
    def apply(self, match: Any, ctx: RewriteContext) -> None:
        """Rewrite the graph around the match."""


@dataclass
class RewriteStats:
    """Counts of one pass run: rewrites by rule name and the rejections."""

    counts: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)


class RewritePass(ir.passes.InPlacePass):
    """Applies its rules to every node of every graph (subgraphs included), once per call.

    Invariant: a rule that fired consumed its anchor node; the sweep goes on with the next node
    of the original order, and nodes added by a rewrite wait for the next call (the optimizer
    runs passes to a fixpoint).  ``stats`` holds the counts of the last call.
    """

    rule_types: ClassVar[tuple[type[Rule], ...]] = ()
    """The rules a pass subclass applies, in priority order; one of each is made per pass."""

    def __init__(self, rules: list[Rule] | None = None) -> None:
        super().__init__()
        self.rules = rules if rules is not None else [rule() for rule in self.rule_types]
        self._by_op: dict[tuple[str, str], list[Rule]] = {}
        for rule in self.rules:
            for op_type in rule.op_types:
                self._by_op.setdefault((normal_domain(rule.domain), op_type), []).append(rule)
        self.stats = RewriteStats()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = RewriteStats()
        ctx = RewriteContext(model)
        for graph in list(model.graphs()):
            for node in list(graph):
                if node.graph is graph:  # not removed by an earlier rewrite of this sweep
                    self._rewrite(node, ctx)
        return ir.passes.PassResult(model, modified=bool(self.stats.counts))

    def _rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        for rule in self._by_op.get((normal_domain(node.domain), node.op_type), ()):
            try:
                match = rule.match(node, ctx)
            except Reject as reason:
                self._reject(rule, node, str(reason))
                continue
            rule.apply(match, ctx)
            self.stats.counts[rule.name] += 1
            logger.debug("%s: rewrote at node %r", rule.name, node.name)
            return

    def _reject(self, rule: Rule, node: ir.Node, reason: str) -> None:
        rejection = Rejection(rule.name, node.name or node.op_type, reason)
        self.stats.rejections.append(rejection)
        logger.debug("%s: not applied at node %r: %s", rule.name, rejection.node, reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(r.name for r in self.rules)})"
