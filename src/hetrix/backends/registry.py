"""The kernel registry: ``(domain, op_type, backend) -> kernels by opset version``.

Kernels register themselves explicitly, next to their code, with :func:`register`::

    @register("numpy", "Relu", since=6)
    def relu(ctx: NodeContext, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

A kernel is a plain function ``kernel(ctx, *inputs)``.  ``ctx`` is the node's :class:`NodeContext`,
built once when the session plans the graph (attributes already parsed, schema defaults filled);
``inputs`` are the node's input values in order, ``None`` for an omitted optional input.  It returns
one value, or a ``tuple`` when the node has several outputs (a Python ``list`` is a Sequence value,
not several outputs).

The lookup takes the kernel with the highest ``since`` at or below the opset the model imports for
the node's domain, like ONNX's own versioning: a kernel registered ``since=13`` serves opsets 13,
14, ... until a later registration of the same op takes over.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Kernel = Callable[..., Any]


@dataclass(frozen=True)
class DirectCall:
    """A shorter call a kernel offers for its node once its set-up has settled (a library
    primitive made for the inputs' layout), which the run loop then makes instead of the kernel.

    ``call`` takes only the inputs at ``positions``, in order; every other input is the constant
    at its position in ``constants`` (None for an omitted one), the value the kernel was called
    with.  ``call`` gives the kernel's answer for any arrays: what it was not made for (another
    layout, another thread than ``owner``) it hands to the kernel.  A plan switches a step to it
    after the plan's first run, where the step's kernel is ``kernel`` and its other inputs are
    exactly those constants (:func:`hetrix.runtime.plan.bind_direct_calls`).  ``source`` is
    what ``call`` runs, so that a kernel offers anew only for a new one.
    """

    call: Callable[..., Any]
    positions: tuple[int, ...]
    constants: tuple[Any, ...]
    kernel: Kernel
    owner: int
    source: Any = None


@dataclass
class NodeContext:
    """What a kernel knows about its node, fixed when the session is planned.

    Invariants: ``attrs`` holds every attribute the schema defines a default for, as Python values
    (int, float, str/bytes, lists, numpy arrays for tensors, :class:`SubgraphRunner` for graphs);
    ``num_inputs`` counts the node's own inputs (control-flow nodes receive the outer-scope values
    their subgraphs read as extra trailing inputs, which kernels need not look at).
    """

    op_type: str
    domain: str
    name: str
    opset: int
    attrs: dict[str, Any]
    num_inputs: int
    num_outputs: int
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    output_dtypes: tuple[Any, ...] = ()
    """numpy dtype of each output where the model declares it (else None)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Free for the kernel to keep per-node state computed on the first call (packed weights...)."""
    owned_inputs: frozenset[int] = frozenset()
    """Positions of the inputs that are constants of the plan read by this node alone (not fed,
    not graph outputs, not read by another node).  A kernel that keeps its own exact copy of such
    a weight (packed for a library) may release the original's memory (see
    :func:`hetrix.runtime.memory.release_pages`); it must then never read the original again."""
    reusable_inputs: frozenset[int] = frozenset()
    """Positions of the inputs whose memory the kernel may write its result into: values the
    run computed that nothing reads after this node, through this input or any array that may
    share its memory (:func:`hetrix.runtime.plan.reusable_inputs`).  The kernel must also find
    the array the only view of its buffer when called (:func:`hetrix.runtime.memory.sole_view`).
    """
    direct: DirectCall | None = None
    """The kernel's shorter call for this node, once it offers one (see :class:`DirectCall`)."""

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute ``name``, or ``default`` when the node does not set it."""
        return self.attrs.get(name, default)


def offer_direct(ctx: NodeContext, kernel: Kernel, inputs: tuple[Any, ...],
                 sources: tuple[int, ...], make_call: Callable[[Callable[..., Any]], Any],
                 source: Any) -> None:
    """Offer, as the node's direct call (:class:`DirectCall`), ``make_call(fallback)``: a call
    of the inputs at ``sources`` that gives what ``kernel(ctx, *inputs)`` gives with the other
    inputs as they are now, and hands what it was not made for to ``fallback`` (the kernel, on
    the same arrays and those constants).  ``source`` is what the call runs (a library
    primitive, an index): nothing changes where the node offers it already, or offered one
    from another thread (a call may hold that thread's library objects)."""
    offered = ctx.direct
    owner = threading.get_ident()
    if offered is not None and (offered.source is source or offered.owner != owner):
        return
    constants = tuple(None if i in sources else value for i, value in enumerate(inputs))

    def fallback(*arrays: Any) -> Any:
        full = list(constants)
        for position, array in zip(sources, arrays, strict=True):
            full[position] = array
        return kernel(ctx, *full)

    ctx.direct = DirectCall(make_call(fallback), sources, constants, kernel, owner, source)


@dataclass(frozen=True)
class KernelEntry:
    """One registered kernel: the function and the opset version it is valid from."""

    since: int
    fn: Kernel


class KernelRegistry:
    """All kernels of all backends, indexed by ``(backend, domain, op_type)``."""

    def __init__(self) -> None:
        self._kernels: dict[tuple[str, str, str], list[KernelEntry]] = {}

    def add(self, backend: str, domain: str, op_type: str, since: int, fn: Kernel) -> None:
        """Register ``fn`` as the kernel of ``op_type`` on ``backend`` from opset ``since``."""
        domain = _normal_domain(domain)
        entries = self._kernels.setdefault((backend, domain, op_type), [])
        if any(e.since == since for e in entries):
            raise ValueError(f"kernel {backend}:{domain}:{op_type} since {since} registered twice")
        bisect.insort(entries, KernelEntry(since, fn), key=lambda e: e.since)

    def lookup(self, backend: str, domain: str, op_type: str, opset: int) -> Kernel | None:
        """The kernel valid at ``opset``, or None when ``backend`` cannot run this op there."""
        entries = self._kernels.get((backend, _normal_domain(domain), op_type))
        if not entries:
            return None
        index = bisect.bisect_right([e.since for e in entries], opset) - 1
        return entries[index].fn if index >= 0 else None

    def backends_for(self, domain: str, op_type: str) -> list[str]:
        """Names of the backends that have any kernel for this op (for error messages)."""
        domain = _normal_domain(domain)
        return sorted({b for (b, d, o) in self._kernels if d == domain and o == op_type})

    def ops(self, backend: str) -> list[tuple[str, str]]:
        """Every ``(domain, op_type)`` the backend has a kernel for."""
        return sorted((d, o) for (b, d, o) in self._kernels if b == backend)


def _normal_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


REGISTRY = KernelRegistry()
"""The process-wide registry every backend registers into."""


def register(
    backend: str, op_type: str, *, since: int = 1, domain: str = ""
) -> Callable[[Kernel], Kernel]:
    """Decorator: register the function as ``backend``'s kernel for ``op_type`` from ``since``."""

    def decorate(fn: Kernel) -> Kernel:
        REGISTRY.add(backend, domain, op_type, since, fn)
        return fn

    return decorate
