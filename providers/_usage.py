"""Token usage of LLM providers, counted in the mesh's metrics.

A provider app reports each request's usage once, when it ends (also when it
ends early), with :func:`report`: the mesh counts it in
``meshbridge_tokens_total{provider, source, model, type}`` and
``meshbridge_time_to_first_token_seconds{provider, source, model}``, on its
own registry (see :func:`meshbridge.record_tokens`). Model names come from
callers and upstreams, so they are bounded: with an allow-list (a provider's
``models`` option) every other name is ``other``; without one, the first
``max_models`` names an app sees keep their label and later ones are ``other``
(and the mesh caps every provider's model labels on its own as well).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from meshbridge import record_tokens

__all__ = ["ModelLabels", "Usage", "report"]

OTHER: Final = "other"


@dataclass(slots=True)
class Usage:
    """Token counts of one request, as the upstream reported them.

    ``input`` counts prompt tokens billed at the full rate; tokens read from
    or written to a prompt cache are counted apart. ``reasoning`` is the part
    of ``output`` spent reasoning, where the upstream says.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


class ModelLabels:
    """Maps model names to a bounded set of label values for one provider app."""

    __slots__ = ("_seen", "allow", "max_models")

    def __init__(self, allow: Iterable[str] = (), max_models: int = 20) -> None:
        self.allow = frozenset(allow)
        self.max_models = max_models
        self._seen: set[str] = set()

    def label(self, model: str | None) -> str | None:
        """The label for ``model`` (None when there is none: the mesh says ``unknown``)."""
        if not model:
            return None
        if self.allow:
            return model if model in self.allow else OTHER
        if model in self._seen:
            return model
        if len(self._seen) < self.max_models:
            self._seen.add(model)
            return model
        return OTHER


def report(
    request: web.BaseRequest,
    labels: ModelLabels,
    model: str | None,
    usage: Usage,
    first_token: float | None = None,
    *,
    system: str | None = None,
    request_model: str | None = None,
    tool_calls: Sequence[str] = (),
    prompt: str | None = None,
) -> None:
    """Count one request's tokens (and its time to first token, for a stream).

    ``model`` is the model that answered (else the one asked for),
    ``request_model`` the one asked for and ``system`` the API family
    (``"openai"``, ``"anthropic"``): on a traced request they become the
    span's GenAI attributes (see :func:`meshbridge.record_tokens`).
    ``tool_calls`` (the names of the tools the answer called) and ``prompt``
    (the request's last user prompt) go to a usage ledger's record.
    """
    record_tokens(
        request,
        labels.label(model),
        input=usage.input,
        output=usage.output,
        cache_read=usage.cache_read,
        cache_write=usage.cache_write,
        first_token=first_token,
        system=system,
        operation="chat",  # every generation endpoint the kinds serve is a chat
        request_model=request_model,
        response_model=model,
        reasoning=usage.reasoning,
        tool_calls=tool_calls,
        prompt=prompt,
    )
