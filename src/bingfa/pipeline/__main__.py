"""``python -m bingfa.pipeline MODULE:STAGE --redis URL --pipeline NAME``: ``bingfa worker``."""

from __future__ import annotations

from bingfa.pipeline.cli import worker_command

if __name__ == "__main__":
    worker_command(prog_name="bingfa worker")
