"""Optimizer kernels of the ``ai.onnx.preview.training`` domain (NumPy CPU backend).

Each optimizer takes ``R`` (learning rate), ``T`` (update count) and then groups of tensors: all
the X's, then all their gradients, then each kind of state.  It returns the groups of new values in
the same order.  Arithmetic runs in the dtype of X so float32 stays float32.
"""

from __future__ import annotations

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

_DOMAIN = "ai.onnx.preview.training"


def _groups(ctx: NodeContext, tensors: tuple[np.ndarray, ...], k: int) -> list[tuple]:
    """Split the variadic inputs into per-X tuples ``(X, G, state...)`` of ``k`` tensors."""
    if len(tensors) % k or not tensors:
        raise ValueError(
            f"{ctx.op_type}: expected a multiple of {k} tensors after R and T, got {len(tensors)}"
        )
    n = len(tensors) // k
    return [tuple(tensors[j * n + i] for j in range(k)) for i in range(n)]


def _scalar(value: np.ndarray, dtype: np.dtype, name: str, op: str) -> np.generic:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"{op}: {name} must be a scalar, got shape {arr.shape}")
    return dtype.type(arr.reshape(()))


def _outputs(groups: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Regroup per-X result tuples into the output order (all X_new, then each state)."""
    return tuple(np.asarray(g[j]) for j in range(len(groups[0])) for g in groups)


@kernel("Adagrad", since=1, domain=_DOMAIN)
def adagrad(ctx: NodeContext, r: np.ndarray, t: np.ndarray, *tensors: np.ndarray) -> tuple:
    """One ADAGRAD step: returns the new X's, then the new accumulated squared gradients."""
    results = []
    for x, g, h in _groups(ctx, tensors, 3):
        f = x.dtype.type
        lr = _scalar(r, x.dtype, "R", "Adagrad") / (
            f(1) + _scalar(t, x.dtype, "T", "Adagrad") * f(ctx.attrs["decay_factor"])
        )
        g_reg = f(ctx.attrs["norm_coefficient"]) * x + g
        h_new = h + g_reg * g_reg
        x_new = x - lr * g_reg / (np.sqrt(h_new) + f(ctx.attrs["epsilon"]))
        results.append((x_new, h_new))
    return _outputs(results)


@kernel("Adam", since=1, domain=_DOMAIN)
def adam(ctx: NodeContext, r: np.ndarray, t: np.ndarray, *tensors: np.ndarray) -> tuple:
    """One Adam step: returns the new X's, then new first moments, then new second moments."""
    results = []
    for x, g, v, h in _groups(ctx, tensors, 4):
        f = x.dtype.type
        alpha, beta = f(ctx.attrs["alpha"]), f(ctx.attrs["beta"])
        step = _scalar(t, x.dtype, "T", "Adam")
        lr = _scalar(r, x.dtype, "R", "Adam")
        if step > 0:  # bias correction of both running averages
            lr = lr * np.sqrt(f(1) - beta**step) / (f(1) - alpha**step)
        g_reg = f(ctx.attrs["norm_coefficient"]) * x + g
        v_new = alpha * v + (f(1) - alpha) * g_reg
        h_new = beta * h + (f(1) - beta) * g_reg * g_reg
        x_new = x - lr * v_new / (np.sqrt(h_new) + f(ctx.attrs["epsilon"]))
        x_new *= f(1) - f(ctx.attrs["norm_coefficient_post"])
        results.append((x_new, v_new, h_new))
    return _outputs(results)


@kernel("Momentum", since=1, domain=_DOMAIN)
def momentum(ctx: NodeContext, r: np.ndarray, t: np.ndarray, *tensors: np.ndarray) -> tuple:
    """One SGD-with-momentum step (standard or Nesterov): new X's, then new momenta."""
    mode = ctx.attrs.get("mode")
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"Momentum: mode must be 'standard' or 'nesterov', got {mode!r}")
    for name in ("alpha", "beta", "norm_coefficient"):
        if name not in ctx.attrs:
            raise ValueError(f"Momentum: attribute {name!r} is required")
    results = []
    for x, g, v in _groups(ctx, tensors, 3):
        f = x.dtype.type
        alpha = f(ctx.attrs["alpha"])
        # The first update (T == 0) takes the full gradient.
        beta = f(ctx.attrs["beta"]) if _scalar(t, x.dtype, "T", "Momentum") > 0 else f(1)
        lr = _scalar(r, x.dtype, "R", "Momentum")
        g_reg = f(ctx.attrs["norm_coefficient"]) * x + g
        v_new = alpha * v + beta * g_reg
        direction = g_reg + alpha * v_new if mode == "nesterov" else v_new
        results.append((x - lr * direction, v_new))
    return _outputs(results)
