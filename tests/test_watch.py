"""watch: the window buffer and the event detector on hand-computed sequences, and end to end on real encoded videos
(a bright block in known seconds), read from a file, from stdin and from a loopback HTTP server serving the file as
it grows, with a model trained here on features of such videos."""

from __future__ import annotations

import http.server
import io
import os
import sys
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from attncluster.errors import ConfigError, DataError
from attncluster.extract.decode import FrameSampler, sample_frame_indices
from attncluster.watch import EventDetector, WindowBuffer, window_rows, window_span

# -- window buffer ---------------------------------------------------------------------------------------------------


def row(v):
    return {"rgb": np.array([v], np.uint8)}


def test_window_buffer_fires_when_full_then_every_stride_and_stays_bounded():
    buf = WindowBuffer(size=3, stride=2)
    fired = []
    for t in range(8):
        if buf.push(float(t), row(t)):
            times, rows = buf.window()
            fired.append((t, times, rows["rgb"][:, 0].tolist()))
    # full at t=2, then every 2 rows: t=4, t=6
    assert fired == [(2, [0.0, 1.0, 2.0], [0, 1, 2]), (4, [2.0, 3.0, 4.0], [2, 3, 4]), (6, [4.0, 5.0, 6.0], [4, 5, 6])]
    assert buf.pending and len(buf) == 3  # t=7 arrived after the last window: the tail
    times, rows = buf.window()
    assert times == [5.0, 6.0, 7.0] and not buf.pending
    for t in range(8, 10_000):
        buf.push(float(t), row(t % 256))
    assert len(buf) == 3 and len(buf.times) == 3  # an endless stream keeps `size` rows
    buf.clear()
    assert len(buf) == 0 and not buf.pending
    due = []
    for t in range(5):
        due.append(buf.push(float(t), row(t)))
        if due[-1]:
            buf.window()
    assert due == [False, False, True, False, True]  # refills after a gap, then every 2 rows again


def test_window_buffer_short_stream_is_scored_once_at_the_end():
    buf = WindowBuffer(size=10, stride=1)
    assert not any(buf.push(float(t), row(t)) for t in range(4))
    assert buf.pending
    assert buf.window()[0] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ConfigError):
        WindowBuffer(0, 1)


def test_window_span_credits_the_centre_stride_and_the_edges():
    # frames 10..14 at 1 fps: the window covers [10, 15), centre 12.5; stride 1 -> [12, 13)
    assert window_span([10, 11, 12, 13, 14], 1.0, 1.0, first=False, last=False) == (12.0, 13.0)
    assert window_span([0, 1, 2, 3, 4], 1.0, 2.0, first=True, last=False) == (0.0, 3.5)
    assert window_span([20, 21, 22, 23, 24], 1.0, 2.0, first=False, last=True) == (21.5, 25.0)
    # a stride longer than the window is cut to the window
    assert window_span([4, 5], 1.0, 10.0, first=False, last=False) == (4.0, 6.0)


