"""The service's metrics, written as Prometheus text exposition format 0.0.4 (no ``prometheus_client``)."""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float) -> None:
        for i, b in enumerate(self.buckets):
            if x <= b:
                self.counts[i] += 1
        self.sum += x
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.count}"]
        return out


class ServeMetrics:
    """Counters and histograms of the service; thread-safe (the batcher's worker reports batches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.batch_seconds = _Histogram(LATENCY_BUCKETS)
        self.batch_failures = 0
        self.videos = 0
        self.in_flight = 0
        self.extracting = 0  # video extractions running (0 or 1: one at a time)
        self.disconnects: dict[str, int] = {}  # requests whose client went away before an answer was sent


    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def disconnect(self, endpoint: str) -> None:
        """A request whose client closed the connection before it was answered: no status was sent, so it is not
        counted in ``requests_total``."""
        with self._lock:
            self.disconnects[endpoint] = self.disconnects.get(endpoint, 0) + 1

    def batch(self, size: int, seconds: float, failed: bool) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)
            self.batch_failures += int(failed)
            self.videos += 0 if failed else size

    def render(self, queue_depth: int, ready: bool) -> str:
        with self._lock:
            lines = ["# HELP attncluster_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE attncluster_requests_total counter"]
            lines += [f'attncluster_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP attncluster_request_errors_total HTTP requests answered with status >= 400.",
                      "# TYPE attncluster_request_errors_total counter"]
            errors: dict[str, int] = {}
            for (e, s), n in self.requests.items():
                if s >= 400:
                    errors[e] = errors.get(e, 0) + n
            lines += [f'attncluster_request_errors_total{{endpoint="{e}"}} {n}' for e, n in sorted(errors.items())]
            lines += ["# HELP attncluster_client_disconnects_total Requests whose client closed the connection before "
                      "the answer (no status sent).", "# TYPE attncluster_client_disconnects_total counter"]
            lines += [f'attncluster_client_disconnects_total{{endpoint="{e}"}} {n}'
                      for e, n in sorted(self.disconnects.items())]
            lines += ["# HELP attncluster_request_duration_seconds Time from request to answer.",
                      "# TYPE attncluster_request_duration_seconds histogram"]
            for e, h in sorted(self.latency.items()):
                lines += h.lines("attncluster_request_duration_seconds", f'endpoint="{e}"')
            lines += ["# HELP attncluster_batch_size Videos per model call.", "# TYPE attncluster_batch_size histogram"]
            lines += self.batch_size.lines("attncluster_batch_size")
            lines += ["# HELP attncluster_batch_duration_seconds Time of one model call.",
                      "# TYPE attncluster_batch_duration_seconds histogram"]
            lines += self.batch_seconds.lines("attncluster_batch_duration_seconds")
            for name, kind, text, value in (
                    ("batch_failures_total", "counter", "Model calls that raised.", self.batch_failures),
                    ("videos_total", "counter", "Videos scored.", self.videos),
                    ("queue_depth", "gauge", "Videos waiting for a batch.", queue_depth),
                    ("in_flight_requests", "gauge", "Requests being answered.", self.in_flight),
                    ("video_extractions_running", "gauge", "Video extractions running (one at a time).",
                     self.extracting),
                    ("ready", "gauge", "1 once the model is loaded and warmed up.", int(ready))):
                lines += [f"# HELP attncluster_{name} {text}", f"# TYPE attncluster_{name} {kind}",
                          f"attncluster_{name} {value}"]
        return "\n".join(lines) + "\n"


__all__ = ["ServeMetrics"]
