"""String kernels of the NumPy CPU backend.

String tensors are numpy object arrays of ``str``.  Per-string work (split, regex) has no numpy
vectorisation, so those kernels run one Python call per element; everything around it (padding,
lookups, counting) is vectorised.
"""

from __future__ import annotations

import re

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


def _strings(x: np.ndarray, op: str) -> np.ndarray:
    if x.dtype != object and x.dtype.kind not in "UT":
        raise ValueError(f"{op}: expected a string tensor, got dtype {x.dtype}")
    return x.astype(object, copy=False)


@kernel("StringConcat", since=20)
def string_concat(ctx: NodeContext, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Element-wise concatenation of two broadcastable string tensors."""
    x, y = _strings(x, "StringConcat"), _strings(y, "StringConcat")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError as exc:
        raise ValueError(f"StringConcat: shapes {x.shape} and {y.shape} do not broadcast") from exc
    out = np.empty(shape, dtype=object)
    np.add(x, y, out=out)  # object add is str.__add__; `out` keeps 0-d results as arrays
    return out


@kernel("StringNormalizer", since=10)
def string_normalizer(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Drop stop words from a [C] or [1, C] string tensor, then optionally change case."""
    x = _strings(x, "StringNormalizer")
    if not (x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1)):
        raise ValueError(f"StringNormalizer: input must be [C] or [1, C], got {x.shape}")
    flat = x.reshape(-1).astype(str)
    stopwords = ctx.attrs.get("stopwords") or []
    if stopwords:
        if ctx.attrs.get("is_case_sensitive", 0):
            keep = ~np.isin(flat, np.asarray(stopwords, dtype=str))
        else:
            folded = np.asarray([w.lower() for w in stopwords], dtype=str)
            keep = ~np.isin(np.strings.lower(flat), folded)
        flat = flat[keep]
    action = ctx.attrs.get("case_change_action", "NONE")
    if action == "LOWER":
        flat = np.strings.lower(flat)
    elif action == "UPPER":
        flat = np.strings.upper(flat)
    elif action != "NONE":
        raise ValueError(f"StringNormalizer: unknown case_change_action {action!r}")
    if flat.size == 0:  # the spec asks for a single empty string rather than an empty tensor
        flat = np.asarray([""])
    out = flat.astype(object)
    return out.reshape(1, -1) if x.ndim == 2 else out


@kernel("StringSplit", since=20)
def string_split(ctx: NodeContext, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each string on ``delimiter`` (whitespace runs when empty), padding with ''."""
    x = _strings(x, "StringSplit")
    delimiter = ctx.attrs.get("delimiter") or None  # None: str.split's whitespace mode
    maxsplit = ctx.attrs.get("maxsplit")
    maxsplit = -1 if maxsplit is None else int(maxsplit)
    parts = [s.split(delimiter, maxsplit) for s in x.reshape(-1)]
    counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    width = int(counts.max()) if counts.size else 0
    out = np.full((len(parts), width), "", dtype=object)
    if counts.size:
        # Scatter all pieces at once: row i gets its pieces in columns [0, counts[i]).
        rows = np.repeat(np.arange(len(parts)), counts)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = np.empty(rows.size, dtype=object)
        flat[:] = [piece for p in parts for piece in p]
        out[rows, cols] = flat
    return out.reshape(*x.shape, width), counts.reshape(x.shape)


@kernel("RegexFullMatch", since=20)
def regex_full_match(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Whether each string fully matches ``pattern`` (RE2 syntax, run with Python's ``re``)."""
    x = _strings(x, "RegexFullMatch")
    regex = ctx.cache.get("regex")
    if regex is None:
        pattern = ctx.attrs.get("pattern")
        if pattern is None:
            raise ValueError("RegexFullMatch: attribute 'pattern' is required")
        try:
            regex = ctx.cache["regex"] = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"RegexFullMatch: invalid pattern {pattern!r}: {exc}") from exc
    flat = x.reshape(-1)
    hits = np.fromiter((regex.fullmatch(s) is not None for s in flat), bool, count=flat.size)
    return hits.reshape(x.shape)


# --- TfIdfVectorizer -------------------------------------------------------------------------


