"""Provider kinds: each builds an ``aiohttp.web.Application`` from options.

    kind        module                              what it is
    fake        meshbridge/providers/fake.py        local deterministic LLM emulator
    openai      meshbridge/providers/openai.py      proxy of an OpenAI-compatible upstream
    anthropic   meshbridge/providers/anthropic.py   proxy of the Anthropic Messages API
    remote      meshbridge/providers/remote.py      any HTTP service, or another meshbridge serve

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

Between meshbridge processes the caller's identity travels in a signed
header: :func:`sign_identity` writes it (the ``remote`` kind), and
:func:`read_identity` and :func:`check_identity` check it (``meshbridge
serve``); see ``_signing.py`` for its format and rules.
"""

from __future__ import annotations

# The folder is importable only as meshbridge.providers (the link
# meshbridge/providers): imported as a top-level `providers` (from the
# repository root) it would be a second copy of every module, whose Kind is not
# meshbridge.providers.Kind and whose registry finds no kind.
if __name__ != "meshbridge.providers":
    raise ImportError(
        f"the provider kinds are the package meshbridge.providers, not {__name__!r}: "
        "use `import meshbridge.providers` (or `from meshbridge.providers import ...`)",
        name=__name__,
    )

from ._kind import Kind, Plan, ProviderContext
from ._options import KeyRead, OptionReader
from ._registry import kinds
from ._signing import (
    MAX_SKEW,
    MIN_SECRET,
    PEER_HEADER,
    REASONS,
    NonceCache,
    SignatureError,
    SignedIdentity,
    check_identity,
    check_key_id,
    read_identity,
    sign_identity,
)
from ._usage import ModelLabels, Usage, report

__all__ = [
    "MAX_SKEW",
    "MIN_SECRET",
    "PEER_HEADER",
    "REASONS",
    "KeyRead",
    "Kind",
    "ModelLabels",
    "NonceCache",
    "OptionReader",
    "Plan",
    "ProviderContext",
    "SignatureError",
    "SignedIdentity",
    "Usage",
    "check_identity",
    "check_key_id",
    "kinds",
    "read_identity",
    "report",
    "sign_identity",
]
