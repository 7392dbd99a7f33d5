"""VGGish (AudioSet, Hershey et al. 2017): the log-mel front end, the network and its weight loaders.

The front end follows tensorflow/models ``research/audioset/vggish`` ``vggish_input.py`` / ``mel_features.py`` /
``vggish_params.py`` in numpy float64, step for step:

- mono (mean over channels), resampled to 16 kHz (resampy's ``kaiser_best`` filter, reimplemented in numpy);
- frames of 400 samples (25 ms) every 160 (10 ms), no padding, periodic Hann window, ``|rfft|`` of 512 points;
- 64 HTK-mel triangles from 125 to 7500 Hz (``spectrogram_to_mel_matrix``; the DC bin gets no weight), applied to
  the magnitudes; ``log(mel + 0.01)``;
- examples of 96 frames (0.96 s) every 96 frames, no overlap; a trailing partial example is dropped.

The network (``vggish_slim.py``): conv 3x3 64 - pool - 128 - pool - 256 x2 - pool - 512 x2 - pool (2x2, SAME),
flatten in TF's (H, W, C) order, fc 4096 - 4096 - 128. The 128-d output is the **pre-activation** fc2 (``activation_fn
=None``, what MediaPipe's YouTube-8M graph reads as ``vggish/fc2/BiasAdd``); the torchvggish port appends a ReLU,
we do not. Module names follow torchvggish (``features.0`` ... ``embeddings.4``), so its ``vggish-10086976.pth``
loads as is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from attncluster.errors import DataError
from attncluster.extract.random_init import random_fill

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96
NUM_FRAMES = 96
NUM_BANDS = 64
EMBEDDING_SIZE = 128
_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0
# resampy's "kaiser_best" filter.
_RESAMPLE_ZEROS, _RESAMPLE_PRECISION = 64, 9
_RESAMPLE_ROLLOFF, _RESAMPLE_BETA = 0.9475937167399596, 14.769656459379492


# --------------------------------------------------------------------------------------------------------------------
# Front end


def resample(x: np.ndarray, sr_orig: int, sr_new: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with resampy's ``kaiser_best`` windowed sinc (64 zero crossings, 2^9 table steps,
    linear interpolation between table entries), vectorised over output samples. ``int(len(x) * sr_new / sr_orig)``
    samples out, float64."""
    x = np.asarray(x, dtype=np.float64)
    if sr_orig == sr_new:
        return x.copy()
    ratio = sr_new / sr_orig
    num_table = 2 ** _RESAMPLE_PRECISION
    n = num_table * _RESAMPLE_ZEROS
    sinc = _RESAMPLE_ROLLOFF * np.sinc(_RESAMPLE_ROLLOFF * np.linspace(0, _RESAMPLE_ZEROS, num=n + 1, endpoint=True))
    win = np.kaiser(2 * n + 1, _RESAMPLE_BETA)[n:] * sinc
    scale = min(1.0, ratio)
    win = win * scale
    delta = np.zeros_like(win)
    delta[:-1] = np.diff(win)
    step = int(scale * num_table)
    nwin, n_orig = len(win), len(x)
    n_out = int(n_orig * ratio)
    t = np.arange(n_out, dtype=np.float64) / ratio
    base = t.astype(np.int64)
    y = np.zeros(n_out)
    for wing in (0, 1):
        frac = scale * (t - base)
        if wing:
            frac = scale - frac
        index = frac * num_table
        offset = index.astype(np.int64)
        eta = index - offset
        for i in range(nwin // step + 1):
            pos = offset + i * step
            src = base - i if wing == 0 else base + i + 1
            ok = (pos < nwin) & (src >= 0) & (src < n_orig)
            if not ok.any():
                break
            p, s = pos[ok], src[ok]
            y[ok] += (win[p] + eta[ok] * delta[p]) * x[s]
    return y


def frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    """(S, ...) -> (num_frames, window_length, ...) complete frames only (``mel_features.frame``); a copy."""
    num = 1 + (data.shape[0] - window_length) // hop_length
    if num <= 0:
        return np.zeros((0, window_length) + data.shape[1:], dtype=data.dtype)
    idx = np.arange(window_length)[None, :] + hop_length * np.arange(num)[:, None]
    return data[idx]


def periodic_hann(window_length: int) -> np.ndarray:
    """``0.5 - 0.5 cos(2 pi n / N)``: a full period of length N (not ``np.hanning``'s N - 1)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length))


def hertz_to_mel(hz):
    """HTK mel: ``1127 ln(1 + f / 700)``."""
    return _MEL_HIGH_Q * np.log(1.0 + np.asarray(hz, dtype=np.float64) / _MEL_BREAK_HZ)


def mel_matrix(num_mel_bins: int = NUM_MEL_BINS, num_spectrogram_bins: int = 257, sample_rate: int = SAMPLE_RATE,
               lower_hz: float = MEL_MIN_HZ, upper_hz: float = MEL_MAX_HZ) -> np.ndarray:
    """(num_spectrogram_bins, num_mel_bins) triangles, linear in mel (``spectrogram_to_mel_matrix``)."""
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"mel band edges {lower_hz}..{upper_hz} Hz must lie in 0..{nyquist} Hz")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    weights[0, :] = 0.0  # HTK: no DC
    return weights


def log_mel_spectrogram(data: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(S,) waveform -> (frames, 64) ``log(mel(|STFT|) + 0.01)``, 25 ms windows every 10 ms."""
    window = int(round(sample_rate * STFT_WINDOW_SECONDS))  # 400
    hop = int(round(sample_rate * STFT_HOP_SECONDS))  # 160
    fft_length = 2 ** int(math.ceil(math.log(window) / math.log(2.0)))  # 512
    frames = frame(np.asarray(data, dtype=np.float64), window, hop)  # (F, 400)
    spectrogram = np.abs(np.fft.rfft(frames * periodic_hann(window), fft_length))  # (F, 257)
    mel = spectrogram @ mel_matrix(num_spectrogram_bins=spectrogram.shape[1], sample_rate=sample_rate)
    return np.log(mel + LOG_OFFSET)


def waveform_to_examples(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Waveform -> VGGish input patches, as ``vggish_input.waveform_to_examples``.

    Args:
        wav: float (S,) mono or (S, C) multi-channel, samples in [-1, 1].
        sample_rate: its rate; resampled to 16 kHz when different.

    Returns:
        float32 (K, 96, 64): K = number of complete 0.96 s examples (0 for audio shorter than 0.975 s).
    """
    data = np.asarray(wav)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.ndim != 1:
        raise DataError(f"audio must be (S,) or (S, channels), got shape {list(np.shape(wav))}")
    if sample_rate <= 0:
        raise DataError(f"bad audio sample rate {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        data = resample(data, sample_rate, SAMPLE_RATE)
    log_mel = log_mel_spectrogram(data, SAMPLE_RATE)
    rate = 1.0 / STFT_HOP_SECONDS
    window = int(round(EXAMPLE_WINDOW_SECONDS * rate))  # 96
    hop = int(round(EXAMPLE_HOP_SECONDS * rate))  # 96
    return frame(log_mel, window, hop).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Network


class VGGish(nn.Module):
    """(K, 1, 96, 64) log-mel patches -> (K, 128) embeddings (pre-activation fc2, as AudioSet's release)."""

    def __init__(self, generator: torch.Generator | None = None, empty: bool = False) -> None:
        """Args: generator seeds the random initial weights; ``empty`` leaves them on the meta device (no memory)
        for ``load_state_dict(state, assign=True)``."""
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        meta = torch.device("meta")  # built empty, initialised once by reset_parameters (72 M parameters)
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))  # TF SAME 2x2/2 on even sizes: no padding
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1, device=meta), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096, device=meta), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096, device=meta), nn.ReLU(inplace=True),
                                        nn.Linear(4096, EMBEDDING_SIZE, device=meta))
        if not empty:
            # Real storage for each meta parameter, without ``to_empty`` (its first call imports sympy: 0.7 s) and
            # without nn's default init (reset_parameters draws every weight once).
            for m in self.modules():
                for name, param in m.named_parameters(recurse=False):
                    setattr(m, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype)))
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He-variance (uniform) weights, zero biases (vggish_slim initialises N(0, 0.01); He keeps random activations alive)."""
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        random_fill([(m.weight, (2.0 / m.weight[0].numel()) ** 0.5) for m in layers], generator)
        with torch.no_grad():
            for m in layers:
                m.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (K, 1, 96, 64) -> (K, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens NHWC: (K, 6 * 4 * 512)
        return self.embeddings(x)  # (K, 128)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def torch_load_reason(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one short line (torch's message is a paragraph with
    terminal escapes; its useful part follows "WeightsUnpickler error:")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation", 1)[0]
    return (" ".join(text.split()) or type(e).__name__)[:200]


def load_torch_dict(path: str) -> dict:
    """``torch.load(weights_only=True)`` of a dict file, also allowing plain numpy arrays (the torchvggish PCA file
    stores them); never runs code from the file.

    Raises:
        DataError: missing or unreadable file, or not a dict.
    """
    safe: list = [np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or np.core
    # Pickles name the reconstructor after the writer's numpy: numpy.core (1.x, e.g. torchvggish's 2019 files) or
    # numpy._core (2.x). Both names map to this numpy's function.
    safe += [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
             (core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct")]
    for name in ("Float32DType", "Float64DType", "Int64DType", "Int32DType"):
        dt = getattr(getattr(np, "dtypes", None), name, None)
        if dt is not None:
            safe.append(dt)
    try:
        with torch.serialization.safe_globals(safe):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line
        raise DataError(f"{path}: not a torch weights file ({torch_load_reason(e)})") from None
    if not isinstance(raw, Mapping):
        raise DataError(f"{path}: expected a dict of tensors, got {type(raw).__name__}")
    return dict(raw)


def load_torchvggish_weights(path: str) -> dict[str, Tensor]:
    """The torchvggish port's ``vggish-10086976.pth`` (``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``
    weight/bias) as a state dict for :class:`VGGish`, shape-checked.

    Raises:
        DataError: not a state dict, a missing key, a wrong shape.
    """
    raw = load_torch_dict(path)
    want = VGGish(empty=True).state_dict()
    out: dict[str, Tensor] = {}
    for key, ref in want.items():
        if key not in raw:
            raise DataError(f"{path}: no {key!r}; is this torchvggish's vggish-10086976.pth?")
        value = torch.as_tensor(np.asarray(raw[key]) if isinstance(raw[key], np.ndarray) else raw[key])
        if tuple(value.shape) != tuple(ref.shape):
            raise DataError(f"{path}: {key} has shape {list(value.shape)}, expected {list(ref.shape)}")
        out[key] = value.float()
    return out
