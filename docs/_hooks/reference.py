"""The generated parts of the reference: config keys, metrics, the CLI.

A MkDocs hook (``hooks:`` in ``mkdocs.yml``): a page that holds a marker such
as ``<!-- generated: config-keys -->`` gets, in its place, a table made from
the code itself, so the reference cannot drift from what meshbridge reads,
exports and accepts:

- **config keys**: every key the config parsers ask for, read by parsing
  :data:`SAMPLE` (a config with one table of each kind) with a recording
  :class:`~meshbridge.providers.OptionReader`; what each accepts and its
  default come from the read itself, the description from
  ``docs/reference/descriptions.toml``.
- **metrics**: every family on the registry of a ``meshbridge serve``
  (the core's, the reloader's, the peer gate's) and the family ``serve
  --workers`` adds, with its type, labels and help text; each label's
  values from ``descriptions.toml``.
- **CLI**: ``meshbridge --help`` and each command's ``--help``.

A key or label without a description is a build error (``mkdocs build
--strict``) and a failing test (``tests/test_docs.py``), either naming it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric

from meshbridge.providers import KeyRead, kinds
from meshbridge.service import Service, main, parse_config
from meshbridge.service._worker_metrics import merge

DOCS = Path(__file__).resolve().parents[1]
DESCRIPTIONS = DOCS / "reference" / "descriptions.toml"
# <!-- generated: NAME ARGS -->; config-keys takes key prefixes to keep
# (and, after a -, to leave out): config-keys server, config-keys providers -providers.NAME.policy
MARKER = re.compile(r"<!-- generated: (?P<what>[a-z-]+)(?P<args>(?: [^ >]+)*) -->")
log = logging.getLogger("mkdocs.plugins.meshbridge")

# One table of each kind the config reads, so that every key is asked for.
# Provider tables are named after their kind; a new kind (or a new table)
# needs its table here: tests/test_docs.py says so.
SAMPLE = """
[server.clients.client]
token_env = "CLIENT_TOKEN"
[server.peers.peer]
secret_env = "PEER_SECRET"

[providers.fake]
kind = "fake"
[providers.fake.policy]
circuit_breaker = {}
fault = {}

[providers.openai]
kind = "openai"
upstream = "https://api.openai.com"

[providers.anthropic]
kind = "anthropic"
upstream = "https://api.anthropic.com"

[providers.remote]
kind = "remote"
url = "http://127.0.0.1:9"

[routes.chat]
split = { fake = 1 }

[limits.sample]
match = { source = "agents" }
requests_per_minute = 1

[prices."gpt-x"]
input = 1.0
cached_input = 0.5
output = 2.0

[store]
"""
SAMPLE_ENV = {"CLIENT_TOKEN": "a-client-token", "PEER_SECRET": "p" * 32}

# The sample's names, as the reference writes them.
_PLACEHOLDERS = (
    (re.compile(r"^server\.clients\.client(?=\.|$)"), "server.clients.NAME"),
    (re.compile(r"^server\.peers\.peer(?=\.|$)"), "server.peers.NAME"),
    (re.compile(r"^routes\.chat\.split\.fake$"), "routes.NAME.split.PROVIDER"),
    (re.compile(r"^routes\.chat(?=\.|$)"), "routes.NAME"),
    (re.compile(r"^limits\.sample\.match\.\w+$"), "limits.NAME.match.KEY"),
    (re.compile(r"^limits\.sample(?=\.|$)"), "limits.NAME"),
    (re.compile(r'^prices\."gpt-x"(?=\.|$)'), "prices.MODEL"),
)


@dataclass(frozen=True)
class ConfigKey:
    """One row of the config reference."""

    path: str  # with placeholders: providers.NAME.upstream
    kinds: tuple[str, ...]  # the provider kinds that read it; () for all or none
    expects: str
    default: object


def descriptions() -> dict[str, dict[str, str]]:
    with DESCRIPTIONS.open("rb") as file:
        return tomllib.load(file)


def sample_kinds() -> set[str]:
    return set(tomllib.loads(SAMPLE)["providers"])


def config_keys() -> list[ConfigKey]:
    """Every key the config parsers read, in the order they read them."""
    reads: list[KeyRead] = []
    parse_config(tomllib.loads(SAMPLE), "sample.toml", SAMPLE_ENV, reads=reads)
    every_kind = tuple(sorted(sample_kinds()))
    found: dict[str, tuple[set[str], KeyRead]] = {}
    for read in reads:
        path, kind = _placeholder(read.path, every_kind)
        kinds_seen, _ = found.setdefault(path, (set(), read))
        if kind:
            kinds_seen.add(kind)
    return [
        ConfigKey(
            path, () if set(every_kind) <= seen else tuple(sorted(seen)), r.expects, r.default
        )
        for path, (seen, r) in found.items()
    ]


def _placeholder(path: str, every_kind: tuple[str, ...]) -> tuple[str, str | None]:
    parts = path.split(".")
    if parts[0] == "providers" and len(parts) > 1 and parts[1] in every_kind:
        generic = len(parts) > 2 and parts[2] == "policy"  # a policy is any kind's
        return ".".join(["providers", "NAME", *parts[2:]]), None if generic else parts[1]
    for pattern, replacement in _PLACEHOLDERS:
        path = pattern.sub(replacement, path)
    return path, None


@dataclass(frozen=True)
class Family:
    """One metric family as exported."""

    name: str  # the exported name: _total for counters
    type: str
    labels: tuple[str, ...]
    help: str


def metric_families() -> list[Family]:
    """Every family of a ``meshbridge serve`` (one with a peer, so the peer
    gate's family is there), and the one ``serve --workers`` adds."""
    config = parse_config(tomllib.loads(SAMPLE), "sample.toml", SAMPLE_ENV)
    service = Service(config, port=0)
    families = [*service.mesh.registry.collect(), *merge([(0, None)])]
    return [_family(f) for f in families]


def _family(metric: Metric) -> Family:
    # A family made by the code declares its label names (prometheus_client
    # keeps them as _labelnames); a merged one only has its samples' labels.
    declared: tuple[str, ...] | None = getattr(metric, "_labelnames", None)
    if declared is None:
        seen: dict[str, None] = {}
        for sample in metric.samples:
            seen.update(dict.fromkeys(sample.labels))
        declared = tuple(seen)
    name = f"{metric.name}_total" if metric.type == "counter" else metric.name
    return Family(name, metric.type, declared, metric.documentation)


def cli_help() -> dict[str, str]:
    """``meshbridge --help`` and each command's, by command ("" for the top)."""
    top = _help([])
    commands = re.findall(r"^    (\w+)\s{2,}", top, re.M)
    return {"": top, **{command: _help([command]) for command in commands}}


def _help(command: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*command, "--help"])
    return out.getvalue()


