"""The models of the benchmark suite that are built here rather than shipped with onnx.

* :func:`export_mobilenet`: a MobileNetV2 (width 1.0, 224x224, 1000 classes) written in plain
  torch (no torchvision), random weights, exported with a symbolic batch;
* :func:`make_small_ops_model`: hundreds of tiny nodes (``Shape`` -> ``Gather`` -> ``Unsqueeze``
  -> ``Concat`` -> ``Reshape`` chains, ``Slice``/``Concat`` shuffles, ``Add``/``Mul`` on a
  ``[batch, 64]`` tensor), where the runtime's per-node overhead dominates;
* :func:`make_batch_symbolic`: a copy of a fixed-batch model with the batch dim made symbolic,
  when no node pins the batch (a ``Reshape`` to a constant ``[1, ...]`` shape does).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

# -- MobileNetV2 ---------------------------------------------------------------------------------

_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
"""(expansion, output channels, repeats, first stride) of each stage, as in the paper."""


def _mobilenet(num_classes: int = 1000) -> Any:
    """A torch MobileNetV2: conv stem, 17 inverted residual blocks, 1x1 conv head, classifier."""
    from torch import nn

    def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1,
                act: bool = True) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6(inplace=True)] if act else [])

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, cout, 1, 1, act=False)
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            return x + self.block(x) if self.residual else self.block(x)

    layers: list[nn.Module] = conv_bn(3, 32, 3, 2)
    cin = 32
    for expand, cout, repeats, stride in _MOBILENET_V2:
        for index in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
            cin = cout
    layers += conv_bn(cin, 1280, 1, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers)


def export_mobilenet(path: Path, seed: int = 0, opset: int = 17) -> Path:
    """Export a randomly initialised MobileNetV2 (input ``image`` ``[batch, 3, 224, 224]``)."""
    import torch

    torch.manual_seed(seed)
    model = _mobilenet().eval()
    example = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return path


# -- many small ops ------------------------------------------------------------------------------

_WIDTH = 64


def _block(i: int, x: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> str:
    """One block of 11 small nodes: shape arithmetic, a reshape, a slice shuffle, Add and Mul."""
    p = f"b{i}_"
    nodes += [
        helper.make_node("Shape", [x], [p + "shape"]),
        helper.make_node("Gather", [p + "shape", "zero"], [p + "rows"], axis=0),
        helper.make_node("Gather", [p + "shape", "one"], [p + "cols"], axis=0),
        helper.make_node("Unsqueeze", [p + "rows", "axis0"], [p + "rows1"]),
        helper.make_node("Unsqueeze", [p + "cols", "axis0"], [p + "cols1"]),
        helper.make_node("Concat", [p + "rows1", p + "cols1"], [p + "dims"], axis=0),
        helper.make_node("Reshape", [x, p + "dims"], [p + "r"]),
        helper.make_node("Slice", [p + "r", "start_lo", "half", "axis1"], [p + "lo"]),
        helper.make_node("Slice", [p + "r", "half", "end_hi", "axis1"], [p + "hi"]),
        helper.make_node("Concat", [p + "hi", p + "lo"], [p + "swapped"], axis=1),
        helper.make_node("Add", [p + "swapped", p + "bias"], [p + "added"]),
        helper.make_node("Mul", [p + "added", "scale"], [p + "out"]),
    ]
    bias = np.random.default_rng(i).standard_normal(_WIDTH).astype(np.float32) * 0.01
    inits.append(numpy_helper.from_array(bias, p + "bias"))
    return p + "out"


def make_small_ops_model(blocks: int = 100) -> onnx.ModelProto:
    """``blocks`` x 12 tiny nodes on a ``[batch, 64]`` float tensor (1,200 nodes by default)."""
    def i64(name: str, value: list[int] | int) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)

    inits = [i64("zero", 0), i64("one", 1), i64("axis0", [0]), i64("axis1", [1]),
             i64("start_lo", [0]), i64("half", [_WIDTH // 2]), i64("end_hi", [_WIDTH]),
             numpy_helper.from_array(np.asarray(0.999, dtype=np.float32), "scale")]
    nodes: list[onnx.NodeProto] = []
    x = "x"
    for i in range(blocks):
        x = _block(i, x, nodes, inits)
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes, "small_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", _WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", _WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="hetrix-benchmarks")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- batch -------------------------------------------------------------------------------------


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def batch_blocker(model: onnx.ModelProto) -> str | None:
    """Why the batch dim cannot be made symbolic (a node on the input's path pins it), or None.

    Today's check: a ``Reshape`` of a tensor that depends on the input, to a constant shape whose
    first entry is a fixed size (``[1, 9216]``) rather than ``0`` (copy) or ``-1`` (infer).
    """
    constants = _constants(model)
    dynamic = {i.name for i in model.graph.input if i.name not in constants}
    for node in model.graph.node:
        if not any(name in dynamic for name in node.input):
            continue
        dynamic.update(node.output)
        if node.op_type == "Reshape" and node.input[1] in constants:
            shape = constants[node.input[1]].tolist()
            if shape and shape[0] > 0:
                return f"Reshape '{node.name or node.output[0]}' to the constant shape {shape}"
    return None


def make_batch_symbolic(source: Path, target: Path) -> str | None:
    """Write a copy of ``source`` with a symbolic batch to ``target``; the reason when it cannot.

    Intermediate shape annotations are dropped (they state batch 1).  The copy is checked with
    ONNX Runtime: at batch 2 each row must equal the batch-1 output of the same row.
    """
    model = onnx.load(str(source))
    reason = batch_blocker(model)
    if reason is not None:
        return reason
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and value.name not in {t.name for t in model.graph.initializer}:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    onnx.save(model, str(target))
    problem = _check_batch_independence(target)
    if problem is not None:
        target.unlink(missing_ok=True)
    return problem


def _check_batch_independence(path: Path) -> str | None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [2, *[d if isinstance(d, int) else 1 for d in first.shape[1:]]]
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        both = session.run(None, {first.name: data})[0]
        rows = [session.run(None, {first.name: data[i:i + 1]})[0] for i in range(2)]
    except Exception as exc:  # the model does not run at batch 2
        return f"does not run at batch 2: {type(exc).__name__}"
    if not np.allclose(both, np.concatenate(rows), rtol=1e-4, atol=1e-5):
        return "rows of a batch-2 run differ from batch-1 runs"
    return None
