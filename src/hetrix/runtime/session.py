"""``InferenceSession``: the ONNX Runtime-compatible entry point.

Switching from onnxruntime is meant to be a one-line import change::

    import hetrix as ort   # was: import onnxruntime as ort
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": array})

The constructor loads the model, places every node on a backend and builds the plan; ``run`` only
checks the feeds (cheaply, against facts computed here) and walks the plan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from hetrix.backends.base import Backend, RegistryBackend
from hetrix.backends.numpy_cpu.layout import c_order_copy
from hetrix.backends.reference_fallback import ReferenceFallbackBackend
from hetrix.errors import InvalidArgumentError, InvalidInputError
from hetrix.model.loader import LoadedModel, ModelSource, load_model, to_ir
from hetrix.passes import optimize
from hetrix.passes.report import OptimizationReport
from hetrix.passes.shape_inference import read_from
from hetrix.placement.placer import PriorityPlacer
from hetrix.runtime.executor import SubgraphRunner, execute
from hetrix.runtime.memory import collects_load_garbage, retain_freed_memory
from hetrix.runtime.plan import HOST, Placement, Plan, build_plan, has_subgraph
from hetrix.runtime.providers import ProviderSpec, make_backends
from hetrix.runtime.specialize import ShapeSpecializer, Specialization, analyze
from hetrix.runtime.threads import ComputeThreads

logger = logging.getLogger(__name__)


@dataclass
class SessionOptions:
    """Session settings; the names match onnxruntime.SessionOptions where the idea is the same."""

    graph_optimization_level: int = 99
    intra_op_num_threads: int = 0
    """Threads of the compute libraries (PyTorch, else NumPy's BLAS) during this session's runs;
    0 keeps their default, one per core.  They count per process, so the session sets them when
    a run starts and restores them when it ends (see :mod:`hetrix.runtime.threads`)."""
    log_severity_level: int = 2
    enable_cpu_mem_arena: bool = True
    """Reuse freed host buffers across runs (configures glibc's allocator process-wide; see
    :mod:`hetrix.runtime.memory`)."""
    enable_reference_fallback: bool = True
    """Run operators no Hetrix kernel covers on onnx's reference evaluator (slow, logged)."""
    disable_fallback: bool = False
    """Fail instead of moving any node off the first provider; the error lists the nodes."""
    optimized_model_filepath: str = ""
    precision: str = "fp32"
    """"fp32" (default: ORT's results), or "bf16"/"fp16": Conv, MatMul and Gemm of a float32
    model compute in that type on the CPU's matrix units (AMX) through PyTorch; see
    ``InferenceSession.compare_precision`` for what it costs in accuracy on your inputs."""
    enable_shape_specialization: bool = True
    """Fold the model's shape arithmetic (``Shape -> Gather -> Concat -> Reshape``...) once the
    input shapes are known: a shape seen a second time gets a plan of its own, with those values
    as constants and same-shape Reshape/Expand bypassed, used from the third run on.  Costs a
    walk over the plan per new shape (milliseconds for BERT), never a re-optimization; see
    :mod:`hetrix.runtime.specialize` and :meth:`InferenceSession.get_shape_specializations`.
    Off at ``graph_optimization_level`` 0."""
    shape_specialization_cache_size: int = 8
    """Specialized plans kept per session (least recently used out first)."""
    warm_up: bool = True
    """Run the model once while the session is created, on zeros, when every input has a fixed
    shape and a numeric type: importing PyTorch where a kernel calls it (about 1.3 s), weight
    packing and kernel compilation then happen in the constructor (as ORT's prepacking and
    OpenVINO's compilation do), and the first ``run`` is as fast as the ones after it
    (SqueezeNet: 1,430 -> 11 ms).  A model that fails on zeros is logged and left to its first
    real run; models with symbolic dims, and models with control flow (a loop whose condition
    comes from the inputs may never end on zeros), skip it."""
    enable_profiling: bool = False
    """Time every node of every run; ``end_profiling()`` writes the trace (ORT's option)."""
    profile_file_prefix: str = "hetrix_profile"
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOptions:
    """Per-call settings of ``run`` (ORT's RunOptions fields that apply, plus Hetrix's own)."""

    keep_outputs_on_device: bool = False
    """Return outputs computed on an accelerator as that backend's tensors (e.g. torch tensors
    on the GPU) instead of copying them to numpy: for chaining runs without host round trips."""
    log_severity_level: int = 2


@dataclass(frozen=True)
class NodeArg:
    """An input or output of the model, as onnxruntime describes it."""

    name: str
    type: str
    shape: list[int | str | None]

    def __repr__(self) -> str:
        return f"NodeArg(name='{self.name}', type='{self.type}', shape={self.shape})"


@dataclass(frozen=True)
class ModelMetadata:
    """The model's metadata, as onnxruntime's ``get_modelmeta()`` returns it."""

    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict[str, str]


@dataclass(frozen=True)
class _FeedSpec:
    """What one input accepts, computed once: numpy dtype, rank, fixed dims."""

    name: str
    type: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None
    is_tensor: bool


class InferenceSession:
    """Loads an ONNX model once and runs it many times.

    Args:
        path_or_bytes: model file path, serialized bytes, or an ``onnx.ModelProto``.
        sess_options: :class:`SessionOptions` (optional).
        providers: where to run, in priority order: ``"cpu"``, ``"numpy:cpu"`` or ORT names such
            as ``"CPUExecutionProvider"``, optionally as ``(name, options)`` pairs.
        provider_options: per-provider option dicts, in the order of ``providers`` (ORT style).
    """

    @collects_load_garbage  # the IR and the tensors the passes replaced: freed at the end
    def __init__(
        self,
        path_or_bytes: ModelSource,
        sess_options: SessionOptions | None = None,
        providers: Sequence[ProviderSpec] | None = None,
        provider_options: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self._options = sess_options or SessionOptions()
        if provider_options is not None and providers is not None:
            providers = [
                (p if isinstance(p, str) else p[0], dict(o))
                for p, o in zip(providers, provider_options)
            ]
        if self._options.enable_cpu_mem_arena:
            retain_freed_memory()
        self._threads = ComputeThreads(self._options.intra_op_num_threads)
        self._backends = make_backends(providers)
        if self._options.precision != "fp32":
            from hetrix.backends.reduced_precision import ReducedPrecisionBackend

            self._backends.insert(0, ReducedPrecisionBackend(self._options.precision))
            self._source = path_or_bytes  # for compare_precision's float32 twin
        self._loaded = load_model(path_or_bytes, self._can_run)
        self._model = self._to_ir(self._loaded)
        read_from(self._model, self._loaded.proto)  # the first shape inference reads it
        self._optimization = self._optimize()
        self._plan = self._build_plan()
        self._specializer = self._make_specializer()
        self._feeds = [
            self._feed_spec(v)
            for v in self._model.graph.inputs
            if v.name not in self._plan.optional_input_names
        ]
        self._outputs = [
            NodeArg(v.name, type_string(v.type), _shape_list(v.shape) or [])
            for v in self._model.graph.outputs
        ]
        self._overridable = [
            NodeArg(v.name, type_string(v.type), _shape_list(v.shape) or [])
            for v in self._model.graph.inputs
            if v.name in self._plan.optional_input_names
        ]
        self._release_model_copies()
        self._timings: list[tuple[Any, float, int | None]] = []
        self._input_index = {name: i for i, name in enumerate(self._plan.input_names)}
        self._output_index = {name: i for i, name in enumerate(self._plan.output_names)}
        self._all_outputs = range(len(self._plan.output_names))
        self._feed_by_name = {f.name: f for f in self._feeds}
        if self._options.warm_up:
            self._warm_up()

    # -- construction ------------------------------------------------------------------------

    def _release_model_copies(self) -> None:
        """Keep one copy of the weights (the plan's): drop the IR and the parsed protobuf, whose
        arena holds the file's tensor bytes.  What stays is the metadata and the structure as
        serialized bytes (parsed again when :attr:`model_proto` is asked for: a parsed
        protobuf of the 1,200-node small_ops model held 0.7 MiB, its bytes 76 KiB).  The
        memory is handed back to the OS when ``__init__`` returns (``collects_load_garbage``).
        """
        del self._model
        proto = self._loaded.proto
        self._metadata = ModelMetadata(
            producer_name=proto.producer_name,
            graph_name=proto.graph.name,
            domain=proto.domain,
            description=proto.doc_string,
            graph_description=proto.graph.doc_string,
            version=proto.model_version,
            custom_metadata_map={p.key: p.value for p in proto.metadata_props},
        )
        _drop_weight_bytes(proto)
        self._structure = proto.SerializeToString()
        del self._loaded, proto  # the last references: the arena is freed here

    def _can_run(self, domain: str, op_type: str, opset: int) -> bool:
        return any(
            isinstance(b, RegistryBackend) and b.supports(domain, op_type, opset)
            for b in self._backends
        )

    @staticmethod
    def _to_ir(loaded: LoadedModel) -> ir.Model:
        return to_ir(loaded)  # reads the weights that the loader left in their files

    def _optimize(self) -> OptimizationReport:
        """Run the graph passes up to the session's level (ORT's levels: 0, 1, 2, 99).

        Above level 1 the passes emit Hetrix's fused ops, which only the NumPy backend has
        kernels for; when another backend comes first the level is capped at 1 so that no node
        leaves the preferred device because of a fusion.
        """
        level = int(self._options.graph_optimization_level)
        if self._backends[0].memory != HOST and not self._backends[0].runs_fused_ops:
            level = min(level, 1)
        try:
            report = optimize(self._model, level)
        except Exception as exc:  # an optimizer bug must not stop a model that runs unoptimized
            logger.warning("graph optimization failed (%s); running the model unoptimized", exc)
            self._model = self._to_ir(self._loaded)
            report = optimize(self._model, 0)
        if self._options.optimized_model_filepath:
            ir.save(self._model, self._options.optimized_model_filepath)
        return report

    def compare_precision(self, input_feed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run this reduced-precision session and a float32 one on ``input_feed``; per output,
        the difference: max abs, max abs relative to the largest float32 value, mean abs, and
        (for classifiers) whether the arg-max agrees.  Precision is a choice, shown, not hidden.
        """
        if self._options.precision == "fp32":
            raise InvalidArgumentError("compare_precision needs a session with precision != fp32")
        options = SessionOptions(graph_optimization_level=self._options.graph_optimization_level)
        reference = InferenceSession(self._source, options)
        ours = self.run(None, input_feed)
        theirs = reference.run(None, input_feed)
        report = []
        for name, got, want in zip(self._plan.output_names, ours, theirs):
            got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
            diff = np.abs(got64 - want64)
            scale = float(np.abs(want64).max()) if want64.size else 0.0
            report.append({
                "output": name,
                "max_abs": float(diff.max()) if diff.size else 0.0,
                "max_rel_to_max": float(diff.max() / scale) if diff.size and scale else 0.0,
                "mean_abs": float(diff.mean()) if diff.size else 0.0,
                "argmax_agrees": bool(
                    got64.size and np.array_equal(got64.reshape(got64.shape[0], -1).argmax(-1),
                                                  want64.reshape(want64.shape[0], -1).argmax(-1))
                ) if got64.ndim >= 1 and got64.size else True,
            })
        return report

    def get_optimization_report(self) -> OptimizationReport:
        """What the graph passes changed: rewrites per pass and rule, nodes before and after."""
        return self._optimization

    def _build_plan(self) -> Plan:
        backends: list[Backend] = list(self._backends)
        if self._options.enable_reference_fallback and not self._options.disable_fallback:
            backends.append(ReferenceFallbackBackend())
        placer = PriorityPlacer(backends, allow_fallback=not self._options.disable_fallback)
        self._placer = placer
        opsets = {("" if d == "ai.onnx" else d): v for d, v in self._model.opset_imports.items()}
        plan = build_plan(self._model.graph, opsets, placer, SubgraphRunner)
        readers: dict[int, set[str]] = {}
        for step in plan.steps:
            for slot in step.inputs:
                readers.setdefault(slot, set()).add(step.ctx.op_type)
        # An input whose only readers are copy steps may arrive as a device tensor: the copy
        # step takes it as it is.  Any other input must reach the kernels as a host array.
        self._device_ready_inputs = {
            name
            for name, slot in zip(plan.input_names, plan.input_slots)
            if readers.get(slot) == {"Copy"}
        }
        return plan

    def _make_specializer(self) -> ShapeSpecializer | None:
        """The shape specializer of this session's plan, or None when it is off or would find
        nothing to fold (a model with static shapes was folded by the graph passes already)."""
        options = self._options
        if not options.enable_shape_specialization or options.graph_optimization_level <= 0:
            return None
        tensors = {
            v.name for v in self._model.graph.inputs if v.name and isinstance(v.type, ir.TensorType)
        }
        facts = analyze(self._plan, tensors)
        if facts is None:
            return None
        return ShapeSpecializer(self._plan, facts, options.shape_specialization_cache_size)

    def _warm_up(self) -> None:
        """One run on zeros (see ``SessionOptions.warm_up``), when the inputs allow one.  Not
        for control flow: a loop whose condition comes from the inputs may never end on zeros."""
        if any(has_subgraph(step) for step in self._plan.steps):
            return
        feeds = []
        for feed in self._feeds:
            if (not feed.is_tensor or feed.dtype is None or feed.shape is None
                    or feed.dtype.kind not in "biuf"
                    or not all(isinstance(d, int) for d in feed.shape)):
                return  # a symbolic dim or a non-numeric input: nothing to run on
            feeds.append((feed.name, np.zeros(feed.shape, feed.dtype)))
        started = time.perf_counter()
        try:
            with self._threads.applied():
                feed_list = self._feed_list(dict(feeds))
                if self._specializer is not None:
                    self._specializer.execute(feed_list)
                else:
                    execute(self._plan, feed_list)
        except Exception as exc:  # the first real run reports it, on the user's inputs
            logger.info("warm-up run on zeros failed (%s); the first run does the set-up", exc)
            return
        logger.debug("warm-up run at load: %.1f ms", (time.perf_counter() - started) * 1e3)

    def _feed_spec(self, value: ir.Value) -> _FeedSpec:
        type_ = value.type
        is_tensor = type_ is None or isinstance(type_, ir.TensorType)
        dtype = None
        if isinstance(type_, ir.TensorType) and type_.dtype != ir.DataType.UNDEFINED:
            try:
                dtype = np.dtype(type_.dtype.numpy())
            except (TypeError, ValueError, NotImplementedError):
                dtype = None
        shape = _shape_list(value.shape)
        return _FeedSpec(
            value.name,
            type_string(type_),
            dtype,
            tuple(shape) if shape is not None else None,
            is_tensor,
        )

    # -- the ORT API ---------------------------------------------------------------------------

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, Any],
        run_options: Any = None,
    ) -> list[Any]:
        """Run the model; returns the requested outputs (all when ``output_names`` is None)."""
        wanted = self._output_positions(output_names)
        feeds = self._feed_list(input_feed)
        timings = self._timings if self._options.enable_profiling else None
        with self._threads.applied():
            if self._specializer is not None:
                outputs = self._specializer.execute(feeds, timings)
            else:
                outputs = execute(self._plan, feeds, timings=timings)
        keep = isinstance(run_options, RunOptions) and run_options.keep_outputs_on_device
        memories = self._plan.output_memory
        results = []
        for i in wanted:
            value, memory = outputs[i], memories[i]
            if memory != HOST and not keep:
                value = self._placer.owner(memory).to_host(value)
            results.append(_own_output(_as_output(value), feeds))
        return results

    def run_with_intermediates(self, input_feed: Mapping[str, Any]) -> dict[str, Any]:
        """Run and return every value the graph computes, by name (for debugging; slower).

        These are the values of the graph as planned: with optimization on, folded constants
        and values inside fused nodes are gone.  Use ``graph_optimization_level=0`` to see every
        value of the model as written.
        """
        record: dict[str, Any] = {}
        with self._threads.applied():
            outputs = execute(self._plan, self._feed_list(input_feed), record=record)
        record.update(zip(self._plan.output_names, outputs))
        return {name: _as_output(value) for name, value in record.items()}

    def get_inputs(self) -> list[NodeArg]:
        """The inputs a caller feeds (initializers that double as inputs are left out, as ORT)."""
        return [
            NodeArg(f.name, f.type, list(f.shape) if f.shape is not None else [])
            for f in self._feeds
        ]

    def get_outputs(self) -> list[NodeArg]:
        """The model's outputs with their declared types and (possibly symbolic) shapes."""
        return list(self._outputs)

    def get_overridable_initializers(self) -> list[NodeArg]:
        """Graph inputs that have an initializer: feeding them replaces the stored value."""
        return list(self._overridable)

    def get_providers(self) -> list[str]:
        """The session's backends in priority order."""
        return [b.name for b in self._backends]

    def get_provider_options(self) -> dict[str, dict[str, Any]]:
        return {b.name: {} for b in self._backends}

    def get_session_options(self) -> SessionOptions:
        return self._options

    def get_modelmeta(self) -> ModelMetadata:
        metadata = self._metadata  # the map is the caller's to change
        return replace(metadata, custom_metadata_map=dict(metadata.custom_metadata_map))

    def get_placement(self) -> list[Placement]:
        """Where each top-level node runs, with the reason for every fallback.

        These are the nodes of the generic plan; at input shapes seen before, some of them may
        not run at all (:meth:`get_shape_specializations` says how many).
        """
        return list(self._plan.placements)

    def get_shape_specializations(self) -> list[Specialization]:
        """The plans specialized to input shapes this session holds now: per shape, the steps
        before and after, and how many were folded, bypassed or dropped as dead."""
        return self._specializer.specializations() if self._specializer is not None else []

    def get_joined_calls(self) -> list[dict[str, int]]:
        """Per plan this session has run (the general one, then each shape specialization):
        its steps, how many of them run inside joined calls (runs of kept oneDNN primitives
        made one call each, see ``runtime.plan.join_direct_calls``), how many such calls there
        are, and how many steps a replay serves now (a joined call replays its primitives
        from its second call on, where its trace allowed).  Empty before a plan's first run;
        a profiled run (``enable_profiling``) times the steps one by one instead."""
        plans = [self._plan]
        if self._specializer is not None:
            plans += self._specializer.plans()
        rows = []
        for plan in plans:
            if plan.lean_run is None:
                continue
            singles = {id(entry) for entry in plan.lean_steps}
            joined = [entry for entry in plan.lean_run if id(entry) not in singles]
            replayed = (getattr(getattr(entry[0], "__self__", None), "replayed_steps", None)
                        for entry in joined)
            rows.append({"steps": len(plan.lean_steps),
                         "joined_steps": len(plan.lean_steps) - (len(plan.lean_run)
                                                                 - len(joined)),
                         "joined_calls": len(joined),
                         "replayed_steps": sum(count() for count in replayed if count)})
        return rows

    def end_profiling(self) -> str:
        """Write the node timings recorded so far as a Chrome trace (JSON); returns the path.

        The file opens in chrome://tracing or Perfetto; :meth:`profile_summary` gives the totals.
        """
        import json
        import time

        events, clock = [], 0.0
        for step, seconds, _flops in self._timings:
            events.append({
                "name": step.ctx.name or step.ctx.op_type, "cat": "Node", "ph": "X",
                "ts": clock * 1e6, "dur": seconds * 1e6, "pid": 0, "tid": 0,
                "args": {"op_type": step.ctx.op_type, "provider": step.backend},
            })
            clock += seconds
        path = f"{self._options.profile_file_prefix}_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
        with open(path, "w") as handle:
            json.dump(events, handle)
        self._timings = []
        return path

    def profile_summary(self) -> list[tuple[str, str, int, float]]:
        """``(op_type, backend, calls, total seconds)`` from the recorded runs, slowest first."""
        totals: dict[tuple[str, str], list[float]] = {}
        for step, seconds, _flops in self._timings:
            entry = totals.setdefault((step.ctx.op_type, step.backend), [0, 0.0])
            entry[0] += 1
            entry[1] += seconds
        rows = [(op, backend, int(n), t) for (op, backend), (n, t) in totals.items()]
        return sorted(rows, key=lambda row: -row[3])

    def profile_nodes(self) -> list[dict[str, Any]]:
        """Per node, from the recorded runs: op, backend, the library kernel where a kernel
        names it (``library_kernel`` in the node's cache: which oneDNN implementation, and
        whether through a kept primitive), calls, mean ms, and GFLOP/s for convolutions and
        matrix products; slowest first."""
        nodes: dict[int, dict[str, Any]] = {}
        for step, seconds, flops in self._timings:
            entry = nodes.setdefault(id(step), {
                "node": step.ctx.name, "op_type": step.ctx.op_type, "backend": step.backend,
                "kernel": step.ctx.cache.get("library_kernel"),
                "calls": 0, "seconds": 0.0, "flops": 0, "counted": flops is not None,
            })
            entry["calls"] += 1
            entry["seconds"] += seconds
            entry["flops"] += flops or 0
        rows = []
        for entry in nodes.values():
            seconds = entry.pop("seconds")
            flops = entry.pop("flops")
            counted = entry.pop("counted")
            entry["mean_ms"] = seconds / entry["calls"] * 1e3
            entry["gflops_per_s"] = flops / seconds / 1e9 if counted and seconds > 0 else None
            rows.append(entry)
        return sorted(rows, key=lambda row: -row["mean_ms"] * row["calls"])

    @property
    def model_proto(self) -> onnx.ModelProto:
        """The model's structure as planned (defaults filled, functions expanded).

        Initializers keep their name, type and shape but not their data, which lives in the plan.
        Each access parses a new copy (the session keeps only the serialized bytes).
        """
        return onnx.ModelProto.FromString(self._structure)

    # -- feed checks ---------------------------------------------------------------------------

    def _output_positions(self, output_names: Sequence[str] | None) -> Sequence[int]:
        if output_names is None or len(output_names) == 0:
            return self._all_outputs
        positions = []
        for name in output_names:
            if name not in self._output_index:
                raise InvalidArgumentError(
                    f"'{name}' is not an output of the model; outputs: {self._plan.output_names}"
                )
            positions.append(self._output_index[name])
        return positions

    def _feed_list(self, input_feed: Mapping[str, Any]) -> list[Any]:
        if not isinstance(input_feed, Mapping):
            raise InvalidInputError(
                f"input_feed must be a dict of input name -> array, not {type(input_feed).__name__}"
            )
        feeds: list[Any] = [None] * len(self._plan.input_names)
        for name in input_feed:
            if name not in self._input_index:
                expected = [f.name for f in self._feeds]
                raise InvalidInputError(
                    f"'{name}' is not an input of the model; inputs: {expected}"
                )
        for spec in self._feeds:
            if spec.name not in input_feed:
                raise InvalidInputError(
                    f"missing input '{spec.name}' (expected {spec.type} with shape "
                    f"{list(spec.shape) if spec.shape is not None else 'any'})"
                )
        for name, value in input_feed.items():
            declared = self._feed_by_name.get(name)
            value = _check_feed(declared, value) if declared else value
            if (
                type(value) is not np.ndarray
                and _is_torch_tensor(value)
                and name not in self._device_ready_inputs
            ):
                value = _torch_to_numpy(value)
            feeds[self._input_index[name]] = value
        return feeds


def _check_feed(spec: _FeedSpec, value: Any) -> Any:
    """The feed as the plan expects it; raises InvalidInputError naming input and expectation."""
    if not spec.is_tensor:
        return value
    if type(value) is np.ndarray:  # the common case first: no torch or scalar checks
        _check_array(spec, value)
        return value
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if _is_torch_tensor(value):
        return _check_torch_feed(spec, value)
    if not isinstance(value, np.ndarray):
        raise InvalidInputError(
            f"input '{spec.name}' must be a numpy.ndarray ({spec.type}), got {type(value).__name__}"
        )
    _check_array(spec, value)
    return value


def _check_array(spec: _FeedSpec, value: np.ndarray) -> None:
    """Dtype and shape of a numpy feed against the input's declaration."""
    if spec.dtype is not None and value.dtype != spec.dtype:
        if not (spec.dtype == object and value.dtype.kind in "OU"):
            raise InvalidInputError(
                f"input '{spec.name}' has dtype {value.dtype}, expected {spec.dtype} ({spec.type})"
            )
    _check_shape(spec, value.shape)


def _check_shape(spec: _FeedSpec, shape: tuple[int, ...]) -> None:
    if spec.shape is not None:
        if len(shape) != len(spec.shape):
            raise InvalidInputError(
                f"input '{spec.name}' has rank {len(shape)} (shape {list(shape)}), "
                f"expected rank {len(spec.shape)} (shape {list(spec.shape)})"
            )
        for axis, (got, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int) and want >= 0 and got != want:
                raise InvalidInputError(
                    f"input '{spec.name}' has shape {list(shape)}, expected "
                    f"{list(spec.shape)}: dimension {axis} must be {want}"
                )


def _is_torch_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch.Tensor, without importing torch."""
    return type(value).__module__.startswith("torch") and hasattr(value, "device")


def _check_torch_feed(spec: _FeedSpec, value: Any) -> Any:
    """A torch tensor feed: same checks as for numpy, dtype compared by name."""
    dtype_name = str(value.dtype).removeprefix("torch.")
    if spec.dtype is not None and dtype_name != spec.dtype.name:
        raise InvalidInputError(
            f"input '{spec.name}' has dtype {value.dtype}, expected {spec.dtype} ({spec.type})"
        )
    _check_shape(spec, tuple(value.shape))
    return value


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a host numpy array (bfloat16 through ml_dtypes)."""
    import torch

    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _as_output(value: Any) -> Any:
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def _drop_weight_bytes(model: onnx.ModelProto) -> None:
    from hetrix.model.functions import iter_graphs

    for graph in iter_graphs(model.graph):
        for tensor in graph.initializer:
            for field_name in ("raw_data", "float_data", "int32_data", "int64_data",
                               "double_data", "uint64_data", "string_data",
                               "external_data", "data_location"):  # the loader's file references
                tensor.ClearField(field_name)


def _own_output(value: Any, feeds: list[Any]) -> Any:
    """The output as a fresh array the caller may modify, like onnxruntime returns.

    Outputs that are read-only (a weight, a constant) or views of a feed are copied, and so are
    outputs not in C order (a convolution's channels-last result, a strided slice): callers that
    hand the buffer on (``tobytes`` aside: ctypes, DLPack, file writers) expect plain C arrays,
    as ORT returns.  Everything else was computed for this run and is handed over as is.
    """
    if not isinstance(value, np.ndarray):
        return value
    if not value.flags.c_contiguous:
        return c_order_copy(value)
    if not value.flags.writeable or (
        not value.flags.owndata
        and any(isinstance(f, np.ndarray) and np.may_share_memory(value, f) for f in feeds)
    ):
        return value.copy()
    return value


def _shape_list(shape: ir.Shape | None) -> list[int | str | None] | None:
    if shape is None:
        return None
    dims: list[int | str | None] = []
    for dim in shape:
        dims.append(dim if isinstance(dim, int) else getattr(dim, "value", None))
    return dims


def type_string(type_: Any) -> str:
    """ORT's spelling of a value type: ``tensor(float)``, ``seq(tensor(int64))``, ..."""
    if type_ is None:
        return "unknown"
    if isinstance(type_, ir.TensorType):
        return f"tensor({_dtype_name(type_.dtype)})"
    if isinstance(type_, ir.SequenceType):
        return f"seq({type_string(type_.elem_type)})"
    if isinstance(type_, ir.OptionalType):
        return f"optional({type_string(type_.elem_type)})"
    return str(type_)


def _dtype_name(dtype: ir.DataType) -> str:
    special = {ir.DataType.FLOAT: "float", ir.DataType.DOUBLE: "double"}
    return special.get(dtype, dtype.name.lower())
