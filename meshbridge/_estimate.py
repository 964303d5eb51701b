"""What a call may cost before it runs: the tokens a limit reserves for it.

A pure function of the request (method, path, JSON body), so that concurrent
calls cannot overshoot a token or spend limit by more than what they
reserved: the reservation is replaced by what the provider reports when the
call ends (``Limiter.settle``).

Rules of the estimate:

1. Output is what the request allows the model to write: ``max_tokens`` or
   ``max_completion_tokens`` (OpenAI chat completions, times ``n``),
   ``max_output_tokens`` (OpenAI Responses), ``max_tokens`` (Anthropic
   messages); a request that sets none reserves ``default_output``.
2. Input is the size of the prompt: the UTF-8 bytes of its text (messages,
   system, instructions, input, prompt, tools) divided by 3, rounded up. Text
   runs about 4 bytes a token in English and 3 in most other scripts, so this
   leans high, as a reservation should. An inline image or document
   (``data:`` URLs, base64 ``data`` fields) counts :data:`IMAGE_TOKENS`.
3. The fallback, for any other POST (or a body that is not a JSON object):
   input is the body's bytes (or ``content_length``) divided by 3, output
   ``default_output``; embeddings reserve no output. A call that is not a
   POST generates nothing: it reserves no tokens.
4. Each figure is capped at :data:`MAX_TOKENS`, so a caller's absurd
   ``max_tokens`` cannot reserve more than any limit can hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_OUTPUT", "IMAGE_TOKENS", "MAX_TOKENS", "Estimate", "estimate_tokens"]

DEFAULT_OUTPUT: Final = 4096
IMAGE_TOKENS: Final = 1600  # about what a 1024x1024 image costs at the providers
MAX_TOKENS: Final = 10_000_000
_BYTES_PER_TOKEN: Final = 3
# The fields of each request shape that hold its prompt.
_CHAT: Final = ("messages", "tools", "functions")
_RESPONSES: Final = ("instructions", "input", "tools")
_MESSAGES: Final = ("system", "messages", "tools")


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a call is expected to use at most.

    Attributes:
        input: prompt tokens.
        output: tokens the model may generate.
        model: the model the request names (for the spend reserved), or None.
    """

    input: int = 0
    output: int = 0
    model: str | None = None

    @property
    def tokens(self) -> int:
        return self.input + self.output


def _size(value: object) -> tuple[int, int]:
    """(text bytes, inline images and documents) inside a JSON value."""
    text = media = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item.startswith("data:"):
                media += 1
            else:
                text += len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            for key, inner in item.items():
                if key == "data" and isinstance(inner, str):
                    media += 1
                else:
                    stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return text, media


def _tokens(size: int) -> int:
    return min(MAX_TOKENS, math.ceil(size / _BYTES_PER_TOKEN))


def _prompt(body: dict[str, object], fields: tuple[str, ...]) -> int:
    text, media = _size([body.get(field) for field in fields])
    return min(MAX_TOKENS, _tokens(text) + media * IMAGE_TOKENS)


def _cap(value: object) -> int | None:
    """A positive integer field, capped; None when absent or not one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, MAX_TOKENS)


def estimate_tokens(
    method: str,
    path: str,
    body: bytes | None,
    *,
    content_length: int | None = None,
    default_output: int = DEFAULT_OUTPUT,
) -> Estimate:
    """The tokens a call may use, from its request (see the rules above).

    Args:
        method: the request's method.
        path: its path (a query string is ignored).
        body: its body, when the caller has it whole; None when it streams.
        content_length: the body's size, when ``body`` is None and it is known.
        default_output: what a call that sets no output limit reserves.

    Returns:
        The estimate; never raises, whatever the body holds.
    """
    if method.upper() != "POST":
        return Estimate()
    endpoint = path.partition("?")[0].rstrip("/")
    data: object = None
    if body is not None:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
            data = None
    size = len(body) if body is not None else content_length or 0
    if not isinstance(data, dict):
        output = 0 if endpoint.endswith("/embeddings") else default_output
        return Estimate(_tokens(size), output)
    model = data.get("model")
    model = model if isinstance(model, str) and model else None
    if endpoint.endswith("/chat/completions"):
        limit = _cap(data.get("max_completion_tokens"))
        limit = limit if limit is not None else _cap(data.get("max_tokens"))
        choices = _cap(data.get("n")) or 1
        output = min(MAX_TOKENS, (default_output if limit is None else limit) * choices)
        return Estimate(_prompt(data, _CHAT), output, model)
    if endpoint.endswith("/responses"):
        limit = _cap(data.get("max_output_tokens"))
        return Estimate(
            _prompt(data, _RESPONSES), default_output if limit is None else limit, model
        )
    if endpoint.endswith("/messages"):
        limit = _cap(data.get("max_tokens"))
        return Estimate(_prompt(data, _MESSAGES), default_output if limit is None else limit, model)
    output = 0 if endpoint.endswith("/embeddings") else default_output
    return Estimate(_tokens(size), output, model)
