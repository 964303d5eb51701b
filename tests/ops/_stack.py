"""Processes of the ops tests: the demo workload, a real Prometheus, and system tools.

Every process is started here and stopped by its own pid (``Process.stop``), on
127.0.0.1 only. Where ``setpriv`` exists, a process also gets SIGTERM if the
test run dies without its teardown, so nothing outlives the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "prometheus"
DASHBOARD = REPO / "grafana" / "dashboards" / "meshbridge.json"

T = TypeVar("T")


def require_tool(name: str) -> str:
    """The path of a system tool; skip without it, but fail under ``CI=true``."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name!r} is not installed (`make system-deps` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI a missing tool is a failure", pytrace=False)
        pytest.skip(reason)
    return path


def run_tool(argv: Sequence[str], *, stdin: str | None = None, cwd: Path = REPO) -> str:
    """Run a tool to completion (bounded); fail with its output unless it exits 0."""
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited {done.returncode}\n{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float) -> T:
    """Poll ``probe`` until it returns something other than None (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:.0f}s", pytrace=False)
        time.sleep(0.25)


def http_get(url: str, *, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET ``url``: (status, body); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log: Path) -> Process:
        if sys.platform == "linux" and (setpriv := shutil.which("setpriv")):
            # setpriv execs argv, so the pid stays the process's own.
            argv = [setpriv, "--pdeathsig", "SIGTERM", "--", *argv]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        return cls(name, popen, log)

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(
                f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}", pytrace=False
            )

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL if it has not exited within 10 s."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


@dataclass
class Demo:
    """A workload serving /metrics on ``address``: ``meshbridge demo`` or ``_resilience.py``."""

    process: Process
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def scrape(self, *, openmetrics: bool = False) -> str:
        self.process.check_running()
        accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
        status, body = http_get(f"{self.url}/metrics", headers={"Accept": accept})
        assert status == 200, f"GET {self.url}/metrics answered {status}: {body[:500]}"
        return body


class PromQLError(Exception):
    """Prometheus refused a query."""


@dataclass
class Prometheus:
    """A Prometheus server and a small client for its HTTP API."""

    process: Process
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer, else PromQLError."""
        self.process.check_running()
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url)
        try:
            answer = json.loads(body)
        except json.JSONDecodeError:
            raise PromQLError(f"HTTP {status}: {body[:500]}") from None
        if answer.get("status") != "success":
            raise PromQLError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: its series (a scalar counts as one)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, *, seconds: int, step: int) -> list[dict[str, Any]]:
        """A range query over the last ``seconds``: its series."""
        end = time.time()
        data = self.api(
            "query_range", query=expr, start=str(end - seconds), end=str(end), step=str(step)
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, each with its group's name under ``group``."""
        rules: list[dict[str, Any]] = []
        for group in self.api("rules")["groups"]:
            rules.extend({**rule, "group": group["name"]} for rule in group["rules"])
        return rules
