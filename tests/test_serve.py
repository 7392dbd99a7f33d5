"""serve: a real server process on a loopback port, driven over HTTP, against predict's output on the same videos."""

import base64
import json
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# The test extra installs httpx and the serve extra (fastapi, uvicorn, python-multipart, fastapi-offline): a missing
# one is a failure of the install, so these imports are not skips.
import fastapi  # noqa: F401
import fastapi_offline  # noqa: F401
import httpx
import python_multipart  # noqa: F401
import uvicorn  # noqa: F401
from serve_helpers import Server

from attncluster.config import load_config, save_config
from attncluster.data.records import dequantize
from attncluster.data.synth import write_synthetic
from attncluster.data.yt8m import YT8MShard
from attncluster.model import AttentionCluster

TOKEN = "s3cret-Token_0123456789"
CLASSES = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic shards, a tiny model's config and weights, predict's JSONL on the shards, and the raw videos."""
    from attncluster.cli import main

    root = tmp_path_factory.mktemp("serve")
    write_synthetic(root / "data", videos=24, classes=CLASSES, shards=2, seed=3, max_frames=40)
    # seg_num 8 with videos of 5..40 frames: sampling matters; eval batch 7: predict's batches differ from ours.
    cfg = load_config(None, [f"model.num_classes={CLASSES}", "model.hidden_sizes=[16]", "model.cluster_nums=2",
                             "model.seg_num=8", "data.num_workers=0", "eval.batch_size=7"])
    save_config(cfg, root / "cfg.yaml")
    torch.manual_seed(0)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "w.pt")
    (root / "token").write_text(TOKEN + "\n")
    vocab = root / "data" / "vocabulary.csv"
    assert main(["predict", "--config", str(root / "cfg.yaml"), "--weights", str(root / "w.pt"), "--data",
                 str(root / "data"), "--output", str(root / "p.jsonl"), "--vocab", str(vocab), "--top-k", "3"]) == 0
    expected = {r["id"]: r for r in map(json.loads, (root / "p.jsonl").read_text().splitlines())}
    videos = []
    for shard in sorted((root / "data").glob("*.tfrecord")):
        videos += [(v.id, v.features) for v in YT8MShard(shard)]
    assert len(expected) == len(videos) == 24
    return {"root": root, "expected": expected, "videos": videos, "vocab": vocab,
            "common": ["--config", root / "cfg.yaml", "--weights", root / "w.pt", "--vocab", vocab]}


@pytest.fixture(scope="module")
def server(setup):
    s = Server(*setup["common"], "--token-file", setup["root"] / "token", "--max-body-mb", "1", "--max-videos", "6",
               "--max-wait-ms", "50")
    yield s
    s.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def as_json(vid, features, floats=False):
    out = {"id": vid}
    for m, a in features.items():
        out[m] = dequantize(a).tolist() if floats else {"uint8_b64": base64.b64encode(a.tobytes()).decode(),
                                                         "shape": list(a.shape)}
    return out


def assert_same_as_predict(records, expected):
    for r in records:
        e = expected[r["id"]]
        assert (r["classes"], r["names"]) == (e["classes"], e["names"])
        # Same frames, same model; float32 matmuls over another batch may move the 6th decimal by one.
        np.testing.assert_allclose(r["scores"], e["scores"], atol=1.5e-6)


def assert_error(r, status, *needles):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "\n" not in r.text.strip() and "Traceback" not in r.text, r.text
    body = r.json()
    assert list(body) == ["error"], body
    for n in needles:
        assert n in body["error"], (n, body["error"])


def batch_metrics(server) -> tuple[int, int]:
    """(model calls, videos scored) from the server's /metrics."""
    lines = httpx.get(server.url + "/metrics", headers=AUTH).text.splitlines()
    get = lambda name: int(float(next(x.split()[-1] for x in lines if x.startswith(name + " "))))  # noqa: E731
    return get("attncluster_batch_size_count"), get("attncluster_batch_size_sum")


