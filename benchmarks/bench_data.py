"""Reader benchmark: videos/s for the whole per-video work on frame-level YouTube-8M shards.

The work per video, the same in every column: read the record, check both CRCs (length and payload), parse the
``tf.train.SequenceExample``, cap at 300 frames, sample ``seg_num`` = 100 frames (stratified jitter, training mode),
dequantize them to float32 and build the 3862-wide multi-hot label vector.

Columns, all in one run and each in a fresh process (so imports, pinning and peak memory do not leak between them):

* ``attncluster 1 core``: ``VideoDataset(train=True)`` iterated directly, pinned to one core.
* ``tf.data 1 core``: ``TFRecordDataset`` + ``tf.io.parse_single_sequence_example`` + ``decode_raw`` + the same
  sampling, dequantization and multi-hot, pinned to one core, intra/inter-op parallelism 1, a private thread pool of
  1; per element and batched by 64 (which amortises the Python iteration over tf.data's C++ pipeline).
* ``tfrecord pkg 1 core``: the third-party ``tfrecord`` package's ``sequence_loader`` (protobuf parse; it does *not*
  check CRCs, so it does less work) + the same sampling in numpy.
* ``DataLoader N workers``: ``make_loader(VideoDataset(...), 64, num_workers=N)``, not pinned.

Ratios are taken per round (every column runs once per round, rounds interleave the columns) and the median of the
per-round ratios is reported: the machine is shared and noisy, absolute numbers drift. Shards are read from the page
cache (they were just written), so this measures CPU work, not the disk.

Also: peak memory of the reader over a small shard and a 4x larger one (RSS high-water mark and tracemalloc peak,
each over the baseline after set-up), a per-stage breakdown of one video's work, and a cProfile of the one-core
reader.

Usage::

    python benchmarks/bench_data.py            # default: 3000 videos in 8 shards, ~5 minutes on 2 cores
    python benchmarks/bench_data.py --quick    # smoke run, ~1 minute

TensorFlow and ``tfrecord`` come from the ``bench`` extra (``pip install -e '.[bench]'``); without them their
columns are skipped with a message. They cannot share one process (both register ``tensorflow.BytesList`` with
protobuf), which is another reason every column runs in its own process.

``bench_train.py`` imports :func:`ensure_frame_shards` and :func:`machine_info` from here.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

MODALITIES = {"rgb": 1024, "audio": 128}
RESULT_TAG = "@@RESULT "


# --------------------------------------------------------------------------------------------------------------------
# Helpers shared with the other benchmarks


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """What the figures were measured on: CPU model, cores, torch/numpy/python versions, GPU if any, date."""
    import numpy as np
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def default_cache() -> str:
    return os.environ.get("ATTNCLUSTER_BENCH_CACHE", os.path.join(tempfile.gettempdir(), "attncluster-bench"))


def _write_part(job: tuple) -> list[str]:
    from attncluster.data.synth import write_synthetic

    out_dir, videos, classes, shards, seed, min_frames, max_frames, prefix = job
    return write_synthetic(out_dir, videos=videos, classes=classes, shards=shards, seed=seed, min_frames=min_frames,
                           max_frames=max_frames, prefix=prefix)


def ensure_frame_shards(out_dir: str, *, videos: int, shards: int, classes: int = 3862, seed: int = 0,
                        min_frames: int = 5, max_frames: int = 300, procs: int = 1, log=print) -> list[str]:
    """Synthetic frame-level shards (real schema) in ``out_dir``, written once and reused while the arguments match.

    With ``procs > 1`` the shards are written by that many processes, each a :func:`write_synthetic` call with its
    own prefix and seed (the dataset differs from a one-process write, its statistics do not).
    """
    spec = {"videos": videos, "shards": shards, "classes": classes, "seed": seed, "min_frames": min_frames,
            "max_frames": max_frames, "procs": procs}
    marker = os.path.join(out_dir, "COMPLETE.json")
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("spec") == spec and all(os.path.exists(p) for p in done["paths"]):
            return done["paths"]
    procs = max(1, min(procs, shards))
    jobs = []
    for j in range(procs):
        part_shards = (j + 1) * shards // procs - j * shards // procs
        part_videos = (j + 1) * videos // procs - j * videos // procs
        prefix = "train" if procs == 1 else f"train{j:02d}_"
        jobs.append((out_dir, part_videos, classes, part_shards, seed * 1000 + j, min_frames, max_frames, prefix))
    t0 = time.perf_counter()
    log(f"writing {videos} synthetic videos ({min_frames}..{max_frames} frames, {classes} classes) in {shards} shards "
        f"to {out_dir} with {procs} process(es) ...")
    if procs == 1:
        parts = [_write_part(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_write_part, jobs)
    paths = [p for part in parts for p in part]
    size = sum(os.path.getsize(p) for p in paths)
    log(f"  wrote {size / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f}s")
    with open(marker, "w") as f:
        json.dump({"spec": spec, "paths": paths, "bytes": size}, f)
    return paths


def run_child(script: str, spec: dict, timeout: float = 900) -> dict:
    """Run ``script --child SPEC`` in a fresh interpreter; return its result dict (``{"error": ...}`` on failure)."""
    cmd = [sys.executable, script, "--child", json.dumps(spec)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-6:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def report(result: dict, json_path: str | None) -> None:
    """Print a benchmark's result as one JSON line, and write it to ``json_path`` when given."""
    line = json.dumps(result)
    print(line)
    if json_path:
        with open(json_path, "w") as f:
            f.write(line + "\n")


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (pastes straight into docs/benchmarks.md)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


