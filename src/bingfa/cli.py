"""The ``bingfa`` command line. Every option can also come from ``BINGFA_<OPTION>``.

Start it through :mod:`bingfa._entry` (the ``bingfa`` script, ``python -m bingfa``), which
monkey-patches for gevent first when ``--model gevent`` is asked for.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from bingfa import __version__
from bingfa.client import Client, UdpClient, parse_address
from bingfa.errors import BingfaError, UsageError
from bingfa.protocol import DEFAULT_MAX_FRAME_SIZE, PROTOCOLS
from bingfa.server import MODELS

__all__ = ["cli"]

PROTOCOL_CHOICE = click.Choice(list(PROTOCOLS))
LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


FC = TypeVar("FC", bound=Callable[..., Any])


def env_option(*names: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A click option that also reads ``BINGFA_<NAME>`` (dashes → underscores, upper-case)."""
    long_name = next(n for n in names if n.startswith("--"))
    kwargs.setdefault("envvar", "BINGFA_" + long_name[2:].replace("-", "_").upper())
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", True)
    return click.option(*names, **kwargs)


def setup_logging(level: str) -> None:
    """Log to stderr with timestamps and the process id (useful once there are workers)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(exc: BingfaError) -> None:
    """Print a bingfa error as one clear line and exit 2 (usage) or 1 (anything else)."""
    click.echo(f"bingfa: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, ValueError) else 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bingfa")
def cli() -> None:
    """bingfa (并发): serve one handler under any concurrency model, and measure them.

    \b
    Quick start:
      bingfa serve upper --model gevent --port 8086
      bingfa send 127.0.0.1:8086 hello world
      bingfa bench 127.0.0.1:8086 --connections 50 --duration 5
      bingfa compare --quick        # which model wins, on this machine
      bingfa demo                   # self-check under every model
    """


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@cli.command()
@click.argument("app")
@env_option(
    "--model",
    type=click.Choice(list(MODELS)),
    default="thread",
    help="Concurrency model: a thread per connection, a fixed thread pool, a greenlet per "
    "connection, or an asyncio event loop.",
)
@env_option("--host", default="127.0.0.1", help="Address to listen on.")
@env_option("--port", type=click.IntRange(0, 65535), default=8086, help="0 picks a free port.")
@env_option("--protocol", type=PROTOCOL_CHOICE, default="frame", help="Wire framing.")
@env_option(
    "--threads",
    type=click.IntRange(min=1),
    default=64,
    help="threadpool: pool size; asyncio: threads for blocking handlers.",
)
@env_option(
    "--loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    help="asyncio model: event loop implementation (auto = uvloop when installed).",
)
@env_option(
    "--max-frame-size",
    type=click.IntRange(0, 2**32 - 1),
    default=DEFAULT_MAX_FRAME_SIZE,
    help="Largest request in bytes; a larger declared length closes the connection.",
)
@env_option(
    "--workers",
    default=None,
    help="Run N worker processes sharing the port under a supervisor that restarts them; "
    "'auto' = one per core.  [default: one process, no supervisor]",
)
@env_option(
    "--graceful-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    help="On SIGTERM/SIGINT, seconds in-flight requests get before connections are forced shut.",
)
@env_option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Open connections per process; more are reset at once.  [default: no limit]",
)
@env_option(
    "--max-children",
    type=click.IntRange(min=1),
    default=None,
    help="fork model: at most this many child processes; more connections wait.  "
    "[default: no limit]",
)
@env_option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Close a connection that completes no request for this many seconds (slowloris "
    "protection for thread models).  [default: never]",
)
@env_option(
    "--handshake-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    help="TLS: seconds a client gets to complete its handshake (and that a client sending "
    "nothing holds its connection).",
)
@env_option(
    "--request-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Abandon a handler running longer and close its connection.  [default: never]",
)
@env_option(
    "--offload",
    type=click.Choice(["none", "thread", "process"]),
    default="thread",
    help="Event-loop models: run blocking handlers in a thread pool, kind='cpu' handlers in a "
    "process pool (process), or everything inline (none).",
)
@env_option(
    "--offload-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes in the --offload process pool.  [default: one per core]",
)
@env_option(
    "--stats-interval",
    type=click.FloatRange(min=0),
    default=None,
    help="Log connection/request/byte counters every this many seconds.  [default: never]",
)
@env_option("--udp", is_flag=True, default=False, help="Serve UDP datagrams instead of TCP.")
@env_option(
    "--max-datagram-size",
    type=click.IntRange(1, 65535),
    default=65507,
    help="UDP: larger datagrams are counted, logged and dropped.",
)
@env_option("--certfile", default=None, help="TCP: serve TLS with this PEM certificate chain.")
@env_option("--keyfile", default=None, help="TLS private key (if not inside --certfile).")
@env_option(
    "--ca-certs",
    default=None,
    help="TLS: require client certificates signed by these CAs (mutual TLS).",
)
@env_option(
    "--reuse-port",
    is_flag=True,
    default=False,
    help="With --workers: each worker listens on its own SO_REUSEPORT socket (connections "
    "spread evenly by hash) instead of all accepting from one shared socket.",
)
@click.option("--listen-fd", type=int, default=None, hidden=True)
@env_option("--log-level", type=LOG_LEVELS, default="info", help="Logging threshold (stderr).")
def serve(
    app: str,
    model: str,
    host: str,
    port: int,
    protocol: str,
    threads: int,
    loop: str,
    max_frame_size: int,
    workers: str | None,
    graceful_timeout: float,
    max_connections: int | None,
    max_children: int | None,
    idle_timeout: float | None,
    handshake_timeout: float,
    request_timeout: float | None,
    offload: str,
    offload_workers: int | None,
    stats_interval: float | None,
    udp: bool,
    max_datagram_size: int,
    certfile: str | None,
    keyfile: str | None,
    ca_certs: str | None,
    reuse_port: bool,
    listen_fd: int | None,
    log_level: str,
) -> None:
    """Serve APP over TCP until SIGINT/SIGTERM (then close connections and exit 0).

    APP is a built-in (echo, upper, sleep, cpu) or module:attribute naming a handler:
    a function taking the request bytes (and optionally a bingfa.Context) and returning the
    reply bytes or None. Once listening, one line goes to stdout:
    "bingfa: listening on HOST:PORT (...)".
    """
    from bingfa.server import create_server
    from bingfa.server import serve as run

    setup_logging(log_level)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so `module:attr` finds the user's own modules
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "protocol": protocol,
        "threads": threads,
        "loop": loop,
        "max_frame_size": max_frame_size,
        "graceful_timeout": graceful_timeout,
        "max_connections": max_connections,
        "max_children": max_children,
        "idle_timeout": idle_timeout,
        "handshake_timeout": handshake_timeout,
        "request_timeout": request_timeout,
        "offload": offload,
        "offload_workers": offload_workers,
        "stats_interval": stats_interval,
        "udp": udp,
        "max_datagram_size": max_datagram_size,
        "certfile": certfile,
        "keyfile": keyfile,
        "ca_certs": ca_certs,
        "reuse_port": reuse_port,
    }
    try:
        n_workers = parse_workers(workers)
        if n_workers is not None and listen_fd is None:
            if model == "fork":
                raise UsageError(
                    "--workers does not apply to the fork model, which already runs a process "
                    "per connection; use --max-children to bound it"
                )
            from bingfa.server._supervisor import Supervisor

            supervisor = Supervisor(app, model, n_workers, options, log_level=log_level)
            bound_host, bound_port = supervisor.listen()
            announce(bound_host, bound_port, f"app={app} model={model} workers={n_workers}")
            sys.exit(supervisor.run())
        server = create_server(app, model, listen_fd=listen_fd, **options)
        bound_host, bound_port = server.listen()
    except BingfaError as exc:
        fail(exc)
        return
    # Until serve() installs the model's own handlers: a SIGTERM right after the listening
    # line must still stop cleanly, and a supervisor's early SIGUSR1 must not kill a worker.
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    signal.signal(signal.SIGINT, lambda *_: server.shutdown())
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    transport = "udp" if udp else ("tls" if certfile else protocol)
    announce(bound_host, bound_port, f"app={server.app.name} model={model} protocol={transport}")
    run(server)


def parse_workers(text: str | None) -> int | None:
    """``--workers``: None (no supervisor), ``auto`` (one per core) or a positive integer."""
    if text is None:
        return None
    if text == "auto":
        return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--workers must be a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise UsageError(f"--workers must be at least 1, got {value}")
    return value


def announce(host: str, port: int, details: str) -> None:
    """Print the one stdout line that says the server listens (tools parse it)."""
    click.echo(f"bingfa: listening on {format_address(host, port)} ({details} pid={os.getpid()})")
    sys.stdout.flush()


def _show(reply: bytes) -> str:
    return reply.decode("utf-8", errors="backslashreplace")


def client_options(fn: FC) -> FC:
    """The options ``send`` and ``client`` share: framing, timeout, TLS."""
    for option in reversed(
        [
            env_option("--protocol", type=PROTOCOL_CHOICE, default="frame", help="Wire framing."),
            env_option("--timeout", type=float, default=10.0, help="Seconds to wait per reply."),
            env_option("--tls", is_flag=True, default=False, help="Connect with TLS."),
            env_option(
                "--cafile",
                default=None,
                help="TLS: trust this CA bundle (default: the system's).",
            ),
            click.option(
                "--client-cert",
                envvar="BINGFA_CLIENT_CERT",
                default=None,
                help="TLS: present this client certificate (PEM, key included or --client-key).",
            ),
            click.option("--client-key", envvar="BINGFA_CLIENT_KEY", default=None, hidden=True),
        ]
    ):
        fn = option(fn)
    return fn


def open_client(address: str, protocol: str, timeout: float, tls: bool, **files: Any) -> Client:
    host, port = parse_address(address)
    return Client(
        host,
        port,
        protocol=protocol,
        timeout=timeout,
        tls=tls,
        cafile=files.get("cafile"),
        certfile=files.get("client_cert"),
        keyfile=files.get("client_key"),
    )


@cli.command()
@click.argument("address")
@click.argument("messages", nargs=-1, required=True)
@client_options
@env_option("--udp", is_flag=True, default=False, help="Send each message as a UDP datagram.")
@env_option("--retries", type=click.IntRange(min=0), default=3, help="UDP: resends on timeout.")
def send(
    address: str,
    messages: tuple[str, ...],
    protocol: str,
    timeout: float,
    tls: bool,
    udp: bool,
    retries: int,
    **files: Any,
) -> None:
    """Send each MESSAGE as one request to ADDRESS (HOST:PORT); print each reply on a line.

    With --udp each message is one datagram, resent up to --retries times (--timeout each).
    """
    try:
        if udp:
            if tls:
                raise UsageError("--tls is for TCP; UDP is sent in the clear")
            with UdpClient(*parse_address(address)) as udp_client:
                for message in messages:
                    reply = udp_client.request(message.encode(), timeout=timeout, retries=retries)
                    click.echo(_show(reply))
            return
        with open_client(address, protocol, timeout, tls, **files) as client:
            for message in messages:
                click.echo(_show(client.request(message.encode())))
    except BingfaError as exc:
        fail(exc)


@cli.command()
@click.argument("address")
@client_options
def client(address: str, protocol: str, timeout: float, tls: bool, **files: Any) -> None:
    """Interactive client: each line you type is a request; its reply is printed.

    End with an empty line, 'quit', or Ctrl-D.
    """
    try:
        with open_client(address, protocol, timeout, tls, **files) as conn:
            interactive = sys.stdin.isatty()
            while True:
                if interactive:
                    click.echo("> ", nl=False)
                line = sys.stdin.readline()
                if not line or line.strip() in ("", "quit", "exit"):
                    return
                click.echo(_show(conn.request(line.rstrip("\r\n").encode())))
    except BingfaError as exc:
        fail(exc)


@cli.command()
@env_option("--clients", type=click.IntRange(1, 500), default=20, help="Concurrent clients.")
@env_option("--requests", type=click.IntRange(1), default=200, help="Requests per client.")
def demo(clients: int, requests: int) -> None:
    """Self-check: serve `upper` under every model and round-trip messages; print a table."""
    from bingfa.selfcheck import run_selfcheck

    sys.exit(run_selfcheck(clients=clients, requests=requests))


def _register_subcommands() -> None:
    """Commands that live with their features; imported lazily by click at registration."""
    from bingfa.bench.cli import bench_command, compare_command
    from bingfa.executor.fetch import fetch_command
    from bingfa.locks.cli import locks_command
    from bingfa.pipeline.cli import worker_command

    for command in (bench_command, compare_command, fetch_command, locks_command, worker_command):
        cli.add_command(command)


_register_subcommands()
