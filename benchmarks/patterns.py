"""Hetrix against ONNX Runtime on the layer patterns of segmentation, detection and
super-resolution models, which the classifiers of the suite (``run_suite.py``) do not have.

Each pattern is a small model with seeded random weights, built here: a U-Net decoder step
(Resize, Concat with the skip, Conv), a YOLO-style head (1x1 Conv, Reshape, Transpose,
Sigmoid), ConvTranspose upsampling, a Split feeding two convolutions that are added, a spatial
gate (ReduceMean over channels, Sigmoid, Mul), a squeeze-and-excitation block, a pixel shuffle
(DepthToSpace), a reflection Pad before a Conv, a bilinear upsampling (align_corners), a
GroupNormalization with SiLU (diffusion U-Nets) and HardSwish between convolutions
(MobileNetV3).  What they share: a convolution's
channels-last output read by ops other than convolutions, and a 4-D output handed to the
caller.  Each is timed as ``hetrix bench`` times a model (the same runner: runs alternating
after a pause, medians), and the ratio Hetrix / ORT printed with the outputs' agreement.

    python benchmarks/patterns.py [--repeat 25] [--pause 0.05] [--only NAME ...]
                                  [--vs openvino] [--output FILE.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hetrix.bench.runner import BenchConfig, BenchResult, run_benchmark


class _Graph:
    """A model under construction: nodes, seeded weights, one float input ``x``."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        output = f"v{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1,
             relu: bool = False) -> str:
        scale = math.sqrt(2.0 / (cin * kernel * kernel))
        w = self.constant(f"w{len(self.initializers)}", (self.rng.standard_normal(
            (cout, cin, kernel, kernel)) * scale).astype(np.float32))
        y = self.node("Conv", [x, w], pads=[kernel // 2] * 4, strides=[stride, stride])
        return self.node("Relu", [y]) if relu else y

    def model(self, output: str, shape: list[int]) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], ["y"]))
        graph = helper.make_graph(
            self.nodes, "pattern", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                 ir_version=10)


def unet_step(g: _Graph) -> tuple[str, list[int]]:
    skip = g.conv("x", 3, 32, relu=True)
    low = g.conv(skip, 32, 64, stride=2, relu=True)
    up = g.node("Resize", [low, "", g.constant("scales", np.array([1, 1, 2, 2], np.float32))],
                mode="nearest")
    return g.conv(g.node("Concat", [up, skip], axis=1), 96, 16), [1, 3, 128, 128]


def yolo_head(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64, stride=2, relu=True)
    logits = g.conv(features, 64, 255, kernel=1)
    grid = g.node("Reshape", [logits, g.constant("shape", np.array([1, 3, 85, 40, 40]))])
    return g.node("Sigmoid", [g.node("Transpose", [grid], perm=[0, 1, 3, 4, 2])]), [1, 3, 80, 80]


def conv_transpose(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64, stride=2, relu=True)
    w = g.constant("up_w", (g.rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32))
    up = g.node("ConvTranspose", [features, w], strides=[2, 2], pads=[1, 1, 1, 1])
    return g.node("Relu", [up]), [1, 3, 128, 128]


def split_add(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64, relu=True)
    halves = helper.make_node("Split", [features], ["s0", "s1"], axis=1, num_outputs=2)
    g.nodes.append(halves)
    return g.node("Add", [g.conv("s0", 32, 32), g.conv("s1", 32, 32)]), [1, 3, 96, 96]


def spatial_gate(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64, relu=True)
    mean = g.node("ReduceMean", [features, g.constant("axes", np.array([1]))], keepdims=1)
    return g.node("Mul", [features, g.node("Sigmoid", [mean])]), [1, 3, 96, 96]


def se_block(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64, relu=True)
    squeezed = g.conv(g.node("GlobalAveragePool", [features]), 64, 16, kernel=1, relu=True)
    gate = g.node("Sigmoid", [g.conv(squeezed, 16, 64, kernel=1)])
    return g.conv(g.node("Mul", [features, gate]), 64, 64), [1, 3, 96, 96]


def pixel_shuffle(g: _Graph) -> tuple[str, list[int]]:
    return g.node("DepthToSpace", [g.conv("x", 3, 64, relu=True)], blocksize=2), [1, 3, 96, 96]


