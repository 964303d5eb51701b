"""The fake provider's Anthropic wire format: ``POST /v1/messages``.

A stream is ``message_start``, then one block after another (a ``text``
block whose ``content_block_delta`` events carry ``text_delta``; a
``tool_use`` block that opens with an empty ``input`` and whose deltas carry
``input_json_delta`` pieces of it), each closed by ``content_block_stop``,
then ``message_delta`` with the stop reason and output usage, and
``message_stop``. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from ._sse import encode
from ._text import content_text
from ._wire import JSON, Generation, Ids, Unit, limit

__all__ = ["Messages", "messages_problem", "prompt_texts"]

_CACHE: Final = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def prompt_texts(body: JSON) -> list[str]:
    """The system prompt and the messages' texts."""
    return [content_text(body.get("system"))] + [
        content_text(m.get("content")) for m in body["messages"]
    ]


def messages_problem(body: object, *, needs_max_tokens: bool = True) -> str | None:
    """What is wrong with a messages request body, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required (a string)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "messages: Field required (an array of objects)"
    max_tokens = body.get("max_tokens")
    if needs_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return "max_tokens: Field required (a positive integer)"
    return None


class Messages:
    """Anthropic ``POST /v1/messages``."""

    anthropic = True

    def problem(self, body: object) -> str | None:
        return messages_problem(body)

    def prompt(self, body: JSON) -> tuple[object, list[str]]:
        return body["messages"], prompt_texts(body)

    def budget(self, body: JSON, default: int) -> int:
        return limit(body, default, "max_tokens")

    def begin(self, ids: Ids, generation: Generation) -> None:
        generation.head.update(
            id=ids.next_id("msg_"), type="message", role="assistant", model=generation.model
        )

    @staticmethod
    def _stop(g: Generation) -> str:
        return "tool_use" if g.calls else "max_tokens" if g.cut else "end_turn"

    def answer(self, g: Generation) -> JSON:
        content: list[JSON] = [{"type": "text", "text": g.text}] if g.tokens or not g.calls else []
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in g.calls
        ]
        usage = {"input_tokens": g.usage.input, "output_tokens": g.usage.output, **_CACHE}
        return {
            **g.head,
            "content": content,
            "stop_reason": self._stop(g),
            "stop_sequence": None,
            "usage": usage,
        }

    @staticmethod
    def _event(event: str, data: JSON) -> bytes:
        return encode({"type": event, **data}, event)

    def stream(self, g: Generation) -> Iterator[Unit]:
        message = {**g.head, "content": [], "stop_reason": None, "stop_sequence": None}
        message["usage"] = {"input_tokens": g.usage.input, "output_tokens": 1, **_CACHE}
        yield self._event("message_start", {"message": message}), False
        index = 0
        if g.tokens or not g.calls:
            block = {"index": 0, "content_block": {"type": "text", "text": ""}}
            yield self._event("content_block_start", block), False
            yield self._event("ping", {}), False
            for token in g.tokens:
                delta = {"index": 0, "delta": {"type": "text_delta", "text": token}}
                yield self._event("content_block_delta", delta), True
            yield self._event("content_block_stop", {"index": 0}), False
            index = 1
        for n, call in enumerate(g.calls, start=index):
            use = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            yield self._event("content_block_start", {"index": n, "content_block": use}), False
            for piece in call.pieces:
                delta = {"index": n, "delta": {"type": "input_json_delta", "partial_json": piece}}
                yield self._event("content_block_delta", delta), True
            yield self._event("content_block_stop", {"index": n}), False
        delta = {"stop_reason": self._stop(g), "stop_sequence": None}
        usage = {"output_tokens": g.usage.output}
        yield self._event("message_delta", {"delta": delta, "usage": usage}), False
        yield self._event("message_stop", {}), False
