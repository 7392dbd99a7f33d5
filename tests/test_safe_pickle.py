"""safe_pickle: allow-listed constructors, each bounded by what the file holds.

Every hostile pickle here is tiny; without the bounds each would allocate gigabytes. They run in a subprocess under
a 1 GiB address-space limit, so a regression fails the test (MemoryError / killed) instead of the machine.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest

from attncluster.data.safe_pickle import RefusedPickle, safe_load

ALL = ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "int", "float", "complex", "str", "bool")


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_int(n: int) -> bytes:
    return b"I" + str(n).encode() + b"\n"


def reduce_call(module: str, name: str, *args: bytes) -> bytes:
    """Protocol-0 opcodes for ``module.name(*args)``: GLOBAL, MARK, args, TUPLE, REDUCE."""
    return op_global(module, name) + b"(" + b"".join(args) + b"tR"


HOSTILE = {
    # 38 bytes or so each; the first is the case.
    "bytearray(size)": reduce_call("builtins", "bytearray", op_int(10**10)) + b".",
    "bytes(size)": reduce_call("__builtin__", "bytes", op_int(10**10)) + b".",
    "array of 10**10 bytes": reduce_call("numpy.core.multiarray", "_reconstruct", op_global("numpy", "ndarray"),
                                         b"(" + op_int(10**10) + b"t", b"S'b'\n") + b".",
    "object dtype": reduce_call("numpy", "dtype", b"S'O8'\n") + b".",
    "huge dtype": reduce_call("numpy", "dtype", b"S'V1000000000000'\n") + b".",
    "calling ndarray": reduce_call("numpy", "ndarray", b"(" + op_int(10**5) + op_int(10**5) + b"t") + b".",
    "codec other than latin1": reduce_call("_codecs", "encode", b"S'x'\n", b"S'zlib'\n") + b".",
}


def test_tiny_pickles_cannot_allocate_gigabytes(tmp_path):
    paths = {}
    for i, (case, data) in enumerate(sorted(HOSTILE.items())):
        paths[case] = str(tmp_path / f"evil{i}.pkl")
        (tmp_path / f"evil{i}.pkl").write_bytes(data)
        assert len(data) < 120
    # One subprocess for all cases (imports cost seconds), under a 1 GiB address-space limit.
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from attncluster.data.safe_pickle import RefusedPickle, safe_load
        for case, path in {paths!r}.items():
            try:
                with open(path, "rb") as f:
                    safe_load(f, path="evil.pkl", builtins={ALL!r})
                print(case, "| LOADED")
            except RefusedPickle as e:
                print(case, "| REFUSED", e)
            except BaseException as e:
                print(case, "|", type(e).__name__)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = dict(line.split(" | ", 1) for line in r.stdout.splitlines())
    assert sorted(lines) == sorted(HOSTILE), (r.stdout, r.stderr[-500:])
    for case, outcome in lines.items():
        assert outcome.startswith("REFUSED evil.pkl: refusing to unpickle:"), (case, outcome)


def test_real_data_still_loads_at_every_protocol():
    """What the reference's shards and Paddle's weights hold round-trips, at protocols 0-5, py2-style or not."""
    obj = [{"video": b"abc", "feature": np.arange(12, dtype=np.uint8).reshape(3, 4),
            "audio": np.zeros((3, 2), dtype=np.uint8), "label": [1, 5], "nframes": np.int64(3),
            "extra": (1.5, 2j, True, frozenset({1}), {2}, bytearray(b"xy"), "s")},
           OrderedDict(w=np.ones((2, 2), np.float32))]
    for protocol in range(6):
        data = pickle.dumps(obj, protocol=protocol)
        got = safe_load(io.BytesIO(data), path="ok.pkl", builtins=ALL, ordered_dict=True)
        assert got[0]["video"] == b"abc" and got[0]["label"] == [1, 5] and got[0]["extra"] == obj[0]["extra"]
        np.testing.assert_array_equal(got[0]["feature"], obj[0]["feature"])
        np.testing.assert_array_equal(got[1]["w"], obj[1]["w"])


def test_globals_outside_the_allow_list_are_refused_and_never_called(tmp_path):
    marker = tmp_path / "ran"
    data = reduce_call("os", "system", f"S'touch {marker}'\n".encode()) + b"."
    with pytest.raises(RefusedPickle, match="refers to os.system, which is not allowed"):
        safe_load(io.BytesIO(data), path="evil.pkl", builtins=ALL)
    assert not marker.exists()
    # A builtin the caller did not allow is refused too.
    with pytest.raises(RefusedPickle, match="__builtin__.list"):
        safe_load(io.BytesIO(pickle.dumps([1], protocol=0).replace(b"(lp0", b"c__builtin__\nlist\n(tR", 1)),
                  path="x.pkl", builtins=())
