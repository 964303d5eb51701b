"""The layers point one way: core <- providers <- service, and the pytest
plugin (meshbridge.testing) on core and providers, beside the service.

Checked here through the import statements of every module (wherever they
stand: top level, inside functions, under TYPE_CHECKING); what a fresh
interpreter has loaded after ``import meshbridge`` and the names the built
wheel installs are checked by tests/test_packaging.py (real processes).
"""

from __future__ import annotations

import ast
from pathlib import Path

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
        if is_under(name, (*UPPER, "providers", "tomllib", "redis"))
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


def test_only_the_tracing_module_of_the_core_imports_opentelemetry() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for path in core_files()
        if any(is_under(name, ("opentelemetry",)) for name in imports(path))
    }
    assert importers == {"meshbridge/_otel.py"}
