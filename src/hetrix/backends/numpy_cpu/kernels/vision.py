"""vision kernels of the NumPy CPU backend."""

from __future__ import annotations

import itertools
import math

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

# --------------------------------------------------------------------------- GridSample


def _unnormalize(g: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """Grid value in [-1, 1] to a pixel coordinate along an axis of ``size`` pixels."""
    if align_corners:
        return (g + 1) / 2 * (size - 1)
    return ((g + 1) * size - 1) / 2


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into [lo, hi] off its borders, repeatedly (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    t = np.mod(np.abs(x - lo), 2 * span)
    return np.where(t <= span, t, 2 * span - t) + lo


def _cubic_weights(frac: np.ndarray, a: float = -0.75) -> list[np.ndarray]:
    """Weights of the 4 taps floor(x)-1 .. floor(x)+2 of Keys' cubic kernel."""

    def near(t: np.ndarray) -> np.ndarray:
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t: np.ndarray) -> np.ndarray:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    return [far(frac + 1), near(frac), near(1 - frac), far(2 - frac)]


def _axis_taps(
    coord: np.ndarray, size: int, mode: str, padding: str, align_corners: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(index, weight) pairs along one axis; out-of-range taps get weight 0 or a clamped index."""
    lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if mode != "cubic":
        # Linear and nearest pad by moving the coordinate itself.
        if padding == "border":
            coord = np.clip(coord, 0, size - 1)
        elif padding == "reflection":
            coord = np.clip(_reflect(coord, lo, hi), 0, size - 1)
    if mode == "nearest":
        taps = [(np.rint(coord), np.ones_like(coord))]
    elif mode == "linear":
        base = np.floor(coord)
        frac = coord - base
        taps = [(base, 1 - frac), (base + 1, frac)]
    else:
        base = np.floor(coord)
        weights = _cubic_weights(coord - base)
        taps = [(base + k - 1, w) for k, w in enumerate(weights)]
    out = []
    for index, weight in taps:
        index = index.astype(np.int64)
        if mode == "cubic" and padding == "border":
            index = np.clip(index, 0, size - 1)
        elif mode == "cubic" and padding == "reflection":
            index = np.clip(np.rint(_reflect(index.astype(np.float64), lo, hi)), 0, size - 1)
            index = index.astype(np.int64)
        else:
            weight = np.where((index >= 0) & (index < size), weight, 0)
            index = np.clip(index, 0, size - 1)
        out.append((index, weight))
    return out


@kernel("GridSample", since=16)
def grid_sample(ctx: NodeContext, x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sample x (N, C, *D) at normalized grid points (N, *D_out, r): nearest, linear or cubic."""
    nsp = x.ndim - 2
    n, c = x.shape[:2]
    if grid.ndim != x.ndim or grid.shape[0] != n or grid.shape[-1] != nsp:
        raise ValueError(f"GridSample: grid {grid.shape} does not fit input {x.shape}")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(ctx.attrs.get("mode", "linear"))
    mode = mode or ctx.attrs.get("mode", "linear")
    padding = ctx.attrs.get("padding_mode", "zeros")
    if mode not in ("nearest", "linear", "cubic") or padding not in (
        "zeros",
        "border",
        "reflection",
    ):
        raise ValueError(f"GridSample: unsupported mode {mode!r} / padding_mode {padding!r}")
    align = bool(ctx.attrs.get("align_corners", 0))
    sizes = x.shape[2:]
    out_sp = grid.shape[1:-1]
    g = grid.reshape(n, -1, nsp).astype(np.float64)
    # grid's last axis lists (x, y, z...): the reverse of the spatial axis order.
    per_axis = [
        _axis_taps(
            _unnormalize(g[:, :, nsp - 1 - a], sizes[a], align), sizes[a], mode, padding, align
        )
        for a in range(nsp)
    ]
    dtype = x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)
    xf = x.reshape(n, c, -1).astype(dtype, copy=False)
    y = np.zeros((n, c, g.shape[1]), dtype=dtype)
    for combo in itertools.product(*per_axis):
        flat = combo[0][0]
        weight = combo[0][1]
        for a in range(1, nsp):
            flat = flat * sizes[a] + combo[a][0]
            weight = weight * combo[a][1]
        picked = np.take_along_axis(xf, flat[:, None, :], axis=2)
        y += picked * weight[:, None, :].astype(dtype)
    return y.reshape(n, c, *out_sp).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- AffineGrid


@kernel("AffineGrid", since=20)
def affine_grid(ctx: NodeContext, theta: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Sampling grid (N, *spatial, r) of the affine maps theta (N, r, r+1) over a [-1, 1] box."""
    dims = [int(v) for v in np.asarray(size).reshape(-1)]
    nsp = len(dims) - 2
    if nsp not in (2, 3) or theta.shape != (dims[0], nsp, nsp + 1):
        raise ValueError(f"AffineGrid: theta {theta.shape} does not fit size {dims}")
    align = bool(ctx.attrs.get("align_corners", 0))
    spatial = dims[2:]
    lines = []
    for s in spatial:
        if align:
            lines.append(np.linspace(-1, 1, s) if s > 1 else np.zeros(1))
        else:
            lines.append((np.arange(s) * 2 + 1) / s - 1)
    mesh = np.meshgrid(*lines, indexing="ij")  # one array per spatial axis (D, H, W order)
    # Homogeneous points as (x, y, z..., 1): spatial axes reversed, like GridSample's grid.
    points = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(mesh[0].size)], axis=-1)
    grid = np.matmul(points.astype(theta.dtype), theta.transpose(0, 2, 1))  # (N, P, r)
    return grid.reshape(dims[0], *spatial, nsp).astype(theta.dtype, copy=False)


# --------------------------------------------------------------------------- RoiAlign


def _roi_axis(
    start: float, extent: float, pooled: int, grid: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Low/high pixel and their weights for every (bin, sample) along one axis (ORT's rules)."""
    step = extent / pooled
    pos = start + (
        np.arange(pooled)[:, None] * step + (np.arange(grid)[None, :] + 0.5) * step / grid
    )
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0.0)
    low = np.floor(pos).astype(np.int64)
    edge = low >= size - 1
    low = np.where(edge, size - 1, low)
    high = np.where(edge, size - 1, low + 1)
    pos = np.where(edge, low.astype(np.float64), pos)
    frac = pos - low
    return low, high, np.where(valid, 1 - frac, 0.0), np.where(valid, frac, 0.0)


def _interp_matrix(low, high, w_low, w_high, size: int, grid: int) -> np.ndarray:
    """(pooled, size) matrix averaging each bin's samples' linear interpolation."""
    pooled = low.shape[0]
    mat = np.zeros((pooled, size))
    rows = np.repeat(np.arange(pooled), grid)
    np.add.at(mat, (rows, low.reshape(-1)), w_low.reshape(-1) / grid)
    np.add.at(mat, (rows, high.reshape(-1)), w_high.reshape(-1) / grid)
    return mat


@kernel("RoiAlign", since=10)
def roi_align(
    ctx: NodeContext, x: np.ndarray, rois: np.ndarray, batch_indices: np.ndarray
) -> np.ndarray:
    """RoI Align: average (or max) of bilinear samples on a grid inside each output bin."""
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4:
        raise ValueError(f"RoiAlign: X {x.shape} must be 4-D and rois {rois.shape} (R, 4)")
    if batch_indices.shape != (rois.shape[0],):
        raise ValueError(f"RoiAlign: batch_indices {batch_indices.shape} != ({rois.shape[0]},)")
    n, c, h, w = x.shape
    oh, ow = int(ctx.attrs.get("output_height", 1)), int(ctx.attrs.get("output_width", 1))
    ratio = int(ctx.attrs.get("sampling_ratio", 0))
    scale = float(ctx.attrs.get("spatial_scale", 1.0))
    # Opset 10 had no attribute and behaved like output_half_pixel.
    half_pixel = (
        ctx.attrs.get("coordinate_transformation_mode", "output_half_pixel") == "half_pixel"
    )
    use_max = ctx.attrs.get("mode", "avg") == "max"
    dtype = x.dtype if x.dtype.itemsize >= 4 else np.dtype(np.float32)
    xf = x.astype(dtype, copy=False)
    y = np.zeros((rois.shape[0], c, oh, ow), dtype=dtype)
    boxes = rois.astype(np.float64) * scale - (0.5 if half_pixel else 0.0)
    for r, (x1, y1, x2, y2) in enumerate(boxes):
        b = int(batch_indices[r])
        if not 0 <= b < n:
            raise ValueError(f"RoiAlign: batch index {b} out of range for batch {n}")
        rh, rw = y2 - y1, x2 - x1
        if not half_pixel:
            rh, rw = max(rh, 1.0), max(rw, 1.0)
        gh = ratio if ratio > 0 else max(int(math.ceil(rh / oh)), 1)
        gw = ratio if ratio > 0 else max(int(math.ceil(rw / ow)), 1)
        ya = _roi_axis(y1, rh, oh, gh, h)
        xa = _roi_axis(x1, rw, ow, gw, w)
        if use_max:
            y[r] = _roi_max(xf[b], ya, xa)
            continue
        my = _interp_matrix(*ya, h, gh).astype(dtype)
        mx = _interp_matrix(*xa, w, gw).astype(dtype)
        # Only the rows/columns the RoI touches take part: crop before the two small matmuls.
        r0, r1 = int(ya[0].min()), int(ya[1].max()) + 1
        c0, c1 = int(xa[0].min()), int(xa[1].max()) + 1
        patch = xf[b, :, r0:r1, c0:c1]
        y[r] = np.matmul(np.matmul(my[:, r0:r1], patch), mx[:, c0:c1].T)
    return y.astype(x.dtype, copy=False)


def _roi_max(img: np.ndarray, ya: tuple, xa: tuple) -> np.ndarray:
    """Max mode: per sample the max of the 4 weighted corners, then the max over the bin."""
    y_lo, y_hi, wy_lo, wy_hi = (a[:, :, None, None] for a in ya)  # (oh, gh, 1, 1)
    x_lo, x_hi, wx_lo, wx_hi = (a[None, None, :, :] for a in xa)  # (1, 1, ow, gw)
    corners = [
        img[:, yi, xi] * (wy * wx).astype(img.dtype)  # (C, oh, gh, ow, gw)
        for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi))
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi))
    ]
    return np.maximum.reduce(corners).max(axis=(2, 4))


