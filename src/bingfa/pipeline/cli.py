"""``bingfa worker``: run one stage of a Redis-backed pipeline in this process.

Register with ``cli.add_command(worker_command)``; also runnable as
``python -m bingfa.pipeline MODULE:STAGE --redis URL --pipeline NAME``.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from bingfa.errors import BingfaError, UsageError
from bingfa.executor import MODELS
from bingfa.pipeline._types import Stage, clean_name

__all__ = ["load_stage", "worker_command"]

log = logging.getLogger("bingfa.pipeline")


def load_stage(ref: str) -> tuple[Callable[[Any], Any], str | None, str]:
    """Import ``module:attr`` (``attr`` may be dotted) naming a :class:`Stage` or a function.

    Returns:
        ``(function, kind or None, stage name)``: a Stage gives its kind and name; a plain
        function gives ``None`` (the kind the pipeline declared applies) and its ``__name__``.

    Raises:
        UsageError: malformed reference, import failure, missing attribute, not callable.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"bad stage {ref!r}: expected 'module:function' or 'module:stage'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} (for {ref!r}): {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UsageError(f"{ref!r}: {module_name} has no attribute {attr!r}") from exc
    if isinstance(obj, Stage):
        return obj.fn, obj.kind, obj.stage_name
    if callable(obj):
        return obj, None, clean_name(getattr(obj, "__name__", attr.rsplit(".", 1)[-1]))
    raise UsageError(f"{ref!r} is a {type(obj).__name__}, not a function or a Stage")


@click.command(
    "worker",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("stage_ref", metavar="MODULE:STAGE")
@click.option(
    "--redis",
    "redis_url",
    envvar="BINGFA_REDIS",
    show_envvar=True,
    required=True,
    help="Redis URL: redis://[:password@]host:6379/0, rediss://... (TLS), unix:///path.sock.",
)
@click.option(
    "--pipeline",
    "pipeline_name",
    envvar="BINGFA_PIPELINE",
    show_envvar=True,
    required=True,
    help="Pipeline name: the name= its Pipeline was created with.",
)
@click.option(
    "--stage",
    "stage_name",
    default=None,
    help="Stage name as the pipeline declared it [default: the Stage's name, or the "
    "function's __name__].",
)
@click.option(
    "--group",
    default=None,
    help="Consumer group [default: the declared one]. Another group is a separate "
    "subscription that gets its own copy of every new item.",
)
@click.option(
    "--consumer",
    default=None,
    help="Consumer name, unique per worker [default: host-pid-stage-random].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    envvar="BINGFA_CONCURRENCY",
    show_envvar=True,
    help="Items processed at once.",
)
@click.option(
    "--model",
    type=click.Choice(list(MODELS)),
    default=None,
    help="Run the function on a bingfa executor of this model [default: in this worker's "
    "thread, or a thread pool when --concurrency > 1].",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Most entries read per XREADGROUP (adapted to ~0.1 s of work).",
)
@click.option(
    "--max-items",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after handling this many items (e.g. to recycle workers).",
)
@click.option(
    "--app-dir",
    default=".",
    show_default=True,
    help="Directory put first on sys.path before MODULE is imported.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="BINGFA_LOG_LEVEL",
    show_envvar=True,
)
def worker_command(
    stage_ref: str,
    redis_url: str,
    pipeline_name: str,
    stage_name: str | None,
    group: str | None,
    consumer: str | None,
    concurrency: int,
    model: str | None,
    batch: int,
    max_items: int | None,
    app_dir: str,
    log_level: str,
) -> None:
    """Consume one stage of a Redis-backed pipeline, from any process or machine.

    \b
    MODULE:STAGE names a function (a stage is then found by the function's __name__) or a
    bingfa.pipeline.Stage object (found by its name). The worker reads the stage's stream
    (XREADGROUP), runs the function on each item, writes each result to the next stage's
    stream - or, from the last stage, to the reply stream of the run the item came from -
    and acknowledges (XACK) only then. Entries of workers that died are taken over after the
    pipeline's visibility timeout. See docs/pipelines.md.

    \b
    Example:
      bingfa worker thumbs:resize --redis redis://10.0.0.5:6379/0 --pipeline thumbs

    SIGTERM or Ctrl-C finishes the current batch and exits 0; a second one exits at once
    (the unacknowledged batch is redelivered to another worker).
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        handled = run_worker(
            stage_ref,
            redis_url,
            pipeline_name,
            stage_name=stage_name,
            group=group,
            consumer=consumer,
            concurrency=concurrency,
            model=model,
            batch=batch,
            max_items=max_items,
            app_dir=app_dir,
        )
    except BingfaError as exc:
        click.echo(f"bingfa worker: error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    click.echo(f"bingfa worker: handled {handled} items", err=True)


def run_worker(
    stage_ref: str,
    redis_url: str,
    pipeline_name: str,
    *,
    stage_name: str | None = None,
    group: str | None = None,
    consumer: str | None = None,
    concurrency: int = 1,
    model: str | None = None,
    batch: int = 200,
    max_items: int | None = None,
    app_dir: str = ".",
) -> int:
    """The body of ``bingfa worker``; returns the number of items handled.

    Installs SIGTERM/SIGINT handlers when called in the main thread (first signal: stop after
    the current batch; second: ``KeyboardInterrupt``).

    Raises:
        UsageError: bad stage reference, missing redis package, bad URL, kind mismatch.
        NetworkError: Redis unreachable at start.
    """
    from bingfa.pipeline._redis import (
        RedisConsumer,
        _redis_errors,
        as_bingfa_error,
        connect,
        redact,
    )

    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    fn, kind, default_name = load_stage(stage_ref)
    name = stage_name or default_name
    client = connect(redis_url)
    stop = threading.Event()
    consumer_obj = RedisConsumer(
        client,
        pipeline_name,
        name,
        fn,
        kind=kind,
        group=group,
        consumer=consumer,
        concurrency=concurrency,
        model=model,
        batch=batch,
        stop=stop,
        max_items=max_items,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    log.info(
        "consuming stage %r of pipeline %r at %s as %s (concurrency %d)",
        name,
        pipeline_name,
        redact(redis_url),
        consumer_obj.consumer,
        concurrency,
    )
    try:
        return consumer_obj.run()
    except _redis_errors() as exc:
        raise as_bingfa_error(exc, redis_url) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
