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
  bare in-memory pipe connector), a ninth for 10,000 streams, with the app in
  a second process (``apart.py``), and the client-only floor for the unary
  and echo workloads: aiohttp's client against canned bytes over the pipe,
  no server at all (``floor.py``), the limit every run measures the mesh
  against;
* ``workloads.py``: what one round of each workload measures, and the scales
  (``fanout.py``: time-stamped events and many concurrent streams);
* ``runner.py``: rounds, rotation, fresh processes for memory workloads;
* ``report.py``: medians, ratios, targets, the table and the JSON file;
* ``measure.py``: percentiles, RSS from ``/proc``, garbage-collector pauses.

``python -m benchmarks soak [--quick]`` is the soak (``soak.py``, its checks
in ``soak_check.py``): tens of thousands of requests ending every way through
one Mesh, then every request counted by outcome and nothing left behind.
``python -m benchmarks chaos [--quick]`` (``chaos.py``; the upstream it
switches in ``chaos_upstream.py``, its two targets in ``chaos_targets.py``,
``serve`` in ``chaos_serve.py``, the tables in ``chaos_report.py``) drives a
hundred callers per target through failures and reports what the traffic
policies did. ``python -m benchmarks versions`` (``versions.py``, ``make bench-versions``)
runs the unary and streaming workloads under each Python's venv and merges
them into one table of ratios per version.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
