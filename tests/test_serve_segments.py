"""serve: per-segment answers for an uploaded video (``/v1/predict/video?segments=true``, issue 16 section 4).

Videos are made here with PyAV (tests/extract_videos.py), featurised by a small random-weight pipeline, and the
expected segments are computed in the test from the same extracted features with the model run by hand on each
5-frame slice.
"""

import json
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

import fastapi  # noqa: F401 - the serve extra is part of the test install: a missing one fails
import httpx  # noqa: F401

from attncluster.config import load_config, save_config
from attncluster.inference import top_classes
from attncluster.model import AttentionCluster

CLASSES = 6
NAMES = [f"class {i}" for i in range(CLASSES)]

pytest.importorskip("av")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model (random weights), a small random-weight feature pipeline, and a 12 s video (not a multiple of
    5 s) together with its features as the extractor gives them."""
    from extract_videos import TinyPipeline, make_video

    from attncluster.extract.pipeline import Extractor

    root = tmp_path_factory.mktemp("servseg")
    cfg = load_config(None, [f"model.num_classes={CLASSES}", "model.hidden_sizes=[16]", "model.cluster_nums=2",
                             "model.seg_num=4", "data.num_workers=0"])
    save_config(cfg, root / "cfg.yaml")
    torch.manual_seed(1)
    model = AttentionCluster(**cfg.model.model_kwargs()).eval()
    torch.save({"model": model.state_dict()}, root / "w.pt")
    make_video(root / "clip.mp4", 48, rate=Fraction(4), audio_hz=440, audio_rate=16000)  # 12 s at 4 fps
    extractor = Extractor(TinyPipeline(seed=2), num_workers=0)
    feats = extractor.extract(str(root / "clip.mp4"))
    return {"root": root, "cfg": cfg, "model": model, "extractor": extractor, "feats": feats,
            "clip": (root / "clip.mp4").read_bytes()}


def _client(setup, extractor=None, **limits):
    import warnings

    from attncluster.inference import TorchPredictor
    from attncluster.serve import ModelService, ServeLimits, create_app

    service = ModelService(TorchPredictor(setup["cfg"], str(setup["root"] / "w.pt")), setup["cfg"].model.seg_num,
                           NAMES)
    app = create_app(service, extractor=extractor or setup["extractor"], warmup=False, limits=ServeLimits(**limits))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx.*testclient|.*testclient.*httpx", category=UserWarning)
        from starlette.testclient import TestClient

        return TestClient(app, raise_server_exceptions=False)


def _probs(model, feats, idx):
    """The model by hand on the frames ``idx`` of the extracted (quantized) features."""
    x = {m: torch.from_numpy(feats[m][idx].astype(np.float32) * (4 / 255) + (4 / 512 - 2))[None]
         for m in ("rgb", "audio")}
    with torch.no_grad():
        return torch.sigmoid(model(x))[0].numpy()


def expected_segments(model, feats, k):
    """Every 5-frame slice [0, 5), [5, 10), ... through the model; a last slice of n < 5 frames repeats its frames
    evenly to 5 (as predict --segments: frame i of the 5 is start + i * n // 5). Top k by inference.top_classes."""
    t = min(len(feats["rgb"]), len(feats["audio"]))
    out = []
    for start in range(0, t, 5):
        n = min(5, t - start)
        idx = [start + i * n // 5 for i in range(5)]
        probs = _probs(model, feats, idx)
        classes, scores = top_classes(probs, k)
        out.append({"start": start, "end": start + n, "classes": classes.tolist(), "scores": scores.tolist(),
                    "names": [NAMES[c] for c in classes]})
    return out


def assert_error(r, status, *needles):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "\n" not in r.text.strip() and "Traceback" not in r.text, r.text
    assert list(r.json()) == ["error"], r.text
    for n in needles:
        assert n in r.json()["error"], (n, r.json()["error"])


def assert_same_segments(got, want):
    assert [(s["start"], s["end"], s["classes"], s["names"]) for s in got] == \
        [(s["start"], s["end"], s["classes"], s["names"]) for s in want]
    for g, w in zip(got, want):
        # The same frames through the same model; float32 over another batch shape may move the 6th decimal by one.
        np.testing.assert_allclose(g["scores"], w["scores"], atol=2e-6)


def test_segments_of_an_uploaded_video_are_the_model_on_each_5_second_slice(setup):
    feats, model = setup["feats"], setup["model"]
    assert min(len(feats["rgb"]), len(feats["audio"])) == 12  # 12 s at 1 fps: the last segment is 2 s
    want = expected_segments(model, feats, 3)
    assert [(s["start"], s["end"]) for s in want] == [(0, 5), (5, 10), (10, 12)]  # by hand
    # The video-level answer: seg_num 4 stratum centres of 12 frames (1, 4, 7, 10), as today.
    video = _probs(model, feats, [1, 4, 7, 10])
    classes, scores = top_classes(video, 3)
    with _client(setup) as c:
        r = c.post("/v1/predict/video?segments=true", files={"file": ("clip.mp4", setup["clip"])},
                   data={"top_k": "3"})
        assert r.status_code == 200, r.text
        (rec,) = r.json()["predictions"]
        assert list(rec) == ["id", "classes", "scores", "names", "segments"]
        assert rec["id"] == "clip" and rec["classes"] == classes.tolist()
        np.testing.assert_allclose(rec["scores"], scores, atol=2e-6)
        assert_same_segments(rec["segments"], want)
        assert all(len(s["classes"]) == 3 for s in rec["segments"])

        # The form field works as the query parameter; top_k 1 keeps one class per segment.
        r = c.post("/v1/predict/video", files={"file": ("clip.mp4", setup["clip"])},
                   data={"segments": "true", "top_k": "1", "id": "x"})
        assert r.status_code == 200, r.text
        assert_same_segments(r.json()["predictions"][0]["segments"], expected_segments(model, feats, 1))

        # format=jsonl: the one line carries the segments too.
        r = c.post("/v1/predict/video?segments=1&format=jsonl&top_k=3", files={"file": ("clip.mp4", setup["clip"])})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
        (line,) = r.text.splitlines()
        assert_same_segments(json.loads(line)["segments"], want)


def test_start_and_end_are_seconds_at_the_extractors_fps(setup):
    # --fps 2: 24 frames of the 12 s video; a segment is still 5 frames, now 2.5 s.
    from extract_videos import TinyPipeline

    from attncluster.extract.pipeline import Extractor

    extractor = Extractor(TinyPipeline(seed=2), fps=2, num_workers=0)
    feats = extractor.extract(str(setup["root"] / "clip.mp4"))
    assert min(len(feats["rgb"]), len(feats["audio"])) == 24
    want = expected_segments(setup["model"], feats, 2)
    with _client(setup, extractor) as c:
        r = c.post("/v1/predict/video?segments=true&top_k=2", files={"file": ("clip.mp4", setup["clip"])})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"][0]["segments"]
    assert [(s["start"], s["end"]) for s in got] == [(0, 2.5), (2.5, 5), (5, 7.5), (7.5, 10), (10, 12)]
    for g, w in zip(got, want):
        g["start"], g["end"] = g["start"] * 2, g["end"] * 2  # back to frames, as expected_segments counts
    assert_same_segments(got, want)


def test_without_segments_the_answer_is_unchanged(setup):
    feats, model = setup["feats"], setup["model"]
    video = _probs(model, feats, [1, 4, 7, 10])
    classes, scores = top_classes(video, 2)
    want = {"id": "clip", "classes": classes.tolist(), "scores": [round(float(s), 6) for s in scores],
            "names": [NAMES[c] for c in classes]}
    with _client(setup) as c:
        for url, data in (("/v1/predict/video?top_k=2", {}), ("/v1/predict/video?top_k=2&segments=false", {}),
                          ("/v1/predict/video?top_k=2", {"segments": "false"})):
            r = c.post(url, files={"file": ("clip.mp4", setup["clip"])}, data=data)
            assert r.status_code == 200, r.text
            (rec,) = r.json()["predictions"]
            assert list(rec) == ["id", "classes", "scores", "names"]  # no "segments" key
            assert rec["classes"] == want["classes"] and rec["names"] == want["names"]
            np.testing.assert_allclose(rec["scores"], want["scores"], atol=2e-6)


def test_bad_segments_values_are_one_line_422(setup):
    with _client(setup) as c:
        clip = {"file": ("clip.mp4", setup["clip"])}
        assert_error(c.post("/v1/predict/video?segments=maybe", files=clip), 422, "segments")
        assert_error(c.post("/v1/predict/video", files=clip, data={"segments": "maybe"}), 422,
                     "segments 'maybe': expected true or false")
        assert_error(c.post("/v1/predict/video?segments=false", files=clip, data={"segments": "true"}), 422,
                     "segments true in the form and segments=false in the query disagree")


def test_segments_are_bounded_by_max_frames(setup):
    # 12 frames with --max-frames 10: the segments are refused (413); the video-level answer still comes.
    with _client(setup, max_frames=10) as c:
        clip = {"file": ("clip.mp4", setup["clip"])}
        assert_error(c.post("/v1/predict/video?segments=true", files=clip), 413,
                     "clip.mp4: 12 frames, segments=true scores at most 10 (--max-frames)")
        assert c.post("/v1/predict/video", files=clip).status_code == 200


def test_openapi_documents_segments(setup):
    with _client(setup) as c:
        spec = c.get("/openapi.json").json()
    op = spec["paths"]["/v1/predict/video"]["post"]
    (param,) = [p for p in op["parameters"] if p["name"] == "segments"]
    assert "5-second segment" in param["description"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["segments"]["type"] == "boolean"
    segment = spec["components"]["schemas"]["Segment"]
    assert {"start", "end", "classes", "scores"} <= set(segment["required"])
    assert "segments" in spec["components"]["schemas"]["Prediction"]["properties"]
    assert "segments" not in [p["name"] for p in spec["paths"]["/v1/predict"]["post"]["parameters"]]


def test_a_request_that_times_out_while_its_segments_are_scored_is_504(setup):
    # The model is slow on the segments' batch (5 frames); the video-level batch (4 frames) is not. The request's
    # time limit still holds with segments, and the scoring thread is not blocked by the abandoned request.
    from attncluster.inference import TorchPredictor
    from attncluster.serve import ModelService, ServeLimits, create_app

    release = threading.Event()

    class SlowSegments(TorchPredictor):
        def scores(self, features):
            if next(iter(features.values())).shape[1] == 5:
                release.wait(10)
            return super().scores(features)

    service = ModelService(SlowSegments(setup["cfg"], str(setup["root"] / "w.pt")), setup["cfg"].model.seg_num,
                           NAMES)
    from starlette.testclient import TestClient

    app = create_app(service, extractor=setup["extractor"], warmup=False, limits=ServeLimits(video_timeout_s=1.0))
    with TestClient(app, raise_server_exceptions=False) as c:
        try:
            r = c.post("/v1/predict/video?segments=true", files={"file": ("clip.mp4", setup["clip"])})
            assert_error(r, 504, "longer than 1 s (--video-timeout)")
        finally:
            release.set()
        assert c.post("/v1/predict/video?segments=true", files={"file": ("clip.mp4", setup["clip"])}).status_code \
            == 200


@pytest.mark.slow
def test_real_server_with_random_weight_backbones_answers_segments(setup, tmp_path):
    # A real `attncluster serve` process on 127.0.0.1 with the real YouTube-8M pipeline (random weights: slow to
    # build), a 7 s video; expected: the same pipeline built here, the model by hand on each 5-frame slice.
    pytest.importorskip("attncluster.extract.features")
    from extract_videos import make_video
    from serve_helpers import Server

    from attncluster.extract.features import FeaturePipeline
    from attncluster.extract.pipeline import Extractor

    make_video(tmp_path / "seven.mp4", 14, rate=Fraction(2), audio_hz=440, audio_rate=16000)
    feats = Extractor(FeaturePipeline.create(preset="yt8m", random_weights=0), num_workers=0).extract(
        str(tmp_path / "seven.mp4"))
    assert min(len(feats["rgb"]), len(feats["audio"])) == 7
    want = expected_segments(setup["model"], feats, 2)
    assert [(s["start"], s["end"]) for s in want] == [(0, 5), (5, 7)]
    s = Server("--config", setup["root"] / "cfg.yaml", "--weights", setup["root"] / "w.pt", "--random-weights", "0")
    try:
        r = httpx.post(s.url + "/v1/predict/video?top_k=2&segments=true",
                       files={"file": ("seven.mp4", (tmp_path / "seven.mp4").read_bytes())}, timeout=120)
        assert r.status_code == 200, r.text
        (rec,) = r.json()["predictions"]
        got = rec["segments"]
        assert [(g["start"], g["end"], g["classes"]) for g in got] == [(w["start"], w["end"], w["classes"])
                                                                        for w in want]
        for g, w in zip(got, want):
            # Inception-v3 here and in the server: float32 convolutions, then quantized to uint8 (a rounding
            # boundary may move a feature by one step), so compare the scores with a tolerance.
            np.testing.assert_allclose(g["scores"], w["scores"], atol=2e-3)
        r = httpx.post(s.url + "/v1/predict/video?segments=nope", files={"file": ("seven.mp4", b"x")}, timeout=30)
        assert_error(r, 422, "segments")
    finally:
        s.stop()
