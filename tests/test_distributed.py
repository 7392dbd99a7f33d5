"""Distributed data parallel on CPU (gloo), with real processes.

Two ways to start ranks, both with hard time limits so that a hang fails instead of blocking the suite:

* ``torchrun`` (``python -m torch.distributed.run``) around ``python -m attncluster ...``: the command users run;
  used where the launcher's behaviour is the point (eval, the batch-size error, a failing rank).
* ``torch.multiprocessing`` workers that join the process group through the same environment variables torchrun
  sets (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) and call the library API in-process, where a test
  needs to look inside a rank (weights after every step, ids read per rank). They are started from a forkserver that
  has imported torch once, so each start costs a fork rather than a fresh ``import torch`` per rank.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as torch_mp

from attncluster.checkpoint import load_checkpoint
from attncluster.config import load_config
from conftest import TINY_CLASSES, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
TIMEOUT = 240  # seconds for one multi-process job; a hang fails the test after this
quiet = lambda msg: None  # noqa: E731

# Environment a launcher sets; cleared from what child processes inherit so only ours count.
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def torchrun(*args, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m attncluster ARGS`` on loopback; worker lines are prefixed ``[defaultN]:``.

    The launcher and its workers run in a session of their own, so a hang is killed as a whole at ``timeout``.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--tee", "3", "-m", "attncluster", *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s: {' '.join(cmd)}\nstdout:\n{out[-3000:]}\n"
                    f"stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def rank_lines(text: str, rank: int) -> list[str]:
    """What rank ``rank`` printed, without torchrun's ``[defaultN]:`` prefix."""
    prefix = f"[default{rank}]:"
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]


def run_ranks(fn, *args, timeout: int = TIMEOUT) -> None:
    """Run ``fn(rank, *args)`` in WORLD processes; re-raises a rank's exception; kills them all at ``timeout``."""
    multiprocessing.set_forkserver_preload(["attncluster.train", "attncluster.data.yt8m", "torch._dynamo"])
    ctx = torch_mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="forkserver")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                pytest.fail(f"{fn.__name__}: ranks did not finish in {timeout}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


def _as_torchrun_child() -> None:
    """A rank started from the forkserver inherits its start method; a torchrun rank is a fresh interpreter, whose
    DataLoader workers fork (Linux default). Do the same, so workers do not each start a new forkserver and
    import torch."""
    torch.set_num_threads(1)
    multiprocessing.set_start_method("fork", force=True)


def _join_group(rank: int, port: int) -> None:
    """In a worker: the environment torchrun would give this rank."""
    _as_torchrun_child()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))


def checksum(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def overrides(data, **extra) -> list[str]:
    out = []
    for o in tiny_overrides(data, **extra):
        out += ["-o", o]
    return out


# ------------------------------------------------------------------------------------------- training, resume


def _train_worker(rank: int, port: int, overrides_: list[str], run_dirs: list[str], resume: str | None,
                  out: str) -> None:
    _join_group(rank, port)
    from attncluster.train import fit

    steps: list[tuple[int, str, float]] = []
    logs: list[str] = []

    def on_step(step, model, loss):
        steps.append((step, checksum(model.parameters()), float(loss)))

    fit(load_config(None, overrides_), run_dir=run_dirs[rank], resume=resume, device="cpu", log=logs.append,
        on_step=on_step)
    torch.save({"steps": steps, "logs": logs}, Path(out) / f"rank{rank}.pt")


def _train(tmp: Path, name: str, cfg_overrides: list[str], resume: str | None = None) -> tuple[list[dict], list[Path]]:
    """A 2-rank fit(); rank r writes to tmp/name/rank<r> (so a file rank 1 wrote would show). Returns per-rank records."""
    out = tmp / name
    out.mkdir()
    run_dirs = [out / f"rank{r}" for r in range(WORLD)]
    run_ranks(_train_worker, free_port(), cfg_overrides, [str(d) for d in run_dirs], resume, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], run_dirs


def _model_checksum(ckpt_path: Path, cfg) -> str:
    from attncluster.model import AttentionCluster

    model = AttentionCluster(**cfg.model.model_kwargs())
    model.load_state_dict(load_checkpoint(ckpt_path)["model"])
    return checksum(model.parameters())


def test_ddp_ranks_hold_identical_weights_after_every_step_and_resume_continues(tiny_data, tmp_path):
    from attncluster.data.synth import write_synthetic
    from attncluster.evaluate import evaluate

    # Validation shards of 15 videos each: rank 0 gets two (batches of 16 and 14), rank 1 one (a batch of 15).
    write_synthetic(tmp_path / "valid", videos=45, classes=TINY_CLASSES, shards=3, seed=1, max_frames=24,
                    prefix="validate")
    # 96 videos, 8 per rank and batch: 6 steps per epoch; a mid-epoch checkpoint every 4 steps (steps 4 and 8).
    extra = {"train.log_interval": 1, "train.epochs": 2, "data.valid": tmp_path / "valid",
             "train.checkpoint_interval": 4, "train.keep_checkpoints": 0}
    cfg_overrides = tiny_overrides(tiny_data, **extra)
    cfg = load_config(None, cfg_overrides)
    (r0, r1), dirs = _train(tmp_path, "full", cfg_overrides)

    steps0, steps1 = r0["steps"], r1["steps"]
    n = len(steps0)
    assert n >= 4 and [s for s, _, _ in steps0] == list(range(1, n + 1))
    assert [s for s, _, _ in steps1] == [s for s, _, _ in steps0]  # the ranks stopped at the same step every epoch
    for (step, a, _), (_, b, _) in zip(steps0, steps1):
        assert a == b, f"weights differ between ranks after step {step}"
    assert len({c for _, c, _ in steps0}) == n  # the weights changed at every step
    # The ranks trained on different videos (different losses), so equal weights are DDP's doing, not a coincidence.
    assert any(abs(l0 - l1) > 1e-6 for (_, _, l0), (_, _, l1) in zip(steps0, steps1))

    # Only rank 0 logs and writes: rank 1's run directory was never created, rank 0's holds the whole run.
    assert not dirs[1].exists()
    assert r1["logs"] == []
    assert any("epoch 2/2 done" in m for m in r0["logs"]), r0["logs"]
    run0 = dirs[0]
    assert sorted(p.name for p in (run0 / "checkpoints").iterdir()) == [
        "best.pt", "epoch_001.pt", "epoch_001_step_00000004.pt", "epoch_002.pt", "epoch_002_step_00000008.pt",
        "last.pt"]
    assert (run0 / "config.yaml").is_file()
    records = [json.loads(line) for line in (run0 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, n + 1))  # once per step, not twice
    assert [r["epoch"] for r in records if r["type"] == "valid"] == [1, 2]
    last = load_checkpoint(run0 / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["step"] == n and len(last["rng"]) == WORLD
    assert _model_checksum(run0 / "checkpoints" / "last.pt", cfg) == steps0[-1][1]

    # Validation during DDP training (each rank its share, merged) equals one process evaluating those weights.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert var not in os.environ
    single = evaluate(cfg, str(run0 / "checkpoints" / "last.pt"), device="cpu", log=quiet)
    assert last["metrics"]["num_videos"] == single["num_videos"] == 45
    for key in ("gap", "hit_at_1", "perr"):
        assert last["metrics"][key] == single[key], key
    for key in ("map", "loss"):
        assert last["metrics"][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key

    # --resume under 2 processes from the middle of epoch 2 (batch 2 of 6), with 2 DataLoader workers per rank
    # where the full run had none, continues exactly where the full run went: the same batches follow.
    mid = run0 / "checkpoints" / "epoch_002_step_00000008.pt"
    first = load_checkpoint(mid)
    k = first["step"]
    assert (first["epoch"], k, first["position"]) == (1, 8, [2, 2]) and 0 < k < n
    resumed_overrides = tiny_overrides(tiny_data, **extra, **{"data.num_workers": 2})
    (q0, q1), rdirs = _train(tmp_path, "resumed", resumed_overrides, resume=str(mid))
    assert [s for s, _, _ in q0["steps"]] == list(range(k + 1, n + 1))
    assert q0["steps"] == steps0[k:]  # same step numbers, same weights, same losses as the uninterrupted run
    assert q1["steps"] == steps1[k:]
    assert any(f"resumed from {mid}: epoch 1, step {k}, batch 2 of epoch 2" in m for m in q0["logs"]), q0["logs"]
    assert q1["logs"] == [] and not rdirs[1].exists()
    resumed_last = load_checkpoint(rdirs[0] / "checkpoints" / "last.pt")
    assert resumed_last["epoch"] == 2 and resumed_last["step"] == n
    assert resumed_last["metrics"] == last["metrics"] and resumed_last["best_metric"] == last["best_metric"]
    improved = resumed_last["metrics"]["gap"] > first["best_metric"]  # best.pt only when epoch 2 beat epoch 1
    assert sorted(p.name for p in (rdirs[0] / "checkpoints").iterdir()) == sorted(
        ["epoch_002.pt", "last.pt"] + (["best.pt"] if improved else []))
    for key, value in last["model"].items():
        assert torch.equal(value, resumed_last["model"][key]), key


# ------------------------------------------------------------------------------------- exactly-once coverage


def _ids_worker(rank: int, specs: dict[str, str], epochs: list[int], out: str) -> None:
    _as_torchrun_child()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))  # VideoDataset reads its place in the job from here
    from attncluster.data.dataset import VideoDataset, make_loader

    seen: dict[str, list[list[str]]] = {}
    for name, spec in specs.items():
        ds = VideoDataset(spec, modalities={"rgb": 1024, "audio": 128}, num_classes=TINY_CLASSES, seg_num=4,
                          train=True, seed=7)
        assert (ds.rank, ds.world_size) == (rank, WORLD)
        seen[name] = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            seen[name].append([i for batch in make_loader(ds, 5, num_workers=2) for i in batch["id"]])
    Path(out, f"ids{rank}.json").write_text(json.dumps(seen))


def _shard_ids(paths) -> list[str]:
    from attncluster.data.yt8m import YT8MShard

    return [v.id for p in paths for v in YT8MShard(p)]


def test_every_video_once_per_epoch_over_two_ranks_and_two_workers(tiny_data, tmp_path):
    from attncluster.data.synth import write_synthetic

    # 3 shards < 4 consumers (every consumer walks every shard, keeps every 4th record) and
    # 5 unequal shards >= 4 consumers (whole shards dealt round robin).
    many = write_synthetic(tmp_path / "many", videos=53, classes=TINY_CLASSES, shards=5, seed=3, max_frames=12)
    few = sorted(str(p) for p in (tiny_data / "train").glob("*.tfrecord"))
    specs = {"few": str(tiny_data / "train"), "many": str(tmp_path / "many")}
    expected = {"few": _shard_ids(few), "many": _shard_ids(many)}
    epochs = [0, 1, 0]
    run_ranks(_ids_worker, specs, epochs, str(tmp_path))
    seen = [json.loads((tmp_path / f"ids{r}.json").read_text()) for r in range(WORLD)]

    for name, ids in expected.items():
        assert len(set(ids)) == len(ids)
        for e in range(len(epochs)):
            per_rank = [seen[r][name][e] for r in range(WORLD)]
            assert all(per_rank), f"{name}: a rank read nothing"
            counts = Counter(per_rank[0] + per_rank[1])
            # Training gives both ranks N // 2 videos: the last N mod 2 of the epoch's order sit the epoch out.
            assert set(counts.values()) == {1} and set(counts) <= set(ids), f"{name} epoch {epochs[e]}: not once"
            assert [len(p) for p in per_rank] == [len(ids) // WORLD] * WORLD, f"{name}: unequal ranks"
        for r in range(WORLD):
            runs = seen[r][name]
            assert runs[0] == runs[2], f"{name}: same seed and epoch must give the same order"
        # a new epoch reshuffles (shard order and record order)
        assert any(seen[r][name][0] != seen[r][name][1] for r in range(WORLD)), f"{name}: epoch 1 not reshuffled"
        assert seen[0][name][0] + seen[1][name][0] != ids, f"{name}: epoch 0 read in file order"


# --------------------------------------------------------------------------------------------- eval under DDP


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    from attncluster.train import fit

    run = tmp_path_factory.mktemp("ddp_ckpt")
    fit(load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1, "train.valid_interval": 0})),
        run_dir=run, device="cpu", log=quiet)
    return run


