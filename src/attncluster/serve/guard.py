"""What stands in front of the app: the ASGI guard (body size, metrics, disconnects) and uvicorn's HTTP parser with
one-line JSON errors.

Every answer the service gives is one line of JSON, also the ones no route sees: a body over the limit (413, here),
and a request that uvicorn's HTTP parser (h11) refuses, such as a ``Content-Length`` of ``-1`` or ``abc`` or two
that disagree (400, :func:`json_errors_protocol`). A client that goes away before its answer is counted as a
disconnect, not as an error status it was never sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from attncluster.errors import printable
from attncluster.serve.limits import MiB, RequestError
from attncluster.serve.metrics import ServeMetrics

log = logging.getLogger("attncluster.serve")

PREDICT = "/v1/predict"
PREDICT_VIDEO = "/v1/predict/video"
ENDPOINTS = (PREDICT, PREDICT_VIDEO, "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
LOGGED = "attncluster.logged"  # scope key: the app's error handler has logged this request's exception


def endpoint_of(path: str) -> str:
    """The ``endpoint`` label of a path: itself when it is one of ours, ``/docs`` for its assets, else ``other``."""
    if path in ENDPOINTS:
        return path
    return "/docs" if path.startswith("/docs/") else "other"


def error_body(message: str) -> bytes:
    return json.dumps({"error": " ".join(str(message).split())}).encode()


class BodyTooLarge(RequestError):
    pass


class Guard:
    """Outermost ASGI layer: per-request metrics, the body-size limit, and client disconnects.

    The body is never stored past the limit. A declared Content-Length over it is refused before the app sees the
    request; a chunked body is counted as it arrives and refused once it passes the limit. Before answering 413 the
    rest of the body is read and thrown away, up to ``DRAIN_BYTES`` and ``DRAIN_SECONDS`` (as nginx's lingering
    close), so that a client still sending gets the answer rather than a connection reset; a body declared larger
    than the limit plus that is answered at once without reading any of it.

    A request whose client closed the connection before the answer started (uvicorn's ``receive`` said
    ``http.disconnect``) is logged in one line and counted in ``attncluster_client_disconnects_total``, not as a
    status.
    """

    DRAIN_BYTES = 64 * MiB
    DRAIN_SECONDS = 2.0

    def __init__(self, app, limit_for: Callable[[str], int], metrics: ServeMetrics) -> None:
        self.app, self.limit_for, self.metrics = app, limit_for, metrics

    async def _error(self, send, status: int, message: str) -> None:
        body = error_body(message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def _drain(self, receive, more: bool) -> None:
        """Read and discard the rest of a refused body, within the drain budget."""
        seen, deadline = 0, time.monotonic() + self.DRAIN_SECONDS
        while more and seen < self.DRAIN_BYTES:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = endpoint_of(path)
        start = time.perf_counter()
        status: list[int | None] = [None]
        gone = [False]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect" and status[0] is None:
                gone[0] = True
            return message

        self.metrics.in_flight += 1
        try:
            limit = self.limit_for(path)
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and not length.strip().isdigit():  # h11 refuses these first; other servers may not
                return await self._error(send_status, 400, "Content-Length is not a number")
            if length is not None and int(length) > limit:
                if int(length) - limit <= self.DRAIN_BYTES:
                    await self._drain(watched_receive, more=True)
                return await self._error(send_status, 413, f"body of {int(length)} bytes, the limit is {limit} "
                                                           f"bytes for {path}")
            seen = 0

            async def limited_receive():
                nonlocal seen
                message = await watched_receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        await self._drain(watched_receive, message.get("more_body", False))
                        raise BodyTooLarge(413, f"body over {limit} bytes, the limit for {path}")
                return message

            try:
                await self.app(scope, limited_receive, send_status)
            except Exception as e:  # noqa: BLE001 - starlette re-raises what its 500 handler already answered
                if gone[0]:
                    pass
                elif status[0] is None:
                    log.exception("internal error on %s", path)
                    await self._error(send_status, 500, f"internal error ({type(e).__name__}); the server log has "
                                                        f"the details")
                elif not scope.get(LOGGED):
                    log.error("internal error on %s after the answer started: %s", path, type(e).__name__)
        finally:
            self.metrics.in_flight -= 1
            if gone[0]:
                log.warning("client disconnected before %s %s was answered", scope.get("method", ""), path)
                self.metrics.disconnect(endpoint)
            else:
                self.metrics.request(endpoint, status[0] or 500, time.perf_counter() - start)


def json_errors_protocol(metrics: ServeMetrics | None = None):
    """uvicorn's h11 protocol class, answering the requests its parser refuses with one line of JSON.

    uvicorn answers a request h11 cannot parse (a malformed request line or header, a ``Content-Length`` that is
    not one non-negative integer, two that disagree) with ``400 Invalid HTTP request received.`` as text/plain,
    before any ASGI app sees it. This subclass keeps uvicorn's handling and replaces only that answer, with h11's
    reason in it. Pass it as ``uvicorn.Config(http=...)``.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorsH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._bad_request = ""
            parse = self.conn.next_event

            def next_event():
                try:
                    return parse()
                except h11.RemoteProtocolError as e:
                    self._bad_request = str(e)  # what h11 found wrong; uvicorn's handler drops it
                    raise

            self.conn.next_event = next_event

        def send_400_response(self, msg: str) -> None:
            reason = printable(self._bad_request or msg, 200)
            body = error_body(f"malformed HTTP request: {reason}")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()
            if metrics is not None:
                metrics.request("other", 400, 0.0)

    return JsonErrorsH11Protocol


__all__ = ["ENDPOINTS", "Guard", "PREDICT", "PREDICT_VIDEO", "endpoint_of", "json_errors_protocol"]