# --------------------------------------------------------------------------------------------------------------------
# Children: each measures one column in its own process


def _pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def _timed(epochs, min_seconds: float, warmup: int, cpu=time.process_time) -> dict:
    """Consume ``epochs(e)`` (iterables of per-item video counts) for e = 0, 1, ... until ``min_seconds`` have passed
    after the first ``warmup`` videos; return the wall-clock rate over the timed part, and the CPU seconds spent per
    video (``cpu()``: this process, all its threads; plus the workers for DataLoader columns). The CPU figure is the
    robust one on a shared machine: other load stretches the wall clock, much less the CPU time of the work itself."""
    seen = 0
    start = cpu0 = None
    timed = 0
    epoch = 0
    while True:
        for count in epochs(epoch):
            seen += count
            if start is None:
                if seen >= warmup:
                    start, cpu0 = time.perf_counter(), cpu()
                continue
            timed += count
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                cpu_s = cpu() - cpu0
                return {"videos_per_s": timed / elapsed, "cpu_us_per_video": cpu_s / timed * 1e6,
                        "videos_per_cpu_s": timed / cpu_s, "videos": timed, "seconds": elapsed, "epochs": epoch + 1}
        epoch += 1


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dataset(spec: dict, paths: list[str], **kw):
    from attncluster.data.dataset import VideoDataset

    kw.setdefault("train", True)
    kw.setdefault("dequantize", True)
    return VideoDataset(paths, modalities=MODALITIES, num_classes=spec["classes"], seg_num=spec["seg_num"], seed=0,
                        **kw)


def child_ours(spec: dict) -> dict:
    _pin(spec["core"])
    import torch

    torch.set_num_threads(1)
    ds = _dataset(spec, spec["paths"])

    def epochs(e):
        ds.set_epoch(e)
        for _ in ds:
            yield 1

    return _timed(epochs, spec["min_seconds"], spec["warmup"])


def child_loader(spec: dict) -> dict:
    from attncluster.data.dataset import make_loader

    ds = _dataset(spec, spec["paths"], dequantize=spec["dequantize"])
    loader = make_loader(ds, spec["batch_size"], num_workers=spec["workers"], persistent_workers=spec["workers"] > 0)
    first = next(iter(loader))  # starts the (persistent) workers
    workers = [w.pid for w in getattr(loader._iterator, "_workers", [])]

    main_cpu = []

    def cpu():
        main_cpu.append(time.process_time())
        return main_cpu[-1] + sum(_proc_cpu(pid) for pid in workers)

    def epochs(e):
        ds.set_epoch(e + 1)
        for batch in loader:
            yield int(batch["labels"].shape[0])

    out = _timed(epochs, spec["min_seconds"], spec["warmup"], cpu=cpu)
    out["main_cpu_us_per_video"] = (main_cpu[-1] - main_cpu[0]) / out["videos"] * 1e6
    out["batch_dtype"] = str(first["rgb"].dtype).replace("torch.", "")
    return out


