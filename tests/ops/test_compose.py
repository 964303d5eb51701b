"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ._stack import REPO, require_tool, run_tool

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

# (service, target) -> source under the repository, for every bind mount.
EXPECTED_MOUNTS = {
    ("prometheus", "/etc/prometheus/prometheus.yml"): REPO / "prometheus" / "prometheus.yml",
    ("prometheus", "/etc/prometheus/alerts.yml"): REPO / "prometheus" / "alerts.yml",
    ("grafana", "/etc/grafana/provisioning"): REPO / "grafana" / "provisioning",
    ("grafana", "/etc/grafana/dashboards"): REPO / "grafana" / "dashboards",
}


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return require_tool("docker-compose")


@pytest.fixture(scope="module")
def resolved(docker_compose: str) -> str:
    """The file as docker-compose resolves it: absolute paths, short volume syntax."""
    return run_tool([docker_compose, "-f", str(COMPOSE), "config"])


def bind_mounts(resolved: str) -> dict[tuple[str, str], Path]:
    """(service, target) -> source of every bind mount in ``docker-compose config`` output."""
    mounts: dict[tuple[str, str], Path] = {}
    service = None
    in_volumes = False
    for line in resolved.splitlines():
        if re.fullmatch(r"services:", line):
            service = ""
        elif re.fullmatch(r"\S.*", line):
            service = None
        elif service is not None and (m := re.fullmatch(r"  ([\w.-]+):", line)):
            service, in_volumes = m[1], False
        elif service and in_volumes and (m := re.fullmatch(r"    - (/[^:]+):([^:]+)(:\w+)?", line)):
            mounts[(service, m[2])] = Path(m[1])
        elif service and re.fullmatch(r"    \S.*", line):
            in_volumes = line.strip() == "volumes:"
    return mounts


def test_compose_file_validates_offline(docker_compose: str) -> None:
    run_tool([docker_compose, "-f", str(COMPOSE), "config", "-q"])


def test_services(docker_compose: str) -> None:
    services = run_tool([docker_compose, "-f", str(COMPOSE), "config", "--services"])
    assert set(services.split()) == {"meshbridge", "prometheus", "grafana"}


def test_every_mounted_file_exists(resolved: str) -> None:
    mounts = bind_mounts(resolved)
    assert mounts, "found no bind mount in `docker-compose config` output"
    for (service, target), source in mounts.items():
        assert source.exists(), f"{service} mounts {source} at {target}: no such file"
        assert source.is_relative_to(REPO), f"{service} mounts {source} from outside the repo"
    assert EXPECTED_MOUNTS.items() <= mounts.items()


def test_meshbridge_is_built_here_and_listens_on_all_interfaces(resolved: str) -> None:
    assert re.search(rf"^    build:\n      context: {re.escape(str(REPO))}$", resolved, re.M)
    assert re.search(r"^    - demo\n    - --listen\n    - 0\.0\.0\.0:8080$", resolved, re.M)


def test_grafana_allows_anonymous_viewers(resolved: str) -> None:
    assert re.search(r"^      GF_AUTH_ANONYMOUS_ENABLED: \"true\"$", resolved, re.M)
    assert re.search(r"^      GF_AUTH_ANONYMOUS_ORG_ROLE: Viewer$", resolved, re.M)


def test_the_services_find_each_other() -> None:
    """Prometheus scrapes the meshbridge service, Grafana reads Prometheus and the dashboards."""
    prometheus = (REPO / "prometheus" / "prometheus.yml").read_text()
    assert '- targets: ["meshbridge:8080"]' in prometheus
    provisioning = REPO / "grafana" / "provisioning"
    datasources = (provisioning / "datasources" / "prometheus.yaml").read_text()
    assert re.search(r"^\s*url: http://prometheus:9090$", datasources, re.M)
    dashboards = (provisioning / "dashboards" / "meshbridge.yaml").read_text()
    assert re.search(r"^\s*path: /etc/grafana/dashboards$", dashboards, re.M)
    # $__rate_interval is computed from the datasource's timeInterval: keep it
    # equal to Prometheus' scrape interval.
    scrape = re.search(r"^\s*scrape_interval:\s*(\S+)$", prometheus, re.M)
    time_interval = re.search(r"^\s*timeInterval:\s*(\S+)$", datasources, re.M)
    assert scrape
    assert time_interval
    assert scrape[1] == time_interval[1]


def test_dockerfile_installs_the_package_from_this_tree() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["meshbridge"\]$', dockerfile, re.M)
    for copy in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in copy.split():
            assert (REPO / source).exists(), f"the Dockerfile copies {source}: no such file"
