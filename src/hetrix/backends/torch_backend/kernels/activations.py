"""Activation kernels of the torch backend; each keeps the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hetrix.backends.torch_backend.kernels._common import NodeContext, compute_dtype, kernel


def _in_compute(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x))


@kernel("Relu", since=1)
def relu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Relu: max(x, 0)."""
    return torch.relu(x)


@kernel("LeakyRelu", since=1)
def leaky_relu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """LeakyRelu: x for x >= 0, alpha * x otherwise."""
    return torch.where(x < 0, x * ctx.attrs.get("alpha", 0.01), x).to(x.dtype)


@kernel("PRelu", since=1)
def prelu(ctx: NodeContext, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PRelu: x for x >= 0, slope * x otherwise (slope broadcasts onto x)."""
    if ctx.opset < 7 and slope.dim() == 1 and x.dim() > 2 and slope.shape[0] == x.shape[1] > 1:
        slope = slope.reshape((-1,) + (1,) * (x.dim() - 2))  # pre-7: one slope per channel
    return torch.where(x < 0, x * slope, x).to(x.dtype)


@kernel("HardSigmoid", since=1)
def hard_sigmoid(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """HardSigmoid: clip(alpha * x + beta, 0, 1)."""
    alpha, beta = ctx.attrs.get("alpha", 0.2), ctx.attrs.get("beta", 0.5)
    return torch.clamp(_in_compute(x) * alpha + beta, 0, 1).to(x.dtype)


@kernel("HardSwish", since=14)
def hard_swish(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """HardSwish: x * clip(x / 6 + 0.5, 0, 1)."""
    xc = _in_compute(x)
    return (xc * torch.clamp(xc / 6 + 0.5, 0, 1)).to(x.dtype)


@kernel("Elu", since=1)
def elu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Elu: x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return F.elu(_in_compute(x), alpha=ctx.attrs.get("alpha", 1.0)).to(x.dtype)


@kernel("Selu", since=1)
def selu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Selu: gamma * (x for x > 0, alpha * (exp(x) - 1) otherwise)."""
    alpha = ctx.attrs.get("alpha", 1.67326319217681884765625)
    gamma = ctx.attrs.get("gamma", 1.05070102214813232421875)
    return (gamma * F.elu(_in_compute(x), alpha=alpha)).to(x.dtype)


@kernel("Celu", since=12)
def celu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Celu: max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    return F.celu(_in_compute(x), alpha=ctx.attrs.get("alpha", 1.0)).to(x.dtype)


@kernel("Softplus", since=1)
def softplus(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Softplus: log(1 + exp(x)), stable for any x."""
    xc = _in_compute(x)
    return (torch.clamp(xc, min=0) + torch.log1p(torch.exp(-torch.abs(xc)))).to(x.dtype)


@kernel("Softsign", since=1)
def softsign(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Softsign: x / (1 + |x|)."""
    xc = _in_compute(x)
    return (xc / (1 + torch.abs(xc))).to(x.dtype)


@kernel("Gelu", since=20)
def gelu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Gelu: exact (erf) or tanh approximation, per ``approximate``."""
    approximate = ctx.attrs.get("approximate", "none")
    return F.gelu(_in_compute(x), approximate=approximate).to(x.dtype)


@kernel("Mish", since=18)
def mish(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Mish: x * tanh(softplus(x))."""
    return F.mish(_in_compute(x)).to(x.dtype)


@kernel("ThresholdedRelu", since=10)
def thresholded_relu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """ThresholdedRelu: x where x > alpha, else 0."""
    alpha = ctx.attrs.get("alpha", 1.0)
    return torch.where(x > alpha, x, torch.zeros_like(x))


@kernel("Shrink", since=9)
def shrink(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Shrink: x + bias below -lambd, x - bias above lambd, 0 between."""
    lambd, bias = ctx.attrs.get("lambd", 0.5), ctx.attrs.get("bias", 0.0)
    xc = _in_compute(x)
    out = torch.where(xc < -lambd, xc + bias, torch.where(xc > lambd, xc - bias, 0 * xc))
    return out.to(x.dtype)
