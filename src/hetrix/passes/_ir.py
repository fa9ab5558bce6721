"""Small onnx-ir helpers shared by the passes: constants, consumers, attributes, new values."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np
import onnx
import onnx_ir as ir

HETRIX_DOMAIN = "hetrix"
"""Domain of the ops Hetrix introduces itself (FusedConv, FusedGemm, FusedMatMul, Gelu...)."""

_names = itertools.count()


def normal_domain(domain: str) -> str:
    """``""`` for the default ONNX domain however it is spelled."""
    return "" if domain == "ai.onnx" else domain


def is_op(node: ir.Node | None, *op_types: str, domain: str = "") -> TypeGuard[ir.Node]:
    """Whether ``node`` exists and is one of ``op_types`` in ``domain``."""
    return (
        node is not None
        and node.op_type in op_types
        and normal_domain(node.domain) == normal_domain(domain)
    )


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's content when it is a constant (an initializer no caller can override)."""
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    try:
        return value.const_value.numpy()
    except Exception:  # an external tensor whose file is gone, an unsupported dtype...
        return None


def scalar(value: ir.Value | None) -> float | None:
    """The constant's single element as a float, or None when it is not a 1-element constant."""
    array = const_array(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(array.reshape(()))


def consumers(value: ir.Value) -> list[ir.Node]:
    """The distinct nodes that read ``value``."""
    return list(dict.fromkeys(use.node for use in value.uses()))


def sole_consumer(value: ir.Value | None) -> ir.Node | None:
    """The one node reading ``value`` when nothing else (no graph output) sees it, else None."""
    if value is None or value.is_graph_output():
        return None
    readers = consumers(value)
    return readers[0] if len(readers) == 1 else None


def producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """For a binary node reading ``value``, the other operand."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is value else a


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dim is a known integer."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return tuple(int(d) for d in value.const_value.shape.numpy())
    if value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return tuple(dims) if len(dims) == len(value.shape) else None


def rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def opset(graph_or_model: ir.Graph | ir.Model, domain: str = "") -> int | None:
    """The version ``graph_or_model`` imports for ``domain``."""
    imports = graph_or_model.opset_imports
    version = imports.get(normal_domain(domain))
    if version is None and domain == "":
        version = imports.get("ai.onnx")
    return version


@functools.lru_cache(maxsize=2048)
def _schema_defaults(op_type: str, version: int, domain: str) -> dict[str, ir.Attr]:
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return {}
    defaults = {}
    for name, spec in schema.attributes.items():
        if not spec.required and spec.default_value and spec.default_value.name:
            defaults[name] = ir.serde.deserialize_attribute(spec.default_value)
    return defaults


def attribute(node: ir.Node, name: str, version: int | None) -> Any:
    """Attribute ``name`` of a default-domain node, its schema default when absent, else None."""
    attr = node.attributes.get(name)
    if attr is None and version is not None:
        attr = _schema_defaults(node.op_type, version, normal_domain(node.domain)).get(name)
    if attr is None:
        return None
    value = attr.value
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def attributes_with_defaults(node: ir.Node, version: int | None) -> dict[str, ir.Attr]:
    """The node's attributes, plus the schema's defaults for those it leaves out."""
    merged: dict[str, ir.Attr] = {}
    if version is not None:
        merged.update(_schema_defaults(node.op_type, version, normal_domain(node.domain)))
    merged.update(node.attributes)
    return merged


def add_initializer(
    graph: ir.Graph, base: str, array: np.ndarray, exact_name: str | None = None
) -> ir.Value:
    """Register ``array`` as a new initializer of ``graph``, named ``exact_name`` or fresh."""
    name = exact_name or fresh_name(base)
    while name in graph.initializers:
        name = fresh_name(base)
    tensor = ir.tensor(array, name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def name_of(value: ir.Value | None, default: str) -> str:
    """The value's name, or ``default`` when it has none."""
    return (value.name if value is not None else None) or default


def fresh_name(base: str) -> str:
    return f"{base}__hx{next(_names)}"


def replace(
    after: ir.Node,
    old_nodes: Sequence[ir.Node],
    new_nodes: Sequence[ir.Node],
    old_values: Sequence[ir.Value],
    new_values: Sequence[ir.Value],
) -> None:
    """Swap ``old_nodes`` for ``new_nodes``; readers of ``old_values`` read ``new_values``.

    The new nodes go right after ``after`` (the last of the old nodes, so every input they read is
    defined); the new values take the old names, types and shapes (graph outputs keep names).
    """
    graph = after.graph
    assert graph is not None, "node must be in a graph"
    ir.convenience.replace_nodes_and_values(
        graph, after, old_nodes, new_nodes, old_values, new_values
    )


def bypass(node: ir.Node, source: ir.Value) -> None:
    """Remove a node whose first output equals ``source``; its readers read ``source``.

    When the output is a graph output that ``source`` cannot become (``source`` is an input, an
    initializer or another output), the node becomes an Identity instead.
    """
    graph = node.graph
    assert graph is not None, "node must be in a graph"
    output = node.outputs[0]
    if output.is_graph_output() and (
        source.is_graph_input() or source.is_initializer() or source.is_graph_output()
    ):
        identity = ir.node("Identity", [source], outputs=[ir.Value(name=fresh_name("identity"))])
        replace(node, [node], [identity], [output], identity.outputs)
        return
    name = output.name if output.is_graph_output() else None
    ir.convenience.replace_all_uses_with(output, source, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if name is not None:
        source.name = name


def count_nodes(model: ir.Model) -> int:
    """Nodes of the model, subgraph nodes included."""
    return _count_nodes(model.graph)



def _count_nodes(graph: ir.Graph) -> int:
    # by the graphs' lengths, descending only into the attributes that hold graphs (a quarter
    # less time than onnx-ir's recursive iterator, a generator step per node)
    total = len(graph)
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                total += _count_nodes(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                total += sum(_count_nodes(g) for g in attr.value)
    return total
