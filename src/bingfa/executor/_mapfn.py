"""``bingfa.executor.map``: one call that picks a model, runs, shows progress and cleans up."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any

from bingfa.errors import UsageError
from bingfa.executor._choose import Choice, Kind, choose_model, probe
from bingfa.executor._core import MODELS, Executor, check_coroutine_support
from bingfa.executor._jobs import fn_name, is_coroutine_fn
from bingfa.executor._maprun import Chunksize, MapRun
from bingfa.executor._progress import make_progress

__all__ = ["MapResult", "map"]

log = logging.getLogger("bingfa.executor")


class _Owner:
    """Owns the executor and the run of one :func:`map` call; the result generator refers to
    this, not to the :class:`MapResult`, so dropping the iterator finalizes it at once."""

    def __init__(self, executor: Executor, run: MapRun) -> None:
        self.executor = executor
        self.run = run
        self.closed = False

    def close(self) -> None:
        """Cancel queued calls, wait for running ones, release the executor."""
        if self.closed:
            return
        self.closed = True
        self.run.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def release(self) -> None:
        """Like :meth:`close` without waiting (running calls finish in the background)."""
        if self.closed:
            return
        self.closed = True
        self.run.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def terminate(self) -> None:
        """Stop at once: cancel everything, kill worker processes."""
        self.closed = True
        self.run.close()
        self.executor.terminate()


def _map_results(owner: _Owner, head: list[tuple[bool, Any]]) -> Generator[Any, None, None]:
    try:
        for ok, value in head:
            if not ok:
                raise value
            yield value
        head = []
        yield from owner.run
    except Exception:
        owner.close()
        raise
    except GeneratorExit:  # closed or dropped before the end: do not block
        owner.release()
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit: stop now
        owner.terminate()
        raise
    owner.close()


class MapResult(Iterator[Any]):
    """The iterator :func:`map` returns. It owns the executor it runs on.

    Results come in input order (or completion order with ``ordered=False``). The executor is
    shut down when the iterator is exhausted, when a task's exception is raised from it, or on
    :meth:`close` (queued work is cancelled; calls already running finish first). If it is
    dropped unfinished (``break`` out of the loop), queued work is cancelled without waiting.
    If it is dropped before its first result, every call still runs (they were all submitted)
    and the executor is released after them, as an ``Executor`` that is collected is.
    On ``KeyboardInterrupt`` (or any other non-``Exception``) while iterating it is
    *terminated*: workers are killed and control returns at once. Use it as a context manager,
    or exhaust it, to release the workers deterministically.

    Attributes:
        choice: the :class:`Choice` that was made (model, workers, reason, measurements).
    """

    def __init__(
        self, executor: Executor, run: MapRun, head: list[tuple[bool, Any]], choice: Choice
    ) -> None:
        self.choice = choice
        self._owner = _Owner(executor, run)
        self._gen = _map_results(self._owner, head)

    @property
    def closed(self) -> bool:
        """True once the executor has been released (or is being released)."""
        return self._owner.closed

    def __iter__(self) -> Iterator[Any]:
        return self._gen  # iterating goes straight to the generator (C-level per item)

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Cancel queued calls, wait for running ones, release the executor. Idempotent."""
        self._owner.close()
        with contextlib.suppress(ValueError):  # ValueError: called from inside the generator
            self._gen.close()

    def terminate(self) -> None:
        """Stop at once (what Ctrl-C does): cancel everything, kill worker processes."""
        self._owner.terminate()
        with contextlib.suppress(ValueError):
            self._gen.close()

    def __enter__(self) -> MapResult:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.terminate()
        else:
            self.close()


