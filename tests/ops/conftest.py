"""Session fixtures of the ops tests: two workloads and one Prometheus scraping both.

The workloads are ``meshbridge demo`` and a mesh whose providers misbehave
under traffic policies (``_resilience.py``). All are real processes on free
127.0.0.1 ports, started once for the ops suite and stopped by their own pid
at its end.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from ._promql import exported_names
from ._stack import PROMETHEUS_DIR, Demo, Process, Prometheus, free_port, http_get, wait_for
from ._stack import require_tool as _require_tool

# The demo bounds itself with --duration in case this process dies before its
# teardown; the suite is done well before.
DEMO_SECONDS = 150
SCRAPE_INTERVAL = "1s"


@pytest.fixture(scope="session")
def promtool() -> str:
    return _require_tool("promtool")


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``meshbridge demo`` on a free port, ready to serve /metrics."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable,
        "-m",
        "meshbridge",
        "demo",
        "--listen",
        address,
        "--duration",
        str(DEMO_SECONDS),
    ]
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    process = Process.start("meshbridge demo", argv, log)
    try:

        def ready() -> bool | None:
            process.check_running()
            return http_get(f"http://{address}/readyz")[0] == 200 or None

        wait_for(f"{' '.join(argv)} to answer /readyz", ready, timeout=30)
        yield Demo(process, address)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def resilience(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The misbehaving mesh of ``_resilience.py`` on a free port, serving /metrics."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable,
        "-m",
        "tests.ops._resilience",
        "--listen",
        address,
        "--duration",
        str(DEMO_SECONDS),
    ]
    log = tmp_path_factory.mktemp("resilience") / "resilience.log"
    process = Process.start("resilience workload", argv, log)
    try:

        def ready() -> bool | None:
            process.check_running()
            return http_get(f"http://{address}/metrics")[0] == 200 or None

        wait_for(f"{' '.join(argv)} to answer /metrics", ready, timeout=30)
        yield Demo(process, address)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def exported(demo: Demo, resilience: Demo) -> dict[str, set[str]]:
    """family -> queryable series names, from a scrape of each workload."""
    names = exported_names(demo.scrape())
    for family, series in exported_names(resilience.scrape()).items():
        names[family] = names.get(family, set()) | series
    return names


@pytest.fixture(scope="session")
def prometheus(
    demo: Demo, resilience: Demo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A real Prometheus scraping both workloads every second, with
    prometheus/alerts.yml loaded."""
    binary = _require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    # JSON is YAML. The job name is the one prometheus/prometheus.yml uses.
    config.write_text(
        json.dumps(
            {
                "global": {
                    "scrape_interval": SCRAPE_INTERVAL,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "evaluation_interval": SCRAPE_INTERVAL,
                },
                "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "meshbridge",
                        "static_configs": [{"targets": [demo.address, resilience.address]}],
                    }
                ],
            },
            indent=2,
        )
    )
    address = f"127.0.0.1:{free_port()}"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
        # the latency histograms' exemplars (trace ids), as docker-compose.yml runs it
        "--enable-feature=exemplar-storage",
    ]
    process = Process.start("prometheus", argv, workdir / "prometheus.log")
    server = Prometheus(process, address)
    try:

        def ready() -> bool | None:
            process.check_running()
            return http_get(f"{server.url}/-/ready")[0] == 200 or None

        def scraped() -> bool | None:
            scrapes = server.query('sum_over_time(up{job="meshbridge"}[1m]) >= 3')
            return len(scrapes) == 2 or None

        wait_for("prometheus to be ready", ready, timeout=30)
        wait_for("three scrapes of each workload", scraped, timeout=30)
        yield server
    finally:
        process.stop()
