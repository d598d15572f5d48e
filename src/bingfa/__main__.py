"""``python -m bingfa`` runs the command line (gevent patching first when asked for)."""

from bingfa._entry import main

main()
