"""The mesh's metrics, scraped over HTTP after a mixed workload, figure by figure."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from meshbridge import Mesh, Policy

from ..helpers import MeshFactory, app_with, settle

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(mesh: Mesh) -> tuple[Samples, str]:
    app = app_with(web.get("/metrics", mesh.metrics_handler()))
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as s:
        async with s.get(server.make_url("/metrics")) as r:
            text = await r.text()
        async with s.get(
            server.make_url("/metrics"),
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        ) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await r.text()).endswith("# EOF\n")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, text


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def matching(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


async def test_metrics_after_a_mixed_workload(make_mesh: MeshFactory) -> None:
    parked = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    async def midway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        raise RuntimeError("cut")

    async def park(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"tick\n")
        parked.set()
        await asyncio.Event().wait()
        return response

    llm = app_with(
        web.get("/ok", ok),
        web.route("*", "/echo", echo),
        web.get("/boom", boom),
        web.get("/midway", midway),
        web.get("/park", park),
    )
    mesh = await make_mesh({"llm": llm, "billing": app_with(web.get("/", ok))})
    assert mesh.registry is not REGISTRY

    bodies: dict[str, int] = {}
    async with mesh.session(source="agents") as s:
        for _ in range(3):
            async with s.get("http://llm/ok") as r:
                assert await r.text() == "ok"
        async with s.get("http://llm/missing") as r:
            assert r.status == 404
            bodies["404"] = len(await r.read())
    async with mesh.session(source="api") as s:
        async with s.post("http://llm/echo", data=b"x" * 1000) as r:
            assert len(await r.read()) == 1000
        async with s.request("PROPFIND", "http://llm/echo", data=b"tea") as r:
            assert await r.read() == b"tea"
    async with mesh.session(source="batch") as s:
        async with s.get("http://llm/boom") as r:
            assert r.status == 500
            bodies["500"] = len(await r.read())
        async with s.get("http://llm/midway") as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    async with mesh.session() as s:
        async with s.get("http://llm/park") as r:
            await parked.wait()
            assert await r.content.readline() == b"tick\n"
        async with s.get("http://billing/") as r:
            assert await r.text() == "ok"

    samples, text = await scrape(mesh)
    assert await settle(lambda: True)

    requests = matching(samples, "meshbridge_requests_total")
    expected = {
        ("llm", "agents", "GET", "200", "completed"): 3,
        ("llm", "agents", "GET", "404", "completed"): 1,
        ("llm", "api", "POST", "200", "completed"): 1,
        ("llm", "api", "other", "200", "completed"): 1,
        ("llm", "batch", "GET", "500", "error"): 1,
        ("llm", "batch", "GET", "200", "error"): 1,
        ("llm", "none", "GET", "200", "cancelled"): 1,
        ("billing", "none", "GET", "200", "completed"): 1,
    }
    keys = ("provider", "source", "method", "code", "outcome")
    assert {tuple(dict(k)[n] for n in keys): v for k, v in requests.items()} == expected

    # What callers got: the same direct calls, by the name they used, every method together.
    calls = matching(samples, "meshbridge_calls_total")
    assert {tuple(dict(k)[n] for n in ("target", "source", "code", "outcome")): v
            for k, v in calls.items()} == {
        ("llm", "agents", "200", "completed"): 3,
        ("llm", "agents", "404", "completed"): 1,
        ("llm", "api", "200", "completed"): 2,
        ("llm", "batch", "500", "error"): 1,
        ("llm", "batch", "200", "error"): 1,
        ("llm", "none", "200", "cancelled"): 1,
        ("billing", "none", "200", "completed"): 1,
    }  # fmt: skip

    per_pair = {("llm", "agents"): 4, ("llm", "api"): 2, ("llm", "batch"): 2, ("llm", "none"): 1}
    per_pair[("billing", "none")] = 1
    for (provider, source), count in per_pair.items():
        pair = {"provider": provider, "source": source}
        assert get(samples, "meshbridge_requests_in_flight", **pair) == 0
        assert get(samples, "meshbridge_time_to_first_byte_seconds_count", **pair) == count
        durations = sum(
            v
            for labels, v in matching(samples, "meshbridge_request_duration_seconds_count").items()
            if {("provider", provider), ("source", source)} <= labels
        )
        assert durations == count

    def body_bytes(kind: str, provider: str, source: str) -> float:
        return get(samples, f"meshbridge_{kind}_bytes_total", provider=provider, source=source)

    assert body_bytes("request", "llm", "api") == 1000 + 3
    assert body_bytes("request", "llm", "agents") == 0
    assert body_bytes("response", "llm", "agents") == 3 * 2 + bodies["404"]
    assert body_bytes("response", "llm", "api") == 1000 + 3
    assert body_bytes("response", "llm", "batch") == bodies["500"] + len(b"data: first\n\n")
    assert body_bytes("response", "llm", "none") == len(b"tick\n")
    errors = matching(samples, "meshbridge_handler_errors_total")
    assert {dict(k)["source"]: v for k, v in errors.items() if dict(k)["provider"] == "llm"} == {
        "agents": 0,
        "api": 0,
        "batch": 2,
        "none": 0,
    }
    # buckets span 1 ms to 5 minutes
    assert 'le="0.001"' in text
    assert 'le="300.0"' in text


async def test_a_call_counts_once_whether_it_went_direct_or_through_a_policy(
    make_mesh: MeshFactory,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    mesh = await make_mesh({"llm": app_with(web.route("*", "/", ok))})
    async with mesh.session(source="agents") as s:
        for method in ("GET", "POST", "GET"):  # direct: the call is its one attempt
            async with s.request(method, "http://llm/") as r:
                assert r.status == 200
        mesh.set_policy("llm", Policy(retries=1))
        async with s.get("http://llm/") as r:  # through a relay, which counts the call
            assert r.status == 200
        samples, _ = await scrape(mesh)
        pair = {"provider": "llm", "source": "agents", "code": "200", "outcome": "completed"}
        assert get(samples, "meshbridge_requests_total", **pair, method="GET") == 3
        assert get(samples, "meshbridge_requests_total", **pair, method="POST") == 1
        called = {"target": "llm", "source": "agents", "code": "200", "outcome": "completed"}
        assert matching(samples, "meshbridge_calls_total") == {frozenset(called.items()): 4}
        async with s.get("http://llm/") as r:
            assert r.status == 200
    samples, _ = await scrape(mesh)
    assert get(samples, "meshbridge_calls_total", **called) == 5
    assert get(samples, "meshbridge_requests_total", **pair, method="GET") == 4


async def test_outside_input_creates_no_series(make_mesh: MeshFactory) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    mesh = await make_mesh({"llm": app_with(web.route("*", "/{tail:.*}", ok))})
    async with aiohttp.ClientSession(connector=mesh.connector(provider="llm")) as s:
        webdav = ["PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT"]
        for i in range(20):
            headers = {"X-Meshbridge-Source": f"evil-{i}", "Host": f"evil-{i}"}
            method, url = webdav[i % len(webdav)], f"http://h{i}/p{i}?model=m{i}"
            async with s.request(method, url, headers=headers) as r:
                assert r.status == 200
    samples, _ = await scrape(mesh)
    requests = matching(samples, "meshbridge_requests_total")
    assert list(requests.values()) == [20]
    [labels] = requests
    assert dict(labels) == {
        "provider": "llm",
        "source": "none",
        "method": "other",
        "code": "200",
        "outcome": "completed",
    }


async def test_metrics_can_be_disabled_and_registries_are_separate() -> None:
    registry = CollectorRegistry()
    async with Mesh(registry=registry) as a, Mesh() as b, Mesh(metrics=False) as c:
        assert a.registry is registry
        assert b.registry is not registry

        async def ok(request: web.Request) -> web.Response:
            return web.Response()

        c.register("x", app_with(web.get("/", ok)))
        async with c.session() as s, s.get("http://x/") as r:
            assert r.status == 200
        assert list(c.registry.collect()) == []
