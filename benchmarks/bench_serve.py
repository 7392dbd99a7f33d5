"""Serving load test: dynamic batching against batch-1 serving, in the same run, on loopback.

Two ``attncluster serve`` processes on the same weights, one with dynamic batching (``--max-batch 64 --max-wait-ms
5``) and one with ``--max-batch 1``; N concurrent clients (threads, one keep-alive connection each) send M requests of
one video each (uint8 base64 JSON, the videos' stored frames; http.client) to one server, then to the other, alternating the order
round by round. Every answer is checked against ``attncluster predict``'s JSONL on the same videos (classes and names
equal, scores within 1.5e-6, and how many records are byte-identical). Reports throughput (requests/s), p50 / p95 /
p99 latency, errors and mismatches per mode, CPU milliseconds per request of the server and of the clients, the
per-round throughput ratio, the dynamic server's mean batch size (from its /metrics), and the model alone at batch 1
and at that batch size (the ceiling of what batching can give).

Bounded: M requests per round and mode, at most ``--max-seconds`` per round; the servers are stopped (SIGTERM) at
the end, also on errors. Loopback only.

Usage::

    python benchmarks/bench_serve.py                 # YouTube-8M model (57.8 M parameters), 16 clients, ~3-5 min
    python benchmarks/bench_serve.py --quick         # smoke run: small model, few requests
    python benchmarks/bench_serve.py --clients 16 --requests 400 --rounds 3 --json serve.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def report(result: dict, json_path: str | None) -> None:
    """Print the result as one JSON line, and write it to ``json_path`` when given."""
    line = json.dumps(result)
    print(line)
    if json_path:
        Path(json_path).write_text(line + "\n")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "attncluster", *args], check=True, stdout=subprocess.DEVNULL)


def prepare(work: Path, quick: bool, videos: int, max_frames: int) -> dict:
    """Synthetic videos, a config with random weights, and predict's JSONL on them."""
    import torch

    from attncluster.config import load_config, save_config
    from attncluster.data.synth import write_synthetic
    from attncluster.data.yt8m import YT8MShard
    from attncluster.model import AttentionCluster

    overrides = ["data.num_workers=0", "eval.batch_size=64"]
    if quick:
        overrides += ["model.num_classes=50", "model.hidden_sizes=[64]", "model.cluster_nums=4", "model.seg_num=20"]
    cfg = load_config(None if quick else ROOT / "configs" / "youtube8m.yaml", overrides)
    save_config(cfg, work / "cfg.yaml")
    torch.manual_seed(0)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, work / "w.pt")
    write_synthetic(work / "data", videos=videos, classes=cfg.model.num_classes, shards=1, seed=0,
                    max_frames=max_frames)
    run("predict", "--config", str(work / "cfg.yaml"), "--weights", str(work / "w.pt"), "--data", str(work / "data"),
        "--output", str(work / "expected.jsonl"), "--vocab", str(work / "data" / "vocabulary.csv"))
    lines = (work / "expected.jsonl").read_text().splitlines()
    expected = {json.loads(x)["id"]: (json.loads(x), x) for x in lines}
    bodies = []
    for v in YT8MShard(next((work / "data").glob("*.tfrecord"))):
        req = {"videos": [{"id": v.id, **{m: {"uint8_b64": base64.b64encode(a.tobytes()).decode(),
                                               "shape": list(a.shape)} for m, a in v.features.items()}}]}
        bodies.append((v.id, json.dumps(req).encode()))
    return {"cfg": cfg, "expected": expected, "bodies": bodies}


