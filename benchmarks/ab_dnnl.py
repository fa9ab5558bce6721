"""A/B of the oneDNN primitives kept per node (``kernels/_dnnl.py``) in one process.

With ``--part gemm``, of oneDNN's GEMM on the plain weight (``_onednn.plain_gemm``) against the
packed inner product for float32 layer products (arm B turns only that path off).  With
``--part layout``, of that GEMM reading a (N, K) weight met with few rows as it is (transposed,
the default below ``_onednn.COPY_MIN_ROWS`` rows) against the (K, N) copy made for more rows
(arm B copies at any row count).  With ``--part direct``, of the steps that call their kept
primitive directly once their plan has run (``NodeContext.direct``) against the same steps
calling their kernels (arm B's plans never switch).  With ``--part concat``, of channel
concatenations on a kept oneDNN primitive against NumPy's copies (torch.cat for large outputs).
With ``--part staged``, of a first convolution reading the NCHW input into a blocked layout
reordered to NHWC against reading an NHWC copy of the input.  With ``--part batchnorm``, of
inference BatchNormalization (+ Relu) on a kept oneDNN primitive against PyTorch's addcmul;
with ``--part softmax``, of Softmax on a kept oneDNN primitive against PyTorch's softmax; with
``--part layernorm``, of LayerNormalization on a kept oneDNN primitive against PyTorch's
layer_norm; with ``--part lrn``, of LRN on a kept oneDNN primitive against PyTorch's shifted
adds; with ``--part inplace``, of residual convolutions adding their result into the
residual's memory where the plan allows (``NodeContext.reusable_inputs``) against into a new
array.  With ``--part tohost`` (and ``--precision bf16``), of small values leaving the reduced
space by NumPy's cast (``reduced_precision.SMALL_TO_HOST_ELEMENTS``) against PyTorch's; with
``--part scaleshift`` (and ``--precision bf16``), of the normalization of a Concat chain's
channel prefix on a kept copy and binary primitive against PyTorch's addcmul; with ``--part
viewcopy``, of a Concat chain's new channels written into its buffer by a kept oneDNN reorder
against NumPy's assignment; with ``--part linear``, of layer products on a kept oneDNN matmul
primitive against ``dnnl_sgemm`` on the plain weight and PyTorch's inner product on a packed
one; with ``--part prefix``, of float32 normalizations of a Concat chain's channel prefix on the
kept copy and binary primitive against PyTorch's pass; with ``--part link``, of a Concat
chain's links joined with their neighbours' kept primitives (replayed as kept reorders)
against each link running its kernel between the joined calls.

Arm A runs convolutions and pooling on the primitives each node keeps (the default with the
``onednn`` extra installed); arm B on PyTorch's calls, which rebuild the primitive each time
(the library is switched off while arm B is built and while it runs).  As in ``ab_rule.py``,
both arms are sessions of the same process, run alternately on the seeded inputs of
``hetrix bench``; the largest difference between the arms' outputs is printed (the tests check
correctness; light SqueezeNet's Softmax of logits near 7e9 turns last-bit differences of its
pooling into 0.12, see RESULTS.md).

    python benchmarks/ab_dnnl.py MODEL.onnx [--part gemm|layout|direct|concat|staged|
                                            batchnorm|softmax|layernorm|lrn|inplace|tohost|
                                            scaleshift|viewcopy|linear|prefix|link]
                                            [--runs 200] [--batch N] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import _ab  # benchmarks/_ab.py, beside this script
import numpy as np

import hetrix
from hetrix.backends import reduced_precision
from hetrix.backends.numpy_cpu.kernels import _dnnl, _onednn, fused, tensor
from hetrix.bench.inputs import make_feeds, model_inputs
from hetrix.runtime import executor
from hetrix.runtime.plan import Plan


def _switch(module: Any, name: str, off: Any) -> Callable[[bool], Any]:
    """A context manager factory: ``switch(False)`` sets ``module.name`` to ``off`` for what
    runs inside, ``switch(True)`` leaves it as it is."""

    @contextlib.contextmanager
    def switch(on: bool) -> Iterator[None]:
        saved = getattr(module, name)
        setattr(module, name, saved if on else off)
        try:
            yield
        finally:
            setattr(module, name, saved)

    return switch


def _never_bound(plan: Plan) -> int:
    plan.direct_calls_bound = True  # looked at: it stays on its kernel calls
    return 0


_PARTS = {  # --part: (the switch, arm A's name, arm B's name)
    # the kept-primitive paths (the primitives an arm made already hold the library themselves)
    "all": (_switch(_dnnl, "_LIBRARY", None), "kept", "pytorch"),
    # oneDNN's GEMM on the plain weight (off: the packed inner product)
    "gemm": (_switch(_onednn, "PLAIN_GEMM", False), "gemm", "packed"),
    # a (N, K) weight met with few rows read as it is or copied to (K, N); decided when the
    # node first runs, so the switch matters while an arm is built
    "layout": (_switch(_onednn, "COPY_MIN_ROWS", 0), "transposed", "copied"),
    # a plan's steps switched to their kept primitives' direct calls after its first run
    "direct": (_switch(executor, "bind_direct_calls", _never_bound), "direct", "kernel"),
    # channel concatenations on a kept oneDNN primitive (off: NumPy's copies or torch.cat)
    "concat": (_switch(_dnnl, "create_concat", lambda arrays: None), "kept", "copies"),
    # a first convolution reading the NCHW input itself, into a blocked layout reordered to
    # NHWC (off: the input copied to NHWC first); decided when the node first runs
    "staged": (_switch(_onednn, "STAGED_MAX_CHANNELS", 0), "staged", "copied"),
    # inference BatchNormalization (+ Relu) on a kept oneDNN primitive (off: PyTorch's addcmul)
    "batchnorm": (_switch(_dnnl, "create_batch_norm", lambda *a, **k: None), "kept", "torch"),
    # Softmax / LogSoftmax on a kept oneDNN primitive (off: PyTorch's softmax)
    "softmax": (_switch(_dnnl, "create_softmax", lambda *a, **k: None), "kept", "torch"),
    # LayerNormalization on a kept oneDNN primitive (off: PyTorch's layer_norm)
    "layernorm": (_switch(_dnnl, "create_layer_norm", lambda *a, **k: None), "kept", "torch"),
    # LRN on a kept oneDNN primitive (off: PyTorch's shifted adds; bfloat16 through float32)
    "lrn": (_switch(_dnnl, "create_lrn", lambda *a, **k: None), "kept", "torch"),
    # a convolution adding its result into a residual nothing reads afterwards (off: into a
    # new output, the residual read as a second source)
    "inplace": (_switch(_onednn, "residual_overwritable", lambda ctx, z: False), "inplace",
                "fresh"),
    # bfloat16 / float16 values of up to SMALL_TO_HOST_ELEMENTS leaving the reduced space by
    # NumPy's cast (off: PyTorch's, as larger ones do)
    "tohost": (_switch(reduced_precision, "SMALL_TO_HOST_ELEMENTS", -1), "numpy", "torch"),
    # bfloat16 BatchNormalization of a channel prefix (DenseNet's chain) on a kept copy and
    # binary primitive (off: PyTorch's addcmul)
    "scaleshift": (_switch(_dnnl, "create_scale_shift", lambda *a, **k: None), "kept", "torch"),
    # a Concat chain's new channels written into its buffer's room by a kept oneDNN reorder
    # (off: NumPy's strided assignment)
    "viewcopy": (_switch(_dnnl, "copy_into", lambda source, target: False), "reorder", "numpy"),
    # layer products (MatMul, Gemm on a constant weight) on a kept oneDNN matmul primitive (off:
    # dnnl_sgemm on the plain weight, PyTorch's inner product on a packed one)
    "linear": (_switch(_onednn, "KEPT_LINEAR", False), "kept", "others"),
    # float32 BatchNormalization of a channel prefix (DenseNet's chain) on the kept copy and
    # binary primitive, a direct call the plan joins (off: PyTorch's pass)
    "prefix": (_switch(fused, "PREFIX_SCALE_SHIFT", False), "kept", "torch"),
    # a Concat chain's links joined with the kept primitives around them, their copies made
    # by kept reorders in the replay (off: each link runs its kernel between joined calls);
    # decided when a node first runs, so the switch matters while an arm is built
    "link": (_switch(tensor, "JOIN_CHAIN_LINKS", False), "joined", "kernel"),
}


def _kept_nodes(session: hetrix.InferenceSession, part: str) -> int:
    if part == "direct":  # the steps the most recently built plan switched
        plans = [session._plan, *(session._specializer._plans.values()
                                  if session._specializer else ())]
        return max(sum(1 for lean in plan.lean_steps if lean[-1].ctx.direct is not None
                       and lean[0] is lean[-1].ctx.direct.call) for plan in plans)
    if part in ("batchnorm", "softmax", "layernorm", "lrn", "scaleshift", "prefix"):
        name = {"batchnorm": "dnnl_batch_norm", "softmax": "dnnl_softmax",
                "layernorm": "dnnl_layer_norm", "lrn": "dnnl_lrn",
                "scaleshift": "dnnl_scale_shift", "prefix": "dnnl_scale_shift"}[part]
        return sum(1 for step in session._plan.steps if step.ctx.cache.get(name))
    if part == "staged":
        return sum(1 for step in session._plan.steps for conv in
                   step.ctx.cache.get("dnnl_convs", {}).values() if conv.staged is not None)
    if part == "concat":
        return sum(1 for step in session._plan.steps if step.ctx.cache.get("dnnl_concat"))
    if part in ("viewcopy", "link"):  # the Concats that extend a chain
        return sum(1 for step in session._plan.steps if step.ctx.op_type == "Concat"
                   and not step.ctx.cache.get("dnnl_concat"))
    if part == "tohost":  # the plan's copies to float32, and the outputs in the reduced space
        memories = session._plan.output_memory
        return (sum(1 for step in session._plan.steps if step.ctx.name.endswith("@host"))
                + sum(1 for memory in memories if memory != "host"))
    if part == "linear":
        return sum(1 for step in session._plan.steps if step.ctx.cache.get("dnnl_linears"))
    if part == "inplace":
        return sum(1 for step in session._plan.steps if any(
            conv.accumulates for conv in step.ctx.cache.get("dnnl_convs", {}).values()))
    keys = ("dnnl_convs", "dnnl_pool", "gemm_weight") if part == "all" else ("gemm_weight",)
    return sum(1 for step in session._plan.steps if any(step.ctx.cache.get(k) for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _ab.add_options(parser)
    parser.add_argument("--part", choices=list(_PARTS), default="all",
                        help="all: every kept-primitive path; gemm: the plain-weight GEMM only; "
                             "layout: a few-row product's weight read transposed or copied; "
                             "direct: the kept primitives called directly or by their kernels; "
                             "concat: channel concatenations on a kept primitive or copied; "
                             "staged: a first conv on the NCHW input or an NHWC copy; "
                             "batchnorm: BatchNormalization on a kept primitive or PyTorch; "
                             "softmax: Softmax on a kept primitive or PyTorch; "
                             "layernorm: LayerNormalization on a kept primitive or PyTorch; "
                             "lrn: LRN on a kept primitive or PyTorch; "
                             "inplace: a residual convolution's result added in place or "
                             "into a new array; tohost: small reduced-precision values "
                             "converted to float32 by NumPy or PyTorch (--precision bf16); "
                             "scaleshift: a Concat prefix's normalization on a kept primitive "
                             "or PyTorch (--precision bf16); viewcopy: a Concat chain's "
                             "new channels copied by a kept reorder or by NumPy")
    args = parser.parse_args()
    switch, on_name, off_name = _PARTS[args.part]
    if not _dnnl.available():
        sys.exit("oneDNN's library is not installed (pip install 'hetrix[onednn]')")

    options = hetrix.SessionOptions(intra_op_num_threads=args.threads, precision=args.precision)
    feeds = make_feeds(model_inputs(args.model), args.batch, {})
    arms: dict[str, tuple[hetrix.InferenceSession, bool]] = {}
    outputs = {}
    for name, on in ((on_name, True), (off_name, False)):
        with switch(on):
            session = hetrix.InferenceSession(args.model, options)
            outputs[name] = session.run(None, feeds)
            for _ in range(5):
                session.run(None, feeds)
        arms[name] = (session, on)
    kept = _kept_nodes(arms[on_name][0], args.part)
    if not kept:
        sys.exit(f"no node of {args.model} runs on the paths compared")
    difference = max(float(np.abs(np.asarray(a, np.float64) - b).max())
                     for a, b in zip(outputs[on_name], outputs[off_name], strict=True))

    def one_run(session: hetrix.InferenceSession, on: bool) -> None:
        with switch(on):
            session.run(None, feeds)

    median = _ab.alternate({name: functools.partial(one_run, *arm) for name, arm in arms.items()},
                           args.runs, args.pause)
    print(f"{args.model}: {kept} nodes on the paths compared ({args.part}); {on_name}/{off_name} "
          f"{median[on_name] / median[off_name]:.3f} ({args.runs} alternating runs per arm, "
          f"pause {args.pause} s); largest output difference {difference:.3g}")


if __name__ == "__main__":
    main()
