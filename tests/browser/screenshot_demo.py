"""The admin page during the demo's outage, as the docs show it
(docs/images/admin.png): ``python -m tests.browser.screenshot_demo [PATH]``,
or ``make admin-screenshot``.

It runs ``meshbridge demo --admin-listen 127.0.0.1:0``, signs in with the
token the demo prints, waits until the circuit of ``flaky`` shows as open
(its outage starts 3 s after the demo does) and takes the picture; then it
stops the demo. Chromium is Debian's, driven by its executable path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from .chromium import find_chromium

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "admin.png"
_ADDRESS = re.compile(r"admin page: (http://\S+/admin/) \(token: (\S+)\)")


def take(path: Path) -> None:
    """Write the screenshot to ``path``."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="meshbridge-screenshot-") as folder:
        log = Path(folder) / "demo.log"
        argv = [sys.executable, "-m", "meshbridge", "demo", "--listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0", "--duration", "20"]  # fmt: skip
        with log.open("wb") as out:
            demo = subprocess.Popen(
                argv, stdout=out, stderr=out, env={**os.environ, "XDG_STATE_HOME": folder}
            )
        try:
            deadline = time.monotonic() + 15
            while not (found := _ADDRESS.search(log.read_text())):
                if demo.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the demo did not print its admin page:\n{log.read_text()}")
                time.sleep(0.05)
            page_url, token = found[1], found[2]
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium)
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(page_url)
                page.fill("input[name=token]", token)
                page.click("#sign-in button[type=submit]")
                flaky = page.locator('#live-providers tr[data-provider="flaky"] td.circuit')
                flaky.and_(page.locator('[data-circuit="open"]')).wait_for(timeout=10_000)
                page.screenshot(path=str(path))
                browser.close()
        finally:
            demo.terminate()
            demo.wait(timeout=10)
    print(f"wrote {path}")


if __name__ == "__main__":
    take(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS_IMAGE)
