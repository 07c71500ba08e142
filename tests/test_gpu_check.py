"""The pieces of benchmarks/device/gpu_check.sh that run without a GPU: the scripts parse, and
the ratio table reads real step_benchmark.py JSONs (the GPU figures come from the script)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEVICE = Path(__file__).resolve().parents[1] / "benchmarks" / "device"
BENCHMARK = DEVICE.parent / "step_benchmark.py"


def load_ratio_table():
    """benchmarks/device/ratio_table.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("ratio_table", DEVICE / "ratio_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_benchmark_json(path: Path, modes: list[str], *flags: str) -> dict:
    """step_benchmark.py on the toy shape, one round of one timed step per mode."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--model", "toy", "--pairs", "2", "--prompt-len", "8",
         "--completion-len", "6", "--ragged", "--steps", "1", "--warmup", "0", "--repeats", "1",
         "--modes", *modes, "--json", str(path), *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(path.read_text())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", ["gpu_check.sh", "fetch_wheels.sh"])
def test_device_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(DEVICE / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_check_runs_issue_21_in_budgeted_steps_under_one_call():
    """Every step of the default section has a `timeout`, and their sum (with the wheels'
    install) stays under the ~540 s one device call is given."""
    text = (DEVICE / "gpu_check.sh").read_text()
    section = text[text.index("    21)") : text.index("    6)")]
    budgets = [
        int(line.split()[1]) for line in section.splitlines() if line.strip().startswith("bench ")
    ]
    install = int(re.search(r"timeout (\d+) python3 -m pip install", text)[1])
    assert len(budgets) == 6
    assert sum(budgets) + install <= 540
    for needed in ("--attention flex", "--attention flash_varlen", "dpo_cached", "trl_precomputed",
                   "--prompt-len 1536 --completion-len 512", "--compile", "--liger"):  # fmt: skip
        assert needed in section, needed


def test_gpu_check_has_the_correctness_section():
    """`gpu_check.sh correct` runs gpu_correctness.py's checks in one budgeted step."""
    text = (DEVICE / "gpu_check.sh").read_text()
    section = text[text.index("    correct)") : text.index("    7)")]
    assert "timeout 150 python3 benchmarks/device/gpu_correctness.py" in section
    spec = importlib.util.spec_from_file_location("gpu_correctness", DEVICE / "gpu_correctness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.CHECKS) == {
        "flash_varlen_rows", "flex_reference_inference_mode", "fsdp_online_refused"
    }  # fmt: skip
    # Without flash-attn the flash check says so rather than failing.
    if not module.flash_varlen_available():
        assert module.check_flash_varlen().startswith("skipped")


def test_the_fsdp_online_check_of_gpu_correctness_passes_on_cpu():
    """The refusal needs no GPU: the device check is the CPU behaviour, run there again."""
    spec = importlib.util.spec_from_file_location("gpu_correctness", DEVICE / "gpu_correctness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.check_fsdp_online_refused() == "ok (one line, exit 2)"


@pytest.mark.slow  # two step_benchmark.py workers: ~25 s on 2 cores, ~50 s when they are busy
def test_ratio_table_of_step_benchmark_jsons(tmp_path, capsys):
    """Rows of two files (the second with other flags) are matched to the baseline measured in
    the first, by shape; a file a cut-short step never wrote is passed over."""
    ratio_table = load_ratio_table()
    data = step_benchmark_json(tmp_path / "padded.json", ["dpo_online", "dpo_packed"])
    flagged = {
        "args": {**data["args"], "attention": "flex", "liger": True},
        "results": [r for r in data["results"] if r["mode"] == "dpo_packed"],
    }
    (tmp_path / "flagged.json").write_text(json.dumps(flagged))
    other_shape = {"args": {**data["args"], "pairs": 5}, "results": flagged["results"]}
    (tmp_path / "other.json").write_text(json.dumps(other_shape))

    files = ["padded.json", "flagged.json", "other.json", "never_written.json"]
    ratio_table.main([str(tmp_path / f) for f in files] + ["--baselines", "dpo_online", "trl"])
    table = capsys.readouterr().out.splitlines()

    online, packed = (
        next(r for r in data["results"] if r["mode"] == m) for m in ("dpo_online", "dpo_packed")
    )
    speed = packed["tokens_per_s"] / online["tokens_per_s"]
    memory = packed["peak_memory_mb"] / online["peak_memory_mb"]
    cells = [line.strip("| ").split(" | ") for line in table[2:]]
    rows = {(row[0].split()[2], row[1]): row[2:] for row in cells}
    assert table[0].startswith("| shape | row | tokens/s | peak MB | ×tok/s dpo_online |")
    assert len(rows) == len(cells) == 4
    assert rows["2×(8+6)", "dpo_online"][2:] == ["1.00", "1.00", "–", "–"]  # no trl row
    assert rows["2×(8+6)", "dpo_packed"][2:4] == [f"{speed:.2f}", f"{memory:.2f}"]
    assert rows["2×(8+6)", "dpo_packed flex +liger"][2:4] == [f"{speed:.2f}", f"{memory:.2f}"]
    assert rows["5×(8+6)", "dpo_packed"][2:] == ["–", "–", "–", "–"]  # no baseline of its shape


@pytest.mark.slow  # TRL's trainer on the toy shape: ~30 s on 2 cores, ~50 s when busy
def test_ratio_table_against_trl(tmp_path, capsys):
    pytest.importorskip("trl")
    ratio_table = load_ratio_table()
    data = step_benchmark_json(tmp_path / "hh.json", ["dpo_packed", "trl"])
    ratio_table.main([str(tmp_path / "hh.json")])
    table = capsys.readouterr().out.splitlines()
    packed, trl = (
        next(r for r in data["results"] if r["mode"] == m) for m in ("dpo_packed", "trl")
    )
    row = next(line for line in table if "| dpo_packed |" in line).strip("| ").split(" | ")
    assert row[4:6] == [
        f"{packed['tokens_per_s'] / trl['tokens_per_s']:.2f}",
        f"{packed['peak_memory_mb'] / trl['peak_memory_mb']:.2f}",
    ]
    assert row[6:] == ["–", "–"]  # trl_precomputed was not measured
