"""docs/configuration.md is generated into the repository; these fail when it is stale.

The page is rendered once per session (about 5 s on 2 cores: Hydra composes the default run and
every option of every group) and compared with the committed file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.config.reference_page import render
from prefopt.config.reference_page.page import COMMAND, _further_groups, group_folders

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def page() -> str:
    return render(ROOT / "conf")


def test_the_committed_page_is_the_generated_one(page):
    assert PAGE.read_text(encoding="utf-8") == page, (
        f"docs/configuration.md is stale: run {COMMAND}"
    )


def test_values_are_the_default_runs_not_the_schemas(page):
    lines = page.splitlines()
    # The schema says 512; conf/data/toy.yaml, which the default run composes, says 64.
    assert any(line.startswith("| `data.max_length` | `int` | `64` |") for line in lines)
    # An interpolation shows what it resolves to in that run.
    (lr,) = [line for line in lines if line.startswith("| `optim.lr` |")]
    assert "`${model.lr}` → `0.0005`" in lr


def test_every_group_section_and_option_is_on_the_page(page):
    conf = ROOT / "conf"
    for group in group_folders(conf):
        for option in (conf / group).glob("*.yaml"):
            if option.name.endswith(".example.yaml"):
                continue
            assert f"`{option.stem}`" in page or f"`{group}={option.stem}`" in page, (group, option)
    for section in ("toy", "reference", "checkpoint", "judge", "loop", "eval", "logger"):
        assert f"## `{section}`" in page
    for key in ("seed", "resume", "ckpt_path", "objective"):
        assert f"| `{key}` |" in page


def test_a_new_folder_of_conf_is_listed_without_code_changes(tmp_path):
    """A group another branch adds (`task`, say) needs only a regeneration of the page."""
    (tmp_path / "config.yaml").write_text("defaults:\n  - loss: dpo\n  - sweep: null\n")
    for path, text in {
        "task/summarise.yaml": "# @package _global_\n# Summarise long posts.\nloss: {}\n",
        "sweep/beta.yaml": "# @package _global_\n# β grid.\n",
        "hydra/launcher/slurm.yaml": "# SLURM.\n",
        "local/slurm.example.yaml": "# a template to copy, no option\n",
        "loss/dpo.yaml": "beta: 0.1\n",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert group_folders(tmp_path) == ["hydra/launcher", "loss", "sweep", "task"]
    rows = "\n".join(_further_groups(tmp_path, run_groups={"loss"}))
    assert "| `+task=` | the options of `conf/task/` | `summarise` |" in rows
    assert "`sweep=`" in rows and "`+sweep=`" not in rows  # in the defaults list: no `+`
    assert "`hydra/launcher=`" in rows and "local=" not in rows