def reflect_pad(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 32, relu=True)
    padded = g.node("Pad", [features, g.constant("pads", np.array([0, 0, 2, 2, 0, 0, 2, 2]))],
                    mode="reflect")
    w = g.constant("w_valid", (g.rng.standard_normal((32, 32, 3, 3)) * 0.08).astype(np.float32))
    return g.node("Conv", [padded, w]), [1, 3, 128, 128]


def bilinear_up(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64, relu=True)
    scales = g.constant("scales", np.array([1, 1, 2, 2], np.float32))
    return g.node("Resize", [features, "", scales], mode="linear",
                  coordinate_transformation_mode="align_corners"), [1, 3, 64, 64]


def group_norm(g: _Graph) -> tuple[str, list[int]]:
    features = g.conv("x", 3, 64)
    scale = g.constant("gn_scale", np.ones(64, np.float32))
    bias = g.constant("gn_bias", np.zeros(64, np.float32))
    normed = g.node("GroupNormalization", [features, scale, bias], num_groups=8)
    return g.node("Mul", [normed, g.node("Sigmoid", [normed])]), [1, 3, 96, 96]


def hard_swish(g: _Graph) -> tuple[str, list[int]]:
    return g.conv(g.node("HardSwish", [g.conv("x", 3, 64)]), 64, 64), [1, 3, 96, 96]


PATTERNS: dict[str, Callable[[_Graph], tuple[str, list[int]]]] = {
    "unet_step": unet_step, "yolo_head": yolo_head, "conv_transpose": conv_transpose,
    "split_add": split_add, "spatial_gate": spatial_gate, "se_block": se_block,
    "pixel_shuffle": pixel_shuffle, "reflect_pad": reflect_pad, "bilinear_up": bilinear_up,
    "group_norm": group_norm, "hard_swish": hard_swish,
}


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """The pattern ``name`` as a model with input ``x`` and output ``y``."""
    graph = _Graph(seed)
    output, shape = PATTERNS[name](graph)
    return graph.model(output, shape)


def _row(name: str, result: BenchResult) -> list[str]:
    cells = [name]
    ours = result.runtime("hetrix")
    for runtime in result.runtimes:
        cells.append("-" if runtime.latency is None else f"{runtime.latency.median_ms:.3f}")
    ratios = result.ratios()
    cells += [f"{ratios[r.name]:.2f}x" if r.name in ratios else "-"
              for r in result.runtimes if r.name != "hetrix"]
    agree = all(a.agree for a in result.agreement) if result.agreement else False
    cells.append("yes" if agree and ours is not None and not ours.error else "NO")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25, help="timed runs per runtime")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.05, help="idle seconds before each run")
    parser.add_argument("--only", nargs="+", choices=sorted(PATTERNS), default=None)
    parser.add_argument("--vs", action="append", default=None,
                        help="competitors (default onnxruntime; repeatable)")
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    competitors = args.vs or ["onnxruntime"]
    names = args.only or list(PATTERNS)
    header = ["pattern", "Hetrix ms", *(f"{c} ms" for c in competitors),
              *(f"vs {c}" for c in competitors), "agree"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            path = Path(folder) / f"{name}.onnx"
            onnx.save(build(name), str(path))
            config = BenchConfig(str(path), competitors, warmup=args.warmup, repeat=args.repeat,
                                 memory=False, gap_s=args.pause)
            rows.append(_row(name, run_benchmark(config)))
            print(" | ".join(rows[-1]), flush=True)
    first_ratio = 2 + len(competitors)  # pattern, Hetrix ms, each competitor's ms, ratios
    ratios = [float(r[first_ratio].rstrip("x")) for r in rows if r[first_ratio] != "-"]
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    summary = f"geomean Hetrix/{competitors[0]}: {geomean:.2f}x over {len(ratios)} patterns"
    print(summary)
    if args.output:
        lines = [f"- machine: {platform.processor() or platform.machine()}, "
                 f"Python {sys.version.split()[0]}",
                 f"- command: `python benchmarks/patterns.py {' '.join(sys.argv[1:])}`", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", f"- {summary}"]
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
