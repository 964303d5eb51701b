"""The benchmark harness runs end to end in smoke mode (no timing assertions).

It runs in a subprocess, as CI and ``make bench-smoke`` run it, so the
harness's own event loop, child processes and warnings stay out of pytest's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.contenders import CONTENDERS
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
        assert set(cells) == set(CONTENDERS)
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
