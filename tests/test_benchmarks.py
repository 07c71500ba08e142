"""The step benchmark runs end to end at a CI-friendly size (its figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_benchmark.py"


def test_step_benchmark_prints_its_table_and_writes_json(tmp_path):
    pytest.importorskip("trl")  # a dev dependency: the TRL mode is part of the smoke test
    out = tmp_path / "bench.json"
    modes = ["sft", "dpo_cached", "trl"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--model", "toy", "--pairs", "2", "--prompt-len", "4",
         "--completion-len", "6", "--steps", "2", "--warmup", "1", "--repeats", "1",
         "--modes", *modes, "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout.splitlines()
    assert any(line.split()[:2] == ["mode", "step"] for line in table)
    for mode in modes:
        assert any(line.split()[:1] == [mode] for line in table), mode

    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == set(modes)
    for r in results.values():
        assert r["median_step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
    # TRL saw exactly the token ids the prefopt modes trained on.
    assert results["trl"]["rounds"][0]["same_tokens"] is True
