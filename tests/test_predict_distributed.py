"""predict.py at corpus scale: ranks each predict a share and rank 0 merges; the rows equal a single process's."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from attncluster.config import load_config
from attncluster.model import AttentionCluster
from attncluster.predict import merge_parts, part_paths, predict, write_part_row
from conftest import tiny_overrides
from test_distributed import rank_lines, torchrun

quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def model_files(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_dist")
    cfg = load_config(None, tiny_overrides(tiny_data))
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(2)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "w.pt")
    return root, cfg


def test_two_ranks_write_exactly_the_rows_of_one_process(model_files, tiny_data, tmp_path):
    root, cfg = model_files
    # 3 training shards + 1 validation shard over 2 ranks: rank 0 reads shards 0 and 2, rank 1 shards 1 and 3, so
    # the merge has to interleave the two parts to give --data order.
    data = [tiny_data / "train", tiny_data / "valid"]
    one = tmp_path / "one.jsonl"
    assert predict(cfg, str(root / "w.pt"), [str(d) for d in data], str(one), top_k=3, device="cpu", log=quiet) == 136
    two = tmp_path / "out" / "two.jsonl"
    p = torchrun("predict", "--config", root / "config.yaml", "--weights", root / "w.pt", "--data", *data,
                 "--output", two, "--top-k", 3, "--device", "cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in one.read_text().splitlines()]
    rows2 = [json.loads(line) for line in two.read_text().splitlines()]
    assert len(rows) == 136 and len({r["id"] for r in rows}) == 136  # every video once
    # The same videos in the same (--data) order. Scores are not bit-equal: torchrun sets OMP_NUM_THREADS=1 and each
    # rank batches other videos together, so the GEMMs round in another order (float32: ~1e-7 relative). Printed
    # with 6 decimals, a score may differ in its last digit: |diff| <= 1e-6 plus the rounding of two prints.
    assert [r["id"] for r in rows2] == [r["id"] for r in rows]
    for a, b in zip(rows, rows2):
        assert np.allclose(a["scores"], b["scores"], rtol=0, atol=1.5e-6), (a, b)
        # classes agree, except that two classes whose scores are within that tolerance may swap places
        swapped = [i for i, (x, y) in enumerate(zip(a["classes"], b["classes"])) if x != y]
        assert all(abs(a["scores"][i] - a["scores"][j]) <= 1.5e-6 for i in swapped for j in swapped), (a, b)
    assert any("predict: 136 videos" in line and "2 ranks" in line for line in rank_lines(p.stdout, 0))
    assert rank_lines(p.stdout, 1) == []  # only rank 0 reports
    assert sorted(x.name for x in two.parent.iterdir()) == ["two.jsonl"]  # no part file left behind


def test_output_order_does_not_depend_on_dataloader_workers(model_files, tiny_data, tmp_path):
    """Two workers interleave batches of different shards; the file is still in --data order, as with none."""
    root, cfg = model_files
    spec = [str(tiny_data / "train")]
    predict(cfg, str(root / "w.pt"), spec, str(tmp_path / "w0.csv"), device="cpu", log=quiet)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=2))
    predict(cfg, str(root / "w.pt"), spec, str(tmp_path / "w2.csv"), device="cpu", log=quiet)
    assert (tmp_path / "w2.csv").read_bytes() == (tmp_path / "w0.csv").read_bytes()
    assert (tmp_path / "w0.csv").read_text().count("\n") == 97  # header + 96 videos


def test_merge_sorts_by_shard_then_record_and_keeps_rows_byte_exact(tmp_path):
    parts = part_paths(str(tmp_path / "out.csv"), "tok", 2)
    rows = {(0, 0): 'a,"x\ny"\n', (0, 1): "b,1\n", (1, 0): "c,\u00e9\n", (2, 5): "d,2\n", (2, 7): "e,3\n"}
    with open(parts[0], "wb") as f:  # rank 0: shard 2, then shard 0 (record 1 before 0, as workers may interleave)
        for key in ((2, 7), (0, 1), (0, 0)):
            write_part_row(f, *key, rows[key])
    with open(parts[1], "wb") as f:
        for key in ((2, 5), (1, 0)):
            write_part_row(f, *key, rows[key])
    assert merge_parts(parts, str(tmp_path / "out.csv"), "H\n") == 5
    expected = "H\n" + "".join(rows[k] for k in sorted(rows))
    assert (tmp_path / "out.csv").read_bytes() == expected.encode("utf-8")
