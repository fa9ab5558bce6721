"""Parse a model file without copying its weights: large tensors become references into the file.

Parsing a whole ``.onnx`` file with protobuf copies every weight into the message, and converting
the weights to NumPy copies them again, so a plain load peaks at three times the weights (file
bytes, message, arrays).  Instead, :func:`split_weights` walks the protobuf wire format over a
memory map of the file and re-encodes the messages that hold weights, leaving out each large
``raw_data`` field and writing in its place an external-data reference to the same bytes *in the
model file itself* (``location`` = the file, ``offset``/``length`` = where the bytes lie).  The
remaining structure is small and parses in milliseconds; the weights are then read one tensor
at a time, straight into their arrays, by the same code that reads external data (with the same
checks), so the load peaks at about one copy of the weights.

Only the fields on the way to a weight are decoded: ``ModelProto.graph`` -> ``GraphProto``
initializers and nodes -> ``NodeProto`` attributes -> tensors and subgraphs.  A message shorter
than the size threshold cannot hold a large tensor and is copied as it is, undecoded; so is
everything else.  A tensor that already names a data location or external data is left alone.
"""

from __future__ import annotations

from typing import Any

import onnx

_LEN = 2  # wire type of length-delimited fields (bytes, strings, messages, packed repeats)
_WIRE_SIZES = {1: 8, 5: 4}  # fixed64 and fixed32


def _number(message: Any, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


_MODEL_GRAPH = _number(onnx.ModelProto, "graph")
_GRAPH_NODE = _number(onnx.GraphProto, "node")
_GRAPH_INITIALIZER = _number(onnx.GraphProto, "initializer")
_NODE_ATTRIBUTE = _number(onnx.NodeProto, "attribute")
_ATTRIBUTE_TENSOR = _number(onnx.AttributeProto, "t")
_ATTRIBUTE_TENSORS = _number(onnx.AttributeProto, "tensors")
_ATTRIBUTE_GRAPH = _number(onnx.AttributeProto, "g")
_ATTRIBUTE_GRAPHS = _number(onnx.AttributeProto, "graphs")
_TENSOR_RAW_DATA = _number(onnx.TensorProto, "raw_data")
_TENSOR_EXTERNAL_DATA = _number(onnx.TensorProto, "external_data")
_TENSOR_DATA_LOCATION = _number(onnx.TensorProto, "data_location")
_ENTRY_KEY = _number(onnx.StringStringEntryProto, "key")
_ENTRY_VALUE = _number(onnx.StringStringEntryProto, "value")


class WireFormatError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def split_weights(data: memoryview, location: str, min_bytes: int) -> bytes:
    """The serialized ModelProto ``data`` with every tensor ``raw_data`` of at least
    ``min_bytes`` replaced by an external reference to ``location`` at the bytes' offset in
    ``data`` (``data`` is the whole file, so offsets are file offsets).

    Raises :class:`WireFormatError` on malformed input (the caller then parses it normally and
    reports protobuf's own error).
    """
    splitter = _Splitter(data, location.encode(), min_bytes)
    return bytes(splitter.message(0, len(data), splitter.model_field))


class _Splitter:
    """Re-encodes messages over ``data``; each ``*_field`` method returns the bytes of one field
    of its message type (re-encoded where it may hold a weight, else copied)."""

    def __init__(self, data: memoryview, location: bytes, min_bytes: int) -> None:
        self.data = data
        self.location = location
        self.min_bytes = min_bytes

    def message(self, start: int, end: int, field_fn) -> bytearray:
        """The message in ``data[start:end]``, each field passed through ``field_fn``."""
        out = bytearray()
        for number, wire, begin, value, stop in _fields(self.data, start, end):
            out += field_fn(number, wire, begin, value, stop)
        return out

    def _copy(self, begin: int, stop: int) -> memoryview:
        return self.data[begin:stop]

    def _nested(self, number: int, value: int, stop: int, field_fn) -> bytes:
        """A length-delimited field holding a message, re-encoded when it is big enough to hold
        a large tensor."""
        body = self.message(value, stop, field_fn)
        return _tag(number, _LEN) + _varint(len(body)) + body

    def _big(self, wire: int, value: int, stop: int) -> bool:
        return wire == _LEN and stop - value >= self.min_bytes

    def model_field(self, number: int, wire: int, begin: int, value: int, stop: int):
        if number == _MODEL_GRAPH and self._big(wire, value, stop):
            return self._nested(number, value, stop, self.graph_field)
        return self._copy(begin, stop)

    def graph_field(self, number: int, wire: int, begin: int, value: int, stop: int):
        if number == _GRAPH_INITIALIZER and self._big(wire, value, stop):
            return self._tensor(number, begin, value, stop)
        if number == _GRAPH_NODE and self._big(wire, value, stop):
            return self._nested(number, value, stop, self.node_field)
        return self._copy(begin, stop)

    def node_field(self, number: int, wire: int, begin: int, value: int, stop: int):
        if number == _NODE_ATTRIBUTE and self._big(wire, value, stop):
            return self._nested(number, value, stop, self.attribute_field)
        return self._copy(begin, stop)

    def attribute_field(self, number: int, wire: int, begin: int, value: int, stop: int):
        if not self._big(wire, value, stop):
            return self._copy(begin, stop)
        if number in (_ATTRIBUTE_TENSOR, _ATTRIBUTE_TENSORS):
            return self._tensor(number, begin, value, stop)
        if number in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
            return self._nested(number, value, stop, self.graph_field)
        return self._copy(begin, stop)

    def _tensor(self, number: int, begin: int, value: int, stop: int):
        """A TensorProto field: its large raw_data becomes an external reference."""
        fields = list(_fields(self.data, value, stop))
        raw = [f for f in fields if f[0] == _TENSOR_RAW_DATA and f[1] == _LEN]
        has_location = any(f[0] in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION) for f in fields)
        if len(raw) != 1 or has_location or raw[0][4] - raw[0][3] < self.min_bytes:
            return self._copy(begin, stop)
        _, _, _, data_start, data_stop = raw[0]
        body = bytearray()
        for field in fields:
            if field is not raw[0]:
                body += self.data[field[2]:field[4]]
        body += _external_reference(self.location, data_start, data_stop - data_start)
        return _tag(number, _LEN) + _varint(len(body)) + body


