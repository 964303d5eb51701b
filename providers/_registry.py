"""The registry of provider kinds: a config's ``kind = "..."`` names one of these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from . import anthropic, fake, openai
from ._kind import Kind

__all__ = ["KINDS"]

KINDS: Final[Mapping[str, Kind[Any]]] = {
    kind.name: kind for kind in (fake.KIND, openai.KIND, anthropic.KIND)
}
