"""Console-script entry point. Imports nothing heavy before deciding about gevent.

gevent's monkey-patching must happen before ``threading``, ``socket`` or ``ssl`` are imported,
or the process ends up half-patched. So when the command line asks for the gevent model, this
module patches first, and only then imports the CLI (click, rich, bingfa's servers).
"""

from __future__ import annotations

import os
import sys


def wants_gevent(argv: list[str]) -> bool:
    """True when ``argv`` (or ``BINGFA_MODEL``) selects the gevent model for ``serve``."""
    if "serve" not in argv:
        return False
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            return argv[i + 1] == "gevent"
        if arg.startswith("--model="):
            return arg.partition("=")[2] == "gevent"
    return os.environ.get("BINGFA_MODEL") == "gevent" and "serve" in argv


def main() -> None:
    """Run the ``bingfa`` command line."""
    if wants_gevent(sys.argv[1:]):
        from gevent import monkey

        monkey.patch_all()
    from bingfa.cli import cli

    cli()


if __name__ == "__main__":
    main()
