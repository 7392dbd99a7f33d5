"""Every ```bash and ```python block of README.md runs, as a user following the README would run it.

Blocks are found generically (any section, any helper's), numbered by their line in README.md, and run in README
order in one workspace (a temporary folder), so a later block sees what an earlier one wrote (``eval`` finds the
checkpoint that ``train`` wrote). The line just before a block (blank lines aside) may mark it:

* ``<!-- readme-test: skip (REASON) -->``: not run (it needs a GPU cluster, the network, the full dataset, ...);
* ``<!-- readme-test: slow (REASON) -->``: run only with ``-m slow``, in README order in a workspace of their own
  (made as below, shared by the slow blocks only), so a slow block may use what an earlier slow block wrote (``eval``
  after a slow ``train``) but nothing an unmarked block wrote; mark a block slow when a test of the default run
  covers the same commands, and say which in the reason;
* ``<!-- readme-test: gpu (REASON) -->``: run only with ``-m gpu`` on a machine with CUDA, in a fresh workspace.

A marker without a reason is an error. What the workspace holds, so the commands run as written in seconds:

* ``configs/`` (the shipped configs), and tiny synthetic YouTube-8M frame-level shards (5 classes, 24 frames at
  most) where the README's paths expect data: ``data/yt8m/frame/{train,validate,test}``,
  ``runs/quickstart/`` (what ``attncluster quickstart`` leaves: a real quickstart, made small); Kinetics-style features in
  ``data/kinetics/{train,val}``; ``vocabulary.csv``; ``best.pt`` (a freshly initialised model of the youtube8m
  config under the overrides below); and ``../shared/data/yt8m-2018-video-level`` (the real shards when present,
  else one synthetic shard of that name).
* ``attncluster`` on PATH is ``python -m attncluster`` that puts, for ``train``/``eval``/``predict`` with a shipped
  config, the overrides of :data:`SHRINK` right after the verb: the model and batch shrink to fit the tiny data,
  and any ``-o`` the README gives still wins. Everything else is the README's command as written.

Python blocks are run with ``exec`` in the workspace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(?:\((.*)\))?\s*-->")
LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
BLOCK_TIMEOUT = {None: 240, "slow": 900, "gpu": 900}  # seconds, one block

_TINY = ["model.num_classes=5", "model.seg_num=8", "model.cluster_nums=2", "model.hidden_sizes=[16]",
         "train.batch_size=16", "train.epochs=1", "train.log_interval=2", "eval.batch_size=16", "eval.top_k=3",
         "data.num_workers=0"]
SHRINK: dict[str, list[str]] = {  # config file name -> overrides the wrapper adds (documented above)
    "youtube8m.yaml": _TINY,
    "youtube8m_video_level.yaml": _TINY,
    "quickstart.yaml": ["model.seg_num=8", "model.cluster_nums=2", "model.hidden_sizes=[16]", "train.batch_size=16",
                        "train.epochs=1", "train.log_interval=2", "eval.batch_size=16", "data.num_workers=0"],
    "kinetics.yaml": [*_TINY, "model.seg_num=4", "train.warmup_steps=0", "model.cluster_nums={rgb: 2, flow: 2, audio: 2}"],
}

WRAPPER = """#!{python}
import sys
from pathlib import Path

from attncluster.cli import main

SHRINK = {shrink}
argv = sys.argv[1:]
if argv and argv[0] in ("train", "eval", "predict") and "--config" in argv[:-1]:
    extra = SHRINK.get(Path(argv[argv.index("--config") + 1]).name, [])
    argv = argv[:1] + [x for o in extra for x in ("-o", o)] + argv[1:]
if __name__ == "__main__":  # as a console script: process pools that spawn re-import this file
    raise SystemExit(main(argv))
"""


def readme_blocks(text: str) -> list[dict]:
    """Every fenced bash/python block: {line, lang, code, mark, reason}; other fences are ignored."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        mark = MARK.search(lines[prev]) if prev >= 0 else None
        if lang in LANGS:
            blocks.append({"line": start + 1, "lang": LANGS[lang], "code": "\n".join(lines[start + 1:j]) + "\n",
                           "mark": mark.group(1) if mark else None,
                           "reason": (mark.group(2) or "").strip() if mark else None})
        i = j + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def _param(b: dict):
    marks = []
    if b["mark"] == "slow":
        marks.append(pytest.mark.slow)
    elif b["mark"] == "gpu":
        marks.append(pytest.mark.gpu)
    first = next((x for x in b["code"].splitlines() if x.strip()), "")[:40]
    return pytest.param(b, marks=marks, id=f"line{b['line']}-{b['lang']}-{first}")


