"""A small BERT encoder and GPT-2 decoder exported from ``transformers`` with random weights.

Both are exported once per module (TorchScript exporter, opset 17, dynamic batch and sequence)
and run on Hetrix and onnxruntime at two batch/sequence sizes each, compared at ``rtol=1e-4``,
``atol=1e-5 * max|ort|``.  Two checks need no reference at all: GPT-2's logits are causal, and
BERT's outputs at real tokens ignore what sits at padded positions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import hetrix
from hetrix.testing.models import (
    BERT_SIZES,
    GPT2_SIZES,
    ExportedModel,
    export_bert,
    export_gpt2,
    token_feeds,
)

pytest.importorskip("torch", reason="exporting BERT/GPT-2 needs torch (pip install hetrix[test])")
pytest.importorskip("transformers", reason="BERT/GPT-2 come from transformers (hetrix[test])")
pytest.importorskip("onnxruntime", reason="onnxruntime is the reference of these tests")

RTOL = 1e-4
ATOL_SCALE = 1e-5
BERT_VOCAB = BERT_SIZES["tiny"]["vocab_size"]
BERT_HIDDEN = BERT_SIZES["tiny"]["hidden_size"]
GPT2_VOCAB = GPT2_SIZES["tiny"]["vocab_size"]
SIZES = [(1, 7), (3, 16)]  # (batch, sequence)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transformers")


@pytest.fixture(scope="module")
def bert(model_dir: Path) -> ExportedModel:
    return export_bert(model_dir / "bert_tiny.onnx", size="tiny", seed=0)


@pytest.fixture(scope="module")
def gpt2(model_dir: Path) -> ExportedModel:
    return export_gpt2(model_dir / "gpt2_tiny.onnx", size="tiny", seed=0)


@pytest.fixture(scope="module")
def bert_session(bert: ExportedModel) -> hetrix.InferenceSession:
    return hetrix.InferenceSession(bert.path)


@pytest.fixture(scope="module")
def gpt2_session(gpt2: ExportedModel) -> hetrix.InferenceSession:
    return hetrix.InferenceSession(gpt2.path)


def test_exported_inputs(bert: ExportedModel, gpt2: ExportedModel) -> None:
    assert bert.input_names == ("input_ids", "attention_mask")
    assert gpt2.input_names == ("input_ids",)
    path, names = bert
    assert Path(path).is_file() and names == bert.input_names


@pytest.mark.parametrize(("batch", "sequence"), SIZES)
def test_bert_matches_onnxruntime(
    batch: int, sequence: int, bert: ExportedModel, bert_session: hetrix.InferenceSession,
    ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None],
) -> None:
    feeds = token_feeds(bert.input_names, batch, sequence, BERT_VOCAB, seed=batch)
    assert feeds["attention_mask"].min() == 0  # some positions are padding
    outputs = bert_session.run(None, feeds)
    assert outputs[0].shape == (batch, sequence, BERT_HIDDEN)
    assert_close(outputs, ort_run(bert.path, feeds), ["last_hidden_state", "pooler_output"],
                 rtol=RTOL, atol_scale=ATOL_SCALE)


@pytest.mark.parametrize(("batch", "sequence"), SIZES)
def test_gpt2_matches_onnxruntime(
    batch: int, sequence: int, gpt2: ExportedModel, gpt2_session: hetrix.InferenceSession,
    ort_run: Callable[..., list[np.ndarray]], assert_close: Callable[..., None],
) -> None:
    feeds = token_feeds(gpt2.input_names, batch, sequence, GPT2_VOCAB, seed=batch)
    outputs = gpt2_session.run(None, feeds)
    assert outputs[0].shape == (batch, sequence, GPT2_VOCAB)
    assert_close(outputs, ort_run(gpt2.path, feeds), ["logits"], rtol=RTOL, atol_scale=ATOL_SCALE)


def test_gpt2_is_causal(gpt2_session: hetrix.InferenceSession) -> None:
    """Changing the last token changes only the last position's logits."""
    feeds = token_feeds(("input_ids",), 2, 9, GPT2_VOCAB, seed=3)
    changed = {"input_ids": feeds["input_ids"].copy()}
    changed["input_ids"][:, -1] = (changed["input_ids"][:, -1] + 1) % GPT2_VOCAB
    (before,) = gpt2_session.run(None, feeds)
    (after,) = gpt2_session.run(None, changed)
    np.testing.assert_allclose(after[:, :-1], before[:, :-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[:, -1], before[:, -1], rtol=1e-3, atol=1e-4)


def _with_padding_changed(
    session: hetrix.InferenceSession,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT's last hidden state (before, after, real-token mask of row 0) when the tokens under
    ``attention_mask == 0`` in the first row change; the second row is unpadded."""
    feeds = token_feeds(("input_ids", "attention_mask"), 2, 12, BERT_VOCAB, seed=4)
    real = feeds["attention_mask"][0] == 1
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["input_ids"][0, ~real] = (changed["input_ids"][0, ~real] + 7) % BERT_VOCAB
    before = session.run(["last_hidden_state"], feeds)[0]
    after = session.run(["last_hidden_state"], changed)[0]
    return before, after, real


def test_bert_ignores_padded_tokens(bert_session: hetrix.InferenceSession) -> None:
    """Tokens under ``attention_mask == 0`` do not affect the outputs at real tokens."""
    before, after, real = _with_padding_changed(bert_session)
    np.testing.assert_allclose(after[0, real], before[0, real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[1], before[1], rtol=1e-5, atol=1e-5)


def test_inputs_and_outputs_report_symbolic_dims(
    bert_session: hetrix.InferenceSession, gpt2_session: hetrix.InferenceSession
) -> None:
    bert_inputs = bert_session.get_inputs()
    assert [i.name for i in bert_inputs] == ["input_ids", "attention_mask"]
    for arg in bert_inputs:
        assert arg.type == "tensor(int64)"
        assert arg.shape == ["batch", "sequence"]
    bert_outputs = {o.name: o for o in bert_session.get_outputs()}
    assert bert_outputs["last_hidden_state"].shape == ["batch", "sequence", BERT_HIDDEN]
    assert bert_outputs["last_hidden_state"].type == "tensor(float)"
    assert bert_outputs["pooler_output"].shape == ["batch", BERT_HIDDEN]

    (gpt2_input,) = gpt2_session.get_inputs()
    assert (gpt2_input.name, gpt2_input.type) == ("input_ids", "tensor(int64)")
    assert gpt2_input.shape == ["batch", "sequence"]
    (logits,) = gpt2_session.get_outputs()
    assert logits.shape == ["batch", "sequence", GPT2_VOCAB]


def test_inputs_match_onnxruntime_metadata(bert: ExportedModel, gpt2: ExportedModel) -> None:
    import onnxruntime as ort

    for path in (bert.path, gpt2.path):
        ours = hetrix.InferenceSession(path)
        theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for mine, ref in zip(ours.get_inputs() + ours.get_outputs(),
                             theirs.get_inputs() + theirs.get_outputs(), strict=True):
            assert (mine.name, mine.type, list(mine.shape)) == (ref.name, ref.type, ref.shape)


def test_bert_runs_on_hetrix_kernels(
    bert_session: hetrix.InferenceSession, assert_native: Callable[..., None]
) -> None:
    assert_native(bert_session)


def test_gpt2_runs_on_hetrix_kernels(
    gpt2_session: hetrix.InferenceSession, assert_native: Callable[..., None]
) -> None:
    assert_native(gpt2_session)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_bf16_mode_keeps_transformer_layers_reduced_and_close(
    name: str, bert: ExportedModel, gpt2: ExportedModel,
    ort_run: Callable[..., list[np.ndarray]],
) -> None:
    """precision="bf16": the layers' products, the fused attention and GELU run in bfloat16,
    the residual stream (``x + layer(x)``, LayerNormalization) stays float32, and every output
    stays within bfloat16's rounding of ONNX Runtime's float32 (random weights: errors are not
    hidden)."""
    model, vocab = (bert, BERT_VOCAB) if name == "bert" else (gpt2, GPT2_VOCAB)
    session = hetrix.InferenceSession(model.path, hetrix.SessionOptions(precision="bf16"))
    backends: dict[str, set[str]] = {}
    for p in session.get_placement():
        backends.setdefault(p.op_type, set()).add(p.backend)
    # GPT-2's Gelu runs inside its FusedGemm (moved across the Reshape between them)
    reduced = {"Attention"} | ({"FusedGemm"} if name == "gpt2" else set())
    assert all(backends[op] == {"bf16:cpu"} for op in reduced), backends
    assert "Gelu" not in backends
    assert "bf16:cpu" in backends["FusedMatMul" if name == "bert" else "Gemm"]
    assert backends["LayerNormalization"] == backends["Add"] == {"numpy:cpu"}
    feeds = token_feeds(model.input_names, 3, 16, vocab, seed=5)
    outputs = session.run(None, feeds)
    for ours, theirs in zip(outputs, ort_run(model.path, feeds), strict=True):
        scale = float(np.abs(theirs).max())
        difference = float(np.abs(ours - theirs).max())
        assert 0 < difference < 0.05 * scale, (difference, scale)


def test_bf16_bert_still_ignores_padded_tokens(bert: ExportedModel) -> None:
    """The attention mask stays float32 into the bfloat16 attention: padded tokens still have
    no effect on the real ones, to the bit."""
    session = hetrix.InferenceSession(bert.path, hetrix.SessionOptions(precision="bf16"))
    before, after, real = _with_padding_changed(session)
    np.testing.assert_array_equal(after[0, real], before[0, real])
    np.testing.assert_array_equal(after[1], before[1])
