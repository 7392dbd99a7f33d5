"""The TFRecord container, without TensorFlow.

A TFRecord file is a sequence of records, each::

    uint64 length (little endian) | uint32 masked CRC32C of those 8 bytes | payload | uint32 masked CRC32C of payload

TensorFlow refuses a record whose CRC does not match; so do we (some third-party readers skip the check and silently
train on damaged bytes). Random access goes through a record index, ``(offset, length)`` per record, built by reading
only the 12-byte headers, so a shard can be shuffled without holding it in memory.

Damage comes in two kinds. A bad *payload* CRC spoils one record: with ``skip_corrupt`` it is counted and skipped and
the next record is still found. A bad *length* CRC (or a length running past the end of the file) means the length
can no longer be trusted: with ``skip_corrupt`` the reader *resynchronises*, searching forward for the next offset
where a header with a valid length CRC and a payload with a valid CRC begin, and goes on from there. The damaged
stretch counts as one corrupt record and its size is counted in ``ReadStats.bytes_lost``, so a summary says exactly
how much of the file was unreadable instead of silently losing everything after one bad header. A payload is never
trusted without both CRCs, so resynchronising cannot invent a record (a false match needs two 32-bit CRCs to agree).
A length is checked against the file size before any buffer is allocated for it.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import crc32c as _crc32c
import numpy as np

from attncluster.data.paths import is_url, open_binary
from attncluster.data.records import ReadStats
from attncluster.errors import DataError

HEADER_BYTES = 12  # uint64 length + uint32 length CRC
FOOTER_BYTES = 4  # uint32 payload CRC
_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC32C: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo 2**32.

    The rotation and offset keep a CRC of data that itself contains CRCs from being degenerate.
    """
    crc = _crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


class RecordFramingError(DataError):
    """A record header or tail is damaged: the length cannot be trusted. ``bytes_lost``: the unreadable bytes from
    the damaged header to the next intact record (or the end of the file), when known."""

    bytes_lost: int = 0


def record_error(path: str, index: int, offset: int, what: str, cls: type[DataError] = DataError) -> DataError:
    """The one-line error every record-level problem raises: file, record index, byte offset, what was wrong."""
    error = cls(f"{path}: record {index} at byte offset {offset}: {what}")
    error.offset = offset
    return error


class EmptyFileError(DataError):
    """A 0-byte file where records were expected (usually a failed download or copy)."""


def _empty_file(path: str) -> DataError:
    return EmptyFileError(f"{path}: empty file (0 bytes), expected TFRecord records")


def _check_header(header: bytes | bytearray | memoryview, path: str, index: int, offset: int) -> int:
    """Verify a 12-byte header's length CRC and return the payload length."""
    stored = _CRC.unpack_from(header, 8)[0]
    computed = masked_crc32c(memoryview(header)[:8])
    if stored != computed:
        raise record_error(
            path, index, offset, f"bad length CRC (stored {stored:#010x}, computed {computed:#010x}); "
            "the file is damaged or not a TFRecord file", cls=RecordFramingError)
    return _LENGTH.unpack_from(header, 0)[0]


def _check_payload_crc(record: memoryview, length: int, path: str, index: int, offset: int,
                       start: int) -> DataError | None:
    """Return an error if ``record[start:start+length]`` does not match the CRC stored right after it."""
    stored = _CRC.unpack_from(record, start + length)[0]
    computed = masked_crc32c(record[start:start + length])
    if stored != computed:
        return record_error(path, index, offset, f"bad payload CRC (stored {stored:#010x}, computed {computed:#010x}) "
                            f"over {length} payload bytes")
    return None


def _buffer(n: int) -> memoryview:
    """A writable, uninitialised n-byte buffer (``bytearray(n)`` would first zero what the read overwrites)."""
    return memoryview(np.empty(n, dtype=np.uint8))


