"""extract.vggish: the log-mel front end against a reference written here from vggish_input / mel_features' formulas,
the network's layout (torchvggish keys, TF flatten order, no final ReLU) and the weight loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attncluster.errors import DataError
from attncluster.extract import vggish as vgg

SR = 16000


def ref_mel_matrix(num_bins: int = 257) -> np.ndarray:
    """64 triangles 125..7500 Hz, linear in HTK mel, written bin by bin; the DC row is zero."""
    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * i / 65 for i in range(66)]
    m = np.zeros((num_bins, 64))
    for b in range(1, num_bins):
        f = mel(8000.0 * b / (num_bins - 1))
        for k in range(64):
            left, center, right = edges[k], edges[k + 1], edges[k + 2]
            if left < f <= center:
                m[b, k] = (f - left) / (center - left)
            elif center < f < right:
                m[b, k] = (right - f) / (right - center)
    return m


def ref_examples(wav: np.ndarray) -> np.ndarray:
    """Plain 16 kHz reference: 400-sample frames every 160, periodic Hann, |512-point rfft|, mel, log(+0.01),
    96-frame examples without overlap."""
    n = 1 + (len(wav) - 400) // 160
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / 400) for i in range(400)])
    frames = np.stack([wav[i * 160:i * 160 + 400] * hann for i in range(n)])
    spec = np.abs(np.fft.rfft(frames, 512))
    log_mel = np.log(spec @ ref_mel_matrix() + 0.01)
    k = n // 96
    return log_mel[:k * 96].reshape(k, 96, 64)


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_mel_matrix_matches_reference():
    np.testing.assert_allclose(vgg.mel_matrix(), ref_mel_matrix(), rtol=0, atol=1e-12)
    assert vgg.mel_matrix().shape == (257, 64)


def test_examples_match_reference_on_a_tone():
    wav = tone(1000.0, 2.5) + 0.01 * np.random.default_rng(0).standard_normal(40000).astype(np.float32)
    ex = vgg.waveform_to_examples(wav, SR)
    # 40000 samples -> 1 + (40000 - 400) // 160 = 248 frames -> 2 examples of 96 (56 frames dropped)
    assert ex.shape == (2, 96, 64) and ex.dtype == np.float32
    np.testing.assert_allclose(ex, ref_examples(wav.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_tone_energy_lands_in_its_mel_band():
    edges = [vgg.hertz_to_mel(125.0) + (vgg.hertz_to_mel(7500.0) - vgg.hertz_to_mel(125.0)) * i / 65
             for i in range(66)]
    centers_hz = [700.0 * (math.exp(e / 1127.0) - 1.0) for e in edges[1:-1]]
    for freq in (300.0, 1000.0, 4000.0):
        ex = vgg.waveform_to_examples(tone(freq, 1.0), SR)
        assert ex.shape == (1, 96, 64)
        band = int(np.argmax(ex[0].mean(axis=0)))
        assert band == int(np.argmin([abs(c - freq) for c in centers_hz])), freq
        # and the band holds far more energy than a distant one (log scale: > 4 nats)
        assert ex[0, :, band].mean() - ex[0, :, (band + 20) % 64].mean() > 4.0


def test_short_audio_gives_no_examples_and_stereo_is_averaged():
    assert vgg.waveform_to_examples(tone(440, 0.5), SR).shape == (0, 96, 64)
    # 0.975 s is the shortest audio with one complete example: 400 + 95 * 160 = 15600 samples
    assert vgg.waveform_to_examples(np.zeros(15600, np.float32), SR).shape == (1, 96, 64)
    assert vgg.waveform_to_examples(np.zeros(15599, np.float32), SR).shape == (0, 96, 64)
    left, right = tone(440, 1.0), tone(2000, 1.0, amp=0.2)
    np.testing.assert_allclose(vgg.waveform_to_examples(np.stack([left, right], axis=1), SR),
                               vgg.waveform_to_examples((left.astype(np.float64) + right) / 2, SR), atol=1e-4)
    with pytest.raises(DataError, match="audio must be"):
        vgg.waveform_to_examples(np.zeros((2, 3, 4)), SR)


def test_resample_to_16k():
    for sr in (44100, 8000):
        t = np.arange(int(sr * 0.5)) / sr
        x = np.sin(2 * np.pi * 1000.0 * t)
        y = vgg.resample(x, sr, SR)
        assert len(y) == int(len(x) * SR / sr)
        ideal = np.sin(2 * np.pi * 1000.0 * np.arange(len(y)) / SR)
        mid = slice(len(y) // 4, 3 * len(y) // 4)  # away from the edges, where the filter runs off the signal
        # 5e-3: resampy's table step int(scale * 512) = 185 for 44.1 -> 16 kHz (not 185.76) raises the gain ~0.4 %
        assert np.abs(y[mid] - ideal[mid]).max() < 5e-3, sr
    # a tone above the new Nyquist (10 kHz from 44.1 kHz) is filtered out, not aliased to 6 kHz
    t = np.arange(22050) / 44100
    y = vgg.resample(np.sin(2 * np.pi * 10000.0 * t), 44100, SR)
    assert np.abs(y[2000:-2000]).max() < 1e-2


TORCHVGGISH_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.3.weight": (128, 64, 3, 3), "features.6.weight": (256, 128, 3, 3),
    "features.8.weight": (256, 256, 3, 3), "features.11.weight": (512, 256, 3, 3),
    "features.13.weight": (512, 512, 3, 3), "embeddings.0.weight": (4096, 12288), "embeddings.2.weight": (4096, 4096),
    "embeddings.4.weight": (128, 4096),
}


@pytest.fixture(scope="module")
def net():
    return vgg.VGGish(generator=torch.Generator().manual_seed(0)).eval()


def test_vggish_layout_and_forward(net):
    state = net.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items() if k.endswith("weight")} == TORCHVGGISH_SHAPES
    x = torch.from_numpy(vgg.waveform_to_examples(tone(700.0, 2.0), SR)).unsqueeze(1)  # (2, 1, 96, 64)
    with torch.no_grad():
        out = net(x)
        conv = net.features(x).numpy()  # (2, 512, 6, 4)
    assert out.shape == (2, 128)
    # Plain computation of the head: TF flattens NHWC, then fc1, fc1, fc2 (no ReLU after fc2)
    h = conv.transpose(0, 2, 3, 1).reshape(2, -1).astype(np.float64)
    for i, relu in ((0, True), (2, True), (4, False)):
        h = h @ state[f"embeddings.{i}.weight"].double().numpy().T + state[f"embeddings.{i}.bias"].double().numpy()
        if relu:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(out.double().numpy(), h, rtol=1e-4, atol=1e-4)
    assert (h < 0).any()  # pre-activation embedding: negative values survive


def test_torchvggish_loader(tmp_path, net):
    state = dict(net.state_dict())
    torch.save(state, tmp_path / "vggish-10086976.pth")
    loaded = vgg.load_torchvggish_weights(str(tmp_path / "vggish-10086976.pth"))
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # Small files for the errors: the loader stops at the first missing / misshapen key, in module order.
    torch.save({"features.0.weight": state["features.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(DataError, match="no 'features.0.bias'"):
        vgg.load_torchvggish_weights(str(tmp_path / "partial.pth"))
    torch.save({"features.0.weight": torch.zeros(32, 1, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(DataError, match=r"features.0.weight has shape \[32, 1, 3, 3\], expected \[64, 1, 3, 3\]"):
        vgg.load_torchvggish_weights(str(tmp_path / "shape.pth"))
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(DataError, match="text.pth: not a torch weights file") as e:
        vgg.load_torchvggish_weights(str(tmp_path / "text.pth"))
    assert "\n" not in str(e.value)
