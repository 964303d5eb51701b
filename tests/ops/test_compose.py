"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine needed)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from meshbridge.service import load_config
from meshbridge.service._demo import builtin_config

from ._stack import REPO, require_tool, run_tool

# One worker runs them all: they share the session's demo and Prometheus.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ops")]

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
STACK = REPO / "deploy" / "compose"  # the router tables of the two meshbridge nodes

# (service, target) -> source under the repository, for every bind mount.
EXPECTED_MOUNTS = {
    ("prometheus", "/etc/prometheus/prometheus.yml"): REPO / "prometheus" / "prometheus.yml",
    ("prometheus", "/etc/prometheus/alerts.yml"): REPO / "prometheus" / "alerts.yml",
    ("grafana", "/etc/grafana/provisioning"): REPO / "grafana" / "provisioning",
    ("grafana", "/etc/grafana/dashboards"): REPO / "grafana" / "dashboards",
    ("meshbridge", "/etc/meshbridge/demo.toml"): STACK / "demo.toml",
    ("meshbridge-billing", "/etc/meshbridge/billing.toml"): STACK / "billing.toml",
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
    assert set(services.split()) == {
        "meshbridge",
        "meshbridge-billing",
        "prometheus",
        "grafana",
        "postgres",
    }


def test_every_mounted_file_exists(resolved: str) -> None:
    mounts = bind_mounts(resolved)
    assert mounts, "found no bind mount in `docker-compose config` output"
    for (service, target), source in mounts.items():
        assert source.exists(), f"{service} mounts {source} at {target}: no such file"
        assert source.is_relative_to(REPO), f"{service} mounts {source} from outside the repo"
    assert EXPECTED_MOUNTS.items() <= mounts.items()


def test_meshbridge_is_built_here_and_listens_on_all_interfaces(resolved: str) -> None:
    assert re.search(rf"^    build:\n      context: {re.escape(str(REPO))}$", resolved, re.M)
    demo = r"^    - demo\n    - --config\n    - /etc/meshbridge/demo\.toml\n    - --listen\n"
    assert re.search(demo + r"    - 0\.0\.0\.0:8080$", resolved, re.M)
    assert re.search(r"^    - serve\n    - /etc/meshbridge/billing\.toml$", resolved, re.M)


def test_both_nodes_share_the_peer_secret_and_the_demo_waits_for_billing(resolved: str) -> None:
    secrets = re.findall(r"^      MESHBRIDGE_PEER_SECRET: (\S+)$", resolved, re.M)
    assert len(secrets) == 2
    assert len(set(secrets)) == 1
    needs = r"^    depends_on:\n      meshbridge-billing:\n        condition: service_healthy$"
    assert re.search(needs, resolved, re.M)


def test_the_remote_hop_is_signed_and_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo node's `billing` is the billing node's, reached by name and
    signed with the key id the billing node accepts for that provider only."""
    monkeypatch.setenv("MESHBRIDGE_PEER_SECRET", "compose-demo-peer-secret-not-a-secret")
    monkeypatch.setenv("MESHBRIDGE_LEDGER_URL", "postgresql://meshbridge:pw@postgres/meshbridge")
    demo, billing = load_config(STACK / "demo.toml"), load_config(STACK / "billing.toml")
    remote = demo.providers["billing"]
    assert remote.kind == "remote"
    shown = remote.describe()
    assert shown["upstream"] == "http://meshbridge-billing:8080/billing"
    assert "key id 1" in shown["identity"]
    (peer,) = billing.server.peers
    assert (peer.key_id, peer.providers) == ("1", frozenset({"billing"}))
    assert billing.providers["billing"].kind == "fake"
    assert billing.server.listen == "0.0.0.0:8080"
    assert billing.server.admin == ("0.0.0.0", 9090)


def test_the_demo_node_runs_the_built_in_demo_table_and_billing() -> None:
    """deploy/compose/demo.toml is `meshbridge demo`'s own table plus the moved provider."""
    built_in = tomllib.loads(builtin_config(0))
    compose = tomllib.loads((STACK / "demo.toml").read_text())
    assert compose["providers"].pop("billing")["kind"] == "remote"
    assert compose.pop("ledger") == {"url_env": "MESHBRIDGE_LEDGER_URL"}
    assert compose == built_in


def test_the_demo_node_records_calls_in_the_postgres_grafana_reads(resolved: str) -> None:
    url = re.search(r"^      MESHBRIDGE_LEDGER_URL: (\S+)$", resolved, re.M)
    assert url
    password = re.search(r"^      POSTGRES_PASSWORD: (\S+)$", resolved, re.M)
    grafana = re.findall(r"^      MESHBRIDGE_LEDGER_PASSWORD: (\S+)$", resolved, re.M)
    assert password
    assert grafana == [password[1]]
    assert url[1] == f"postgresql://meshbridge:{password[1]}@postgres:5432/meshbridge"
    needs = r"^      postgres:\n        condition: service_healthy$"
    assert re.search(needs, resolved, re.M)
    ledger = (REPO / "grafana" / "provisioning" / "datasources" / "ledger.yaml").read_text()
    assert re.search(r"^\s*url: postgres:5432$", ledger, re.M)
    assert re.search(r"^\s*password: \$MESHBRIDGE_LEDGER_PASSWORD$", ledger, re.M)


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
    assert re.search(r'^RUN pip install "?\.\[postgres\]', dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["meshbridge"\]$', dockerfile, re.M)
    for copy in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in copy.split():
            assert (REPO / source).exists(), f"the Dockerfile copies {source}: no such file"