def _readinto_exact(f: BinaryIO, buf: bytearray | memoryview) -> int:
    """Fill ``buf`` from ``f``; return how many bytes were read (fewer only at end of file)."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    got = 0
    readinto = getattr(f, "readinto", None)
    while got < len(buf):
        if readinto is not None:
            n = readinto(view[got:])
        else:  # file-likes without readinto (rare): one copy more
            chunk = f.read(len(buf) - got)
            n = len(chunk)
            view[got:got + n] = chunk
        if not n:
            break
        got += n
    return got


def _file_size(f: BinaryIO) -> int:
    return f.seek(0, io.SEEK_END)


def _positional_reader(f: BinaryIO):
    """``read_at(offset, n) -> bytes`` using pread when ``f`` is a local file (no seek, no buffer churn)."""
    pread = getattr(os, "pread", None)
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if pread is not None and fd is not None:
        return lambda offset, n: pread(fd, n, offset)

    def read_at(offset: int, n: int) -> bytes:
        f.seek(offset)
        return f.read(n)

    return read_at


# Compressed TFRecord files, as TensorFlow's writer makes them (TFRecordOptions compression_type GZIP / ZLIB): the
# whole record stream compressed, records and CRCs unchanged inside.
GZIP_MAGIC = b"\x1f\x8b\x08"
# Largest decompressed size accepted, as a multiple of the compressed size (a decompression bomb is refused; TFRecord
# data compresses 1-5x) with a floor for small files.
MAX_EXPANSION = 64
MIN_EXPANSION_BYTES = 256 << 20


def compression_of(head: bytes) -> str | None:
    """``"GZIP"``, ``"ZLIB"`` or None (a plain TFRecord file), from a file's first 12 bytes.

    A plain file starts with a record header whose length CRC matches; only a start that is not one is taken for a
    compressed stream, so a plain file whose first length happens to begin with a magic byte is still read plain.
    """
    if len(head) >= HEADER_BYTES and masked_crc32c(head[:8]) == _CRC.unpack_from(head, 8)[0]:
        return None
    if head.startswith(GZIP_MAGIC):
        return "GZIP"
    # RFC 1950: CMF (deflate, window <= 32 KiB) and FLG with (CMF * 256 + FLG) % 31 == 0, no preset dictionary.
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] * 256 + head[1]) % 31 == 0 \
            and not head[1] & 0x20:
        return "ZLIB"
    return None


def _decompress(f: BinaryIO, path: str, kind: str) -> io.BytesIO:
    """The whole decompressed record stream of a GZIP (possibly multi-member, as ``cat a.gz b.gz``) or ZLIB file."""
    import zlib

    data = f.read()
    limit = max(MIN_EXPANSION_BYTES, MAX_EXPANSION * len(data))
    wbits = 31 if kind == "GZIP" else 15
    out: list[bytes] = []
    total = 0
    rest = data
    try:
        while True:
            d = zlib.decompressobj(wbits)
            while rest and not d.eof:
                chunk = d.decompress(rest, limit + 1 - total)
                total += len(chunk)
                out.append(chunk)
                if total > limit:
                    raise DataError(f"{path}: {kind}-compressed TFRecord file expands to more than {limit} bytes "
                                    f"({MAX_EXPANSION}x its size); refused as a likely decompression bomb")
                rest = d.unconsumed_tail
            if not d.eof:
                raise DataError(f"{path}: {kind}-compressed TFRecord file is truncated (the compressed stream ends "
                                f"after {total} decompressed bytes, before its end marker)")
            rest = d.unused_data
            if kind != "GZIP" or not rest:
                break
            if not rest.startswith(GZIP_MAGIC[:2]):
                raise DataError(f"{path}: {len(rest)} bytes of trailing garbage after the GZIP stream")
    except zlib.error as e:
        raise DataError(f"{path}: damaged {kind}-compressed TFRecord file ({e}, after {total} decompressed "
                        "bytes)") from None
    if kind == "ZLIB" and rest:
        raise DataError(f"{path}: {len(rest)} bytes of trailing garbage after the ZLIB stream")
    return io.BytesIO(b"".join(out))


def open_records(path: str, *, sequential: bool = False) -> BinaryIO:
    """Open a TFRecord file for record reads; a GZIP or ZLIB-compressed one (detected by its first bytes, see
    :func:`compression_of`) is decompressed into memory and read with its CRCs checked as any other.

    Args:
        path: local path or fsspec URL.
        sequential: the file will be read front to back (:func:`scan_records`): keep the 1 MiB read buffer, which
            turns the two small reads per small record (header, payload) into one large read per many records.
            Otherwise (random access with :func:`read_payload`) a local file is opened unbuffered, so each record is
            exactly one ``readinto`` of its bytes instead of a buffer refill of up to 1 MiB. URLs always go through
            fsspec, whose block cache does the buffering.
    """
    f = open_binary(path)
    try:
        head = f.read(HEADER_BYTES)
        f.seek(0)
        kind = compression_of(head)
        if kind is not None:
            with f:
                return _decompress(f, path, kind)
    except BaseException:
        f.close()
        raise
    if not sequential and (not is_url(path) or path.startswith("file://")) and isinstance(f, io.BufferedReader):
        return f.detach()  # the raw FileIO underneath
    return f


RESYNC_CHUNK = 8 << 20  # bytes searched per step when resynchronising after a damaged header


def find_next_record(read_at, size: int, start: int) -> int | None:
    """The offset of the first intact record at or after ``start``: a header whose length CRC matches, whose record
    fits in the file, and whose payload CRC matches. None if there is none.

    Candidates are found a chunk at a time with numpy: a record length is below the file size, so the top bytes of
    its little-endian uint64 are zero; only those offsets get a CRC check.
    """
    pos = start
    # Lengths below 2**40 (1 TiB): bytes 5..7 of the header are zero.
    while pos + HEADER_BYTES + FOOTER_BYTES <= size:
        chunk = read_at(pos, min(RESYNC_CHUNK + HEADER_BYTES, size - pos))
        b = np.frombuffer(chunk, dtype=np.uint8)
        n = len(b) - HEADER_BYTES + 1  # offsets in this chunk with a whole header after them
        if n <= 0:
            return None
        cand = np.flatnonzero((b[5:5 + n] == 0) & (b[6:6 + n] == 0) & (b[7:7 + n] == 0))
        for c in cand:
            off = pos + int(c)
            header = chunk[c:c + HEADER_BYTES]
            length = _LENGTH.unpack_from(header, 0)[0]
            if off + HEADER_BYTES + length + FOOTER_BYTES > size:
                continue
            if _CRC.unpack_from(header, 8)[0] != masked_crc32c(header[:8]):
                continue
            record = read_at(off, HEADER_BYTES + length + FOOTER_BYTES)
            if _check_payload_crc(memoryview(record), length, "", 0, off, HEADER_BYTES) is None:
                return off
        pos += n
    return None


def _local_size(f: BinaryIO) -> int | None:
    """The file's size when ``f`` is seekable (local files, fsspec files); None for a pure stream."""
    try:
        if not f.seekable():
            return None
        here = f.tell()
        size = f.seek(0, io.SEEK_END)
        f.seek(here)
        return size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


def index_records(f: BinaryIO, path: str, *, skip_corrupt: bool = False, stats: ReadStats | None = None) -> np.ndarray:
    """Index a TFRecord file by reading only its 12-byte record headers.

    Args:
        f: the open file (seekable).
        path: the file's name, for error messages.
        skip_corrupt: on a bad length CRC or a truncated tail, count one corrupt record and the unreadable bytes
            in ``stats`` and resynchronise at the next intact record (see :func:`find_next_record`), instead of
            raising.
        stats: where skipped records and lost bytes are counted.

    Returns:
        (n, 2) int64 array: the byte offset of each record's start and its payload length.

    Raises:
        DataError: empty file; or, without ``skip_corrupt``, a bad length CRC or a truncated record.
    """
    size = _file_size(f)
    if size == 0:
        raise _empty_file(path)
    read_at = _positional_reader(f)
    offsets: list[int] = []
    lengths: list[int] = []
    pos = 0
    index = 0
    while pos < size:
        try:
            left = size - pos
            if left < HEADER_BYTES:
                raise record_error(path, index, pos, f"truncated record header: {left} bytes left, expected "
                                   f"{HEADER_BYTES}", cls=RecordFramingError)
            length = _check_header(read_at(pos, HEADER_BYTES), path, index, pos)
            if HEADER_BYTES + length + FOOTER_BYTES > left:
                raise record_error(
                    path, index, pos, f"truncated record: header says {length} payload bytes + {FOOTER_BYTES} CRC "
                    f"bytes, only {left - HEADER_BYTES} bytes left in the file", cls=RecordFramingError)
        except RecordFramingError:
            if not skip_corrupt:
                raise
            nxt = find_next_record(read_at, size, pos + 1)
            if stats is not None:
                stats.corrupt += 1
                stats.bytes_lost += (size if nxt is None else nxt) - pos
            if nxt is None:
                break
            pos = nxt
            index += 1
            continue
        offsets.append(pos)
        lengths.append(length)
        pos += HEADER_BYTES + length + FOOTER_BYTES
        index += 1
    out = np.empty((len(offsets), 2), dtype=np.int64)
    out[:, 0] = offsets
    out[:, 1] = lengths
    return out