def _external_reference(location: bytes, offset: int, length: int) -> bytes:
    """TensorProto fields ``external_data`` (location, offset, length) and
    ``data_location = EXTERNAL``."""
    out = bytearray()
    for key, value in ((b"location", location), (b"offset", str(offset).encode()),
                       (b"length", str(length).encode())):
        entry = (_tag(_ENTRY_KEY, _LEN) + _varint(len(key)) + key
                 + _tag(_ENTRY_VALUE, _LEN) + _varint(len(value)) + value)
        out += _tag(_TENSOR_EXTERNAL_DATA, _LEN) + _varint(len(entry)) + entry
    out += _tag(_TENSOR_DATA_LOCATION, 0) + _varint(onnx.TensorProto.EXTERNAL)
    return bytes(out)


def _fields(data: memoryview, start: int, end: int):
    """``(number, wire type, field start, value start, field end)`` of each field in
    ``data[start:end]``; for length-delimited fields the value is the payload."""
    position = start
    while position < end:
        begin = position
        key, position = _read_varint(data, position, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireFormatError(f"field number 0 at byte {begin}")
        if wire == 0:
            _, position = _read_varint(data, position, end)
            value = position
        elif wire == _LEN:
            length, value = _read_varint(data, position, end)
            position = value + length
        elif wire in _WIRE_SIZES:
            value = position
            position += _WIRE_SIZES[wire]
        else:  # groups (3, 4) are not used by ONNX; anything else is corrupt
            raise WireFormatError(f"unsupported wire type {wire} at byte {begin}")
        if position > end:
            raise WireFormatError(f"field at byte {begin} runs past its message")
        yield number, wire, begin, value, position


def _read_varint(data: memoryview, position: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= end or shift > 63:
            raise WireFormatError(f"truncated or overlong varint at byte {position}")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)
