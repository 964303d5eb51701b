"""Deterministic text and token counts for the fake provider. No I/O.

A "token" here is a word or a punctuation mark: good enough for usage
figures that add up (the tokens streamed are the tokens counted) without a
tokenizer dependency. The same prompt always gets the same reply.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["content_text", "count_tokens", "reply_tokens"]

_TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")
_WORDS: Final = (
    "the",
    "mesh",
    "carries",
    "every",
    "request",
    "in",
    "memory",
    "from",
    "caller",
    "to",
    "provider",
    "and",
    "back",
    "tokens",
    "stream",
    "one",
    "by",
    "one",
    "while",
    "the",
    "metrics",
    "count",
    "each",
    "source",
    "model",
    "and",
    "byte",
    "agents",
    "batch",
    "jobs",
    "and",
    "api",
    "callers",
    "share",
    "providers",
    "without",
    "a",
    "socket",
    "or",
    "a",
    "port",
    "latency",
    "stays",
    "low",
    "because",
    "nothing",
    "leaves",
    "the",
    "process",
)


def count_tokens(text: str) -> int:
    """Words and punctuation marks in ``text``."""
    return len(_TOKEN_RE.findall(text))


def content_text(content: object) -> str:
    """The text of a message's content: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def prompt_tokens(texts: Iterable[str]) -> int:
    return sum(count_tokens(t) for t in texts)


def reply_tokens(prompt: object, count: int) -> list[str]:
    """``count`` tokens of a reply, always the same for the same ``prompt``.

    Words carry their leading space, so ``"".join(tokens)`` is the text.
    """
    seed = hashlib.sha256(json.dumps(prompt, sort_keys=True, default=str).encode()).digest()
    rng = random.Random(seed)
    tokens: list[str] = []
    for i in range(count):
        if i == count - 1 and count > 1:
            tokens.append(".")
        elif i == 0:
            tokens.append(rng.choice(_WORDS).capitalize())
        else:
            tokens.append(" " + rng.choice(_WORDS))
    return tokens
