"""serve/guard.py against a real server process, over raw sockets: requests uvicorn's HTTP parser refuses get one
line of JSON, and a client that goes away mid-body is counted as a disconnect (no 500, no traceback)."""

import json
import socket
import time

import httpx
import pytest
import torch
from serve_helpers import Server

from attncluster.config import load_config, save_config
from attncluster.model import AttentionCluster


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    cfg = load_config(None, ["model.num_classes=3", "model.hidden_sizes=[8]", "model.cluster_nums=2",
                             "model.seg_num=2"])
    save_config(cfg, root / "cfg.yaml")
    torch.manual_seed(0)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "w.pt")
    s = Server("--config", root / "cfg.yaml", "--weights", root / "w.pt")
    yield s
    s.stop()


def exchange(server, raw: bytes, close_after_send: bool = False) -> bytes:
    """Send ``raw`` on a new connection and read until the server closes it (or return at once)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        if close_after_send:
            return b""
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return reply
            reply += chunk


def metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("lengths,why", [
    ([b"-1"], "Content-Length"),
    ([b"abc"], "Content-Length"),
    ([b"5", b"7"], "Content-Length"),
    ([b"5, 7"], "Content-Length"),
])
def test_a_malformed_content_length_gets_one_line_json_400(server, lengths, why):
    headers = b"".join(b"Content-Length: " + n + b"\r\n" for n in lengths)
    reply = exchange(server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers
                     + b"\r\n{}")
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 400"), reply
    fields = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    assert fields["content-type"] == "application/json", reply
    assert int(fields["content-length"]) == len(body) and b"\n" not in body, reply
    error = json.loads(body)["error"]
    assert list(json.loads(body)) == ["error"] and error.startswith("malformed HTTP request: "), body
    assert why in error, error


def test_a_client_that_disconnects_mid_body_is_a_disconnect_not_a_500(server):
    name = 'attncluster_client_disconnects_total{endpoint="/v1/predict"}'
    before, errors_before = metric(server, name), metric(server, 'attncluster_request_errors_total{endpoint="/v1/predict"}')
    start = len(server.lines)
    exchange(server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"videos": [' + b" " * 300, close_after_send=True)
    deadline = time.monotonic() + 10
    while metric(server, name) < before + 1:
        assert time.monotonic() < deadline, httpx.get(server.url + "/metrics").text
        time.sleep(0.05)
    time.sleep(0.2)  # let the log line arrive
    text = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in text, text
    assert metric(server, 'attncluster_request_errors_total{endpoint="/v1/predict"}') == errors_before
    log = [x for x in server.lines[start:] if x.strip()]
    assert len(log) == 1 and "client disconnected before POST /v1/predict was answered" in log[0], log
    assert not any("Traceback" in x or "internal error" in x for x in server.lines), "".join(server.lines)
    # The server goes on answering.
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
