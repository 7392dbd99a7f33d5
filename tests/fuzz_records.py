"""Fuzz the three data-damage classes of issue 15 §1 through the real verbs (eval and predict, in-process).

    PYTHONPATH=src python tests/fuzz_records.py [CASES] [SEED]

Each case is one video-level shard of 1-4 records written with the project's encoder and TFRecord writer, each
record one of:

* ``good``: a plain record;
* ``merged``: valid protobuf with the labels and the means split over several ``value`` fields of their map entries
  (protobuf merges them: the record is good, with all its labels);
* ``nan`` / ``inf``: a non-finite mean value in a valid-CRC record;
* ``two_ids``: two ids in one map entry (after merging, an id list of two: damaged);
* ``crc``: a flipped payload byte (bad payload CRC).

Every case runs ``eval`` and ``predict`` without and with ``data.skip_corrupt``, and each run must end in exactly
one of the outcomes an independent expectation gives: exit 0 with predict's ids equal to the good records' ids, in
order (no silent read of a damaged record, no silent drop of a good one), or exit 2 with exactly one ``error:`` line
(any damage without skip_corrupt; every record damaged with it: "every record was skipped"). A traceback or any
other outcome is counted as a failure. Prints the counts; exit status 1 if anything failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from attncluster.checkpoint import atomic_save
from attncluster.cli import main
from attncluster.config import load_config
from attncluster.data import protowire as pw
from attncluster.data.tfrecord import encode_record
from attncluster.data.yt8m import encode_example
from attncluster.model import AttentionCluster

KINDS = ["good", "merged", "nan", "inf", "two_ids", "crc"]
BAD = {"nan", "inf", "two_ids", "crc"}


def _entry(key: str, *values: bytes) -> bytes:
    return pw.len_field(1, pw.len_field(1, key.encode()) + b"".join(pw.len_field(2, v) for v in values))


def record(kind: str, vid: str, labels: list[int], rng) -> bytes:
    mean = {"rgb": rng.uniform(-1, 1, 1024).astype(np.float32), "audio": rng.uniform(-1, 1, 128).astype(np.float32)}
    if kind in ("nan", "inf"):
        mean["audio" if rng.random() < 0.5 else "rgb"][int(rng.integers(128))] = np.nan if kind == "nan" else -np.inf
    if kind in ("good", "nan", "inf", "crc"):
        payload = encode_example(vid, labels, mean)
        if kind == "crc":
            return _flip(encode_record(payload), rng)
        return encode_record(payload)
    k = max(1, len(labels) // 2)
    entries = [_entry("labels", pw.len_field(3, pw.packed_varint_field(1, labels[:k])),
                      pw.len_field(3, pw.packed_varint_field(1, labels[k:])))]
    for name, x in mean.items():
        cut = int(rng.integers(1, x.size))
        entries.append(_entry("mean_" + name, pw.len_field(2, pw.len_field(1, x[:cut].tobytes())),
                              pw.len_field(2, pw.len_field(1, x[cut:].tobytes()))))
    ids = [vid.encode()] + ([b"zz" + vid.encode()] if kind == "two_ids" else [])
    entries.append(_entry("id", *(pw.len_field(1, pw.len_field(1, i)) for i in ids)))
    order = rng.permutation(len(entries))
    return encode_record(pw.len_field(1, b"".join(entries[i] for i in order)))


def _flip(framed: bytes, rng) -> bytes:
    data = bytearray(framed)
    data[12 + int(rng.integers(len(data) - 16))] ^= 0x10  # inside the payload: its CRC no longer matches
    return bytes(data)


def run(argv: list[str]) -> tuple[int, list[str], bool]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
        except BaseException:  # an exception escaping main is a traceback for the user
            return -1, [], True
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, lines, any("Traceback" in line for line in lines)


def main_fuzz(cases: int = 300, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    root = Path(tempfile.mkdtemp(prefix="fuzz_records_"))
    cfg = load_config(None, ["model.num_classes=20", "model.seg_num=1", "model.cluster_nums=1",
                             "model.hidden_sizes=[8]", "data.num_workers=0", "data.format=yt8m", "eval.batch_size=4", "eval.top_k=3"])
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    atomic_save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "model.pt")
    counts: Counter = Counter()
    failures: list[str] = []
    for case in range(cases):
        n = int(rng.integers(1, 5))
        p_bad = [0.2, 0.5, 0.9][case % 3]  # a third of the cases mostly damaged: many all-damaged shards
        kinds = [str(rng.choice(sorted(BAD))) if rng.random() < p_bad else str(rng.choice(["good", "merged"]))
                 for _ in range(n)]
        for k in kinds:
            counts[f"record:{k}"] += 1
        ids = [f"c{case}r{i}" for i in range(n)]
        shard = root / f"case{case:04d}.tfrecord"
        shard.write_bytes(b"".join(record(k, v, sorted({int(x) for x in rng.integers(0, 20, 3)}), rng)
                                   for k, v in zip(kinds, ids)))
        good = [v for k, v in zip(kinds, ids) if k not in BAD]
        damaged = len(kinds) - len(good)
        for verb in ("eval", "predict"):
            for skip in (False, True):
                out = root / "p.jsonl"
                out.unlink(missing_ok=True)
                argv = [verb, "--config", str(root / "config.yaml"), "--weights", str(root / "model.pt"),
                        "--data", str(shard), "--device", "cpu"] + (["--output", str(out)] if verb == "predict" else [])
                if skip:
                    argv += ["-o", "data.skip_corrupt=true"]
                code, lines, traceback = run(argv)
                errors = [line for line in lines if line.startswith("error: ")]
                if traceback or code not in (0, 2):
                    outcome = "traceback"
                elif damaged and (not skip or not good):
                    ok = code == 2 and len(errors) == 1 and lines[-1] == errors[0]
                    if ok and skip:
                        ok = f"every record was skipped as damaged ({damaged} skipped" in errors[0]
                    outcome = ("error-all-skipped" if skip else "error-damaged") if ok else "wrong"
                else:
                    ok = code == 0 and not errors
                    if ok and verb == "predict":
                        ok = [json.loads(line)["id"] for line in out.read_text().splitlines()] == good
                    if ok and skip:
                        ok = sum(line.startswith("warning: ") for line in lines) == damaged
                    outcome = ("read-skipping" if damaged else "read") if ok else "wrong"
                counts[f"{verb}:{outcome}"] += 1
                if outcome in ("traceback", "wrong"):
                    failures.append(f"case {case} {verb} skip={skip} kinds={kinds}: code {code}, {lines[-3:]}")
    for key in sorted(counts):
        print(f"{key}: {counts[key]}")
    bad = counts["eval:traceback"] + counts["predict:traceback"] + counts["eval:wrong"] + counts["predict:wrong"]
    print(f"failures (tracebacks, silent reads or drops, other outcomes): {bad}")
    for f in failures[:10]:
        print(f)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_fuzz(*(int(a) for a in sys.argv[1:3])))