class Server:
    def __init__(self, work: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "attncluster", "serve", "--config", str(work / "cfg.yaml"), "--weights",
               str(work / "w.pt"), "--vocab", str(work / "data" / "vocabulary.csv"), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        first = self.proc.stderr.readline()
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        if not first.startswith("serve: http://127.0.0.1:"):
            raise RuntimeError(f"serve did not start: {first}")
        self.url = first.split()[1]

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.url} not ready after {timeout} s")

    def batch_stats(self) -> tuple[int, float]:
        import httpx

        text = httpx.get(self.url + "/metrics").text
        get = lambda name: float(next(l.split()[-1] for l in text.splitlines() if l.startswith(name + " ")))  # noqa
        return int(get("attncluster_batch_size_count")), get("attncluster_batch_size_sum")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(server: "Server", bodies, expected, clients: int, requests: int, max_seconds: float) -> dict:
    """``requests`` POSTs from ``clients`` threads; latency, errors, and agreement with predict for each.

    The clients use http.client with one keep-alive connection each: on the 2-core machine the small-model run
    reached 96 req/s with it against 25 with httpx, whose CPU the server it measures would otherwise lose.
    """
    import http.client

    host, port = server.url.rsplit("/", 1)[1].rsplit(":", 1)
    lock = threading.Lock()
    state = {"next": 0}
    latencies, errors, mismatches, identical = [], [], [0], [0]
    deadline = time.monotonic() + max_seconds

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            while True:
                with lock:
                    i = state["next"]
                    if i >= requests or time.monotonic() > deadline:
                        return
                    state["next"] += 1
                vid, body = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    text = r.read()
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                    continue
                dt = time.perf_counter() - t0
                ok = r.status == 200
                if ok:
                    rec = json.loads(text)["predictions"][0]
                    want, line = expected[vid]
                    same = (rec["id"], rec["classes"], rec.get("names")) == (want["id"], want["classes"],
                                                                             want.get("names")) and \
                        np.allclose(rec["scores"], want["scores"], rtol=0, atol=1.5e-6)
                with lock:
                    latencies.append(dt)
                    if not ok:
                        errors.append(f"{r.status}: {text[:200]!r}")
                    elif not same:
                        mismatches[0] += 1
                    else:
                        identical[0] += json.dumps(rec) == line
        finally:
            conn.close()

    cpu0, client0 = cpu_seconds(server.proc.pid), time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = max(len(latencies), 1)
    return {"requests": len(latencies), "seconds": wall, "rps": len(latencies) / wall if wall else 0.0,
            "latencies": latencies, "errors": errors, "mismatches": mismatches[0], "identical": identical[0],
            "server_cpu_ms": 1000 * (cpu_seconds(server.proc.pid) - cpu0) / done,
            "client_cpu_ms": 1000 * (time.process_time() - client0) / done}


