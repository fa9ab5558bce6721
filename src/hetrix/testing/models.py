"""Real and realistic models for Hetrix's model-level tests and benchmarks.

Everything here is importable without torch: ``torch`` and ``transformers`` are imported inside the
exporters only.  Four families:

* the nine model-zoo architectures shipped with onnx in ``onnx/backend/test/data/light``
  (:func:`light_model_paths`, :func:`light_model_case`, and :func:`light_model_randomized`, which
  swaps their constant weights for seeded random ones so every output element differs);
* a small BERT encoder and GPT-2 decoder built from a ``transformers`` config with seeded random
  weights and exported with ``torch.onnx.export`` (:func:`export_bert`, :func:`export_gpt2`), in a
  ``"tiny"`` size for tests and the real ``"base"``/``"small"`` sizes for benchmarks;
* :func:`make_control_flow_model`: ``If`` and ``Loop`` (one nested in the other) reading values of
  the enclosing scopes;
* :func:`make_dynamic_shape_model`: symbolic batch/sequence dims and the shape arithmetic exporters
  emit (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``, ``Range``, ``Expand``, ``Slice``).
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_MODEL_NAMES: tuple[str, ...] = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)
"""The models of ``onnx/backend/test/data/light`` (file ``light_<name>.onnx``)."""


# -- onnx's light model zoo ----------------------------------------------------------------------


def light_model_dir() -> str:
    """The folder of the light model zoo inside the installed onnx package."""
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def light_model_paths() -> dict[str, str]:
    """Name (``"resnet50"``...) -> path of every ``light_<name>.onnx`` onnx ships."""
    paths = {}
    for path in sorted(glob.glob(os.path.join(light_model_dir(), "light_*.onnx"))):
        paths[os.path.basename(path)[len("light_"):-len(".onnx")]] = path
    return paths


def _feed_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller must feed (those without an initializer)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    """Concrete dims of an input, 1 where the dim has no value (as onnx's backend runner)."""
    return tuple(d.dim_value if d.HasField("dim_value") else 1
                 for d in value.type.tensor_type.shape.dim)


def dummy_input(value: onnx.ValueInfoProto) -> np.ndarray:
    """The input onnx's backend runner feeds a light model (``generate_dummy_data``).

    ``np.arange(n).reshape(shape) / n`` as float32, dims without a value taken as 1.
    """
    if value.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise NotImplementedError(f"input {value.name!r} is not float32")
    shape = _dims(value)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def light_model_case(name: str) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """(feeds, expected outputs) of a light model, as onnx's own backend test runs it.

    The expected outputs are the shipped ``light_<name>_output_<i>.pb`` files.
    """
    path = light_model_paths()[name]
    model = onnx.load(path, load_external_data=False)
    feeds = {value.name: dummy_input(value) for value in _feed_inputs(model)}
    expected = []
    prefix = path[: -len(".onnx")]
    for i in range(len(model.graph.output)):
        tensor = onnx.load_tensor(f"{prefix}_output_{i}.pb")
        expected.append(numpy_helper.to_array(tensor))
    return feeds, expected


def light_model_randomized(
    name: str, seed: int = 0
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A light model with seeded random weights, and a random input for it.

    The shipped light models build every weight with ``ConstantOfShape(0.02)``, so their outputs
    are nearly uniform and a kernel that mixes up spatial positions or channels can still match
    them.  Here each such weight becomes a random initializer of the same shape, scaled so the
    activations stay in a sane range (He- or LeCun-scaled uniform Conv/Gemm weights, positive
    scale and variance near 1 for BatchNormalization and the ``Unsqueeze`` -> ``Mul``/``Add``
    affine pairs).
    The input of a final ``Softmax`` becomes an extra graph output, since random weights can
    saturate the probabilities.
    """
    model = onnx.load(light_model_paths()[name], load_external_data=False)
    rng = np.random.default_rng(seed)
    graph = model.graph
    # Types for the logits outputs added below; inferred now, while the model is still small.
    inferred = {value.name: value
                for value in onnx.shape_inference.infer_shapes(model).graph.value_info}
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, input_name in enumerate(node.input):
            consumers.setdefault(input_name, []).append((node, index))

    # He gain for plain conv stacks; in the normalised nets (whose inference-mode BatchNorm does
    # not renormalise random activations) a gain of 1 keeps residual sums from blowing up.
    normalised = any(n.op_type in ("BatchNormalization", "Unsqueeze") for n in graph.node)
    gain = 1.0 if normalised else 2.0
    kept: list[onnx.NodeProto] = []
    new_initializers: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in initializers:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in initializers[node.input[0]])
        uses = consumers.get(node.output[0], [])
        role = (uses[0][0].op_type, uses[0][1]) if uses else ("", 0)
        values = _random_weight(rng, shape, role, uses[0][0] if uses else None, gain)
        new_initializers.append(numpy_helper.from_array(values, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    # Drop the shape initializers nothing reads any more, then add the weights; before IR 4 an
    # initializer must also be a graph input.
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    dead = {name for name in initializers if name not in used}
    alive = [init for init in graph.initializer if init.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(alive + new_initializers)
    inputs = [value for value in graph.input if value.name not in dead]
    if model.ir_version < 4:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in new_initializers]
    del graph.input[:]
    graph.input.extend(inputs)
    # Random weights can saturate the final Softmax; its input (the logits) is an output too.
    outputs = {value.name for value in graph.output}
    logits = [node.input[0] for node in graph.node
              if node.op_type == "Softmax" and node.output[0] in outputs]
    graph.output.extend(inferred[name] for name in logits)

    feeds = {}
    for value in _feed_inputs(model):
        feeds[value.name] = rng.standard_normal(_dims(value)).astype(np.float32)
    return model, feeds


def _random_weight(
    rng: np.random.Generator, shape: tuple[int, ...], role: tuple[str, int],
    consumer: onnx.NodeProto | None, gain: float,
) -> np.ndarray:
    op_type, index = role
    if op_type in ("BatchNormalization", "Unsqueeze") and index in (0, 1, 4):
        # BN scale and variance (positive), and the Unsqueeze -> Mul/Add pairs densenet and
        # inception_v2 spell BN with
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) >= 2:  # Conv [M, C/g, kH, kW], Gemm [N, K] (transB) or [K, N]
        fan_in = int(np.prod(shape[1:]))
        if op_type == "Gemm" and consumer is not None:
            trans_b = any(a.name == "transB" and a.i for a in consumer.attribute)
            fan_in = shape[1] if trans_b else shape[0]
        return _uniform(rng, shape, np.sqrt(gain / max(fan_in, 1)))
    return _uniform(rng, shape, 0.1)  # biases, BN mean


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform float32 values with standard deviation ``std``.

    Uniform rather than normal, made in float32 in place: vgg19 alone has 143M weights.
    """
    values = rng.random(shape, dtype=np.float32)
    values -= np.float32(0.5)
    values *= np.float32(std * np.sqrt(12.0))
    return values


# -- transformers exports ------------------------------------------------------------------------


class ExportedModel(NamedTuple):
    """A model exported to ONNX: ``path, input_names = export_bert(...)``."""

    path: str
    input_names: tuple[str, ...]


BERT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=512, max_position_embeddings=128),
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512),
}
"""``transformers.BertConfig`` arguments: ``tiny`` for tests, ``base`` is bert-base-uncased."""

GPT2_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=1024, n_embd=128, n_layer=2, n_head=4, n_positions=128),
    "small": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
}
"""``transformers.GPT2Config`` arguments: ``tiny`` for tests, ``small`` is the 124M GPT-2."""


def export_bert(
    path: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    opset: int = 17,
    attn_implementation: str = "eager",
    dynamo: bool = False,
    **config_overrides: Any,
) -> ExportedModel:
    """Export a randomly initialised ``BertModel`` (no download) to ``path``.

    Inputs ``input_ids`` and ``attention_mask`` (int64 ``[batch, sequence]``, both dims dynamic);
    outputs ``last_hidden_state`` ``[batch, sequence, hidden]`` and ``pooler_output``
    ``[batch, hidden]``.  ``size`` is ``"tiny"`` (2 layers, hidden 128) or ``"base"``
    (bert-base sizes); ``config_overrides`` go to ``BertConfig``.  Unpack the result as
    ``path, input_names = export_bert(...)`` or use its fields.
    """
    import torch
    from transformers import BertConfig, BertModel

    settings: dict[str, Any] = {**BERT_SIZES[size], "attn_implementation": attn_implementation}
    config = BertConfig(**{**settings, **config_overrides})
    torch.manual_seed(seed)
    bert = BertModel(config).eval()

    class BertWrapper(torch.nn.Module):
        """Positional inputs and a plain tuple of outputs, as the exporter wants."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            return out.last_hidden_state, out.pooler_output

    input_names = ("input_ids", "attention_mask")
    output_names = ("last_hidden_state", "pooler_output")
    ids = torch.randint(0, config.vocab_size, (2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
            "pooler_output": {0: "batch"}}
    _torch_export(BertWrapper(bert), (ids, mask), path, input_names, output_names, axes, opset,
                  dynamo)
    return ExportedModel(os.fspath(path), input_names)


def export_gpt2(
    path: str | os.PathLike[str],
    size: str = "tiny",
    seed: int = 0,
    opset: int = 17,
    attn_implementation: str = "eager",
    dynamo: bool = False,
    **config_overrides: Any,
) -> ExportedModel:
    """Export a randomly initialised ``GPT2LMHeadModel`` (no download, no KV cache) to ``path``.

    Input ``input_ids`` (int64 ``[batch, sequence]``, both dims dynamic); output ``logits``
    ``[batch, sequence, vocab]``.  ``size`` is ``"tiny"`` (2 layers, hidden 128) or ``"small"``
    (the 124M GPT-2).  The wrapper passes an all-ones attention mask: without one transformers
    looks for packed sequences with ``torch.diff``, which the TorchScript exporter cannot export.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    settings: dict[str, Any] = {**GPT2_SIZES[size], "attn_implementation": attn_implementation}
    config = GPT2Config(**{**settings, **config_overrides})
    torch.manual_seed(seed)
    gpt2 = GPT2LMHeadModel(config).eval()

    class GPT2Wrapper(torch.nn.Module):
        """Logits only, computed without a cache."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             use_cache=False, return_dict=True)
            return out.logits

    input_names = ("input_ids",)
    output_names = ("logits",)
    ids = torch.randint(0, config.vocab_size, (2, 8), dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    _torch_export(GPT2Wrapper(gpt2), (ids,), path, input_names, output_names, axes, opset, dynamo)
    return ExportedModel(os.fspath(path), input_names)


def _torch_export(
    module: Any,
    args: tuple[Any, ...],
    path: str | os.PathLike[str],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
    dynamo: bool,
) -> None:
    """``torch.onnx.export`` with names and dynamic dims; TorchScript exporter unless ``dynamo``."""
    import torch

    kwargs: dict[str, Any] = {}
    if dynamo:
        dims = {name: torch.export.Dim(name) for axes in dynamic_axes.values()
                for name in axes.values()}
        kwargs["dynamic_shapes"] = {name: {axis: dims[dim] for axis, dim in axes.items()}
                                    for name, axes in dynamic_axes.items() if name in input_names}
    else:
        kwargs["dynamic_axes"] = dynamic_axes
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, os.fspath(path), input_names=list(input_names),
                          output_names=list(output_names), opset_version=opset, dynamo=dynamo,
                          **kwargs)


def token_feeds(
    input_names: tuple[str, ...] | list[str], batch: int, sequence: int, vocab_size: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random int64 ``input_ids`` (and ``attention_mask`` with the last tokens of the first row
    padded, when the model takes one) for an exported transformer."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, vocab_size, (batch, sequence), dtype=np.int64)}
    if "attention_mask" in input_names:
        mask = np.ones((batch, sequence), dtype=np.int64)
        mask[0, sequence - max(1, sequence // 4):] = 0
        feeds["attention_mask"] = mask
    return feeds


# -- hand-built models ---------------------------------------------------------------------------

_OPSET = 18


def _const(name: str, value: Any, dtype: Any = np.int64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def make_control_flow_model(features: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``If`` and ``Loop`` whose bodies read values of the enclosing scopes.

    Inputs: ``x`` float ``["batch", features]``, ``steps`` int64 scalar (the Loop's trip count),
    ``limit`` float scalar (the Loop stops early once the running sum exceeds it).

    * ``If`` on ``ReduceSum(x) > 0``: the then-branch returns ``x * w + shift`` and the
      else-branch ``x - shift``, where ``w`` is an initializer and ``shift = Abs(x) * 0.5`` is
      computed by the main graph: both are outer-scope values.
    * ``Loop`` (``steps`` iterations, early exit by condition): carries ``acc`` (starting at the
      If's result) and ``total``; each iteration computes ``acc = tanh(acc * decay + x)`` and, in a
      nested ``If`` on the iteration's parity, adds ``ReduceSum(acc)`` or ``ReduceMax(acc)`` to
      ``total``; the nested If reads ``acc`` from the Loop body and ``w`` from the main graph.  It
      scans out ``ReduceSum(acc, axis=1)`` per iteration (``[iterations, batch]``).

    Outputs: ``branch`` ``["batch", features]``, ``acc`` ``["batch", features]``, ``total``
    float scalar, ``trace`` ``[iterations, "batch"]``, ``iterations`` int64 scalar.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features,)).astype(np.float32)
    decay = np.float32(0.75)
    f32 = TensorProto.FLOAT

    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "shift"], ["then_out"])],
        "then_branch", [], [helper.make_tensor_value_info("then_out", f32, None)])
    else_graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "shift"], ["else_out"])],
        "else_branch", [], [helper.make_tensor_value_info("else_out", f32, None)])

    # Nested If inside the Loop body: reads acc_new (Loop body) and w (main graph).
    even_graph = helper.make_graph(
        [helper.make_node("Mul", ["acc_new", "w"], ["acc_w"]),
         helper.make_node("ReduceSum", ["acc_w"], ["even_out"], keepdims=0)],
        "even_branch", [], [helper.make_tensor_value_info("even_out", f32, [])])
    odd_graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["acc_new"], ["odd_out"], keepdims=0)],
        "odd_branch", [], [helper.make_tensor_value_info("odd_out", f32, [])])

    body = helper.make_graph(
        [
            helper.make_node("Mul", ["acc_in", "decay"], ["acc_decayed"]),
            helper.make_node("Add", ["acc_decayed", "x"], ["acc_pre"]),
            helper.make_node("Tanh", ["acc_pre"], ["acc_new"]),
            _const("two", 2),
            helper.make_node("Mod", ["i", "two"], ["parity"]),
            _const("zero", 0),
            helper.make_node("Equal", ["parity", "zero"], ["is_even"]),
            helper.make_node("If", ["is_even"], ["step_value"],
                             then_branch=even_graph, else_branch=odd_graph),
            helper.make_node("Add", ["total_in", "step_value"], ["total_out"]),
            helper.make_node("Less", ["total_out", "limit"], ["cond_out"]),
            _const("axes1", [1]),
            helper.make_node("ReduceSum", ["acc_new", "axes1"], ["row_sum"], keepdims=0),
            helper.make_node("Identity", ["acc_new"], ["acc_out"]),
        ],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", f32, None),
         helper.make_tensor_value_info("total_in", f32, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f32, None),
         helper.make_tensor_value_info("total_out", f32, []),
         helper.make_tensor_value_info("row_sum", f32, None)],
    )

    nodes = [
        helper.make_node("Abs", ["x"], ["x_abs"]),
        _const("half", 0.5, np.float32),
        helper.make_node("Mul", ["x_abs", "half"], ["shift"]),
        helper.make_node("ReduceSum", ["x"], ["x_sum"], keepdims=0),
        _const("fzero", 0.0, np.float32),
        helper.make_node("Greater", ["x_sum", "fzero"], ["positive"]),
        helper.make_node("If", ["positive"], ["branch"],
                         then_branch=then_graph, else_branch=else_graph),
        _const("true", True, np.bool_),
        helper.make_node("Loop", ["steps", "true", "branch", "fzero"],
                         ["acc", "total", "trace"], body=body),
        helper.make_node("Shape", ["trace"], ["trace_shape"], start=0, end=1),
        helper.make_node("Squeeze", ["trace_shape"], ["iterations"]),
    ]
    graph = helper.make_graph(
        nodes,
        "control_flow",
        [helper.make_tensor_value_info("x", f32, ["batch", features]),
         helper.make_tensor_value_info("steps", TensorProto.INT64, []),
         helper.make_tensor_value_info("limit", f32, [])],
        [helper.make_tensor_value_info("branch", f32, ["batch", features]),
         helper.make_tensor_value_info("acc", f32, ["batch", features]),
         helper.make_tensor_value_info("total", f32, []),
         helper.make_tensor_value_info("trace", f32, ["iterations", "batch"]),
         helper.make_tensor_value_info("iterations", TensorProto.INT64, [])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.asarray(decay), "decay")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="hetrix.testing.models")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def control_flow_feeds(
    batch: int, steps: int, limit: float = 1e9, sign: float = 1.0, features: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Feeds for :func:`make_control_flow_model`; ``sign`` picks the If branch (+1 then, -1 else).

    ``x`` is shifted so its sum has the sign asked for.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, features)).astype(np.float32)
    x = x - x.mean() + np.float32(sign * 0.25)
    return {"x": x.astype(np.float32), "steps": np.asarray(steps, dtype=np.int64),
            "limit": np.asarray(limit, dtype=np.float32)}


def make_dynamic_shape_model(
    hidden: int = 16, heads: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """Self-attention-like block over symbolic ``batch`` and ``sequence`` dims.

    Input ``x`` float ``["batch", "sequence", hidden]``.  Every reshape target is computed at run
    time the way exporters do it: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, with
    ``Mul``/``Div`` on the gathered dims, plus ``Range`` over the sequence length (positions),
    ``ConstantOfShape``/``Expand`` from run-time shapes, ``Trilu`` for a causal mask and a
    ``Slice`` whose end is ``sequence - 1``.

    Outputs: ``y`` ``["batch", "sequence", hidden]``, ``flat`` ``["batch*sequence", hidden]``,
    ``shifted`` ``["batch", "sequence-1", hidden]`` and ``shape`` (int64 ``[3]``, ``y``'s shape
    computed inside the graph).
    """
    if hidden % heads:
        raise ValueError("hidden must be a multiple of heads")
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    wq = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    wo = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    pos_scale = rng.standard_normal((1, 1, hidden)).astype(np.float32) * np.float32(0.1)
    f32 = TensorProto.FLOAT

    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        _const("i0", 0), _const("i1", 1), _const("i2", 2),
        helper.make_node("Gather", ["x_shape", "i0"], ["batch"], axis=0),
        helper.make_node("Gather", ["x_shape", "i1"], ["seq"], axis=0),
        helper.make_node("Gather", ["x_shape", "i2"], ["hid"], axis=0),
        _const("axes0", [0]),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch_1d"]),
        helper.make_node("Unsqueeze", ["seq", "axes0"], ["seq_1d"]),
        helper.make_node("Unsqueeze", ["hid", "axes0"], ["hid_1d"]),
        # positions: Range(0, seq) as float, scaled, broadcast onto x
        _const("r_start", 0), _const("r_step", 1),
        helper.make_node("Range", ["r_start", "seq", "r_step"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["positions_f"], to=f32),
        _const("pos_axes", [0, 2]),
        helper.make_node("Unsqueeze", ["positions_f", "pos_axes"], ["positions_3d"]),
        helper.make_node("Mul", ["positions_3d", "pos_scale"], ["pos_emb"]),
        helper.make_node("Add", ["x", "pos_emb"], ["x_pos"]),
        # q = x_pos @ wq, split into heads: [b, s, heads, head_dim] -> [b, heads, s, head_dim]
        helper.make_node("MatMul", ["x_pos", "wq"], ["q"]),
        _const("heads_1d", [heads]),
        helper.make_node("Div", ["hid_1d", "heads_1d"], ["head_dim_1d"]),
        helper.make_node("Concat", ["batch_1d", "seq_1d", "heads_1d", "head_dim_1d"],
                         ["heads_shape"], axis=0),
        helper.make_node("Reshape", ["q", "heads_shape"], ["q_heads"]),
        helper.make_node("Transpose", ["q_heads"], ["q_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["q_heads"], ["k_t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores_raw"]),
        _const("scale", 1.0 / np.sqrt(head_dim), np.float32),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        # causal mask [s, s] built from the run-time length, expanded to the scores' shape
        helper.make_node("Concat", ["seq_1d", "seq_1d"], ["mask_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["mask_shape"], ["ones"],
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Trilu", ["ones"], ["lower"], upper=0),
        _const("fzero", 0.0, np.float32),
        helper.make_node("Equal", ["lower", "fzero"], ["masked"]),
        helper.make_node("Shape", ["scores"], ["scores_shape"]),
        helper.make_node("Expand", ["masked", "scores_shape"], ["masked_full"]),
        _const("neg", -1e4, np.float32),
        helper.make_node("Where", ["masked_full", "neg", "scores"], ["scores_masked"]),
        helper.make_node("Softmax", ["scores_masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "q_t"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        _const("minus_one", [-1]),
        helper.make_node("Concat", ["batch_1d", "seq_1d", "minus_one"], ["merge_shape"], axis=0),
        helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["merged"]),
        helper.make_node("MatMul", ["merged", "wo"], ["proj"]),
        helper.make_node("Add", ["proj", "x"], ["y"]),
        # flat: [batch * seq, hidden] via Mul on the gathered dims
        helper.make_node("Mul", ["batch_1d", "seq_1d"], ["rows_1d"]),
        helper.make_node("Concat", ["rows_1d", "hid_1d"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["y", "flat_shape"], ["flat"]),
        # shifted: y[:, 1:, :] with the end computed from the length (seq), start 1
        _const("s_start", [1]), _const("s_axes", [1]),
        helper.make_node("Slice", ["y", "s_start", "seq_1d", "s_axes"], ["shifted"]),
        helper.make_node("Shape", ["y"], ["shape"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_shapes",
        [helper.make_tensor_value_info("x", f32, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", f32, ["batch", "sequence", hidden]),
         helper.make_tensor_value_info("flat", f32, ["batch_x_sequence", hidden]),
         helper.make_tensor_value_info("shifted", f32, ["batch", "sequence_minus_1", hidden]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
        initializer=[numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(wo, "wo"),
                     numpy_helper.from_array(pos_scale, "pos_scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="hetrix.testing.models")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def dynamic_shape_feeds(
    batch: int, sequence: int, hidden: int = 16, seed: int = 0
) -> dict[str, np.ndarray]:
    """A random ``x`` for :func:`make_dynamic_shape_model`."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, sequence, hidden)).astype(np.float32)}


def with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose main graph also outputs every value its nodes compute.

    For comparing ``run_with_intermediates`` with onnxruntime, which returns graph outputs only.
    Types come from shape inference where it knows them.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(copy)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    existing = {o.name for o in copy.graph.output}
    for node in copy.graph.node:
        for name in node.output:
            if not name or name in existing:
                continue
            existing.add(name)
            if name in known:
                copy.graph.output.append(known[name])
            else:
                copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy
