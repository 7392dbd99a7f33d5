"""Dynamic batching for ``serve``: items from concurrent requests run through the model together.

One worker thread owns the model. Requests put items (one video each) on a queue and get a
:class:`concurrent.futures.Future` per item; the worker takes the first waiting item, keeps collecting until it holds
``max_batch`` items or ``max_wait_ms`` have passed since that first item, and runs the batch function once on all of
them. The HTTP event loop only waits on futures (``asyncio.wrap_future``), so it stays free while the model runs.

A failure is confined to the items that cause it: when the batch function raises on a batch of several items, each
item is run again on its own, so only the bad ones get the exception and the others their results. A cancelled
future (a request that timed out while queued) is dropped before its batch runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()  # queue sentinel: items queued before it are still run (graceful drain)


class BatcherClosed(RuntimeError):
    """Raised by :meth:`DynamicBatcher.submit` after :meth:`DynamicBatcher.close`."""


class DynamicBatcher(Generic[T, R]):
    """Collects items from many threads into batches for one worker thread.

    Args:
        fn: ``fn(items) -> results``, one result per item, in order. Runs in the worker thread only, so it may hold
            state that is not thread-safe (a model).
        max_batch: most items per call of ``fn``.
        max_wait_ms: how long the worker waits for more items after the first one of a batch arrives. 0 runs
            whatever is queued at once.
        on_batch: called in the worker after each call of ``fn`` with (batch size, seconds it took, failed).

    Example::

        batcher = DynamicBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_ms=5)
        assert batcher.submit(21).result() == 42
        batcher.close()
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 64, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, float, bool], Any] | None = None, name: str = "attncluster-batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._waiting = 0  # items queued and not yet taken into a batch (the queue depth metric)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the batch running now)."""
        return self._waiting

    def submit(self, item: T) -> Future:
        """Queue one item; its future resolves to ``fn``'s result for it (or its exception)."""
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[Future]:
        """Queue several items at once (one request's videos), in order, one future each."""
        futures = [Future() for _ in items]
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is shutting down")
            self._waiting += len(items)
            for item, fut in zip(items, futures):
                self._queue.put((item, fut))
        return futures

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting items, run every item already queued, and stop the worker."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- worker --------------------------------------------------------------------------------------------------

    def _take(self, entry) -> tuple[T, Future]:
        with self._lock:
            self._waiting -= 1
        return entry

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            entry = self._queue.get()
            if entry is _STOP:
                return
            batch = [self._take(entry)]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    # Items already queued are taken without waiting, also past the deadline (they would only wait
                    # longer for the next batch); new ones are waited for until the deadline.
                    entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) \
                        if time.monotonic() < deadline else self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stopping = True
                    break
                batch.append(self._take(entry))
            # A future cancelled while queued (its request timed out or went away) is dropped here.
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if live:
                self._run(live)

    def _call(self, items: list[T]) -> list[R]:
        results = list(self.fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    def _run(self, live: list[tuple[T, Future]]) -> None:
        start = time.perf_counter()
        try:
            results = self._call([item for item, _ in live])
        except Exception as e:  # noqa: BLE001 - any failure goes to the futures, never kills the worker
            self._report(len(live), start, failed=True)
            if len(live) == 1:
                live[0][1].set_exception(e)
                return
            # Which item failed is unknown: run each alone, so only the failing ones get an exception.
            for item, fut in live:
                start = time.perf_counter()
                try:
                    fut.set_result(self._call([item])[0])
                    self._report(1, start, failed=False)
                except Exception as e1:  # noqa: BLE001
                    fut.set_exception(e1)
                    self._report(1, start, failed=True)
            return
        self._report(len(live), start, failed=False)
        for (_, fut), result in zip(live, results):
            fut.set_result(result)

    def _report(self, size: int, start: float, failed: bool) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(size, time.perf_counter() - start, failed)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop the worker
                pass


__all__ = ["BatcherClosed", "DynamicBatcher"]
