"""Servers: one skeleton (:class:`BaseServer`), one private module per concurrency model.

This module is the public surface; the model modules (``_thread``, ``_asyncio``, ...) are
private - their names start with ``_`` so that they never shadow the libraries they wrap. Models
are imported lazily by name, so choosing ``thread`` never imports gevent or uvloop.
"""

from __future__ import annotations

import importlib
import signal
import threading
from typing import Any

from bingfa.apps import App, as_app, load_app
from bingfa.errors import UsageError
from bingfa.server._base import BaseServer, ServerConfig

__all__ = [
    "MODELS",
    "UDP_MODELS",
    "BaseServer",
    "ServerConfig",
    "create_server",
    "patch_gevent",
    "serve",
]

MODELS: dict[str, str] = {
    "thread": "bingfa.server._thread:ThreadServer",
    "threadpool": "bingfa.server._threadpool:ThreadPoolServer",
    "gevent": "bingfa.server._gevent:GeventServer",
    "asyncio": "bingfa.server._asyncio:AsyncioServer",
    "fork": "bingfa.server._fork:ForkServer",
}
"""Model name → ``module:class`` of its TCP server."""

UDP_MODELS: dict[str, str] = {
    "thread": "bingfa.server._udp:UdpThreadServer",
    "gevent": "bingfa.server._udp:UdpGeventServer",
    "asyncio": "bingfa.server._udp:UdpAsyncioServer",
}
"""Model name → ``module:class`` of its UDP server."""


def patch_gevent() -> None:
    """Monkey-patch the standard library for the gevent model (``gevent.monkey.patch_all``).

    Call it as the first statement of a program that serves with ``model="gevent"``, before
    ``threading``, ``socket`` or ``ssl`` are used (``bingfa serve --model gevent`` does it
    itself). The gevent server refuses to run in an unpatched process.
    """
    from bingfa.server._gevent import patch

    patch()


def server_class(model: str, udp: bool = False) -> type[BaseServer]:
    """The server class of ``model`` (for UDP with ``udp``). Raises UsageError if unknown."""
    registry = UDP_MODELS if udp else MODELS
    try:
        target = registry[model]
    except KeyError:
        kind = "UDP model" if udp else "model"
        raise UsageError(f"unknown {kind} {model!r}; choose one of {', '.join(registry)}") from None
    module_name, _, attr = target.partition(":")
    cls: type[BaseServer] = getattr(importlib.import_module(module_name), attr)
    return cls


def create_server(app: Any, model: str = "thread", **options: Any) -> BaseServer:
    """Build (not start) a server for ``app`` under ``model``.

    Args:
        app: a handler, an :class:`~bingfa.apps.App`, or an app spec string
            (``"echo"``, ``"module:attr"``).
        model: one of :data:`MODELS`.
        **options: :class:`ServerConfig` fields (host, port, protocol, threads, ...).

    Raises:
        UsageError: unknown model, bad option, or an app that cannot be loaded.
    """
    resolved: App = load_app(app) if isinstance(app, str) else as_app(app)
    config = ServerConfig(**options)
    return server_class(model, config.udp)(resolved, config)


def serve(server: BaseServer) -> None:
    """Run ``server`` in the calling (main) thread until SIGINT or SIGTERM, then stop cleanly.

    SIGUSR1 logs the server's counters (:meth:`BaseServer.report_stats`). Event-loop models
    install their handlers on their own loop (asyncio's ``add_signal_handler``,
    ``gevent.signal_handler``); thread models use ``signal.signal``.
    Previous handlers are restored on return.

    Raises:
        UsageError: called outside the main thread (signals can only be handled there).
    """
    if threading.current_thread() is not threading.main_thread():
        raise UsageError("serve() handles signals, so it must run in the main thread")
    if hasattr(server, "handle_signals"):
        server.handle_signals = True
        server.serve_forever()
        return
    previous = {
        sig: signal.signal(sig, lambda *_: server.shutdown())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: server.request_stats())
    # The signal may land in any of the server's threads: the wake-up fd rouses the main
    # thread's selector so that the handler runs (see BaseServer._signal_wakeup_fd).
    wakeup = server._signal_wakeup_fd()
    previous_fd = -1 if wakeup is None else signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
    try:
        server.serve_forever()
    finally:
        if wakeup is not None:
            signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
