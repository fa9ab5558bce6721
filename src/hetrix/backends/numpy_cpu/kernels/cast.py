"""cast kernels of the NumPy CPU backend.

Cast, CastLike and BitCast over every ONNX tensor type.  The exotic types are ml_dtypes numpy types
(bfloat16, float8 variants, int4/uint4, int2/uint2, float4e2m1, float6, float8e8m0), one element per
byte.  ml_dtypes' ``astype`` gives round-to-nearest-even and ONNX's non-saturating float8 rules;
this module adds what it does not do: the ``saturate`` clamp, the float8e8m0 ``round_mode``, string
parsing / formatting, and the wrap-around of out-of-range fixed-point values.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

_FLOAT8 = frozenset(
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
    )
)
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_SUB_BYTE_BITS = {
    np.dtype(ml_dtypes.int4): 4,
    np.dtype(ml_dtypes.uint4): 4,
    np.dtype(ml_dtypes.float4_e2m1fn): 4,
    np.dtype(ml_dtypes.int2): 2,
    np.dtype(ml_dtypes.uint2): 2,
}
_SMALL_INTS = {
    np.dtype(ml_dtypes.int4): (4, True),
    np.dtype(ml_dtypes.uint4): (4, False),
    np.dtype(ml_dtypes.int2): (2, True),
    np.dtype(ml_dtypes.uint2): (2, False),
}
_STRING = np.dtype(object)


def _np_dtype(ctx: NodeContext, to: int | str) -> np.dtype:
    """The numpy dtype of the ``to`` attribute (an enum int, or a type name before opset 6)."""
    try:
        code = TensorProto.DataType.Value(to.upper()) if isinstance(to, str) else int(to)
        return np.dtype(helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{ctx.op_type} '{ctx.name}': unsupported target type {to!r}") from None


def _is_float(dtype: np.dtype) -> bool:
    """True for numpy and ml_dtypes floating-point types."""
    if dtype.kind == "f":
        return True
    return dtype.kind == "V" and dtype not in _SMALL_INTS


# ----------------------------------------------------------------------------------------------
# strings


def _from_strings(x: np.ndarray, to: np.dtype, saturate: bool, round_mode: str) -> np.ndarray:
    """Parse numeric strings ("3.14", "1e-5", "INF", "-inf", "NaN") into ``to``."""
    flat = [s.decode() if isinstance(s, bytes) else str(s) for s in x.reshape(-1)]
    if to.kind in "iu":
        try:  # exact for big int64 values that a float64 round trip would change
            return np.array([int(s) for s in flat], dtype=np.int64).astype(to).reshape(x.shape)
        except ValueError:
            pass  # "100.5" and the like: parse as float, then truncate below
    if to == np.bool_:
        lowered = [s.strip().lower() for s in flat]
        if all(s in ("true", "false") for s in lowered):
            return np.array([s == "true" for s in lowered], dtype=bool).reshape(x.shape)
    try:
        values = np.array([float(s) for s in flat], dtype=np.float64).reshape(x.shape)
    except ValueError as err:
        raise ValueError(f"Cast: cannot parse a number from a string: {err}") from None
    return _cast(values, to, saturate, round_mode)


def _to_strings(x: np.ndarray) -> np.ndarray:
    """Format numbers as strings the way onnxruntime does: "%.8g", INF / -INF / NaN, bool 1 / 0."""
    if x.dtype == np.bool_:
        return np.where(x, "1", "0").astype(object)
    if x.dtype.kind in "iu" or x.dtype in _SMALL_INTS:
        return x.astype(np.int64 if x.dtype.kind == "V" else x.dtype).astype(str).astype(object)
    xf = x.astype(np.float64)  # exact for every narrower float type
    out = np.char.mod("%.8g", xf).astype(object)
    out[np.isnan(xf)] = "NaN"
    out[xf == np.inf] = "INF"
    out[xf == -np.inf] = "-INF"
    return out


# ----------------------------------------------------------------------------------------------
# special targets


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """Round |x| to a power of two 2**(e - 127), e in 0..254, stored as the byte e (255 = NaN)."""
    xf = np.abs(x.astype(np.float64))
    mant, exp = np.frexp(xf)  # xf = mant * 2**exp, mant in [0.5, 1) (0 for xf == 0)
    exp = exp.astype(np.int64) - 1  # floor(log2(xf)) for finite non-zero xf
    frac = mant * 2.0  # in [1, 2): how far above 2**exp the value lies
    if round_mode == "up":
        exp += frac > 1.0
    elif round_mode == "nearest":
        exp += frac >= 1.5  # ties round up
    elif round_mode != "down":
        raise ValueError(f"Cast: round_mode must be 'up', 'down' or 'nearest', not {round_mode!r}")
    biased = exp + 127
    special = ~np.isfinite(xf) | (xf == 0)
    if saturate:
        bits = np.clip(biased, 0, 254)
        bits[xf == 0] = 0
        bits[np.isinf(xf)] = 254
    else:
        bits = np.where((biased < 0) | (biased > 254), 255, biased)
        bits[special] = 255  # zero and inf have no E8M0 encoding
    bits[np.isnan(xf)] = 255
    return bits.astype(np.uint8).view(_E8M0)


def _to_small_int(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Fixed-point cast to int4/uint4/int2/uint2: truncate, then keep the low bits (wrap)."""
    bits, signed = _SMALL_INTS[to]
    if _is_float(x.dtype):
        with np.errstate(invalid="ignore"):
            wide = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            wide = wide.astype(np.int64)
    else:
        wide = x.astype(np.int64)
    low = wide & ((1 << bits) - 1)
    if signed:
        sign = 1 << (bits - 1)
        low = (low ^ sign) - sign  # sign-extend the low bits
    return low.astype(np.int8).astype(to)


