"""``python -m bingfa.locks [options] script.py [args]``: run a script with lock diagnostics."""

from bingfa.locks.cli import main

main()
