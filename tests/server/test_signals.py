"""Signals that the kernel delivers to a thread other than the main one still stop a server.

A process-directed signal may land in any thread; Python runs its handler in the main thread
only when that thread next runs bytecode. A main thread asleep in ``select()`` must be woken
(``signal.set_wakeup_fd``), or the server never stops. ``pthread_kill`` makes that delivery
certain here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import signal, sys, threading, time
    from bingfa.server import create_server, serve

    model, udp = sys.argv[1], sys.argv[2] == "udp"
    server = create_server("echo", model, port=0, udp=udp, threads=4)
    server.listen()

    def deliver(sig):
        # Runs in this helper thread: the signal is delivered to it, not to the main thread.
        signal.pthread_kill(threading.get_ident(), sig)

    def poke():
        time.sleep(0.3)
        deliver(signal.SIGUSR1)  # a stats request first: must not leave the loop spinning
        time.sleep(0.3)
        deliver(signal.SIGTERM)

    threading.Thread(target=poke, daemon=True).start()
    started = time.process_time()
    serve(server)
    print("stopped", round(time.process_time() - started, 2), flush=True)
    """
)


@pytest.mark.parametrize(
    ("model", "transport"), [("thread", "tcp"), ("threadpool", "tcp"), ("thread", "udp")]
)
def test_signal_delivered_to_another_thread_stops_the_server(model: str, transport: str) -> None:
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM, model, transport],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"server ignored a SIGTERM delivered to a non-main thread: {exc.stderr!r}")
    assert out.returncode == 0, out.stderr
    word, cpu = out.stdout.split()
    assert word == "stopped"
    # Woken for SIGUSR1, the loop drained the wake-up bytes instead of spinning on them.
    assert float(cpu) < 0.25, out.stderr
