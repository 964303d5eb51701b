"""The benchmark harness and the soak run end to end with small counts
(no timing assertions).

They run in a subprocess, as CI, ``make bench-smoke`` and ``make soak`` run
them, so the harness's own event loop, child processes and warnings stay out
of pytest's.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from benchmarks import chaos
from benchmarks.apps import aiohttp_app
from benchmarks.chaos_targets import LIMIT, POLICY
from benchmarks.contenders import CONTENDERS
from benchmarks.floor import CannedApp
from benchmarks.soak_check import compare
from benchmarks.versions import ROWS
from benchmarks.workloads import WORKLOADS

# benchmark processes, one run after another (in one xdist worker)
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("benchmarks")]

ROOT = Path(__file__).resolve().parent.parent


def run_benchmarks(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks ARGS`` as CI runs it, from the repository's top."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard: the smoke run takes about a minute, more on a busy machine
        check=False,
    )


# The contenders whose in-memory pipe the slow reader can measure.
WITH_PIPE = {"meshbridge", "meshbridge-nometrics", "pipe"}


def test_smoke_run_reports_every_contender_on_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = run_benchmarks("--smoke", "--json", str(out))
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

    # the client-only floor runs where its canned answers are honest: unary and echo
    floor_in = {name for name, w in WORKLOADS.items() if "floor" in w.runs_on(list(CONTENDERS))}
    assert floor_in == {"unary_seq", "unary_c64", "echo_64k", "echo_4m"}
    assert "x floor" in done.stdout
    for name in floor_in:
        for cell in doc["workloads"][name]["contenders"].values():
            assert cell["vs_floor"][WORKLOADS[name].figures[0].key] > 0, name


def test_the_wide_fan_out_runs_on_the_mesh_against_tcp_with_the_app_apart() -> None:
    wide = WORKLOADS["fanout_10k"]
    assert wide.runs_on(list(CONTENDERS)) == ["meshbridge", "tcp-apart"]
    assert wide.reference == "tcp-apart"
    # the other workloads never start a second process
    assert all(
        "tcp-apart" not in w.runs_on(list(CONTENDERS)) for w in WORKLOADS.values() if w is not wide
    )


async def _exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Each raw request's whole response, one after another on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    responses = []
    try:
        for request in requests:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
            assert length is not None, head
            responses.append(head + await reader.readexactly(int(length[1])))
    finally:
        writer.close()
        await writer.wait_closed()
    return responses


async def test_the_floor_answers_with_the_bytes_aiohttp_sends_for_the_benchmark_app() -> None:
    requests = [
        b"GET /small HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: bench\r\n\r\n",
    ]
    runner = web.AppRunner(aiohttp_app())
    await runner.setup()
    floor = await asyncio.get_running_loop().create_server(CannedApp, "127.0.0.1", 0)
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        served = await _exchange(runner.addresses[0][1], requests)
        canned = await _exchange(floor.sockets[0].getsockname()[1], requests)
    finally:
        floor.close()
        await floor.wait_closed()
        await runner.cleanup()

    date = re.compile(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")
    for response in served + canned:
        assert date.search(response), response
    assert [date.sub(b"<date>", r) for r in canned] == [date.sub(b"<date>", r) for r in served]
    assert canned[1].endswith(b"\r\n\r\nhello")


def test_the_version_table_has_a_row_for_each_target_and_a_column_per_python(
    tmp_path: Path,
) -> None:
    done = run_benchmarks(
        *("versions", "--smoke", "--rounds", "1"),
        *("--python", sys.executable, "--out", str(tmp_path)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    version = platform.python_version()
    lines = done.stdout.splitlines()
    assert lines[0] == f"| figure | target | Python {version} |"
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:] if line}
    for row in ROWS:
        cell = rows[row.label].rstrip(" |").rsplit(" | ", 1)[1]
        assert cell != "-", row.label  # measured, in this version's run
    assert (tmp_path / "versions.md").read_text() == done.stdout
    runs = json.loads((tmp_path / "versions.json").read_text())["runs"]
    assert list(runs) == [version]
    assert set(runs[version]["workloads"]) == {
        "unary_seq",
        "unary_c64",
        "sse_burst",
        "sse_paced",
        "slow_reader",
    }


def test_a_quick_soak_counts_every_request_by_outcome_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = run_benchmarks("soak", "--quick", "--json", str(out))
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
    done = run_benchmarks("policies", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    figures = json.loads(out.read_text())
    # figures only (no timing asserted): every row was measured
    assert set(figures) == {"idle_sequential", "idle_64", "retried", "kept"}
    assert figures["retried"]["ratio"] > 0
    # a retried 32 KiB body is kept once for its replay, never more than the limit
    assert 32 * 1024 <= figures["kept"]["body_32k"] <= figures["kept"]["replay_limit"]


@pytest.mark.wallclock  # phases of real time: a busy neighbour blurs them
def test_the_chaos_benchmark_takes_both_targets_through_every_phase_and_back(
    tmp_path: Path,
) -> None:
    out = tmp_path / "chaos.json"
    done = run_benchmarks("chaos", "--smoke", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""  # what the run logs is counted in its report, not printed
    assert done.stdout.rstrip().endswith("OK"), done.stdout[-3000:]
    doc = json.loads(out.read_text())
    targets = ("in-process", "serve → remote")
    rows = [(row["phase"], row["target"]) for row in doc["phases"]]
    assert rows == [(phase.name, target) for phase in chaos.SMOKE.phases() for target in targets]
    retries = POLICY.retries
    for target in targets:
        mine = [row for row in doc["phases"] if row["target"] == target]
        steady = mine[0]
        assert steady["calls"] > 0
        assert steady["ok"] == 1.0, steady["outcomes"]  # a healthy upstream, no fault of its own
        totals: Counter[str] = Counter()
        for row in mine:
            totals.update(row["counters"])
        assert totals["to_open"] >= 1  # 529s, a hang, resets and flapping open the circuit
        assert totals["calls"] == sum(sum(row["outcomes"].values()) for row in mine)
        # each call: at most 1 + retries attempts upstream, then one on the fallback
        assert totals["upstream"] + totals["fallback"] <= (retries + 2) * totals["calls"]
        after = doc["capacity"][target]
        assert after["closed_after"] >= 0  # the circuit closed again (NaN never is)
        assert (after["left_before"], after["left_after"]) == (0, 0)
        assert (after["held"], after["overloaded"]) == (LIMIT, 0)
    served = doc["capacity"]["serve → remote"]
    assert (served["serve_held"], served["serve_overloaded"], served["serve_left"]) == (
        LIMIT,
        0,
        0,
    )
    assert served["serve_reloads"] == chaos.SMOKE.serve_reloads
    assert not Path(f"/proc/{doc['serve_pid']}").exists()  # stopped, not left running


def test_the_cost_of_limits_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    done = run_benchmarks("limits", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    figures = json.loads(out.read_text())
    # figures only (no timing asserted): every row was measured, Redis where installed
    expected = {"none", "unmatched", "one_rpm", "in_process"}
    assert set(figures) in (expected, expected | {"redis"})
    assert all(row["cpu_us"] > 0 for row in figures.values())


@pytest.mark.integration
def test_the_cost_and_the_throughput_of_the_ledger_are_measured(tmp_path: Path) -> None:
    out = tmp_path / "ledger.json"
    done = run_benchmarks("ledger", "--quick", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    # figures only (no timing asserted): every row was measured
    assert set(figures) == {
        "sequential",
        "concurrent_64",
        "gateway_sequential",
        "gateway_64",
        "rows_per_second",
        "summary_seconds",
        "summary_rows",
    }
    assert figures["rows_per_second"]["sqlite"] > 0
    assert set(figures["summary_seconds"]) == {
        "total",
        "key",
        "source",
        "client",
        "provider",
        "model",
        "day",
    }
    assert figures["sequential"]["ledger_loop_us"] > 0
