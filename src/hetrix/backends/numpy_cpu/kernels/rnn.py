"""rnn kernels of the NumPy CPU backend."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

Activation = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warning for large negative inputs, unlike 1 / (1 + exp(-x)).
    return 0.5 * (np.tanh(0.5 * x) + 1)


def _make_activation(name: str, alpha: float, beta: float) -> Activation:
    """The activation ``name`` (case-insensitive) bound to its alpha/beta."""
    fns: dict[str, Activation] = {
        "relu": lambda x: np.maximum(x, 0),
        "tanh": np.tanh,
        "sigmoid": _sigmoid,
        "affine": lambda x: alpha * x + beta,
        "leakyrelu": lambda x: np.where(x >= 0, x, alpha * x),
        "thresholdedrelu": lambda x: np.where(x > alpha, x, 0),
        "scaledtanh": lambda x: alpha * np.tanh(beta * x),
        "hardsigmoid": lambda x: np.clip(alpha * x + beta, 0, 1),
        "elu": lambda x: np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0))),
        "softsign": lambda x: x / (1 + np.abs(x)),
        "softplus": lambda x: np.logaddexp(0, x),
    }
    fn = fns.get(name.lower())
    if fn is None:
        raise ValueError(f"unsupported recurrent activation {name!r}")
    return fn


# (alpha, beta) defaults of the activations that take them, as in their ONNX operators.
_PARAM_DEFAULTS: dict[str, tuple[float, ...]] = {
    "affine": (1.0, 0.0),
    "leakyrelu": (0.01,),
    "thresholdedrelu": (1.0,),
    "scaledtanh": (1.0, 1.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0,),
}


def _activations(ctx: NodeContext, defaults: list[str], num_dirs: int) -> list[list[Activation]]:
    """Per direction, the op's activation functions bound to their alpha/beta."""
    names = list(ctx.attrs.get("activations") or defaults * num_dirs)
    per_dir = len(defaults)
    if len(names) == per_dir and num_dirs == 2:
        names *= 2  # one set given for a bidirectional op: both directions use it
    # RNN's schema default lists two activations even for a one-direction node: use the first.
    names = names[: per_dir * num_dirs]
    if len(names) != per_dir * num_dirs:
        raise ValueError(f"{ctx.op_type}: expected {per_dir * num_dirs} activations, got {names}")
    alphas = list(ctx.attrs.get("activation_alpha") or [])
    betas = list(ctx.attrs.get("activation_beta") or [])
    fns = []
    for name in names:
        params = list(_PARAM_DEFAULTS.get(name.lower(), ()))
        # The listed values go, in order, only to activations that take them (as in onnxruntime).
        if params and alphas:
            params[0] = alphas.pop(0)
        if len(params) > 1 and betas:
            params[1] = betas.pop(0)
        alpha, beta = (params + [0.0, 0.0])[:2]
        fns.append(_make_activation(name, alpha, beta))
    return [fns[d * per_dir : (d + 1) * per_dir] for d in range(num_dirs)]


def _clipper(ctx: NodeContext) -> Activation:
    """Clamp gate pre-activations to [-clip, clip] when the clip attribute is set."""
    clip = ctx.attrs.get("clip")
    if clip is None:
        return lambda x: x
    return lambda x: np.clip(x, -clip, clip, out=x)


