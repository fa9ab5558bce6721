"""ONNX Attention (opset 23) through ``torch.nn.functional.scaled_dot_product_attention``.

The mask, causal frontier and KV-cache concatenation follow the spec's reference; variants this
kernel does not reproduce (softcap, the qk output, sliding windows, nonpad_kv_seqlen) are refused at
plan time so those nodes fall back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hetrix.backends.torch_backend.kernels._common import (
    NodeContext,
    attr_check,
    compute_dtype,
    kernel,
)


@attr_check("Attention")
def _attention_supported(node, device_type: str) -> str:  # type: ignore[no-untyped-def]
    """Only the plain variants: no softcap, no qk output, no windows or nonpad lengths."""
    for name in ("softcap",):
        attr = node.attributes.get(name)
        if attr is not None and attr.value:
            return f"Attention with {name}"
    for name in ("left_window_size", "right_window_size"):
        attr = node.attributes.get(name)
        if attr is not None and attr.value >= 0:
            return f"Attention with {name}"
    if len(node.outputs) > 3 and node.outputs[3] is not None and node.outputs[3].name:
        return "Attention's qk_matmul_output"
    if len(node.inputs) > 6 and node.inputs[6] is not None and node.inputs[6].name:
        return "Attention with nonpad_kv_seqlen"
    precision = node.attributes.get("softmax_precision")
    if precision is not None and precision.value not in (1, 11):
        return "Attention with a softmax_precision other than float32/float64"
    return ""


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, heads * D) -> (B, heads, S, D)."""
    batch, seq, hidden = t.shape
    return t.reshape(batch, seq, heads, hidden // heads).transpose(1, 2)


def _bias(
    ctx: NodeContext, mask: torch.Tensor | None, q_len: int, kv_len: int, past: int,
    dtype: torch.dtype, device: torch.device,
) -> torch.Tensor | None:
    """The additive bias (0 / -inf / float mask) of the reference, or None when there is none."""
    bias = None
    if mask is not None:
        pad = kv_len - mask.shape[-1]
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, -math.inf).to(dtype)
        else:
            mask = mask.to(dtype)
        if pad > 0:  # a short mask leaves the extra keys masked
            mask = F.pad(mask, (0, pad), value=-math.inf)
        bias = mask
    if ctx.attrs.get("is_causal", 0):
        rows = torch.arange(q_len, device=device).reshape(-1, 1)
        cols = torch.arange(kv_len, device=device).reshape(1, -1)
        causal = torch.where(cols <= rows + past, 0.0, -math.inf).to(dtype)
        bias = causal if bias is None else bias + causal
    return bias


@kernel("Attention", since=23)
def attention(
    ctx: NodeContext,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    *rest: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Attention: softmax(Q K^T * scale + bias) V with GQA head repetition and a KV cache."""
    three_d = q.dim() == 3
    if three_d:
        q = _heads(q, ctx.attrs["q_num_heads"])
        k = _heads(k, ctx.attrs["kv_num_heads"])
        v = _heads(v, ctx.attrs["kv_num_heads"])
    present_key = torch.cat([past_key, k], dim=2) if past_key is not None else k
    present_value = torch.cat([past_value, v], dim=2) if past_value is not None else v
    dtype = compute_dtype(q)
    if ctx.attrs.get("softmax_precision") in (1, 11) and q.dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # the softmax (and so the whole product) in the asked precision
    scale = ctx.attrs.get("scale") or 1 / math.sqrt(q.shape[-1])
    past = past_key.shape[2] if past_key is not None else 0
    bias = _bias(ctx, mask, q.shape[2], present_key.shape[2], past, dtype, q.device)
    keys, values = present_key.to(dtype), present_value.to(dtype)
    if keys.shape[1] != q.shape[1]:  # grouped-query attention: repeat each KV head
        repeat = q.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(repeat, dim=1)
        values = values.repeat_interleave(repeat, dim=1)
    y = F.scaled_dot_product_attention(q.to(dtype), keys, values, attn_mask=bias, scale=scale)
    if bias is not None:  # fully masked rows: the reference gives 0 where SDPA gives NaN
        dead = torch.isneginf(bias.amax(dim=-1, keepdim=True))
        y = torch.where(dead, torch.zeros((), dtype=dtype, device=y.device), y)
    y = y.to(q.dtype)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    outputs = (y, present_key, present_value)
    return outputs[: max(1, min(ctx.num_outputs, 3))] if ctx.num_outputs > 1 else y
