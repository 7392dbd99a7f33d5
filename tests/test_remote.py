"""Remote data through fsspec URLs: ``memory://`` (fsspec's in-process filesystem), ``file://``, and ``http://`` from
a server on 127.0.0.1 started by the test (no external network).

The expectation everywhere is independent of the remote code path: the same bytes read from local files give the
same shard lists, the same ``inspect`` lines, the same evaluation metrics and the same trained weights.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest
import torch

from attncluster.checkpoint import load_checkpoint
from attncluster.config import load_config
from attncluster.data.paths import expand_paths
from attncluster.errors import DataError
from attncluster.evaluate import evaluate
from attncluster.inspect_data import inspect
from attncluster.train import fit
from conftest import tiny_overrides

quiet = lambda msg: None  # noqa: E731


def local_shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.tfrecord"))


def inspect_lines(paths: list[str]) -> tuple[list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    assert inspect(paths, out=out, err=err) == 0
    return out.getvalue().splitlines(), err.getvalue()


def train(data_overrides: dict, tiny_data: Path, run_dir: Path, **extra) -> tuple[dict, dict]:
    """One epoch with validation; returns (validation metrics, last checkpoint)."""
    values = {"train.epochs": 1, **data_overrides, **extra}
    metrics = fit(load_config(None, tiny_overrides(tiny_data, **values)), run_dir=run_dir, device="cpu", log=quiet)
    return metrics, load_checkpoint(run_dir / "checkpoints" / "last.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] > 0
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


@pytest.fixture(scope="module")
def local_run(tiny_data, tmp_path_factory):
    """The reference: training on the local files (0 and 2 DataLoader workers)."""
    out = {}
    for workers in (0, 2):
        run = tmp_path_factory.mktemp(f"local_run{workers}")
        out[workers] = (*train({}, tiny_data, run, **{"data.num_workers": workers}), run)
    return out


# --------------------------------------------------------------------------------------------------- memory://


@pytest.fixture
def memory(tiny_data):
    """tiny_data's shards copied into fsspec's memory filesystem under a fresh root; yields the root URL."""
    fs = fsspec.filesystem("memory")
    root = f"/attncluster-test-{uuid.uuid4().hex[:8]}"
    for split in ("train", "valid"):
        for f in sorted((tiny_data / split).iterdir()):
            fs.pipe(f"{root}/{split}/{f.name}", f.read_bytes())
    # relative lines resolve against the list file's folder; absolute URLs stay as they are
    fs.pipe(f"{root}/valid.list", b"# validation shards\nvalid/validate0000.tfrecord\n")
    fs.pipe(f"{root}/train.list", "".join(f"memory://{root}/train/{Path(p).name}\n"
                                          for p in local_shards(tiny_data / "train")).encode())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def _memory_names(urls: list[str]) -> list[str]:
    fs = fsspec.filesystem("memory")
    assert all(u.startswith("memory://") for u in urls)
    return [fs._strip_protocol(u) for u in urls]


def test_memory_globs_directories_and_list_files_resolve(memory, tiny_data):
    root = memory[len("memory://"):]
    names = [Path(p).name for p in local_shards(tiny_data / "train")]
    expected = [f"{root}/train/{n}" for n in names]
    assert _memory_names(expand_paths([f"{memory}/train/*.tfrecord"])) == expected
    assert _memory_names(expand_paths([f"{memory}/train"])) == expected  # vocabulary.csv is not a shard
    assert _memory_names(expand_paths([f"{memory}/train.list"])) == expected
    assert expand_paths([f"{memory}/valid.list"]) == [f"{memory}/valid/validate0000.tfrecord"]
    assert _memory_names(expand_paths([f"{memory}/train/{names[1]}", f"{memory}/valid.list"])) == [
        expected[1], f"{root}/valid/validate0000.tfrecord"]
    with pytest.raises(DataError, match="matches no files"):
        expand_paths([f"{memory}/train/*.nothing"])
    with pytest.raises(DataError, match="matches no files"):
        expand_paths([f"{memory}/absent.tfrecord"])


def test_inspect_over_memory_urls_equals_local(memory, tiny_data):
    remote = inspect_lines([f"{memory}/train/*.tfrecord", f"{memory}/valid.list"])
    local = inspect_lines([str(tiny_data / "train"), str(tiny_data / "valid")])
    assert remote == local
    assert len(remote[0]) == 96 + 40


def test_training_and_eval_over_memory_urls_equal_local(memory, tiny_data, local_run, tmp_path):
    ref_metrics, ref_ckpt, ref_run = local_run[0]
    metrics, ckpt = train({"data.train": f"{memory}/train/*.tfrecord", "data.valid": f"{memory}/valid.list"},
                          tiny_data, tmp_path / "run")
    assert_same_weights(ckpt, ref_ckpt)
    assert metrics == ref_metrics and metrics["num_videos"] == 40

    cfg = load_config(ref_run / "config.yaml")
    weights = str(ref_run / "checkpoints" / "last.pt")
    remote = evaluate(cfg, weights, data=[f"{memory}/valid.list"], device="cpu", log=quiet)
    assert remote == evaluate(cfg, weights, data=[str(tiny_data / "valid")], device="cpu", log=quiet)


def test_missing_memory_shard_in_a_list_is_a_data_error(memory):
    fsspec.filesystem("memory").pipe(f"{memory[len('memory://'):]}/broken.list", b"train/nope.tfrecord\n")
    with pytest.raises(DataError, match=r"broken\.list: line 1: .*nope\.tfrecord matches no files"):
        inspect_lines([f"{memory}/broken.list"])


# ----------------------------------------------------------------------------------------------------- file://


def test_file_urls_resolve_like_local_paths(tiny_data, tmp_path):
    shards = local_shards(tiny_data / "train")
    assert expand_paths([f"file://{tiny_data}/train/*.tfrecord"]) == shards
    assert expand_paths([f"file://{tiny_data}/train"]) == shards
    (tmp_path / "train.list").write_text("".join(f"{os.path.relpath(p, tmp_path)}\n" for p in shards))
    assert [os.path.normpath(p) for p in expand_paths([f"file://{tmp_path}/train.list"])] == shards
    assert inspect_lines([f"file://{tiny_data}/valid/validate0000.tfrecord"]) == inspect_lines(
        [str(tiny_data / "valid")])


# ------------------------------------------------------------------------------------------------------- http://


class _RangeHandler(SimpleHTTPRequestHandler):
    """http.server's file handler plus single byte-range requests (``Range: bytes=a-b``), as object stores serve."""

    requests: list[tuple[str, str, str | None]] = []
    range_bytes: dict[str, int] = {}  # path -> bytes sent in answer to range requests (the data reads)

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        type(self).requests.append((self.command, self.path, rng))
        path = self.translate_path(self.path)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (rng or "").strip())
        if m is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return None
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        type(self).range_bytes[self.path] = type(self).range_bytes.get(self.path, 0) + len(data)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that only probe a file (exists, isdir) hang up mid-transfer; that is fine


