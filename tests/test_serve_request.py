"""serve/request.py: every upload type refuses non-finite features the same way, and a video request that times out
stops its extraction (the Extractor's cancellation point) and frees the extract lock for the next one."""

import json
import time

import numpy as np
import pytest
from extract_videos import TinyPipeline, make_video

from attncluster.data.records import MAX_FRAMES
from attncluster.data.tfrecord import TFRecordWriter
from attncluster.data.yt8m import encode_example
from attncluster.serve import ModelService, ServeLimits, create_app

DIMS = {"rgb": 1024, "audio": 128}


class MeanPredictor:
    """Three scores from the mean of each video's rgb features: enough to tell videos apart, and finite."""

    modalities = DIMS
    num_classes = 3
    loss = "bce"

    def scores(self, features):
        x = features["rgb"].astype(np.float32).mean(axis=(1, 2)) / 255  # (N,)
        return np.stack([x, 1 - x, np.full_like(x, 0.5)], axis=1)


def client(**kwargs):
    import warnings

    with warnings.catch_warnings():  # starlette's note about httpx versions
        warnings.filterwarnings("ignore", message=".*httpx.*testclient|.*testclient.*httpx", category=UserWarning)
        from starlette.testclient import TestClient

        app = create_app(ModelService(MeanPredictor(), seg_num=2), warmup=False, **kwargs)
        return TestClient(app, raise_server_exceptions=False), app


def assert_error(r, status, *needles):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "\n" not in r.text.strip() and list(r.json()) == ["error"], r.text
    for n in needles:
        assert n in r.json()["error"], (n, r.json())


def test_the_frame_limit_default_is_the_dataset_readers():
    assert ServeLimits().max_frames == MAX_FRAMES


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_get_the_same_422_from_json_npz_and_tfrecord(tmp_path, bad):
    rgb = np.full((3, 1024), 0.25, np.float32)
    rgb[1, 7] = bad
    audio = np.zeros((3, 128), np.float32)
    np.savez(tmp_path / "v.npz", rgb=rgb, audio=audio)
    with TFRecordWriter(str(tmp_path / "v.tfrecord")) as w:  # a video-level record: float features
        w.write(encode_example("v9", [0], {"rgb": rgb[1], "audio": audio[0]}))
    c, _ = client()
    with c:
        # JSON: Python's json writes NaN / Infinity, and so do other clients' lenient encoders.
        body = json.dumps({"videos": [{"id": "v9", "rgb": rgb.tolist(), "audio": audio.tolist()}]})
        r = c.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        # one description of the fault on every path (data.records.non_finite): the count, the first value and where
        assert_error(r, 422, "videos[0] (id 'v9').rgb: features hold 1 non-finite value (NaN or inf; the first, ",
                     "at frame 1, feature 7)")
        r = c.post("/v1/predict", files={"file": ("v9.npz", (tmp_path / "v.npz").read_bytes())})
        assert_error(r, 422, "v9.npz: array 'rgb': features hold 1 non-finite value (NaN or inf; the first, ",
                     "at frame 1, feature 7)")
        r = c.post("/v1/predict", files={"file": ("v.tfrecord", (tmp_path / "v.tfrecord").read_bytes())})
        assert_error(r, 422, "v.tfrecord: record 0", "(id 'v9'): 'rgb' features hold 1 non-finite value (NaN or inf; "
                     "the first, ", "at frame 0, feature 7)")
        # A float32 overflow in JSON (1e39) is infinity too.
        big = json.dumps({"videos": [{"id": "b", "rgb": [[1e39] * 1024], "audio": [[0.0] * 128]}]})
        assert_error(c.post("/v1/predict", content=big, headers={"content-type": "application/json"}), 422,
                     "(id 'b').rgb: features hold 1024 non-finite values (NaN or inf; the first, inf, at frame 0, "
                     "feature 0)")
        # The same video with finite values is answered.
        rgb[1, 7] = 0.5
        ok = json.dumps({"videos": [{"id": "v9", "rgb": rgb.tolist(), "audio": audio.tolist()}]})
        assert c.post("/v1/predict", content=ok, headers={"content-type": "application/json"}).status_code == 200


