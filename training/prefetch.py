"""Running an iterator ahead of its consumer in background threads, in order.

`Prefetcher` moves a whole iterator into one background thread with a bounded queue between
it and the consumer; `ordered_map` spreads the per-item work of such an iterator over a few
threads and hands the results back in input order, so what comes out is the same sequence as
without threads. Decoding (NumPy, Pillow's JPEG decoder), storage reads (pyarrow) and torch
copies release the GIL, so these threads run beside a training step, not just between steps.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_POLL_S = 0.05
"""How often a blocked producer looks whether the consumer has gone."""
_JOIN_S = 10.0
"""How long `close` waits for the producer to notice; it is then stuck in the source itself."""


class Prefetcher(Generic[Out]):
    """Up to `depth` items of `source`, produced in a background thread ahead of `next()`.

    An exception raised by `source` is raised by the `next()` that reaches it, with its
    traceback; the end of `source` ends this iterator. `close()` (also on garbage collection
    of the consuming generator) stops the thread and closes `source`: no thread outlives the
    consumer, at the end of an epoch or on an exception.
    """

    def __init__(self, source: Iterator[Out], depth: int, name: str = "prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, source: Iterator[Out]) -> None:
        try:
            for item in source:
                if not self._put("item", item):
                    return
            self._put("end", None)
        except BaseException as error:  # everything reaches the consumer, KeyboardInterrupt too
            self._put("error", error)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's own `finally` (open streams, thread pools) runs here

    def _put(self, kind: str, value: object) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher[Out]:
        return self

    def __next__(self) -> Out:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value  # type: ignore[return-value]
        self._finished = True
        self.close()
        if kind == "error":
            raise value  # type: ignore[misc]
        raise StopIteration

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes the item it is on); `next()` then
        ends the iteration."""
        self._finished = True
        self._stopped.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_S)


def ordered_map(
    function: Callable[[In], Out], items: Iterable[In], threads: int, name: str = "decode"
) -> Iterator[Out]:
    """`map(function, items)` with up to `threads` calls at once, results in input order.

    At most 2·`threads` items are in flight, so a slow consumer holds back the work. With one
    thread the calls run in the caller's thread. An exception from `function` is raised where
    its result would have come.
    """
    if threads <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        pending: deque[Future[Out]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
