"""deploy/kubernetes/, checked offline: every manifest against the Kubernetes
API schemas that the kubernetes-validate package ships (strict: an unknown
field is an error), and the manifests against each other and the config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshbridge.service import Config, parse_config

from ._stack import REPO

FOLDER = REPO / "deploy" / "kubernetes"
# A version the package ships schemas for, and the oldest the manifests
# promise to work on (pod securityContext, policy/v1, appProtocol are older).
KUBERNETES = "1.30.0"

Resource = dict[str, Any]


def manifests() -> list[Path]:
    return sorted(FOLDER.glob("*.yaml"))


def resources() -> dict[str, Resource]:
    """kind -> the one resource of that kind in the folder."""
    found: dict[str, Resource] = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"a second {doc['kind']} in {path.name}"
            found[doc["kind"]] = doc
    return found


def container() -> Resource:
    spec = resources()["Deployment"]["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    assert isinstance(only, dict)
    return only


def router_table(tmp_path: Path) -> Config:
    """The ConfigMap's table, read with every secret the Deployment sets from
    the Secret (any *_env it names that the Deployment does not set is an error)."""
    data = resources()["ConfigMap"]["data"]
    (name,) = data
    env = container()["env"]
    from_secret = {e["name"]: f"{e['name']}-{'x' * 40}" for e in env
                   if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    if "MESHBRIDGE_LEDGER_URL" in from_secret:
        from_secret["MESHBRIDGE_LEDGER_URL"] = "postgresql://meshbridge:x@postgres/meshbridge"
    return parse_config(tomllib.loads(data[name]), tmp_path / name, from_secret)


def test_the_folder_holds_the_manifests() -> None:
    assert {p.name for p in manifests()} == {
        "configmap.yaml",
        "deployment.yaml",
        "poddisruptionbudget.yaml",
        "service.yaml",
    }
    assert set(resources()) == {"ConfigMap", "Deployment", "PodDisruptionBudget", "Service"}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']}: {where}: {exc.message}", pytrace=False)


def test_the_pod_runs_unprivileged_on_a_read_only_root() -> None:
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    requests = container()["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
    # what meshbridge writes goes to volumes: the pid file's folder
    env = {e["name"]: e.get("value") for e in container()["env"]}
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert env["XDG_RUNTIME_DIR"] in mounts


def test_the_config_map_is_a_valid_router_table_with_every_secret_provided(
    tmp_path: Path,
) -> None:
    config = router_table(tmp_path)
    assert not config.missing_env
    assert [c.name for c in config.server.clients] == ["app"]
    assert [p.name for p in config.server.peers] == ["edge"]
    # serve reads it where the ConfigMap is mounted
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == "config"]
    assert container()["args"] == ["serve", f"{mount['mountPath']}/{config.path.name}"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container()["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    assert refs == {"meshbridge-secrets"}


def test_every_replica_writes_the_ledger_to_the_postgresql_of_the_secret(tmp_path: Path) -> None:
    config = router_table(tmp_path)
    assert config.ledger.enabled
    assert config.ledger.url.startswith("postgresql://")
    assert config.server.admin_token is not None  # the usage API has a token
    (url,) = [e for e in container()["env"] if e["name"] == "MESHBRIDGE_LEDGER_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "meshbridge-secrets", "key": "ledger-url"}
    # the spool goes to a volume of its own (the root filesystem is read-only)
    env = {e["name"]: e.get("value") for e in container()["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert mounts[env["XDG_STATE_HOME"]] == "state"


def test_probes_and_scrapes_use_the_admin_listener_and_the_service_the_public_one(
    tmp_path: Path,
) -> None:
    server = router_table(tmp_path).server
    assert server.admin is not None
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"http": server.port, "admin": server.admin[1]}
    assert container()["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container()["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    found = resources()
    annotations = found["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(server.admin[1]),
        "prometheus.io/path": "/metrics",
    }
    (service_port,) = found["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"


def test_the_service_and_budget_select_the_pods() -> None:
    found = resources()
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selected = [
        found["Deployment"]["spec"]["selector"]["matchLabels"],
        found["Service"]["spec"]["selector"],
        found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selected:
        assert selector.items() <= labels.items()


def test_shutdown_fits_in_the_termination_grace_period(tmp_path: Path) -> None:
    """preStop pause + meshbridge's grace_period < terminationGracePeriodSeconds."""
    found = resources()
    grace = router_table(tmp_path).server.grace_period
    pause = int(container()["lifecycle"]["preStop"]["exec"]["command"][-1])
    budget = found["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause + grace < budget
