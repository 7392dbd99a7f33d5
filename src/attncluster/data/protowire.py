"""The protobuf wire format, read and written by hand (no protobuf package): the pieces every message codec here uses.

A serialised message is a sequence of fields, each a key (a varint: ``field number << 3 | wire type``) and a value:

| wire type | name | value |
| --- | --- | --- |
| 0 | varint | base-128 varint, low 7 bits first, at most 10 bytes |
| 1 | fixed64 | 8 bytes, little endian |
| 2 | length-delimited | a varint length, then that many bytes (bytes, strings, sub-messages, packed lists) |
| 5 | fixed32 | 4 bytes, little endian |

Reading returns *spans* (start, end) into the caller's buffer rather than copies, so the codecs built on top
(:mod:`attncluster.data.yt8m` for ``tf.train.Example`` / ``SequenceExample``, :mod:`attncluster.extract.graphdef` for
``GraphDef``) slice payloads without copying them.

Merging, as protobuf defines it: a message field that occurs more than once is the merge of its occurrences,
which equals parsing the concatenation of their bytes; so a sub-message is kept as a *list of spans* and walked in
order (:func:`fields_of`). Repeated fields then concatenate, and for a non-repeated scalar the last occurrence wins.
"""

from __future__ import annotations

from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview

# Wire types.
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
WIRE_NAMES = {VARINT: "varint", FIXED64: "fixed64", LEN: "length-delimited", FIXED32: "fixed32"}
U64 = (1 << 64) - 1
SIGN = 1 << 63


class WireError(Exception):
    """A payload that is not valid protobuf (or not the expected message), without the file/record context that
    the caller adds when it turns this into a :class:`~attncluster.errors.DataError`."""


# --------------------------------------------------------------------------------------------------------------------
# Reading


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at ``pos`` (bytes up to ``end``); return (value, next position)."""
    if pos >= end:
        raise WireError(f"truncated varint at payload byte {pos}")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at payload byte {pos}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at payload byte {pos}")


def fields(buf: Buffer, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """The fields of the message in ``buf[pos:end]``, in order.

    Returns:
        ``(field number, wire type, a, b)`` per field: for length-delimited fields the span ``buf[a:b]``; for
        varints the value in ``a`` (``b`` is 0); for fixed32/fixed64 the span of their bytes.

    Raises:
        WireError: a truncated field, field number 0, or a group / undefined wire type (3, 4, 6, 7).
    """
    # A list, not a generator, and one-byte varints decoded inline: this runs ~30 times per YouTube-8M record.
    out: list[tuple[int, int, int, int]] = []
    append = out.append
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, end)
        field = key >> 3
        wire = key & 7
        if field == 0:
            raise WireError(f"field number 0 at payload byte {pos}")
        if wire == LEN:
            if pos < end and buf[pos] < 0x80:
                n = buf[pos]
                pos += 1
            else:
                n, pos = read_varint(buf, pos, end)
            stop = pos + n
            if stop > end:
                raise WireError(f"field {field} says {n} bytes, only {end - pos} left at payload byte {pos}")
            append((field, wire, pos, stop))
            pos = stop
        elif wire == VARINT:
            value, pos = read_varint(buf, pos, end)
            append((field, wire, value, 0))
        elif wire == FIXED32 or wire == FIXED64:
            stop = pos + (4 if wire == FIXED32 else 8)
            if stop > end:
                raise WireError(f"truncated fixed-size field {field} at payload byte {pos}")
            append((field, wire, pos, stop))
            pos = stop
        else:  # 3/4 are deprecated groups, 6/7 do not exist: nothing the messages read here contain
            raise WireError(f"unsupported wire type {wire} for field {field} at payload byte {pos}")
    return out


def fields_of(buf: Buffer, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """The fields of a message given as the spans of all its occurrences (a merged message), in order."""
    out: list[tuple[int, int, int, int]] = []
    for start, end in spans:
        out.extend(fields(buf, start, end))
    return out


def only_field(buf: Buffer, start: int, end: int, tag: int) -> int:
    """Fast path: if ``buf[start:end]`` is exactly one length-delimited field with one-byte ``tag``, where its value
    starts (the value ends at ``end``); else -1, and the caller walks the fields with :func:`fields`."""
    if end - start < 2 or buf[start] != tag:
        return -1
    n = buf[start + 1]
    pos = start + 2
    if n >= 0x80:
        n, pos = read_varint(buf, start + 1, end)
    return pos if pos + n == end else -1


def packed_varints(buf: Buffer, pos: int, end: int, values: list[int]) -> None:
    """Append the varints of a packed repeated field ``buf[pos:end]`` to ``values`` (unsigned, as read)."""
    while pos < end:
        v = buf[pos]
        if v < 0x80:
            pos += 1
        else:
            v, pos = read_varint(buf, pos, end)
        values.append(v)


def signed64(values: list[int]) -> list[int]:
    """int64 values as protobuf reads them: the low 64 bits of each varint, as two's complement."""
    if any(v >= SIGN for v in values):
        return [(v & U64) - (1 << 64) if v & SIGN else v & U64 for v in values]
    return values


# --------------------------------------------------------------------------------------------------------------------
# Writing


def varint_bytes(value: int) -> bytes:
    """A non-negative int as a varint (encode negative int64 as ``value & U64`` first)."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    """A field's key."""
    return varint_bytes((field << 3) | wire)


def len_field(field: int, body: bytes) -> bytes:
    """A length-delimited field: key, length, ``body``."""
    return tag(field, LEN) + varint_bytes(len(body)) + body


def varint_field(field: int, value: int) -> bytes:
    """A varint field (negative ints as 64-bit two's complement)."""
    return tag(field, VARINT) + varint_bytes(int(value) & U64)


def packed_varint_field(field: int, values: Iterable[int]) -> bytes:
    """A packed repeated varint field (int64/int32/bool/enum); empty bytes for no values, as protobuf writes."""
    packed = b"".join(varint_bytes(int(v) & U64) for v in values)
    return len_field(field, packed) if packed else b""


__all__ = [
    "Buffer", "FIXED32", "FIXED64", "LEN", "VARINT", "WIRE_NAMES", "WireError", "fields", "fields_of", "len_field",
    "only_field", "packed_varint_field", "packed_varints", "read_varint", "signed64", "tag", "varint_bytes",
    "varint_field",
]
