"""The task guides (`docs/guides/`) as a user follows them: every command composes and passes
the run's checks, the cheap ones run, and the TRL table names keys that exist on both sides.

Commands are read from the guides' shell blocks (`python -m prefopt.train`, `prefopt-train`,
`python -m prefopt.data.check`), parsed as `tests/test_readme.py` parses the README's, and
checked in a folder holding the files they name (`guide_files.py`: `./my-model`, `pairs.jsonl`,
stand-ins of the hub datasets). Every `prefopt.data.check` command then runs there, on the local
stand-in of its hub dataset and model; the Python guide's example trains two steps on a small toy
world. A renamed key, option or output line then fails here, not for a reader.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prefopt.config.schema import register_configs

from .conftest import SMALL_TOY
from .doc_commands import fenced_blocks, first_job_overrides, shell_commands
from .guide_files import HUB_MODELS, HUB_STAND_INS, write_guide_files

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
ENTRIES = ("python -m prefopt.train", "prefopt-train", "python -m prefopt.data.check")
_ABSENT = object()


def guide_commands() -> list[tuple[str, str, str]]:
    """(page, entry point, command) of every prefopt command in the guides' shell blocks."""
    return [
        (page.name, entry, command)
        for page in GUIDES
        for entry, command in shell_commands(page.read_text(encoding="utf-8"), ENTRIES)
    ]


COMMANDS = guide_commands()
DATA_CHECKS = [c for c in COMMANDS if c[1] == "python -m prefopt.data.check"]


def test_the_guides_are_there_with_commands_of_each_kind():
    names = {page.name for page in GUIDES}
    assert names >= {
        "your-data.md", "chat-models.md", "gpu-memory.md", "from-trl.md", "resuming.md",
        "python-api.md",
    }  # fmt: skip
    entries = {entry for _, entry, _ in COMMANDS}
    assert entries == set(ENTRIES)
    assert len(DATA_CHECKS) >= 6


def test_the_guides_are_in_the_nav_and_linked_from_the_index_and_readme():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in GUIDES:
        assert f"guides/{page.name}" in nav and f"guides/{page.name}" in index, page.name
        assert f"docs/guides/{page.name}" in readme, page.name


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory):
    """The files the guides name, written once for the module."""
    folder = tmp_path_factory.mktemp("guide")
    write_guide_files(folder)
    return folder


@pytest.fixture
def hydra_conf():
    """Hydra on conf/ for one test (`prefopt.data.check` initialises its own)."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


@pytest.mark.parametrize("page, entry, command", COMMANDS, ids=[c[2] for c in COMMANDS])
def test_guide_command_composes_and_passes_the_run_s_checks(
    page, entry, command, guide_dir, hydra_conf, monkeypatch
):
    from prefopt.config import checks
    from prefopt.train import check_config

    monkeypatch.chdir(guide_dir)  # ./my-model, pairs.jsonl, ... as the guide names them
    monkeypatch.setenv("LOCAL_RANK", "0")  # a multi-GPU command is checked as a launched rank
    overrides = first_job_overrides(entry, command)
    checks.check_overrides(overrides, CONF_DIR)
    cfg = compose("config", overrides=[*overrides, f"output_dir={guide_dir / 'out'}"])
    OmegaConf.resolve(cfg)
    check_config(cfg)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if "." in key and not key.startswith("hydra."):
            assert OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, key


def run_data_check(words: list[str], capsys) -> str:
    from prefopt.data.check import main

    main(words)
    return capsys.readouterr().out


def local_stand_ins(words: list[str]) -> list[str]:
    """The command's overrides with each hub dataset and model replaced by its local stand-in."""
    out = []
    for word in words:
        key, _, value = word.partition("=")
        if key == "model" and value in HUB_MODELS:
            out += ["model=local", "model.path=./my-model"]
        elif key == "data.path" and value in HUB_STAND_INS:
            out.append(f"data.path={HUB_STAND_INS[value]}")
        else:
            out.append(word)
    return out


@pytest.mark.parametrize("page, entry, command", DATA_CHECKS, ids=[c[2] for c in DATA_CHECKS])
def test_guide_data_check_runs_on_local_stand_ins(
    page, entry, command, guide_dir, toy_cache, monkeypatch, capsys
):
    monkeypatch.chdir(guide_dir)
    words = local_stand_ins(first_job_overrides(entry, command))
    if not any(w.startswith(("data=", "model=")) for w in words):  # the toy world: a small one
        words = [*SMALL_TOY, f"toy.cache_dir={toy_cache}", *words]
    out = run_data_check(words, capsys)
    lines = out.splitlines()
    assert lines[0].startswith("loss="), out
    train_at = next(i for i, line in enumerate(lines) if line.startswith("train: "))
    val_at = next(i for i, line in enumerate(lines) if line.startswith("val: "))
    kept = "examples" if "loss=kto" in command else "pairs"
    for start in (train_at, val_at):
        section = lines[start + 1 :]
        end = next((i for i, line in enumerate(section) if not line.startswith("  ")), None)
        values = dict(line.split() for line in section[:end])
        assert int(values["rows"]) > 0 and int(values[kept]) == int(values["rows"]), out
        assert int(values["at_a_cap"]) == 0


