"""The reference cannot drift from the code: every config key the parsers
read, every metric label the collectors export and every provider kind is
documented, and nothing documented is gone.

The tables themselves are generated when the site is built
(``docs/_hooks/reference.py``, ``make docs``); these tests run the same
generator and name whatever lacks a description.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# OptionReader's typed reads: a string literal as the first argument is a key.
READS = {"string", "boolean", "number", "integer", "strings", "url", "env", "table", "value"}


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference", DOCS / "_hooks" / "reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_config_key_metric_label_and_kind_is_documented(reference: ModuleType) -> None:
    assert reference.undocumented() == []


def test_the_config_reference_lists_every_key_with_its_default(reference: ModuleType) -> None:
    table = reference.config_table()
    assert "| `server.header_timeout` |  | a number > 0 and <= 86400 | `10` |" in table
    assert "| `providers.NAME.upstream` | `anthropic`, `openai` |" in table
    assert "| `providers.NAME.policy.retries` |  | an integer from 0 to 100 | `0` |" in table
    rows = list(table.splitlines()[2:])
    assert len(rows) == len(reference.config_keys()) > 60


def test_a_prefix_keeps_a_part_of_the_config_reference(reference: ModuleType) -> None:
    server = reference.config_table("server")
    assert "`server.listen`" in server
    assert "`providers.NAME.kind`" not in server
    kinds = reference.config_table("providers", "-providers.NAME.policy")
    assert "`providers.NAME.url`" in kinds
    assert "policy.retries" not in kinds


def literal_keys(path: Path) -> set[str]:
    """The string keys ``path`` asks an OptionReader for: ``reader.integer("x", ...)``,
    and helpers called as ``_seconds(reader, "x", ...)``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        args = node.args
        if isinstance(node.func, ast.Attribute) and node.func.attr in READS:
            first = args[0]
        elif (
            isinstance(node.func, ast.Name)
            and node.func.id.startswith("_")
            and len(args) > 1
            and isinstance(args[0], ast.Name)
            and args[0].id in {"reader", "client", "peer", "sub"}
        ):
            first = args[1]
        else:
            continue
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value:
            found.add(first.value)
    return found


def test_every_key_the_code_reads_is_in_the_sample_the_reference_is_made_from(
    reference: ModuleType,
) -> None:
    """A key read only in a table the sample lacks (or only when another key is
    set) would be missing from the reference: name it."""
    sources = [*(ROOT / "providers").glob("*.py"), *(ROOT / "meshbridge" / "service").glob("*.py")]
    read = {key.path.rsplit(".", 1)[-1] for key in reference.config_keys()}
    missing = {
        f"{path.relative_to(ROOT)}: {key}"
        for path in sources
        for key in literal_keys(path)
        if key not in read
    }
    assert not missing, (
        f"keys read by the code but not by SAMPLE in docs/_hooks/reference.py: {sorted(missing)}"
    )


def test_every_metric_family_is_in_the_reference_with_its_labels(reference: ModuleType) -> None:
    families = {f.name: f for f in reference.metric_families()}
    assert families["meshbridge_requests_total"].labels == (
        "provider",
        "source",
        "method",
        "code",
        "outcome",
    )
    assert families["meshbridge_workers_up"].labels == ("worker",)
    assert "meshbridge_peer_auth_failures_total" in families
    assert "meshbridge_config_reloads_total" in families
    table = reference.metrics_table()
    assert all(f"| `{name}` |" in table for name in families)


def test_the_cli_reference_has_every_command(reference: ModuleType) -> None:
    helps = reference.cli_help()
    assert set(helps) == {
        "",
        "check",
        "routes",
        "serve",
        "reload",
        "demo",
        "kinds",
        "limits",
        "usage",
    }
    assert "--workers N" in helps["serve"]
    assert "--worker " not in helps["serve"]


def test_every_generated_part_a_page_asks_for_exists(reference: ModuleType) -> None:
    asked = {
        (str(page.relative_to(DOCS)), what)
        for page in DOCS.rglob("*.md")
        for what in reference.generated(page.read_text())
    }
    assert {what for _, what in asked} == set(reference.GENERATORS)


def test_every_page_is_in_the_nav_or_left_for_the_integrator() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    missing = sorted(p for p in pages if not re.search(rf":\s+{re.escape(p)}\s*$", nav, re.M))
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"
