"""The installed provider kinds: a config's ``kind = "..."`` names one of these.

Kinds are found through the ``meshbridge.providers`` entry point group, so a
package of your own adds one the same way meshbridge adds ``fake``,
``openai`` and ``anthropic``, in its ``pyproject.toml``::

    [project.entry-points."meshbridge.providers"]
    gemini = "my_package.gemini:KIND"       # a meshbridge.providers.Kind
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Final

from ._kind import Kind

__all__ = ["GROUP", "kinds"]

GROUP: Final = "meshbridge.providers"


def kinds() -> Mapping[str, Kind[Any]]:
    """Every installed kind, by name.

    Raises:
        RuntimeError: an entry point does not load, or does not name a
            :class:`Kind` of the same name (the message names the package).
    """
    found: dict[str, Kind[Any]] = {}
    for point in entry_points(group=GROUP):
        where = f"entry point {point.name!r} = {point.value!r} ({GROUP})"
        try:
            kind = point.load()
        except Exception as exc:
            raise RuntimeError(f"provider kind {where} does not load: {exc!r}") from exc
        if not isinstance(kind, Kind) or kind.name != point.name:
            raise RuntimeError(f"provider kind {where} is not a Kind named {point.name!r}")
        found[point.name] = kind
    return dict(sorted(found.items()))
