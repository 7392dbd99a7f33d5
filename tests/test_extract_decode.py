"""extract/decode.py: which frames are sampled (the official extractor's rule), audio, and broken inputs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av")

from extract_videos import expected_indices, frame_index, make_video  # noqa: E402

from attncluster.errors import DataError  # noqa: E402
from attncluster.extract.decode import MIN_DURATION, decode_video, sample_frame_indices  # noqa: E402


def all_frame_times(path) -> list[Fraction]:
    """Every frame's pts x time_base, relative to the first: a plain PyAV loop, the reference for the rule."""
    import av

    with av.open(str(path)) as c:
        times = [Fraction(f.pts) * f.time_base for f in c.decode(video=0)]
    return [t - times[0] for t in times]


@pytest.mark.parametrize("rate, n, container, hand", [
    (Fraction(73, 10), 40, "mp4", [0, 8, 16, 24, 32]),        # 7.3 fps: every 8th frame, t = 0, 1.096, 2.192 ...
    (Fraction(30000, 1001), 100, "mkv", [0, 30, 60, 90]),     # 29.97 fps: every 30th, t = 0, 1.001, 2.002 ...
    (Fraction(25), 60, "mp4", [0, 25, 50]),                   # 25 fps: t = 0, 1, 2 exactly (ties count)
])
def test_sampled_frames_follow_the_official_rule(tmp_path, rate, n, container, hand):
    path = tmp_path / f"v.{container}"
    make_video(path, n, rate)
    d = decode_video(str(path))
    times = all_frame_times(path)
    assert d.frame_indices.tolist() == expected_indices(times) == hand
    # The frames returned are those frames (their content encodes their index) at those times.
    assert [frame_index(f) for f in d.frames] == hand
    np.testing.assert_allclose(d.timestamps, [float(times[i]) for i in hand], atol=1e-9)
    assert d.frames.dtype == np.uint8 and d.frames.shape[1:] == (48, 64, 3)
    np.testing.assert_allclose(d.duration, n / float(rate), atol=1e-3)


def test_variable_frame_rate_uses_real_timestamps(tmp_path):
    tb = Fraction(1, 1000)
    pts = [0, 100, 400, 1000, 1100, 1999, 2000, 2500, 3700, 3800, 5000, 5001]
    path = tmp_path / "vfr.mkv"
    make_video(path, len(pts), pts=pts, time_base=tb)
    d = decode_video(str(path))
    # By hand: 0 -> first >= 1.0 is 1.0 (#3) -> first >= 2.0 is 2.0 (#6) -> >= 3.0: 3.7 (#8) -> >= 4.7: 5.0 (#10).
    assert d.frame_indices.tolist() == [0, 3, 6, 8, 10]
    assert [frame_index(f) for f in d.frames] == [0, 3, 6, 8, 10]
    np.testing.assert_allclose(d.timestamps, [0, 1.0, 2.0, 3.7, 5.0])


def test_fps_and_max_frames(tmp_path):
    path = tmp_path / "v.mp4"
    make_video(path, 100, Fraction(10))
    assert decode_video(str(path), fps=2).frame_indices.tolist() == list(range(0, 100, 5))
    assert decode_video(str(path), max_frames=3).frame_indices.tolist() == [0, 10, 20]
    assert sample_frame_indices([Fraction(i, 10) for i in range(100)], fps=1, max_frames=300) == list(range(0, 100, 10))


def test_frames_scaled_to_the_requested_size(tmp_path):
    path = tmp_path / "v.mp4"
    make_video(path, 30, Fraction(25))
    d = decode_video(str(path), size=(96, 80))
    assert d.frames.shape == (2, 96, 80, 3)
    assert [frame_index(f) for f in d.frames] == [0, 25]


def test_audio_is_16k_mono_average_of_channels(tmp_path):
    path = tmp_path / "tone.mp4"
    # 440 Hz at amplitude 0.5 on the left channel only, silence on the right: the mono mix is (L + R) / 2.
    make_video(path, 50, Fraction(25), audio_hz=440.0, audio_rate=44100, stereo=True, amplitude=0.5)
    d = decode_video(str(path))
    assert d.has_audio and d.sample_rate == 16000 and d.audio.dtype == np.float32
    np.testing.assert_allclose(d.audio.size / 16000, 2.0, atol=0.05)
    mid = d.audio[4000:28000]
    spectrum = np.abs(np.fft.rfft(mid))
    assert abs(np.argmax(spectrum) * 16000 / mid.size - 440.0) < 2.0
    np.testing.assert_allclose(np.sqrt(2) * mid.std(), 0.25, rtol=0.05)  # sine RMS -> amplitude 0.25 = 0.5 / 2


def test_video_without_audio(tmp_path):
    path = tmp_path / "silent.mkv"
    make_video(path, 30, Fraction(25))
    d = decode_video(str(path))
    assert not d.has_audio and d.audio is None


def test_one_frame_video_is_valid_when_it_lasts_long_enough(tmp_path):
    # A still image shown for 2 s (0.5 fps): one frame, 2 s long, one sampled frame.
    path = tmp_path / "still.mp4"
    make_video(path, 1, Fraction(1, 2))
    d = decode_video(str(path))
    assert d.frame_indices.tolist() == [0] and d.duration == pytest.approx(2.0)


def _bad(tmp_path, name: str, data: bytes | None = None):
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    return path


def test_broken_inputs_raise_one_line_naming_the_file(tmp_path):
    import av

    cases = {}
    cases["text"] = _bad(tmp_path, "notes.mp4", b"this is a text file, not a video\n" * 20)
    cases["empty"] = _bad(tmp_path, "empty.mp4", b"")
    good = tmp_path / "good.mp4"
    make_video(good, 50, Fraction(25))
    cases["truncated"] = _bad(tmp_path, "truncated.mp4", good.read_bytes()[:600])
    long = tmp_path / "long.mkv"
    make_video(long, 250, Fraction(25))  # 10 s; mkv's header declares the duration, so a cut file still opens
    data = long.read_bytes()
    cases["cut mkv"] = _bad(tmp_path, "cut.mkv", data[:len(data) // 2])
    audio_only = tmp_path / "audio_only.m4a"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=16000, layout="mono")
        for start in range(0, 16000, 1024):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, start
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cases["audio only"] = audio_only
    short = tmp_path / "short.mp4"
    make_video(short, 3, Fraction(10))  # 0.3 s
    cases["0.3 s"] = short
    one = tmp_path / "one_frame.mp4"
    make_video(one, 1, Fraction(25))  # 1 frame of 0.04 s
    cases["1 frame at 25 fps"] = one
    expect = {"text": "not a readable video", "empty": "empty file (0 bytes)", "truncated": "",
              "cut mkv": "truncated or damaged: the video frames stop at ",
              "audio only": "has no video stream", "0.3 s": f"at least {MIN_DURATION} s",
              "1 frame at 25 fps": "too short (0.04 s, 1 frame)"}
    for what, path in cases.items():
        with pytest.raises(DataError) as e:
            decode_video(str(path))
        msg = str(e.value)
        assert msg.startswith(str(path) + ": ") and "\n" not in msg, (what, msg)
        assert expect[what] in msg, (what, msg)
    with pytest.raises(DataError, match="no such video file"):
        decode_video(str(tmp_path / "missing.mp4"))