class HttpRoot(str):
    """The server's base URL (a str), with ``.dir``: the local folder it serves."""

    def __new__(cls, base: str, folder: Path):
        obj = super().__new__(cls, base)
        obj.dir = folder
        return obj


@pytest.fixture(scope="module")
def http_root(tiny_data, tmp_path_factory):
    """tiny_data served from http://127.0.0.1:PORT/ with list files of relative names and of absolute URLs."""
    pytest.importorskip("aiohttp", reason="fsspec's http filesystem needs aiohttp (pip install aiohttp)")
    root = tmp_path_factory.mktemp("http_root")
    for split in ("train", "valid"):
        shutil.copytree(tiny_data / split, root / split)
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    (root / "train.list").write_text("".join(f"train/{Path(p).name}\n" for p in local_shards(root / "train")))
    (root / "valid.list").write_text(f"{base}/valid/validate0000.tfrecord\n")
    yield HttpRoot(base, root)
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_http_list_files_and_explicit_urls_resolve(http_root, tiny_data):
    urls = [f"{http_root}/train/{Path(p).name}" for p in local_shards(tiny_data / "train")]
    assert expand_paths([f"{http_root}/train.list"]) == urls
    assert expand_paths([f"{http_root}/valid.list", urls[2]]) == [f"{http_root}/valid/validate0000.tfrecord", urls[2]]
    with pytest.raises(DataError, match="matches no files"):
        expand_paths([f"{http_root}/train/absent.tfrecord"])
    assert inspect_lines([f"{http_root}/train.list"]) == inspect_lines([str(tiny_data / "train")])


def test_training_and_eval_over_http_equal_local(http_root, tiny_data, local_run, tmp_path):
    ref_metrics, ref_ckpt, ref_run = local_run[2]
    _RangeHandler.requests.clear()
    # two DataLoader workers: each forked worker reads over its own connections
    metrics, ckpt = train({"data.train": f"{http_root}/train.list", "data.valid": f"{http_root}/valid.list"},
                          tiny_data, tmp_path / "run", **{"data.num_workers": 2})
    assert_same_weights(ckpt, ref_ckpt)
    assert metrics == ref_metrics
    # shards were read with byte-range requests (streamed), not downloaded up front
    ranged = [path for method, path, rng in _RangeHandler.requests if method == "GET" and rng]
    assert {Path(p).name for p in ranged} >= {Path(p).name for p in local_shards(tiny_data / "train")}

    cfg = load_config(ref_run / "config.yaml")
    weights = str(ref_run / "checkpoints" / "last.pt")
    remote = evaluate(cfg, weights, data=[f"{http_root}/valid.list"], device="cpu", log=quiet)
    assert remote == evaluate(cfg, weights, data=[str(tiny_data / "valid")], device="cpu", log=quiet)
    assert remote["num_videos"] == 40


def test_shuffled_reads_over_http_fetch_each_byte_about_once(http_root, monkeypatch):
    """Training reads records in a shuffled order; over HTTP(S) (as over S3 and GCS) each read is a range request.
    A shard of many read blocks must still cost about one transfer of its bytes per epoch, not a block per record.
    (The read block is made small here so that a small shard spans many blocks, as real ~130 MB shards do.)"""
    from attncluster.data import paths
    from attncluster.data.dataset import VideoDataset
    from attncluster.data.synth import write_synthetic

    monkeypatch.setattr(paths, "READ_BUFFER", 1 << 18)
    [shard] = write_synthetic(http_root.dir / "big", videos=12, classes=3, shards=1, seed=2, min_frames=150,
                              max_frames=200)
    size = os.path.getsize(shard)
    assert size > 6 * paths.READ_BUFFER
    name = f"/big/{Path(shard).name}"
    _RangeHandler.range_bytes.clear()
    ds = VideoDataset(f"{http_root}{name}", modalities={"rgb": 1024, "audio": 128}, num_classes=3, seg_num=4,
                      train=True, seed=0)
    ds.set_epoch(0)
    assert len([s["id"] for s in ds]) == 12
    fetched = _RangeHandler.range_bytes[name]
    assert size <= fetched <= 1.1 * size, f"read {fetched / size:.1f}x the shard's bytes"
