"""What a usage ledger wants from an LLM request besides its tokens: the last
user prompt it sent and the tools its answer called.

Pure functions over the JSON of the three API shapes the kinds speak (OpenAI
chat completions, OpenAI Responses, Anthropic messages), answers and stream
events alike. They never raise on a body of the wrong shape: what is not
there is not reported.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["event_tool_call", "last_user_prompt", "tool_calls"]

JSON = dict[str, Any]

_TOOL_ITEMS: Final = frozenset({"function_call", "custom_tool_call"})  # Responses output items
_TOOL_BLOCKS: Final = frozenset({"tool_use", "server_tool_use"})  # Anthropic content blocks


def _text(content: object) -> str | None:
    """A message's text: a string, or the text parts of a list of parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") in ("text", "input_text")
        and isinstance(part.get("text"), str)
    ]
    return "\n".join(texts) if texts else None


def last_user_prompt(body: JSON) -> str | None:
    """The text of the last user message of a request body (chat completions
    and Anthropic ``messages``, or a Responses ``input``), or None."""
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")
        if isinstance(messages, str):
            return messages
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message.get("content"))
            if text is not None:
                return text
    return None


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _function_names(calls: object) -> list[str]:
    """The names of chat completions' ``tool_calls`` (a message's or a delta's)."""
    names = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        name = _name(function.get("name")) if isinstance(function, dict) else None
        if name is not None:
            names.append(name)
    return names


def _typed_names(items: object, types: frozenset[str]) -> list[str]:
    """The names of the items of ``types`` (Responses output items, Anthropic blocks)."""
    names = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") in types:
            name = _name(item.get("name"))
            if name is not None:
                names.append(name)
    return names


def tool_calls(answer: JSON) -> list[str]:
    """The names of the tools a whole (non-streamed) answer calls, in order."""
    names: list[str] = []
    choices = answer.get("choices")  # chat completions
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            names += _function_names(message.get("tool_calls"))
    names += _typed_names(answer.get("output"), _TOOL_ITEMS)  # Responses
    names += _typed_names(answer.get("content"), _TOOL_BLOCKS)  # Anthropic messages
    return names


def event_tool_call(event: JSON) -> list[str]:
    """The names of the tool calls a stream event starts (each named once, in
    the event that opens it), in any of the three stream formats."""
    kind = event.get("type")
    if kind == "response.output_item.added":  # Responses
        return _typed_names([event.get("item")], _TOOL_ITEMS)
    if kind == "content_block_start":  # Anthropic
        return _typed_names([event.get("content_block")], _TOOL_BLOCKS)
    names: list[str] = []
    choices = event.get("choices")  # chat completion chunks
    for choice in choices if isinstance(choices, list) else ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            names += _function_names(delta.get("tool_calls"))
    return names
