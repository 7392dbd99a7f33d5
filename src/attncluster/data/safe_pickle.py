"""The one pickle loader: an allow-list of data constructors, each bounded in what it may allocate.

Pickles reach us as the reference's shards (``.pkl``) and its released weights (``.pdparams``). A pickle is a
program: every global it names is called with arguments from the file. So:

* **No code runs.** Only globals on the caller's allow-list resolve (numpy array reconstruction, builtin
  containers); anything else is refused with the file's name and the global's.
* **No amplification.** A tiny pickle must not become a huge allocation. Every allowed constructor is wrapped so
  its output is bounded by what the file itself holds: ``bytes(10**10)`` / ``bytearray(10**10)`` (a size, not
  data) are refused; ``numpy`` arrays are sized against the file; object dtypes (whose ``__setstate__`` allocates
  ``shape`` pointers before checking the data) are refused, as no shard or weights file holds one;
  ``_codecs.encode`` only takes latin-1 (how Python 3 spells bytes at protocol < 3).

Everything else a pickle can build (lists, dicts, tuples of items read from the file) is linear in the file's size.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import numpy as np

from attncluster.errors import DataError

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's _reconstruct, wherever this numpy keeps it
_SCALAR = np.float32(0).__reduce__()[0]
try:  # protocol 5 arrays
    from numpy._core.numeric import _frombuffer as _FROMBUFFER  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.numeric import _frombuffer as _FROMBUFFER  # type: ignore[attr-defined,no-redef]


class RefusedPickle(DataError):
    """The pickle needs a global that is not allowed, or asks for more memory than the file can justify."""


class _Limits:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def refuse(self, what: str) -> RefusedPickle:
        return RefusedPickle(f"{self.path}: refusing to unpickle: {what}")

    def check_dtype(self, dt: np.dtype) -> np.dtype:
        if dt.hasobject:
            raise self.refuse(f"an object array (dtype {dt}); only numeric arrays are loaded")
        return dt

    def check_size(self, shape: Iterable[int], dt: np.dtype, what: str) -> None:
        n = 1
        for s in shape:
            if not isinstance(s, (int, np.integer)) or s < 0:
                raise self.refuse(f"{what} with shape {tuple(shape)!r}")
            n *= int(s)
        if n * max(dt.itemsize, 1) > self.max_bytes:
            raise self.refuse(f"{what} of {n * dt.itemsize} bytes from a {self.max_bytes}-byte budget "
                              "(more than the file holds)")


def _numpy_globals(lim: _Limits) -> dict[tuple[str, str], Any]:
    class NDArrayToken:
        """Stands in for ``numpy.ndarray``: it may only be handed to ``_reconstruct``, never called (a direct call
        allocates an array of any shape without data)."""

        def __new__(cls, *args, **kwargs):
            raise lim.refuse("a direct numpy.ndarray(...) call (allocates without data)")

    def reconstruct(subtype, shape, dtype):
        if subtype is not NDArrayToken:
            raise lim.refuse(f"_reconstruct of {subtype!r}; only plain numpy arrays are loaded")
        dt = lim.check_dtype(np.dtype(dtype))
        lim.check_size(shape, dt, "an array")
        return _RECONSTRUCT(np.ndarray, shape, dt)

    def make_dtype(*args, **kwargs):
        try:
            dt = np.dtype(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise lim.refuse(f"a bad numpy dtype {args!r} ({e})") from None
        lim.check_dtype(dt)
        if dt.itemsize > lim.max_bytes:
            raise lim.refuse(f"a numpy dtype of {dt.itemsize} bytes per item")
        return dt

    def scalar(dtype, data=None, *rest):
        lim.check_dtype(np.dtype(dtype))
        return _SCALAR(dtype, data, *rest) if data is not None else _SCALAR(dtype)

    def frombuffer(buf, dtype, shape, order):
        dt = lim.check_dtype(np.dtype(dtype))
        lim.check_size(shape, dt, "an array")
        return _FROMBUFFER(buf, dt, shape, order)

    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): NDArrayToken, ("numpy", "dtype"): make_dtype}
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        out[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{core}.multiarray", "scalar")] = scalar
        out[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return out


def _builtin_globals(lim: _Limits, names: Iterable[str]) -> dict[tuple[str, str], Any]:
    def sized(ctor: Callable) -> Callable:
        def build(*args):
            if args and isinstance(args[0], (int, np.integer)) and not isinstance(args[0], bool):
                raise lim.refuse(f"{ctor.__name__}({int(args[0])}): a size, not data")
            return ctor(*args)
        return build

    def encode(obj, encoding="utf-8", errors="strict"):
        if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
            raise lim.refuse(f"_codecs.encode with codec {encoding!r}")
        return codecs.encode(obj, encoding, errors)

    table = {"list": list, "dict": dict, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int,
             "float": float, "complex": complex, "str": str, "bool": bool,
             "bytes": sized(bytes), "bytearray": sized(bytearray)}
    out: dict[tuple[str, str], Any] = {}
    for name in names:
        for module in ("builtins", "__builtin__"):
            out[(module, name)] = table[name]
    out[("_codecs", "encode")] = encode
    return out


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, *, encoding: str, allowed: dict[tuple[str, str], Any], lim: _Limits) -> None:
        super().__init__(f, encoding=encoding)
        self._allowed = allowed
        self._lim = lim

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise self._lim.refuse(f"it refers to {module}.{name}, which is not allowed (only numpy arrays and "
                                   "builtin containers are loaded, so no code runs)") from None


def safe_load(f: BinaryIO, *, path: str, encoding: str = "latin1", builtins: Iterable[str] = (),
              ordered_dict: bool = False, max_bytes: int | None = None) -> Any:
    """Unpickle ``f`` with numpy arrays, the named builtins and (optionally) OrderedDict allowed.

    Args:
        f: the open file, at the start of the pickle.
        path: the file's name, for messages.
        encoding: how Python 2 ``str`` is read (``latin1`` maps bytes losslessly; ``bytes`` keeps them bytes).
        builtins: builtin constructor names to allow (``list``, ``dict``, ``tuple``, ``bytes``, ...).
        ordered_dict: allow ``collections.OrderedDict`` (Paddle's state dicts).
        max_bytes: the most one array may hold; default the file's size (an array's data comes from the file).

    Raises:
        RefusedPickle: a global outside the allow-list, or an allocation beyond the budget.
        Other exceptions of ``pickle``: garbage (the caller turns them into its one-line error).
    """
    if max_bytes is None:
        try:
            max_bytes = os.fstat(f.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            here = f.tell()
            max_bytes = f.seek(0, os.SEEK_END)
            f.seek(here)
    lim = _Limits(path, int(max_bytes))
    allowed = {**_numpy_globals(lim), **_builtin_globals(lim, builtins)}
    if ordered_dict:
        allowed[("collections", "OrderedDict")] = OrderedDict
    return _Unpickler(f, encoding=encoding, allowed=allowed, lim=lim).load()


__all__ = ["RefusedPickle", "safe_load"]
