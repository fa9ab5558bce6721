"""What ``hetrix info`` shows about a model, computed from the file alone (no kernels needed)."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from hetrix.errors import ModelLoadError
from hetrix.model.loader import ModelSource, read_model
from hetrix.runtime.session import type_string

Dims = list[int | str | None]


@dataclass(frozen=True)
class ValueSummary:
    """One graph input or output: name, ORT type string, (possibly symbolic) shape."""

    name: str
    type: str
    shape: Dims | None


@dataclass
class ModelSummary:
    """The facts ``hetrix info`` prints."""

    source: str
    ir_version: int
    producer: str
    graph_name: str
    opsets: dict[str, int]
    inputs: list[ValueSummary]
    outputs: list[ValueSummary]
    op_counts: dict[str, int]
    """``[domain::]op_type`` -> number of nodes, subgraphs included, most frequent first."""
    nodes: int
    subgraph_nodes: int
    parameters: int
    parameter_bytes: int
    initializers: int
    constants: int
    overridable_initializers: list[str] = field(default_factory=list)


def summarize_model(model: ModelSource) -> ModelSummary:
    """Read ``model`` and describe it; raises ModelLoadError for unreadable files."""
    loaded = read_model(model)
    proto = loaded.proto
    try:
        graph = ir.serde.deserialize_model(proto).graph
    except Exception as exc:
        raise ModelLoadError(f"model {loaded.source} cannot be read as ONNX: {exc}") from exc
    init_names = {t.name for t in proto.graph.initializer}
    counts, subgraph_nodes = _op_counts(proto.graph)
    tensors = list(_parameter_tensors(proto.graph))
    return ModelSummary(
        source=loaded.source,
        ir_version=proto.ir_version,
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        graph_name=proto.graph.name,
        opsets={(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        inputs=[_value(v) for v in graph.inputs if v.name not in init_names],
        outputs=[_value(v) for v in graph.outputs],
        op_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        nodes=sum(counts.values()) - subgraph_nodes,
        subgraph_nodes=subgraph_nodes,
        parameters=sum(_numel(t) for _, t in tensors),
        parameter_bytes=sum(tensor_nbytes(t) for _, t in tensors),
        initializers=sum(kind == "initializer" for kind, _ in tensors),
        constants=sum(kind == "constant" for kind, _ in tensors),
        overridable_initializers=[v.name or "" for v in graph.inputs if v.name in init_names],
    )


def _value(value: ir.Value) -> ValueSummary:
    shape: Dims | None = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else getattr(d, "value", None) for d in value.shape]
    return ValueSummary(value.name or "", type_string(value.type), shape)


def _op_key(node: onnx.NodeProto) -> str:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _op_counts(graph: onnx.GraphProto) -> tuple[collections.Counter[str], int]:
    """Op histogram of ``graph`` and its subgraphs, and how many nodes are in subgraphs."""
    counts: collections.Counter[str] = collections.Counter()
    nested = 0
    for node in graph.node:
        counts[_op_key(node)] += 1
        for sub in _subgraphs(node):
            sub_counts, _ = _op_counts(sub)
            counts.update(sub_counts)
            nested += sum(sub_counts.values())
    return counts, nested


def _parameter_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Initializers and Constant-node values of ``graph`` and its subgraphs."""
    for tensor in graph.initializer:
        yield "initializer", tensor
    for sparse in graph.sparse_initializer:
        yield "initializer", sparse.values
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            tensor = _constant_tensor(node)
            if tensor is not None:
                yield "constant", tensor
        for sub in _subgraphs(node):
            yield from _parameter_tensors(sub)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr.t
        if attr.name == "sparse_value":
            return attr.sparse_tensor.values
        if attr.name.startswith("value_"):
            value = onnx.helper.get_attribute_value(attr)
            items = value if isinstance(value, list) else [value]
            dtype = {"f": onnx.TensorProto.FLOAT, "i": onnx.TensorProto.INT64}.get(
                attr.name[len("value_"):][:1], onnx.TensorProto.STRING)
            return onnx.helper.make_tensor("", dtype, [len(items)], items)
    return None


def _numel(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's elements take in memory (strings: their UTF-8 length)."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (TypeError, ValueError):
        return 0
    return (_numel(tensor) * bits + 7) // 8
