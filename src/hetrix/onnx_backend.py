"""Hetrix as an ``onnx.backend`` backend, so that ``onnx.backend.test.BackendTest`` can drive it.

Usage::

    import onnx.backend.test
    from hetrix.onnx_backend import HetrixBackend

    tests = onnx.backend.test.BackendTest(HetrixBackend, __name__)
    tests.include("test_squeezenet")
    globals().update(tests.enable_report().test_cases)

The module also exposes ``prepare``, ``run_model``, ``run_node`` and ``supports_device`` at top
level, as onnxruntime's backend module does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, Device, DeviceType, namedtupledict
from onnx.backend.base import BackendRep as _OnnxBackendRep

from hetrix.errors import InvalidArgumentError, InvalidInputError
from hetrix.model.loader import ModelSource
from hetrix.runtime.session import InferenceSession, SessionOptions

logger = logging.getLogger(__name__)


class HetrixBackendRep(_OnnxBackendRep):
    """A prepared model: a Hetrix session run with positional or named feeds."""

    def __init__(self, session: InferenceSession) -> None:
        self.session = session
        self._feed_names = [arg.name for arg in session.get_inputs()]
        self._graph_input_names = [value.name for value in session.model_proto.graph.input]
        self._output_names = [arg.name for arg in session.get_outputs()]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run with a list of arrays (in input order), one array, or a dict name -> array.

        Returns a named tuple of the outputs (index or output name both work).
        """
        outputs = self.session.run(None, self._feeds(inputs))
        return namedtupledict("Outputs", self._output_names)(*outputs)

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        names = self._feed_names
        if len(inputs) > len(names):  # initializers that are also inputs, in graph order
            names = self._graph_input_names
        if len(inputs) > len(names):
            raise InvalidInputError(
                f"{len(inputs)} inputs given, the model has {len(names)}: {names}"
            )
        return dict(zip(names, inputs, strict=False))


BackendRep = HetrixBackendRep
"""The name ``onnx.backend`` users expect for the prepared-model class."""


class HetrixBackend(Backend):
    """``onnx.backend.base.Backend`` implemented with Hetrix sessions (CPU only, for now)."""

    @classmethod
    def prepare(cls, model: ModelSource, device: str = "CPU", **kwargs: Any) -> HetrixBackendRep:
        """Load and plan ``model`` (a ModelProto, bytes or path) for repeated runs.

        Keyword arguments naming a :class:`SessionOptions` field (``disable_fallback``...) set
        it; ``providers`` picks the session's providers; others are ignored.
        """
        if not cls.supports_device(device):
            raise InvalidArgumentError(f"Hetrix's onnx backend does not support device '{device}'")
        options = SessionOptions()
        for key, value in kwargs.items():
            if key in SessionOptions.__dataclass_fields__:
                setattr(options, key, value)
            elif key != "providers":
                logger.debug("prepare: ignoring option %s=%r", key, value)
        session = InferenceSession(model, options, providers=kwargs.get("providers"))
        return HetrixBackendRep(session)

    @classmethod
    def run_model(
        cls, model: ModelSource, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[Any, ...]:
        """Prepare ``model`` and run it once."""
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run one node on ``inputs`` (arrays for its non-empty inputs, in order).

        ``opset_version`` sets the default-domain opset (default: the newest onnx knows).
        """
        model = node_model(node, inputs, outputs_info, kwargs.pop("opset_version", None))
        return cls.run_model(model, list(inputs), device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """True for ``CPU`` (and ``CPU:0``...); accelerators are not wired in yet."""
        try:
            return Device(device).type == DeviceType.CPU
        except (AttributeError, ValueError):
            return False


def node_model(
    node: onnx.NodeProto,
    inputs: Sequence[Any],
    outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
    opset_version: int | None = None,
) -> onnx.ModelProto:
    """A one-node model whose graph inputs are typed like ``inputs``."""
    input_names = [name for name in node.input if name]
    if len(input_names) != len(inputs):
        raise InvalidInputError(
            f"node {node.op_type} has {len(input_names)} inputs {input_names}, "
            f"{len(inputs)} values given"
        )
    output_names = [name for name in node.output if name]
    infos = list(outputs_info or [])
    graph = helper.make_graph(
        [node],
        f"{node.op_type}_node",
        [_value_info(name, value) for name, value in zip(input_names, inputs, strict=True)],
        [_output_info(name, infos[i] if i < len(infos) else None)
         for i, name in enumerate(output_names)],
    )
    opsets = [helper.make_opsetid("", opset_version or onnx.defs.onnx_opset_version())]
    if node.domain not in ("", "ai.onnx"):
        opsets.append(helper.make_opsetid(node.domain, _domain_version(node)))
    return helper.make_model(graph, opset_imports=opsets, producer_name="hetrix.onnx_backend")


def _value_info(name: str, value: Any) -> onnx.ValueInfoProto:
    if isinstance(value, list):
        elem = np.asarray(value[0]).dtype if value else np.dtype(np.float32)
        return helper.make_tensor_sequence_value_info(
            name, helper.np_dtype_to_tensor_dtype(elem), None)
    array = np.asarray(value)
    dtype = np.dtype(object) if array.dtype.kind in "SU" else array.dtype
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(dtype), list(array.shape))


def _output_info(name: str, info: tuple[np.dtype, tuple[int, ...]] | None) -> onnx.ValueInfoProto:
    if info is None:
        return helper.make_empty_tensor_value_info(name)
    dtype, shape = info
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))


def _domain_version(node: onnx.NodeProto) -> int:
    try:
        return onnx.defs.get_schema(node.op_type, domain=node.domain).since_version
    except onnx.defs.SchemaError:
        return 1


prepare = HetrixBackend.prepare
run_model = HetrixBackend.run_model
run_node = HetrixBackend.run_node
supports_device = HetrixBackend.supports_device
