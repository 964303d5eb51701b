"""Provider kinds: each module builds an ``aiohttp.web.Application`` from options.

    kind        module                   what it is
    fake        providers/fake.py        local deterministic LLM emulator (no key, no network)
    openai      providers/openai.py      proxy of an OpenAI-compatible upstream
    anthropic   providers/anthropic.py   proxy of the Anthropic Messages API

Every kind module offers the same two functions::

    options = fake.parse_options(OptionReader({"tokens_per_second": 50}, "providers.local"))
    app = fake.create_app(options, ProviderContext("local", TokenMetrics(mesh.registry)))
    mesh.register("local", app)

``parse_options`` records every problem on the reader, with its key path;
``reader.finish()`` raises :class:`OptionsError` listing them all. Token
metrics (``meshbridge_tokens_total``, ``meshbridge_time_to_first_token_seconds``)
go to the :class:`TokenMetrics` in the :class:`ProviderContext`: make one per
mesh and share it between its providers (a second one on the same registry is
refused, as prometheus_client refuses duplicated series).
"""

from __future__ import annotations

from . import anthropic, fake, openai
from ._kind import Kind, Plan, ProviderContext
from ._metrics import TokenMetrics, Usage
from ._options import OptionError, OptionReader, OptionsError
from ._registry import KINDS

__all__ = [
    "KINDS",
    "Kind",
    "OptionError",
    "OptionReader",
    "OptionsError",
    "Plan",
    "ProviderContext",
    "TokenMetrics",
    "Usage",
    "anthropic",
    "fake",
    "openai",
]