def test_health_readiness_metrics_and_docs(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    assert "swagger" in httpx.get(server.url + "/docs").text.lower()
    spec = httpx.get(server.url + "/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    video = spec["components"]["schemas"]["VideoFeatures"]
    assert "QuantizedFrames" in json.dumps(video["additionalProperties"])
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert "# TYPE attncluster_batch_size histogram" in text and "attncluster_ready 1" in text
    assert 'attncluster_requests_total{endpoint="/healthz",status="200"}' in text


def test_docs_work_offline_every_asset_from_this_server(server):
    from html.parser import HTMLParser
    from urllib.parse import urljoin, urlsplit

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.urls = []

        def handle_starttag(self, tag, attrs):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]

    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    links = Links()
    links.feed(page.text)
    assert len(links.urls) >= 3, links.urls  # the script, the stylesheet, the icon
    here = urlsplit(server.url).netloc
    for url in links.urls + ["/openapi.json"]:
        full = urljoin(server.url + "/docs", url)
        assert urlsplit(full).netloc == here, url  # nothing from a CDN
        r = httpx.get(full)
        assert r.status_code == 200 and len(r.content) > 0, (url, r.status_code)
    assert "SwaggerUIBundle" in httpx.get(urljoin(server.url, next(u for u in links.urls if u.endswith(".js")))).text
    # No absolute URL anywhere in the page's own text (inline script included); the validator badge is off.
    assert "http://" not in page.text and "https://" not in page.text, page.text
    assert '"validatorUrl": null' in page.text


def test_concurrent_requests_answer_as_predict_does(setup, server):
    videos, expected = setup["videos"], setup["expected"]
    # 16 clients at once: single videos as uint8 base64, pairs, float lists; batches must form (max wait 50 ms).
    jobs = [[videos[i]] for i in range(12)] + [[videos[12], videos[13]], [videos[14], videos[15]]]
    jobs += [[videos[16]], [videos[17]]]
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs))
    before = batch_metrics(server)

    def client(i):
        floats = i % 4 == 3
        payload = {"videos": [as_json(v, f, floats) for v, f in jobs[i]], "top_k": 3}
        barrier.wait()
        try:
            r = httpx.post(server.url + "/v1/predict", json=payload, headers=AUTH, timeout=60)
            results[i] = (r.status_code, r.json())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (status, body), job in zip(results, jobs):
        assert status == 200, body
        assert [r["id"] for r in body["predictions"]] == [v for v, _ in job]
        assert_same_as_predict(body["predictions"], expected)
    after = batch_metrics(server)
    sent = sum(len(job) for job in jobs)
    assert after[1] - before[1] == sent  # every video scored once
    assert after[0] - before[0] < sent  # in fewer model calls: batches of several requests formed

    # A whole shard is 12 videos: over --max-videos 6.
    shard = sorted((setup["root"] / "data").glob("*.tfrecord"))[1]
    r = httpx.post(server.url + "/v1/predict", files={"file": shard.read_bytes()}, headers=AUTH)
    assert_error(r, 413, "more than 6 records")