class _Setup:
    """Inputs of a recurrent op normalised to seq-major layout and the work dtype."""

    def __init__(
        self,
        ctx: NodeContext,
        gates: int,
        x: np.ndarray,
        w: np.ndarray,
        r: np.ndarray,
        seq_lens: np.ndarray | None,
        init: list[np.ndarray | None],
    ) -> None:
        op = ctx.op_type
        self.layout = int(ctx.attrs.get("layout", 0))
        self.dtype = x.dtype
        self.work = np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)
        if x.ndim != 3:
            raise ValueError(f"{op}: X must be 3D, got shape {x.shape}")
        x = x.transpose(1, 0, 2) if self.layout else x
        self.seq, self.batch, self.input = x.shape
        direction = ctx.attrs.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"{op}: unknown direction {direction!r}")
        self.reverse = [direction == "reverse", True][: 2 if direction == "bidirectional" else 1]
        self.dirs = len(self.reverse)
        self.hidden = int(ctx.attrs.get("hidden_size") or r.shape[-1])
        gh = gates * self.hidden
        if w.shape != (self.dirs, gh, self.input) or r.shape != (self.dirs, gh, self.hidden):
            raise ValueError(
                f"{op}: W {w.shape} / R {r.shape} do not fit {self.dirs} direction(s), "
                f"{gates} gate(s), hidden {self.hidden}, input {self.input}"
            )
        self.x = x.astype(self.work, copy=False)
        self.w = w.astype(self.work, copy=False)
        self.r = r.astype(self.work, copy=False)
        self.lens = None
        if seq_lens is not None:
            if seq_lens.shape != (self.batch,):
                raise ValueError(f"{op}: sequence_lens must have shape ({self.batch},)")
            if np.any(seq_lens > self.seq) or np.any(seq_lens < 0):
                raise ValueError(f"{op}: sequence_lens values must lie in [0, {self.seq}]")
            if np.any(seq_lens != self.seq):
                self.lens = seq_lens.astype(np.int64)[:, None]
        self.init = [self._state(s, op) for s in init]

    def _state(self, state: np.ndarray | None, op: str) -> np.ndarray:
        """An initial state as (dirs, batch, hidden), zeros when absent."""
        shape = (self.dirs, self.batch, self.hidden)
        if state is None:
            return np.zeros(shape, dtype=self.work)
        state = state.transpose(1, 0, 2) if self.layout else state
        if state.shape != shape:
            raise ValueError(f"{op}: initial state shape {state.shape}, expected {shape}")
        return state.astype(self.work, copy=False)

    def input_proj(self, d: int, bias: np.ndarray | None) -> np.ndarray:
        """X W^T (+ bias) for every step at once: one BLAS call instead of one per step."""
        proj = np.matmul(self.x, self.w[d].T)
        if bias is not None:
            proj += bias
        return proj

    def steps(self, d: int) -> range:
        """Time indices in processing order for direction ``d``."""
        return range(self.seq - 1, -1, -1) if self.reverse[d] else range(self.seq)

    def valid(self, t: int) -> np.ndarray | None:
        """(batch, 1) mask of the sequences still running at step ``t``, None if all are."""
        return None if self.lens is None else t < self.lens

    def outputs(self, ctx: NodeContext, ys: list[np.ndarray], finals: list[list[np.ndarray]]):
        """Y (seq, dirs, batch, hidden) and the final states, in the node's layout and dtype."""
        y = np.stack(ys, axis=1)
        states = [np.stack(f, axis=0) for f in zip(*finals, strict=True)]
        if self.layout:
            y = y.transpose(2, 0, 1, 3)
            states = [s.transpose(1, 0, 2) for s in states]
        result = [y, *states][: ctx.num_outputs]
        result = tuple(np.ascontiguousarray(v, dtype=self.dtype) for v in result)
        return result[0] if len(result) == 1 else result