def map(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    model: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    ordered: bool = True,
    chunksize: Chunksize = "auto",
    timeout: float | None = None,
    kind: Kind | None = None,
    buffersize: int | None = None,
    **options: Any,
) -> MapResult:
    """Apply ``fn`` to every item of ``iterable`` concurrently; return an iterator of results.

    Like ``Executor.map`` every call is submitted at once (the iterable is read to the end
    here) unless ``buffersize`` asks for a lazy run.

    Args:
        fn: called as ``fn(item)``; may be ``async def`` (asyncio/hybrid models).
        iterable: the items. Read to the end at once by default; with ``buffersize`` only as
            results are consumed, so it may be huge or infinite.
        model: a model name, or ``"auto"`` to choose one (see :func:`choose_model`): from
            ``async def``, from ``kind``, or else by *probing* - the first few items (up to 3,
            at most ~0.2 s) run right here in the caller while CPU time is compared with wall
            time; their results are kept, not recomputed.
        workers: override the chosen/default degree of concurrency.
        progress: a progress bar (count, rate, ETA) on stderr - only when stderr is a TTY.
        ordered: results in input order; ``False`` for completion order.
        chunksize: ``"auto"`` sizes batches from measured task cost; or a fixed int.
        timeout: **per-task** timeout in seconds that stops a running task (the future fails
            with :class:`~bingfa.executor.TaskTimeout`, see docs/executors.md). Note: unlike
            ``Executor.map``'s ``timeout``, which bounds the wait for each result. Probed items
            run without it - pass ``kind`` to skip the probe.
        kind: ``"io"`` or ``"cpu"``: a hint for ``model="auto"`` (skips the probe).
        buffersize: ``None`` (eager), or the maximum number of calls in flight: items are then
            taken from ``iterable`` only as results are consumed.
        options: more :class:`Executor` keyword arguments (``initializer``, ``mp_context``...).

    Returns:
        A :class:`MapResult`; its ``choice`` attribute says which model was used and why (also
        logged at INFO on the ``bingfa.executor`` logger).

    Raises:
        UsageError: unknown model or kind, bad numbers.
        Whatever ``fn`` raised, when that item's turn comes (with the worker traceback as
        ``__cause__`` for process models).
    """
    if timeout is not None and not timeout > 0:
        raise UsageError(f"timeout must be > 0, not {timeout!r}")
    if model != "auto" and model not in MODELS:
        raise UsageError(f"unknown model {model!r}; choose 'auto' or one of {', '.join(MODELS)}")
    try:
        total: int | None = len(iterable)  # type: ignore[arg-type]
    except TypeError:
        total = None
    items: Iterator[Any] = iter(iterable)
    head: list[tuple[bool, Any]] = []
    if model == "auto":
        if kind is None and not is_coroutine_fn(fn):
            p = probe(fn, items)
            head = p.outcomes
            choice = choose_model(
                fn,
                total,
                None,
                cpu_fraction=p.cpu_fraction,
                seconds_per_item=p.seconds_per_item,
                probed=len(p.items),
            )
        else:
            choice = choose_model(fn, total, kind)
    else:
        choice = Choice(model, workers or 0, "model given by the caller", kind or "given")  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {**choice.options, **options}
    executor = Executor(choice.model, workers or choice.workers or None, **kwargs)
    if not choice.workers or workers:
        choice = Choice(
            choice.model,
            executor.workers,
            choice.reason,
            choice.kind,
            choice.options,
            choice.cpu_fraction,
            choice.seconds_per_item,
            choice.probed,
        )
    log.info("bingfa.executor.map(%s): %s", fn_name(fn), choice)
    bar = None
    try:
        check_coroutine_support(choice.model, fn)
        bar = make_progress(progress, f"{fn_name(fn)} [{choice.model}]", total)
        bar.advance(len(head))
        run = MapRun(
            executor._backend,
            fn,
            items,
            ordered=ordered,
            chunksize=chunksize,
            task_timeout=timeout,
            progress=bar,
            total=None if total is None else total - len(head),
            buffersize=buffersize,
            keepalive=executor,
        )
    except BaseException:
        if bar is not None:
            bar.close()
        executor.terminate()
        raise
    return MapResult(executor, run, head, choice)
