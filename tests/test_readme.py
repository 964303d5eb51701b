"""The quickstart runs as it stands, and the README and the docs show that very code.

``examples/quickstart.py`` is the one source: the README holds a copy of it
(checked equal here), the getting-started page includes it when the site is
built (checked here to include it), and the test runs the file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"

OUTPUT = [
    "data: hello (from agents)",
    "data: in-process (from agents)",
    "data: world (from agents)",
    "{'source': 'batch', 'key': 'key-2'}",
    "{'source': 'api', 'key': None}",
]


def test_the_readme_quickstart_is_the_example_file() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"## Quickstart\n.*?```python\n(.*?)```", text, re.S)
    assert blocks == [QUICKSTART.read_text()], "README's Quickstart differs from the example"


def test_the_getting_started_page_includes_the_example_file() -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert '```python\n--8<-- "examples/quickstart.py"\n```' in page
    shown = re.search(r"It prints:\n\n```text\n(.*?)```", page, re.S)
    assert shown is not None
    assert shown.group(1).splitlines() == OUTPUT


@pytest.mark.integration  # a real process
def test_the_quickstart_runs_and_prints_what_the_docs_say() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(QUICKSTART)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == OUTPUT