def _reference_samples(spec: dict, count: int) -> list[dict]:
    """The first ``count`` videos as VideoDataset yields them in eval mode (stratum centres, file order)."""
    ds = _dataset(spec, spec["paths"][:1], train=False, shuffle=False)
    out = []
    for s in ds:
        out.append({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in s.items()})
        if len(out) == count:
            break
    return out


def _same(ref: list[dict], got: list[dict]) -> bool:
    import numpy as np

    return len(ref) == len(got) and all(
        r["id"] == g["id"] and r["num_frames"] == g["num_frames"]
        and all(np.array_equal(r[k], g[k]) for k in (*MODALITIES, "labels")) for r, g in zip(ref, got))


def child_tfdata(spec: dict) -> dict:
    _pin(spec["core"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from attncluster.data.records import DEQUANT_BIAS, DEQUANT_SCALE, MAX_FRAMES

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    classes, seg_num = spec["classes"], spec["seg_num"]
    context_features = {"id": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}
    sequence_features = {m: tf.io.FixedLenSequenceFeature([], tf.string) for m in MODALITIES}

    def make_parse(jitter: bool):
        def parse(record):
            context, seq = tf.io.parse_single_sequence_example(record, context_features=context_features,
                                                               sequence_features=sequence_features)
            frames = {m: tf.reshape(tf.io.decode_raw(seq[m], tf.uint8), [-1, dim])[:MAX_FRAMES]
                      for m, dim in MODALITIES.items()}
            n = tf.reduce_min(tf.stack([tf.shape(x)[0] for x in frames.values()]))
            # The same stratified jitter as attncluster.data.sampling.sample_indices.
            if jitter:
                u = tf.random.uniform([seg_num], dtype=tf.float64)
            else:
                u = tf.fill([seg_num], tf.constant(0.5, tf.float64))
            idx = tf.cast(tf.floor((tf.range(seg_num, dtype=tf.float64) + u) * tf.cast(n, tf.float64) / seg_num),
                          tf.int32)
            idx = tf.minimum(idx, n - 1)
            out = {"id": context["id"], "num_frames": n}
            for m, x in frames.items():
                out[m] = tf.cast(tf.gather(x, idx), tf.float32) * DEQUANT_SCALE + DEQUANT_BIAS
            labels = context["labels"].values
            out["labels"] = tf.minimum(tf.scatter_nd(labels[:, None], tf.ones_like(labels, tf.float32), [classes]), 1.0)
            return out
        return parse

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1

    # Same work: the eval-mode (centre) samples must equal attncluster's, bit for bit.
    check = tf.data.TFRecordDataset(spec["paths"][:1]).map(make_parse(False)).take(8).with_options(options)
    got = [{"id": x["id"].numpy().decode(), "num_frames": int(x["num_frames"]),
            **{k: x[k].numpy() for k in (*MODALITIES, "labels")}} for x in check]
    verified = _same(_reference_samples(spec, 8), got)

    batch = spec.get("batch")
    ds = tf.data.TFRecordDataset(spec["paths"]).map(make_parse(True))
    if batch:
        ds = ds.batch(batch)
    ds = ds.with_options(options)

    def epochs(e):
        for x in ds:
            yield int(x["num_frames"].shape[0]) if batch else 1

    out = _timed(epochs, spec["min_seconds"], spec["warmup"])
    out.update(verified=verified, tensorflow=tf.__version__)
    return out


def child_tfrecord(spec: dict) -> dict:
    _pin(spec["core"])
    import numpy as np
    import torch
    from tfrecord.reader import sequence_loader

    from attncluster.data.records import MAX_FRAMES, dequantize
    from attncluster.data.sampling import sample_indices

    torch.set_num_threads(1)
    classes, seg_num = spec["classes"], spec["seg_num"]

    def videos(paths, rng):
        for path in paths:
            for context, feats in sequence_loader(path, None, context_description={"id": "byte", "labels": "int"},
                                                  features_description={m: "byte" for m in MODALITIES}):
                frames = {m: np.frombuffer(b"".join(feats[m][:MAX_FRAMES]), np.uint8).reshape(-1, dim)
                          for m, dim in MODALITIES.items()}
                n = min(x.shape[0] for x in frames.values())
                idx = sample_indices(n, seg_num, rng)
                sample = {"id": context["id"].decode(), "num_frames": n}
                for m, x in frames.items():
                    sample[m] = torch.from_numpy(dequantize(x[idx]))
                multi_hot = np.zeros(classes, np.float32)
                multi_hot[np.asarray(context["labels"], np.int64)] = 1.0
                sample["labels"] = torch.from_numpy(multi_hot)
                yield sample

    got = []
    for s in videos(spec["paths"][:1], None):
        got.append({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in s.items()})
        if len(got) == 8:
            break
    verified = _same(_reference_samples(spec, 8), got)
    rng = np.random.default_rng(0)

    def epochs(e):
        for _ in videos(spec["paths"], rng):
            yield 1

    out = _timed(epochs, spec["min_seconds"], spec["warmup"])
    out.update(verified=verified, crc_checked=False)
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child_memory(spec: dict) -> dict:
    """Peak memory of one pass of the one-core reader over one shard, above the baseline after imports and set-up."""
    import gc
    import tracemalloc

    _pin(spec["core"])
    import torch

    import attncluster.data.yt8m  # noqa: F401  (imported on first use otherwise: not reader memory)

    torch.set_num_threads(1)
    ds = _dataset(spec, spec["paths"])
    gc.collect()
    out = {"shard_mib": sum(os.path.getsize(p) for p in spec["paths"]) / 2**20}
    if spec["tracemalloc"]:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        n = sum(1 for _ in ds)
        out["tracemalloc_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    else:
        rss0 = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the VmHWM high-water mark to the current RSS
            out["hwm_reset"] = True
        except OSError:
            out["hwm_reset"] = False  # then VmHWM is the lifetime peak (imports included): an upper bound
        n = sum(1 for _ in ds)
        out["rss_before_mib"] = rss0 / 2**10
        out["rss_peak_mib"] = (_status_kib("VmHWM") - rss0) / 2**10
    out["videos"] = n
    return out


def child_stages(spec: dict) -> dict:
    """Mean CPU microseconds per video of each stage, done by hand with the library's functions, next to the whole
    VideoDataset per-video CPU time measured in the same process."""
    _pin(spec["core"])
    import numpy as np
    import torch

    from attncluster.data.records import dequantize
    from attncluster.data.sampling import sample_indices
    from attncluster.data.tfrecord import HEADER_BYTES, index_records, masked_crc32c, open_records
    from attncluster.data.yt8m import parse_yt8m

    torch.set_num_threads(1)
    classes, seg_num = spec["classes"], spec["seg_num"]
    rng = np.random.default_rng(0)
    clock = time.process_time  # CPU time: robust to other load on the machine (costs ~1 us per call)
    totals = dict.fromkeys(["read", "crc", "parse", "sample_indices", "gather", "dequantize", "multi_hot"], 0.0)
    n = 0
    frames = 0
    for path in spec["paths"]:
        with open_records(path) as f:
            index = index_records(f, path)
            for offset, length in index.tolist():
                t0 = clock()
                buf = np.empty(HEADER_BYTES + length + 4, np.uint8)
                f.seek(offset)
                f.readinto(buf)
                view = memoryview(buf)
                t1 = clock()
                ok = (masked_crc32c(view[:8]) == int.from_bytes(view[8:12], "little")
                      and masked_crc32c(view[12:12 + length]) == int.from_bytes(view[12 + length:], "little"))
                t2 = clock()
                video = parse_yt8m(view[12:12 + length], modalities=MODALITIES, num_classes=classes)
                t3 = clock()
                idx = sample_indices(video.num_frames, seg_num, rng)
                t4 = clock()
                picked = [video.features[m][idx] for m in MODALITIES]
                t5 = clock()
                tensors = [torch.from_numpy(dequantize(x)) for x in picked]
                t6 = clock()
                multi_hot = np.zeros(classes, np.float32)
                multi_hot[video.labels] = 1.0
                torch.from_numpy(multi_hot)
                t7 = clock()
                assert ok and tensors
                for k, (a, b) in zip(totals, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7)]):
                    totals[k] += b - a
                n += 1
                frames += video.num_frames
    stages = {k: v / n * 1e6 for k, v in totals.items()}
    # The whole thing through VideoDataset, same process, same videos.
    ds = _dataset(spec, spec["paths"])
    t0 = clock()
    m = sum(1 for _ in ds)
    whole = (clock() - t0) / m * 1e6
    return {"stages_us": stages, "sum_us": sum(stages.values()), "dataset_us": whole, "videos": n,
            "mean_frames": frames / n}


def child_profile(spec: dict) -> dict:
    import cProfile
    import pstats

    _pin(spec["core"])
    import torch

    torch.set_num_threads(1)
    ds = _dataset(spec, spec["paths"])
    next(iter(ds))
    prof = cProfile.Profile(time.process_time)  # CPU time, as the other figures
    n = 0
    prof.enable()
    for _ in ds:
        n += 1
        if n >= spec["videos"]:
            break
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        where = f"{os.path.basename(file)}:{line}({func})" if file != "~" else func
        rows.append({"function": where, "calls_per_video": nc / n, "tottime_us": tt / n * 1e6,
                     "cumtime_us": ct / n * 1e6, "pct": 100 * tt / total})
    rows.sort(key=lambda r: -r["tottime_us"])
    return {"videos": n, "total_us_per_video": total / n * 1e6, "top": rows[:spec["top"]]}


def child_collate(spec: dict) -> dict:
    """What batching costs in a DataLoader worker: the one-core reader with no collate, with torch.stack into
    ordinary memory, and with torch.stack into a fresh shared-memory segment (what default_collate does inside a
    worker, so that the batch can be handed to the main process), for float32 and uint8 samples."""
    import resource

    _pin(spec["core"])
    import torch

    torch.set_num_threads(1)

    def shared_stack(xs):
        out = xs[0].new(xs[0]._typed_storage()._new_shared(sum(x.numel() for x in xs))).resize_(len(xs), *xs[0].shape)
        return torch.stack(xs, 0, out=out)

    stacks = {"none": None, "plain": lambda xs: torch.stack(xs, 0), "shared memory": shared_stack}
    out = {}
    for _ in _dataset(spec, spec["paths"][:1]):  # warm-up: imports, first-use caches, page cache
        pass
    for deq in (True, False):
        for name, stack in stacks.items():
            ds = _dataset(spec, spec["paths"], dequantize=deq)
            r0, c0, n, buf = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), 0, []
            for sample in ds:
                buf.append(sample)
                n += 1
                if len(buf) == spec["batch_size"]:
                    if stack is not None:
                        batch = {k: stack([b[k] for b in buf]) for k in (*MODALITIES, "labels")}
                        del batch
                    buf = []
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            out[f"{'float32' if deq else 'uint8'}/{name}"] = {
                "cpu_us_per_video": (time.process_time() - c0) / n * 1e6,
                "sys_us_per_video": (r1.ru_stime - r0.ru_stime) / n * 1e6,
                "page_faults_per_video": (r1.ru_minflt - r0.ru_minflt) / n}
    return out


