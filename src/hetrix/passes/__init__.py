"""Graph optimization: onnx-ir passes that make a model cheaper to run, levelled like ORT's.

``optimize(model, level)`` rewrites an ``onnx_ir.Model`` in place and returns an
:class:`OptimizationReport`.  Levels follow ``onnxruntime.GraphOptimizationLevel``:

* 0 -- disabled;
* 1 -- basic: constant folding (shape arithmetic included, on symbolic dims too), no-op and
  identity removal, common subexpression and dead code elimination; the result only uses
  standard ONNX ops;
* 2 -- extended: + BatchNorm/Mul/Add folding into weights, MatMul+Add -> Gemm, LayerNorm and GELU
  recognition, activation fusion (these may introduce ops of the ``hetrix`` domain, which only
  Hetrix's kernels run);
* 3 and 99 -- all: + attention fusion.

The pipeline (:data:`PIPELINE`) is one list, run in order and repeated until no pass changes the
graph (at most ``max_iterations`` times).  Each pass is an ``onnx_ir.passes.InPlacePass``; the
generic ones are onnx-ir's own.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir
import onnx_ir.passes.common as common

from hetrix.passes._ir import HETRIX_DOMAIN, count_nodes
from hetrix.passes.batchnorm import BatchNormFoldingPass
from hetrix.passes.constant_folding import ConstantFoldingPass
from hetrix.passes.fusion import (
    ActivationFusionPass,
    ConcatConvSplitPass,
    ConvPoolFusionPass,
    MatMulAddFusionPass,
    PoolOfConcatPass,
    ReluOfConcatPass,
    ResidualAddFusionPass,
)
from hetrix.passes.noop import NoOpEliminationPass
from hetrix.passes.patterns import AttentionFusionPass, PatternRecognitionPass
from hetrix.passes.report import OptimizationReport, PassRun
from hetrix.passes.rewrite import Reject, Rejection, RewritePass, Rule
from hetrix.passes.shape_inference import ShapeInferencePass
from hetrix.passes.symbolic_shapes import SymbolicShapePass

logger = logging.getLogger(__name__)

DISABLED, BASIC, EXTENDED, ALL = 0, 1, 2, 99


class LiftConstantsPass(common.LiftConstantsToInitializersPass):
    """Every tensor ``Constant`` node becomes an initializer (sparse ones stay nodes)."""

    def __init__(self) -> None:
        super().__init__(lift_all_constants=True, size_limit=0)

    def _constant_node_attribute_to_tensor(self, node, attr_name, attr_value, initializer_name):
        if attr_name.startswith("sparse"):
            return None
        return super()._constant_node_attribute_to_tensor(
            node, attr_name, attr_value, initializer_name
        )


class FreezeInitializersPass(ir.passes.InPlacePass):
    """Before IR version 4 every initializer is also a graph input, yet a constant (as in ORT).

    This drops those initializers from the inputs and moves the model to IR version 4, so every
    pass can take "an initializer that is not a graph input" to mean "a constant".
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.ir_version >= 4:
            return ir.passes.PassResult(model, False)
        common.RemoveInitializersFromInputsPass()(model)
        model.ir_version = 4
        return ir.passes.PassResult(model, True)


class IdentityEliminationPass(common.IdentityEliminationPass):
    """onnx-ir's identity elimination, minus the case it gets wrong: a subgraph output that is
    an Identity of an outer-scope value cannot become that value (it belongs to another graph)."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        output = node.outputs[0] if len(node.outputs) == 1 else None
        if source is not None and output is not None and output.is_graph_output():
            if source.graph is not node.graph:
                return False
        return super()._try_eliminate_identity_node(node)


@dataclass(frozen=True)
class Stage:
    """One entry of the pipeline: the pass, its name in reports and the level it needs."""

    level: int
    name: str
    make: Callable[[], ir.passes.PassBase]
    analysis: bool = False
    """Only adds information (shapes): never counts as a change for the fixpoint."""
    leaves_garbage: bool = False
    """Builds a whole copy of the model that dies in reference cycles: collected right after
    the pass, or each fixpoint iteration would add one more copy to the load's peak memory."""


