"""The benchmark harness and the soak run end to end with small counts
(no timing assertions).

They run in a subprocess, as CI, ``make bench-smoke`` and ``make soak`` run
them, so the harness's own event loop, child processes and warnings stay out
of pytest's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.contenders import CONTENDERS
from benchmarks.soak_check import compare
from benchmarks.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent

# The contenders whose in-memory pipe the slow reader can measure.
WITH_PIPE = {"meshbridge", "meshbridge-nometrics", "pipe"}


def test_smoke_run_reports_every_contender_on_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "x tcp" in done.stdout

    doc = json.loads(out.read_text())
    assert doc["contenders"] == list(CONTENDERS)
    assert set(doc["workloads"]) == set(WORKLOADS)
    for name, workload in WORKLOADS.items():
        cells = doc["workloads"][name]["contenders"]
        assert set(cells) == set(workload.runs_on(list(CONTENDERS))), name
        assert workload.reference in cells, name
        for contender, cell in cells.items():
            where = f"{name}/{contender}"
            assert cell["errors"] == [], where
            assert len(cell["rounds"]) == 1, where
            for figure in workload.figures:
                expected = figure.key != "pipe_peak_kib" or contender in WITH_PIPE
                value = cell["median"].get(figure.key)
                assert (value is not None) == expected, f"{where}: {figure.key} = {value!r}"
                if expected:
                    assert value >= 0, f"{where}: {figure.key} = {value!r}"
                assert figure.key in cell["vs_tcp"], where
                if figure.higher_is_better:  # throughput: never zero, so always a ratio
                    assert cell["vs_tcp"][figure.key] > 0, where
    assert all(t["met"] is not None for t in doc["targets"]), doc["targets"]


def test_the_wide_fan_out_runs_on_the_mesh_against_tcp_with_the_app_apart() -> None:
    wide = WORKLOADS["fanout_10k"]
    assert wide.runs_on(list(CONTENDERS)) == ["meshbridge", "tcp-apart"]
    assert wide.reference == "tcp-apart"
    # the other workloads never start a second process
    assert all(
        "tcp-apart" not in w.runs_on(list(CONTENDERS)) for w in WORKLOADS.values() if w is not wide
    )


def test_a_quick_soak_counts_every_request_by_outcome_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "soak", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("OK"), done.stdout[-3000:]
    assert done.stderr == "", done.stderr[-3000:]  # no traceback, no log line, no warning

    doc = json.loads(out.read_text())
    assert doc["ok"], doc["problems"]
    assert doc["made"] == doc["counted"]
    assert set(doc["made"]) == {
        "unary/completed",
        "unary/error",
        "streams/completed",
        "streams/cancelled",
        "streams/error",
        "uploads/completed",
        "uploads/cancelled",
    }
    assert doc["requests"] == sum(doc["made"].values())
    assert set(doc["left_by"]) == {"cancel", "close", "leave-block", "timeout"}
    assert (doc["tasks_left"], doc["in_flight"], doc["buffered_bytes"]) == (0, 0, 0)
    assert doc["handler_errors"] == doc["made"]["unary/error"] + doc["made"]["streams/error"]
    assert all(doc["rss_mib"][at] > 0 for at in ("start", "middle", "end"))


def test_a_count_that_differs_from_the_requests_made_is_named_by_source_and_outcome() -> None:
    made = Counter({("streams", "cancelled"): 3, ("unary", "completed"): 5})
    counted = Counter(
        {("streams", "cancelled"): 2, ("unary", "completed"): 5, ("unary", "error"): 1}
    )
    assert compare(made, counted) == [
        "streams cancelled: 3 made, 2 counted",
        "unary error: 0 made, 1 counted",
    ]
    assert compare(made, Counter(made)) == []


def test_the_cost_of_traffic_policies_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "policies.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "policies", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    figures = json.loads(out.read_text())
    # figures only (no timing asserted): every row was measured
    assert set(figures) == {"idle_sequential", "idle_64", "retried", "kept"}
    assert figures["retried"]["ratio"] > 0
    # a retried 32 KiB body is kept once for its replay, never more than the limit
    assert 32 * 1024 <= figures["kept"]["body_32k"] <= figures["kept"]["replay_limit"]
