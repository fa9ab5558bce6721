"""loss kernels of the NumPy CPU backend."""

from __future__ import annotations

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """Arithmetic dtype: float64 stays, narrower floats are widened to float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _nll(
    ctx: NodeContext, log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None
) -> np.ndarray:
    """Weighted negative log-likelihood of ``log_prob`` (N, C, d...) at ``target`` (N, d...)."""
    op = ctx.op_type
    if log_prob.ndim < 2 or target.shape != log_prob.shape[:1] + log_prob.shape[2:]:
        raise ValueError(f"{op}: target shape {target.shape} does not match input {log_prob.shape}")
    classes = log_prob.shape[1]
    target = target.astype(np.int64, copy=False)
    ignore_index = ctx.attrs.get("ignore_index")
    ignored = target == ignore_index if ignore_index is not None else None
    # Ignored entries may hold any value (even out of range): point them at class 0 for the gather.
    safe = np.where(ignored, 0, target) if ignored is not None else target
    if safe.size and (safe.min() < 0 or safe.max() >= classes):
        raise ValueError(f"{op}: target values must lie in [0, {classes}) or be ignore_index")
    picked = np.take_along_axis(log_prob, safe[:, None], axis=1)[:, 0]
    if weight is not None:
        if weight.shape != (classes,):
            raise ValueError(f"{op}: weight must have shape ({classes},), got {weight.shape}")
        w = weight.astype(log_prob.dtype)[safe]
    else:
        w = np.ones_like(picked)
    if ignored is not None:
        w[ignored] = 0
        picked[ignored] = 0  # so a -inf at the placeholder class cannot turn 0 * inf into NaN
    loss = -picked * w
    reduction = ctx.attrs.get("reduction", "mean")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum(), dtype=loss.dtype)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(loss.sum() / w.sum(), dtype=loss.dtype)
    raise ValueError(f"{op}: unknown reduction {reduction!r}")


@kernel("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(
    ctx: NodeContext, x: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None
) -> np.ndarray:
    """NLL loss of log-probabilities ``x`` (N, C, d...) with optional class weights."""
    work = _work_dtype(x.dtype)
    return _nll(ctx, x.astype(work, copy=False), target, weight).astype(x.dtype, copy=False)


@kernel("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(
    ctx: NodeContext, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Cross entropy of softmax(scores) over axis 1 against ``labels``; optional log_prob out."""
    if scores.ndim < 2:
        raise ValueError(f"SoftmaxCrossEntropyLoss: scores must be at least 2D, got {scores.shape}")
    work = _work_dtype(scores.dtype)
    shifted = scores.astype(work)  # a copy: log-softmax is computed in place
    shifted -= shifted.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = _nll(ctx, shifted, labels, weights).astype(scores.dtype, copy=False)
    if ctx.num_outputs > 1:
        return loss, shifted.astype(scores.dtype, copy=False)
    return loss