def undocumented() -> list[str]:
    """Every config key and metric label without a description, and every
    description of something the code no longer has; empty when in step."""
    described = descriptions()
    problems: list[str] = []
    keys = {key.path for key in config_keys()}
    labels = {label for family in metric_families() for label in family.labels}
    for what, have, table in (("config key", keys, "config"), ("metric label", labels, "labels")):
        written = set(described.get(table, {}))
        problems += [
            f"{what} {name!r} has no description in [{table}]" for name in sorted(have - written)
        ]
        problems += [
            f"[{table}] describes {name!r}, which the code no longer has"
            for name in sorted(written - have)
        ]
    missing_kinds = set(kinds()) - sample_kinds()
    problems += [
        f"kind {name!r} has no table in SAMPLE (docs/_hooks/reference.py)"
        for name in sorted(missing_kinds)
    ]
    return problems


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def config_table(*prefixes: str) -> str:
    """The config keys (those under ``prefixes``, less those under a ``-prefix``)."""
    described = descriptions()["config"]
    keep = [p for p in prefixes if not p.startswith("-")]
    drop = [p[1:] for p in prefixes if p.startswith("-")]
    rows = ["| key | kinds | accepts | default | what it does |", "|---|---|---|---|---|"]
    for key in config_keys():
        if keep and not any(_within(key.path, p) for p in keep):
            continue
        if any(_within(key.path, p) for p in drop):
            continue
        kinds_cell = ", ".join(f"`{k}`" for k in key.kinds)
        text = described.get(key.path, "")
        rows.append(
            f"| `{key.path}` | {kinds_cell} | {key.expects} | {_default(key.default)} | {text} |"
        )
    return "\n".join(rows)


def _default(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def metrics_table() -> str:
    rows = ["| family | type | labels | what it counts |", "|---|---|---|---|"]
    for family in metric_families():
        labels = ", ".join(f"`{label}`" for label in family.labels)
        rows.append(f"| `{family.name}` | {family.type} | {labels} | {family.help} |")
    return "\n".join(rows)


def labels_table() -> str:
    described = descriptions()["labels"]
    used: dict[str, list[str]] = {}
    for family in metric_families():
        for label in family.labels:
            used.setdefault(label, []).append(family.name)
    rows = ["| label | values | on |", "|---|---|---|"]
    for label in sorted(used):
        on = ", ".join(f"`{name}`" for name in used[label])
        rows.append(f"| `{label}` | {described.get(label, '')} | {on} |")
    return "\n".join(rows)


def cli_text() -> str:
    sections = []
    for command, text in cli_help().items():
        title = f"meshbridge {command}".strip()
        sections.append(f"### `{title}`\n\n```text\n{text.rstrip()}\n```")
    return "\n\n".join(sections)


GENERATORS: dict[str, Callable[..., str]] = {
    "config-keys": config_table,
    "metrics": metrics_table,
    "metric-labels": labels_table,
    "cli": cli_text,
}


def generated(markdown: str) -> Iterator[str]:
    """The names of the generated parts ``markdown`` asks for."""
    return (match["what"] for match in MARKER.finditer(markdown))


# MkDocs hooks ---------------------------------------------------------------


def on_pre_build(config: Any) -> None:
    for problem in undocumented():
        log.warning("reference: %s", problem)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def expand(match: re.Match[str]) -> str:
        what = match["what"]
        if what not in GENERATORS:
            log.warning("%s: no generated part named %r", page.file.src_path, what)
            return match[0]
        return GENERATORS[what](*match["args"].split())

    return MARKER.sub(expand, markdown)
