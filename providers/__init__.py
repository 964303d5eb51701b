"""Provider kinds: each builds an ``aiohttp.web.Application`` from options.

    kind        module                              what it is
    fake        meshbridge/providers/fake.py        local deterministic LLM emulator
    openai      meshbridge/providers/openai.py      proxy of an OpenAI-compatible upstream
    anthropic   meshbridge/providers/anthropic.py   proxy of the Anthropic Messages API

(The source lives in the repository's top-level ``providers/`` folder; it
installs as ``meshbridge.providers``.) This layer builds on the core's public
names only. Every kind offers the same interface, :class:`Kind`, and is found
by name through the ``meshbridge.providers`` entry point group, so your own
package can add one (see :func:`kinds`)::

    kind = kinds()["fake"]
    plan = kind.prepare(OptionReader({"tokens_per_second": 50}, "providers.local"))
    mesh.register("local", plan.build(ProviderContext("local")))

``prepare`` records every problem on the reader, with its key path;
``reader.finish()`` raises :class:`meshbridge.ConfigError` listing them all.
Token usage goes to the mesh's metrics through :func:`report`.
"""

from __future__ import annotations

from ._kind import Kind, Plan, ProviderContext
from ._options import OptionReader
from ._registry import kinds
from ._usage import ModelLabels, Usage, report

__all__ = [
    "Kind",
    "ModelLabels",
    "OptionReader",
    "Plan",
    "ProviderContext",
    "Usage",
    "kinds",
    "report",
]
