"""Whole models optimized at level 99 compute what they computed before, and the rewrites fire."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from conftest import Optimized, optimize_and_run

from hetrix.testing.models import (
    LIGHT_MODEL_NAMES,
    light_model_case,
    light_model_paths,
    light_model_randomized,
    make_control_flow_model,
    make_dynamic_shape_model,
)

_QUICK = {"resnet50", "densenet121", "squeezenet"}


@functools.lru_cache(maxsize=2)
def _light(name: str) -> Optimized:
    feeds, _ = light_model_case(name)  # np.arange(n).reshape(shape) / n, as onnx's runner
    return optimize_and_run(onnx.load(light_model_paths()[name]), feeds)


@pytest.mark.parametrize(
    "name",
    [n if n in _QUICK else pytest.param(n, marks=pytest.mark.slow) for n in LIGHT_MODEL_NAMES],
)
def test_light_model_outputs_are_unchanged(name: str) -> None:
    result = _light(name)
    result.assert_close()
    assert result.report.nodes_after < result.report.nodes_before
    assert result.report.count("fold ConstantOfShape") > 0


def test_resnet50_folds_batchnorm_and_fuses_conv_relu() -> None:
    result = _light("resnet50")
    assert result.report.count("Conv+BatchNormalization") == 53
    assert result.report.count("activation fusion") > 0
    ops = result.ops()
    assert "BatchNormalization" not in ops and ops["hetrix::FusedConv"] > 0


def test_densenet_folds_its_split_batchnorms() -> None:
    result = _light("densenet121")
    assert result.report.count("Conv+Mul/Add") > 0
    assert result.report.count("BatchNormalization+Mul/Add") > 0
    assert "Mul" not in result.ops() and "Unsqueeze" not in result.ops()


def test_shufflenet_channel_shuffles_become_one_op() -> None:
    """Its 16 Reshape -> Transpose -> Reshape shuffles; random weights, so that a wrong channel
    order shows (the light model's weights are all one value)."""
    model, feeds = light_model_randomized("shufflenet")
    result = optimize_and_run(model, feeds)
    assert result.report.count("ChannelShuffle") == 16
    assert result.ops()["hetrix::ChannelShuffle"] == 16 and "Transpose" not in result.ops()
    result.assert_close()


@pytest.mark.slow
def test_resnet50_with_random_weights_is_unchanged() -> None:
    # The light models' weights are all one constant; random ones check the folded arithmetic.
    model, feeds = light_model_randomized("resnet50")
    optimize_and_run(model, feeds).assert_close()


def test_control_flow_model_with_subgraphs_is_unchanged() -> None:
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((3, 4)).astype(np.float32),
        "steps": np.array(5),
        "limit": np.array(100.0, np.float32),
    }
    result = optimize_and_run(make_control_flow_model(), feeds)
    result.assert_close()
    assert result.report.count("lift constants") > 0  # subgraph Constants included


def test_dynamic_shape_model_is_unchanged() -> None:
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)}
    optimize_and_run(make_dynamic_shape_model(), feeds).assert_close()


# --------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module", params=[14, 17], ids=["opset14", "opset17"])
def bert(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    pytest.importorskip("transformers")
    from hetrix.testing.models import export_bert, token_feeds

    path = tmp_path_factory.mktemp("bert") / f"bert{request.param}.onnx"
    exported = export_bert(path, opset=request.param)
    feeds = token_feeds(exported.input_names, batch=2, sequence=8, vocab_size=1024)
    return optimize_and_run(onnx.load(exported.path), feeds)


def test_bert_outputs_are_unchanged(bert: Optimized) -> None:
    bert.assert_close()


def test_bert_layernorm_gelu_and_attention_are_recognised(bert: Optimized) -> None:
    opset = bert.model.opset_imports[""]
    if opset < 17:  # from 17 torch exports LayerNormalization itself
        assert bert.report.count("LayerNormalization") == 5
    assert bert.ops()["LayerNormalization" if opset >= 17 else "hetrix::LayerNormalization"] == 5
    assert bert.report.count("Gelu") == 2
    assert bert.report.count("Attention") == 2
    assert bert.report.count("MatMul+Add") > 0
    fused = [n for n in bert.model.graph if n.op_type == "FusedMatMul"]
    assert sum(n.attributes["activation"].value == "Gelu" for n in fused) == 2


def test_bert_shape_arithmetic_folds_as_far_as_static_dims_allow(bert: Optimized) -> None:
    assert bert.report.count("lift constants") > 0
    assert bert.report.nodes_after < bert.report.nodes_before / 2
    assert np.all(np.isfinite(bert.actual[0]))


def test_densenet_fuses_each_preactivation_batchnorm_with_its_relu() -> None:
    result = _light("densenet121")
    result.assert_close()
    ops = result.ops()
    assert ops["hetrix::FusedBatchNormalization"] == 62  # every BN+Relu of the dense blocks
    assert "Relu" not in ops and "BatchNormalization" not in ops