class _NgramPool:
    """The pool of a TfIdfVectorizer node, encoded for vectorised n-gram lookup.

    Tokens are mapped to ids in a sorted vocabulary (absent tokens to ``len(vocab)``); an n-gram of
    ids is packed into one int64 in base ``len(vocab) + 1``, and the pool's packed n-grams of each
    length are kept sorted so that matches are found with ``searchsorted``.
    """

    def __init__(self, ctx: NodeContext) -> None:
        attrs = ctx.attrs
        pool_ints, pool_strs = attrs.get("pool_int64s"), attrs.get("pool_strings")
        if (pool_ints is None) == (pool_strs is None):
            raise ValueError("TfIdfVectorizer: exactly one of pool_int64s/pool_strings is needed")
        self.strings = pool_strs is not None
        pool = np.asarray(
            pool_strs if self.strings else pool_ints, dtype=object if self.strings else np.int64
        )
        counts = list(attrs.get("ngram_counts") or [0])
        indexes = np.asarray(attrs.get("ngram_indexes") or [], dtype=np.int64)
        self.width = int(indexes.max()) + 1 if indexes.size else 0
        weights = attrs.get("weights")
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        if self.weights is not None and self.weights.size < self.width:
            raise ValueError(
                f"TfIdfVectorizer: {self.weights.size} weights for {self.width} output columns"
            )
        self.vocab = np.unique(pool)
        self.base = len(self.vocab) + 1
        self.by_length: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        ngram_no = 0  # global n-gram number, the index into ngram_indexes and weights
        bounds = [*counts, len(pool)]
        for n, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), start=1):
            grams = self.ids(pool[lo:hi]).reshape(-1, n) if hi > lo else np.zeros((0, n), int)
            codes = self.pack(grams)
            order = np.argsort(codes, kind="stable")
            slots = np.arange(ngram_no, ngram_no + len(codes))
            self.by_length[n] = (codes[order], slots[order])
            ngram_no += len(codes)
        if ngram_no != len(indexes):
            raise ValueError(
                f"TfIdfVectorizer: pool holds {ngram_no} n-grams but ngram_indexes has "
                f"{len(indexes)} entries"
            )
        self.indexes = indexes

    def ids(self, tokens: np.ndarray) -> np.ndarray:
        """Vocabulary ids of ``tokens``; ``len(vocab)`` for tokens not in the pool."""
        if self.vocab.size == 0:
            return np.zeros(tokens.shape, dtype=np.int64)
        pos = np.searchsorted(self.vocab, tokens)
        pos = np.minimum(pos, len(self.vocab) - 1)
        return np.where(self.vocab[pos] == tokens, pos, len(self.vocab)).astype(np.int64)

    def pack(self, grams: np.ndarray) -> np.ndarray:
        """One int64 per n-gram row (the last axis), as a base-``self.base`` number."""
        n = grams.shape[-1]
        if self.base**n >= 2**63:
            raise ValueError(f"TfIdfVectorizer: {n}-grams over this vocabulary overflow int64")
        weights = self.base ** np.arange(n - 1, -1, -1, dtype=np.int64)
        return grams.astype(np.int64) @ weights


def _tfidf_counts(pool: _NgramPool, ids: np.ndarray, ctx: NodeContext) -> np.ndarray:
    """Counts [rows, ngrams in pool] of every pool n-gram in each row of token ids."""
    rows, length = ids.shape
    n_slots = len(pool.indexes)
    counts = np.zeros(rows * n_slots, dtype=np.int64)
    lo, hi = int(ctx.attrs.get("min_gram_length", 1)), int(ctx.attrs.get("max_gram_length", 1))
    max_skip = int(ctx.attrs.get("max_skip_count", 0))
    for n in range(max(lo, 1), hi + 1):
        codes, slots = pool.by_length.get(n, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        if codes.size == 0:
            continue
        # Unigrams are the same for every skip: count them once.
        for skip in range(max_skip + 1 if n > 1 else 1):
            step = skip + 1
            starts = length - (n - 1) * step
            if starts <= 0:
                break
            offsets = np.arange(starts)[:, None] + step * np.arange(n)
            grams = pool.pack(ids[:, offsets])  # [rows, starts]
            pos = np.minimum(np.searchsorted(codes, grams), codes.size - 1)
            hit = codes[pos] == grams
            row = np.nonzero(hit)[0]
            counts += np.bincount(row * n_slots + slots[pos[hit]], minlength=counts.size)
    return counts.reshape(rows, n_slots)


@kernel("TfIdfVectorizer", since=9)
def tfidf_vectorizer(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
    """Count (TF), flag (IDF) or weigh (TFIDF) the pool's n-grams found in each row of ``x``."""
    pool = ctx.cache.get("pool")
    if pool is None:
        pool = ctx.cache["pool"] = _NgramPool(ctx)
    if x.ndim not in (1, 2):
        raise ValueError(f"TfIdfVectorizer: input must be 1-D or 2-D, got shape {x.shape}")
    if pool.strings != (x.dtype == object or x.dtype.kind in "UT"):
        raise ValueError(f"TfIdfVectorizer: input dtype {x.dtype} does not match the pool")
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    counts = _tfidf_counts(pool, pool.ids(rows), ctx).astype(np.float32)
    out = np.zeros((rows.shape[0], pool.width), dtype=np.float32)
    # Several pool n-grams may share an output coordinate: accumulate.
    np.add.at(out, (slice(None), pool.indexes), counts)
    # Weights apply per output coordinate, after the counts are gathered there.
    mode = ctx.attrs.get("mode")
    if mode == "IDF":
        out = (out > 0).astype(np.float32)
        if pool.weights is not None:
            out *= pool.weights[: pool.width]
    elif mode == "TFIDF":
        if pool.weights is not None:
            out *= pool.weights[: pool.width]
    elif mode != "TF":
        raise ValueError(f"TfIdfVectorizer: unknown mode {mode!r}")
    return out[0] if x.ndim == 1 else out
