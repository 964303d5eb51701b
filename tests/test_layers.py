"""The layers point one way: core <- providers <- service, and the pytest
plugin (meshbridge.testing) on core and providers, beside the service.

Checked three ways: the import statements of every module (wherever they
stand: top level, inside functions, under TYPE_CHECKING), what a fresh
interpreter has loaded after ``import meshbridge``, and the names the built
wheel installs.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "meshbridge"
UPPER = ("meshbridge.providers", "meshbridge.service", "meshbridge.testing")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def layer_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def core_files() -> list[Path]:
    return [
        p
        for p in layer_files(PACKAGE)
        if p.relative_to(PACKAGE).parts[0] not in {"providers", "service", "testing"}
    ]


def is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_neither_the_providers_nor_the_service() -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in core_files()
        for name in imports(path)
        if is_under(name, (*UPPER, "providers", "tomllib"))
    }
    assert not wrong


def test_the_providers_use_the_cores_public_names_and_not_the_service() -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in layer_files(PACKAGE / "providers")
        for name in imports(path)
        if is_under(name, ("meshbridge.service", "meshbridge.testing", "providers"))
        or (name.startswith("meshbridge._") and not name.startswith("meshbridge.providers"))
    }
    assert not wrong


def test_the_service_uses_the_public_names_of_the_layers_below() -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in layer_files(PACKAGE / "service")
        for name in imports(path)
        if name.startswith(("meshbridge._", "meshbridge.providers._", "providers"))
        or is_under(name, ("meshbridge.testing",))
    }
    assert not wrong


def test_the_pytest_plugin_uses_public_names_and_not_the_service() -> None:
    own = "meshbridge.testing"
    found = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in layer_files(PACKAGE / "testing")
        for name in imports(path)
        if not is_under(name, (own,))
        and (
            is_under(name, ("meshbridge.service", "providers"))
            or name.startswith(("meshbridge._", "meshbridge.providers._"))
        )
    }
    assert layer_files(PACKAGE / "testing")
    assert not found


def test_importing_the_core_loads_no_other_layer_and_no_toml_parser() -> None:
    script = "import sys, meshbridge; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert "meshbridge" in loaded
    assert not [m for m in loaded if is_under(m, (*UPPER, "providers", "tomllib"))]
    # tracing is optional and lazy: installed (the SDKs depend on it) yet not loaded
    assert not [m for m in loaded if is_under(m, ("opentelemetry", "meshbridge._otel"))]
    # the usage ledger's storage is the service's: installed, not loaded by the core
    assert not [m for m in loaded if is_under(m, ("sqlalchemy", "alembic", "psycopg"))]


def test_only_the_tracing_module_of_the_core_imports_opentelemetry() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for path in core_files()
        if any(is_under(name, ("opentelemetry",)) for name in imports(path))
    }
    assert importers == {"meshbridge/_otel.py"}


def test_the_wheel_installs_the_meshbridge_package_only(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv*", ".git", "*cache*", "build", "*.egg-info"),
    )
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([*pip, "-w", str(tmp_path), str(source)], check=True, env=env)
    (wheel,) = tmp_path.glob("meshbridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = archive.read(top_level).decode().split()
    installed = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert installed == {"meshbridge"}
    assert declared == ["meshbridge"]
    # the provider kinds and the service are inside it, as subpackages
    assert "meshbridge/providers/fake.py" in names
    assert "meshbridge/service/_cli.py" in names
    assert "meshbridge/testing/plugin.py" in names


@pytest.mark.parametrize(
    "command", [["-m", "meshbridge", "kinds"], ["-m", "meshbridge.service", "kinds"]]
)
def test_python_dash_m_runs_the_command(command: list[str]) -> None:
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True)
    assert {line.split()[0] for line in result.stdout.splitlines()} == {
        "anthropic",
        "fake",
        "openai",
        "remote",
    }