PIPELINE: tuple[Stage, ...] = (
    # IR < 4 lists weights as inputs: they are constants all the same (later passes rely on it).
    Stage(BASIC, "freeze initializers", FreezeInitializersPass, analysis=True),
    # Constants first: every later rule reads weights and shape operands as initializers.
    Stage(BASIC, "lift constants", LiftConstantsPass),
    # Static shapes let Shape/Size fold and prove Reshape/Expand/Cast no-ops.
    Stage(
        BASIC,
        "shape inference",
        ShapeInferencePass,
        analysis=True,
        # what it replaces is left in reference cycles: a collection right after took the
        # small_ops model from 5.1 to 4.6 MiB load growth (peak 7.6 -> 7.2)
        leaves_garbage=True,
    ),
    Stage(BASIC, "constant folding", ConstantFoldingPass),
    # Shape arithmetic on symbolic dims: Reshape/Expand to the input's own shape, known ints.
    Stage(BASIC, "symbolic shapes", SymbolicShapePass),
    # After folding, since the arguments that make a node a no-op often just became constants.
    Stage(BASIC, "no-op elimination", NoOpEliminationPass),
    Stage(BASIC, "identity elimination", IdentityEliminationPass),
    Stage(BASIC, "common subexpressions", common.CommonSubexpressionEliminationPass),
    # MatMul+Add before BatchNorm folding: a 2-D one becomes a Gemm, whose BN then folds.
    Stage(EXTENDED, "matmul+add fusion", MatMulAddFusionPass),
    Stage(EXTENDED, "batchnorm folding", BatchNormFoldingPass),
    # Recognition before activation fusion: the Gelu it emits then fuses into its MatMul.
    Stage(EXTENDED, "pattern recognition", PatternRecognitionPass),
    Stage(ALL, "attention fusion", AttentionFusionPass),
    # Pooling moves before a channel Concat (it never mixes channels): the Conv of Concat rule
    # then finds the Concat of the pooled parts before the next convolution.
    Stage(EXTENDED, "pool of concat", PoolOfConcatPass),
    # A Conv of a Concat becomes per-part convolutions summed as residuals, before the Relu
    # after it fuses (into the last of them).
    Stage(EXTENDED, "concat+conv split", ConcatConvSplitPass),
    # The residual Add of ResNet-style blocks joins its Conv before the activation after it does.
    Stage(EXTENDED, "conv+add fusion", ResidualAddFusionPass),
    # A Relu after a Concat moves onto the parts, where the activation fusion next folds it
    # into their producers (or drops it on parts that cannot be negative).
    Stage(EXTENDED, "relu of concat", ReluOfConcatPass),
    # Activation fusion last: a Fused* node no longer looks like the Conv/Gemm/MatMul it was.
    Stage(EXTENDED, "activation fusion", ActivationFusionPass),
    # After it: the first layer's FusedConv (with its Relu) then takes the pooling after it.
    Stage(EXTENDED, "conv+pool fusion", ConvPoolFusionPass),
    # Dead code last, so whatever the rewrites orphaned is gone before the next iteration.  The
    # nodes it removes sit in reference cycles: collected before the next iteration's shape
    # inference serializes the graph, the load's peak now (small_ops 5.00 -> 4.76 MiB peak
    # growth, five fresh processes each; collections of 2-5 ms, load time unchanged).
    Stage(BASIC, "dead code elimination", common.RemoveUnusedNodesPass, leaves_garbage=True),
)


def optimize(model: ir.Model, level: int = ALL, max_iterations: int = 5) -> OptimizationReport:
    """Optimize ``model`` in place at ``level`` (0, 1, 2, 3 or 99, as ORT's levels).

    Raises ValueError for a level that is not a non-negative integer.
    """
    level = _check_level(level)
    report = OptimizationReport(level=level, nodes_before=count_nodes(model))
    # no pass adds control flow: a model without subgraphs is counted by its graph's length
    # (the report counts before and after every pass; recounting node by node made those
    # counts a third of a 1,200-node model's optimization)
    counted = len(model.graph) == report.nodes_before
    count = _graph_length if counted else count_nodes
    stages = [s for s in PIPELINE if DISABLED < s.level <= level]
    if stages:
        started = time.perf_counter()
        passes = [_Recorded(stage, report, first=i == 0, count=count)
                  for i, stage in enumerate(stages)]
        ir.passes.PassManager(passes, steps=max_iterations, early_stop=True)(model)
        report.seconds = time.perf_counter() - started
    report.nodes_after = count(model)
    logger.info(
        "graph optimization level %d: %d -> %d nodes",
        level,
        report.nodes_before,
        report.nodes_after,
    )
    return report


def _graph_length(model: ir.Model) -> int:
    return len(model.graph)


def _check_level(level: int) -> int:
    try:
        value = int(level)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"graph optimization level must be an integer, got {level!r}") from exc
    if value < 0:
        raise ValueError(f"graph optimization level must be 0, 1, 2, 3 or 99, got {value}")
    return ALL if value >= 3 else value


class _Recorded(ir.passes.InPlacePass):
    """Runs one stage's pass and records its rewrites and node counts in the report."""

    def __init__(self, stage: Stage, report: OptimizationReport, first: bool,
                 count: Callable[[ir.Model], int] = count_nodes) -> None:
        super().__init__()
        self.stage = stage
        self.report = report
        self.first = first
        self.count = count

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.first:
            self.report.iterations += 1
        before = self.count(model)
        started = time.perf_counter()
        inner = self.stage.make()
        result = inner(model)
        if self.stage.leaves_garbage:
            gc.collect()
        after = self.count(model)
        self.report.runs.append(
            PassRun(
                self.report.iterations,
                self.stage.name,
                _counts(inner, self.stage, before - after),
                before,
                after,
                time.perf_counter() - started,
            )
        )
        stats = getattr(inner, "stats", None)
        if stats is not None:
            self.report.rejections[self.stage.name] = stats.rejections
        return ir.passes.PassResult(model, result.modified and not self.stage.analysis)

    def __repr__(self) -> str:
        return f"stage {self.stage.name!r}"


def _counts(inner: ir.passes.PassBase, stage: Stage, removed: int) -> dict[str, int]:
    stats = getattr(inner, "stats", None)
    if stats is not None:
        return dict(stats.counts)
    return {stage.name: removed} if removed > 0 else {}


__all__ = [
    "ALL",
    "BASIC",
    "DISABLED",
    "EXTENDED",
    "HETRIX_DOMAIN",
    "PIPELINE",
    "OptimizationReport",
    "PassRun",
    "Reject",
    "Rejection",
    "RewritePass",
    "Rule",
    "Stage",
    "optimize",
]
