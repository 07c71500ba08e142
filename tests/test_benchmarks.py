"""The benchmarks run end to end at a CI-friendly size (their timings are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_benchmark.py"


def test_step_benchmark_prints_its_table_and_writes_json(tmp_path):
    pytest.importorskip("trl")  # a dev dependency: the TRL mode is part of the smoke test
    out = tmp_path / "bench.json"
    modes = ["sft", "dpo_cached", "dpo_packed", "trl"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--model", "toy", "--pairs", "3", "--prompt-len", "8",
         "--completion-len", "6", "--ragged", "--steps", "2", "--warmup", "1", "--repeats", "1",
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
    # Shared prompts and no padding: fewer token slots through the model than padded pairs.
    padded = results["dpo_cached"]["model_tokens_per_pair"]
    assert results["trl"]["model_tokens_per_pair"] == padded
    assert results["dpo_packed"]["model_tokens_per_pair"] < padded


DATA_BENCHMARK = BENCHMARK.with_name("data_benchmark.py")


def test_data_benchmark_prepares_once_for_a_sweep_and_compares_with_trl(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "data.json"
    result = subprocess.run(
        [sys.executable, str(DATA_BENCHMARK), "--pairs", "300", "--jobs", "2",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["prefopt cold"]["tokenized"] and not results["prefopt warm"]["tokenized"]
    assert results["prefopt cold"]["pairs"] == results["prefopt warm"]["pairs"] == 300
    assert results["trl cold"]["pairs"] > 0 and results["trl warm"]["seconds"] > 0
    assert results["sweep"]["tokenized"] == 1  # two jobs at once, one preparation
    assert "prefopt is" in result.stdout
