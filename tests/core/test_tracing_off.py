"""Tracing off: without opentelemetry, or with no tracer provider set, the mesh
loads nothing of it; a global provider set before the mesh starts turns it on.

Each case runs in a fresh interpreter, where importing (or blocking) a
package and setting the global tracer provider touch nothing of this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A workload: a direct request and one through a policy (a relay); prints what
# the handler saw, what was loaded, and the statuses.
WORKLOAD = """
import asyncio, json, sys
from aiohttp import web
from meshbridge import Mesh, Policy

async def echo(request):
    return web.json_response({"traceparent": request.headers.get("traceparent")})

async def main():
    app = web.Application()
    app.router.add_get("/", echo)
    governed = web.Application()
    governed.router.add_get("/", echo)
    mesh = Mesh()
    mesh.register("app", app)
    mesh.register("governed", governed, policy=Policy(retries=1))
    seen = []
    async with mesh, mesh.session() as session:
        for name in ("app", "governed"):
            async with session.get(f"http://{name}/") as response:
                seen.append((response.status, await response.json()))
    loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "meshbridge._otel")))
    print(json.dumps({"seen": seen, "loaded": loaded}))

asyncio.run(main())
"""

BLOCK = """
import sys

class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
"""

GLOBAL_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
import atexit
atexit.register(lambda: print(json.dumps([s.name for s in exporter.get_finished_spans()])))
import json
"""


def run(script: str) -> list[object]:
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_without_opentelemetry_the_mesh_serves_requests_and_imports_none_of_it() -> None:
    (result,) = run(BLOCK + WORKLOAD)
    assert result == {
        "seen": [[200, {"traceparent": None}], [200, {"traceparent": None}]],
        "loaded": [],
    }


def test_with_no_tracer_provider_set_the_mesh_loads_no_span_machinery() -> None:
    # opentelemetry is installed here (the SDKs depend on it), yet nothing loads it
    (result,) = run(WORKLOAD)
    assert result == {
        "seen": [[200, {"traceparent": None}], [200, {"traceparent": None}]],
        "loaded": [],
    }


def test_a_global_tracer_provider_set_before_the_mesh_starts_traces_its_requests() -> None:
    result, names = run(GLOBAL_PROVIDER + WORKLOAD)
    assert isinstance(result, dict)
    for status, seen in result["seen"]:
        assert status == 200
        assert seen["traceparent"].startswith("00-")
    assert "meshbridge._otel" in result["loaded"]
    assert names == ["GET app", "GET governed"]
