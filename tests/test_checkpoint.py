"""checkpoint.py: atomic writes, and TrainState (its state_dict is the checkpoint, load_state_dict is resume)."""

import random

import pytest
import torch

from attncluster.checkpoint import TrainState, atomic_save
from attncluster.weights import load_checkpoint


class Explodes:
    def __reduce__(self):
        raise RuntimeError("disk full")




def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(3)}, "bad": Explodes()}, path)
    assert path.read_bytes() == before  # the old complete checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_a_full_disk_during_a_checkpoint_is_one_error_naming_it(tmp_path):
    import resource
    import signal

    from attncluster.errors import FileError

    path = tmp_path / "ckpt" / "epoch_001.pt"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # files may not grow past 4 KB: EFBIG, like ENOSPC
    try:
        with pytest.raises(FileError, match=rf"{path}: cannot write checkpoint") as e:
            atomic_save({"model": {"w": torch.zeros(10_000)}}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert "\n" not in str(e.value)
    assert list(path.parent.iterdir()) == []  # no temporary file left behind


# ---- TrainState: its state_dict is the checkpoint, load_state_dict is resume ----------------------------------------

OLD_KEYS = {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "position", "num_videos", "rng", "config",
            "metrics", "best_metric"}  # what train.py's checkpoints held before TrainState


def _state(seed=0, num_videos=10):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    return TrainState(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), config={"train": {"seed": seed}},
                      num_videos=num_videos)


def _step(state):
    loss = state.model(torch.ones(4, 3)).square().sum()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1


def test_train_state_round_trips_and_old_checkpoints_load(tmp_path):
    a = _state()
    _step(a)
    a.epoch, a.position, a.best_metric, a.best_epoch, a.bad_evals = 1, 3, 0.5, 1, 2
    a.metrics = {"gap": 0.5}
    random.seed(7)
    ckpt = a.state_dict()
    assert set(ckpt) == OLD_KEYS | {"early_stopping"} and ckpt["position"] == [3]
    assert ckpt["early_stopping"] == {"bad_evals": 2, "best_epoch": 1}
    atomic_save(ckpt, tmp_path / "c.pt")
    expected = random.random()  # what the RNG gives next after the checkpoint

    b = _state(seed=1)
    b.load_state_dict(load_checkpoint(tmp_path / "c.pt"))
    assert random.random() == expected
    assert (b.epoch, b.step, b.position, b.best_metric, b.best_epoch, b.bad_evals) == (1, 1, 3, 0.5, 1, 2)
    assert b.metrics == {"gap": 0.5} and b.scheduler.last_epoch == a.scheduler.last_epoch
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v)
    _step(a), _step(b)  # the optimizer's moments came along: the next step is the same
    assert torch.equal(a.model.weight, b.model.weight)

    # a checkpoint from before TrainState: no early_stopping (and here no scaler) entry
    old = {k: v for k, v in ckpt.items() if k not in ("early_stopping", "scaler")}
    c = _state(seed=2)
    c.load_state_dict(old)
    assert (c.bad_evals, c.best_epoch, c.best_metric, c.position) == (0, 0, 0.5, 3)


def test_train_state_refuses_a_mid_epoch_checkpoint_of_other_ranks_or_data():
    from attncluster.errors import ConfigError

    ckpt = _state().state_dict()
    ckpt["position"], ckpt["rng"] = [2, 2], ckpt["rng"] * 2
    with pytest.raises(ConfigError, match="taken mid-epoch by 2 ranks; resume it with 2 ranks"):
        _state().load_state_dict(ckpt, rank=0, world_size=1, source="x.pt")
    ckpt["position"], ckpt["rng"] = [2], ckpt["rng"][:1]
    with pytest.raises(ConfigError, match="x.pt: taken mid-epoch over 10 training videos, but data.train now holds 11"):
        _state(num_videos=11).load_state_dict(ckpt, source="x.pt")
    ckpt["position"] = [0]  # at an epoch end the position points nowhere: changed data is fine
    _state(num_videos=11).load_state_dict(ckpt)


def test_train_state_counts_validations_without_improvement():
    s = _state()
    seen = []
    for epoch, gap in enumerate([0.10, 0.30, 0.302, 0.31, 0.29, 0.30], start=1):
        s.epoch = epoch
        seen.append((s.record_validation({"gap": gap}, "gap", min_delta=0.005), s.bad_evals, s.should_stop(2)))
    # 0.302 is not better than 0.30 by more than 0.005; 0.31 is
    assert seen == [(True, 0, False), (True, 0, False), (False, 1, False), (True, 0, False), (False, 1, False),
                    (False, 2, True)]
    assert (s.best_metric, s.best_epoch) == (0.31, 4) and not s.should_stop(0)  # patience 0: never stop
    s = _state()
    assert [s.record_validation({"loss": v}, "loss") for v in (3.0, 2.0, 2.5, 1.0)] == [True, True, False, True]
    assert s.best_metric == 1.0  # loss: lower is better