def test_window_rows_samples_the_window_as_eval_samples_a_video():
    w = {"rgb": np.arange(5, dtype=np.uint8)[:, None]}
    # sample_indices(5, 10, None): floor((i + 0.5) * 5 / 10) = 0,0,1,1,2,2,3,3,4,4
    assert window_rows(w, 10)["rgb"][0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert window_rows(w, None)["rgb"].shape == (1, 5, 1)


# -- event detector --------------------------------------------------------------------------------------------------


def run_detector(det, scores, stride=1.0):
    events = []
    for i, p in enumerate(scores):
        events += det.update(i * stride, (i + 1) * stride, np.asarray(p))
    return events + det.close()


def test_event_detector_hysteresis_one_occurrence_one_event():
    det = EventDetector(2, threshold=0.5, off_threshold=0.3)
    # class 0 rises at span 2, dips to 0.4 (above off: stays open) at 4, falls below off at 6 -> [2, 6);
    # rises again at 8 and is still open at the end -> [8, 10). Class 1 never reaches 0.5 (0.45 peaks).
    c0 = [0.1, 0.2, 0.6, 0.9, 0.4, 0.55, 0.2, 0.1, 0.7, 0.8]
    c1 = [0.45, 0.1, 0.45, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    ev = run_detector(det, list(zip(c0, c1)))
    assert [(e.start, e.end, e.cls, e.score) for e in ev] == [(2.0, 6.0, 0, 0.9), (8.0, 10.0, 0, 0.8)]
    rec = ev[0].record("cam", ["dog", "cat"])
    assert rec == {"source": "cam", "start": 2.0, "end": 6.0, "class": 0, "name": "dog", "score": 0.9}


def test_event_detector_without_hysteresis_would_split_and_min_gap_merges():
    scores = [[0.6], [0.45], [0.6], [0.1], [0.1], [0.6], [0.1]]
    # off = on: every dip below 0.5 splits the occurrence
    split = run_detector(EventDetector(1, 0.5, 0.5), scores)
    assert [(e.start, e.end) for e in split] == [(0, 1), (2, 3), (5, 6)]
    # the default off threshold (0.4) bridges the 0.45 dip
    assert [(e.start, e.end) for e in run_detector(EventDetector(1, 0.5), scores)] == [(0, 3), (5, 6)]
    # min_gap 3 s: below off at span 3 and 4 (2 s since the end at 3), back at 5 -> one event
    merged = run_detector(EventDetector(1, 0.5, min_gap=3.0), scores)
    assert [(e.start, e.end) for e in merged] == [(0, 6)]
    # min_gap 2 s: at span 5 the class has been below off for 2 s (3..5): closed before it reopens
    assert [(e.start, e.end) for e in run_detector(EventDetector(1, 0.5, min_gap=2.0), scores)] == [(0, 3), (5, 6)]


def test_event_detector_rejects_bad_thresholds():
    for kwargs in ({"threshold": 0.0}, {"threshold": 1.5}, {"threshold": 0.5, "off_threshold": 0.7},
                   {"threshold": 0.5, "min_gap": -1}):
        with pytest.raises(ConfigError):
            EventDetector(3, **kwargs)


def test_frame_sampler_is_extracts_rule():
    times = [Fraction(i * 10, 73) for i in range(60)]  # 7.3 fps
    sampler = FrameSampler(1.0)
    assert [i for i, t in enumerate(times) if sampler.due(t)] == sample_frame_indices(times)
    assert sample_frame_indices(times)[:4] == [0, 8, 16, 24]  # t = 0, 1.096, 2.192, 3.288: every 8th


# -- end to end on real videos ---------------------------------------------------------------------------------------

av = pytest.importorskip("av")

from extract_videos import TinyPipeline  # noqa: E402

RATE = 2  # source frames per second: 1 fps sampling takes every other one
ON = (12, 20)  # the block is visible in seconds [12, 20) of the test video
WINDOW, STRIDE = 5.0, 1.0


def block_video(path, seconds: int, spans, rate: int = RATE, fmt: str | None = None, size=(64, 48)) -> None:
    """A dark noisy video with a bright block in the seconds of ``spans`` and a 440 Hz tone, audio interleaved
    with the video as a muxer would write a live stream."""
    c = av.open(str(path), "w", format=fmt)
    s = c.add_stream("mpeg4", rate=rate)
    s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
    a = c.add_stream("aac", rate=16000, layout="mono")
    rng = np.random.default_rng(len(spans))
    per = 16000 // rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(seconds * 16000) / 16000)).astype(np.float32)
    for i in range(seconds * rate):
        img = np.full((size[1], size[0], 3), 40, np.uint8) + rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8)
        if any(lo <= i / rate < hi for lo, hi in spans):
            img[8:40, 16:48] = 240
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
        f = av.AudioFrame.from_ndarray(tone[None, i * per:(i + 1) * per].copy(), format="fltp", layout="mono")
        f.sample_rate, f.pts = 16000, i * per
        for p in a.encode(f):
            c.mux(p)
    for st in (s, a):
        for p in st.encode():
            c.mux(p)
    c.close()


def bright(t: float, spans) -> bool:
    return any(lo <= t < hi for lo, hi in spans)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Attention Clusters model trained on 5-second windows of a training video: class 0 "block" when the
    block fills at least 3 of the window's 5 frames, class 1 "no block" otherwise. Returns (cfg, weights, test
    video (mkv), pipeline)."""
    import torch

    from attncluster.config import from_dict
    from attncluster.extract.pipeline import Extractor
    from attncluster.model import AttentionCluster

    root = tmp_path_factory.mktemp("watch")
    train_spans = [(3, 7), (11, 19), (24, 27), (31, 38)]
    block_video(root / "train.mkv", 42, train_spans, fmt="matroska")
    block_video(root / "test.mkv", 30, [ON], fmt="matroska")
    pipe = TinyPipeline()
    rec = Extractor(pipe, num_workers=0).extract(str(root / "train.mkv"))
    # random-weight features separate the block from none: every block frame is nearer the block frames' mean
    is_on = np.array([bright(t, train_spans) for t in rec["timestamps"]])
    rgb = rec["rgb"].astype(np.float32)
    mu_on, mu_off = rgb[is_on].mean(0), rgb[~is_on].mean(0)
    d_on = np.linalg.norm(rgb - mu_on, axis=1)
    d_off = np.linalg.norm(rgb - mu_off, axis=1)
    assert ((d_on < d_off) == is_on).all()

    n = int(WINDOW)
    starts = range(len(rgb) - n + 1)
    x = {m: torch.from_numpy(np.stack([rec[m][s:s + n] for s in starts])).float() for m in ("rgb", "audio")}
    from attncluster.data.records import dequantize

    x = {m: dequantize(v.to(torch.uint8)) for m, v in x.items()}
    y0 = torch.tensor([float(is_on[s:s + n].sum() >= 3) for s in starts])
    y = torch.stack([y0, 1 - y0], dim=1)
    raw = {"model": {"feature_dims": {"rgb": 1024, "audio": 128}, "cluster_nums": 2, "num_classes": 2,
                     "seg_num": n, "drop_rate": 0.0, "hidden_sizes": []}}
    cfg = from_dict(raw)
    torch.manual_seed(0)
    model = AttentionCluster(**cfg.model.model_kwargs())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = ((torch.sigmoid(model(x)) > 0.5).float() == y).float().mean().item()
    assert acc == 1.0, f"the test model did not learn the windows ({acc:.2f})"
    weights = root / "block.pt"
    torch.save({"model": model.state_dict()}, weights)
    return cfg, str(weights), root / "test.mkv", pipe


def run(trained, source, out=None, status=None, **kwargs):
    from attncluster.inference import TorchPredictor
    from attncluster.watch import watch

    cfg, weights, _, pipe = trained
    out = [] if out is None else out
    status = [] if status is None else status
    stats = watch(source, TorchPredictor(cfg, weights, "cpu"), pipe, window=WINDOW, stride=STRIDE, threshold=0.5,
                  names=["block", "no block"], seg_num=cfg.model.seg_num, emit=out.append, status=status.append,
                  **kwargs)
    return out, status, stats


def check_block_event(events, source):
    block = [e for e in events if e.get("class") == 0]
    assert len(block) == 1, events
    e = block[0]
    assert e["source"] == source and e["name"] == "block" and e["score"] > 0.5
    assert abs(e["start"] - ON[0]) <= STRIDE and abs(e["end"] - ON[1]) <= STRIDE, e
    # the complement class: before and after the block, within one stride too
    rest = [(x["start"], x["end"]) for x in events if x.get("class") == 1]
    assert len(rest) == 2 and rest[0][0] == 0.0 and abs(rest[0][1] - ON[0]) <= STRIDE
    assert abs(rest[1][0] - ON[1]) <= STRIDE and rest[1][1] == 30.0, rest


def test_watch_file_reports_the_block_within_one_stride(trained):
    video = trained[2]
    events, status, stats = run(trained, str(video))
    check_block_event(events, str(video))
    assert stats.frames == 30 and stats.media_seconds == 30.0
    assert stats.windows == 26  # full at frame 5, then one per stride: 1 + 25
    assert "x real time" in status[-1] and "frames/s" in status[-1]


def test_watch_stdin(trained, monkeypatch):
    """``-``: the video piped into stdin by a writer thread (a pipe: not seekable, arrives as it is written)."""
    r, w = os.pipe()
    data = trained[2].read_bytes()

    def feed():
        with os.fdopen(w, "wb") as out:
            for i in range(0, len(data), 8192):
                out.write(data[i:i + 8192])

    threading.Thread(target=feed, daemon=True).start()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(r, "rb")))
    events, status, stats = run(trained, "-")
    check_block_event(events, "-")
    assert "lag" in status[-1]  # a live source reports its lag behind real time


class Growing:
    """A file being written (by a thread, in chunks) and an HTTP server on 127.0.0.1 that serves it as it grows,
    chunked, until the writer is done; ``drop_after`` bytes: the first connection is cut there (no final chunk)."""

    def __init__(self, data: bytes, path, chunk: int = 16384, delay: float = 0.005, drop_after: int | None = None,
                 second: bytes | None = None):
        self.path, self.done, self.connections = path, threading.Event(), 0
        self.second = second
        path.write_bytes(b"")
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.connections += 1
                first = outer.connections == 1
                if outer.connections > 2 and outer.second is not None:  # the live stream is gone
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/x-matroska")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if not first and outer.second is not None:  # after a drop: the live stream goes on (a new file)
                    self._chunk(outer.second)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                sent = 0
                with open(outer.path, "rb") as f:
                    while True:
                        block = f.read(65536)
                        if block:
                            if first and drop_after is not None and sent + len(block) >= drop_after:
                                self._chunk(block[:drop_after - sent])
                                self.wfile.flush()
                                self.connection.shutdown(2)  # the connection drops mid-stream
                                return
                            self._chunk(block)
                            sent += len(block)
                        elif outer.done.is_set():
                            break
                        else:
                            time.sleep(0.01)
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, b):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.mkv"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

        def write():
            with open(path, "ab") as f:
                for i in range(0, len(data), chunk):
                    f.write(data[i:i + chunk])
                    f.flush()
                    time.sleep(delay)
            self.done.set()

        threading.Thread(target=write, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_watch_http_serves_the_file_as_it_grows(trained, tmp_path):
    srv = Growing(trained[2].read_bytes(), tmp_path / "live.mkv")
    try:
        events, status, stats = run(trained, srv.url)
    finally:
        srv.close()
    check_block_event(events, srv.url)
    assert stats.frames == 30 and srv.connections == 1


def test_watch_missing_file_is_one_error(trained, tmp_path):
    with pytest.raises(DataError, match="no such video file"):
        run(trained, str(tmp_path / "nope.mp4"))


def test_stream_features_equal_extracts_features_of_the_whole_file(trained):
    """Frames and audio as they arrive give the rows extract gives the whole file: the same sampled frames, and
    each frame's VGGish example by extract's alignment (j = round(t / 0.96), clipped to the last)."""
    from attncluster.extract.pipeline import Extractor
    from attncluster.watch import StreamFeatures, StreamSource

    class PerExample(TinyPipeline):  # each audio row from its own example alone, as VGGish + PCA computes it
        def audio_features(self, wav, sample_rate=16000):
            k = (wav.size - 15600) // 15360 + 1
            return np.concatenate([super(PerExample, self).audio_features(wav[i * 15360:i * 15360 + 15600])
                                   for i in range(k)])

    video = str(trained[2])
    ref = Extractor(PerExample(), num_workers=0).extract(video)
    feats = StreamFeatures(PerExample(), batch=4)
    got, kept = [], 0
    for item in StreamSource(video, size=TinyPipeline.frame_size):
        feats.add(item)
        got += feats.rows()
        kept = max(kept, feats.audio.size)
    got += feats.rows(final=True)
    assert kept <= 8 * 16000  # the audio kept is a few seconds (the batch, the muxer's lead), not the 30 s track
    assert [t for t, _ in got] == ref["timestamps"].tolist()
    np.testing.assert_array_equal(np.stack([r["rgb"] for _, r in got]), ref["rgb"])
    np.testing.assert_array_equal(np.stack([r["audio"] for _, r in got]), ref["audio"])


def test_watch_http_drop_is_reopened_and_the_gap_reported(trained, tmp_path):
    """The first connection is cut mid-stream (no final chunk); the reopened one carries on with the live stream
    (the video again, from its start); then the stream is gone (404). Open events close at the drop, the gap is one
    line, watch goes on after it, and gives up with one error after --max-retries failed reopenings."""
    data = trained[2].read_bytes()
    srv = Growing(data, tmp_path / "live.mkv", drop_after=len(data) // 2, second=data)
    out, status = [], []
    try:
        with pytest.raises(DataError, match="cannot open"):
            run(trained, srv.url, out, status, reconnect_at_eof=True, max_retries=1)
    finally:
        srv.close()
    gaps = [e for e in out if e.get("gap")]
    assert srv.connections == 3 and len(gaps) == 2, (out, status)
    drop = gaps[0]["start"]
    assert 10 <= drop <= 20 and gaps[0]["end"] == drop  # served faster than real time: no time was lost
    assert "the stream ended" in gaps[0]["reason"]
    block = [e for e in out if e.get("class") == 0]
    # the block [12, 20) cut at the drop, then again in the second opening: [drop + 12, drop + 20)
    assert len(block) == 2 and abs(block[0]["start"] - 12) <= STRIDE and block[0]["end"] <= drop
    assert abs(block[1]["start"] - (drop + 12)) <= STRIDE and abs(block[1]["end"] - (drop + 20)) <= STRIDE
    assert any("reopening in 1 s" in line for line in status) and any("giving up" in line for line in status)


def test_segments_of_a_whole_video_equal_watchs_events(trained):
    """The offline reading (explain) gives the events watch printed for the same file."""
    from attncluster.extract.pipeline import Extractor
    from attncluster.inference import TorchPredictor
    from attncluster.watch import segments

    cfg, weights, video, pipe = trained
    rec = Extractor(pipe, num_workers=0).extract(str(video))
    pred = TorchPredictor(cfg, weights, "cpu")
    ev = segments(pred.scores, {m: rec[m] for m in ("rgb", "audio")}, rec["timestamps"], window=WINDOW,
                  stride=STRIDE, seg_num=cfg.model.seg_num)
    watched, _, _ = run(trained, str(video))
    assert [(e.start, e.end, e.cls) for e in ev] == [(w["start"], w["end"], w["class"]) for w in watched]
    # scores: all windows in one batch here, one at a time in watch (float sums in another order: 1e-5)
    np.testing.assert_allclose([e.score for e in ev], [w["score"] for w in watched], atol=1e-5)
    assert [(e.start, e.end) for e in segments(pred.scores, {m: rec[m] for m in ("rgb", "audio")},
                                               rec["timestamps"], window=WINDOW, classes=[0])] == [(ON[0], ON[1])]


def test_explain_marks_the_predicted_segments(trained, tmp_path):
    """explain --videos: each record lists the top classes' segments (watch's events read offline) and the figure
    is drawn with them."""
    import dataclasses
    import json

    pytest.importorskip("matplotlib")
    from attncluster.explain import explain
    from attncluster.extract.pipeline import Extractor

    cfg, weights, video, pipe = trained
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, seg_num=30))  # every frame of the 30 s
    explain(cfg, weights, tmp_path / "out", videos=[str(video)], extractor=Extractor(pipe, num_workers=0),
            segment_window=WINDOW, top_k=2, log=lambda m: None)
    rec = json.loads((tmp_path / "out" / "test.json").read_text())
    block = [(s["start"], s["end"], s["rank"]) for s in rec["segments"] if s["class"] == 0]
    assert len(block) == 1 and abs(block[0][0] - ON[0]) <= STRIDE and abs(block[0][1] - ON[1]) <= STRIDE
    assert (tmp_path / "out" / "test.png").stat().st_size > 0


def test_cli_watch_user_errors_are_one_line(tmp_path, capsys):
    from attncluster.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {feature_dims: {rgb: 1024, audio: 128}, num_classes: 2, cluster_nums: 2, hidden_sizes: []}\n")
    w = tmp_path / "w.pt"
    w.write_bytes(b"")
    cases = [
        ([str(tmp_path / "nope.mkv")], "nope.mkv: no such video file"),
        (["-", "--window", "0"], "--window 0.0 and --stride 1.0: must be > 0 seconds"),
        (["-", "--threshold", "0.5", "--off-threshold", "0.8"], "--off-threshold 0.8: must be in [0, --threshold 0.5]"),
        (["-", "--fps", "0.5", "--window", "1"], "--window 1.0: holds no frame"),
    ]
    for argv, message in cases:
        rc = main(["watch", *argv, "--config", str(cfg), "--weights", str(w), "--random-weights", "0"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert main(["watch", "-", "--weights", str(w)]) == 2  # no --config, and the weights carry none (empty file)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "w.pt" in err and "Traceback" not in err, err


@pytest.mark.slow  # the export's parity check: ~40 s on the shared CPU
def test_watch_onnx_gives_the_torch_events(trained, tmp_path):
    """--onnx: the exported graph (run by onnxruntime, model settings from its metadata) finds the same events."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from attncluster.export import OnnxPredictor, export_onnx
    from attncluster.watch import watch

    cfg, weights, video, pipe = trained
    export_onnx(cfg, weights, str(tmp_path / "m.onnx"), input_dtype="uint8", log=lambda m: None)
    pred = OnnxPredictor(str(tmp_path / "m.onnx"), threads=1)
    out = []
    watch(str(video), pred, pipe, window=WINDOW, stride=STRIDE, seg_num=pred.seg_num, names=["block", "no block"],
          emit=out.append, status=lambda s: None)
    check_block_event(out, str(video))


