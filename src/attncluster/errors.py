"""User-facing errors.

Every mistake a user can make (bad data, bad config, missing file, incompatible checkpoint) raises a subclass of
:class:`AttnClusterError` with a one-line message that names the file, record or key and what was expected.
The CLI prints ``error: <message>`` and exits with status 2, never a traceback.
"""

from __future__ import annotations


class AttnClusterError(Exception):
    """Base class for errors caused by user input, reported by the CLI as one line."""


class DataError(AttnClusterError):
    """Damaged or malformed data: bad CRC, truncated record, unparsable payload, wrong frame size, bad label."""


class ConfigError(AttnClusterError):
    """A bad configuration: unknown key, invalid value, incompatible checkpoint."""