def test_eval_under_two_processes_equals_single_process(checkpoint, tmp_path, monkeypatch):
    from attncluster.data.synth import write_synthetic
    from attncluster.evaluate import evaluate

    # 5 shards of unequal size over 2 ranks x 2 workers, batches of 8: the ranks hold different numbers of
    # videos and batches, and the last batches are partial.
    write_synthetic(tmp_path / "data", videos=47, classes=TINY_CLASSES, shards=5, seed=11, max_frames=20,
                    prefix="validate")
    cfg_path, weights = checkpoint / "config.yaml", checkpoint / "checkpoints" / "last.pt"
    opts = ["-o", "data.num_workers=2", "-o", "eval.batch_size=8"]
    p = torchrun("eval", "--config", cfg_path, "--weights", weights, "--data", tmp_path / "data", *opts,
                 "--output", tmp_path / "ddp.json", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-4000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(cfg_path, ["data.num_workers=0", "eval.batch_size=16"])
    single = evaluate(cfg, str(weights), data=[str(tmp_path / "data")], device="cpu", log=quiet)

    assert ddp["num_videos"] == single["num_videos"] == 47
    for key in ("gap", "hit_at_1", "perr"):
        assert ddp[key] == single[key], key
    for key in ("map", "loss"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    # only rank 0 reports
    assert [line for line in rank_lines(p.stdout, 0) if line.startswith("eval: ")]
    assert not rank_lines(p.stdout, 1)


# ----------------------------------------------------------------------------------------------------- failures


@pytest.mark.slow  # three interpreters under torchrun; test_train.py checks the same message in-process (WORLD_SIZE=3)
def test_global_batch_not_divisible_by_world_size_is_a_one_line_error(tiny_data, tmp_path):
    p = torchrun("train", "--config", "configs/quickstart.yaml", *overrides(tiny_data, **{"train.batch_size": 15}),
                 "--run-dir", tmp_path / "run", "--device", "cpu", timeout=120)
    assert p.returncode != 0
    message = "error: train.batch_size=15 is the global batch and must divide evenly over WORLD_SIZE=2 ranks"
    for rank in range(WORLD):
        lines = [line for line in rank_lines(p.stderr, rank) if line.strip()]
        # a rank either printed exactly our one line, or was stopped by torchrun before it got to print it
        assert lines in ([message], []), lines
    assert message in p.stderr
    import attncluster

    assert str(Path(attncluster.__file__).parent) not in p.stderr + p.stdout  # no traceback through our code
    assert not (tmp_path / "run").exists()


def test_a_failing_rank_brings_the_job_down_with_its_error(tmp_path):
    from attncluster.data.dataset import VideoDataset
    from attncluster.data.synth import write_synthetic

    shards = write_synthetic(tmp_path / "train", videos=32, classes=TINY_CLASSES, shards=2, seed=5, max_frames=12)
    # The first record rank 1 reads in epoch 0; damage its payload, so only rank 1 fails (every rank reads the
    # record headers of every shard at start, so a damaged header would stop both).
    from attncluster.data.yt8m import YT8MShard

    seed = 0
    ds = VideoDataset(str(tmp_path / "train"), modalities={"rgb": 1024, "audio": 128}, num_classes=TINY_CLASSES,
                      seg_num=4, train=True, seed=seed, rank=1, world_size=WORLD)
    first_id = next(iter(ds))["id"]
    bad = next(s for s in shards if first_id in _shard_ids([s]))
    offset, length = (int(x) for x in YT8MShard(bad).index[_shard_ids([bad]).index(first_id)])
    data = bytearray(Path(bad).read_bytes())
    data[offset + length // 2] ^= 0xFF
    Path(bad).write_bytes(bytes(data))

    # torchrun stops the other rank as soon as rank 1 exits (the process group's own timeout is 30 minutes)
    p = torchrun("train", "--config", "configs/quickstart.yaml",
                 *overrides(tmp_path, **{"train.valid_interval": 0, "train.seed": seed, "train.epochs": 1,
                                         "train.batch_size": 4}),
                 "--run-dir", tmp_path / "run", "--device", "cpu", timeout=180)
    assert p.returncode != 0
    errors = [line for line in rank_lines(p.stderr, 1) if line.startswith("error: ")]
    assert len(errors) == 1 and Path(bad).name in errors[0], p.stderr[-4000:]
    assert not [line for line in rank_lines(p.stderr, 0) if line.startswith("error: ")]
    assert "local_rank: 1" in p.stderr.split("Root Cause", 1)[-1]  # torchrun names rank 1 as the root cause
    assert not (tmp_path / "run" / "checkpoints" / "epoch_001.pt").exists()


CHILD = """
import sys
from attncluster import distributed
sys.stdout.write("ready\\n"); sys.stdout.flush()
distributed.setup("cpu")   # rank 1 of 2: waits for a rank 0 that never comes, as a rank of a killed torchrun would
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)  # as torchrun starts a rank
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_rank_ends_when_its_launcher_is_killed(tmp_path):
    """kill -9 of torchrun left its ranks running in their own sessions (old code: they finished the job and rank 0
    wrote the output after the user had killed it, racing a rerun). Now a rank ends within a second."""
    import signal
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], env=env, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # setup is waiting for rank 0 (a live rank, not one that failed)
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the rank outlived its launcher"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
