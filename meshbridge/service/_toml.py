"""Reading a TOML file that may be hostile: every way it can be bad is a
:class:`ConfigError` naming the file and the place.

``tomllib`` alone lets three things through as other exceptions: bytes that
are not UTF-8 (``UnicodeDecodeError``), arrays or tables nested a few
hundred deep (``RecursionError``), and integers of more than 4300 digits
(``ValueError``). A file is also read only up to :data:`MAX_FILE_BYTES`, so
a huge file (or a device that never ends) costs nothing.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Final

from meshbridge import ConfigError

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "read_bytes", "read_toml", "too_deep"]

MAX_FILE_BYTES: Final = 1024 * 1024
MAX_DEPTH: Final = 32  # tables and arrays inside each other
# What can hold brackets without nesting (strings, comments), and the brackets.
_NESTING: Final = re.compile(
    r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}]'
)


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _nesting_line(text: str) -> int | None:
    """The line where brackets and braces first nest deeper than MAX_DEPTH."""
    depth = 0
    for token in _NESTING.finditer(text):
        bracket = token[0]
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return _line(text, token.start())
        elif bracket in "]}":
            depth -= 1
    return None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``, at most one more than :data:`MAX_FILE_BYTES`.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        with open(path, "rb") as file:
            return file.read(MAX_FILE_BYTES + 1)  # a device or a pipe may never end
    except OSError as exc:
        raise ConfigError([("", f"cannot read the file: {exc.strerror or exc}")], path) from None


def _text(path: str | os.PathLike[str], raw: bytes) -> str:
    if len(raw) > MAX_FILE_BYTES:
        message = f"the file is larger than the limit of {MAX_FILE_BYTES} bytes (1 MiB)"
        raise ConfigError([("", message)], path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        message = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, column {column}"
        raise ConfigError([("", message)], path) from None


def read_toml(path: str | os.PathLike[str], content: bytes | None = None) -> dict[str, Any]:
    """The TOML document in ``path`` (or in ``content``, read from it already).

    Raises:
        ConfigError: the file cannot be read, is over 1 MiB, is not UTF-8,
            or is not TOML that Python can read.
    """
    text = _text(path, read_bytes(path) if content is None else content)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"not valid TOML: {exc}")], path) from None
    except RecursionError:
        line = _nesting_line(text)
        where = f" (line {line})" if line is not None else ""
        message = f"not valid TOML: nested deeper than {MAX_DEPTH} tables and arrays{where}"
        raise ConfigError([("", message)], path) from None
    except ValueError as exc:  # Python reads no integer of more than 4300 digits
        problem = str(exc)
        digits = re.search(r"\d{4301,}", text)
        if digits is not None:
            problem = f"an integer of more than 4300 digits (line {_line(text, digits.start())})"
        raise ConfigError([("", f"not valid TOML: {problem}")], path) from None


def too_deep(data: Mapping[str, object]) -> str | None:
    """The key path of a value nested deeper than MAX_DEPTH in ``data``, or None."""
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return where
        if isinstance(value, Mapping):
            stack.extend(
                (v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()
            )
        elif isinstance(value, list):
            stack.extend((v, where, depth + 1) for v in value)
    return None