def test_watch_live_source_behind_real_time_skips_frames_with_max_lag(trained):
    """A backbone slower than real time, made so with a clock that runs 3 s per reading (one reading per sampled
    frame at least, with --max-lag: 2 s of lag more per 1 s frame): without --max-lag every frame is scored; with it,
    the late ones are skipped and counted."""
    data = trained[2].read_bytes()

    def piped():
        r, w = os.pipe()

        def feed():
            with os.fdopen(w, "wb") as out:
                out.write(data)

        threading.Thread(target=feed, daemon=True).start()
        return os.fdopen(r, "rb")

    def slow_clock():
        ticks = iter(range(10**6))
        return lambda: 3.0 * next(ticks)

    with piped() as f:
        _, status, stats = run(trained, f, clock=slow_clock())
    assert stats.skipped == 0 and stats.frames == 30  # (the lag depends on how the reader thread batched them)
    with piped() as f:
        _, status, stats = run(trained, f, clock=slow_clock(), max_lag=5.0)
    assert 0 < stats.skipped < 30 and stats.frames + stats.skipped == 30
    assert f"{stats.skipped} frames skipped to keep up" in status[-1]


@pytest.mark.slow  # random-weight Inception-v3 on CPU: ~1-3 s a frame
def test_random_weight_inception_separates_the_block(tmp_path):
    """The premise of the tests above with the real backbone: random-weight Inception + PCA features of frames
    with the bright block are nearer their own mean than the other frames' (nearest-mean accuracy 1)."""
    from attncluster.extract.pipeline import Extractor, make_pipeline

    spans = [(2, 5)]
    block_video(tmp_path / "v.mkv", 8, spans, fmt="matroska", size=(96, 64))
    rec = Extractor(make_pipeline(random_weights=0, device="cpu"), num_workers=0).extract(str(tmp_path / "v.mkv"))
    on = np.array([bright(t, spans) for t in rec["timestamps"]])
    x = rec["rgb"].astype(np.float32)
    d_on = np.linalg.norm(x - x[on].mean(0), axis=1)
    d_off = np.linalg.norm(x - x[~on].mean(0), axis=1)
    assert on.sum() == 3 and ((d_on < d_off) == on).all()