def _step_update(
    valid: np.ndarray | None, new: np.ndarray, old: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(state to carry, value to emit): finished sequences keep their state and emit zeros."""
    if valid is None:
        return new, new
    return np.where(valid, new, old), np.where(valid, new, 0)


def _split_bias(b: np.ndarray | None, s: _Setup, gates: int, op: str) -> list[tuple]:
    """Per direction (Wb, Rb), each (gates * hidden,) or None when B is absent."""
    if b is None:
        return [(None, None)] * s.dirs
    gh = gates * s.hidden
    if b.shape != (s.dirs, 2 * gh):
        raise ValueError(f"{op}: B must have shape ({s.dirs}, {2 * gh}), got {b.shape}")
    b = b.astype(s.work, copy=False)
    return [(b[d, :gh], b[d, gh:]) for d in range(s.dirs)]


@kernel("RNN", since=1)
def rnn(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Simple RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)."""
    # One kernel for all opsets: later versions only added attributes (linear_before_reset in 3,
    # layout in 14) whose defaults reproduce the older behaviour.
    s = _Setup(ctx, 1, x, w, r, sequence_lens, [initial_h])
    acts, clip = _activations(ctx, ["Tanh"], s.dirs), _clipper(ctx)
    ys, finals = [], []
    for d, (wb, rb) in enumerate(_split_bias(b, s, 1, "RNN")):
        proj = s.input_proj(d, None if wb is None else wb + rb)
        h, rt, (f,) = s.init[0][d], s.r[d].T, acts[d]
        y = np.zeros((s.seq, s.batch, s.hidden), dtype=s.work)
        for t in s.steps(d):
            new = f(clip(proj[t] + h @ rt))
            h, y[t] = _step_update(s.valid(t), new, h)
        ys.append(y)
        finals.append([h])
    return s.outputs(ctx, ys, finals)


@kernel("GRU", since=1)
def gru(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """GRU (gates z, r, h), with or without linear_before_reset."""
    s = _Setup(ctx, 3, x, w, r, sequence_lens, [initial_h])
    acts, clip = _activations(ctx, ["Sigmoid", "Tanh"], s.dirs), _clipper(ctx)
    before_reset = bool(ctx.attrs.get("linear_before_reset", 0))
    hs = s.hidden
    ys, finals = [], []
    for d, (wb, rb) in enumerate(_split_bias(b, s, 3, "GRU")):
        # Rb of z and r fold into the input projection; Rb_h only when applied after the reset.
        folded = None if wb is None else wb.copy()
        if rb is not None:
            folded[: 2 * hs] += rb[: 2 * hs]
            if not before_reset:
                folded[2 * hs :] += rb[2 * hs :]
        rbh = rb[2 * hs :] if rb is not None and before_reset else 0
        proj = s.input_proj(d, folded)
        h, (f, g) = s.init[0][d], acts[d]
        r_zr, r_h = s.r[d, : 2 * hs].T, s.r[d, 2 * hs :].T
        y = np.zeros((s.seq, s.batch, hs), dtype=s.work)
        for t in s.steps(d):
            zr = f(clip(proj[t, :, : 2 * hs] + h @ r_zr))
            z, reset = zr[:, :hs], zr[:, hs:]
            if before_reset:
                cand = proj[t, :, 2 * hs :] + reset * (h @ r_h + rbh)
            else:
                cand = proj[t, :, 2 * hs :] + (reset * h) @ r_h
            cand = g(clip(cand))
            new = cand + z * (h - cand)  # (1 - z) * cand + z * h
            h, y[t] = _step_update(s.valid(t), new, h)
        ys.append(y)
        finals.append([h])
    return s.outputs(ctx, ys, finals)


@kernel("LSTM", since=1)
def lstm(
    ctx: NodeContext,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    p: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """LSTM (gates i, o, f, c) with optional peepholes and coupled input/forget gates."""
    s = _Setup(ctx, 4, x, w, r, sequence_lens, [initial_h, initial_c])
    acts, clip = _activations(ctx, ["Sigmoid", "Tanh", "Tanh"], s.dirs), _clipper(ctx)
    coupled = bool(ctx.attrs.get("input_forget", 0))
    hs = s.hidden
    if p is not None and p.shape != (s.dirs, 3 * hs):
        raise ValueError(f"LSTM: P must have shape ({s.dirs}, {3 * hs}), got {p.shape}")
    ys, finals = [], []
    for d, (wb, rb) in enumerate(_split_bias(b, s, 4, "LSTM")):
        proj = s.input_proj(d, None if wb is None else wb + rb)
        h, c, rt, (f, g, hf) = s.init[0][d], s.init[1][d], s.r[d].T, acts[d]
        pi, po, pf = (0, 0, 0) if p is None else p[d].astype(s.work).reshape(3, hs)
        y = np.zeros((s.seq, s.batch, hs), dtype=s.work)
        for t in s.steps(d):
            gates = proj[t] + h @ rt
            i = f(clip(gates[:, :hs] + pi * c))
            fg = 1 - i if coupled else f(clip(gates[:, 2 * hs : 3 * hs] + pf * c))
            c_new = fg * c + i * g(clip(gates[:, 3 * hs :]))
            o = f(clip(gates[:, hs : 2 * hs] + po * c_new))
            new = o * hf(c_new)
            valid = s.valid(t)
            c = c_new if valid is None else np.where(valid, c_new, c)
            h, y[t] = _step_update(valid, new, h)
        ys.append(y)
        finals.append([h, c])
    return s.outputs(ctx, ys, finals)
