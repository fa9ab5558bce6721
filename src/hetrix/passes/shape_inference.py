"""Shape inference by ONNX's C++ inference, merged straight from the inferred protobuf.

onnx-ir's own ``ShapeInferencePass`` serializes the model (large weights left out), runs
``onnx.shape_inference.infer_shapes`` on it, then deserializes the result into a whole second
IR only to read each value's type and shape back.  That second IR is the load's peak for graphs
of many nodes: on the 1,200-node small_ops model it held about 3 MiB of Python objects at once
beside the first (traced by ``tracemalloc``), most of Hetrix's peak load growth there.  This
pass reads the types from the inferred protobuf's ``value_info``, ``input`` and ``output``
entries instead, graph by graph (subgraphs matched to the IR's by node position), and sets
them on the IR's values the way onnx-ir's pass does: a shape or a dtype changes only where
inference found one, and one that differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from hetrix.runtime.memory import release_free_memory

logger = logging.getLogger(__name__)

try:  # onnx-ir's helper that leaves the large weights out of the serialized copy
    from onnx_ir.passes.common._c_api_utils import call_onnx_api
except ImportError:  # pragma: no cover - an onnx-ir without it: its own pass serves
    call_onnx_api = None  # type: ignore[assignment]


SOURCE_KEY = "hetrix.shape_inference_source"
"""``model.meta`` key of the parsed protobuf the model was read from (see :func:`read_from`)."""

SOURCE_MAX_BYTES = 16 << 20
"""A source protobuf larger than this (weights inside it) is not used: inference would copy
them; the IR is serialized without its large weights instead."""


def read_from(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Let the next shape inference of ``model`` read ``proto``, the protobuf it was
    deserialized from, instead of serializing the IR again (once: the graph changes after).

    Why: the first inference runs right after loading, when the two describe the same graph
    (lifting constants and freezing initializers keep the values' names, which is all the
    merge goes by).  Serializing the IR built about 1.5 MiB of protobuf objects on the
    1,200-node small_ops model at the load's peak: 6.6 MiB peak growth with it, 5.8 without
    (``hetrix bench``, fresh processes)."""
    model.meta[SOURCE_KEY] = proto


class ShapeInferencePass(ir.passes.InPlacePass):
    """ONNX shape inference (``strict_mode`` off: a node it cannot infer is left as it is);
    a model inference rejects is left unchanged, with a warning."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        source = model.meta.pop(SOURCE_KEY, None)
        if call_onnx_api is None:  # pragma: no cover
            return common_passes.ShapeInferencePass(strict_mode=False)(model)
        try:
            if isinstance(source, onnx.ModelProto) and source.ByteSize() <= SOURCE_MAX_BYTES:
                serialized = source.SerializeToString()
            else:
                # serialized first, so that the protobuf copy is freed before inference runs
                # (its memory then serves inference's): load peak on small_ops 7.8 -> 6.6 MiB
                serialized = call_onnx_api(_serialize, model)
            del source
            inferred = onnx.shape_inference.infer_shapes(serialized, check_type=True,
                                                         strict_mode=False, data_prop=True)
        except Exception as exc:  # noqa: BLE001 - inference is advice, never a load failure
            logger.warning("shape inference failed (%s); the model is left unchanged", exc)
            return ir.passes.PassResult(model, False)
        # The inferred types are taken out as bytes before any IR object is made from them: made
        # while the parsed result is alive, the IR's new shapes and the result's Python wrappers
        # share the allocator's arenas, and the wrappers' holes then kept the arenas from being
        # freed (small_ops: 1.2 MiB more held through the rest of the optimization).
        found = [(graph, _inferred_types(graph_proto))
                 for graph, graph_proto in _graph_pairs(model.graph, inferred.graph)]
        # ONNX's C++ inference and the parsed result are freed now; glibc keeps freed memory
        # for reuse (``retain_freed_memory``), but Python's own objects, which the passes make
        # next, come from separate arenas and never reuse it: back to the OS at once.  small_ops'
        # peak load growth 5.86 -> 5.31 MiB; load time unchanged (0.17 vs 0.19 s there).
        del inferred
        release_free_memory()
        modified = False
        for graph, types in found:
            modified |= _merge(graph, types)
        return ir.passes.PassResult(model, modified)


def _serialize(proto: onnx.ModelProto) -> bytes:
    return proto.SerializeToString()


def _graph_pairs(graph: ir.Graph,
                 graph_proto: onnx.GraphProto) -> Iterator[tuple[ir.Graph, onnx.GraphProto]]:
    """``(graph, its inferred protobuf)`` for the graph and each subgraph within it, paired by
    node position (serialization keeps the node order; inference does not change it)."""
    yield graph, graph_proto
    if len(graph) != len(graph_proto.node):
        return  # not the same graph: leave the subgraphs as they are
    for node, node_proto in zip(graph, graph_proto.node, strict=True):
        for attr_proto in node_proto.attribute:
            attr = node.attributes.get(attr_proto.name)
            if attr is None:
                continue
            if attr_proto.type == onnx.AttributeProto.GRAPH and isinstance(attr.value, ir.Graph):
                yield from _graph_pairs(attr.value, attr_proto.g)
            elif attr_proto.type == onnx.AttributeProto.GRAPHS and len(attr.value) == len(
                    attr_proto.graphs):
                for subgraph, subgraph_proto in zip(attr.value, attr_proto.graphs, strict=True):
                    yield from _graph_pairs(subgraph, subgraph_proto)


def _inferred_types(graph_proto: onnx.GraphProto) -> dict[str, bytes]:
    """The inferred type of each value ``graph_proto`` describes (its inputs, outputs and
    ``value_info``), serialized, by value name."""
    return {info.name: info.type.SerializeToString()
            for field in (graph_proto.input, graph_proto.output, graph_proto.value_info)
            for info in field if info.name and info.HasField("type")}


def _merge(graph: ir.Graph, types: dict[str, bytes]) -> bool:
    """Set the inferred shapes and dtypes (``types``, from :func:`_inferred_types`) of
    ``graph``'s own values (inputs, initializers, node outputs); whether any changed."""
    modified = False
    type_proto = onnx.TypeProto()
    for value in _own_values(graph):
        serialized = types.get(value.name or "")
        if serialized is None:
            continue
        type_proto.ParseFromString(serialized)
        shape = ir.serde.deserialize_type_proto_for_shape(type_proto)
        if shape is not None and value.shape != shape:
            value.shape = shape
            modified = True
        inferred_type = ir.serde.deserialize_type_proto_for_type(type_proto)
        dtype = inferred_type.dtype if inferred_type is not None else None
        if dtype is not None and value.dtype != dtype:
            value.dtype = dtype
            modified = True
    return modified


def _own_values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs
