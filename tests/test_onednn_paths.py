"""The oneDNN paths of the NumPy CPU backend, each test run with PyTorch's kernels and NumPy-only,
against ONNX Runtime (with its graph optimizations off, so that it computes the model as written).

What these paths add over plain NumPy, and so what the tests aim at:

* ``hetrix.FusedConv`` applies its activation and its residual ``Z`` as oneDNN post-ops; the
  activations oneDNN lacks (HardSigmoid) and residuals that only broadcast fall back to NumPy;
* weights are packed once per node: the result must follow a weight fed anew each run, and input
  shapes that change (batch and image size);
* conv outputs are channels-last (NHWC-strided) views that flow into NumPy kernels (Concat,
  Flatten, Slice, Split, ReduceMean...) and out to the caller;
* PyTorch's pooling is used only where its geometry is ONNX's (pads, ceil_mode, dilations);
* the Conv+Add fusion pass, on ResNet-50 and where it must not fire.

The ``route`` fixture counts the oneDNN convolutions and PyTorch pools, so that a test meant for
those paths fails when they quietly stop being taken (and that NumPy-only never takes them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hetrix
from hetrix.backends.numpy_cpu.kernels import _dnnl, _library, _onednn, pool
from hetrix.passes import optimize
from hetrix.testing.models import light_model_randomized

FLOAT = TensorProto.FLOAT


# --------------------------------------------------------------------------- fixtures, helpers


@dataclass
class Route:
    """The kernel library a test runs with, and what ran on the oneDNN paths."""

    library: bool
    convs: int = 0
    """Calls of ``_onednn.conv2d``."""
    pools: int = 0
    """PyTorch pool results used (``pool._torch_pool`` calls that did not decline)."""
    kept_pools: int = 0
    """Pool results from a oneDNN primitive the node keeps (``pool._kept_pool``, :mod:`._dnnl`)."""
    post_ops: list[str] = field(default_factory=list)
    """The activation each oneDNN conv applied as its post-op ("" for none)."""
    residuals: int = 0
    """oneDNN convs handed the residual ``Z`` to add."""

    def check_convs(self, onednn: bool = True) -> None:
        """The oneDNN conv ran exactly when PyTorch is allowed and ``onednn`` says it should."""
        if self.library and onednn:
            assert self.convs > 0, "expected the oneDNN convolution to run"
        else:
            assert self.convs == 0, "expected the NumPy convolution only"


@pytest.fixture(params=["library", "pytorch-conv", "numpy-only"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Route:
    """Run the test with the kernel libraries installed (PyTorch's, and oneDNN's own primitives
    when the ``onednn`` extra is there: :mod:`._dnnl`), with PyTorch's convolution call instead
    of those primitives, and NumPy-only; count oneDNN's calls."""
    library = request.param != "numpy-only"
    if library:
        if _library.torch_functional() is None:
            pytest.skip("PyTorch is not installed, or HETRIX_NUMPY_ONLY=1")
        if request.param == "pytorch-conv":
            if not _dnnl.available():
                pytest.skip("the oneDNN library is not installed: 'library' is this route")
            monkeypatch.setattr(_dnnl, "_LIBRARY", None)
    else:
        monkeypatch.setattr(_library, "_FUNCTIONAL", False)
    state = Route(library)
    conv2d, torch_pool, kept_pool = _onednn.conv2d, pool._torch_pool, pool._kept_pool

    def counted_conv2d(*args: Any, **kwargs: Any) -> np.ndarray:
        state.convs += 1
        state.post_ops.append(kwargs.get("activation", ""))
        state.residuals += kwargs.get("residual") is not None
        return conv2d(*args, **kwargs)

    def counted_pool(*args: Any, **kwargs: Any) -> np.ndarray | None:
        result = torch_pool(*args, **kwargs)
        state.pools += result is not None
        return result

    def counted_kept_pool(*args: Any, **kwargs: Any) -> np.ndarray | None:
        result = kept_pool(*args, **kwargs)
        state.kept_pools += result is not None
        return result

    monkeypatch.setattr(_onednn, "conv2d", counted_conv2d)
    monkeypatch.setattr(pool, "_torch_pool", counted_pool)
    monkeypatch.setattr(pool, "_kept_pool", counted_kept_pool)
    return state


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def conv_weights(rng: np.random.Generator, prefix: str, w_shape: Sequence[int],
                 bias: bool = True) -> dict[str, np.ndarray]:
    """He-scaled weight (and bias) initializers ``<prefix>_w``/``<prefix>_b`` for a Conv."""
    fan_in = int(np.prod(w_shape[1:]))
    values = {f"{prefix}_w": f32(rng, *w_shape) * np.float32(np.sqrt(2.0 / fan_in))}
    if bias:
        values[f"{prefix}_b"] = f32(rng, w_shape[0]) * np.float32(0.1)
    return values


def conv(prefix: str, x: str, y: str, bias: bool = True, **attrs: Any) -> onnx.NodeProto:
    """A Conv node reading the initializers of :func:`conv_weights`."""
    inputs = [x, f"{prefix}_w"] + ([f"{prefix}_b"] if bias else [])
    return helper.make_node("Conv", inputs, [y], **attrs)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, Sequence[Any]],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    int64_outputs: Sequence[str] = (),
    hetrix_domain: bool = False,
) -> onnx.ModelProto:
    """A one-graph model with float32 inputs; outputs are float32 unless named in int64_outputs."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(name, FLOAT, list(shape)) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.INT64 if name in int64_outputs else FLOAT,
                                       None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in (initializers or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)]
    if hetrix_domain:
        opsets.append(helper.make_opsetid("hetrix", 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


class Compared:
    """One model opened in Hetrix and in ONNX Runtime; :meth:`check` runs both on one feed."""

    def __init__(self, model: onnx.ModelProto, level: int = 99,
                 reference: onnx.ModelProto | None = None) -> None:
        # no run at load: the route checks count the kernel calls of the runs they make
        options = hetrix.SessionOptions(graph_optimization_level=level, warm_up=False)
        self.ours = hetrix.InferenceSession(model, options)
        ort_options = ort.SessionOptions()
        ort_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.theirs = ort.InferenceSession((reference or model).SerializeToString(), ort_options,
                                           providers=["CPUExecutionProvider"])

    def count(self, rule: str) -> int:
        """How often the graph passes applied ``rule`` (e.g. "Conv+Add") in Hetrix's session."""
        return self.ours.get_optimization_report().count(rule)

    def check(self, feeds: dict[str, np.ndarray], rtol: float = 1e-4) -> list[np.ndarray]:
        """Hetrix's outputs, after checking them against ORT's and that no feed was written to."""
        before = {name: value.copy() for name, value in feeds.items()}
        ours = self.ours.run(None, feeds)
        theirs = self.theirs.run(None, feeds)
        assert_outputs_close(ours, theirs, rtol)
        for name, value in feeds.items():
            np.testing.assert_array_equal(value, before[name], err_msg=f"feed {name!r} changed")
        return ours


def assert_outputs_close(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray],
                         rtol: float = 1e-4) -> None:
    """Same shapes and dtypes; floats within rtol, and rtol of the output's scale near zero."""
    assert len(ours) == len(theirs)
    for index, (actual, expected) in enumerate(zip(ours, theirs, strict=True)):
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, index
        if expected.dtype.kind in "iu":
            np.testing.assert_array_equal(actual, expected, err_msg=f"output {index}")
            continue
        scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale,
                                   err_msg=f"output {index}")


# --------------------------------------------------------------------------- 1. fused convs

X_SHAPE = (2, 8, 10, 10)
W_SHAPE = (8, 8, 3, 3)
PAD1: dict[str, Any] = {"pads": [1, 1, 1, 1]}

class Activation(NamedTuple):
    """An activation node after a Conv, and what oneDNN is to make of it."""

    op: str
    post_op: str
    """The Hetrix activation oneDNN applies as a post-op ("" when NumPy applies it after)."""
    attrs: dict[str, Any] = {}
    extra_inputs: tuple[str, ...] = ()
    constants: dict[str, np.ndarray] = {}
    opset: int = 17

    def node(self, x: str, y: str) -> onnx.NodeProto:
        return helper.make_node(self.op, [x, *self.extra_inputs], [y], **self.attrs)


ACTIVATIONS: dict[str, Activation] = {
    "Relu": Activation("Relu", "Relu"),
    "Clip_0_6": Activation("Clip", "Clip", extra_inputs=("lo", "hi"),
                           constants={"lo": np.float32(0), "hi": np.float32(6)}),
    "Clip_min_only": Activation("Clip", "Clip", extra_inputs=("lo",),
                                constants={"lo": np.float32(-0.25)}),
    "Clip_max_only": Activation("Clip", "Clip", extra_inputs=("", "hi"),
                                constants={"hi": np.float32(0.5)}),
    "Clip_attributes": Activation("Clip", "Clip", {"min": -0.5, "max": 0.75}, opset=10),
    "LeakyRelu": Activation("LeakyRelu", "LeakyRelu", {"alpha": 0.2}),
    "LeakyRelu_default_alpha": Activation("LeakyRelu", "LeakyRelu"),
    "Sigmoid": Activation("Sigmoid", "Sigmoid"),
    "Tanh": Activation("Tanh", "Tanh"),
    "HardSigmoid": Activation("HardSigmoid", "", {"alpha": 0.3, "beta": 0.4}),
    "Gelu": Activation("Gelu", "Gelu", opset=20),
    "Gelu_tanh": Activation("Gelu", "GeluTanh", {"approximate": "tanh"}, opset=20),
    "HardSwish": Activation("HardSwish", "HardSwish"),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_conv_activation_matches_onnxruntime(name: str, route: Route,
                                             rng: np.random.Generator) -> None:
    act = ACTIVATIONS[name]
    model = make_model(
        [conv("c", "x", "c", **PAD1), act.node("c", "y")], {"x": X_SHAPE}, ["y"],
        {**conv_weights(rng, "c", W_SHAPE), **act.constants}, opset=act.opset,
    )
    compared = Compared(model)
    compared.check({"x": f32(rng, *X_SHAPE)})
    assert compared.count("activation fusion") == 1
    route.check_convs()
    assert route.post_ops == ([act.post_op] if route.library else [])


@pytest.mark.parametrize("name", ["Relu", "Clip_0_6", "HardSigmoid", "Gelu"])
def test_conv_residual_activation_matches_onnxruntime(name: str, route: Route,
                                                      rng: np.random.Generator) -> None:
    """act(Conv + Z): oneDNN adds Z; the activation is a post-op after it, or NumPy's (which
    ones oneDNN takes after a residual is the kernel's choice, not checked here)."""
    act = ACTIVATIONS[name]
    nodes = [conv("c", "x", "c", **PAD1), helper.make_node("Add", ["c", "z"], ["s"]),
             act.node("s", "y")]
    model = make_model(nodes, {"x": X_SHAPE, "z": X_SHAPE}, ["y"],
                       {**conv_weights(rng, "c", W_SHAPE), **act.constants}, opset=act.opset)
    compared = Compared(model)
    compared.check({"x": f32(rng, *X_SHAPE), "z": f32(rng, *X_SHAPE)})
    assert compared.count("Conv+Add") == 1 and compared.count("activation fusion") == 1
    route.check_convs()
    assert route.residuals == (1 if route.library else 0)


RESIDUALS: dict[str, tuple[list[onnx.NodeProto], bool, list[int], int]] = {
    # name: (nodes after the conv "c" and the addend "z", Conv bias, z's shape, Conv+Add rewrites)
    "add_relu": ([helper.make_node("Add", ["c", "z"], ["s"]),
                  helper.make_node("Relu", ["s"], ["y"])], True, list(X_SHAPE), 1),
    "add_conv_second": ([helper.make_node("Add", ["z", "c"], ["s"]),
                         helper.make_node("Relu", ["s"], ["y"])], True, list(X_SHAPE), 1),
    "sum_relu": ([helper.make_node("Sum", ["c", "z"], ["s"]),
                  helper.make_node("Relu", ["s"], ["y"])], True, list(X_SHAPE), 1),
    "add_no_bias": ([helper.make_node("Add", ["c", "z"], ["y"])], False, list(X_SHAPE), 1),
    "add_no_activation": ([helper.make_node("Add", ["c", "z"], ["y"])], True, list(X_SHAPE), 1),
    # an addend that broadcasts is no residual: the pass leaves it to Add
    "add_broadcast_channels": ([helper.make_node("Add", ["c", "z"], ["s"]),
                                helper.make_node("Relu", ["s"], ["y"])], True, [1, 8, 1, 1], 0),
    "add_broadcast_batch": ([helper.make_node("Add", ["c", "z"], ["y"])], True, [1, 8, 10, 10], 0),
}


@pytest.mark.parametrize("name", sorted(RESIDUALS))
def test_conv_add_matches_onnxruntime(name: str, route: Route, rng: np.random.Generator) -> None:
    after, bias, z_shape, rewrites = RESIDUALS[name]
    model = make_model([conv("c", "x", "c", bias=bias, **PAD1), *after],
                       {"x": X_SHAPE, "z": z_shape}, ["y"], conv_weights(rng, "c", W_SHAPE, bias))
    compared = Compared(model)
    compared.check({"x": f32(rng, *X_SHAPE), "z": f32(rng, *z_shape)})
    assert compared.count("Conv+Add") == rewrites
    route.check_convs()


@pytest.mark.parametrize("activation", ["", "Relu", "HardSigmoid"])
def test_fused_conv_with_broadcast_residual(activation: str, route: Route,
                                            rng: np.random.Generator) -> None:
    """hetrix.FusedConv(X, W, B, Z) with a Z that only broadcasts (the pass never builds one, but
    the kernel accepts it): NumPy adds Z, then applies the activation; ORT runs the ONNX ops."""
    z_shape = [1, 8, 1, 1]
    hard_sigmoid = activation == "HardSigmoid"
    params: dict[str, Any] = {"activation_params": [0.3, 0.4]} if hard_sigmoid else {}
    fused = helper.make_node("FusedConv", ["x", "c_w", "c_b", "z"], ["y"], domain="hetrix",
                             activation=activation, **params, **PAD1)
    reference_nodes = [conv("c", "x", "c", **PAD1), helper.make_node("Add", ["c", "z"], ["s"])]
    if activation:
        attrs: dict[str, Any] = {"alpha": 0.3, "beta": 0.4} if hard_sigmoid else {}
        reference_nodes.append(helper.make_node(activation, ["s"], ["y"], **attrs))
    else:
        reference_nodes.append(helper.make_node("Identity", ["s"], ["y"]))
    weights = conv_weights(rng, "c", W_SHAPE)
    inputs = {"x": X_SHAPE, "z": z_shape}
    model = make_model([fused], inputs, ["y"], weights, hetrix_domain=True)
    reference = make_model(reference_nodes, inputs, ["y"], weights)
    Compared(model, reference=reference).check({"x": f32(rng, *X_SHAPE), "z": f32(rng, *z_shape)})
    route.check_convs()


def test_residual_read_by_a_later_node_is_unchanged(route: Route,
                                                    rng: np.random.Generator) -> None:
    """Z is itself a (channels-last) conv output that another node reads after the fused conv:
    the residual post-op must not write into it."""
    nodes = [
        conv("a", "x", "z", **PAD1),
        conv("b", "z", "c", **PAD1),
        helper.make_node("Add", ["c", "z"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
        helper.make_node("Mul", ["z", "two"], ["z2"]),
    ]
    weights = {**conv_weights(rng, "a", W_SHAPE), **conv_weights(rng, "b", W_SHAPE),
               "two": np.float32(2)}
    compared = Compared(make_model(nodes, {"x": X_SHAPE}, ["y", "z2"], weights))
    compared.check({"x": f32(rng, *X_SHAPE)})
    assert compared.count("Conv+Add") == 1
    route.check_convs()


GEOMETRIES: dict[str, tuple[tuple[int, ...], tuple[int, ...], dict[str, Any], bool]] = {
    # name: (x shape, w shape, Conv attributes, runs on oneDNN (symmetric pads only))
    "grouped": ((2, 8, 10, 10), (12, 4, 3, 3), {"group": 2, **PAD1}, True),
    "depthwise": ((2, 8, 10, 10), (8, 1, 3, 3), {"group": 8, **PAD1}, True),
    "depthwise_multiplier": ((1, 4, 9, 9), (8, 1, 3, 3), {"group": 4, **PAD1}, True),
    "strided": ((2, 8, 11, 11), (8, 8, 3, 3), {"strides": [2, 2], **PAD1}, True),
    "strided_rectangular": ((1, 8, 10, 12), (8, 8, 3, 1), {"strides": [2, 1],
                                                           "pads": [1, 0, 1, 0]}, True),
    "dilated": ((2, 8, 12, 12), (8, 8, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True),
    "pointwise_strided": ((2, 8, 10, 10), (16, 8, 1, 1), {"strides": [2, 2]}, True),
    "stem_7x7": ((1, 3, 20, 20), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}, True),
    "no_padding_5x5": ((1, 8, 12, 12), (8, 8, 5, 5), {}, True),
    "same_upper_s1": ((1, 8, 10, 10), (8, 8, 3, 3), {"auto_pad": "SAME_UPPER"}, True),
    # asymmetric pads keep the NumPy kernel
    "asymmetric_pads": ((2, 8, 10, 10), (8, 8, 3, 3), {"pads": [0, 1, 1, 2]}, False),
    "same_upper_s2": ((1, 8, 10, 10), (8, 8, 3, 3), {"auto_pad": "SAME_UPPER",
                                                     "strides": [2, 2]}, False),
    # other ranks keep it too, residual and all
    "conv1d": ((2, 8, 20), (8, 8, 3), {"pads": [1, 1]}, False),
    "conv3d": ((1, 4, 6, 6, 6), (4, 4, 3, 3, 3), {"pads": [1] * 6}, False),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_conv_geometry_with_residual_and_relu(name: str, route: Route,
                                              rng: np.random.Generator) -> None:
    """Relu(ConvA(x) + ConvB(x)) for each geometry: one conv fuses the other's (channels-last)
    output as its residual, then the Relu."""
    x_shape, w_shape, attrs, onednn = GEOMETRIES[name]
    nodes = [
        conv("a", "x", "a", **attrs),
        conv("b", "x", "b", bias=False, **attrs),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    weights = {**conv_weights(rng, "a", w_shape), **conv_weights(rng, "b", w_shape, bias=False)}
    compared = Compared(make_model(nodes, {"x": x_shape}, ["y"], weights))
    compared.check({"x": f32(rng, *x_shape)})
    assert compared.count("Conv+Add") == 1 and compared.count("activation fusion") == 1
    route.check_convs(onednn)


def _conv_with_weight_input() -> onnx.ModelProto:
    """Relu(Conv(x, w, b)) with the weight a graph input, fed anew each run."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **PAD1),
             helper.make_node("Relu", ["c"], ["y"])]
    bias = np.linspace(-0.5, 0.5, W_SHAPE[0], dtype=np.float32)
    return make_model(nodes, {"x": X_SHAPE, "w": W_SHAPE}, ["y"], {"b": bias})


def test_weight_fed_as_input_follows_each_run(route: Route, rng: np.random.Generator) -> None:
    """The packed weight is reused only while it is the same array: a new one repacks."""
    compared = Compared(_conv_with_weight_input())
    x = f32(rng, *X_SHAPE)
    first, second = f32(rng, *W_SHAPE), f32(rng, *W_SHAPE)
    for w in (first, second, first, second.copy()):
        compared.check({"x": x, "w": w})
    route.check_convs()


def test_weight_fed_as_input_changed_in_place(route: Route, rng: np.random.Generator) -> None:
    """The caller writes new values into the same weight array between runs (a reused buffer):
    ORT reads the new values, so must Hetrix (only read-only constants keep a packed copy)."""
    compared = Compared(_conv_with_weight_input())
    x, w = f32(rng, *X_SHAPE), f32(rng, *W_SHAPE)
    compared.check({"x": x, "w": w})
    w *= np.float32(-2)
    compared.check({"x": x, "w": w})


DYNAMIC: dict[str, tuple[list[Any], list[tuple[int, int, int]], int]] = {
    # name: (x and z dims, (batch, height, width) of each run, Conv+Add rewrites)
    "batch": (["N", 8, 10, 10], [(1, 10, 10), (3, 10, 10), (1, 10, 10), (3, 10, 10),
                                 (1, 10, 10)], 1),
    # the conv's output shape is unknown to the pass, which then leaves the Add alone
    "batch_and_image": (["N", 8, "H", "W"], [(1, 10, 10), (3, 10, 10), (2, 7, 13),
                                             (1, 16, 16), (1, 10, 10)], 0),
}


@pytest.mark.parametrize("name", sorted(DYNAMIC))
def test_dynamic_shapes_reuse_packed_weights(name: str, route: Route,
                                             rng: np.random.Generator) -> None:
    """Weights are packed for the first input shape; later batches and image sizes (and shape
    specialization, from the third run of a shape) must still be exact."""
    dims, runs, rewrites = DYNAMIC[name]
    nodes = [
        conv("a", "x", "a", **PAD1),
        helper.make_node("Add", ["a", "z"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        conv("b", "r", "b", strides=[2, 2], **PAD1),
        helper.make_node("Sigmoid", ["b"], ["y"]),
    ]
    weights = {**conv_weights(rng, "a", W_SHAPE), **conv_weights(rng, "b", (4, 8, 3, 3))}
    compared = Compared(make_model(nodes, {"x": dims, "z": dims}, ["y"], weights))
    assert compared.count("Conv+Add") == rewrites
    for batch, height, width in runs:
        shape = (batch, 8, height, width)
        compared.check({"x": f32(rng, *shape), "z": f32(rng, *shape)})
    route.check_convs()


def _channels_last(array: np.ndarray) -> np.ndarray:
    """The same values laid out NHWC (as a conv output here is, and as a caller may feed)."""
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _read_only(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array


def test_prepared_conv_calls_follow_layout_shape_and_writability(route: Route,
                                                                 rng: np.random.Generator) -> None:
    """After its first run a node repeats its oneDNN call without the full path (see
    ``_onednn.PreparedConv``) only while the input's shape, layout, type and writability are what
    it prepared for: each change below must take the full path again and stay exact."""
    nodes = [
        conv("a", "x", "a", **PAD1), helper.make_node("Relu", ["a"], ["r"]),
        conv("b", "r", "b", **PAD1), helper.make_node("Add", ["b", "r"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    weights = {**conv_weights(rng, "a", W_SHAPE), **conv_weights(rng, "b", W_SHAPE)}
    compared = Compared(make_model(nodes, {"x": ["N", 8, 10, 10]}, ["y"], weights))
    assert compared.count("Conv+Add") == 1
    x2, x3 = f32(rng, 2, 8, 10, 10), f32(rng, 3, 8, 10, 10)
    feeds = [x2, x2, x2, _channels_last(x2), _channels_last(x2), x2, x3, x3, x3,
             _read_only(_channels_last(x3)), _channels_last(x3), x2]
    full_path_calls = []
    for x in feeds:
        before = route.convs
        compared.check({"x": x})
        full_path_calls.append(route.convs - before)
    if route.library and _dnnl.available():
        # with the kept primitives (_dnnl): conv "a" reads the feed; a channels-last feed of a
        # shape seen before takes its primitive at once, an NCHW one (the read-only copy is
        # NCHW too) is first copied to NHWC on the general path; conv "b" (with its residual)
        # reads conv outputs, so its primitive serves every run of a shape from the first on;
        # back at batch 2 at the end, conv "b" runs the direct call its batch-2 plan bound
        # (see test_direct_calls.py), which the general path does not count
        assert full_path_calls == [2, 1, 1, 0, 0, 1, 2, 1, 1, 1, 0, 1]
    elif route.library:
        # PyTorch's call: conv "a" prepared only while the feed is channels-last and writable;
        # conv "b" prepared from its second run of a shape on
        assert full_path_calls == [2, 1, 1, 1, 0, 1, 2, 1, 1, 1, 1, 2]
    route.check_convs()


def _released_weights(session: hetrix.InferenceSession) -> list[np.ndarray]:
    """The weights whose memory the session's conv nodes released after packing them."""
    return [step.ctx.cache["onednn_released"] for step in session._plan.steps
            if "onednn_released" in step.ctx.cache]


def test_packed_weights_release_their_originals_and_stay_exact(
        route: Route, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A float32 weight only one conv reads is held once, in oneDNN's layout, after the first
    run (its NumPy pages are handed back); one that two convs read and a graph input with an
    initializer keep their memory, and a graph output computed from a weight keeps its values.
    Outputs stay ORT's on every run, also when a later run takes the NumPy path and the weight
    is rebuilt from the packed copy.  The model is read from a file, as users load theirs: its
    weights are then arrays of their own (from bytes they are views of the serialized message,
    which are never released)."""
    big = (64, 64, 3, 3)  # 144 KiB: above the size worth releasing
    weights = {**conv_weights(rng, "a", big), **conv_weights(rng, "s", big),
               **conv_weights(rng, "o", big), **conv_weights(rng, "i", big)}
    nodes = [
        conv("a", "x", "a", **PAD1),
        conv("s", "a", "s1", **PAD1), conv("s", "s1", "s2", **PAD1),  # "s_w" read twice
        conv("o", "s2", "o", **PAD1),
        conv("i", "o", "i", **PAD1),
        helper.make_node("Identity", ["o_w"], ["o_w_out"]),
    ]
    model = make_model(nodes, {"x": [1, 64, 8, 8]}, ["i", "o_w_out"], weights)
    model.graph.input.append(helper.make_tensor_value_info("i_w", FLOAT, list(big)))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    compared = Compared(model)
    compared.ours = hetrix.InferenceSession(str(path))
    owned = {step.ctx.input_names[1] for step in compared.ours._plan.steps
             if 1 in step.ctx.owned_inputs}
    assert "a_w" in owned and not {"s_w", "i_w"} & owned
    x = f32(rng, 1, 64, 8, 8)
    for _ in range(3):
        compared.check({"x": x})
    released = _released_weights(compared.ours)
    if route.library:
        assert len(released) == len(owned) and all(w.shape == big for w in released)
        assert any(not np.array_equal(w, weights["a_w"]) for w in released)  # pages read 0
        monkeypatch.setattr(_library, "_FUNCTIONAL", False)  # the next run takes NumPy's conv
        compared.check({"x": x})
    else:
        assert released == []
    route.check_convs()


def test_release_pages_keeps_the_edges_and_needs_owned_memory() -> None:
    from hetrix.runtime.memory import release_pages

    array = np.arange(300_000, dtype=np.float32)
    page_floats = 4096 // 4
    released = release_pages(array)
    if released:  # Linux
        assert released % 4096 == 0 and released > array.nbytes - 2 * 4096
        head = (-array.ctypes.data % 4096) // 4  # floats before the first whole page
        np.testing.assert_array_equal(array[:head], np.arange(head, dtype=np.float32))
        assert not array[head:head + page_floats].any()
        tail = (array.ctypes.data + array.nbytes) % 4096 // 4
        if tail:
            np.testing.assert_array_equal(array[-tail:],
                                          np.arange(300_000 - tail, 300_000, dtype=np.float32))
    assert release_pages(np.arange(300_000, dtype=np.float32)[::2]) == 0  # a view: not its own


# --------------------------------------------------------------------------- 2. NHWC outputs


def _chain(rng: np.random.Generator, after: list[onnx.NodeProto], outputs: list[str],
           constants: dict[str, np.ndarray] | None = None,
           ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [2, 8, 6, 6] -> Relu(Conv 3x3) "c" (channels-last on oneDNN) -> ``after``; weights
    ``d_*`` (8 -> 8), ``e_*`` (4 -> 6) and ``k_*`` (16 -> 4) are there for the nodes after."""
    weights = {
        **conv_weights(rng, "c", (8, 8, 3, 3)),
        **conv_weights(rng, "d", (8, 8, 3, 3)),
        **conv_weights(rng, "e", (6, 4, 3, 3)),
        **conv_weights(rng, "k", (4, 16, 1, 1)),
        **(constants or {}),
    }
    nodes = [conv("c", "x", "c0", **PAD1), helper.make_node("Relu", ["c0"], ["c"]), *after]
    model = make_model(nodes, {"x": [2, 8, 6, 6]}, outputs, weights)
    return model, {"x": f32(rng, 2, 8, 6, 6)}


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


CHAINS: dict[str, Callable[[np.random.Generator], tuple[list[onnx.NodeProto], list[str],
                                                        dict[str, np.ndarray]]]] = {
    "concat_channels_then_conv": lambda rng: (
        [conv("d", "x", "d", **PAD1), helper.make_node("Concat", ["c", "d"], ["cat"], axis=1),
         conv("k", "cat", "y")], ["y", "cat"], {}),
    "concat_negative_axis": lambda rng: (
        [conv("d", "x", "d", **PAD1), helper.make_node("Concat", ["d", "c"], ["y"], axis=-3)],
        ["y"], {}),
    "concat_with_plain_input": lambda rng: (
        [helper.make_node("Concat", ["c", "x"], ["cat"], axis=1), conv("k", "cat", "y")],
        ["y"], {}),
    "concat_spatial": lambda rng: (
        [conv("d", "x", "d", **PAD1), helper.make_node("Concat", ["c", "d"], ["y"], axis=3)],
        ["y"], {}),
    "flatten_gemm": lambda rng: (
        [helper.make_node("Flatten", ["c"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "g_w", "g_b"], ["y"])],
        ["y"], {"g_w": f32(rng, 8 * 6 * 6, 5), "g_b": f32(rng, 5)}),
    "transpose_nhwc": lambda rng: (
        [helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])], ["y"], {}),
    "transpose_swap_hw": lambda rng: (
        [helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]),
         conv("d", "t", "y", **PAD1)], ["y"], {}),
    "reshape_then_matmul": lambda rng: (
        [helper.make_node("Reshape", ["c", "shape"], ["r"]),
         helper.make_node("MatMul", ["r", "m"], ["y"])],
        ["y"], {"shape": _i64(2, 8, 36), "m": f32(rng, 36, 3)}),
    "reshape_flat": lambda rng: (
        [helper.make_node("Reshape", ["c", "shape"], ["y"])], ["y"], {"shape": _i64(-1)}),
    "slice_channels_then_conv": lambda rng: (
        [helper.make_node("Slice", ["c", "s0", "s1", "ax"], ["s"]), conv("e", "s", "y", **PAD1)],
        ["y", "s"], {"s0": _i64(2), "s1": _i64(6), "ax": _i64(1)}),
    "slice_reversed_width_then_conv": lambda rng: (
        [helper.make_node("Slice", ["c", "s0", "s1", "ax", "st"], ["s"]),
         conv("d", "s", "y", **PAD1)],
        ["y"], {"s0": _i64(-1), "s1": _i64(-100), "ax": _i64(3), "st": _i64(-1)}),
    "slice_strided_spatial": lambda rng: (
        [helper.make_node("Slice", ["c", "s0", "s1", "ax", "st"], ["y"])],
        ["y"], {"s0": _i64(1, 0), "s1": _i64(6, 5), "ax": _i64(2, 3), "st": _i64(2, 2)}),
    "split_channels": lambda rng: (
        [helper.make_node("Split", ["c", "sizes"], ["p", "q"], axis=1),
         conv("e", "q", "y", **PAD1)],
        ["p", "q", "y"], {"sizes": _i64(4, 4)}),
    "reduce_mean_spatial": lambda rng: (
        [helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=1)], ["y"], {}),
    "reduce_mean_channels": lambda rng: (
        [helper.make_node("ReduceMean", ["c"], ["y"], axes=[1], keepdims=0)], ["y"], {}),
    "softmax_channels": lambda rng: (
        [helper.make_node("Softmax", ["c"], ["y"], axis=1)], ["y"], {}),
    "swish_then_conv": lambda rng: (
        [helper.make_node("Sigmoid", ["c"], ["g"]), helper.make_node("Mul", ["c", "g"], ["m"]),
         conv("d", "m", "y", **PAD1)], ["y"], {}),
    "add_plain_input_then_conv": lambda rng: (
        [helper.make_node("Add", ["x", "c"], ["a"]), conv("d", "a", "y", **PAD1)], ["y"], {}),
    "pad_then_conv": lambda rng: (
        [helper.make_node("Pad", ["c", "pads"], ["p"]), conv("d", "p", "y")],
        ["y"], {"pads": _i64(0, 0, 1, 1, 0, 0, 1, 1)}),
    "pad_reflect_then_conv": lambda rng: (
        [helper.make_node("Pad", ["c", "pads"], ["p"], mode="reflect"), conv("d", "p", "y")],
        ["y", "p"], {"pads": _i64(0, 0, 2, 1, 0, 0, 1, 2)}),
    "pad_edge": lambda rng: (
        [helper.make_node("Pad", ["c", "pads"], ["y"], mode="edge")],
        ["y"], {"pads": _i64(0, 1, 1, 0, 0, 0, 2, 3)}),
    "pad_crop_with_value": lambda rng: (
        [helper.make_node("Pad", ["c", "pads", "value"], ["y"])],
        ["y"], {"pads": _i64(0, 0, -1, 2, 0, 0, 1, -2), "value": np.float32(0.5)}),
    "resize_nearest_concat_conv": lambda rng: (
        [helper.make_node("Resize", ["c", "", "scales"], ["u"], mode="nearest"),
         helper.make_node("Concat", ["u", "u"], ["cat"], axis=1), conv("k", "cat", "y")],
        ["y", "u"], {"scales": np.array([1, 1, 2, 2], np.float32)}),
    "resize_linear_sizes": lambda rng: (
        [helper.make_node("Resize", ["c", "", "", "sizes"], ["y"], mode="linear")],
        ["y"], {"sizes": _i64(2, 8, 9, 11)}),
    "resize_cubic_half_pixel": lambda rng: (
        [helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="cubic",
                          coordinate_transformation_mode="half_pixel")],
        ["y"], {"scales": np.array([1, 1, 1.5, 0.75], np.float32)}),
    "resize_crop_extrapolate": lambda rng: (  # sizes: with scales, ORT's output shape
        # leaves the roi's extent out where the spec's formula has it
        [helper.make_node("Resize", ["c", "roi", "", "sizes"], ["y"], mode="linear",
                          coordinate_transformation_mode="tf_crop_and_resize",
                          extrapolation_value=-3.0)],
        ["y"], {"roi": np.array([0, 0, -0.2, 0.1, 1, 1, 1.1, 0.8], np.float32),
                "sizes": _i64(2, 8, 12, 9)}),
    "depth_to_space_dcr_then_conv": lambda rng: (
        [helper.make_node("DepthToSpace", ["c"], ["d2s"], blocksize=2),
         helper.make_node("Concat", ["d2s", "d2s"], ["cat"], axis=1), conv("e", "cat", "y")],
        ["y", "d2s"], {}),
    "depth_to_space_crd": lambda rng: (
        [helper.make_node("DepthToSpace", ["c"], ["y"], blocksize=2, mode="CRD")], ["y"], {}),
    "space_to_depth_then_conv": lambda rng: (
        [helper.make_node("SpaceToDepth", ["c"], ["s2d"], blocksize=2),
         helper.make_node("Slice", ["s2d", "s0", "s1", "ax"], ["part"]),
         conv("k", "part", "y")], ["y", "s2d"], {"s0": _i64(0), "s1": _i64(16), "ax": _i64(1)}),
    "conv_output_is_graph_output": lambda rng: ([], ["c"], {}),
    "plain_conv_output_is_graph_output": lambda rng: ([], ["c0", "c"], {}),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_channels_last_output_feeds_numpy_ops(name: str, route: Route,
                                              rng: np.random.Generator) -> None:
    after, outputs, constants = CHAINS[name](rng)
    model, feeds = _chain(rng, after, outputs, constants)
    ours = Compared(model).check(feeds)
    for value in ours:  # what the caller gets is a plain array it may write to
        assert isinstance(value, np.ndarray) and value.flags.writeable
    route.check_convs()


# --------------------------------------------------------------------------- 3. pools

MAX_POOLS: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {
    # name: (spatial size, MaxPool attributes)
    "k3_s2_p1": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "k2_s2": ((10, 10), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "k1_s2": ((10, 10), {"kernel_shape": [1, 1], "strides": [2, 2]}),
    "k3_s2_ceil": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "k3_s2_p1_ceil": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                 "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "k2_s2_ceil_odd": ((11, 9), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "dilated": ((11, 11), {"kernel_shape": [3, 3], "dilations": [2, 2]}),
    "dilated_p1_ceil": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "dilations": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "same_upper_odd": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2],
                                  "auto_pad": "SAME_UPPER"}),
    "same_upper_even": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "auto_pad": "SAME_UPPER"}),
    "same_lower_even": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "auto_pad": "SAME_LOWER"}),
    "pads_end_only": ((10, 10), {"kernel_shape": [3, 3], "pads": [0, 0, 1, 1]}),
    "pads_begin_only": ((10, 10), {"kernel_shape": [3, 3], "pads": [1, 1, 0, 0]}),
    # Inception v2's stride-2 pools: more padding at the end (PyTorch's ceil mode serves)
    "pads_end_only_s2_even": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                         "pads": [0, 0, 1, 1]}),
    "pads_end_only_s2_odd": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "pads": [0, 0, 1, 1]}),
    "pads_end2_s2": ((10, 11), {"kernel_shape": [3, 3], "strides": [2, 2],
                                "pads": [0, 0, 2, 2]}),
    "pads_more_at_end_s2": ((11, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                       "pads": [1, 0, 2, 1]}),
    "pads_mixed": ((10, 9), {"kernel_shape": [3, 3], "strides": [2, 1], "pads": [1, 0, 0, 1]}),
    "pads_asymmetric_ceil": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "pads": [0, 1, 1, 0], "ceil_mode": 1}),
    "pads_over_half_kernel": ((10, 10), {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2]}),
    "rectangular": ((10, 12), {"kernel_shape": [2, 3], "strides": [2, 1],
                               "pads": [1, 1, 1, 1]}),
}

AVERAGE_POOLS: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {
    "k3_s1_p1_exclude": ((10, 10), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "k3_s1_p1_include": ((10, 10), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                    "count_include_pad": 1}),
    "k3_s2_p1_exclude": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2],
                                    "pads": [1, 1, 1, 1]}),
    "k3_s2_p1_include": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2],
                                    "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    "k2_s2": ((10, 10), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "k2_s2_ceil_odd": ((11, 11), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "k3_s2_p1_ceil_exclude": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                         "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "k3_s2_p1_ceil_include": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                         "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                         "count_include_pad": 1}),
    "k3_s2_ceil_exact": ((11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "pads_asymmetric_exclude": ((10, 10), {"kernel_shape": [3, 3], "pads": [0, 0, 1, 1]}),
    "pads_asymmetric_include": ((10, 10), {"kernel_shape": [3, 3], "pads": [0, 0, 1, 1],
                                           "count_include_pad": 1}),
    "same_upper_even": ((10, 10), {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "auto_pad": "SAME_UPPER"}),
    "dilated": ((11, 11), {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    "rectangular": ((9, 12), {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 1, 1, 1]}),
}


def _pool_model(rng: np.random.Generator, op: str, size: tuple[int, int], attrs: dict[str, Any],
                source: str, outputs: Sequence[str] = ("y",), opset: int = 19,
                ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``op`` on x [2, 8, *size] as fed ("plain", C-ordered) or on a 1x1 Conv's output
    ("conv", channels-last on oneDNN); ``outputs`` name the pool's outputs."""
    shape = (2, 8, *size)
    nodes = [helper.make_node(op, ["p"], list(outputs), **attrs)]
    weights: dict[str, np.ndarray] = {}
    if source == "conv":
        nodes.insert(0, conv("c", "x", "p"))
        weights = conv_weights(rng, "c", (8, 8, 1, 1))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["p"]))
    model = make_model(nodes, {"x": shape}, list(outputs), weights, opset=opset,
                       int64_outputs=[name for name in outputs if name == "indices"])
    return model, {"x": f32(rng, *shape)}


@pytest.mark.parametrize("source", ["plain", "conv"])
@pytest.mark.parametrize("name", sorted(MAX_POOLS))
def test_max_pool_matches_onnxruntime(name: str, source: str, route: Route,
                                      rng: np.random.Generator) -> None:
    size, attrs = MAX_POOLS[name]
    model, feeds = _pool_model(rng, "MaxPool", size, attrs, source)
    Compared(model).check(feeds)


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("source", ["plain", "conv"])
@pytest.mark.parametrize("name", ["k3_s2_p1", "k2_s2_ceil_odd", "pads_mixed", "dilated"])
def test_max_pool_with_indices_matches_onnxruntime(name: str, source: str, storage_order: int,
                                                   route: Route,
                                                   rng: np.random.Generator) -> None:
    size, attrs = MAX_POOLS[name]
    attrs = {**attrs, "storage_order": storage_order}
    model, feeds = _pool_model(rng, "MaxPool", size, attrs, source, outputs=("y", "indices"))
    Compared(model).check(feeds)
    # PyTorch's and oneDNN's indices are not ONNX's: the NumPy kernel runs
    assert route.pools == route.kept_pools == 0


@pytest.mark.parametrize("source", ["plain", "conv"])
@pytest.mark.parametrize("name", sorted(AVERAGE_POOLS))
def test_average_pool_matches_onnxruntime(name: str, source: str, route: Route,
                                          rng: np.random.Generator) -> None:
    size, attrs = AVERAGE_POOLS[name]
    model, feeds = _pool_model(rng, "AveragePool", size, attrs, source)
    Compared(model).check(feeds)


@pytest.mark.parametrize(("op", "name"), [("MaxPool", "k3_s2_p1"), ("MaxPool", "pads_mixed"),
                                          ("AveragePool", "k3_s1_p1_include")])
def test_common_pools_run_on_a_library(op: str, name: str, route: Route,
                                       rng: np.random.Generator) -> None:
    """The ResNet/Inception geometries do take a library's pooling when there is one: the
    node's own oneDNN primitive with the onednn extra, else PyTorch's call."""
    size, attrs = (MAX_POOLS if op == "MaxPool" else AVERAGE_POOLS)[name]
    model, feeds = _pool_model(rng, op, size, attrs, "conv")
    Compared(model).check(feeds)
    kept = route.library and _dnnl.available()
    assert route.kept_pools == (1 if kept else 0)
    assert route.pools == (1 if route.library and not kept else 0)


@pytest.mark.parametrize(
    "shape", [(2, 8, 7, 7), (2, 8, 1, 1), (2, 8, 5, 9), (2, 8, 12), (1, 4, 3, 4, 5)]
)
@pytest.mark.parametrize("source", ["plain", "conv"])
def test_global_average_pool_matches_onnxruntime(shape: tuple[int, ...], source: str,
                                                 route: Route,
                                                 rng: np.random.Generator) -> None:
    if source == "conv" and len(shape) != 4:
        pytest.skip("the channels-last source is a 2-D conv")
    nodes = [helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    weights: dict[str, np.ndarray] = {}
    if source == "conv":
        nodes.insert(0, conv("c", "x", "p"))
        weights = conv_weights(rng, "c", (shape[1], shape[1], 1, 1))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["p"]))
    model = make_model(nodes, {"x": shape}, ["y"], weights)
    Compared(model).check({"x": f32(rng, *shape)})


def test_pool_after_conv_then_conv(route: Route, rng: np.random.Generator) -> None:
    """A ResNet stem: Conv 7x7/2 + Relu -> MaxPool 3x3/2 -> Conv + Add + Relu -> GlobalAveragePool
    -> Flatten -> Gemm: the channels-last layout runs through every kernel on the way."""
    nodes = [
        conv("s", "x", "s0", strides=[2, 2], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["s0"], ["s"]),
        helper.make_node("MaxPool", ["s"], ["m"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        conv("a", "m", "a", **PAD1),
        helper.make_node("Add", ["a", "m"], ["r0"]),
        helper.make_node("Relu", ["r0"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["v"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["v"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    weights = {**conv_weights(rng, "s", (8, 3, 7, 7)), **conv_weights(rng, "a", (8, 8, 3, 3)),
               "fc_w": f32(rng, 10, 8), "fc_b": f32(rng, 10)}
    compared = Compared(make_model(nodes, {"x": [2, 3, 32, 32]}, ["y", "r"], weights))
    compared.check({"x": f32(rng, 2, 3, 32, 32)})
    assert compared.count("Conv+Add") == 1
    route.check_convs()
    assert compared.count("conv+pool fusion") == 1  # the stem's pooling joins its conv
    if route.library and _dnnl.available():
        # the stem's pooling in the blocked layout after its conv, the other pool and the
        # global one on kept primitives
        (stem,) = _conv_pool_steps(compared.ours)
        assert "dnnl_conv_pool" in stem.ctx.cache
        assert (route.pools, route.kept_pools) == (0, 2)
    else:  # the two window pools on PyTorch's call (NumPy-only: neither)
        assert (route.pools, route.kept_pools) == (2 if route.library else 0, 0)


# --------------------------------------------------------------------------- 4. the fusion pass


@functools.lru_cache(maxsize=1)
def _resnet50() -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[np.ndarray]]:
    """light ResNet-50 with random weights, its input, and ORT's outputs (computed once)."""
    model, feeds = light_model_randomized("resnet50")
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, feeds, reference.run(None, feeds)


def test_resnet50_fuses_each_residual_add_and_its_relu() -> None:
    model, _, _ = _resnet50()
    ir_model = ir.serde.deserialize_model(model)
    report = optimize(ir_model, 99)
    assert report.count("Conv+Add") == 16  # one per bottleneck block
    residual_convs = [
        n for n in ir_model.graph
        if n.op_type == "FusedConv" and len(n.inputs) == 4 and n.inputs[3] is not None
    ]
    assert len(residual_convs) == 16
    assert all(n.attributes["activation"].value == "Relu" for n in residual_convs)
    assert not any(n.op_type in ("Add", "Sum") for n in ir_model.graph)


def test_resnet50_level99_equals_level0_and_onnxruntime(route: Route) -> None:
    model, feeds, expected = _resnet50()
    optimized = hetrix.InferenceSession(model).run(None, feeds)
    plain = hetrix.InferenceSession(
        model, hetrix.SessionOptions(graph_optimization_level=0)).run(None, feeds)
    assert_outputs_close(optimized, expected)
    assert_outputs_close(plain, expected)
    assert_outputs_close(optimized, plain)
    route.check_convs()


def _fusion_case(rng: np.random.Generator, after: list[onnx.NodeProto], outputs: list[str],
                 ) -> tuple[Compared, dict[str, np.ndarray]]:
    """Conv "c" of x [1, 8, 6, 6], then ``after`` (which may read z and z2, shaped like c)."""
    shape = [1, 8, 6, 6]
    model = make_model([conv("c", "x", "c", **PAD1), *after], {"x": shape, "z": shape, "z2": shape},
                       outputs, conv_weights(rng, "c", W_SHAPE))
    feeds = {name: f32(rng, *shape) for name in ("x", "z", "z2")}
    return Compared(model), feeds


NOT_FUSED: dict[str, tuple[list[onnx.NodeProto], list[str]]] = {
    # the conv output read by two nodes: fusing would lose the plain conv value
    "conv_output_read_twice": ([helper.make_node("Add", ["c", "z"], ["y"]),
                                helper.make_node("Relu", ["c"], ["y2"])], ["y", "y2"]),
    "conv_output_is_graph_output": ([helper.make_node("Add", ["c", "z"], ["y"])], ["y", "c"]),
    # act(conv) + z is not act(conv + z)
    "activation_before_add": ([helper.make_node("Relu", ["c"], ["r"]),
                               helper.make_node("Add", ["r", "z"], ["y"])], ["y"]),
    "sum_of_three": ([helper.make_node("Sum", ["c", "z", "z2"], ["y"])], ["y"]),
    "sub_is_not_add": ([helper.make_node("Sub", ["c", "z"], ["y"])], ["y"]),
}


@pytest.mark.parametrize("name", sorted(NOT_FUSED))
def test_conv_add_not_fused(name: str, route: Route, rng: np.random.Generator) -> None:
    after, outputs = NOT_FUSED[name]
    compared, feeds = _fusion_case(rng, after, outputs)
    compared.check(feeds)
    assert compared.count("Conv+Add") == 0


def test_second_add_after_a_fused_residual_stays_an_add(route: Route,
                                                        rng: np.random.Generator) -> None:
    """(conv + z) + z2: the first Add fuses; the fused conv takes no second residual."""
    after = [helper.make_node("Add", ["c", "z"], ["s"]),
             helper.make_node("Add", ["s", "z2"], ["y"])]
    compared, feeds = _fusion_case(rng, after, ["y"])
    compared.check(feeds)
    assert compared.count("Conv+Add") == 1


def test_outputs_reach_the_caller_in_c_order() -> None:
    """oneDNN writes channels-last; the caller still gets a plain C-ordered, writable array."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    (y,) = hetrix.InferenceSession(model).run(None, {"x": x})
    assert y.flags.c_contiguous and y.flags.writeable
    (expected,) = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_first_run_after_load_takes_the_prepared_conv_call(monkeypatch) -> None:
    """The run at load (``SessionOptions.warm_up``) packs the weights and prepares each conv's
    oneDNN call, so the user's first run is already the fast one; outputs match ORT."""
    from hetrix.backends.numpy_cpu.kernels import _onednn

    if not _onednn.available():
        pytest.skip("PyTorch is not installed")
    full_path: list[str] = []  # the convs that took the general path (packing, deciding)
    conv2d = _onednn.conv2d

    def counted(cache, x, *args, **kwargs):
        full_path.append("NCHW" if x.flags.c_contiguous else "NHWC")
        return conv2d(cache, x, *args, **kwargs)

    monkeypatch.setattr(_onednn, "conv2d", counted)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    model = make_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["c"], ["r"]),
                        helper.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1, 1, 1])],
                       {"x": [1, 8, 12, 12]}, ["y"], {"w": w})
    session = hetrix.InferenceSession(model)
    assert full_path  # the warm-up ran them
    full_path.clear()
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    (got,) = session.run(None, {"x": x})
    # the second conv (its input is channels-last) repeats its prepared call from the first run
    # on; the first reads the NCHW feed, which is converted on the general path each run
    assert full_path == ["NCHW"]
    (want,) = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- ChannelShuffle ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["channels-last", "contiguous"])
def test_channel_shuffle_regroups_channels_and_keeps_the_layout(
        layout: str, route: Route, rng: np.random.Generator) -> None:
    """What ShuffleNet's Reshape -> Transpose -> Reshape computes, by the indices; a
    convolution's channels-last output stays channels-last on the PyTorch route."""
    from hetrix.backends.numpy_cpu.kernels import fused
    from hetrix.backends.registry import NodeContext

    x = f32(rng, 2, 12, 5, 4)
    if layout == "channels-last":
        x = _channels_last(x)
    ctx = NodeContext("ChannelShuffle", "hetrix", "shuffle", 1, {"groups": 3}, 1, 1)
    y = fused.channel_shuffle(ctx, x)
    for i in range(4):
        for j in range(3):
            np.testing.assert_array_equal(y[:, i * 3 + j], x[:, j * 4 + i])
    assert _onednn.is_channels_last(y) == (route.library and layout == "channels-last")
    with pytest.raises(ValueError, match="12 channels of a 4-D input cannot form 5 groups"):
        fused.channel_shuffle(
            NodeContext("ChannelShuffle", "hetrix", "bad", 1, {"groups": 5}, 1, 1), x)


# --- Relu on large float32 arrays -------------------------------------------------------------


@pytest.mark.parametrize("in_place", [False, True])
def test_relu_of_a_large_activation_matches_and_keeps_its_layout(
        in_place: bool, route: Route, rng: np.random.Generator) -> None:
    """Above ``_TORCH_RELU_MIN`` elements the library's Relu runs: the same values as
    ``max(x, 0)`` in float64, NaN and infinities included, and a channels-last input stays
    channels-last (the next convolution reads it as it is)."""
    from hetrix.backends.numpy_cpu.kernels import activations
    from hetrix.backends.registry import NodeContext

    x = _channels_last(f32(rng, 1, 32, 16, 16))
    assert x.size >= activations._TORCH_RELU_MIN
    x[0, :4, 0, 0] = [np.nan, np.inf, -np.inf, -0.0]
    want = np.maximum(x.astype(np.float64), 0)
    if in_place:
        y = x.copy(order="K")
        assert activations.relu_in_place(y) is y
    else:
        y = activations.relu(NodeContext("Relu", "", "relu", 14, {}, 1, 1), x)
    np.testing.assert_array_equal(y, want.astype(np.float32))
    assert _onednn.is_channels_last(y)


def test_sigmoid_of_a_large_activation_matches_and_keeps_its_layout(
        route: Route, rng: np.random.Generator) -> None:
    """Above ``_TORCH_RELU_MIN`` elements the library's Sigmoid runs: ``1 / (1 + exp(-x))`` in
    float64 within float32 rounding, the tails, NaN and infinities included, and a
    channels-last input stays channels-last."""
    from hetrix.backends.numpy_cpu.kernels import activations
    from hetrix.backends.registry import NodeContext

    x = _channels_last(f32(rng, 1, 32, 16, 16) * 8)
    x[0, :6, 0, 0] = [np.nan, np.inf, -np.inf, -0.0, -80.0, 90.0]
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x.astype(np.float64)))
    y = activations.sigmoid(NodeContext("Sigmoid", "", "sigmoid", 13, {}, 1, 1), x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=0)
    assert _onednn.is_channels_last(y)


def test_pool_window_follows_the_input_shape(route: Route, rng: np.random.Generator) -> None:
    """A pooling node keeps its window per input shape: a new shape is measured again, and the
    old one still pools right when it comes back."""
    from hetrix.backends.registry import NodeContext

    ctx = NodeContext("MaxPool", "", "pool", 12,
                      {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 1, 1)
    for size in (8, 11, 8):
        x = _channels_last(f32(rng, 1, 3, size, size))
        padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)),
                        constant_values=-np.inf)
        out = (size - 1) // 2 + 1
        want = np.array([[[[padded[0, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max()
                            for j in range(out)] for i in range(out)] for c in range(3)]])
        np.testing.assert_array_equal(pool.max_pool(ctx, x), want.astype(np.float32))


@pytest.mark.parametrize("level", [1, 99], ids=["apart", "first_layer_fused"])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pools_with_nan_in_a_window(op: str, level: int, route: Route) -> None:
    """What a window holding a NaN gives, route by route.  There is no one answer to match:
    ONNX Runtime's max and ONNX's reference evaluator keep the NaN or not by where it sits in
    the window.  Here an average gives NaN on every route; a max gives NaN on PyTorch's and
    NumPy's paths and the window's largest number on oneDNN's (the kept primitive of the pool
    alone, at level 1, or the first layer's fused pooling in the blocked layout).  The conv
    before the pool has no activation, whose oneDNN post-op would drop the NaN first."""
    # a depthwise 1x1 conv of ones: each channel passes through alone
    ones = np.ones((4, 1, 1, 1), np.float32)
    model = make_model([conv("c", "x", "c", group=4),
                        helper.make_node(op, ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                       {"x": [1, 4, 4, 4]}, ["y"], {"c_w": ones, "c_b": np.zeros(4, np.float32)})
    x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)
    x[0, 0, 0, 0] = x[0, 2, 3, 3] = np.nan  # the first and the last element of a window
    session = hetrix.InferenceSession(
        model, hetrix.SessionOptions(graph_optimization_level=level))
    (got,) = session.run(None, {"x": x})
    windows = x.reshape(1, 4, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 4, 2, 2, 4)
    nan_windows = np.isnan(windows).any(axis=-1)
    assert nan_windows.sum() == 2
    on_onednn = route.library and _dnnl.available()
    if op == "AveragePool":
        want = windows.mean(axis=-1)  # NaN where the window holds one
    elif on_onednn:
        want = np.nanmax(windows, axis=-1)
    else:
        want = windows.max(axis=-1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    fused = _conv_pool_steps(session)
    assert len(fused) == (level > 1)
    if fused:
        assert ("dnnl_conv_pool" in fused[0].ctx.cache) == on_onednn
    else:
        assert bool(route.kept_pools) == on_onednn  # (with warm-up)


@pytest.mark.parametrize("hw", [6, 96], ids=["numpy_copy", "torch_cat"])
def test_channel_concat_of_nhwc_arrays_keeps_the_layout(hw: int) -> None:
    """Small outputs are copied by NumPy, large ones (over NUMPY_CONCAT_MAX_BYTES) by torch.cat:
    the values are np.concatenate's either way and the result stays channels-last."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((2, hw, hw, c), dtype=np.float32).transpose(0, 3, 1, 2)
              for c in (24, 40, 8)]
    nbytes = 2 * 72 * hw * hw * 4
    assert (nbytes > _onednn.NUMPY_CONCAT_MAX_BYTES) == (hw == 96)
    y = _onednn.concat_channels(arrays)
    np.testing.assert_array_equal(y, np.concatenate(arrays, axis=1))
    assert _onednn.is_channels_last(y)


def test_channel_concat_refuses_inputs_of_other_spatial_sizes() -> None:
    """A 1-pixel input would broadcast into the slice of a larger one: refused, not copied."""
    big = np.zeros((1, 4, 4, 8), np.float32).transpose(0, 3, 1, 2)
    small = np.zeros((1, 1, 1, 8), np.float32).transpose(0, 3, 1, 2)
    with pytest.raises(ValueError, match="other than the channels"):
        _onednn.concat_channels([big, small])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_copy_into_a_channel_slice_keeps_every_bit(dtype: str, rng: np.random.Generator) -> None:
    """``_dnnl.copy_into`` (a Concat chain's new channels written into the room of its NHWC
    buffer): every bit of the source lands in the slice (NaN, infinities, -0 included), the
    rest of the buffer untouched; a type oneDNN does not compute in is left to the caller."""
    import ml_dtypes

    if not _dnnl.available():
        pytest.skip("needs oneDNN's library")
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    source = _channels_last(f32(rng, 2, 6, 5, 7)).astype(dt)
    source[0, :4, 0, 0] = [np.nan, np.inf, -np.inf, -0.0]
    buffer = np.full((2, 5, 7, 20), 7, dt)
    target = buffer[..., 9:15].transpose(0, 3, 1, 2)
    served = _dnnl.copy_into(source, target)
    assert served == (dtype != "float64")
    if served:
        bits = f"u{dt.itemsize}"
        assert target.view(bits).tolist() == source.view(bits).tolist()
        assert (buffer[..., :9] == 7).all() and (buffer[..., 15:] == 7).all()
    assert not _dnnl.copy_into(source, buffer[..., :5].transpose(0, 3, 1, 2))  # another shape


def test_concat_chain_appends_into_one_buffer_and_branches_stay_apart(
        route: Route, rng: np.random.Generator) -> None:
    """DenseNet's pattern: each Concat appends a conv's channels to the previous Concat's
    output.  From the second link on the Concats write into one NHWC buffer with room; every
    intermediate (returned as a graph output too) keeps its value, and a branch (two Concats
    extending the same output) gets a buffer of its own.  Against ORT, on every route."""
    from hetrix.backends.numpy_cpu.kernels import tensor

    # the chain starts from a conv's output (channels-last), as DenseNet's from a pool's
    nodes, weights, features = [conv("stem", "x", "s", **PAD1)], {}, "s"
    weights.update(conv_weights(rng, "stem", (8, 8, 3, 3)))
    channels = 8
    for layer in range(4):  # x(8) -> 12 -> 16 -> 20 -> 24 channels
        nodes.append(conv(f"g{layer}", features, f"n{layer}", **PAD1))
        weights.update(conv_weights(rng, f"g{layer}", (4, channels, 3, 3)))
        nodes.append(helper.make_node("Concat", [features, f"n{layer}"], [f"c{layer}"], axis=1))
        features, channels = f"c{layer}", channels + 4
    # a branch: c1 extended a second time, after c2 extended it
    nodes.append(helper.make_node("Concat", ["c1", "n0"], ["branch"], axis=1))
    # (read by Abs: an activation such as Relu would fuse with it into a FusedConcat, which
    # always copies into a new buffer)
    nodes.append(helper.make_node("Abs", ["branch"], ["branch_out"]))
    outputs = ["c0", "c1", "c2", "c3", "branch_out"]
    compared = Compared(make_model(nodes, {"x": [2, 8, 6, 6]}, outputs, weights))
    appended, buffers = [], []
    append, remember = tensor._appended, tensor._remember

    def counted_append(inputs: tuple[np.ndarray, ...]) -> np.ndarray | None:
        result = append(inputs)
        appended.append(result is not None)
        return result

    def counted_remember(registry: dict, array: np.ndarray, used: int) -> None:
        if registry is tensor._ROOMY:
            buffers.append(array.shape)
        remember(registry, array, used)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tensor, "_appended", counted_append)
        patch.setattr(tensor, "_remember", counted_remember)
        for _ in range(2):  # the second run reuses nothing of the first
            compared.check({"x": f32(rng, 2, 8, 6, 6)})
    if route.library:
        # per run: c0 copies (its first input is a conv's); c1 starts a buffer with room; of c2,
        # c3 and the branch, two append in place and one (c2 or the branch, whichever runs
        # second) finds c1's channels taken and starts a buffer of its own; with oneDNN's
        # library, c0 calls its kept concatenation directly from the second run on
        second = [True] * 4 if _dnnl.available() else [False, True, True, True, True]
        assert appended == [False, True, True, True, True] + second
        assert len(buffers) == 4
    else:
        assert not any(appended)
    route.check_convs()


def test_first_convolution_reads_nchw_up_to_a_staging_size(rng: np.random.Generator,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A convolution of an NCHW input with few channels runs on the input as it is (its output
    staged through a blocked layout) while that staging buffer is small; above
    ``STAGED_MAX_BYTES`` it reads an NHWC copy instead.  NumPy's float64 result either way."""
    if not (_dnnl.available() and _onednn.available()):
        pytest.skip("needs oneDNN's library and PyTorch")
    w = f32(rng, 16, 3, 3, 3)
    w.setflags(write=False)
    geometry = dict(strides=[1, 1], dilations=[1, 1], pads=[1, 1], group=1)
    staged_sizes = []
    for batch in (1, 4):
        x = f32(rng, batch, 3, 20, 20)
        assert _onednn._staged_bytes(x, w, **{k: geometry[k] for k in
                                              ("strides", "dilations", "pads")}) == (
            batch * 16 * 20 * 20 * 4)
        monkeypatch.setattr(_onednn, "STAGED_MAX_BYTES", 16 * 20 * 20 * 4 * 2)  # up to batch 2
        cache: dict[str, Any] = {}
        y = _onednn.conv2d(cache, x, w, None, **geometry)
        (conv,) = cache["dnnl_convs"].values()
        staged_sizes.append(conv.staged is not None)
        want = np.einsum("nchwij,kcij->nkhw", np.lib.stride_tricks.sliding_window_view(
            np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1)]), (3, 3), axis=(2, 3)),
            w.astype(np.float64))
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    assert staged_sizes == [True, False]


# --------------------------------------------------------------------------- ConvTranspose


def _served(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[bool]:
    """Record, per call of ``module.name`` (a library path that returns None where it does
    not serve), whether it served: the list returned fills as the test runs."""
    calls: list[bool] = []
    original = getattr(module, name)

    def counted(*args: Any) -> Any:
        result = original(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(module, name, counted)
    return calls

DECONVOLUTIONS: dict[str, tuple[dict[str, Any], tuple[int, ...], bool]] = {
    # name: (attributes, weight shape, whether PyTorch's deconvolution serves it)
    "k4_s2_p1": ({"strides": [2, 2], "pads": [1, 1, 1, 1]}, (8, 6, 4, 4), True),
    "k2_s2": ({"strides": [2, 2]}, (8, 6, 2, 2), True),
    "k3_s2_p1_output_padding": ({"strides": [2, 2], "pads": [1, 1, 1, 1],
                                 "output_padding": [1, 1]}, (8, 6, 3, 3), True),
    "groups_dilations": ({"group": 2, "dilations": [2, 2], "pads": [1, 1, 1, 1]},
                         (8, 3, 3, 3), True),
    "same_upper": ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (8, 6, 4, 4), True),
    "output_shape": ({"strides": [3, 3], "output_shape": [31, 31]}, (8, 6, 3, 3), True),
    "asymmetric_pads": ({"strides": [2, 2], "pads": [0, 1, 2, 1]}, (8, 6, 3, 3), False),
}


@pytest.mark.parametrize("name", sorted(DECONVOLUTIONS))
def test_conv_transpose_matches_onnxruntime(name: str, rng: np.random.Generator,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's deconvolution where the crop can be said as its padding (counted), NumPy's
    product + col2im elsewhere; the same results as ONNX Runtime, with a bias, on an NCHW
    input and on a convolution's channels-last output."""
    attrs, w_shape, served = DECONVOLUTIONS[name]
    values = conv_weights(rng, "c", (8, 8, 3, 3))
    values.update({"d_w": f32(rng, *w_shape) * np.float32(0.2),
                   "d_b": f32(rng, w_shape[1] * attrs.get("group", 1))})
    nodes = [helper.make_node("ConvTranspose", ["x", "d_w", "d_b"], ["y0"], **attrs),
             conv("c", "x", "c0", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c0", "d_w", "d_b"], ["y1"], **attrs)]
    model = make_model(nodes, {"x": (2, 8, 10, 10)}, ["y0", "y1"], values)
    calls = _served(monkeypatch, _onednn, "conv_transpose2d")
    compared = Compared(model)
    for _ in range(2):
        compared.check({"x": f32(rng, 2, 8, 10, 10)})
    library = _library.torch_functional() is not None
    assert calls and all(call == (served and library) for call in calls)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_keeps_a_channels_last_layout(mode: str, rng: np.random.Generator) -> None:
    """A transposed view is padded in its memory order: the result is laid out as the input
    (what the next convolution reads without a copy), with NumPy's values for the NCHW view."""
    from hetrix.backends.numpy_cpu.kernels import tensor

    nhwc = f32(rng, 2, 5, 6, 3)
    x = nhwc.transpose(0, 3, 1, 2)
    pads = [0, 0, 1, 2, 0, 1, 2, 1]
    y = tensor._pad(x, pads, mode, None, None)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    widths = [(0, 0), (0, 1), (1, 2), (2, 1)]
    np.testing.assert_array_equal(y, np.pad(np.ascontiguousarray(x), widths, mode=mode))


def test_resize_keeps_a_channels_last_layout(rng: np.random.Generator) -> None:
    """A transposed view is resized in its memory order and keeps its layout."""
    from hetrix.backends.numpy_cpu.kernels import resize

    x = f32(rng, 1, 5, 6, 3).transpose(0, 3, 1, 2)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    model = make_model([node], {"x": x.shape}, ["y"],
                       {"scales": np.array([1, 1, 2, 1.5], np.float32)})
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ascontiguousarray(x)})[0]
    session = hetrix.InferenceSession(model)
    [step] = session._plan.steps
    y = resize.resize(step.ctx, x, None, np.array([1, 1, 2, 1.5], np.float32))
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [((1, 64, 48, 48), (1, 64, 1, 1)),
                                    ((1, 64, 48, 48), (1, 1, 48, 48)),
                                    ((2, 72, 1000), (2, 72, 1000)),
                                    ((48,), (1, 64, 48, 48))], ids=str)
def test_large_float32_arithmetic_matches_numpy_bit_for_bit(
        op: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], route: Route,
        rng: np.random.Generator) -> None:
    """Operands above ``LIBRARY_MIN_ELEMENTS`` run in the library: NumPy's values exactly
    (these ops round correctly), NaN, infinities, zeros and subnormals included, with
    broadcasting, a channels-last operand's layout kept; bad shapes are reported by name."""
    from hetrix.backends.numpy_cpu.kernels import elementwise
    from hetrix.backends.registry import NodeContext

    a, b = (f32(rng, *shape) for shape in shapes)
    if a.ndim == 4:
        a = _channels_last(a)
    assert max(a.size, b.size) >= elementwise.LIBRARY_MIN_ELEMENTS
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -3e-39, 1e38], np.float32)
    for array in (a, b):
        count = min(array.size, specials.size)
        array.flat[:count] = specials[:count]
        array.flat[-count:] = specials[::-1][:count]
    ctx = NodeContext(op, "", "arith", 14, {}, 2, 1)
    kernel = _registry_kernel(op, 14)
    numpy_fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.true_divide}[op]
    with np.errstate(all="ignore"):
        want = numpy_fn(a, b)
        got = kernel(ctx, a, b)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32
    if a.ndim == 4 and b.size < a.size:
        assert _onednn.is_channels_last(got)
    with pytest.raises(ValueError, match="arith"):
        kernel(ctx, a, f32(rng, 5, 7))


def _registry_kernel(op: str, opset: int) -> Callable[..., np.ndarray]:
    """The NumPy backend's kernel of ``op`` at ``opset``."""
    from hetrix.backends.registry import REGISTRY

    found = REGISTRY.lookup("numpy", "", op, opset)
    assert found is not None
    return found


@pytest.mark.parametrize("op", ["DepthToSpace", "SpaceToDepth"])
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_block_rearrangements_of_channels_last_inputs(op: str, mode: str,
                                                      rng: np.random.Generator) -> None:
    """A channels-last input is rearranged in its own memory: the values of the C-ordered
    path (which the ONNX spec's cases check), and a channels-last result."""
    from hetrix.backends.numpy_cpu.kernels import tensor
    from hetrix.backends.registry import NodeContext

    ctx = NodeContext(op, "", "blocks", 28, {"blocksize": 2, "mode": mode}, 1, 1)
    fn = tensor.depth_to_space if op == "DepthToSpace" else tensor.space_to_depth
    x = _channels_last(f32(rng, 2, 12, 6, 8))
    y = fn(ctx, x)
    np.testing.assert_array_equal(y, fn(ctx, np.ascontiguousarray(x)))
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("axes", [(1,), (2, 3), (0, 2), (3,)], ids=str)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_large_float32_reductions_match_float64(op: str, axes: tuple[int, ...], keepdims: int,
                                                route: Route,
                                                rng: np.random.Generator) -> None:
    """Above ``LIBRARY_MIN_ELEMENTS`` the library's sum and mean run: the float64 result to
    float32 rounding, on a channels-last activation, NaN propagated."""
    from hetrix.backends.numpy_cpu.kernels import reduce
    from hetrix.backends.registry import NodeContext

    x = _channels_last(f32(rng, 2, 64, 24, 24) + np.float32(0.5))
    assert x.size >= reduce.LIBRARY_MIN_ELEMENTS
    x[1, 3, 5, 7] = np.nan
    ctx = NodeContext(op, "", "reduce", 18, {"keepdims": keepdims,
                                              "noop_with_empty_axes": 0}, 2, 1)
    kernel = _registry_kernel(op, 18)
    y = kernel(ctx, x, np.array(axes, np.int64))
    wide = x.astype(np.float64)
    want = (np.sum if op == "ReduceSum" else np.mean)(wide, axis=axes, keepdims=bool(keepdims))
    assert y.dtype == np.float32 and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=2e-6 * np.nanmax(np.abs(want)))
    assert np.array_equal(np.isnan(y), np.isnan(want))


BILINEAR: dict[str, tuple[dict[str, Any], str, np.ndarray, bool]] = {
    # name: (attributes, "scales" or "sizes", their values, whether PyTorch's interpolation serves)
    "half_pixel_scales_up": ({}, "scales", np.array([1, 1, 2, 1.5], np.float32), True),
    "half_pixel_scales_down": ({}, "scales", np.array([1, 1, 0.6, 0.7], np.float32), True),
    "half_pixel_sizes": ({}, "sizes", np.array([2, 8, 9, 13], np.int64), True),
    "pytorch_half_pixel": ({"coordinate_transformation_mode": "pytorch_half_pixel"}, "scales",
                           np.array([1, 1, 2, 2], np.float32), True),
    "pytorch_half_pixel_to_one": ({"coordinate_transformation_mode": "pytorch_half_pixel"},
                                  "sizes", np.array([2, 8, 1, 5], np.int64), False),
    "align_corners_sizes": ({"coordinate_transformation_mode": "align_corners"}, "sizes",
                            np.array([2, 8, 11, 4], np.int64), True),
    "align_corners_exact_scales": ({"coordinate_transformation_mode": "align_corners"},
                                   "scales", np.array([1, 1, 2, 0.5], np.float32), True),
    "asymmetric": ({"coordinate_transformation_mode": "asymmetric"}, "scales",
                   np.array([1, 1, 2, 2], np.float32), False),
    "antialias_down": ({"antialias": 1}, "scales", np.array([1, 1, 0.5, 0.5], np.float32), False),
}