CHILDREN = {"ours": child_ours, "loader": child_loader, "tfdata": child_tfdata, "tfrecord": child_tfrecord,
            "memory": child_memory, "stages": child_stages, "profile": child_profile, "collate": child_collate}


# --------------------------------------------------------------------------------------------------------------------
# Parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small data, one round, short timings")
    p.add_argument("--videos", type=int, default=3000, help="videos in the throughput shards (default 3000)")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--classes", type=int, default=3862)
    p.add_argument("--seg-num", type=int, default=100)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts (default 1 2)")
    p.add_argument("--batch-size", type=int, default=64, help="DataLoader and tf.data batch size")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all columns; ratios are per-round medians")
    p.add_argument("--min-seconds", type=float, default=4.0, help="timed seconds per column per round")
    p.add_argument("--core", type=int, default=None, help="core for the pinned columns (default: the last usable)")
    p.add_argument("--memory-videos", type=int, default=250, help="videos in the small memory shard (large: 4x)")
    p.add_argument("--profile-videos", type=int, default=1500)
    p.add_argument("--no-tf", action="store_true", help="skip the tf.data columns")
    p.add_argument("--no-tfrecord", action="store_true", help="skip the tfrecord-package column")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-profile", action="store_true", help="skip the stage breakdown and cProfile")
    p.add_argument("--gen-procs", type=int, default=None, help="processes writing the shards (default: cores)")
    p.add_argument("--cache", default=default_cache(), help="where synthetic shards are kept between runs")
    p.add_argument("--json", default=None, help="also write the JSON result line to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.shards, args.rounds, args.min_seconds = 400, 4, 1, 1.0
        args.memory_videos, args.profile_videos = 40, 200
    if args.core is None:
        args.core = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return args


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        emit(CHILDREN[spec["kind"]](spec))
        return {}
    script = os.path.abspath(__file__)
    info = machine_info()
    load_start = os.getloadavg()
    gen_procs = args.gen_procs or info["cores_usable"]
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, numpy {info['numpy']}, "
          f"python {info['python']}")
    root = os.path.join(args.cache, f"frames-v{args.videos}-s{args.shards}-c{args.classes}")
    paths = ensure_frame_shards(root, videos=args.videos, shards=args.shards, classes=args.classes, procs=gen_procs)
    data_mib = sum(os.path.getsize(p) for p in paths) / 2**20
    base = {"classes": args.classes, "seg_num": args.seg_num, "core": args.core, "paths": paths,
            "min_seconds": args.min_seconds}

    columns: dict[str, dict] = {"attncluster 1 core": dict(base, kind="ours", warmup=64)}
    skipped: dict[str, str] = {}
    if args.no_tf:
        skipped["tf.data"] = "--no-tf"
    elif not _have("tensorflow"):
        skipped["tf.data"] = "tensorflow is not installed (pip install -e '.[bench]' or pip install tensorflow-cpu)"
    else:
        columns["tf.data 1 core"] = dict(base, kind="tfdata", warmup=64)
        columns[f"tf.data 1 core, batch {args.batch_size}"] = dict(base, kind="tfdata", batch=args.batch_size,
                                                                   warmup=2 * args.batch_size)
    if args.no_tfrecord:
        skipped["tfrecord pkg"] = "--no-tfrecord"
    elif not _have("tfrecord"):
        skipped["tfrecord pkg"] = "the tfrecord package is not installed (pip install tfrecord)"
    else:
        columns["tfrecord pkg 1 core (no CRC)"] = dict(base, kind="tfrecord", warmup=64)
    for w in args.workers:
        columns[f"DataLoader {w} worker{'s' if w > 1 else ''}"] = dict(
            base, kind="loader", workers=w, dequantize=True, batch_size=args.batch_size,
            warmup=2 * w * args.batch_size)
    wmax = max(args.workers)
    columns[f"DataLoader {wmax} workers, uint8 (training)"] = dict(
        base, kind="loader", workers=wmax, dequantize=False, batch_size=args.batch_size,
        warmup=2 * wmax * args.batch_size)
    for name, why in skipped.items():
        print(f"{name}: SKIPPED: {why}")

    runs: dict[str, list[dict]] = {name: [] for name in columns}
    for r in range(args.rounds):
        for name, spec in columns.items():
            res = run_child(script, spec)
            runs[name].append(res)
            rate = f"{res['videos_per_s']:.0f} videos/s" if "videos_per_s" in res else res["error"]
            print(f"  round {r + 1}/{args.rounds} {name}: {rate}", flush=True)
    failed = {n: rs[0]["error"] for n, rs in runs.items() if any("error" in x for x in rs)}
    for name, err in failed.items():
        print(f"{name}: FAILED: {err}")
        skipped[name] = err
        del runs[name]

    def rates(name, key="videos_per_s"):
        return [x[key] for x in runs[name]]

    def ratio(a, b, key="videos_per_s"):
        """Median over rounds of rate(a) / rate(b), measured in the same round."""
        return statistics.median(x / y for x, y in zip(rates(a, key), rates(b, key)))

    ours = "attncluster 1 core"
    tf_names = [n for n in runs if n.startswith("tf.data")]
    ref = max(tf_names, key=lambda n: statistics.median(rates(n))) if tf_names else None
    rows = []
    for name in runs:
        row = [name, f"{statistics.median(rates(name)):.0f}", f"{min(rates(name)):.0f}-{max(rates(name)):.0f}",
               f"{statistics.median(rates(name, 'cpu_us_per_video')):.0f}", f"{ratio(name, ours):.2f}"]
        if ref:
            row += [f"{ratio(name, ref):.2f}", f"{ratio(name, ref, 'videos_per_cpu_s'):.2f}"]
        rows.append(row)
    load = os.getloadavg()
    print()
    print(f"Reader throughput: {args.videos} videos ({data_mib:.0f} MiB, {args.shards} shards, 5..300 frames), "
          f"seg_num {args.seg_num}, {args.classes} classes; {args.rounds} round(s) x {args.min_seconds:g}s; "
          f"pinned columns on core {args.core}; load average {load_start[0]:.1f} at start, {load[0]:.1f} now")
    headers = ["pipeline", "videos/s (median)", "range", "CPU us/video", "vs attncluster 1 core"]
    if ref:
        headers += [f"vs {ref}", f"vs {ref} (CPU time)"]
    print(table(headers, rows))
    result: dict = {"benchmark": "data", "machine": info, "load_average": [round(load_start[0], 2), round(load[0], 2)],
                    "videos": args.videos, "shards": args.shards, "data_mib": round(data_mib, 1),
                    "rounds": args.rounds, "skipped": skipped,
                    "videos_per_s": {n: round(statistics.median(rates(n)), 1) for n in runs},
                    "cpu_us_per_video": {n: round(statistics.median(rates(n, "cpu_us_per_video")), 1) for n in runs},
                    "verified_same_work": {n: runs[n][0].get("verified") for n in runs if "verified" in runs[n][0]}}
    if ref:
        result["ours_vs_tfdata"] = round(ratio(ours, ref), 3)
        result["ours_vs_tfdata_cpu_time"] = round(ratio(ours, ref, "videos_per_cpu_s"), 3)
        result["tfdata_reference"] = ref
        wall, cpu_time = result["ours_vs_tfdata"], result["ours_vs_tfdata_cpu_time"]
        print(f"attncluster 1 core vs {ref}: {wall:.2f}x videos/s (target >= 2x: {'met' if wall >= 2 else 'MISSED'}); "
              f"{cpu_time:.2f}x videos per CPU-second" + ("" if cpu_time >= 2 else " (below 2x by CPU time: "
              "tf.data's pinned threads also wait on each other, which the wall clock counts and CPU time does not)"))
    loaders = sorted((columns[n]["workers"], n) for n in runs
                     if columns[n]["kind"] == "loader" and columns[n]["dequantize"])
    if loaders:
        w1, n1 = loaders[0]
        srows = [[w, f"{statistics.median(rates(n)):.0f}", f"{ratio(n, n1):.2f}", f"{ratio(n, n1) * w1 / w:.0%}",
                  f"{ratio(n, ours):.2f}", f"{statistics.median(rates(n, 'cpu_us_per_video')):.0f}",
                  f"{statistics.median(rates(n, 'main_cpu_us_per_video')):.0f}"]
                 for w, n in loaders]
        print()
        print(f"DataLoader scaling (float32 samples, batch {args.batch_size}, not pinned, "
              f"{info['cores_usable']} usable cores):")
        print(table(["workers", "videos/s", f"vs {w1} worker(s)", "of linear", "vs in-process 1 core",
                     "CPU us/video (main + workers)", "of which main"], srows))
        result["worker_scaling"] = {str(w): {"videos_per_s": round(statistics.median(rates(n)), 1),
                                             "speedup": round(ratio(n, n1), 3),
                                             "efficiency": round(ratio(n, n1) * w1 / w, 3)} for w, n in loaders}
    for n in runs:
        if runs[n][0].get("verified") is False:
            print(f"WARNING: {n}: its eval-mode samples differ from attncluster's: not the same work")

    if not args.no_memory:
        mem_rows = []
        mem = {}
        for label, videos in (("small", args.memory_videos), ("4x", 4 * args.memory_videos)):
            mpaths = ensure_frame_shards(os.path.join(args.cache, f"mem-v{videos}-c{args.classes}"), videos=videos,
                                         shards=1, classes=args.classes, seed=7)
            spec = dict(base, kind="memory", paths=mpaths, tracemalloc=False)
            rss = run_child(script, spec)
            trace = run_child(script, dict(spec, tracemalloc=True))
            if "error" in rss or "error" in trace:
                print(f"memory ({label}): FAILED: {rss.get('error') or trace.get('error')}")
                continue
            mem[label] = {"videos": videos, "shard_mib": round(rss["shard_mib"], 1),
                          "rss_before_mib": round(rss["rss_before_mib"], 1),
                          "rss_peak_mib": round(rss["rss_peak_mib"], 2),
                          "tracemalloc_peak_mib": round(trace["tracemalloc_peak_mib"], 2)}
            mem_rows.append([label, videos, f"{rss['shard_mib']:.0f}", f"{rss['rss_before_mib']:.0f}",
                             f"+{rss['rss_peak_mib']:.1f}",
                             f"{trace['tracemalloc_peak_mib']:.2f}"])
        print()
        print("Reader peak memory over one pass (above the baseline after set-up; one-core VideoDataset, train=True):")
        print(table(["shard", "videos", "shard MiB", "RSS after set-up MiB", "RSS peak growth MiB",
                     "tracemalloc peak MiB"], mem_rows))
        if "small" in mem and "4x" in mem:
            growth = mem["4x"]["tracemalloc_peak_mib"] / max(mem["small"]["tracemalloc_peak_mib"], 1e-9)
            mem["tracemalloc_growth"] = round(growth, 3)
            print(f"tracemalloc peak, 4x shard / small shard: {growth:.2f}x (flat = 1.0)")
        result["memory"] = mem

    if not args.no_profile:
        st = run_child(script, dict(base, kind="stages"))
        if "error" in st:
            print(f"stages: FAILED: {st['error']}")
        else:
            print()
            print(f"Where one video's time goes (one core, mean over {st['videos']} videos of "
                  f"{st['mean_frames']:.0f} frames; CPU time, stages timed by hand):")
            srows = [[k, f"{v:.1f}", f"{100 * v / st['dataset_us']:.0f}%"] for k, v in st["stages_us"].items()]
            other = st["dataset_us"] - st["sum_us"]
            srows.append(["VideoDataset bookkeeping (rest)", f"{other:.1f}", f"{100 * other / st['dataset_us']:.0f}%"])
            srows.append(["VideoDataset, whole", f"{st['dataset_us']:.1f}", "100%"])
            print(table(["stage", "us/video", "share"], srows))
            result["stages_us"] = {k: round(v, 1) for k, v in st["stages_us"].items()}
            result["stages_us"]["dataset_whole"] = round(st["dataset_us"], 1)
        pr = run_child(script, dict(base, kind="profile", videos=args.profile_videos, top=14))
        if "error" in pr:
            print(f"profile: FAILED: {pr['error']}")
        else:
            print()
            print(f"cProfile of the one-core reader ({pr['videos']} videos, {pr['total_us_per_video']:.0f} us/video "
                  "under the profiler; its overhead inflates Python-level calls):")
            print(table(["function", "calls/video", "own us/video", "cum us/video", "own %"],
                        [[r["function"], f"{r['calls_per_video']:.1f}", f"{r['tottime_us']:.1f}",
                          f"{r['cumtime_us']:.1f}", f"{r['pct']:.1f}"] for r in pr["top"]]))
            result["profile_top"] = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                                     for r in pr["top"][:8]]

    if not args.no_profile:
        co = run_child(script, dict(base, kind="collate", paths=paths[:max(1, len(paths) // 4)],
                                    batch_size=args.batch_size))
        if "error" in co:
            print(f"collate: FAILED: {co['error']}")
        else:
            print()
            print(f"What batching costs (one core, batches of {args.batch_size}; 'shared memory' is what "
                  "default_collate does inside a DataLoader worker):")
            print(table(["samples", "collate", "CPU us/video", "of which system", "page faults/video"],
                        [[*k.split("/"), f"{v['cpu_us_per_video']:.0f}", f"{v['sys_us_per_video']:.0f}",
                          f"{v['page_faults_per_video']:.0f}"] for k, v in co.items()]))
            result["collate_cpu_us_per_video"] = {k: round(v["cpu_us_per_video"], 1) for k, v in co.items()}

    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
