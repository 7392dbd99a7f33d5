"""outputs.py: the one writer (whole or nothing, no symlink followed, one error naming the path, stale temporary
files of killed runs removed but never a live writer's) and the one Kaggle CSV formatter."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import resource
import signal

import pytest

from attncluster.errors import FileError
from attncluster.outputs import (atomic_output, atomic_path, atomic_write_bytes, check_output, kaggle_row,
                                 remove_stale, scratch_file, target_of_temporary, write_kaggle_csv)

HOSTILE_IDS = ["plain", "a,b", 'say "hi"', "cr\rinside", "lf\ninside", "crlf\r\nx", " lead", "=1+2", ""]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Files may not grow past ``nbytes``: a write beyond fails with EFBIG, as a full disk fails with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_a_complete_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "sub" / "r.txt"
    with atomic_output(out) as f:
        f.write("a\r\nb\n")
    assert out.read_bytes() == b"a\r\nb\n"  # newline="": written as given
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # what open() gives, not mkstemp's 0600


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, error):
    out = tmp_path / "r.txt"
    out.write_text("old")
    with pytest.raises(error):
        with atomic_output(out) as f:
            f.write("new, half")
            raise error()
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.txt"
    out.symlink_to(victim)
    (tmp_path / "out.txt.tmp").symlink_to(victim)  # the old fixed temporary name, planted
    atomic_write_bytes(out, b"result")
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and out.read_bytes() == b"result"


def test_a_full_disk_is_one_file_error_naming_the_target(tmp_path):
    out = tmp_path / "big.bin"
    with file_size_limit(1000), pytest.raises(FileError) as e:
        atomic_write_bytes(out, b"x" * 100_000)
    assert str(e.value).startswith(f"{out}: cannot write: ") and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    with file_size_limit(1000), pytest.raises(FileError, match=rf"^{out}: cannot write"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"y" * 100_000)
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_takes_only_our_dead_temporaries(tmp_path):
    out = tmp_path / "p.jsonl"
    dead = [tmp_path / ".p.jsonl.k2j4h5g.tmp", tmp_path / ".p.jsonl.0123456789ab.part0of2"]
    kept = [tmp_path / ".p.jsonl.notes", tmp_path / "p.jsonl.tmp", tmp_path / ".q.jsonl.abc.tmp",
            tmp_path / ".p.jsonlx.abc.tmp", tmp_path / "p.jsonl"]
    for p in dead + kept:
        p.write_text("x")
    with atomic_output(out) as live:  # a live writer of the same output: its locked temporary file stays
        live_tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".p.jsonl.") and p.name.endswith(".tmp")
                    and p not in dead]
        assert len(live_tmp) == 1
        removed = remove_stale(out, extra=r"\.part\d+of\d+")
        assert sorted(removed) == sorted(dead)
        assert live_tmp[0].exists()
        live.write("new")
    assert all(p.exists() for p in kept[:-1]) and out.read_text() == "new"


def test_the_target_of_a_temporary_file_is_read_from_its_name(tmp_path):
    assert target_of_temporary(".a.b.json.x_1y.tmp") == "a.b.json"
    assert [target_of_temporary(n) for n in (".x.tmp", "a.json.xy.tmp", ".a.json", ".tmp", "..x.tmp")] == [None] * 5
    with atomic_output(tmp_path / "r.csv"):
        (live,) = tmp_path.iterdir()
        assert target_of_temporary(live.name) == "r.csv"


def test_check_output_removes_a_killed_runs_temporary(tmp_path):
    stale = tmp_path / ".r.csv.abcd1234.tmp"
    stale.write_text("half a file")
    check_output(tmp_path / "r.csv")
    assert not stale.exists()


def test_a_scratch_file_is_locked_while_used_and_always_removed(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError):
        with scratch_file(out, "fp32.") as s:
            s.write_bytes(b"intermediate")
            assert remove_stale(out) == []  # in use
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_kaggle_csv_round_trips_hostile_ids_with_crlf():
    records = [{"id": vid, "classes": [3, 1], "scores": [0.5, 0.25]} for vid in HOSTILE_IDS]
    buf = io.StringIO(newline="")
    assert write_kaggle_csv(buf, records) == len(HOSTILE_IDS)
    text = buf.getvalue()
    assert text.startswith("VideoId,LabelConfidencePairs\r\n") and text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    assert [r[0] for r in rows[1:]] == HOSTILE_IDS
    assert all(r[1] == "3 0.500000 1 0.250000" and len(r) == 2 for r in rows[1:])
    assert kaggle_row("v", [7], [1 / 3]) == "v,7 0.333333\r\n"
