"""Benchmarks: meshbridge against loopback TCP, a Unix socket and in-process peers.

``python -m benchmarks`` runs every contender on every workload in one run,
several rounds each, prints the medians with each contender's ratio to
aiohttp over loopback TCP with keep-alive, and writes every figure to
``benchmarks/results/latest.json``. ``--smoke`` does the same with tiny
counts in a few seconds (CI runs it; it asserts no timings).

Where things are:

* ``cli.py``: the command line (``__main__.py`` runs it);
* ``apps.py``: the app under test, in aiohttp and as a Starlette twin;
* ``contenders.py``: the eight ways of reaching it (``bare_pipe.py`` is the
  bare in-memory pipe connector);
* ``workloads.py``: what one round of each workload measures, and the scales;
* ``runner.py``: rounds, rotation, fresh processes for memory workloads;
* ``report.py``: medians, ratios, targets, the table and the JSON file;
* ``measure.py``: percentiles and RSS from ``/proc``.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
