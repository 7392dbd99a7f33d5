"""Videos with known content, made with PyAV for the extract tests.

Every frame encodes its own index in three grey bands (base 16, levels 16 apart, so lossy coding cannot confuse
two indices): ``frame_index(rgb)`` reads it back. Audio is a sine tone.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

W, H = 64, 48  # small: encoding and decoding take milliseconds


def frame_image(i: int, h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) uint8 frame whose three horizontal bands spell ``i`` in base 16."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    digits = (i % 16, (i // 16) % 16, (i // 256) % 16)
    for band, d in enumerate(digits):
        img[band * h // 3:(band + 1) * h // 3] = d * 16 + 8
    return img


def frame_index(rgb: np.ndarray) -> int:
    """The index ``frame_image`` encoded, read from the centre of each band."""
    h, w = rgb.shape[:2]
    value = 0
    for band in range(3):
        y0, y1 = band * h // 3, (band + 1) * h // 3
        level = float(rgb[y0 + (y1 - y0) // 4:y1 - (y1 - y0) // 4, w // 4:3 * w // 4].mean())
        value += int(round((level - 8) / 16)) * 16 ** band
    return value


def make_video(path, n_frames: int, rate=Fraction(25), *, pts: list[int] | None = None, time_base=None,
               audio_hz: float | None = None, audio_rate: int = 44100, stereo: bool = False,
               audio_seconds: float | None = None, codec: str = "mpeg4", amplitude: float = 0.5) -> None:
    """Write a video of ``n_frames`` frames at ``rate`` fps (or at explicit ``pts`` in ``time_base``: VFR).

    Args:
        audio_hz: add a sine tone of this frequency (left channel only when ``stereo``), lasting ``audio_seconds``
            (default: the video's length).
    """
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    if time_base is not None:
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
    astream = None
    if audio_hz is not None:
        astream = container.add_stream("aac", rate=audio_rate, layout="stereo" if stereo else "mono")
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
        if pts is not None:
            frame.pts, frame.time_base = pts[i], time_base
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)
    if astream is not None:
        seconds = audio_seconds if audio_seconds is not None else (
            float(pts[-1] * time_base) + 0.1 if pts is not None else n_frames / float(rate))
        n = int(seconds * audio_rate)
        tone = (amplitude * np.sin(2 * np.pi * audio_hz * np.arange(n) / audio_rate)).astype(np.float32)
        data = np.stack([tone, np.zeros_like(tone)]) if stereo else tone[None]
        step = 1024
        for start in range(0, n, step):
            chunk = np.ascontiguousarray(data[:, start:start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo" if stereo else "mono")
            frame.sample_rate = audio_rate
            frame.pts = start
            for p in astream.encode(frame):
                container.mux(p)
        for p in astream.encode():
            container.mux(p)
    container.close()


def expected_indices(times, fps: float = 1.0, max_frames: int = 300) -> list[int]:
    """The documented rule, written out independently of the library: frame 0, then each first frame at least
    1/fps after the previously sampled one (exact rationals)."""
    period = 1 / Fraction(fps)
    out, last = [], None
    for i, t in enumerate(times):
        if len(out) == max_frames:
            break
        if last is None or Fraction(t) - last >= period:
            out.append(i)
            last = Fraction(t)
    return out


class TinyPipeline:
    """A real, small FeaturePipeline with random weights (the interface of ``extract.features.FeaturePipeline``):
    a strided conv + mean pool + linear on frames, a random projection of per-example band energies on audio,
    both quantized as the dataset. Seconds to run, so the driver can be tested without the real backbones."""

    quantized = True
    frame_size = (32, 32)

    def __init__(self, rgb: int = 1024, audio: int = 128, seed: int = 0) -> None:
        import torch

        self.modalities = {"rgb": rgb, "audio": audio}
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.fc = torch.nn.Linear(8, rgb)
        with torch.no_grad():
            for p in (*self.conv.parameters(), *self.fc.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.audio_proj = np.random.default_rng(seed).standard_normal((16, audio)).astype(np.float32)
        self.frame_calls: list[int] = []  # batch sizes seen (the driver batches across videos)

    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        import torch

        from attncluster.data.yt8m import quantize

        assert frames.dtype == np.uint8 and frames.shape[1:] == (*self.frame_size, 3), frames.shape
        self.frame_calls.append(len(frames))
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            y = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return quantize(y.numpy())

    def audio_features(self, wav: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
        from attncluster.data.yt8m import quantize

        assert sample_rate == 16000 and wav.dtype == np.float32 and wav.size >= 15600
        k = (wav.size - 15600) // 15360 + 1  # 0.96 s examples at a 0.96 s hop, as vggish_input
        ex = np.stack([wav[i * 15360:i * 15360 + 15600] for i in range(k)])
        bands = np.log1p(np.abs(np.fft.rfft(ex, axis=1))[:, :7792].reshape(k, 16, -1).mean(axis=2))
        return quantize((bands - bands.mean()) @ self.audio_proj)


def crashing_decode(path, *args):
    """A decode job whose process dies (as FFmpeg segfaulting on a hostile file would) for files named crash*."""
    import os

    from attncluster.extract.pipeline import _decode_job

    if os.path.basename(path).startswith("crash"):
        os._exit(139)
    return _decode_job(path, *args)
