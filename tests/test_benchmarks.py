"""The benchmarks run end to end at a CI-friendly size (their timings are not asserted)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "step_benchmark.py"
RATIO_TABLE = BENCHMARK.parent / "device" / "ratio_table.py"


def run_step_benchmark(tmp_path, modes: list[str]) -> tuple[list[str], dict[str, dict]]:
    out = tmp_path / "bench.json"
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
    return table, results


@pytest.mark.slow  # three modes timed over several rounds: ~20 s on 2 cores
def test_step_benchmark_prints_its_table_and_writes_json(tmp_path, capsys):
    _, results = run_step_benchmark(tmp_path, ["sft", "dpo_cached", "dpo_packed"])
    # Shared prompts and no padding: fewer token slots through the model than padded pairs.
    padded = results["dpo_cached"]["model_tokens_per_pair"]
    assert results["dpo_packed"]["model_tokens_per_pair"] < padded
    # gpu_check.sh's ratio table reads the JSON (tests/test_gpu_check.py checks it further).
    spec = importlib.util.spec_from_file_location("ratio_table", RATIO_TABLE)
    ratio_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ratio_table)
    ratio_table.main([str(tmp_path / "bench.json"), "--baselines", "dpo_cached"])
    row = next(line for line in capsys.readouterr().out.splitlines() if "| dpo_packed |" in line)
    packed, cached = results["dpo_packed"], results["dpo_cached"]
    assert row.strip("| ").split(" | ")[4:] == [
        f"{packed['tokens_per_s'] / cached['tokens_per_s']:.2f}",
        f"{packed['peak_memory_mb'] / cached['peak_memory_mb']:.2f}",
    ]


@pytest.mark.slow  # importing TRL and building its trainer: ~15 s more on 2 cores
def test_step_benchmark_trl_mode_trains_on_the_same_tokens(tmp_path):
    pytest.importorskip("trl")  # a dev dependency
    _, results = run_step_benchmark(tmp_path, ["dpo_cached", "trl"])
    # TRL saw exactly the token ids the prefopt modes trained on.
    assert results["trl"]["rounds"][0]["same_tokens"] is True
    assert results["trl"]["model_tokens_per_pair"] == results["dpo_cached"]["model_tokens_per_pair"]


DATA_BENCHMARK = BENCHMARK.with_name("data_benchmark.py")


def run_data_benchmark(tmp_path, modes: list[str]) -> tuple[str, dict]:
    out = tmp_path / "data.json"
    result = subprocess.run(
        [sys.executable, str(DATA_BENCHMARK), "--pairs", "300", "--jobs", "2",
         "--work", str(tmp_path / "work"), "--modes", *modes, "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, json.loads(out.read_text())


@pytest.mark.slow  # prepares HH-shaped data for a sweep (about 25 s on 2 cores)
def test_data_benchmark_prepares_once_for_a_sweep(tmp_path):
    _, results = run_data_benchmark(tmp_path, ["prefopt", "sweep"])
    assert results["prefopt cold"]["tokenized"] and not results["prefopt warm"]["tokenized"]
    assert results["prefopt cold"]["pairs"] == results["prefopt warm"]["pairs"] == 300
    assert results["sweep"]["tokenized"] == 1  # two jobs at once, one preparation


@pytest.mark.slow  # TRL's cold and warm preparation, each in a fresh process: ~15 s more
def test_data_benchmark_compares_with_trl(tmp_path):
    pytest.importorskip("trl")
    stdout, results = run_data_benchmark(tmp_path, ["prefopt", "trl"])
    assert results["prefopt cold"]["pairs"] == 300
    assert results["trl cold"]["pairs"] > 0 and results["trl warm"]["seconds"] > 0
    assert "prefopt is" in stdout


def test_step_benchmark_flex_rows_score_as_padded_pairs(tmp_path):
    out = tmp_path / "flex.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--model", "toy", "--pairs", "3", "--prompt-len", "8",
         "--completion-len", "6", "--ragged", "--steps", "1", "--warmup", "1", "--repeats", "1",
         "--modes", "dpo_packed", "--attention", "flex", "--row-tokens", "64",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (packed,) = json.loads(out.read_text())["results"]
    assert packed["attention"] == "flex"
    assert packed["max_logp_rel_diff"] < 1e-5