@pytest.mark.parametrize("name", sorted(BILINEAR))
def test_bilinear_resize_matches_onnxruntime(name: str, rng: np.random.Generator,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's bilinear interpolation where it computes ONNX's positions (counted), NumPy's
    path elsewhere; ORT's values either way, on a channels-last convolution output."""
    from hetrix.backends.numpy_cpu.kernels import resize

    attrs, kind, values, served = BILINEAR[name]
    inputs = ["c", "", "v"] if kind == "scales" else ["c", "", "", "v"]
    model, feeds = _chain(rng, [helper.make_node("Resize", inputs, ["y"], mode="linear",
                                                 **attrs)], ["y"], {"v": values})
    model.opset_import[0].version = 18
    calls = _served(monkeypatch, resize, "_torch_bilinear")
    Compared(model).check(feeds)
    library = _library.torch_functional() is not None
    assert calls and all(call == (served and library) for call in calls)


def test_bilinear_resize_leaves_align_corners_with_rounded_scales_to_numpy() -> None:
    """ONNX's align_corners divides by the unrounded ``in * scale`` where scales are given
    (the spec's case test_resize_downsample_scales_linear_align_corners, which the
    conformance test runs; ORT divides by the rounded size): PyTorch's positions differ."""
    from hetrix.backends.numpy_cpu.kernels import resize

    x = np.ones((1, 2, 4, 6), np.float32)
    opts = {"mode": "linear", "coord": "align_corners", "antialias": False}
    assert resize._torch_bilinear(x, [1, 2, 2, 3], [1.0, 1.0, 0.6, 0.6], opts, True) is None
    exact = resize._torch_bilinear(x, [1, 2, 8, 3], [1.0, 1.0, 2.0, 0.5], opts, True)
    assert exact is None or exact.shape == (1, 2, 8, 3)


@pytest.mark.parametrize("op", ["InstanceNormalization", "GroupNormalization-18",
                                "GroupNormalization-21"])
def test_group_normalizations_match_float64(op: str, route: Route,
                                            rng: np.random.Generator) -> None:
    """Above ``_TORCH_GROUP_NORM_MIN`` elements the library's group normalization runs: the
    float64 formula to float32 rounding, on a channels-last input, whose layout it keeps."""
    from hetrix.backends.numpy_cpu.kernels import normalization
    from hetrix.backends.registry import NodeContext

    x = _channels_last(f32(rng, 2, 16, 12, 12) * 3 + 1)
    assert x.size >= normalization._TORCH_GROUP_NORM_MIN
    groups = 16 if op == "InstanceNormalization" else 4
    params = groups if op == "GroupNormalization-18" else 16
    scale, bias = f32(rng, params), f32(rng, params)
    eps = 1e-3
    if op == "InstanceNormalization":
        y = normalization.instance_norm(NodeContext(op, "", "n", 6, {"epsilon": eps}, 3, 1),
                                        x, scale, bias)
    else:
        attrs = {"epsilon": eps, "num_groups": groups, "stash_type": 1}
        kernel = (normalization.group_norm_v18 if op.endswith("18")
                  else normalization.group_norm)
        y = kernel(NodeContext("GroupNormalization", "", "n", 21, attrs, 3, 1), x, scale, bias)
    wide = x.astype(np.float64).reshape(2, groups, -1)
    normed = ((wide - wide.mean(-1, keepdims=True))
              / np.sqrt(wide.var(-1, keepdims=True) + eps)).reshape(x.shape)
    per_channel = np.repeat(scale, 16 // params), np.repeat(bias, 16 // params)
    want = normed * per_channel[0].reshape(1, -1, 1, 1) + per_channel[1].reshape(1, -1, 1, 1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    if route.library:
        assert _onednn.is_channels_last(y)


def test_hard_swish_of_a_large_activation_matches_float64(route: Route,
                                                          rng: np.random.Generator) -> None:
    from hetrix.backends.numpy_cpu.kernels import activations
    from hetrix.backends.registry import NodeContext

    x = _channels_last(f32(rng, 1, 32, 16, 16) * 4)
    x[0, :4, 0, 0] = [np.nan, np.inf, -np.inf, -3.0]
    y = activations.hard_swish(NodeContext("HardSwish", "", "hs", 14, {}, 1, 1), x)
    wide = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = wide * np.clip(wide / 6 + 0.5, 0, 1)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- first layer + pooling

FIRST_LAYERS = {
    # name: (channels, conv attributes, pool op, pool attributes, activation)
    "squeezenet": (3, {"kernel_shape": [3, 3], "strides": [2, 2]}, "MaxPool",
                   {"kernel_shape": [3, 3], "strides": [2, 2]}, "Relu"),
    "resnet": (3, {"kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3]}, "MaxPool",
               {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, "Relu"),
    "ceil_mode": (4, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "MaxPool",
                  {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, "Clip"),
    "dilated": (2, {"kernel_shape": [3, 3], "dilations": [2, 2]}, "MaxPool",
                {"kernel_shape": [3, 3], "strides": [1, 1], "dilations": [2, 2]}, ""),
    "average": (3, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                "LeakyRelu"),
    "average_pads_counted": (3, {"kernel_shape": [3, 3]}, "AveragePool",
                             {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1],
                              "count_include_pad": 1}, "Relu"),
    # the ceil mode's overhang past counted pads: oneDNN would count it, so the two run apart
    "average_overhang": (3, {"kernel_shape": [2, 2]}, "AveragePool",
                         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                          "count_include_pad": 1, "ceil_mode": 1}, "Relu"),
    # one channel: NCHW is NHWC, the convolution's own path reads it as it is
    "one_channel": (1, {"kernel_shape": [3, 3]}, "MaxPool",
                    {"kernel_shape": [2, 2], "strides": [2, 2]}, "Relu"),
}
"""First layers of CNNs (the convolution of the image, its activation, the pooling), and the
variants the blocked path must get right or leave to the two kernels apart."""
_BLOCKED = {"squeezenet", "resnet", "ceil_mode", "average", "average_pads_counted"}
"""The cases the blocked path takes (a dilated pair: oneDNN offers only its reference kernel)."""


def _first_layer_model(rng: np.random.Generator, name: str, batch: int | str = 1,
                       size: int = 23) -> onnx.ModelProto:
    channels, conv_attrs, pool_op, pool_attrs, activation = FIRST_LAYERS[name]
    nodes = [conv("c", "x", "c")]
    nodes[0].attribute.extend(helper.make_attribute(k, v) for k, v in conv_attrs.items())
    init = conv_weights(rng, "c", [16, channels, *conv_attrs["kernel_shape"]])
    if activation == "Clip":
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["a"]))
        init.update(lo=np.array(0.0, np.float32), hi=np.array(0.5, np.float32))
    elif activation:
        nodes.append(helper.make_node(activation, ["c"], ["a"],
                                      **({"alpha": 0.2} if activation == "LeakyRelu" else {})))
    nodes.append(helper.make_node(pool_op, ["a" if activation else "c"], ["p"], **pool_attrs))
    # a second convolution reads the pooled NHWC result, as in a network
    nodes.append(conv("d", "p", "y", pads=[1, 1, 1, 1]))
    init.update(conv_weights(rng, "d", [8, 16, 3, 3]))
    return make_model(nodes, {"x": [batch, channels, size, size]}, ["y", "p"], init)


def _conv_pool_steps(session: hetrix.InferenceSession) -> list[Any]:
    return [step for step in session._plan.steps if step.ctx.op_type == "FusedConvPool"]


@pytest.mark.parametrize("name", sorted(FIRST_LAYERS))
def test_first_layer_and_pooling_run_as_one_node(route: Route, rng: np.random.Generator,
                                                 name: str) -> None:
    """The pass fuses every case; the blocked path takes the ones oneDNN computes as ONNX does
    (the route with oneDNN's primitives), and every route gives ORT's answer, on the first
    runs and on the direct calls after them."""
    model = _first_layer_model(rng, name)
    compared = Compared(model)
    assert compared.count("conv+pool fusion") == 1
    channels = FIRST_LAYERS[name][0]
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, channels, 23, 23)).astype(np.float32)
        compared.check({"x": x})
    (step,) = _conv_pool_steps(compared.ours)
    blocked = "dnnl_conv_pool" in step.ctx.cache
    assert blocked == (route.library and _dnnl.available() and name in _BLOCKED)
    if blocked:
        assert step.ctx.direct is not None and step.ctx.direct.source is \
            step.ctx.cache["dnnl_conv_pool"]
        # the convolution never ran on its own path
        assert not {"dnnl_convs", "onednn_prepared"} & set(step.ctx.cache)
    route.check_convs()


def test_first_layer_follows_the_batch_and_a_channels_last_input(route: Route,
                                                                 rng: np.random.Generator
                                                                 ) -> None:
    """A symbolic batch: each batch size gets its own primitives; an input the caller gives
    channels-last takes the convolution's own path (oneDNN's NHWC kernels), with ORT's answer."""
    compared = Compared(_first_layer_model(rng, "resnet", batch="N", size=30))
    for batch in (1, 3, 1, 2):
        compared.check({"x": f32(rng, batch, 3, 30, 30)})
    channels_last = np.ascontiguousarray(f32(rng, 2, 3, 30, 30).transpose(0, 2, 3, 1))
    compared.check({"x": channels_last.transpose(0, 3, 1, 2)})
    route.check_convs()


def test_first_layer_serves_two_threads(route: Route, rng: np.random.Generator) -> None:
    """Each thread binds its own memory objects to the kept primitives (and the direct call
    belongs to the thread that made it): concurrent runs give each their own answer."""
    import threading

    compared = Compared(_first_layer_model(rng, "squeezenet"))
    feeds = [{"x": f32(rng, 1, 3, 23, 23)} for _ in range(4)]
    expected = [compared.theirs.run(None, f) for f in feeds]
    compared.ours.run(None, feeds[0])
    results: dict[int, list[np.ndarray]] = {}

    def run(index: int) -> None:
        for _ in range(5):
            results[index] = compared.ours.run(None, feeds[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, want in enumerate(expected):
        assert_outputs_close(results[index], want)


def test_first_layer_in_bfloat16_stays_near_float32(rng: np.random.Generator) -> None:
    pytest.importorskip("torch")
    from hetrix.errors import HetrixError

    model = _first_layer_model(rng, "resnet", size=40)
    try:
        session = hetrix.InferenceSession(model, hetrix.SessionOptions(precision="bf16"))
    except HetrixError as exc:  # a CPU without bfloat16 convolutions
        pytest.skip(str(exc))
    assert len(_conv_pool_steps(session)) == 1
    reference = ort.InferenceSession(model.SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    for seed in range(3):
        feeds = {"x": np.random.default_rng(seed).standard_normal((1, 3, 40, 40))
                 .astype(np.float32)}
        for ours, theirs in zip(session.run(None, feeds), reference.run(None, feeds),
                                strict=True):
            scale = float(np.abs(theirs).max())
            np.testing.assert_allclose(ours.astype(np.float32), theirs, rtol=0.05,
                                       atol=0.03 * scale)


def test_first_layer_profile_counts_the_convolution_work(rng: np.random.Generator) -> None:
    model = _first_layer_model(rng, "resnet", size=30)
    session = hetrix.InferenceSession(model, hetrix.SessionOptions(enable_profiling=True))
    session.run(None, {"x": f32(rng, 1, 3, 30, 30)})
    rows = {row["op_type"]: row for row in session.profile_nodes()}
    # 7x7 stride 2 pad 3 on 30x30: 15x15 outputs of 16 channels, 3 * 49 multiply-adds each
    assert rows["FusedConvPool"]["gflops_per_s"] is not None
    flops = [f for step, _, f in session._timings if step.ctx.op_type == "FusedConvPool"]
    assert flops and all(f == 2 * 16 * 15 * 15 * 3 * 49 for f in flops)


# --------------------------------------------------------------------------- Conv of a Concat


@pytest.mark.parametrize("batch", [1, 2])
def test_conv_of_a_concat_split_into_parts_matches_ort(route: Route, rng: np.random.Generator,
                                                       batch: int) -> None:
    """A U-Net decoder step (the upsampled features concatenated with the skip connection,
    then a 3x3 conv and Relu) and a SqueezeNet fire module (two expands concatenated, then the
    next squeeze): the convolution of each part added into the sum so far gives ORT's answer,
    on every route, on the first runs and the direct calls after them; the fire module's
    pooling (SqueezeNet's between its stages) pools each part before the convolution reads
    them."""
    nodes = [conv("s", "x", "s0", **PAD1), helper.make_node("Relu", ["s0"], ["skip"]),
             conv("d", "skip", "d0", strides=[2, 2], **PAD1),
             helper.make_node("Relu", ["d0"], ["low"]),
             helper.make_node("Resize", ["low", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["up", "skip"], ["cat"], axis=1),
             conv("m", "cat", "m0", **PAD1), helper.make_node("Relu", ["m0"], ["dec"]),
             # a fire module on the decoded features
             conv("e1", "dec", "e1o"), conv("e3", "dec", "e3o", **PAD1),
             helper.make_node("Concat", ["e1o", "e3o"], ["fire"], axis=1),
             helper.make_node("MaxPool", ["fire"], ["pooled"], kernel_shape=[3, 3],
                              strides=[2, 2], ceil_mode=1),
             conv("q", "pooled", "y")]
    weights = {**conv_weights(rng, "s", (16, 3, 3, 3)), **conv_weights(rng, "d", (32, 16, 3, 3)),
               **conv_weights(rng, "m", (16, 48, 3, 3)), **conv_weights(rng, "e1", (24, 16, 1, 1)),
               **conv_weights(rng, "e3", (24, 16, 3, 3)), **conv_weights(rng, "q", (8, 48, 1, 1)),
               "scales": np.array([1, 1, 2, 2], np.float32)}
    compared = Compared(make_model(nodes, {"x": [batch, 3, 20, 20]}, ["y", "dec"], weights))
    assert compared.count("Conv of Concat") == 2
    assert compared.count("Pool of Concat") == 1
    ops = [step.ctx.op_type for step in compared.ours._plan.steps]
    assert "Concat" not in ops
    for seed in range(3):
        compared.check({"x": np.random.default_rng(seed).standard_normal((batch, 3, 20, 20))
                        .astype(np.float32)})
    route.check_convs()