def test_uploads_tfrecord_and_npz(setup, server, tmp_path):
    from attncluster.data.tfrecord import TFRecordWriter
    from attncluster.data.yt8m import encode_sequence_example

    videos, expected = setup["videos"], setup["expected"]
    path = tmp_path / "five.tfrecord"
    with TFRecordWriter(str(path)) as w:
        for vid, feats in videos[:5]:
            w.write(encode_sequence_example(vid, [0], feats))
    r = httpx.post(server.url + "/v1/predict?format=jsonl", files={"file": ("five.tfrecord", path.read_bytes())},
                   data={"top_k": "3"}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
    lines = r.text.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [v for v, _ in videos[:5]]
    assert_same_as_predict([json.loads(x) for x in lines], expected)
    # The same bytes as predict's file for the lines whose scores agree to the last digit (nearly all of them).
    predicted = {json.loads(x)["id"]: x for x in (setup["root"] / "p.jsonl").read_text().splitlines()}
    assert sum(line == predicted[json.loads(line)["id"]] for line in lines) >= 4

    vid, feats = videos[6]
    buf = tmp_path / "v.npz"
    np.savez(buf, **feats)
    r = httpx.post(server.url + "/v1/predict", content=buf.read_bytes(), params={"id": vid, "top_k": 3},
                   headers={**AUTH, "content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert_same_as_predict(r.json()["predictions"], expected)
    # A compressed npz whose array would inflate to 100 MB is refused before it is inflated.
    np.savez_compressed(tmp_path / "bomb.npz", rgb=np.zeros((100_000, 1024), np.uint8), audio=feats["audio"])
    r = httpx.post(server.url + "/v1/predict", files={"file": ("bomb.npz", (tmp_path / "bomb.npz").read_bytes())},
                   headers=AUTH)
    assert_error(r, 413, "bomb.npz: array 'rgb' is 102400128 bytes uncompressed")
    np.savez(tmp_path / "extra.npz", **feats, flow=feats["audio"])
    r = httpx.post(server.url + "/v1/predict", files={"file": ("extra.npz", (tmp_path / "extra.npz").read_bytes())},
                   headers=AUTH)
    assert_error(r, 422, "extra.npz: unknown modality 'flow'")


def _frames(t, dim, value=0):
    return {"uint8_b64": base64.b64encode(bytes([value]) * (t * dim)).decode(), "shape": [t, dim]}


BAD_JSON = [
    (b'{"videos": [', 400, "malformed JSON"),
    (b'[1, 2]', 422, "body"),
    (b'[' * 100000 + b']' * 100000, 400, "nested too deeply"),
    (json.dumps({"videos": []}).encode(), 422, "videos"),
    (json.dumps({"videos": [{"id": "a", "rgb": _frames(3, 1000), "audio": _frames(3, 128)}]}).encode(), 422,
     "[T, 1024]"),
    (json.dumps({"videos": [{"id": "a", "rgb": [[0.5] * 1024] * 2, "audio": [[0.5] * 127] * 2}]}).encode(), 422,
     "audio: frame 0 has 127 values, expected 128"),
    (json.dumps({"videos": [{"id": "a", "rgb": _frames(3, 1024), "flow": _frames(3, 128)}]}).encode(), 422,
     "unknown modality 'flow'"),
    (json.dumps({"videos": [{"id": "a", "rgb": _frames(3, 1024)}]}).encode(), 422, "no 'audio' features"),
    (json.dumps({"videos": [{"id": "a", "rgb": {"uint8_b64": "***", "shape": [1, 1024]},
                             "audio": _frames(1, 128)}]}).encode(), 422, "rgb.uint8_b64: not valid base64"),
    (json.dumps({"videos": [{"id": "a", "rgb": {"uint8_b64": "AAAA", "shape": [1, 1024]},
                             "audio": _frames(1, 128)}]}).encode(), 422, "decodes to 3 bytes"),
    (json.dumps({"videos": [{"id": "a", "rgb": "frames", "audio": _frames(1, 128)}]}).encode(), 422,
     "videos[0].rgb: expected"),
    (b'{"videos": [{"id": "a", "rgb": [[NaN]], "audio": [[1]]}]}', 422, "rgb"),
    (json.dumps({"videos": [{"id": "a", "rgb": _frames(301, 1024), "audio": _frames(301, 128)}]}).encode(), 413,
     "301 frames, the limit is 300"),
    (json.dumps({"videos": [{"id": str(i), "rgb": _frames(1, 1024), "audio": _frames(1, 128)}
                            for i in range(7)]}).encode(), 413, "7 videos in one request, the limit is 6"),
    (json.dumps({"videos": [{"id": "a", "rgb": _frames(1, 1024), "audio": _frames(1, 128)}], "top_k": 6}).encode(),
     422, "top_k 6: must be in 1..5"),
    (json.dumps({"videos": [{"id": "a", "rgb": _frames(1, 1024), "audio": _frames(1, 128)}], "k": 6}).encode(),
     422, "k: Extra inputs"),
]


@pytest.mark.parametrize("body,status,needle", BAD_JSON)
def test_bad_json_requests_get_one_line_4xx(server, body, status, needle):
    r = httpx.post(server.url + "/v1/predict", content=body, headers={**AUTH, "content-type": "application/json"})
    assert_error(r, status, needle)


def test_top_k_in_the_query_and_the_body_must_agree(server):
    video = {"id": "a", "rgb": _frames(3, 1024), "audio": _frames(3, 128)}
    body = json.dumps({"videos": [video], "top_k": 2}).encode()
    headers = {**AUTH, "content-type": "application/json"}
    assert_error(httpx.post(server.url + "/v1/predict?top_k=3", content=body, headers=headers), 422, "disagree")
    r = httpx.post(server.url + "/v1/predict?top_k=2", content=body, headers=headers)
    assert r.status_code == 200 and len(r.json()["predictions"][0]["classes"]) == 2


def test_bad_uploads_and_paths_get_one_line_4xx(setup, server):
    shard = sorted((setup["root"] / "data").glob("*.tfrecord"))[0].read_bytes()
    damaged = shard[:100] + bytes([shard[100] ^ 1]) + shard[101:2000]
    r = httpx.post(server.url + "/v1/predict", files={"file": ("x.tfrecord", damaged)}, headers=AUTH)
    assert_error(r, 422, "x.tfrecord: record 0", "CRC")
    r = httpx.post(server.url + "/v1/predict", content=b"hello", headers={**AUTH, "content-type": "text/plain"})
    assert_error(r, 415, "content type 'text/plain'")
    assert_error(httpx.post(server.url + "/v1/predict/video", files={"file": b"x"}, headers=AUTH), 503,
                 "--random-weights")
    assert_error(httpx.get(server.url + "/nowhere"), 404)
    assert_error(httpx.get(server.url + "/v1/predict", headers=AUTH), 405)


def test_oversized_bodies_are_refused(server):
    r = httpx.post(server.url + "/v1/predict", content=b" " * (3 << 20),
                   headers={**AUTH, "content-type": "application/json"})
    assert_error(r, 413, "the limit is 1048576 bytes")
    r = httpx.post(server.url + "/v1/predict", content=(b" " * (1 << 18) for _ in range(8)),  # chunked: no length
                   headers={**AUTH, "content-type": "application/json"})
    assert_error(r, 413, "body over 1048576 bytes")
    # A declared 1 GB body is answered at once, without sending a byte of it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n")
        reply = b""
        while b"}" not in reply:
            chunk = s.recv(4096)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b'"error": "body of 1000000000 bytes' in reply


def test_bearer_token_is_required(setup, server):
    payload = {"videos": [as_json(*setup["videos"][0])]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN[:-1]}X"},
                    {"Authorization": f"Basic {TOKEN}"}):
        assert_error(httpx.post(server.url + "/v1/predict", json=payload, headers=headers), 401, "bearer token")
    assert_error(httpx.get(server.url + "/metrics"), 401)
    assert httpx.post(server.url + "/v1/predict", json=payload, headers=AUTH).status_code == 200


def test_a_slow_upload_does_not_hold_up_others(setup, server):
    videos, done = setup["videos"], {}
    body = json.dumps({"videos": [as_json(*videos[0])], "top_k": 3}).encode()

    def slow():
        def parts():
            yield body[:50]
            time.sleep(2.0)
            yield body[50:]

        r = httpx.post(server.url + "/v1/predict", content=parts(), timeout=30,
                       headers={**AUTH, "content-type": "application/json"})
        done["slow"] = (time.monotonic(), r.status_code)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    r = httpx.post(server.url + "/v1/predict", json={"videos": [as_json(*videos[1])], "top_k": 3}, headers=AUTH)
    fast_done = time.monotonic()
    assert r.status_code == 200
    assert_same_as_predict(r.json()["predictions"], setup["expected"])
    t.join(30)
    assert done["slow"][1] == 200 and done["slow"][0] - fast_done > 1.0  # the fast one did not wait for it


def test_readme_client_example_runs(server, capsys):
    # The README's client block, as written, against this server (its URL and token put in the first line).
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("\n## Serving\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    first = 'URL, TOKEN = "http://127.0.0.1:8000", None'
    assert first in code and len([x for x in code.splitlines() if x.strip()]) <= 10
    exec(compile(code.replace(first, f"URL, TOKEN = {server.url!r}, {TOKEN!r}"), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("my-video [") and "Synthetic class" in out[0], out


def test_sigterm_lets_in_flight_requests_finish(setup, server):
    # Last test on this server. Clients that upload slowly are in flight when the signal arrives.
    videos, results = setup["videos"], {}

    def client(i):
        body = json.dumps({"videos": [as_json(*videos[i])], "top_k": 3}).encode()

        def slowly():
            yield body[:100]
            time.sleep(1.0)
            yield body[100:]

        r = httpx.post(server.url + "/v1/predict", content=slowly(), timeout=30,
                       headers={**AUTH, "content-type": "application/json"})
        results[i] = (r.status_code, r.json())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while "attncluster_in_flight_requests 5" not in httpx.get(server.url + "/metrics", headers=AUTH).text:
        assert time.monotonic() < deadline  # 4 uploads + this request
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert server.proc.wait(30) == 0
    assert sorted(results) == [0, 1, 2, 3]
    for status, body in results.values():
        assert status == 200, body
        assert_same_as_predict(body["predictions"], setup["expected"])
    assert "serve: stopped (SIGTERM)" in "".join(server.lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz")


# In-process: the app with predictors that misbehave on purpose (what a real model cannot be made to do on cue).


class _Predictor:
    modalities = {"rgb": 4}
    num_classes = 3
    loss = "bce"

    def __init__(self, delay=0.0):
        self.delay = delay

    def scores(self, features):
        x = features["rgb"].astype(np.float32).mean(axis=(1, 2))  # (N,)
        if (x == 255).any():
            raise RuntimeError("model blew up\nTraceback (most recent call last): ...")
        time.sleep(self.delay)
        return np.stack([x / 255, 1 - x / 255, np.full_like(x, 0.5)], axis=1)


def _test_client(app):
    """A TestClient (the app's lifespan runs inside ``with``); server errors come back as responses."""
    import warnings

    with warnings.catch_warnings():  # starlette's note about httpx versions
        warnings.filterwarnings("ignore", message=".*httpx.*testclient|.*testclient.*httpx", category=UserWarning)
        from starlette.testclient import TestClient

        return TestClient(app, raise_server_exceptions=False)


def _client(predictor, **kwargs):
    from attncluster.serve import ModelService, create_app

    return _test_client(create_app(ModelService(predictor, seg_num=2), warmup=False, **kwargs))


def _video(value, vid="v"):
    return {"id": vid, "rgb": {"uint8_b64": base64.b64encode(bytes([value]) * 12).decode(), "shape": [3, 4]}}


def test_internal_errors_are_one_line_json_and_fail_only_their_request():
    with _client(_Predictor(), max_batch=8, max_wait_ms=200) as c:
        out = {}

        def post(name, value):
            out[name] = c.post("/v1/predict", json={"videos": [_video(value, name)], "top_k": 1})

        threads = [threading.Thread(target=post, args=(n, v)) for n, v in (("good", 51), ("bad", 255), ("ok", 0))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert_error(out["bad"], 500, "internal error while scoring (RuntimeError)")
        assert "blew up" not in out["bad"].text
        assert out["good"].json() == {"predictions": [{"id": "good", "classes": [1], "scores": [0.8]}]}
        assert out["ok"].json()["predictions"][0]["classes"] == [1]


def test_slow_requests_time_out_with_504():
    from attncluster.serve import ServeLimits

    with _client(_Predictor(delay=1.0), limits=ServeLimits(request_timeout_s=0.2)) as c:
        t0 = time.monotonic()
        assert_error(c.post("/v1/predict", json={"videos": [_video(1)]}), 504, "longer than 0.2 s")
        assert time.monotonic() - t0 < 0.9


def test_cli_errors_are_one_line(setup, capsys):
    from attncluster.cli import main
    from attncluster.serve import is_loopback

    common = [str(x) for x in setup["common"]]
    assert main(["serve", *common[:2], "--weights", str(setup["root"] / "missing.pt")]) == 2
    assert main(["serve", *common, "--token-file", str(setup["root"] / "no-token")]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert main(["serve", *common, "--port", str(busy.getsockname()[1])]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert "missing.pt" in err[0] and "--token-file" in err[1] and "cannot listen on 127.0.0.1" in err[2]
    # A non-loopback address is warned about (before binding; 203.0.113.1 is a documentation address, not ours).
    assert main(["serve", *common, "--host", "203.0.113.1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith("warning: --host 203.0.113.1 is not a loopback address"), err
    assert err[1].startswith("error: cannot listen on 203.0.113.1:8000"), err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_help_names_the_endpoints(capsys):
    from attncluster.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for needle in ("/v1/predict", "/metrics", "--max-batch", "--max-wait-ms", "--token-file", "--onnx", "127.0.0.1"):
        assert needle in out, needle


@pytest.mark.slow
def test_onnx_model_serves_the_same_answers(setup, tmp_path):
    # --onnx: export's graph run by onnxruntime (slow: the export's dynamo trace), no config needed.
    pytest.importorskip("onnxruntime")
    from attncluster.cli import main

    root = setup["root"]
    assert main(["export", "--config", str(root / "cfg.yaml"), "--weights", str(root / "w.pt"), "--output",
                 str(tmp_path / "m.onnx"), "--vocab", str(setup["vocab"])]) == 0
    s = Server("--onnx", tmp_path / "m.onnx")
    try:
        payload = {"videos": [as_json(*v) for v in setup["videos"][:6]], "top_k": 3}
        r = httpx.post(s.url + "/v1/predict", json=payload, timeout=60)
        assert r.status_code == 200, r.text
        assert [p["id"] for p in r.json()["predictions"]] == [v for v, _ in setup["videos"][:6]]
        assert_same_as_predict(r.json()["predictions"], setup["expected"])  # names from the graph's vocabulary
        floats = {"videos": [as_json(*setup["videos"][0], floats=True)]}
        assert_error(httpx.post(s.url + "/v1/predict", json=floats), 422, "uint8 inputs")
    finally:
        s.stop()


# /v1/predict/video: needs attncluster.extract (issue 9) and PyAV; skipped where they are absent.


def make_clip(path, seconds=3, fps=10, size=(48, 64), audio=True):
    """A small mpeg4 clip whose frames change over time, with a 440 Hz tone."""
    import av

    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(seconds * fps):
            img = np.full((h, w, 3), (i * 8) % 256, dtype=np.uint8)
            img[:, : w // 2, 0] = 255 - (i * 8) % 256
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            wav = (0.3 * np.sin(2 * np.pi * 440 * np.arange(seconds * 16000) / 16000)).astype(np.float32)
            for k in range(0, len(wav), 1024):
                frame = av.AudioFrame.from_ndarray(wav[None, k:k + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = 16000, k
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)


class TinyBackbones:
    """A stand-in for the YouTube-8M backbones (they have their own tests): cheap, deterministic uint8 features,
    so the test exercises real decoding, the endpoint, sampling and the model."""

    modalities = {"rgb": 1024, "audio": 128}
    quantized = True
    frame_size = None

    def frame_features(self, frames):  # (T, H, W, 3) uint8 -> (T, 1024) uint8
        flat = frames.reshape(len(frames), -1).astype(np.int64)
        return ((flat[:, :1024] + np.arange(1024)) % 256).astype(np.uint8)

    def audio_features(self, wav, sample_rate=16000):  # -> (K, 128) uint8, one row per 0.96 s
        k = max(1, len(wav) // 15360)
        rows = np.array_split(np.abs(wav[: k * 15360]), k)
        return np.stack([np.full(128, min(255, int(r.mean() * 500)), dtype=np.uint8) for r in rows])


def test_video_upload_is_extracted_and_classified(setup, tmp_path):
    pytest.importorskip("av")
    pipeline = pytest.importorskip("attncluster.extract.pipeline")
    from attncluster.inference import TorchPredictor
    from attncluster.serve import ModelService

    cfg = load_config(setup["root"] / "cfg.yaml")
    extractor = pipeline.Extractor(TinyBackbones(), num_workers=0)
    make_clip(tmp_path / "clip.mp4")
    # Expected, computed here: the extractor's features, stratum-centre frames, the model by hand.
    out = extractor.extract(str(tmp_path / "clip.mp4"))
    n = min(len(out["rgb"]), len(out["audio"]))
    idx = np.minimum(np.floor((np.arange(8) + 0.5) * n / 8).astype(int), n - 1)
    model = AttentionCluster(**cfg.model.model_kwargs())
    model.load_state_dict(torch.load(setup["root"] / "w.pt", weights_only=True)["model"])
    x = {m: torch.from_numpy(out[m][idx].astype(np.float32) * (4 / 255) + (4 / 512 - 2))[None] for m in ("rgb", "audio")}
    with torch.no_grad():
        probs = torch.sigmoid(model.eval()(x))[0].numpy()
    want = np.argsort(-probs)[:3]

    from attncluster.serve import create_app

    service = ModelService(TorchPredictor(cfg, str(setup["root"] / "w.pt")), cfg.model.seg_num)
    with _test_client(create_app(service, extractor=extractor, warmup=False)) as c:
        r = c.post("/v1/predict/video", files={"file": ("clip.mp4", (tmp_path / "clip.mp4").read_bytes())},
                   data={"top_k": "3"})
        assert r.status_code == 200, r.text
        (rec,) = r.json()["predictions"]
        assert rec["id"] == "clip" and rec["classes"] == want.tolist()
        np.testing.assert_allclose(rec["scores"], probs[want], atol=2e-6)
        assert_error(c.post("/v1/predict/video", files={"file": ("broken.mp4", b"\x00" * 4000)}), 422, "broken.mp4")
        assert_error(c.post("/v1/predict/video", files={"file": ("empty.mp4", b"")}), 422, "empty")
        r = c.post("/v1/predict/video", json={"videos": []})  # features JSON belongs to /v1/predict
        assert_error(r, 415, "content type 'application/json': send multipart/form-data")
        assert "application/json" not in r.json()["error"].split(": send ")[1]


@pytest.mark.slow
def test_video_endpoint_with_random_weight_backbones(setup, tmp_path):
    # The real YouTube-8M pipeline with random weights, through a real server (slow: building Inception-v3).
    pytest.importorskip("av")
    pytest.importorskip("attncluster.extract.features")
    make_clip(tmp_path / "clip.mp4")
    s = Server(*setup["common"], "--random-weights", "0")
    try:
        clip = (tmp_path / "clip.mp4").read_bytes()
        r = httpx.post(s.url + "/v1/predict/video?top_k=2", files={"file": ("clip.mp4", clip)}, timeout=120)
        assert r.status_code == 200, r.text
        (rec,) = r.json()["predictions"]
        assert rec["id"] == "clip" and len(rec["classes"]) == 2 and rec["names"][0].startswith("Synthetic class")
    finally:
        s.stop()