def test_the_sample_output_of_the_data_guide_is_what_the_check_prints(
    guide_dir, monkeypatch, capsys
):
    """Its ```text block is the output of the command above it, line for line up to the `…`."""
    text = (ROOT / "docs" / "guides" / "your-data.md").read_text(encoding="utf-8")
    sample = fenced_blocks(text, {"text"})[0].splitlines()
    command = next(c for p, _, c in DATA_CHECKS if p == "your-data.md" and "pairs.jsonl" in c)
    monkeypatch.chdir(guide_dir)
    out = run_data_check(first_job_overrides("python -m prefopt.data.check", command), capsys)
    shown = sample[: sample.index("  …")]
    assert out.splitlines()[: len(shown)] == shown


@pytest.mark.slow  # a whole run (MLflow store, two steps, export): about 15 s on 2 cores
def test_the_python_guide_trains_two_steps_and_its_checkpoint_has_the_size_the_gpu_guide_says(
    toy_cache, reference_cache, tmp_path, monkeypatch
):
    """The Python guide's blocks run as written, on a small toy world without generation
    evaluation or a reference precompute (the test's overrides after the guide's).
    The checkpoint is 12 bytes per trained fp32 parameter (weights 4, AdamW's moments 8) plus
    little else, as the GPU guide's formula says (3·b·N with b = 4)."""
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "guides" / "python-api.md").read_text(encoding="utf-8")
    blocks = fenced_blocks(text, {"python"})
    small = [
        *SMALL_TOY, f"toy.cache_dir={toy_cache}", f"reference.cache_dir={reference_cache}",
        "trainer.enable_progress_bar=false", "model.log_model=false",
        "logger.log_system_metrics=false", "eval.num_prompts=0", "reference.cache=false",
    ]  # fmt: skip
    first = blocks[0].replace('"output_dir=runs/ipo"]', '"output_dir=runs/ipo", *SMALL]')
    assert first != blocks[0]
    namespace = {"SMALL": small}
    for block in [first, *blocks[1:]]:
        exec(compile(block, "python-api.md", "exec"), namespace)
    result = namespace["result"]
    assert result.export_dir is not None and (result.export_dir / "config.json").is_file()
    checkpoint = tmp_path / "runs" / "ipo" / "checkpoints" / "last.ckpt"
    trained = sum(p.numel() for p in result.module.policy.parameters() if p.requires_grad)
    size = checkpoint.stat().st_size
    assert 12 * trained <= size <= 12 * trained * 1.02 + 100_000, (size, trained)


def test_the_console_script_is_the_command_line_entry_point():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib: Python 3.11+)
    scripts = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'prefopt-train = "prefopt.train:main"' in scripts.splitlines()


def trl_table() -> list[tuple[list[str], list[str]]]:
    """(TRL keys, prefopt tokens) of each row of the TRL guide's key table."""
    text = (ROOT / "docs" / "guides" / "from-trl.md").read_text(encoding="utf-8")
    table = text.split("## Keys", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[1])))
    return rows


def test_every_key_of_the_trl_table_exists_in_trl_and_in_the_composed_config(hydra_conf):
    trl = pytest.importorskip("trl")
    fields = {
        f.name for config in (trl.DPOConfig, trl.KTOConfig) for f in dataclasses.fields(config)
    }
    rows = trl_table()
    assert len(rows) >= 40
    composed = functools.cache(
        lambda groups: compose(
            "config", overrides=[*groups, "output_dir=."], return_hydra_config=True
        )
    )
    for name in ("activation_offloading", "pad_to_multiple_of"):  # "Not in prefopt"
        assert name in fields
    for trl_keys, prefopt in rows:
        assert trl_keys and prefopt, (trl_keys, prefopt)
        assert set(trl_keys) <= fields, set(trl_keys) - fields
        groups = [token for token in prefopt if "=" in token]
        cfg = composed(tuple(groups))
        for key in (token for token in prefopt if "=" not in token):
            assert OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, (key, groups)


def test_the_gpu_guide_s_three_tries_train_on_the_same_global_batch(hydra_conf):
    """ "All three train on 32 pairs per optimizer step": batch size × accumulation."""
    page = [c for p, _, c in COMMANDS if p == "gpu-memory.md"]
    assert len(page) == 3
    for command in page:
        cfg = compose(
            "config", overrides=[*first_job_overrides(ENTRIES[0], command), "output_dir=."]
        )
        assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 32, command
