"""Exceptions raised by Hetrix.

Every error a user can cause (a bad model file, a wrong feed) is a :class:`HetrixError`, and its
message names the thing that is wrong: the model path, the input name, the node, the dtype or shape
that was expected.  Internal invariants use ``assert``.
"""

from __future__ import annotations


class HetrixError(Exception):
    """Base class of every error Hetrix raises on purpose."""


class ModelLoadError(HetrixError, ValueError):
    """The model could not be read: missing file, truncated or malformed protobuf, bad graph."""


class UnsafeExternalDataError(ModelLoadError):
    """An external-data reference leads outside the model's folder (absolute, '..', symlink)."""


class UnsupportedOperatorError(HetrixError, NotImplementedError):
    """No backend of the session has a kernel for a node's operator at the model's opset."""


class InvalidInputError(HetrixError, ValueError):
    """A feed passed to ``run`` does not match the model: unknown, missing, wrong dtype/shape."""


class InvalidArgumentError(HetrixError, ValueError):
    """An argument of the API (provider name, output name, option) is not valid."""


class ExecutionError(HetrixError, RuntimeError):
    """A kernel failed while running a node; the message names the node and its operator."""
