"""Attribute defaults and function expansion, applied once at load.

* :func:`fill_attribute_defaults` writes each schema default onto the nodes that omit it, so kernels
  never look defaults up per call.
* :func:`expand_function_ops` replaces nodes whose operator no session backend implements, but whose
  ONNX schema defines it as a function of simpler operators (LayerNormalization, Gelu, ...), by that
  function body.  Model-local functions are always inlined.  Both use onnx's own inliner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import onnx
import onnx.inliner
from onnx import defs

logger = logging.getLogger(__name__)

EXPANSION_DOMAIN = "hetrix.expanded"
"""Private domain that marks a schema function while onnx's inliner expands it."""

CanRun = Callable[[str, str, int], bool]
"""``can_run(domain, op_type, opset)``: whether some backend of the session has a kernel."""


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and all its subgraphs, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_graphs(attr.g)
            for sub in attr.graphs:
                yield from iter_graphs(sub)


def opset_map(model: onnx.ModelProto) -> dict[str, int]:
    """``domain -> version`` of the model's opset imports ("" for the default domain)."""
    opsets = {}
    for entry in model.opset_import:
        opsets["" if entry.domain == "ai.onnx" else entry.domain] = entry.version
    return opsets


def find_schema(op_type: str, opset: int, domain: str) -> defs.OpSchema | None:
    """The schema in force for the op at ``opset``, or None when onnx does not know it."""
    try:
        return defs.get_schema(op_type, opset, domain)
    except defs.SchemaError:
        return None


def fill_attribute_defaults(model: onnx.ModelProto) -> None:
    """Add every attribute the schema gives a default for and the node leaves out."""
    opsets = opset_map(model)
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            if domain not in opsets:
                continue
            schema = find_schema(node.op_type, opsets[domain], domain)
            if schema is None:
                continue
            present = {attr.name for attr in node.attribute}
            for name, spec in schema.attributes.items():
                default = spec.default_value
                if name not in present and default.name:
                    filled = node.attribute.add()
                    filled.CopyFrom(default)
                    filled.name = name


def expand_function_ops(model: onnx.ModelProto, can_run: CanRun, max_rounds: int = 8) -> int:
    """Inline local functions and expand schema functions no backend runs; returns nodes expanded.

    Expanded bodies may hold function ops themselves, so this repeats until nothing changes.
    """
    expanded = 0
    for _ in range(max_rounds):
        if model.functions:
            inlined = onnx.inliner.inline_local_functions(model)
            model.CopyFrom(inlined)
        fill_attribute_defaults(model)
        count = _mark_schema_functions(model, can_run)
        if count == 0:
            break
        expanded += count
    return expanded


def _mark_schema_functions(model: onnx.ModelProto, can_run: CanRun) -> int:
    """Turn each function op without a kernel into a call of a model-local copy of its body."""
    opsets = opset_map(model)
    value_types: dict[str, onnx.TypeProto] = {}  # filled on first need: inference is costly
    bodies: dict[bytes, onnx.FunctionProto] = {}
    count = 0
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            opset = opsets.get(domain)
            if opset is None or can_run(domain, node.op_type, opset):
                continue
            body = _function_body(node, domain, opset, opsets, value_types, model)
            if body is None:
                continue
            key = body.SerializeToString()
            if key not in bodies:
                body.name = f"{node.op_type}_{len(bodies)}"
                body.domain = EXPANSION_DOMAIN
                bodies[key] = body
                model.functions.append(body)
            node.op_type = bodies[key].name
            node.domain = EXPANSION_DOMAIN
            count += 1
    if count and EXPANSION_DOMAIN not in opsets:
        model.opset_import.add(domain=EXPANSION_DOMAIN, version=1)
    return count


def _function_body(
    node: onnx.NodeProto,
    domain: str,
    opset: int,
    opsets: dict[str, int],
    value_types: dict[str, onnx.TypeProto],
    model: onnx.ModelProto,
) -> onnx.FunctionProto | None:
    schema = find_schema(node.op_type, opset, domain)
    if schema is None:
        return None
    body = onnx.FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= opset]
    contextual = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if schema.has_function and plain:
        body.ParseFromString(schema.get_function_with_opset_version(max(plain)))
    elif schema.has_context_dependent_function and contextual:
        if not value_types:
            value_types.update(_value_types(model))
        types = [value_types.get(name) for name in node.input if name]
        if any(t is None for t in types):
            logger.debug("cannot expand %s: input types unknown", node.name or node.op_type)
            return None
        serialized = [t.SerializeToString() for t in types if t is not None]
        data = schema.get_context_dependent_function_with_opset_version(
            max(contextual), node.SerializeToString(), serialized
        )
        if not data:
            return None
        body.ParseFromString(data)
    else:
        return None
    # The body's own opset import may name the version it was written for; run it at the model's.
    del body.opset_import[:]
    for dom, version in opsets.items():
        if dom != EXPANSION_DOMAIN:
            body.opset_import.add(domain=dom, version=version)
    return body


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of every value name the model declares or onnx's shape inference can derive."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is best effort: a model it rejects may still run
        inferred = model
    types: dict[str, onnx.TypeProto] = {}
    for graph in iter_graphs(inferred.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.WhichOneof("value"):
                types[value.name] = value.type
        for init in graph.initializer:
            tensor_type = onnx.TypeProto()
            tensor_type.tensor_type.elem_type = init.data_type
            for dim in init.dims:
                tensor_type.tensor_type.shape.dim.add().dim_value = dim
            types[init.name] = tensor_type
    return types
