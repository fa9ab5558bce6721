"""Signal processing kernels of the NumPy CPU backend: DFT, STFT, windows, mel filterbank.

ONNX carries complex values as real tensors with a trailing axis of size 2 (real, imaginary); a
real signal has a trailing axis of size 1.  The transforms use ``numpy.fft`` (pocketfft), which
keeps float32 input in complex64.
"""

from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


def _scalar(value: np.ndarray, name: str, op: str) -> int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"{op}: {name} must be a scalar, got shape {arr.shape}")
    return int(arr.reshape(()))


def _to_complex(x: np.ndarray, op: str) -> tuple[np.ndarray, bool]:
    """The signal as a numpy array without the trailing axis, and whether it was complex."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise ValueError(f"{op}: last axis must be 1 (real) or 2 (complex), got shape {x.shape}")
    # float16/bfloat16 have no FFT: compute in float32.
    work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    if x.shape[-1] == 1:
        return work[..., 0], False
    return work[..., 0] + 1j * work[..., 1], True


def _from_complex(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Pack a complex array as [..., 2] real/imaginary pairs of ``dtype``."""
    out = np.empty((*y.shape, 2), dtype=dtype)
    out[..., 0] = y.real
    out[..., 1] = y.imag
    return out


def _dft(
    x: np.ndarray, axis: int, length: np.ndarray | None, inverse: bool, onesided: bool, op: str
) -> np.ndarray:
    """The DFT of ``x`` ([..., 1|2]) along ``axis``, shared by every DFT version."""
    rank = x.ndim
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise ValueError(f"{op}: axis {axis} out of range for rank {rank} (last axis is re/im)")
    axis %= rank
    signal, _ = _to_complex(x, op)
    n = None if length is None else _scalar(length, "dft_length", op)
    if n is not None and n <= 0:
        raise ValueError(f"{op}: dft_length must be positive, got {n}")
    if inverse and onesided:
        # IRFFT: the input holds bins [0, n//2]; the output is a real signal of length n.
        if n is None:
            n = 2 * (signal.shape[axis] - 1)
        return np.fft.irfft(signal, n=n, axis=axis)[..., None].astype(x.dtype, copy=False)
    if inverse:
        y = np.fft.ifft(signal, n=n, axis=axis)
    elif onesided and not np.iscomplexobj(signal):
        y = np.fft.rfft(signal, n=n, axis=axis)
    else:
        y = np.fft.fft(signal, n=n, axis=axis)
        if onesided:
            y = np.take(y, np.arange(y.shape[axis] // 2 + 1), axis=axis)
    return _from_complex(y, x.dtype)


@kernel("DFT", since=17)
def dft_17(ctx: NodeContext, x: np.ndarray, dft_length: np.ndarray | None = None) -> np.ndarray:
    """Discrete Fourier transform along the ``axis`` attribute (default 1)."""
    return _dft(
        x,
        int(ctx.attrs.get("axis", 1)),
        dft_length,
        bool(ctx.attrs.get("inverse", 0)),
        bool(ctx.attrs.get("onesided", 0)),
        "DFT",
    )


@kernel("DFT", since=20)
def dft_20(
    ctx: NodeContext,
    x: np.ndarray,
    dft_length: np.ndarray | None = None,
    axis: np.ndarray | None = None,
) -> np.ndarray:
    """Discrete Fourier transform along the ``axis`` input (default -2, the last signal axis)."""
    return _dft(
        x,
        -2 if axis is None else _scalar(axis, "axis", "DFT"),
        dft_length,
        bool(ctx.attrs.get("inverse", 0)),
        bool(ctx.attrs.get("onesided", 0)),
        "DFT",
    )


@kernel("STFT", since=17)
def stft(
    ctx: NodeContext,
    signal: np.ndarray,
    frame_step: np.ndarray,
    window: np.ndarray | None = None,
    frame_length: np.ndarray | None = None,
) -> np.ndarray:
    """Short-time Fourier transform: [batch, frames, bins, 2] DFTs of windowed frames."""
    if signal.ndim != 3:
        raise ValueError(f"STFT: signal must be [batch, length, 1|2], got shape {signal.shape}")
    sig, is_complex = _to_complex(signal, "STFT")
    length = sig.shape[1]
    step = _scalar(frame_step, "frame_step", "STFT")
    if window is not None and window.ndim != 1:
        raise ValueError(f"STFT: window must be 1-D, got shape {window.shape}")
    if frame_length is not None:
        size = _scalar(frame_length, "frame_length", "STFT")
        if window is not None and window.shape[0] != size:
            raise ValueError(f"STFT: window length {window.shape[0]} != frame_length {size}")
    else:
        size = window.shape[0] if window is not None else length
    if step <= 0 or not 0 < size <= length:
        raise ValueError(f"STFT: bad frame_step {step} / frame_length {size} for length {length}")
    onesided = bool(ctx.attrs.get("onesided", 1))
    if onesided and is_complex:
        raise ValueError("STFT: onesided output is not possible for a complex signal")
    # [batch, frames, size] strided view of the frames, no copy until windowing.
    frames = np.lib.stride_tricks.sliding_window_view(sig, size, axis=1)[:, ::step]
    if window is not None:
        frames = frames * window.astype(frames.real.dtype, copy=False)
    y = np.fft.rfft(frames, axis=-1) if onesided else np.fft.fft(frames, axis=-1)
    return _from_complex(y, signal.dtype)


def _window(ctx: NodeContext, size: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """The generalised cosine window sum_k (-1)^k a_k cos(2 pi k n / N)."""
    n = _scalar(size, "size", ctx.op_type)
    if n < 0:
        raise ValueError(f"{ctx.op_type}: size must be non-negative, got {n}")
    periodic = bool(ctx.attrs.get("periodic", 1))
    denom = n if periodic else n - 1
    dtype = tensor_dtype_to_np_dtype(int(ctx.attrs.get("output_datatype", 1)))
    if denom <= 0:  # a single-point symmetric window is [1] (as numpy/scipy define it)
        return np.ones(n, dtype=dtype)
    phase = 2.0 * np.pi * np.arange(n) / denom
    w = np.zeros(n)
    for k, a in enumerate(coeffs):
        w += (-1) ** k * a * np.cos(k * phase)
    return w.astype(dtype)


@kernel("HannWindow", since=17)
def hann_window(ctx: NodeContext, size: np.ndarray) -> np.ndarray:
    """Hann window of ``size`` points (periodic by default)."""
    return _window(ctx, size, (0.5, 0.5))


@kernel("HammingWindow", since=17)
def hamming_window(ctx: NodeContext, size: np.ndarray) -> np.ndarray:
    """Hamming window (alpha = 25/46) of ``size`` points (periodic by default)."""
    return _window(ctx, size, (25 / 46, 1 - 25 / 46))


@kernel("BlackmanWindow", since=17)
def blackman_window(ctx: NodeContext, size: np.ndarray) -> np.ndarray:
    """Blackman window of ``size`` points (periodic by default)."""
    return _window(ctx, size, (0.42, 0.5, 0.08))


@kernel("MelWeightMatrix", since=17)
def mel_weight_matrix(
    ctx: NodeContext,
    num_mel_bins: np.ndarray,
    dft_length: np.ndarray,
    sample_rate: np.ndarray,
    lower_edge_hertz: np.ndarray,
    upper_edge_hertz: np.ndarray,
) -> np.ndarray:
    """[dft_length // 2 + 1, num_mel_bins] triangular mel filterbank with peaks of 1."""
    bands = _scalar(num_mel_bins, "num_mel_bins", "MelWeightMatrix")
    n_fft = _scalar(dft_length, "dft_length", "MelWeightMatrix")
    rate = _scalar(sample_rate, "sample_rate", "MelWeightMatrix")
    low, high = float(np.asarray(lower_edge_hertz)), float(np.asarray(upper_edge_hertz))
    if bands <= 0 or n_fft <= 0 or rate <= 0 or not 0 <= low < high:
        raise ValueError(
            f"MelWeightMatrix: bad arguments bins={bands} dft_length={n_fft} rate={rate} "
            f"edges=[{low}, {high}]"
        )
    n_bins = n_fft // 2 + 1
    # bands + 2 edges on the mel scale, mapped back to DFT bin indices.  The step divides the
    # range by bands + 2 (not + 1), as ONNX Runtime and the ONNX reference do: the top edge
    # stays below upper_edge_hertz.
    low_mel, high_mel = (2595.0 * np.log10(1.0 + f / 700.0) for f in (low, high))
    mels = low_mel + np.arange(bands + 2) * ((high_mel - low_mel) / (bands + 2))
    hertz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    edges = ((n_fft + 1) * hertz // rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(n_bins)[:, None]
    rise = np.divide(j - left, center - left, out=np.ones((n_bins, bands)), where=center > left)
    fall = np.divide(right - j, right - center, out=np.zeros((n_bins, bands)), where=right > center)
    out = np.where((j >= left) & (j <= center), rise, 0.0)
    out = np.where((j >= center) & (j < right), fall, out)
    dtype = tensor_dtype_to_np_dtype(int(ctx.attrs.get("output_datatype", 1)))
    return out.astype(dtype)