def _to_float8(x: np.ndarray, to: np.dtype, saturate: bool) -> np.ndarray:
    """float8 cast: RNE, and with ``saturate`` out-of-range values (and inf) clamp to +-max."""
    src = x.astype(np.float32) if not _is_float(x.dtype) or x.dtype.kind == "V" else x
    if saturate:
        big = float(ml_dtypes.finfo(to).max)
        src = np.clip(src, -big, big)  # NaN passes through
    return src.astype(to)


# ----------------------------------------------------------------------------------------------
# the dispatcher


def _cast(x: np.ndarray, to: np.dtype, saturate: bool, round_mode: str) -> np.ndarray:
    """Convert ``x`` to ``to`` following ONNX Cast semantics."""
    src = x.dtype
    if src == to:
        return x.copy()  # a new value: the caller may own and later modify x
    if src == _STRING:
        return _from_strings(x, to, saturate, round_mode)
    if to == _STRING:
        return _to_strings(x)
    if to == np.bool_:
        return np.asarray(x.astype(np.float32) != 0 if src.kind == "V" else x != 0)
    if to == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if to in _FLOAT8:
        return _to_float8(x, to, saturate)
    if to in _SMALL_INTS:
        return _to_small_int(x, to)
    with np.errstate(invalid="ignore", over="ignore"):
        if src.kind == "V" and to.kind != "f":
            # exotic float or small int to an integer type: through a plain numpy type
            x = x.astype(np.int64 if src in _SMALL_INTS else np.float32)
        if to.kind in "iu" and x.dtype.kind == "f":
            return _float_to_int(x, to)
        return x.astype(to)


def _float_to_int(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Float to integer: truncate toward zero; NaN and inf (undefined in ONNX) become 0."""
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x.astype(to)


def _attrs(ctx: NodeContext) -> tuple[bool, str]:
    return bool(ctx.attrs.get("saturate", 1)), ctx.attrs.get("round_mode", "up")


@kernel("Cast", since=1)
def cast(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Cast: convert to the type of the ``to`` attribute (saturate / round_mode for float8)."""
    to = ctx.attrs.get("to")
    if to is None:
        raise ValueError(f"Cast '{ctx.name}': the 'to' attribute is required")
    return _cast(x, _np_dtype(ctx, to), *_attrs(ctx))


@kernel("CastLike", since=15)
def cast_like(ctx: NodeContext, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """CastLike: convert to the element type of the second input."""
    return _cast(x, target.dtype, *_attrs(ctx))


def _bit_width(dtype: np.dtype) -> int:
    return _SUB_BYTE_BITS.get(dtype, dtype.itemsize * 8)


@kernel("BitCast", since=26)
def bitcast(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """BitCast: reinterpret the bits of each element as the ``to`` type (same bit width)."""
    to = _np_dtype(ctx, ctx.attrs.get("to"))
    if to == _STRING or x.dtype == _STRING:
        raise ValueError(f"BitCast '{ctx.name}': strings have no bit representation")
    if _bit_width(to) != _bit_width(x.dtype):
        raise ValueError(
            f"BitCast '{ctx.name}': {x.dtype} ({_bit_width(x.dtype)} bits) and {to} "
            f"({_bit_width(to)} bits) differ in width"
        )
    if x.dtype in _SUB_BYTE_BITS:
        # one element per byte in the low bits: mask so that the target sees only its own bits
        raw = x.view(np.uint8) & np.uint8((1 << _bit_width(to)) - 1)
        return raw.view(to) if to not in _SMALL_INTS else _to_small_int(raw, to)
    if to == np.bool_:
        return np.asarray(x.view(np.uint8) != 0)  # only 0 and 1 are valid bool bytes
    # numpy views are native-endian; ONNX's little-endian bytes match on every host we run on
    return (x if x.flags.c_contiguous else x.copy()).view(to)
