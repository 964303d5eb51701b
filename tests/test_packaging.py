"""What pip installs and what the sdist carries, through real builds and processes.

The sdist is built with setuptools' PEP 517 hook from a copy of the tree, the
wheel from that sdist (as a downstream packager would), and each is opened to
see what it holds; fresh interpreters show what ``import meshbridge`` loads and
what ``import providers`` from the repository root does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import meshbridge

from .test_layers import ROOT, UPPER, is_under

pytestmark = pytest.mark.integration

# Files of the repository that only its own tooling reads: not in the sdist.
REPOSITORY_ONLY = {".ci/run", ".gitignore", "MANIFEST.in"}


def test_importing_the_core_loads_no_other_layer_and_no_toml_parser() -> None:
    script = "import sys, meshbridge; print('\\n'.join(sorted(sys.modules)))"
    # as a user's interpreter loads it: without coverage's measurement (make pytest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout.split()
    assert "meshbridge" in loaded
    assert not [m for m in loaded if is_under(m, (*UPPER, "providers", "tomllib", "redis"))]
    # tracing is optional and lazy: installed (the SDKs depend on it) yet not loaded
    assert not [m for m in loaded if is_under(m, ("opentelemetry", "meshbridge._otel"))]
    # the usage ledger's storage is the service's: installed, not loaded by the core
    assert not [m for m in loaded if is_under(m, ("sqlalchemy", "alembic", "psycopg"))]


@pytest.mark.parametrize("statement", ["import providers", "from providers import fake"])
def test_the_top_level_providers_folder_cannot_load_as_a_second_copy(statement: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", statement], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the provider kinds are the package meshbridge.providers")
    assert "import meshbridge.providers" in last


def test_the_installed_package_has_one_version_the_metadata_reports() -> None:
    from importlib.metadata import version

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in declared
    assert "version" in declared["dynamic"]
    assert version("meshbridge") == meshbridge.__version__


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist of a copy of the working tree (the build writes egg-info)."""
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv*", ".git", "*cache*", "build", "site", "*.egg-info", ".coverage*"
        ),
    )
    script = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(work)],
        capture_output=True,
        text=True,
        check=True,
        cwd=source,
    )
    return work / done.stdout.split()[-1]


def tracked_files() -> list[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files to compare with")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return [name for name in listed.split("\0") if name]


def test_the_sdist_carries_the_tests_and_every_file_they_read(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    tracked = [
        name
        for name in tracked_files()
        if name not in REPOSITORY_ONLY and name != "meshbridge/providers"  # the link
    ]
    missing = sorted(name for name in tracked if name not in names)
    assert not missing, f"not in {sdist.name}: {missing}"
    for needed in ("tests/conftest.py", "docs/index.md", "mkdocs.yml", "LICENSE", "PKG-INFO"):
        assert needed in names
    # the link is resolved: the sdist builds on systems without symlinks
    assert "meshbridge/providers/fake.py" in names


def test_the_wheel_built_from_the_sdist_installs_the_meshbridge_package_only(
    sdist: Path, tmp_path: Path
) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([*pip, "-w", str(tmp_path), str(sdist)], check=True, env=env)
    (wheel,) = tmp_path.glob("meshbridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = archive.read(top_level).decode().split()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().partition("\n\n")[0].splitlines()
    installed = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert installed == {"meshbridge"}
    assert declared == ["meshbridge"]
    # the provider kinds and the service are inside it, as subpackages; no tests
    assert "meshbridge/providers/fake.py" in names
    assert "meshbridge/service/_cli.py" in names
    assert "meshbridge/testing/plugin.py" in names
    assert "meshbridge/py.typed" in names
    # the admin page's templates, script and style sheet (package data)
    for name in ("page.html", "live.html", "sign_in.html", "admin.js", "admin.css"):
        assert f"meshbridge/service/_admin/{name}" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
    assert f"Version: {meshbridge.__version__}" in headers
    assert "License-Expression: Apache-2.0" in headers
    for classifier in ("Typing :: Typed", "Framework :: aiohttp", "Framework :: Pytest"):
        assert f"Classifier: {classifier}" in headers
    urls = {h.split(",")[0].removeprefix("Project-URL: ") for h in headers if "Project-URL" in h}
    assert {"Documentation", "Changelog", "Source"} <= urls
    # development tools are dependency groups, never extras users would see
    extras = {h.removeprefix("Provides-Extra: ") for h in headers if h.startswith("Provides-")}
    assert extras == {"otel", "redis", "postgres"}


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