# --------------------------------------------------------------------------- NonMaxSuppression


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """Boxes as (y_min, x_min, y_max, x_max) whatever the input format and corner order."""
    if center_point_box:
        xc, yc, bw, bh = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
        return np.stack([yc - bh / 2, xc - bw / 2, yc + bh / 2, xc + bw / 2], axis=-1)
    y_min = np.minimum(boxes[..., 0], boxes[..., 2])
    y_max = np.maximum(boxes[..., 0], boxes[..., 2])
    x_min = np.minimum(boxes[..., 1], boxes[..., 3])
    x_max = np.maximum(boxes[..., 1], boxes[..., 3])
    return np.stack([y_min, x_min, y_max, x_max], axis=-1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one corner box with many; 0 where either box has no area."""
    ih = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    iw = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.maximum(ih, 0) * np.maximum(iw, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    ok = (area > 0) & (areas > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def _scalar(v: np.ndarray | None, default: float) -> float:
    if v is None or np.asarray(v).size == 0:
        return default
    return float(np.asarray(v).reshape(-1)[0])


@kernel("NonMaxSuppression", since=10)
def non_max_suppression(
    ctx: NodeContext,
    boxes: np.ndarray,
    scores: np.ndarray,
    max_output_boxes_per_class: np.ndarray | None = None,
    iou_threshold: np.ndarray | None = None,
    score_threshold: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy per-(batch, class) NMS; returns selected [batch, class, box] indices (int64)."""
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3:
        raise ValueError(f"NonMaxSuppression: boxes {boxes.shape} / scores {scores.shape}")
    if scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise ValueError(f"NonMaxSuppression: boxes {boxes.shape} and scores {scores.shape} differ")
    limit = int(_scalar(max_output_boxes_per_class, 0))
    iou_max = _scalar(iou_threshold, 0.0)
    min_score = _scalar(score_threshold, -np.inf) if score_threshold is not None else None
    corners = _corners(boxes.astype(np.float64), int(ctx.attrs.get("center_point_box", 0)))
    selected: list[tuple[int, int, int]] = []
    if limit <= 0:
        return np.zeros((0, 3), dtype=np.int64)
    for b in range(scores.shape[0]):
        for cls in range(scores.shape[1]):
            s = scores[b, cls]
            cand = np.arange(s.shape[0]) if min_score is None else np.flatnonzero(s > min_score)
            # Highest score first; stable so equal scores keep their box order.
            cand = cand[np.argsort(-s[cand], kind="stable")]
            kept = 0
            while cand.size and kept < limit:
                best = cand[0]
                selected.append((b, cls, int(best)))
                kept += 1
                rest = cand[1:]
                cand = rest[_iou(corners[b, best], corners[b, rest]) <= iou_max]
    return np.array(selected, dtype=np.int64).reshape(-1, 3)
