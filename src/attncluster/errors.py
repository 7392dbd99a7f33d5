"""User-facing errors.

Every mistake a user can make (bad data, bad config, missing file, incompatible checkpoint) raises a subclass of
:class:`AttnClusterError` with a one-line message that names the file, record or key and what was expected.
The CLI prints ``error: <message>`` and exits with status 2, never a traceback.

Messages often quote what a file holds (an id, a key, a header). :func:`printable` is the one place that makes such
text safe for a terminal: every ``error:`` line goes through it, so NUL, CR, ANSI escapes and other control
characters from a hostile file are shown escaped (``\\x1b``), and a message is capped at :data:`MAX_MESSAGE`
characters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "file write failed", "inline_container", "unexpected pos")
_SHORT_ESCAPES = {"\r": "\\r", "\t": "\\t", "\x00": "\\x00"}
MAX_MESSAGE = 1000  # characters in one error line; longer ones are cut with a note of how much was left out


class AttnClusterError(Exception):
    """Base class for errors caused by user input, reported by the CLI as one line."""


class DataError(AttnClusterError):
    """Damaged or malformed data: bad CRC, truncated record, unparsable payload, wrong frame size, bad label."""


class ConfigError(AttnClusterError):
    """A bad configuration: unknown key, invalid value, incompatible checkpoint."""


class FileError(AttnClusterError):
    """A file or folder that cannot be read or written: disk full, permission denied, missing or read-only folder."""


def printable(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one terminal-safe line of at most ``limit`` characters (plus a short note when cut).

    Line breaks become spaces (a message may be built from several lines); every other non-printable character
    (NUL, CR, ESC, DEL, C1 controls, unassigned or format code points) is written as a Python escape, ``\\x1b``.
    """
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\n":
            out.append(" ")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    line = "".join(out)
    if len(line) > limit:
        line = f"{line[:limit]}... ({len(line) - limit} more characters)"
    return line


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``; ``many`` for irregular plurals."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def os_error_message(e: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OSError: the path (``path``, else the one the error carries) and the system's reason."""
    where = path if path is not None else e.filename
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename2 is not None and path is None:
        where = f"{e.filename} -> {e.filename2}"
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "write") -> Iterator[None]:
    """Turn a failed write of ``path`` (disk full, permission, read-only or missing folder) into one FileError.

    ``torch.save`` reports a failed write as a RuntimeError without the path or the errno ("file write failed",
    "[enforce fail at inline_container.cc] unexpected pos"), so those from its stream writer are caught too.
    """
    try:
        yield
    except OSError as e:
        raise FileError(f"{path}: cannot {what}: {e.strerror or e}") from None
    except RuntimeError as e:
        text = str(e)
        if not any(m in text for m in _TORCH_WRITE_FAILURES):
            raise
        raise FileError(f"{path}: cannot {what}: write failed (disk full or file too large?)") from None