@pytest.mark.slow  # the CLI with random-weight Inception + VGGish on CPU
def test_cli_watch_stdin_with_the_youtube8m_backbones(trained, tmp_path):
    """``attncluster watch -`` as a user runs it: the video piped into stdin, the YouTube-8M preset with random
    weights, a model of the right input sizes; JSON lines on stdout, status on stderr, exit 0."""
    import json
    import subprocess

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {feature_dims: {rgb: 1024, audio: 128}, num_classes: 2, cluster_nums: 2, seg_num: 5, "
                   "drop_rate: 0.0, hidden_sizes: []}\n")
    block_video(tmp_path / "v.mkv", 8, [(2, 5)], fmt="matroska", size=(96, 64))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with open(tmp_path / "v.mkv", "rb") as f:
        proc = subprocess.run([sys.executable, "-m", "attncluster", "watch", "-", "--config", str(cfg), "--weights",
                               trained[1], "--random-weights", "0", "--window", "3", "--threshold", "0.01",
                               "--device", "cpu"], stdin=f, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert lines and all(x["source"] == "-" and 0 <= x["start"] < x["end"] <= 8 for x in lines)
    assert "watch: done -: 8.0 s of video, 8 frames" in proc.stderr


def test_read_ahead_batches_what_queued_while_the_consumer_was_busy():
    from attncluster.watch import read_ahead

    arrived = threading.Event()

    def source():
        yield 0
        arrived.wait(5)  # the consumer is busy with item 0 meanwhile
        yield from (1, 2, 3)
        raise DataError("cam: stream failed (Connection reset)")

    got = []
    with pytest.raises(DataError, match="Connection reset"):
        for batch in read_ahead(source()):
            got.append(batch)
            if batch == [0]:
                arrived.set()
                time.sleep(0.3)  # the model runs; 1, 2, 3 queue up
    assert got == [[0], [1, 2, 3]]


@pytest.mark.parametrize("code", [404, 403])
def test_watch_url_the_server_refuses_is_one_error_at_once_not_retried(trained, code):
    """A 4xx answer is not a drop: reopening cannot mend it (old code: 5 reopenings with backoff, 31 s and 5 gap
    lines for a mistyped URL, then the error)."""
    calls = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            calls.append(self.path)
            self.send_error(code)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/missing.mkv"
    out, status = [], []
    t0 = time.monotonic()
    try:
        with pytest.raises(DataError, match=f"{url}: cannot open .*{code}"):
            run(trained, url, out, status, max_retries=5)
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - t0 < 1.0  # the first backoff is 1 s
    assert out == [] and len(calls) == 1
    assert any("giving up" in line and "reopening cannot" in line for line in status), status


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_watch_events_to_a_full_stdout_is_one_error_naming_stdout(trained, monkeypatch):
    """(old code: `error: File too large`, naming nothing.)"""
    from attncluster.errors import FileError
    from attncluster.inference import TorchPredictor
    from attncluster.watch import watch

    cfg, weights, video, pipe = trained
    full = open("/dev/full", "w")  # a real device whose every write fails with ENOSPC
    try:
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(FileError, match="^stdout: cannot write an event: No space left on device$"):
            watch(str(video), TorchPredictor(cfg, weights, "cpu"), pipe, window=WINDOW, stride=STRIDE,
                  threshold=0.5, names=["block", "no block"], seg_num=cfg.model.seg_num, status=lambda line: None)
    finally:
        monkeypatch.undo()
        try:
            full.close()  # the line that could not be written is still in its buffer
        except OSError:
            pass


def test_watch_stdin_with_a_plain_mp4_says_what_a_pipe_can_carry(trained, tmp_path, monkeypatch):
    """The commonest file piped into ``-`` is a plain mp4, whose index a pipe never reaches (old code:
    "-: stream failed (Invalid data found when processing input)", nothing more)."""
    block_video(tmp_path / "clip.mp4", 10, [(1, 2)])  # larger than what FFmpeg buffers while it probes
    r, w = os.pipe()
    data = (tmp_path / "clip.mp4").read_bytes()

    def feed():
        with os.fdopen(w, "wb") as out:
            try:
                out.write(data)
            except BrokenPipeError:
                pass

    threading.Thread(target=feed, daemon=True).start()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(r, "rb")))
    with pytest.raises(DataError, match=r"^-: .*\(.*\); stdin needs a streamable container such as mkv or mpegts"):
        run(trained, "-")
