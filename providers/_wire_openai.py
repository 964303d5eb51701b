"""The fake provider's OpenAI wire formats: chat completions and Responses.

``POST /v1/chat/completions`` streams ``chat.completion.chunk`` events whose
deltas carry text, then ``tool_calls`` (the first delta of a call names it,
the next ones append to its ``arguments``), a last chunk with the
``finish_reason``, an optional usage chunk, and ``[DONE]``.

``POST /v1/responses`` streams named events, each with a ``sequence_number``:
``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, its content (``response.content_part.added``,
``response.output_text.delta``... ``.done``; or
``response.function_call_arguments.delta``... ``.done``) and
``response.output_item.done``, and ``response.completed`` with the whole
response. No I/O here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

from ._sse import encode
from ._text import content_text
from ._wire import JSON, Generation, Ids, Unit, limit

__all__ = ["ChatCompletions", "Responses"]


def _messages_problem(body: object) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required (a string)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "messages: Field required (an array of objects)"
    return None


class ChatCompletions:
    """OpenAI ``POST /v1/chat/completions``."""

    anthropic = False

    def problem(self, body: object) -> str | None:
        return _messages_problem(body)

    def prompt(self, body: JSON) -> tuple[object, list[str]]:
        messages = body["messages"]
        return messages, [content_text(m.get("content")) for m in messages]

    def budget(self, body: JSON, default: int) -> int:
        return limit(body, default, "max_completion_tokens", "max_tokens")

    def begin(self, ids: Ids, generation: Generation) -> None:
        generation.head.update(
            id=ids.next_id("chatcmpl-"),
            created=int(time.time()),
            model=generation.model,
            system_fingerprint="fp_meshbridge_fake",
        )

    @staticmethod
    def _usage(g: Generation) -> JSON:
        return {
            "prompt_tokens": g.usage.input,
            "completion_tokens": g.usage.output,
            "total_tokens": g.usage.input + g.usage.output,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    @staticmethod
    def _finish(g: Generation) -> str:
        return "tool_calls" if g.calls else "length" if g.cut else "stop"

    def answer(self, g: Generation) -> JSON:
        message: JSON = {"role": "assistant", "content": g.text or None, "refusal": None}
        if not g.calls:
            message["content"] = g.text
        else:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in g.calls
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self._finish(g),
        }
        return {**g.head, "object": "chat.completion", "choices": [choice], "usage": self._usage(g)}

    def _chunk(self, g: Generation, delta: JSON, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        data = {**g.head, "object": "chat.completion.chunk", "choices": [choice]}
        if g.include_usage:
            data["usage"] = None
        return encode(data)

    def stream(self, g: Generation) -> Iterator[Unit]:
        opening = {"role": "assistant", "content": "" if g.tokens or not g.calls else None}
        yield self._chunk(g, {**opening, "refusal": None}), False
        for token in g.tokens:
            yield self._chunk(g, {"content": token}), True
        for index, call in enumerate(g.calls):
            named = {"index": index, "id": call.id, "type": "function"}
            for n, piece in enumerate(call.pieces):
                function = (
                    {"name": call.name, "arguments": piece} if n == 0 else {"arguments": piece}
                )
                delta = (
                    {**named, "function": function}
                    if n == 0
                    else {"index": index, "function": function}
                )
                yield self._chunk(g, {"tool_calls": [delta]}), True
        yield self._chunk(g, {}, self._finish(g)), False
        if g.include_usage:
            final = {**g.head, "object": "chat.completion.chunk", "choices": []}
            yield encode({**final, "usage": self._usage(g)}), False
        yield b"data: [DONE]\n\n", False


def _input_texts(value: object) -> list[str]:
    """The texts of a Responses ``input``: a string, or items with content or output."""
    if isinstance(value, str):
        return [value]
    texts: list[str] = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                texts.append(content_text(item.get("content")))
                if isinstance(item.get("output"), str):
                    texts.append(item["output"])
    return texts


class Responses:
    """OpenAI ``POST /v1/responses``."""

    anthropic = False

    def problem(self, body: object) -> str | None:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model: Field required (a string)"
        value = body.get("input")
        if not isinstance(value, str) and not (
            isinstance(value, list) and all(isinstance(i, dict) for i in value)
        ):
            return "input: Field required (a string or an array of items)"
        return None

    def prompt(self, body: JSON) -> tuple[object, list[str]]:
        instructions = body.get("instructions")
        texts = _input_texts(body["input"])
        if isinstance(instructions, str):
            texts.insert(0, instructions)
        return body["input"], texts

    def budget(self, body: JSON, default: int) -> int:
        return limit(body, default, "max_output_tokens")

    def begin(self, ids: Ids, generation: Generation) -> None:
        generation.head.update(id=ids.next_id("resp_"), message_id=ids.next_id("msg_"))
        for call in generation.calls:
            call.item_id = ids.next_id("fc_")

    def _response(self, g: Generation, status: str, output: list[JSON]) -> JSON:
        usage: JSON | None = None
        if status == "completed":
            usage = {
                "input_tokens": g.usage.input,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": g.usage.output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": g.usage.input + g.usage.output,
            }
        incomplete = {"reason": "max_output_tokens"} if g.cut and status == "completed" else None
        return {
            "id": g.head["id"],
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if incomplete else status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": None,
            "model": g.model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "temperature": 1.0,
            "top_p": 1.0,
            "text": {"format": {"type": "text"}},
            "usage": usage,
            "metadata": {},
        }

    def _message(self, g: Generation, text: str | None, status: str) -> JSON:
        content = [] if text is None else [self._part(text)]
        return {
            "type": "message",
            "id": g.head["message_id"],
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _part(text: str) -> JSON:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _call(self, g: Generation, index: int, arguments: str, status: str) -> JSON:
        call = g.calls[index]
        return {
            "type": "function_call",
            "id": call.item_id,
            "call_id": call.id,
            "name": call.name,
            "arguments": arguments,
            "status": status,
        }

    def _output(self, g: Generation) -> list[JSON]:
        output = [self._message(g, g.text, "completed")] if g.tokens or not g.calls else []
        output += [self._call(g, i, c.arguments, "completed") for i, c in enumerate(g.calls)]
        return output

    def answer(self, g: Generation) -> JSON:
        return self._response(g, "completed", self._output(g))

    def stream(self, g: Generation) -> Iterator[Unit]:
        numbers = itertools.count()

        def event(kind: str, **data: Any) -> bytes:
            return encode({"type": kind, "sequence_number": next(numbers), **data}, kind)

        yield event("response.created", response=self._response(g, "in_progress", [])), False
        yield event("response.in_progress", response=self._response(g, "in_progress", [])), False
        index = 0
        if g.tokens or not g.calls:
            where = {"item_id": g.head["message_id"], "output_index": 0, "content_index": 0}
            item = self._message(g, None, "in_progress")
            yield event("response.output_item.added", output_index=0, item=item), False
            yield event("response.content_part.added", **where, part=self._part("")), False
            for token in g.tokens:
                yield event("response.output_text.delta", **where, delta=token, logprobs=[]), True
            text = g.text
            yield event("response.output_text.done", **where, text=text, logprobs=[]), False
            yield event("response.content_part.done", **where, part=self._part(text)), False
            done = self._message(g, text, "completed")
            yield event("response.output_item.done", output_index=0, item=done), False
            index = 1
        for n, call in enumerate(g.calls):
            at = {"item_id": call.item_id, "output_index": index + n}
            added = self._call(g, n, "", "in_progress")
            yield event("response.output_item.added", output_index=index + n, item=added), False
            for piece in call.pieces:
                yield event("response.function_call_arguments.delta", **at, delta=piece), True
            yield (
                event(
                    "response.function_call_arguments.done",
                    **at,
                    name=call.name,
                    arguments=call.arguments,
                ),
                False,
            )
            done = self._call(g, n, call.arguments, "completed")
            yield event("response.output_item.done", output_index=index + n, item=done), False
        final = self._response(g, "completed", self._output(g))
        yield event(f"response.{final['status']}", response=final), False
