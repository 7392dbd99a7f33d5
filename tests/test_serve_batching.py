"""serve.batching.DynamicBatcher: batches form under concurrency, a bad item fails alone, max_wait holds, drains."""

import threading
import time

import pytest

from attncluster.serve.batching import BatcherClosed, DynamicBatcher


class Gate:
    """A batch function that records its batches and blocks the first call until released."""

    def __init__(self, fail=lambda x: False):
        self.batches = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, items):
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.started.set()
            assert self.release.wait(10)
        if any(self.fail(x) for x in items):
            raise ValueError(f"bad item in {items}")
        return [x * 2 for x in items]


def test_queued_items_from_many_threads_run_as_batches():
    gate = Gate()
    b = DynamicBatcher(gate, max_batch=4, max_wait_ms=20)
    first = b.submit(0)
    assert gate.started.wait(10)  # the worker is busy with [0]: the next 9 items queue up
    futures = {}
    threads = [threading.Thread(target=lambda i=i: futures.__setitem__(i, b.submit(i))) for i in range(1, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.queue_depth == 9
    gate.release.set()
    assert first.result(10) == 0
    assert {i: f.result(10) for i, f in futures.items()} == {i: 2 * i for i in range(1, 10)}
    assert [len(x) for x in gate.batches] == [1, 4, 4, 1]  # full batches from the queue, the rest alone
    assert sorted(x for batch in gate.batches for x in batch) == list(range(10))
    assert b.queue_depth == 0
    b.close()


def test_a_bad_item_fails_alone_and_the_rest_of_its_batch_succeeds():
    gate = Gate(fail=lambda x: x < 0)
    sizes = []
    b = DynamicBatcher(gate, max_batch=8, max_wait_ms=50, on_batch=lambda n, s, failed: sizes.append((n, failed)))
    blocker = b.submit(100)
    assert gate.started.wait(10)
    futures = b.submit_many([1, -1, 2]) + [b.submit(3)]
    gate.release.set()
    assert blocker.result(10) == 200
    assert futures[0].result(10) == 2 and futures[2].result(10) == 4 and futures[3].result(10) == 6
    with pytest.raises(ValueError, match="bad item"):
        futures[1].result(10)
    # The shared batch failed once, then each item ran alone: only -1 failed again.
    assert gate.batches[1] == [1, -1, 2, 3]
    assert gate.batches[2:] == [[1], [-1], [2], [3]]
    assert sizes[1:] == [(4, True), (1, False), (1, True), (1, False), (1, False)]
    assert b.submit(5).result(10) == 10  # the worker lives on
    b.close()


def test_max_wait_collects_late_items_and_bounds_the_wait():
    calls = []
    b = DynamicBatcher(lambda xs: calls.append((time.monotonic(), list(xs))) or xs, max_batch=64, max_wait_ms=300)
    t0 = time.monotonic()
    f1 = b.submit(1)
    time.sleep(0.05)
    f2 = b.submit(2)  # within the first item's wait: same batch
    assert (f1.result(10), f2.result(10)) == (1, 2)
    ran_at, items = calls[0]
    assert items == [1, 2]
    assert 0.29 <= ran_at - t0 < 2.0  # waited for max_wait after the first item, not for max_batch items
    b.close()

    b = DynamicBatcher(lambda xs: xs, max_batch=64, max_wait_ms=0)
    t0 = time.monotonic()
    assert b.submit(7).result(10) == 7
    assert time.monotonic() - t0 < 0.25  # max_wait 0: no waiting for company
    b.close()


def test_close_drains_the_queue_then_refuses_new_items():
    gate = Gate()
    b = DynamicBatcher(gate, max_batch=2, max_wait_ms=0)
    futures = [b.submit(0)]
    assert gate.started.wait(10)
    futures += b.submit_many([1, 2, 3])
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosed):
        b.submit(9)
    gate.release.set()
    closer.join(10)
    assert [f.result(0) for f in futures] == [0, 2, 4, 6]


def test_cancelled_items_are_dropped_before_their_batch_runs():
    gate = Gate()
    b = DynamicBatcher(gate, max_batch=8, max_wait_ms=0)
    b.submit(0)
    assert gate.started.wait(10)
    keep, drop = b.submit_many([1, 2])
    assert drop.cancel()
    gate.release.set()
    assert keep.result(10) == 2
    b.close()
    assert gate.batches == [[0], [1]]


def test_wrong_result_count_is_an_error_for_the_items_not_a_dead_worker():
    b = DynamicBatcher(lambda xs: [0], max_batch=8, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        b._call([1, 2])
    assert b.submit(5).result(10) == 0
    b.close()
