"""Constant folding of values that are weights, whatever their size."""

from __future__ import annotations


def test_a_weight_over_the_size_limit_still_folds() -> None:
    """onnx's light AlexNet makes its 151 MB fc6 weight with ConstantOfShape: read only as a
    Gemm weight, it folds at load (as ORT does) instead of being rebuilt on every run."""
    from collections import Counter

    import hetrix
    from hetrix.testing.models import light_model_paths

    session = hetrix.InferenceSession(light_model_paths()["bvlc_alexnet"])
    ops = Counter(p.op_type for p in session.get_placement())
    assert "ConstantOfShape" not in ops and ops["FusedGemm"] == 2
