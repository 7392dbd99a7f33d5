"""A TensorFlow ``GraphDef`` protobuf read without TensorFlow: nodes, their attributes and Const tensors.

Only what a frozen inference graph such as Inception's ``classify_image_graph_def.pb`` (2015-12-05) uses:

| message | fields read (number: name) |
| --- | --- |
| ``GraphDef`` | 1: node (repeated NodeDef) |
| ``NodeDef`` | 1: name, 2: op, 3: input (repeated), 5: attr (map<string, AttrValue>) |
| ``AttrValue`` | 1: list, 2: s, 3: i, 4: f, 5: b, 6: type, 7: shape, 8: tensor |
| ``AttrValue.ListValue`` | 2: s, 3: i (packed), 4: f (packed), 5: b, 6: type |
| ``TensorProto`` | 1: dtype, 2: tensor_shape, 4: tensor_content, 5: float_val, 6: double_val, 7: int_val, |
| | 10: int64_val, 11: bool_val |
| ``TensorShapeProto`` | 2: dim (repeated Dim {1: size}) |

It is built on the public wire codec :mod:`attncluster.data.protowire` (varints, field spans). Parsing never runs code
and never allocates more than the file's own size: tensors come from ``tensor_content`` bytes or typed value lists
whose length is checked against the shape. :func:`encode_graphdef` writes the same messages (tests build small graphs with it).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from attncluster.data.protowire import (FIXED32, FIXED64, LEN, VARINT, WireError, fields, len_field, read_varint, tag,
                                        varint_bytes)
from attncluster.errors import DataError

# TensorFlow DataType enum -> numpy dtype (little-endian, as tensor_content is written).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
}
DT_FLOAT, DT_INT32 = 1, 3
_MAX_RANK = 16


@dataclass
class Node:
    """One NodeDef: ``attr`` maps names to decoded values (int, float, bool, bytes, list, np.ndarray for tensors,
    tuple of dims for shapes)."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attr: dict[str, object] = field(default_factory=dict)

    @property
    def value(self) -> np.ndarray:
        """A Const node's tensor."""
        v = self.attr.get("value")
        if not isinstance(v, np.ndarray):
            raise WireError(f"node {self.name!r} ({self.op}) has no tensor value")
        return v


# --------------------------------------------------------------------------------------------------------------------
# Reading


def _text(buf: bytes, a: int, b: int) -> str:
    return bytes(buf[a:b]).decode("utf-8", errors="replace")


def _packed_ints(buf: bytes, a: int, b: int, wire: int, value: int, out: list[int]) -> None:
    if wire == VARINT:
        out.append(value)
        return
    pos = a
    while pos < b:
        v, pos = read_varint(buf, pos, b)
        out.append(v)


def _signed(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def _shape(buf: bytes, a: int, b: int, *, tensor: bool = True) -> tuple[int, ...] | None:
    """A TensorShapeProto. A tensor's shape must be known; an attribute's (a Placeholder's) may hold -1 dims or an
    unknown rank (None)."""
    dims: list[int] = []
    for f, w, c, d in fields(buf, a, b):
        if f == 2 and w == LEN:
            size = 0
            for f2, w2, e, g in fields(buf, c, d):
                if f2 == 1 and w2 == VARINT:
                    size = _signed(e)
            dims.append(size)
        elif f == 3 and w == VARINT and c:
            if tensor:
                raise WireError("tensor shape of unknown rank")
            return None
    if len(dims) > _MAX_RANK or (tensor and any(s < 0 for s in dims)):
        raise WireError(f"bad tensor shape {dims}")
    return tuple(dims)


@dataclass
class OtherTensor:
    """A tensor of a dtype this reader does not decode (strings, complex, half): kept as its dtype and shape."""

    dtype_enum: int
    shape: tuple[int, ...]


def _tensor(buf: bytes, a: int, b: int) -> np.ndarray | OtherTensor:
    """TensorProto -> array. Typed value lists shorter than the shape repeat their last value (TF's rule)."""
    dtype_enum, shape, content = 0, (), None
    floats: list[np.ndarray] = []
    ints: list[int] = []
    for f, w, c, d in fields(buf, a, b):
        if f == 1 and w == VARINT:
            dtype_enum = c
        elif f == 2 and w == LEN:
            shape = _shape(buf, c, d)
        elif f == 4 and w == LEN:
            content = (c, d)
        elif f in (5, 6):  # float_val / double_val, packed or not
            dt = "<f4" if f == 5 else "<f8"
            if w == LEN:
                floats.append(np.frombuffer(bytes(buf[c:d]), dtype=dt))
            elif w in (FIXED32, FIXED64):
                floats.append(np.frombuffer(bytes(buf[c:d]), dtype=dt))
        elif f in (7, 10, 11) and w in (VARINT, LEN):  # int_val / int64_val / bool_val
            _packed_ints(buf, c, d, w, c, ints)
    if dtype_enum not in DTYPES:  # e.g. DT_STRING: not a weight, so not decoded
        return OtherTensor(dtype_enum, shape)
    dtype = DTYPES[dtype_enum]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if content is not None:
        c, d = content
        if d - c != count * dtype.itemsize:
            raise WireError(f"tensor_content has {d - c} bytes, shape {list(shape)} of {dtype} needs "
                             f"{count * dtype.itemsize}")
        return np.frombuffer(bytes(buf[c:d]), dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    if floats:
        values = np.concatenate(floats)
    else:
        values = np.array([_signed(v) for v in ints], dtype=np.int64)
    if len(values) > count:
        raise WireError(f"tensor has {len(values)} values for shape {list(shape)}")
    out = np.zeros(count, dtype=dtype.newbyteorder("="))
    if len(values):
        out[:len(values)] = values
        out[len(values):] = values[-1]
    return out.reshape(shape)


def _attr_value(buf: bytes, a: int, b: int) -> object:
    value: object = None
    for f, w, c, d in fields(buf, a, b):
        if f == 1 and w == LEN:
            items: list[object] = []
            ints: list[int] = []
            for f2, w2, e, g in fields(buf, c, d):
                if f2 == 2 and w2 == LEN:
                    items.append(bytes(buf[e:g]))
                elif f2 in (3, 5, 6):
                    _packed_ints(buf, e, g, w2, e, ints)
                elif f2 == 4 and w2 == LEN:
                    items.extend(np.frombuffer(bytes(buf[e:g]), dtype="<f4").tolist())
                elif f2 == 4 and w2 == FIXED32:
                    items.append(struct.unpack("<f", bytes(buf[e:g]))[0])
            value = items + [_signed(v) for v in ints]
        elif f == 2 and w == LEN:
            value = bytes(buf[c:d])
        elif f in (3, 6) and w == VARINT:
            value = _signed(c)
        elif f == 4 and w == FIXED32:
            value = struct.unpack("<f", bytes(buf[c:d]))[0]
        elif f == 5 and w == VARINT:
            value = bool(c)
        elif f == 7 and w == LEN:
            value = _shape(buf, c, d, tensor=False)
        elif f == 8 and w == LEN:
            value = _tensor(buf, c, d)
    return value


def _node(buf: bytes, a: int, b: int) -> Node:
    node = Node(name="", op="")
    for f, w, c, d in fields(buf, a, b):
        if w != LEN:
            continue
        if f == 1:
            node.name = _text(buf, c, d)
        elif f == 2:
            node.op = _text(buf, c, d)
        elif f == 3:
            node.inputs.append(_text(buf, c, d))
        elif f == 5:
            key, span = "", (c, c)
            for f2, w2, e, g in fields(buf, c, d):
                if w2 == LEN and f2 == 1:
                    key = _text(buf, e, g)
                elif w2 == LEN and f2 == 2:
                    span = (e, g)
            try:
                node.attr[key] = _attr_value(buf, *span)
            except WireError as err:
                raise WireError(f"node {node.name!r} attr {key!r}: {err}") from None
    return node


def parse_graphdef(data: bytes, *, source: str = "GraphDef") -> dict[str, Node]:
    """Parse serialized ``GraphDef`` bytes into ``{node name: Node}`` (in file order).

    Raises:
        DataError: naming ``source``, if the bytes are not a GraphDef.
    """
    buf = memoryview(data)
    nodes: dict[str, Node] = {}
    try:
        for f, w, a, b in fields(buf, 0, len(buf)):
            if f == 1 and w == LEN:
                node = _node(buf, a, b)
                if not node.name or not node.op:
                    raise WireError(f"node at byte {a} has no name or op")
                nodes[node.name] = node
            elif f not in (2, 3, 4):
                raise WireError(f"unexpected top-level field {f}")
    except WireError as err:
        raise DataError(f"{source}: not a TensorFlow GraphDef ({err})") from None
    if not nodes:
        raise DataError(f"{source}: not a TensorFlow GraphDef (no nodes)")
    return nodes


def read_graphdef(path: str) -> dict[str, Node]:
    """Read a ``.pb`` GraphDef file (local path or fsspec URL); see :func:`parse_graphdef`."""
    from attncluster.data.paths import read_all

    try:
        data = read_all(path)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return parse_graphdef(data, source=path)


# --------------------------------------------------------------------------------------------------------------------
# Writing (tests, tools)


def _bytes_field(field_no: int, value: bytes) -> bytes:
    return len_field(field_no, value)


def encode_tensor(array: np.ndarray, *, as_content: bool = True) -> bytes:
    """A TensorProto: ``tensor_content`` (raw bytes) or, with ``as_content=False``, ``float_val``/``int_val``."""
    array = np.asarray(array)
    enum = {v: k for k, v in DTYPES.items()}[array.dtype.newbyteorder("<") if array.dtype.itemsize > 1
                                            else array.dtype]
    shape = b"".join(len_field(2, tag(1, VARINT) + varint_bytes(int(s))) for s in array.shape)
    out = tag(1, VARINT) + varint_bytes(enum) + len_field(2, shape)
    if as_content:
        out += len_field(4, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    elif array.dtype.kind == "f":
        field_no = 5 if array.dtype.itemsize == 4 else 6
        out += len_field(field_no, np.ascontiguousarray(array.ravel(), dtype=array.dtype.newbyteorder("<")).tobytes())
    else:
        out += len_field(7, b"".join(varint_bytes(int(v) & ((1 << 64) - 1)) for v in array.ravel()))
    return out


@dataclass
class RawAttr:
    """An AttrValue given as its serialized bytes (tests: shapes, string tensors)."""

    data: bytes


def _encode_attr(value: object) -> bytes:
    if isinstance(value, RawAttr):
        return value.data
    if isinstance(value, np.ndarray):
        return len_field(8, encode_tensor(value))
    if isinstance(value, bool):
        return tag(5, VARINT) + varint_bytes(int(value))
    if isinstance(value, int):
        return tag(3, VARINT) + varint_bytes(value & ((1 << 64) - 1))
    if isinstance(value, float):
        return tag(4, FIXED32) + struct.pack("<f", value)
    if isinstance(value, (bytes, str)):
        return len_field(2, value.encode() if isinstance(value, str) else value)
    if isinstance(value, tuple) and value and value[0] == "type":
        return tag(6, VARINT) + varint_bytes(int(value[1]))
    if isinstance(value, list):
        packed = b"".join(varint_bytes(int(v) & ((1 << 64) - 1)) for v in value)
        return len_field(1, len_field(3, packed))
    raise TypeError(f"cannot encode attr value {value!r}")


def encode_node(name: str, op: str, inputs: Sequence[str] = (), attr: Mapping[str, object] | None = None) -> bytes:
    """One NodeDef. ``attr`` values: np.ndarray (tensor), bool, int, float, bytes/str, list of ints, ("type", enum)."""
    body = _bytes_field(1, name.encode()) + _bytes_field(2, op.encode())
    body += b"".join(_bytes_field(3, i.encode()) for i in inputs)
    for key, value in (attr or {}).items():
        body += len_field(5, len_field(1, key.encode()) + len_field(2, _encode_attr(value)))
    return body


def encode_graphdef(nodes: Sequence[bytes]) -> bytes:
    """A GraphDef from encoded NodeDefs (:func:`encode_node`)."""
    return b"".join(len_field(1, n) for n in nodes)