def read_payload(f: BinaryIO, path: str, index: int, offset: int, length: int) -> memoryview:
    """Read one indexed record (header, payload and CRC in a single read) and verify both CRCs.

    Args:
        f: the open file (seekable).
        path: the file's name, for error messages.
        index: the record's index, for error messages.
        offset: byte offset of the record's header, from :func:`index_records`.
        length: payload length, from :func:`index_records`.

    Returns:
        The payload: a zero-copy view into a fresh writable buffer, so arrays parsed from it are writable and
        outlive the call.

    Raises:
        DataError: a truncated record, a header that no longer matches the index, or a bad CRC.
    """
    offset = int(offset)
    length = int(length)
    buf = _buffer(HEADER_BYTES + length + FOOTER_BYTES)
    f.seek(offset)
    got = _readinto_exact(f, buf)
    if got < len(buf):
        raise record_error(path, index, offset, f"truncated record: expected {len(buf)} bytes (header, "
                           f"{length} payload bytes, CRC), got {got}")
    stored_length = _check_header(buf[:HEADER_BYTES], path, index, offset)
    if stored_length != length:
        raise record_error(path, index, offset, f"header says {stored_length} payload bytes, the index says {length}; "
                           "was the file changed while it was being read?")
    error = _check_payload_crc(buf, length, path, index, offset, HEADER_BYTES)
    if error is not None:
        raise error
    return buf[HEADER_BYTES:HEADER_BYTES + length]


STREAM_CHUNK = 64 << 20  # on a stream of unknown size, a claimed length is read in pieces of this size


def _read_claimed(f: BinaryIO, n: int, size: int | None, pos: int) -> memoryview | int:
    """Read ``n`` bytes at the current position; a memoryview of them, or how many bytes there were if fewer.

    The buffer never outgrows the data: with a known file size the claim is checked first; on a stream the bytes
    are read in pieces, so a forged length of 2**60 costs at most one piece before the end of the stream shows.
    """
    if size is not None:
        left = size - pos
        if n > left:
            return max(left, 0)
        buf = _buffer(n)
        got = _readinto_exact(f, buf)
        return buf if got == n else got
    pieces: list[bytes] = []
    got = 0
    while got < n:
        piece = f.read(min(STREAM_CHUNK, n - got))
        if not piece:
            return got
        pieces.append(piece)
        got += len(piece)
    buf = _buffer(n)
    o = 0
    for piece in pieces:
        buf[o:o + len(piece)] = piece
        o += len(piece)
    return buf


def scan_records(f: BinaryIO, path: str, *, resync: bool = False) -> Iterator[tuple[int, int, memoryview | DataError]]:
    """Read records front to back, without an index (one pass over a stream, remote files included).

    Args:
        f: the open file.
        path: its name, for error messages.
        resync: on a bad length CRC or a truncated record of a seekable file, yield the
            :class:`RecordFramingError` (its ``bytes_lost`` says how many bytes were unreadable) and go on from the
            next intact record (see :func:`find_next_record`), instead of raising.

    Yields:
        ``(index, offset, payload)`` per record, where ``payload`` is the verified payload or, for a bad payload CRC
        (or, with ``resync``, damaged framing), the :class:`DataError` describing it.

    Raises:
        DataError: an empty file.
        RecordFramingError: a bad length CRC or truncated record, without ``resync`` or on a stream that cannot
            seek; nothing after it can be found.
    """
    size = _local_size(f)
    pos = 0
    index = 0
    header = bytearray(HEADER_BYTES)
    while True:
        try:
            got = _readinto_exact(f, header)
            if got == 0:
                if index == 0:
                    raise _empty_file(path)
                return
            if got < HEADER_BYTES:
                raise record_error(path, index, pos, f"truncated record header: {got} bytes left, expected "
                                   f"{HEADER_BYTES}", cls=RecordFramingError)
            length = _check_header(header, path, index, pos)
            buf = _read_claimed(f, length + FOOTER_BYTES, size, pos + HEADER_BYTES)
            if isinstance(buf, int):
                raise record_error(
                    path, index, pos, f"truncated record: header says {length} payload bytes + {FOOTER_BYTES} CRC "
                    f"bytes, only {buf} bytes left in the file", cls=RecordFramingError)
        except RecordFramingError as e:
            if not resync or size is None:
                if size is not None:
                    e.bytes_lost = size - pos
                raise
            nxt = find_next_record(_positional_reader(f), size, pos + 1)
            e.bytes_lost = (size if nxt is None else nxt) - pos
            yield index, pos, e
            if nxt is None:
                return
            f.seek(nxt)
            pos = nxt
            index += 1
            continue
        error = _check_payload_crc(buf, length, path, index, pos, 0)
        yield index, pos, (error if error is not None else buf[:length])
        pos += HEADER_BYTES + length + FOOTER_BYTES
        index += 1


