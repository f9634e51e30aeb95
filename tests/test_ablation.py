"""bench/ablation.py at its smoke-test budget (`--quick`), through a real subprocess: it trains two
variants for a few steps on a tiny rendered set, writes the table and the raw numbers, and a
second invocation of the same command resumes (runs nothing again), except a run whose stored
configuration is not the variant's any more."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("variant", "abs_rel", "a1", "snippet ATE", "mask precision", "mask recall", "seeds")


def _ablation(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ablation.py"), "--quick", "--threads", "1",
         "--out", str(tmp_path / "results"), "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_quick_ablation_writes_table_and_resumes(tmp_path):
    result = _ablation(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "results" / "ablation.md").read_text()
    assert "bench/ablation.py --quick" in table  # the exact command
    assert "Budget per run" in table
    header = next(line for line in table.splitlines() if line.startswith("| variant"))
    for column in COLUMNS:
        assert column in header, column
    rows = [line for line in table.splitlines() if line.startswith("| none ") or line.startswith("| multimask ")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell in cells[2:7]:  # the five metrics as "mean ± std"
            mean, std = (float(x) for x in cell.split("±"))
            assert math.isfinite(mean) and math.isfinite(std), row

    raw = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert {r["variant"] for r in raw["runs"]} == {"none", "multimask"}
    for run in raw["runs"]:
        assert "error" not in run, run
        assert 0 <= run["mask_precision"] <= 1 and 0 <= run["mask_recall"] <= 1
        assert run["abs_rel"] > 0 and 0 <= run["a1"] <= 1 and run["ate"] >= 0
    assert 0.9 < raw["reference"]["true_geometry_precision"] <= 1  # the masks of the true geometry are right

    again = _ablation(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 runs done before, 0 to run" in again.stdout

    # A run stored with another configuration (a default changed since) is trained again.
    (stored,) = (tmp_path / "work").glob("*/multimask/seed0/result.json")
    result = json.loads(stored.read_text())
    result["config"]["loss"]["floor"] = 0.25
    stored.write_text(json.dumps(result))
    third = _ablation(tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "1 runs done before, 1 to run" in third.stdout
    assert json.loads(stored.read_text())["config"]["loss"]["floor"] == 0.5
