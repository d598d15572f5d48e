"""bingfa (并发): concurrency lessons made real.

The public surface is exactly ``__all__`` below; ``tests/test_public_api.py`` guards it.
"""

from __future__ import annotations

from bingfa.apps import App, Context, as_app, handler, load_app
from bingfa.client import AsyncClient, Client, UdpClient
from bingfa.errors import (
    BingfaError,
    ClosedError,
    ConnectionClosed,
    FrameTooLarge,
    MessageTooLarge,
    NetworkError,
    ProtocolError,
    RemoteError,
    Timeout,
    UsageError,
)
from bingfa.executor import Executor, map
from bingfa.pipeline import Pipeline
from bingfa.protocol import FrameCodec, LineCodec, RawCodec, make_codec
from bingfa.server import MODELS, BaseServer, ServerConfig, create_server, serve

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "App",
    "AsyncClient",
    "BaseServer",
    "BingfaError",
    "Client",
    "ClosedError",
    "ConnectionClosed",
    "Context",
    "Executor",
    "FrameCodec",
    "FrameTooLarge",
    "LineCodec",
    "MessageTooLarge",
    "NetworkError",
    "Pipeline",
    "ProtocolError",
    "RawCodec",
    "RemoteError",
    "ServerConfig",
    "Timeout",
    "UdpClient",
    "UsageError",
    "__version__",
    "as_app",
    "create_server",
    "handler",
    "load_app",
    "make_codec",
    "map",
    "serve",
]