def iter_records(path: str, skip_corrupt: bool = False,
                 stats: ReadStats | None = None) -> Iterator[tuple[int, int, memoryview]]:
    """Iterate over the verified records of a TFRecord file, front to back.

    Args:
        path: local path or fsspec URL.
        skip_corrupt: count damaged records in ``stats`` and go on, instead of raising. A bad payload CRC skips that
            record; after a bad length CRC or truncated record the scan resynchronises at the next intact record
            (a stream that cannot seek ends there), counting the unreadable bytes in ``stats.bytes_lost``.
        stats: where skipped records and lost bytes are counted.

    Yields:
        ``(index, offset, payload)``: record index, byte offset of its header, payload (zero-copy view).

    Raises:
        DataError: an empty file (also with ``skip_corrupt``: it holds no record to skip), or, without
            ``skip_corrupt``, any damaged record.
    """
    with open_records(path, sequential=True) as f:
        try:
            for index, offset, payload in scan_records(f, path, resync=skip_corrupt):
                if isinstance(payload, DataError):
                    if not skip_corrupt:
                        raise payload
                    if stats is not None:
                        stats.corrupt += 1
                        stats.bytes_lost += getattr(payload, "bytes_lost", 0)
                    continue
                yield index, offset, payload
        except RecordFramingError as e:
            if not skip_corrupt:
                raise
            if stats is not None:
                stats.corrupt += 1
                stats.bytes_lost += e.bytes_lost


def encode_record(payload: bytes | bytearray | memoryview) -> bytes:
    """One framed record: length, length CRC, payload, payload CRC."""
    length = _LENGTH.pack(len(payload))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), bytes(payload), _CRC.pack(masked_crc32c(payload))))


class TFRecordWriter:
    """Write records to a TFRecord file.

    Args:
        path_or_file: a local path, an fsspec URL, or a binary file object open for writing (not closed here).

    Example::

        with TFRecordWriter("out.tfrecord") as w:
            w.write(payload)
    """

    def __init__(self, path_or_file: str | os.PathLike | BinaryIO) -> None:
        if isinstance(path_or_file, (str, os.PathLike)):
            path = os.fspath(path_or_file)
            if is_url(path) and not path.startswith("file://"):
                import fsspec

                self._f = fsspec.open(path, "wb").open()
            else:
                self._f = open(path[len("file://"):] if path.startswith("file://") else path, "wb")
            self._owned = True
        else:
            self._f = path_or_file
            self._owned = False
        self.count = 0

    def write(self, payload: bytes | bytearray | memoryview) -> None:
        """Append one record."""
        self._f.write(encode_record(payload))
        self.count += 1

    def close(self) -> None:
        if self._owned:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_records(path_or_file: str | os.PathLike | BinaryIO,
                  payloads: Iterable[bytes | bytearray | memoryview]) -> int:
    """Write ``payloads`` as a TFRecord file; return the number of records written."""
    with TFRecordWriter(path_or_file) as w:
        for payload in payloads:
            w.write(payload)
        return w.count


__all__ = [
    "EmptyFileError",
    "compression_of",
    "HEADER_BYTES",
    "FOOTER_BYTES",
    "RecordFramingError",
    "TFRecordWriter",
    "encode_record",
    "find_next_record",
    "index_records",
    "iter_records",
    "masked_crc32c",
    "open_records",
    "read_payload",
    "record_error",
    "scan_records",
    "write_records",
]