def model_only(work: Path, batch: int, threads: int, seconds: float = 3.0) -> dict:
    """The model alone, in this process: videos/s at batch 1 and at ``batch``, interleaved (the ceiling batching
    can reach; the HTTP path's cost comes on top)."""
    import torch

    from attncluster.config import load_config
    from attncluster.inference import TorchPredictor

    cfg = load_config(work / "cfg.yaml")
    if threads:
        torch.set_num_threads(threads)
    p = TorchPredictor(cfg, str(work / "w.pt"), torch.device("cpu"))
    rng = np.random.default_rng(0)
    feats = lambda n: {m: rng.integers(0, 256, (n, cfg.model.seg_num, d), dtype=np.uint8)  # noqa: E731
                       for m, d in cfg.model.feature_dims.items()}
    out = {1: [], batch: []}
    for _ in range(3):
        for n in (1, batch):
            x = feats(n)
            p.scores(x)
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / 6:
                p.scores(x)
                k += 1
            out[n].append(n * k / (time.perf_counter() - t0))
    return {"batch": batch, "videos_s_batch1": statistics.median(out[1]),
            "videos_s_batch": statistics.median(out[batch]),
            "ratio": statistics.median(out[batch]) / statistics.median(out[1])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=320, help="requests per round and mode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--videos", type=int, default=64, help="distinct videos (synthetic, real frame-level schema)")
    p.add_argument("--max-frames", type=int, default=300)
    p.add_argument("--max-seconds", type=float, default=90.0, help="cap per round and mode")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1,
                   help="the servers' model threads (serve --threads; default 1: on a shared 2-core machine two "
                   "threads stall on each other, see docs/benchmarks.md; 0 = PyTorch's default)")
    p.add_argument("--quick", action="store_true", help="small model, 2 rounds of 64 requests")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if args.quick:
        args.requests, args.rounds, args.videos = 64, 2, 16

    sys.path.insert(0, str(ROOT / "src"))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        data = prepare(work, args.quick, args.videos, args.max_frames)
        threads = ["--threads", str(args.threads)]
        modes = {"dynamic": Server(work, "--max-batch", "64", "--max-wait-ms", str(args.max_wait_ms), *threads),
                 "batch-1": Server(work, "--max-batch", "1", *threads)}
        try:
            for s in modes.values():
                s.wait_ready()
            for name, s in modes.items():  # warm both: first requests pay for lazy imports and allocations
                load(s, data["bodies"], data["expected"], args.clients, 2 * args.clients, args.max_seconds)
            before = modes["dynamic"].batch_stats()
            rounds = []
            for r in range(args.rounds):
                order = list(modes) if r % 2 == 0 else list(modes)[::-1]
                res = {}
                for name in order:
                    res[name] = load(modes[name], data["bodies"], data["expected"], args.clients, args.requests,
                                     args.max_seconds)
                    print(f"round {r + 1} {name}: {res[name]['rps']:.1f} req/s, {len(res[name]['errors'])} errors, "
                          f"{res[name]['mismatches']} mismatches", file=sys.stderr, flush=True)
                rounds.append(res)
            after = modes["dynamic"].batch_stats()
        finally:
            for s in modes.values():
                s.stop()
        batches, videos = after[0] - before[0], after[1] - before[1]
        mean_batch = videos / batches if batches else 1.0
        model = model_only(work, max(1, round(mean_batch)), args.threads)

    summary, rows = {}, []
    for name in modes:
        lat = np.array([x for rd in rounds for x in rd[name]["latencies"]]) * 1000
        rps = [rd[name]["rps"] for rd in rounds]
        errs = [e for rd in rounds for e in rd[name]["errors"]]
        n = sum(rd[name]["requests"] for rd in rounds)
        summary[name] = {"rps_median": statistics.median(rps), "rps_rounds": rps, "requests": n, "errors": len(errs),
                         "error_examples": errs[:3], "mismatches": sum(rd[name]["mismatches"] for rd in rounds),
                         "byte_identical": sum(rd[name]["identical"] for rd in rounds),
                         "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                         "p99_ms": float(np.percentile(lat, 99)),
                         "server_cpu_ms_per_request": statistics.median(rd[name]["server_cpu_ms"] for rd in rounds),
                         "client_cpu_ms_per_request": statistics.median(rd[name]["client_cpu_ms"] for rd in rounds)}
        s = summary[name]
        rows.append([name, f"{s['rps_median']:.1f}", " / ".join(f"{x:.1f}" for x in rps), f"{s['p50_ms']:.0f}",
                     f"{s['p95_ms']:.0f}", f"{s['p99_ms']:.0f}", s["errors"], s["mismatches"],
                     f"{s['byte_identical']}/{n}", f"{s['server_cpu_ms_per_request']:.1f}",
                     f"{s['client_cpu_ms_per_request']:.1f}"])
    ratios = [rd["dynamic"]["rps"] / rd["batch-1"]["rps"] for rd in rounds]
    cfg = data["cfg"]
    result = {
        "bench": "serve", "clients": args.clients, "requests_per_round": args.requests, "rounds": args.rounds,
        "model": {"classes": cfg.model.num_classes, "seg_num": cfg.model.seg_num,
                  "hidden_sizes": cfg.model.hidden_sizes, "quick": args.quick},
        "videos": args.videos, "max_wait_ms": args.max_wait_ms, "threads": args.threads, "modes": summary,
        "ratio_rounds": ratios, "ratio_median": statistics.median(ratios),
        "dynamic_mean_batch": mean_batch, "model_only": model,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg()}, "seconds": time.time() - started,
    }
    print(table(["mode", "req/s (median)", "rounds", "p50 ms", "p95 ms", "p99 ms", "errors", "mismatches",
                 "byte-identical", "server CPU ms/req", "client CPU ms/req"], rows))
    print(f"dynamic / batch-1 throughput: {result['ratio_median']:.2f}x (rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); dynamic mean batch {mean_batch:.1f}")
    print(f"model alone (in-process): {model['videos_s_batch1']:.1f} videos/s at batch 1, "
          f"{model['videos_s_batch']:.1f} at batch {model['batch']} ({model['ratio']:.2f}x)")
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
