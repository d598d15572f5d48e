"""A single background thread that runs callbacks at deadlines (per-task timeouts)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["DeadlineTimer", "TimerHandle"]

log = logging.getLogger("bingfa.executor")


class TimerHandle:
    """A scheduled callback; :meth:`cancel` drops it (and the references it holds) at once."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        """Do not run the callback (no-op if it ran already)."""
        self.callback = None


class DeadlineTimer:
    """Run ``callback()`` at a monotonic deadline, in the timer's own daemon thread.

    Started lazily on the first :meth:`call_at`; :meth:`close` stops it. Callbacks must be
    quick and must not raise (errors are logged).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._compact_at = 1024
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` at ``deadline`` (``time.monotonic()`` clock); returns a handle
        to cancel it (a closed timer returns one that never runs)."""
        handle = TimerHandle(callback)
        with self._cond:
            if self._closed:
                handle.cancel()
                return handle
            heap = self._heap
            if len(heap) >= self._compact_at:
                # cancelled handles stay in the heap until their deadline; drop them once they
                # could be most of it (amortised O(1) per call), so finished tasks with a long
                # timeout do not pile up
                heap[:] = [entry for entry in heap if entry[2].callback is not None]
                heapq.heapify(heap)
                self._compact_at = max(1024, 2 * len(heap))
            heapq.heappush(heap, (deadline, next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def close(self) -> None:
        """Drop pending callbacks and stop the thread (does not wait for it)."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._closed:
                    return
                _, _, handle = heapq.heappop(self._heap)
                callback, handle.callback = handle.callback, None
            if callback is None:  # cancelled
                continue
            try:
                callback()
            except Exception:
                log.exception("deadline callback failed")
