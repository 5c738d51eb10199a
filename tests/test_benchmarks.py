"""The benchmark suite runs from one command (--quick sizes) and writes every section with positive numbers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["cold_start", "request", "samplers", "training", "neighbours", "flops"]


@pytest.mark.slow
def test_run_all_quick_writes_every_section(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "benchmarks/run_all.py", "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert [r["name"] for r in run["runs"]] == SECTIONS
    for name in SECTIONS:
        data = json.loads((out / f"{name}.json").read_text())
        assert data["benchmark"] == name
        assert data["quick"] is True and data["representative"] is False
        assert data["command"].startswith(f"python benchmarks/bench_{name}.py")
        assert data["env"]["threads"] == 1 and data["env"]["torch"] and data["env"]["cpu"]
        assert data["headline"], name
        for key, value in data["headline"].items():
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, key, value)
        for c in data["comparisons"]:
            assert c["ours"] > 0 and c["ref"] > 0 and c["ratio"] > 0, (name, c)
        for t in data["targets"]:
            assert t["met"] is None and t["measured"] is not None, (name, t)  # --quick gives no verdicts
    readme = (out / "README.md").read_text()
    assert "NOT representative" in readme and "| Benchmark | Measure |" in readme
    for title in ("1. Side-by-side", "2. Sampler", "3. Training", "4. Neighbour", "5. Cold start", "6. Distance"):
        assert f"## {title}" in readme


def test_slider_quality_scores_a_named_pair_at_its_default_cutoff(tiny, tmp_path):
    """--pair takes both sides from a pairs file and labels the Ambient side with its cutoff; a wrong name is named."""
    out = tmp_path / "q.json"
    base = [sys.executable, "benchmarks/bench_slider_quality.py", "--config", str(tiny), "--n", "6"]
    proc = subprocess.run(
        [*base, "--pair", "tiny", "--arms", "heun:2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["side"] for r in rows] == ["baseline", "ambient"]
    assert rows[0]["cutoff"] is None and rows[1]["cutoff"] == "the Ambient model alone"
    assert all(r["n"] == 6 and 0.0 <= r["rate_ratio"] <= 1.0 for r in rows)
    bad = subprocess.run([*base, "--pair", "nosuch"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no pair 'nosuch'" in bad.stderr and "['tiny']" in bad.stderr
    assert "Traceback" not in bad.stderr
