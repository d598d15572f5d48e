"""Guard the chosen public surface: changing it must be a deliberate edit of this list."""

from __future__ import annotations

import bingfa

EXPECTED = {
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
    "MODELS",
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
}


def test_all_is_exactly_the_chosen_surface() -> None:
    assert set(bingfa.__all__) == EXPECTED
    assert len(bingfa.__all__) == len(set(bingfa.__all__))


def test_every_public_name_exists_and_is_documented() -> None:
    for name in bingfa.__all__:
        obj = getattr(bingfa, name)
        if callable(obj):
            assert obj.__doc__, f"bingfa.{name} has no docstring"


def test_importing_bingfa_does_not_import_gevent_or_uvloop() -> None:
    import subprocess
    import sys

    code = "import sys, bingfa; print('gevent' in sys.modules, 'uvloop' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["False", "False"]