class SlowPipeline(TinyPipeline):
    """TinyPipeline whose frame backbone takes ``delay`` seconds a call, like a real one on a busy CPU."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def frame_features(self, frames):
        time.sleep(self.delay)
        return super().frame_features(frames)


def test_a_timed_out_video_request_stops_its_extraction_and_frees_the_lock(tmp_path):
    from attncluster.extract.pipeline import Extractor

    make_video(tmp_path / "long.mp4", 1200, rate=4, size=(32, 32))  # 300 s: 300 sampled frames, 75 batches of 4
    make_video(tmp_path / "small.mp4", 12, rate=4, size=(32, 32))  # 3 s: 3 frames, one batch
    pipeline = SlowPipeline(delay=0.25)  # the long one would run ~19 s
    extractor = Extractor(pipeline, num_workers=0, batch_frames=4)
    c, app = client(extractor=extractor, limits=ServeLimits(video_timeout_s=1.5))
    state = app.app.state.serve
    with c:
        t0 = time.monotonic()
        r = c.post("/v1/predict/video", files={"file": ("long.mp4", (tmp_path / "long.mp4").read_bytes())})
        assert_error(r, 504, "longer than 1.5 s (--video-timeout)")
        answered = time.monotonic()
        assert answered - t0 < 1.5 + 2.0  # the answer is not held back by the work
        while state.video.running:  # the extraction ends within a second, releasing the lock
            assert time.monotonic() - answered < 1.0, "the extraction still holds the lock"
            time.sleep(0.01)
        calls = len(pipeline.frame_calls)
        assert 0 < calls < 20  # it stopped early (75 calls for the whole video)
        assert "attncluster_video_extractions_running 0" in c.get("/metrics").text

        t1 = time.monotonic()
        r = c.post("/v1/predict/video", files={"file": ("small.mp4", (tmp_path / "small.mp4").read_bytes())})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["id"] == "small"
        assert time.monotonic() - t1 < 5.0  # was ~19 s behind the long one's extraction
        time.sleep(0.3)
        assert len(pipeline.frame_calls) == calls + 1  # the long one did nothing more in the meantime


def test_a_request_waiting_for_the_extract_lock_gives_up_at_its_deadline(tmp_path):
    from attncluster.extract.pipeline import Extractor

    make_video(tmp_path / "small.mp4", 12, rate=4, size=(32, 32))
    c, app = client(extractor=Extractor(TinyPipeline(), num_workers=0), limits=ServeLimits(video_timeout_s=0.5))
    video = app.app.state.serve.video
    with c:
        video.lock.acquire()  # another extraction holds it
        try:
            t0 = time.monotonic()
            r = c.post("/v1/predict/video", files={"file": ("small.mp4", (tmp_path / "small.mp4").read_bytes())})
            assert_error(r, 504, "longer than 0.5 s")
            assert time.monotonic() - t0 < 2.0
        finally:
            video.lock.release()
        r = c.post("/v1/predict/video", files={"file": ("small.mp4", (tmp_path / "small.mp4").read_bytes())})
        assert r.status_code == 200, r.text


class LayeredPipeline(TinyPipeline):
    """TinyPipeline whose frame backbone first runs ``rgb_net``, 40 torch layers of 0.1 s each: one call takes 4 s,
    as one CPU Inception-v3 call on a busy machine can."""

    def __init__(self):
        import torch

        super().__init__()

        class Slow(torch.nn.Module):
            def forward(self, x):
                time.sleep(0.1)
                return x

        self.rgb_net = torch.nn.Sequential(*[Slow() for _ in range(40)])

    def frame_features(self, frames):
        import torch

        self.rgb_net(torch.zeros(1))
        return super().frame_features(frames)


def test_a_timed_out_video_request_stops_inside_a_long_backbone_call(tmp_path):
    from attncluster.extract.pipeline import Extractor

    make_video(tmp_path / "long.mp4", 40, rate=4, size=(32, 32))  # 10 s: 10 frames, one call of 4 s
    pipeline = LayeredPipeline()
    c, app = client(extractor=Extractor(pipeline, num_workers=0), limits=ServeLimits(video_timeout_s=1.0))
    state = app.app.state.serve
    with c:
        r = c.post("/v1/predict/video", files={"file": ("long.mp4", (tmp_path / "long.mp4").read_bytes())})
        assert_error(r, 504, "longer than 1 s (--video-timeout)")
        answered = time.monotonic()
        while state.video.running:  # stopped between two layers, not at the end of the call (3 s later)
            assert time.monotonic() - answered < 1.0, "the extraction still holds the lock"
            time.sleep(0.01)
        assert pipeline.frame_calls == []  # the call never got past rgb_net