def _tiny_shards(out: Path, videos: int, seed: int, prefix: str) -> None:
    from attncluster.data.synth import write_synthetic

    write_synthetic(out, videos=videos, classes=5, shards=1, seed=seed, max_frames=24, prefix=prefix)


def make_workspace(root: Path) -> Path:
    """The folder README commands run in (see the module docstring)."""
    import numpy as np
    import torch

    from attncluster.checkpoint import atomic_save
    from attncluster.config import load_config
    from attncluster.data.features import write_feature_dataset
    from attncluster.model import AttentionCluster

    ws = root / "ws"
    ws.mkdir(parents=True)
    (ws / "configs").symlink_to(ROOT / "configs")
    frame = ws / "data" / "yt8m" / "frame"
    _tiny_shards(frame / "train", 32, 0, "train")
    _tiny_shards(frame / "validate", 16, 1, "validate")
    _tiny_shards(frame / "test", 16, 2, "test")
    # What `attncluster quickstart` leaves (data, a trained run, predictions), from a real but small quickstart.
    from attncluster.quickstart import quickstart

    quickstart(ws / "runs" / "quickstart", device="cpu", log=lambda msg: None, train_videos=64, valid_videos=32,
               overrides=[*SHRINK["quickstart.yaml"], "train.valid_interval=1"])  # so best.pt exists, as in a full one
    shutil.copy(frame / "validate" / "vocabulary.csv", ws / "vocabulary.csv")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        write_feature_dataset(str(ws / "data" / "kinetics" / split), [
            (f"v{split}{i:03d}", [i % 5], {"rgb": rng.standard_normal((6, 2048), dtype=np.float32),
                                           "flow": rng.standard_normal((6, 2048), dtype=np.float32),
                                           "audio": rng.standard_normal((6, 128), dtype=np.float32)})
            for i in range(n)])
    cfg = load_config(ROOT / "configs" / "youtube8m.yaml", SHRINK["youtube8m.yaml"])
    torch.manual_seed(0)
    atomic_save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, ws / "best.pt")
    shared = root / "shared" / "data" / "yt8m-2018-video-level"
    shared.parent.mkdir(parents=True)
    if (SHARED_DATA / "validate0000.tfrecord").is_file():
        shared.symlink_to(SHARED_DATA)
    else:
        _tiny_shards(shared, 8, 3, "validate")
    bin_dir = ws / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "attncluster"
    wrapper.write_text(WRAPPER.format(python=sys.executable, shrink=json.dumps(SHRINK)))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("readme"))


@pytest.fixture(scope="module")
def slow_workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("readme_slow"))


def run_block(block: dict, ws: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PATH"] = f"{ws / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if block["lang"] == "bash":
        p = subprocess.run(["bash", "-e", "-c", block["code"]], cwd=ws, env=env, capture_output=True, text=True,
                           timeout=BLOCK_TIMEOUT[block["mark"]])
        assert p.returncode == 0, f"README.md line {block['line']} exited {p.returncode}\n{block['code']}\n" \
                                  f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        assert "is deprecated" not in p.stderr, p.stderr[-3000:]   # the README teaches the current spellings
    else:
        cwd = os.getcwd()
        os.chdir(ws)
        try:
            exec(compile(block["code"], f"README.md:{block['line']}", "exec"), {"__name__": "__readme__"})
        finally:
            os.chdir(cwd)


def test_readme_has_runnable_blocks_and_every_marker_has_a_reason():
    assert any(b["mark"] is None and b["lang"] == "bash" for b in BLOCKS)
    assert any(b["mark"] is None and b["lang"] == "python" for b in BLOCKS)
    for b in BLOCKS:
        if b["mark"] is not None:
            assert b["mark"] in ("skip", "slow", "gpu"), f"README.md line {b['line']}: unknown marker {b['mark']!r}"
            assert b["reason"], f"README.md line {b['line']}: a readme-test marker needs a (REASON)"


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block(block, request, tmp_path):
    if block["mark"] == "skip":
        pytest.skip(f"README.md line {block['line']}: {block['reason']}")
    if block["mark"] == "gpu":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
    # the fixtures are asked for by name, so a run that selects no unmarked (or no slow) block never builds its workspace
    if block["mark"] is None:
        ws = request.getfixturevalue("workspace")
    elif block["mark"] == "slow":
        ws = request.getfixturevalue("slow_workspace")
    else:
        ws = make_workspace(tmp_path)
    run_block(block, ws)
