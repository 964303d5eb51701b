"""The README's quickstart runs as it stands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_quickstart_runs(tmp_path: Path) -> None:
    text = README.read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S)
    assert block is not None, "README has no Quickstart python block"
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "data: hello (from agents)",
        "data: in-process (from agents)",
        "data: world (from agents)",
        "{'source': 'batch', 'key': 'key-2'}",
        "{'source': 'api', 'key': None}",
    ]
