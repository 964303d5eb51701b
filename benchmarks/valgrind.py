"""What valgrind counts, where it is installed: a unary request's instructions
on the mesh against the bare pipe, and how many times a large body is copied.

* Instructions (``valgrind --tool=callgrind``): ``N`` sequential
  ``GET /small`` through a contender, for N = 200 and 1,200; the difference
  over 1,000 is one request's instructions (start-up, imports and warm-up
  cancel out). Unlike time, the count does not move with the machine's other
  work, so the ratio meshbridge / pipe is the mesh's own bookkeeping.
* Copies (``valgrind --tool=dhat --mode=copy``, which counts the bytes every
  ``memcpy``/``memmove`` moves): one and three transfers of a cell; the
  difference, over two transfers and the body's size, is how many times each
  body is copied in user space. Over TCP the kernel copies it twice more
  (into the socket's buffer and out of it), which valgrind does not see.

``python -m benchmarks`` runs both after its workloads (not with
``--smoke``, nor ``--no-valgrind``); ``python -m benchmarks valgrind`` runs
them alone (``--only-instructions``: the instructions, without the copies).
Each count runs in its own process under valgrind, two at a time, in a few
minutes in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bodies import MIB
from .contenders import CONTENDERS

__all__ = ["CELLS", "available", "child_main", "count", "summary"]

ROOT = Path(__file__).resolve().parent.parent
UNARY = (200, 1200)  # requests: the difference is 1,000
TRANSFERS = (1, 3)  # the difference is two
CELLS = (("down", MIB), ("up", MIB), ("down", 16 * MIB), ("up", 16 * MIB))
COPIED = ("meshbridge", "tcp")
LIMIT = 900.0  # seconds, one valgrind run


def available() -> bool:
    return shutil.which("valgrind") is not None


# -- what runs under valgrind ----------------------------------------------------------


async def _unary(name: str, n: int) -> None:
    contender = CONTENDERS[name]()
    client = await contender.start()
    try:
        for _ in range(16 + n):  # 16: the pool and every cache warmed
            await client.get("/small")
    finally:
        await contender.aclose()


async def _transfers(name: str, way: str, size: int, n: int) -> None:
    contender = CONTENDERS[name]()
    client = await contender.start()
    body = bytes(size)
    try:
        await client.get(f"/blob?size={size}")  # the blob made, outside the count
        for _ in range(n):
            if way == "down":
                assert len(await client.get(f"/blob?size={size}")) == size
            else:
                assert int(await client.post("/sink", body)) == size
    finally:
        await contender.aclose()


def child_main(argv: Sequence[str]) -> int:
    """``--valgrind-child unary NAME N`` or ``--valgrind-child copies NAME WAY SIZE N``."""
    kind, name, *rest = argv
    if kind == "unary":
        asyncio.run(_unary(name, int(rest[0])))
    else:
        way, size, n = rest
        asyncio.run(_transfers(name, way, int(size), int(n)))
    return 0


# -- running it ------------------------------------------------------------------------


def _output(path: Path) -> str | None:
    """What a valgrind run wrote (small files, read once the run is over)."""
    return path.read_text() if path.exists() else None


async def _valgrind(tool: list[str], out: Path, child: list[str]) -> str:
    """Run ``child`` under valgrind ``tool``; what it wrote to ``out``."""
    argv = ["valgrind", *tool, *child]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
    )
    try:
        async with asyncio.timeout(LIMIT):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"valgrind took more than {LIMIT:.0f} s: {' '.join(argv)}") from None
    text = _output(out)
    if process.returncode != 0 or text is None:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"valgrind failed ({process.returncode}): {' | '.join(tail)}")
    return text


async def _instructions(name: str, work: Path, python: str) -> float:
    counts = []
    for n in UNARY:
        out = work / f"callgrind.{name}.{n}"
        child = [python, "-m", "benchmarks", "--valgrind-child", "unary", name, str(n)]
        text = await _valgrind(["--tool=callgrind", f"--callgrind-out-file={out}"], out, child)
        summary = next(line for line in text.splitlines() if line.startswith("summary:"))
        counts.append(int(summary.split()[1]))
    return (counts[1] - counts[0]) / (UNARY[1] - UNARY[0])


async def _copies(name: str, way: str, size: int, work: Path, python: str) -> float:
    copied: list[int] = []
    for n in TRANSFERS:
        out = work / f"dhat.{name}.{way}.{size}.{n}.json"
        child = [python, "-m", "benchmarks", "--valgrind-child", "copies", name, way]
        child += [str(size), str(n)]
        text = await _valgrind(["--tool=dhat", "--mode=copy", f"--dhat-out-file={out}"], out, child)
        copied.append(sum(int(pp["tb"]) for pp in json.loads(text)["pps"]))
    return (copied[1] - copied[0]) / (TRANSFERS[1] - TRANSFERS[0]) / size


async def count(python: str = sys.executable, *, copies: bool = True) -> dict[str, Any]:
    """Every count (without ``copies``, the instructions alone), two valgrind
    runs at a time."""
    gate = asyncio.Semaphore(2)
    with tempfile.TemporaryDirectory(prefix="meshbridge-valgrind-") as tmp:
        work = Path(tmp)

        async def instructions(name: str) -> float:
            async with gate:
                return await _instructions(name, work, python)

        async def copied(name: str, way: str, size: int) -> float:
            async with gate:
                return await _copies(name, way, size, work, python)

        mesh, pipe = await asyncio.gather(instructions("meshbridge"), instructions("pipe"))
        cells = [(name, way, size) for way, size in CELLS for name in COPIED] if copies else []
        found = await asyncio.gather(*(copied(*cell) for cell in cells))
    by_cell: dict[str, dict[str, float]] = {}
    for (name, way, size), value in zip(cells, found, strict=True):
        by_cell.setdefault(f"{way}_{size // MIB}mib", {})[name] = value
    return {
        "instructions_per_request": {"meshbridge": mesh, "pipe": pipe},
        "instructions_mesh_over_pipe": mesh / pipe,
        "copies_per_body": by_cell,
        "kernel_copies": {"tcp": 2, "meshbridge": 0},
    }


def summary(counts: dict[str, Any]) -> str:
    """The counts as text, for the end of the table."""
    per = counts["instructions_per_request"]
    lines = [
        "\nvalgrind: instructions per sequential GET /small (callgrind, 1,000 requests' "
        f"difference): meshbridge {per['meshbridge'] / 1e3:,.1f}k, bare pipe "
        f"{per['pipe'] / 1e3:,.1f}k, meshbridge / pipe "
        f"{counts['instructions_mesh_over_pipe']:.3f}",
    ]
    if counts["copies_per_body"]:
        lines.append(
            "valgrind: times each body is copied in user space (dhat --mode=copy; over TCP "
            "the kernel copies it twice more):"
        )
    for cell, values in counts["copies_per_body"].items():
        shown = ", ".join(f"{name} {value:.2f}" for name, value in values.items())
        lines.append(f"  {cell:<12} {shown}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``python -m benchmarks valgrind [--only-instructions] [--json PATH]``."""
    if not available():
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    argv = list(argv)
    only_instructions = "--only-instructions" in argv
    if only_instructions:
        argv.remove("--only-instructions")
    counts = asyncio.run(count(copies=not only_instructions))
    print(summary(counts))
    if argv[:1] == ["--json"] and len(argv) == 2:
        Path(argv[1]).write_text(json.dumps(counts, indent=2) + "\n")
    return 0
