"""The map driver: ``map`` over any backend, eager by default, bounded on request, auto-chunked.

By default (``buffersize=None``) it behaves like ``concurrent.futures.Executor.map``: every call
is submitted when ``map`` is called, in batches sized as ``multiprocessing.Pool.map`` sizes them,
so the work runs to the end whether or not the results are consumed, and survives
``shutdown(wait=True)``. With ``buffersize=N`` (Python 3.14's ``Executor.map`` argument) it is
lazy instead: items are pulled from the iterable only as results are consumed, at most ``N`` calls
in flight, and batch sizes adapt to the measured cost per item; huge or infinite iterables work.
Results come in input order (or completion order); the first failing item's exception is raised
when its turn comes and the run stops, cancelling what has not started, like
``concurrent.futures``. Items a dead worker never started are resubmitted.
"""

from __future__ import annotations

import itertools
import math
import queue
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Literal

from bingfa.errors import Timeout, UsageError
from bingfa.executor._backend import Backend
from bingfa.executor._jobs import BatchResult, Job
from bingfa.executor._progress import NullProgress, Progress

__all__ = ["Chunker", "Chunksize", "MapRun"]

Chunksize = int | Literal["auto"]

#: largest auto chunk
MAX_CHUNK = 16384


class Chunker:
    """Chooses batch sizes.

    * fixed ``chunksize``: always that;
    * a per-task timeout: 1 (a timeout applies to one call, so calls are sent one by one);
    * items of a batch run concurrently (coroutines, greenlets): ``parallelism // 8``, so a
      window holds ~16 batches - or more once batches report that items are so cheap that a
      batch is done in less than ``target`` (tiny tasks: fewer, bigger batches);
    * otherwise adaptive: 1 until the first batch reports how long its items took, then
      ``target / seconds-per-item`` (an exponential moving average), capped by
      :data:`MAX_CHUNK` and, when the length is known, by ``total / (4 * parallelism)``
      (multiprocessing.Pool's default) so the tail is balanced;
    * ``static`` (eager maps: every batch is cut before any has run, so nothing can be measured):
      ``ceil(total / (4 * lanes))``, multiprocessing.Pool's default with ``lanes`` the threads
      or processes taking batches (for concurrent items: the processes or the one event loop,
      whose own pool bounds how many run at once), at least ``parallelism // 8`` for
      concurrent items; capped by :data:`MAX_CHUNK`. The first batches ramp up to that size
      (1, 4, 16, ...), so the first result comes as soon as one call is done, as with
      ``concurrent.futures``, while nearly all items still travel in full-size batches.
    """

    def __init__(
        self,
        chunksize: Chunksize,
        target: float,
        parallelism: int,
        concurrent_items: bool,
        total: int | None,
        timeout: float | None,
        static: bool = False,
        lanes: int = 1,
    ) -> None:
        if chunksize != "auto" and (not isinstance(chunksize, int) or chunksize < 1):
            raise UsageError(f"chunksize must be a positive int or 'auto', not {chunksize!r}")
        if timeout is not None and chunksize not in ("auto", 1):
            raise UsageError("a per-task timeout needs chunksize=1 (or 'auto')")
        self.fixed: int | None = None if chunksize == "auto" else int(chunksize)
        if timeout is not None:
            self.fixed = 1
        self.target = target
        self.parallelism = max(1, parallelism)
        self.concurrent = concurrent_items
        self.cap = MAX_CHUNK
        if total is not None and total > 0 and not concurrent_items:
            self.cap = max(1, min(MAX_CHUNK, total // (4 * self.parallelism)))
        self.per_item: float | None = None
        self.static: int | None = None  # the full size of an eager map's batches
        self.ramp = 1
        if static and self.fixed is None:
            size = math.ceil((total or 0) / (4 * max(1, lanes)))
            if concurrent_items:
                size = max(size, self.parallelism // 8)
            self.static = max(1, min(MAX_CHUNK, size))

    def next_size(self) -> int:
        """Size of the next batch."""
        if self.fixed is not None:
            return self.fixed
        if self.static is not None:
            size = min(self.static, self.ramp)
            self.ramp = size * 4
            return size
        if self.concurrent:
            base = max(1, min(self.cap, self.parallelism // 8))
            if self.per_item is None:
                return base
            return max(base, min(self.cap, round(self.target / max(self.per_item, 1e-7))))
        if self.per_item is None:
            return 1
        return max(1, min(self.cap, round(self.target / max(self.per_item, 1e-7))))

    def observe(self, n: int, elapsed: float) -> None:
        """A batch of ``n`` items took ``elapsed`` seconds of work."""
        if n <= 0 or elapsed <= 0:
            return
        per = elapsed / n
        self.per_item = per if self.per_item is None else 0.7 * self.per_item + 0.3 * per


class _Entry:
    """One batch of consecutive items: what is known of their results, and the job running
    the rest (after a worker died, only the items it never started)."""

    __slots__ = ("errors", "future", "items", "offset", "values")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.values: list[Any] = []
        self.errors: dict[int, Any] = {}
        self.offset = 0  # items[offset:] are what ``future`` runs
        self.future: Future[Any] | None = None


class MapRun(Iterator[Any]):
    """An iterator over ``fn`` applied to the items of ``items_iter`` on ``backend``.

    Eager (``buffersize=None``): every call is submitted here, at construction, so the work runs
    to the end even if this iterator is never consumed or is dropped before its first result.
    Lazy (``buffersize=N``): the first ``N`` calls are submitted here, the rest as results are
    consumed. Either way, once iteration has started, ``close()``-ing it - or dropping it
    unfinished, or leaving a ``for`` loop over it with ``break`` - cancels what has not started
    (running calls finish), exactly as ``concurrent.futures`` does.

    Iterating (``for``/``list``) goes straight to an internal generator that hands out each
    finished batch with C-level iteration; it releases each result as it is yielded and each
    batch's arguments as the batch is done. The generator keeps the run's state - and
    ``keepalive`` (the :class:`Executor`, so that collecting it does not shut its backend down
    under a running map) - alive, not this object: ``for r in ex.map(...)`` holds only the
    generator, and that is enough.

    Args:
        backend: where to run.
        fn: the function.
        items_iter: the items: single arguments (``star=False``) or argument tuples.
        star: call ``fn(*item)`` instead of ``fn(item)``.
        ordered: yield in input order (else in completion order).
        chunksize: ``"auto"`` or a fixed batch size.
        task_timeout: per-call timeout that stops a running call, or ``None``.
        deadline: ``time.monotonic()`` by which each next result must be available
            (``Executor.map``'s ``timeout``), or ``None``.
        progress: progress display (owned: closed with the run).
        total: number of items if known (for chunk sizes).
        buffersize: ``None`` for eager; else the maximum number of calls in flight (lazy).
        keepalive: any object the run must keep alive while it is iterated (the executor).

    Raises:
        UsageError: bad ``chunksize`` or ``buffersize``.
    """

    def __init__(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        items_iter: Iterator[Any],
        *,
        star: bool = False,
        ordered: bool = True,
        chunksize: Chunksize = "auto",
        task_timeout: float | None = None,
        deadline: float | None = None,
        progress: Progress | None = None,
        total: int | None = None,
        buffersize: int | None = None,
        keepalive: object = None,
    ) -> None:
        state = _MapState(backend, fn, items_iter, star, ordered, task_timeout, deadline, progress)
        state.keepalive = keepalive
        try:
            if buffersize is None:
                if total is None:  # eager: take every item now, as concurrent.futures does
                    everything = list(items_iter)
                    state.it = iter(everything)
                    total = len(everything)
                state.configure(chunksize, total, None, eager=True)
            else:
                state.configure(chunksize, total, buffersize, eager=False)
            self._gen: Generator[Any, None, None] = _results(state)
            state.fill()
        except BaseException:
            state.cleanup()
            raise
        self._state = state

    def __iter__(self) -> Iterator[Any]:
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    @property
    def chunker(self) -> Chunker:
        """The batch sizer (exposes the measured cost per item)."""
        return self._state.chunker

    def close(self) -> None:
        """Cancel everything not yet started; stop the progress display. Idempotent."""
        try:
            self._gen.close()
        except ValueError:  # "generator already executing": closed from another thread
            pass
        self._state.cleanup()


def _results(state: _MapState) -> Generator[Any, None, None]:
    """The results, batch by batch; raises the first failure; cleans up however it ends.

    A batch's values are handed out with ``map(list.pop, repeat(values, n))`` over the
    reversed list: C-level per item like ``yield from values``, but each result leaves the list
    as it is yielded, so the run does not keep results the caller has already had.
    """
    try:
        while state.inflight and not state.closed:
            entry = state.step()
            if entry is None:
                continue
            values, errors = entry.values, entry.errors
            del entry  # the batch (its arguments) is done with
            if errors:
                first = min(errors)
                del values[first:]
                values.reverse()
                yield from map(list.pop, itertools.repeat(values, first))
                raise errors[first]
            values.reverse()
            yield from map(list.pop, itertools.repeat(values, len(values)))
            del values
    finally:
        state.cleanup()


class _MapState:
    """Everything a map run knows; shared by :class:`MapRun` and its generator."""

    def __init__(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        items_iter: Iterator[Any],
        star: bool,
        ordered: bool,
        task_timeout: float | None,
        deadline: float | None,
        progress: Progress | None,
    ) -> None:
        self.backend = backend
        self.fn = fn
        self.it = items_iter
        self.star = star
        self.ordered = ordered
        self.timeout = task_timeout
        self.deadline = deadline
        self.progress: Progress = progress or NullProgress()
        self.closed = False
        self.inflight: deque[_Entry] = deque()
        self.inflight_items = 0
        self.completed: queue.SimpleQueue[_Entry] = queue.SimpleQueue()
        self.exhausted = False
        self.keepalive: object = None

    def configure(
        self, chunksize: Chunksize, total: int | None, window: int | None, eager: bool
    ) -> None:
        backend, fn = self.backend, self.fn
        par = max(1, backend.parallelism(fn))
        concurrent = backend.batch_items_concurrent(fn)
        self.chunker = Chunker(
            chunksize,
            backend.chunk_target,
            par,
            concurrent,
            total,
            self.timeout,
            static=eager,
            lanes=backend.lanes(fn),
        )
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 1
        ):
            raise UsageError(f"buffersize must be a positive int or None, not {window!r}")
        if eager:  # everything in flight at once
            self.max_items = 1 << 62
            self.max_batches = 1 << 62
        elif concurrent:
            self.max_items = window or 2 * par
            self.max_batches = 1 << 30
        else:
            self.max_items = window or (1 << 62)
            self.max_batches = 2 * par + 2

    def cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        for e in self.inflight:
            if e.future is not None:
                e.future.cancel()
        self.inflight.clear()
        self.progress.close()
        self.keepalive = None

    def fill(self) -> None:
        while not self.exhausted and len(self.inflight) < self.max_batches:
            n = self.chunker.next_size()
            if self.max_items < (1 << 62):  # concurrent items: bound the calls in flight
                limit = max(self.max_items, 4 * n)  # (at least 4 batches of cheap items)
                if self.inflight_items >= limit:
                    break
                n = max(1, min(n, limit - self.inflight_items))
            elif self.inflight_items >= self.max_items:
                break
            batch = list(itertools.islice(self.it, n))
            if len(batch) < n:
                self.exhausted = True
            if not batch:
                break
            entry = _Entry(batch)
            self.inflight.append(entry)
            self.inflight_items += len(batch)
            self.submit(entry)

    def submit(self, entry: _Entry) -> None:
        items = entry.items if entry.offset == 0 else entry.items[entry.offset :]
        job = Job(self.fn, items, self.star, None, single=False, timeout=self.timeout)
        entry.future = job.future
        progress = self.progress
        completed = self.completed

        def on_done(fut: Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                res = fut.result()
                ran = res.not_run_from if res.not_run_from is not None else len(res.values)
                progress.advance(ran)
            completed.put(entry)

        job.future.add_done_callback(on_done)
        self.backend.submit_job(job)

    def remaining(self) -> float | None:
        """Seconds left until the deadline (0 once it has passed: a result that is already
        there is still taken, as ``Future.result(0)`` does), or ``None`` without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def step(self) -> _Entry | None:
        """Wait for a batch to finish. Returns it when all its items are settled (removed from
        the window, which is refilled); ``None`` if items a dead worker never started were
        resubmitted."""
        if self.ordered:
            entry = self.inflight[0]
            fut = entry.future
            assert fut is not None
            try:
                fut.result(self.remaining())
            except TimeoutError as exc:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise Timeout("map: the next result was not ready in time", None) from exc
                raise
            except CancelledError:
                if self.closed:  # close()d from another thread: the iteration just ends
                    return None
                raise
            except Exception:
                pass
        else:
            while True:
                try:
                    entry = self.completed.get(timeout=self.remaining())
                except queue.Empty:
                    raise Timeout("map: the next result was not ready in time", None) from None
                if entry.future is not None and entry.future.done() and entry in self.inflight:
                    break
        fut = entry.future
        if self.closed or fut is None:  # close()d from another thread while we waited
            return None
        res = fut.result()  # raises if the whole batch failed (e.g. could not be pickled)
        assert isinstance(res, BatchResult)
        ran = len(res.values) if res.not_run_from is None else res.not_run_from
        self.chunker.observe(ran, res.elapsed)
        base = entry.offset
        if res.errors:
            for k, e in res.errors.items():
                if k < ran:
                    entry.errors[base + k] = e
        entry.values.extend(res.values if ran == len(res.values) else res.values[:ran])
        if res.not_run_from is not None:  # a worker died before starting these: run again
            entry.offset = base + ran
            self.submit(entry)
            return None
        if self.ordered:
            self.inflight.popleft()
        else:
            self.inflight.remove(entry)
        self.inflight_items -= len(entry.items)
        # the future's done-callback refers to the entry: drop the entry's link back so the
        # batch (arguments, results) is freed by reference counting, not by the cycle collector
        entry.future = None
        self.fill()
        return entry
