"""attention kernels of the NumPy CPU backend.

Also the computation behind Hetrix's fused ``hetrix.Attention`` node (registered in fused.py):
:func:`scaled_dot_product` runs it on PyTorch's fused CPU attention kernel (flash attention: the
scores never leave the cache, 2-5x faster than matmul + softmax + matmul) when it can.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from hetrix.backends.numpy_cpu.kernels import _library
from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel
from hetrix.backends.numpy_cpu.kernels.linalg import matmul
from hetrix.backends.numpy_cpu.kernels.softmax import softmax


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic runs in: float64 stays, everything narrower is widened to float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _split_heads(x: np.ndarray, num_heads: int | None, what: str) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D); 4D inputs pass through."""
    if x.ndim == 4:
        return x
    if x.ndim != 3:
        raise ValueError(f"Attention: {what} must be 3D or 4D, got shape {x.shape}")
    if not num_heads:
        raise ValueError(f"Attention: 3D {what} needs the q_num_heads/kv_num_heads attributes")
    b, s, hidden = x.shape
    if hidden % num_heads:
        raise ValueError(
            f"Attention: {what} hidden size {hidden} not divisible by {num_heads} heads"
        )
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def _softmax_guarded(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place; rows where every score is -inf become zeros."""
    peak = scores.max(axis=-1, keepdims=True)
    # A fully-masked row has max -inf: shift by 0 instead so exp gives 0s, not NaN (spec errata).
    peak[np.isneginf(peak)] = 0
    np.subtract(scores, peak, out=scores)
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    total[total == 0] = 1
    scores /= total
    return scores


def _pad_last(mask: np.ndarray, total: int, fill: Any) -> np.ndarray:
    """Pad the mask's key axis up to ``total`` with ``fill`` (a shorter mask is allowed)."""
    keys = mask.shape[-1]
    if keys == total:
        return mask
    if keys > total:
        raise ValueError(f"Attention: attn_mask has {keys} keys, more than the {total} attended")
    pad = np.full((*mask.shape[:-1], total - keys), fill, dtype=mask.dtype)
    return np.concatenate([mask, pad], axis=-1)


def _structural_mask(
    ctx: NodeContext, batch: int, q_len: int, total: int, past: int, nonpad: np.ndarray | None
) -> np.ndarray | None:
    """Allowed keys from is_causal, the sliding window and nonpad_kv_seqlen: (B|1, 1, Sq, T)."""
    causal = bool(ctx.attrs.get("is_causal", 0))
    left = int(ctx.attrs.get("left_window_size", -1))
    right = int(ctx.attrs.get("right_window_size", -1))
    if not causal and left < 0 and right < 0 and nonpad is None:
        return None
    keys = np.arange(total)
    # Absolute position of each query: the count of valid keys before the query block + its index.
    if past:
        offset = np.full((1,), past, dtype=np.int64)
    elif nonpad is not None:
        offset = nonpad.astype(np.int64) - q_len
    else:
        offset = np.zeros((1,), dtype=np.int64)
    pos = offset[:, None, None, None] + np.arange(q_len)[None, None, :, None]
    allowed = np.ones((offset.shape[0], 1, q_len, total), dtype=bool)
    if causal:
        allowed &= keys <= pos
    if left >= 0:
        allowed &= keys >= pos - left
    if right >= 0:
        allowed &= keys <= pos + right
    if nonpad is not None:
        if nonpad.shape != (batch,):
            raise ValueError(f"Attention: nonpad_kv_seqlen must have shape ({batch},)")
        allowed &= keys < nonpad.astype(np.int64)[:, None, None, None]
    return allowed


def _softmax_in(scores: np.ndarray, precision: int | None) -> np.ndarray:
    """Softmax at ``softmax_precision`` (rounding to it when narrower), back in the work dtype."""
    if precision is None:
        return _softmax_guarded(scores)
    target = np.dtype(tensor_dtype_to_np_dtype(precision))
    work = _work_dtype(target)
    probs = _softmax_guarded(scores.astype(target).astype(work))
    return probs.astype(target).astype(scores.dtype, copy=False)


@kernel("Attention", since=23)
def attention(
    ctx: NodeContext,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    nonpad_kv_seqlen: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Scaled dot-product attention (MHA/GQA/MQA) with masks, KV cache, softcap and windows."""
    # One kernel serves opsets 23-25: 24 adds nonpad_kv_seqlen, 25 the window attributes, and the
    # attributes absent at an older opset take their neutral defaults here.
    attrs = ctx.attrs
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(f"Attention: Q, K, V ranks differ: {q.shape}, {k.shape}, {v.shape}")
    three_d = q.ndim == 3
    q4 = _split_heads(q, attrs.get("q_num_heads"), "Q")
    k4 = _split_heads(k, attrs.get("kv_num_heads"), "K")
    v4 = _split_heads(v, attrs.get("kv_num_heads"), "V")
    if (past_key is None) != (past_value is None):
        raise ValueError("Attention: past_key and past_value must be given together")
    past = 0
    if past_key is not None:
        past = past_key.shape[2]
        k4 = np.concatenate([past_key, k4.astype(past_key.dtype, copy=False)], axis=2)
        v4 = np.concatenate([past_value, v4.astype(past_value.dtype, copy=False)], axis=2)
    batch, q_heads, q_len, head = q4.shape
    kv_heads, total = k4.shape[1], k4.shape[2]
    if k4.shape[0] != batch or v4.shape[:3] != k4.shape[:3] or k4.shape[3] != head:
        raise ValueError(f"Attention: incompatible Q/K/V shapes {q4.shape}, {k4.shape}, {v4.shape}")
    if q_heads % kv_heads:
        raise ValueError(f"Attention: q_num_heads {q_heads} not a multiple of kv {kv_heads}")
    group, v_head = q_heads // kv_heads, v4.shape[3]

    work = _work_dtype(q.dtype)
    scale = attrs.get("scale")
    scale = 1.0 / np.sqrt(head) if scale is None else scale
    # Query heads h*G..h*G+G-1 share KV head h: fold them into the query rows so one batched
    # matmul covers the group without repeating K and V.
    qg = (q4.astype(work) * work.type(scale)).reshape(batch, kv_heads, group * q_len, head)
    scores = np.matmul(qg, k4.astype(work, copy=False).swapaxes(-1, -2))
    scores = scores.reshape(batch, q_heads, q_len, total)

    mode = int(attrs.get("qk_matmul_output_mode", 0))
    want_qk = ctx.num_outputs > 3
    qk_out = scores.copy() if want_qk and mode == 0 else None
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        scores /= softcap
        np.tanh(scores, out=scores)
        scores *= softcap
    if want_qk and mode == 1:
        qk_out = scores.copy()

    allowed = _structural_mask(ctx, batch, q_len, total, past, nonpad_kv_seqlen)
    if attn_mask is not None:
        try:
            np.broadcast_shapes(attn_mask.shape[:-1], scores.shape[:-1])
        except ValueError:
            raise ValueError(
                f"Attention: attn_mask {attn_mask.shape} does not broadcast to {scores.shape}"
            ) from None
        if attn_mask.dtype == np.bool_:
            mask = _pad_last(attn_mask, total, False)
            allowed = mask if allowed is None else allowed & mask
        else:
            scores += _pad_last(attn_mask.astype(work), total, -np.inf)
    if allowed is not None:
        # Overwrite (not add) so a NaN/inf score at a masked position cannot leak through.
        np.copyto(scores, work.type(-np.inf), where=~allowed)
    if want_qk and mode == 2:
        qk_out = scores.copy()

    probs = _softmax_in(scores, attrs.get("softmax_precision"))
    if want_qk and mode == 3:
        qk_out = probs.copy()
    probs = probs.reshape(batch, kv_heads, group * q_len, total)
    y = np.matmul(probs, v4.astype(work, copy=False)).reshape(batch, q_heads, q_len, v_head)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(batch, q_len, q_heads * v_head)
    outputs = [y.astype(q.dtype, copy=False), k4, v4]
    if want_qk:
        outputs.append(qk_out.astype(q.dtype, copy=False))
    if ctx.num_outputs == 1:
        return outputs[0]
    return tuple(outputs[: ctx.num_outputs])


@kernel("RotaryEmbedding", since=23)
def rotary_embedding(
    ctx: NodeContext,
    x: np.ndarray,
    cos_cache: np.ndarray,
    sin_cache: np.ndarray,
    position_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Rotary positional embedding (RoPE), half-split or interleaved, full or partial."""
    if x.ndim == 4:
        # (B, H, S, D) -> (B, S, H, D) so the caches broadcast over heads like the 3D case.
        xs = x.transpose(0, 2, 1, 3)
    elif x.ndim == 3:
        heads = ctx.attrs.get("num_heads")
        if not heads or x.shape[2] % heads:
            raise ValueError(f"RotaryEmbedding: 3D input {x.shape} needs num_heads dividing it")
        xs = x.reshape(*x.shape[:2], heads, x.shape[2] // heads)
    else:
        raise ValueError(f"RotaryEmbedding: input must be 3D or 4D, got shape {x.shape}")
    head = xs.shape[3]
    rot = int(ctx.attrs.get("rotary_embedding_dim", 0)) or head
    if rot % 2 or rot > head:
        raise ValueError(f"RotaryEmbedding: rotary dim {rot} must be even and <= head size {head}")
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    half = rot // 2
    if cos_cache.shape[-1] != half or sin_cache.shape[-1] != half:
        raise ValueError(
            f"RotaryEmbedding: cache last dims {cos_cache.shape[-1]}, {sin_cache.shape[-1]} "
            f"!= rotary_embedding_dim/2 = {half}"
        )
    if (
        cos_cache.ndim != 3
        or cos_cache.shape[0] not in (1, xs.shape[0])
        or (cos_cache.shape[1] != xs.shape[1])
    ):
        raise ValueError(
            f"RotaryEmbedding: cos/sin must give (batch, seq, rot/2) = {(*xs.shape[:2], half)}, "
            f"got {cos_cache.shape}"
        )
    work = _work_dtype(x.dtype)
    cos = cos_cache.astype(work)[:, :, None, :]
    sin = sin_cache.astype(work)[:, :, None, :]
    out = xs.astype(work)  # a fresh copy: rotated in place below
    part = out[..., :rot]
    if ctx.attrs.get("interleaved", 0):
        x1, x2 = part[..., 0::2].copy(), part[..., 1::2].copy()
        part[..., 0::2] = cos * x1 - sin * x2
        part[..., 1::2] = sin * x1 + cos * x2
    else:
        x1, x2 = part[..., :half].copy(), part[..., half:].copy()
        part[..., :half] = cos * x1 - sin * x2
        part[..., half:] = sin * x1 + cos * x2
    out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)
    return out.astype(x.dtype, copy=False)


def _gate(
    x: np.ndarray | None, batch: int, steps: int, heads: int, dk: int, what: str
) -> np.ndarray | None:
    """A decay/beta input (B, T, H*dk | H | 1) as (B, T, H|1, dk|1, 1) to broadcast on states."""
    if x is None:
        return None
    if x.ndim != 3 or x.shape[:2] != (batch, steps):
        raise ValueError(f"LinearAttention: {what} must be (B, T, ...), got {x.shape}")
    last = x.shape[2]
    if last == heads * dk and what == "decay":
        return x.reshape(batch, steps, heads, dk, 1)
    if last in (heads, 1):
        return x.reshape(batch, steps, last, 1, 1)
    raise ValueError(f"LinearAttention: {what} last dim {last} fits neither heads nor heads*d_k")


@kernel("LinearAttention", since=27)
def linear_attention(
    ctx: NodeContext,
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_state: np.ndarray | None = None,
    decay: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Recurrent linear attention (linear, gated, delta, gated_delta rules) with GQA."""
    q_heads, kv_heads = ctx.attrs.get("q_num_heads"), ctx.attrs.get("kv_num_heads")
    if not q_heads or not kv_heads or q_heads % kv_heads:
        raise ValueError("LinearAttention: q_num_heads must be a positive multiple of kv_num_heads")
    if not (query.ndim == key.ndim == value.ndim == 3):
        raise ValueError("LinearAttention: query, key, value must be 3D (B, T, H*D)")
    batch, steps = query.shape[:2]
    if key.shape[:2] != (batch, steps) or value.shape[:2] != (batch, steps):
        raise ValueError(
            f"LinearAttention: shapes {query.shape}, {key.shape}, {value.shape} differ"
        )
    dk, dv = query.shape[2] // q_heads, value.shape[2] // kv_heads
    if query.shape[2] != q_heads * dk or key.shape[2] != kv_heads * dk or value.shape[2] % kv_heads:
        raise ValueError("LinearAttention: hidden sizes do not match the head counts")
    rule = ctx.attrs.get("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise ValueError(f"LinearAttention: unknown update_rule {rule!r}")
    if "gated" in rule and decay is None:
        raise ValueError(f"LinearAttention: update_rule {rule!r} needs the decay input")
    if "delta" in rule and beta is None:
        raise ValueError(f"LinearAttention: update_rule {rule!r} needs the beta input")
    work = _work_dtype(query.dtype)
    group = q_heads // kv_heads
    scale = ctx.attrs.get("scale") or 1.0 / np.sqrt(dk)
    # Query heads kv*G..kv*G+G-1 read the state of KV head kv.
    q = query.astype(work).reshape(batch, steps, kv_heads, group, dk) * work.type(scale)
    k = key.astype(work, copy=False).reshape(batch, steps, kv_heads, dk)
    v = value.astype(work, copy=False).reshape(batch, steps, kv_heads, dv)
    shape = (batch, kv_heads, dk, dv)
    if past_state is None:
        state = np.zeros(shape, dtype=work)
    elif past_state.shape != shape:
        raise ValueError(f"LinearAttention: past_state shape {past_state.shape}, expected {shape}")
    else:
        state = past_state.astype(work)
    gates = (
        None if "gated" not in rule else np.exp(_gate(decay, batch, steps, kv_heads, dk, "decay"))
    )
    rate = None if "delta" not in rule else _gate(beta, batch, steps, kv_heads, dk, "beta")
    out = np.empty((batch, steps, kv_heads, group, dv), dtype=work)
    for t in range(steps):  # the recurrence is sequential in time; all else is batched
        if gates is not None:
            state = state * gates[:, t]
        kt, vt = k[:, t], v[:, t]
        if rate is not None:
            # Delta rule: write only what the state does not already predict for this key.
            vt = (vt - np.einsum("bhkv,bhk->bhv", state, kt)) * rate[:, t, :, :, 0]
        state = state + kt[..., :, None] * vt[..., None, :]
        out[:, t] = np.matmul(q[:, t], state)
    if past_state is not None:
        state_dtype = past_state.dtype
    elif len(ctx.output_dtypes) > 1 and ctx.output_dtypes[1] is not None:
        state_dtype = ctx.output_dtypes[1]
    else:
        state_dtype = query.dtype
    y = out.reshape(batch, steps, q_heads * dv).astype(query.dtype, copy=False)
    return y, state.astype(state_dtype, copy=False)


def _apply_mod(ctx: NodeContext, name: str, x: np.ndarray, outer: tuple[Any, ...]) -> np.ndarray:
    """Run the modifier subgraph ``name`` on ``x`` when the node has one."""
    runner = ctx.attrs.get(name)
    if runner is None:
        return x
    out = runner.run([x], outer)[0]
    if not isinstance(out, np.ndarray) or out.shape != x.shape:
        raise ValueError(f"FlexAttention: {name} must keep the shape {x.shape}")
    return out.astype(x.dtype, copy=False)


@kernel("FlexAttention", since=1, domain="ai.onnx.preview")
def flex_attention(
    ctx: NodeContext, q: np.ndarray, k: np.ndarray, v: np.ndarray, *outer: Any
) -> np.ndarray:
    """Scaled dot-product attention with optional score_mod / prob_mod subgraphs (GQA too)."""
    if not (q.ndim == k.ndim == v.ndim == 4):
        raise ValueError(f"FlexAttention: Q, K, V must be 4D, got {q.shape}, {k.shape}, {v.shape}")
    batch, q_heads, q_len, head = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if k.shape[0] != batch or k.shape[3] != head or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"FlexAttention: incompatible shapes {q.shape}, {k.shape}, {v.shape}")
    if q_heads % kv_heads:
        raise ValueError(f"FlexAttention: q heads {q_heads} not a multiple of kv heads {kv_heads}")
    group, v_head = q_heads // kv_heads, v.shape[3]
    precision = ctx.attrs.get("softmax_precision")
    if precision is not None:
        sm_dtype = np.dtype(tensor_dtype_to_np_dtype(precision))
    else:
        sm_dtype = np.dtype(np.float64 if q.dtype == np.float64 else np.float32)
    work = _work_dtype(sm_dtype)
    scale = ctx.attrs.get("scale")
    scale = 1.0 / np.sqrt(head) if scale is None else scale
    # Fold each query-head group onto its shared KV head (no repeat of K/V), as in Attention.
    qg = q.astype(work).reshape(batch, kv_heads, group * q_len, head)
    scores = np.matmul(qg, k.astype(work, copy=False).swapaxes(-1, -2))
    scores *= work.type(scale)
    scores = scores.reshape(batch, q_heads, q_len, kv_len).astype(sm_dtype, copy=False)
    scores = _apply_mod(ctx, "score_mod", scores, outer).astype(work)
    probs = _softmax_guarded(scores).astype(sm_dtype, copy=False)
    probs = _apply_mod(ctx, "prob_mod", probs, outer).astype(work, copy=False)
    probs = probs.reshape(batch, kv_heads, group * q_len, kv_len)
    y = np.matmul(probs, v.astype(work, copy=False)).reshape(batch, q_heads, q_len, v_head)
    return y.astype(q.dtype, copy=False)


# --- hetrix.Attention: softmax(Q @ Kt * scale + mask) @ V --------------------------------------


def scaled_dot_product(
    ctx: NodeContext, q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """``softmax(q @ kt * scale + mask) @ v``, ``kt`` the key already transposed to [..., D, S_kv].

    PyTorch's ``scaled_dot_product_attention`` computes it where its semantics match; NumPy's
    matmul and softmax (themselves on PyTorch's GEMM when installed) elsewhere.
    """
    scale = float(ctx.attrs.get("scale", 1.0))
    if node_sdpa_fits(ctx, q, kt, v, mask):
        return _sdpa(q, kt, v, mask, scale)
    return _scores_softmax_values(ctx, q, kt, v, mask, scale)


def node_sdpa_fits(ctx: NodeContext, q: np.ndarray, kt: np.ndarray, v: np.ndarray,
                   mask: np.ndarray | None, dtype: Any = np.float32) -> bool:
    """:func:`sdpa_fits`, remembered by the node while the shapes and types stay the same and
    the mask is absent or the same constant (read-only: a plan's constant, the same values every
    run).  The check reads the whole mask: GPT-2's 128x128 causal mask cost 80-100 us a call in
    the run, a sixth of the attention itself."""
    key = (q.shape, kt.shape, v.shape, q.dtype, kt.dtype, v.dtype, np.dtype(dtype),
           None if mask is None else (mask.shape, mask.dtype))
    cached = ctx.cache.get("sdpa_fits")
    if cached is not None and cached[1] is mask and cached[0] == key:
        return bool(cached[2])
    fits = sdpa_fits(q, kt, v, mask, dtype)
    if mask is None or not mask.flags.writeable:
        ctx.cache["sdpa_fits"] = (key, mask, fits)
    return fits


def sdpa_fits(q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
              dtype: Any = np.float32) -> bool:
    """Whether torch's SDPA computes exactly this op: Q, K, V of ``dtype`` (float32 here, the
    reduced type for :mod:`hetrix.backends.reduced_precision`), 4-D, equal batch and head dims
    (no broadcasting between Q, K, V), an additive float32 mask that broadcasts onto the
    scores, and no query whose every key is masked with -inf (softmax makes that row NaN;
    SDPA makes it 0)."""
    if _library.torch_functional() is None:
        return False
    if not (q.dtype == kt.dtype == v.dtype == dtype and q.ndim == kt.ndim == v.ndim == 4):
        return False
    if not (q.shape[:2] == kt.shape[:2] == v.shape[:2]):
        return False
    if q.shape[3] != kt.shape[2] or kt.shape[3] != v.shape[2] or 0 in q.shape + kt.shape:
        return False
    if mask is None:
        return True
    scores = (*q.shape[:3], kt.shape[3])
    try:
        if mask.dtype != np.float32 or np.broadcast_shapes(mask.shape, scores) != scores:
            return False
    except ValueError:
        return False
    return not np.isneginf(mask.max(axis=-1)).any()


def _sdpa(
    q: np.ndarray, kt: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float
) -> np.ndarray:
    functional = _library.torch_functional()
    k = _library.as_tensor(kt).transpose(-1, -2)  # a view: SDPA reads strided keys as they are
    attn_mask = None if mask is None else _library.as_tensor(mask)
    y = functional.scaled_dot_product_attention(
        _library.as_tensor(q), k, _library.as_tensor(v), attn_mask=attn_mask, scale=scale
    )
    return y.numpy()


def _scores_softmax_values(
    ctx: NodeContext,
    q: np.ndarray,
    kt: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    scale: float,
) -> np.ndarray:
    """The op step by step, with one scores buffer updated in place."""
    scores = matmul(q, kt)
    if scale != 1.0:
        scores *= scores.dtype.type(scale)
    if mask is not None:
        if np.broadcast_shapes(scores.shape, mask.shape) == scores.shape:
            scores += mask.astype(scores.dtype, copy=False)
        else:
            scores = scores + mask
    inner = ctx.cache.get("softmax_ctx")
    if inner is None:
        inner = NodeContext(
            op_type="Softmax",
            domain="",
            name=ctx.name,
            opset=13,
            attrs={"axis": -1},
            num_inputs=1,
            num_outputs=1,
        )
        ctx.cache["softmax_ctx"] = inner
    return matmul(softmax(inner, scores), v)
