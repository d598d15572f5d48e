"""The README's runnable tour snippet (executor, map, pipeline) runs as printed and prints what
its comments say: a tour that drifted from the API would fail here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_tour_snippet_runs(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "bingfa.map(" in b]
    assert len(blocks) == 1
    script = tmp_path / "tour.py"  # a file, not -c: process pools re-import __main__
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("model=process workers="), lines  # results.choice says why
    assert "CPU-bound" in lines[0]
    # the callback's 144, then the sums of squares below 10,000 and of the even squares below 100
    assert lines[1:] == ["144", "333283335000 161700"]
