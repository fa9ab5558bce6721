"""``ai.onnx.ml`` kernels of the NumPy CPU backend: feature extraction, encoders, tree ensembles."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel

_ML = "ai.onnx.ml"


def _is_string(x: np.ndarray) -> bool:
    return x.dtype == object or x.dtype.kind in "UT"


@kernel("ArrayFeatureExtractor", since=1, domain=_ML)
def array_feature_extractor(ctx: NodeContext, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Select the (flattened) ``indices`` along the last axis of ``x``."""
    idx = np.asarray(indices).reshape(-1).astype(np.int64, copy=False)
    size = x.shape[-1] if x.ndim else 0
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(
            f"ArrayFeatureExtractor: indices {idx.tolist()} out of range for last axis {size}"
        )
    out = np.take(x, idx, axis=-1)
    return out.reshape(1, -1) if x.ndim == 1 else out  # 1-D data is one row of features


@kernel("Binarizer", since=1, domain=_ML)
def binarizer(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """1 where ``x > threshold``, else 0, in the input dtype."""
    threshold = x.dtype.type(ctx.attrs.get("threshold", 0.0))
    return (x > threshold).astype(x.dtype)


# --- LabelEncoder ----------------------------------------------------------------------------


class _Lookup:
    """A vectorised key -> value map: sorted unique keys searched with ``searchsorted``.

    The last occurrence of a repeated key wins; NaN keys match every NaN input.
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray, default: Any) -> None:
        if len(keys) != len(values):
            raise ValueError(
                f"LabelEncoder: {len(keys)} keys but {len(values)} values (must be equal)"
            )
        self.values_dtype = values.dtype
        self.default = np.asarray(default, dtype=values.dtype).reshape(-1)[:1]
        self.nan_value = None
        if keys.dtype.kind == "f":
            nan = np.isnan(keys)
            if nan.any():
                self.nan_value = values[np.nonzero(nan)[0][-1]]
            keys, values = keys[~nan], values[~nan]
        # np.unique keeps the first occurrence: run it on the reversed lists so the last wins.
        self.keys, first = np.unique(keys[::-1], return_index=True)
        self.values = values[::-1][first]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1)
        out = np.empty(flat.shape, dtype=self.values_dtype)
        out[:] = self.default[0] if self.default.size else self.values_dtype.type(0)
        if self.keys.size:
            pos = np.minimum(np.searchsorted(self.keys, flat), self.keys.size - 1)
            hit = self.keys[pos] == flat
            out[hit] = self.values[pos[hit]]
        if self.nan_value is not None and x.dtype.kind == "f":
            out[np.isnan(flat)] = self.nan_value
        return out.reshape(x.shape)


def _strings(values: list[str]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _label_lookup_v2(ctx: NodeContext, x: np.ndarray) -> _Lookup:
    """Build the map from the keys_*/values_* (and, from opset 4, *_tensor) attributes."""
    a = ctx.attrs
    keys_set = [
        k
        for k in ("keys_strings", "keys_int64s", "keys_floats", "keys_tensor")
        if a.get(k) is not None
    ]
    values_set = [
        k
        for k in ("values_strings", "values_int64s", "values_floats", "values_tensor")
        if a.get(k) is not None
    ]
    if len(keys_set) != 1 or len(values_set) != 1:
        raise ValueError(
            f"LabelEncoder: exactly one keys_* and one values_* attribute must be set, got "
            f"{keys_set} and {values_set}"
        )
    converters = {
        "strings": _strings,
        "int64s": lambda v: np.asarray(v, dtype=np.int64),
        "floats": lambda v: np.asarray(v, dtype=np.float32),
        "tensor": lambda v: np.asarray(v).reshape(-1),
    }
    keys = converters[keys_set[0].split("_")[1]](a[keys_set[0]])
    values = converters[values_set[0].split("_")[1]](a[values_set[0]])
    if _is_string(keys) != _is_string(x) or (keys.dtype.kind == "f") != (x.dtype.kind == "f"):
        raise ValueError(f"LabelEncoder: input dtype {x.dtype} does not match keys {keys.dtype}")
    if keys.dtype != x.dtype and not _is_string(keys):
        keys = keys.astype(x.dtype)
    if a.get("default_tensor") is not None:
        default = a["default_tensor"]
    elif _is_string(values):
        default = a.get("default_string", "_Unused")
    elif values.dtype.kind == "f":
        default = a.get("default_float", -0.0)
    else:
        default = a.get("default_int64", -1)
    return _Lookup(keys, values, default)


@kernel("LabelEncoder", since=1, domain=_ML)
def label_encoder_1(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Strings -> their index in ``classes_strings``, or int64 -> the class string."""
    lookup = ctx.cache.get("lookup")
    if lookup is None:
        classes = _strings(list(ctx.attrs.get("classes_strings") or []))
        index = np.arange(len(classes), dtype=np.int64)
        if _is_string(x):
            lookup = _Lookup(classes, index, ctx.attrs.get("default_int64", -1))
        else:
            lookup = _Lookup(index, classes, ctx.attrs.get("default_string", "_Unused"))
        ctx.cache["lookup"] = lookup
    return lookup(x if not _is_string(x) else x.astype(object, copy=False))


@kernel("LabelEncoder", since=2, domain=_ML)
def label_encoder_2(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Map each element through the parallel keys_*/values_* attributes (default otherwise)."""
    lookup = ctx.cache.get("lookup")
    if lookup is None:
        lookup = ctx.cache["lookup"] = _label_lookup_v2(ctx, x)
    return lookup(x if not _is_string(x) else x.astype(object, copy=False))


# --- TreeEnsemble ----------------------------------------------------------------------------

_LEQ, _LT, _GTE, _GT, _EQ, _NEQ, _MEMBER = range(7)


class _Forest:
    """The ``nodes_*``/``leaf_*`` attributes of a TreeEnsemble as flat arrays."""

    def __init__(self, ctx: NodeContext) -> None:
        a = ctx.attrs

        def ints(name: str, default: int | None = None) -> np.ndarray:
            value = a.get(name)
            if value is None:
                if default is None:
                    raise ValueError(f"TreeEnsemble: attribute {name!r} is required")
                return np.full(len(a["nodes_featureids"]), default, dtype=np.int64)
            return np.asarray(value, dtype=np.int64).reshape(-1)

        self.feature = ints("nodes_featureids")
        self.mode = ints("nodes_modes", 0)
        self.true_id, self.false_id = ints("nodes_truenodeids"), ints("nodes_falsenodeids")
        self.true_leaf, self.false_leaf = ints("nodes_trueleafs"), ints("nodes_falseleafs")
        self.missing_true = ints("nodes_missing_value_tracks_true", 0).astype(bool)
        splits = a.get("nodes_splits")
        self.splits = np.zeros(len(self.feature)) if splits is None else np.asarray(splits)
        self.roots = ints("tree_roots")
        self.leaf_target = ints("leaf_targetids")
        self.leaf_weight = np.asarray(a["leaf_weights"]).reshape(-1)
        self.n_targets = int(a["n_targets"])
        if self.leaf_target.size and not 0 <= self.leaf_target.min() <= self.leaf_target.max() < (
            self.n_targets
        ):
            raise ValueError("TreeEnsemble: leaf_targetids out of range [0, n_targets)")
        self.sets = self._member_sets(a.get("membership_values"))

    def _member_sets(self, values: np.ndarray | None) -> np.ndarray:
        """[n_nodes, max set size] NaN-padded member values of each BRANCH_MEMBER node."""
        members = np.nonzero(self.mode == _MEMBER)[0]
        if not members.size:
            return np.zeros((len(self.mode), 0))
        if values is None:
            raise ValueError("TreeEnsemble: BRANCH_MEMBER nodes need membership_values")
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        groups = np.split(values, np.nonzero(np.isnan(values))[0])
        groups = [g[~np.isnan(g)] for g in groups]
        if groups and groups[-1].size == 0:  # trailing NaN delimiter
            groups.pop()
        if len(groups) != members.size:
            raise ValueError(
                f"TreeEnsemble: {members.size} BRANCH_MEMBER nodes but {len(groups)} "
                "membership sets"
            )
        sets = np.full((len(self.mode), max(g.size for g in groups)), np.nan)
        for node, group in zip(members, groups, strict=True):  # one row per member node; few nodes
            sets[node, : group.size] = group
        return sets

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """[N, n_trees] leaf index reached by each sample in each tree."""
        n = x.shape[0]
        # Position per (sample, tree): node index >= 0 while inside, ~leaf (< 0) once at a leaf.
        cur = np.broadcast_to(self.roots, (n, self.roots.size)).copy()
        rows = np.broadcast_to(np.arange(n)[:, None], cur.shape)
        for _ in range(len(self.feature) + 1):  # a path visits each node at most once
            active = cur >= 0
            if not active.any():
                return ~cur
            node, row = cur[active], rows[active]
            value = x[row, self.feature[node]].astype(np.float64)
            go_true = self._compare(node, value)
            next_id = np.where(go_true, self.true_id[node], self.false_id[node])
            is_leaf = np.where(go_true, self.true_leaf[node], self.false_leaf[node]).astype(bool)
            cur[active] = np.where(is_leaf, ~next_id, next_id)
        raise ValueError("TreeEnsemble: the nodes contain a cycle")

    def _compare(self, node: np.ndarray, value: np.ndarray) -> np.ndarray:
        """The branch condition of each visited node on its sample's feature value."""
        mode, split = self.mode[node], self.splits[node].astype(np.float64)
        with np.errstate(invalid="ignore"):
            result = np.select(
                [mode == _LEQ, mode == _LT, mode == _GTE, mode == _GT, mode == _EQ, mode == _NEQ],
                [
                    value <= split,
                    value < split,
                    value >= split,
                    value > split,
                    value == split,
                    value != split,
                ],
                default=False,
            )
        member = mode == _MEMBER
        if member.any():
            result[member] = (self.sets[node[member]] == value[member, None]).any(axis=1)
        # A NaN feature also takes the true branch where the node says so (ONNX Runtime and the
        # ONNX reference OR this in, so NaN != split stays true for BRANCH_NEQ).
        result |= np.isnan(value) & self.missing_true[node]
        return result


def _aggregate(forest: _Forest, leaves: np.ndarray, how: int) -> np.ndarray:
    """Combine leaf weights per (sample, target): AVERAGE, SUM, MIN or MAX."""
    n, trees = leaves.shape
    flat = (np.arange(n)[:, None] * forest.n_targets + forest.leaf_target[leaves]).reshape(-1)
    weights = forest.leaf_weight[leaves].reshape(-1).astype(np.float64)
    size = n * forest.n_targets
    if how in (0, 1):
        out = np.bincount(flat, weights=weights, minlength=size)
        if how == 0:
            out /= trees
    elif how in (2, 3):
        ufunc = np.minimum if how == 2 else np.maximum
        out = np.full(size, np.inf if how == 2 else -np.inf)
        ufunc.at(out, flat, weights)
        out[np.isinf(out)] = 0.0  # targets no leaf contributed to
    else:
        raise ValueError(f"TreeEnsemble: unknown aggregate_function {how}")
    return out.reshape(n, forest.n_targets)


_ERFINV_SMALL = [
    2.81022636e-08,
    3.43273939e-07,
    -3.5233877e-06,
    -4.39150654e-06,
    0.00021858087,
    -0.00125372503,
    -0.00417768164,
    0.246640727,
    1.50140941,
]
_ERFINV_LARGE = [
    -0.000200214257,
    0.000100950558,
    0.00134934322,
    -0.00367342844,
    0.00573950773,
    -0.0076224613,
    0.00943887047,
    1.00167406,
    2.83297682,
]


def _erfinv(y: np.ndarray) -> np.ndarray:
    """Inverse error function: Giles' single-precision polynomial, refined by two Newton steps."""
    x = np.full(y.shape, np.nan)
    edge = np.abs(y) == 1.0
    x[edge] = np.copysign(np.inf, y[edge])
    inside = np.abs(y) < 1.0
    yi = y[inside]
    w = -np.log((1.0 - yi) * (1.0 + yi))
    xi = (
        np.where(
            w < 5.0, np.polyval(_ERFINV_SMALL, w - 2.5), np.polyval(_ERFINV_LARGE, np.sqrt(w) - 3.0)
        )
        * yi
    )
    erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; PROBIT is rare and small
    for _ in range(2):  # Newton on erf(x) = y, with erf'(x) = 2/sqrt(pi) exp(-x^2)
        xi -= (erf(xi).astype(np.float64) - yi) / (2.0 / np.sqrt(np.pi) * np.exp(-xi * xi))
    x[inside] = xi
    return x


def _post_transform(scores: np.ndarray, how: int) -> np.ndarray:
    """NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO or PROBIT over the targets of each sample."""
    if how == 0:
        return scores
    if how == 1:
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if how == 2:
        return 1.0 / (1.0 + np.exp(-scores))
    if how == 3:  # softmax over the non-zero scores only; zeros stay zero
        nonzero = scores != 0
        peak = np.where(nonzero, scores, -np.inf).max(axis=1, keepdims=True)
        e = np.where(nonzero, np.exp(scores - np.where(np.isfinite(peak), peak, 0.0)), 0.0)
        total = e.sum(axis=1, keepdims=True)
        return np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    if how == 4:
        return np.sqrt(2.0) * _erfinv(2.0 * scores - 1.0)
    raise ValueError(f"TreeEnsemble: unknown post_transform {how}")


@kernel("TreeEnsemble", since=5, domain=_ML)
def tree_ensemble(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """[N, n_targets] aggregated leaf weights of every tree for each row of ``x`` ([N, F])."""
    forest = ctx.cache.get("forest")
    if forest is None:
        forest = ctx.cache["forest"] = _Forest(ctx)
    if x.ndim != 2:
        raise ValueError(f"TreeEnsemble: input must be [N, F], got shape {x.shape}")
    if forest.feature.size and forest.feature.max() >= x.shape[1]:
        raise ValueError(
            f"TreeEnsemble: node feature id {forest.feature.max()} >= {x.shape[1]} features"
        )
    scores = _aggregate(forest, forest.leaves(x), int(ctx.attrs.get("aggregate_function", 1)))
    return _post_transform(scores, int(ctx.attrs.get("post_transform", 0))).astype(x.dtype)
