"""Every command the README and docs/ show runs as written, as far as can be checked cheaply.

`python -m prefopt.train ...` commands (fenced shell blocks and inline code) compose with the
configs: their overrides parsed with Hydra's own parser, a sweep (`loss.beta=0.05,0.1,0.5`)
composed at its first value, as the sweeper's first job would be. `python benchmarks/<x>.py ...`
commands parse with that script's own argument parser (`build_parser()`, imported without
running the script), and their Hydra overrides compose too. A renamed key, group option, preset
or benchmark flag then fails here, not for a newcomer.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prefopt.config.schema import register_configs

from . import doc_commands
from .doc_commands import shell_commands

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
ENTRY = "python -m prefopt.train"


def readme_commands(text: str, entry: str = ENTRY) -> list[str]:
    """The commands starting with `entry` inside shell code blocks, comments stripped."""
    return [command for _, command in shell_commands(text, (entry,))]


def first_job_overrides(command: str) -> list[str]:
    """The overrides of the command's (first) job: Hydra flags dropped, sweeps at their first value."""
    return doc_commands.first_job_overrides(ENTRY, command)


def inline_commands(text: str, entry: str = ENTRY) -> list[str]:
    """The commands starting with `entry` in inline code (`python -m prefopt.train loss=ipo`),
    also when the paragraph's line breaks cut one in two."""
    spans = re.findall(r"(?<!`)`(" + re.escape(entry) + r"[^`]*)`(?!`)", text)
    return [" ".join(span.split()) for span in spans]


def has_placeholder(command: str) -> bool:
    """A command with a blank for the reader to fill: `<overrides>`, `...`, `[--seeds 0]`, `ARGS`."""
    words = command.split()
    return any(mark in command for mark in ("<", "...", "…", "[")) or any(
        w.isupper() and w.isalpha() for w in words
    )


PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "sweeps").glob("*.md")),
]


def page_commands(entry: str) -> list[str]:
    """Every command of every page starting with `entry`, once, placeholders left out (the
    benchmarks' results files are their output, not commands for the reader)."""
    found = (
        command
        for page in PAGES
        if "results" not in page.relative_to(ROOT).parts
        for text in [page.read_text(encoding="utf-8")]
        for command in readme_commands(text, entry) + inline_commands(text, entry)
    )
    return list(dict.fromkeys(c for c in found if not has_placeholder(c)))


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
# The documentation's commands too (fenced and inline), except those with a placeholder for the
# reader's own overrides (`<same overrides> resume=true`).
DOCS_COMMANDS = [c for c in page_commands(ENTRY) if c not in COMMANDS]
BENCHMARK_ENTRY = "python benchmarks/"
BENCHMARK_COMMANDS = page_commands(BENCHMARK_ENTRY)


def test_the_readme_shows_the_main_job_and_a_sweep():
    assert COMMANDS[0] == ENTRY  # the quick start's main job: the defaults, no override
    assert any("--multirun" in c for c in COMMANDS)
    assert any("sweep=" in c for c in COMMANDS)
    assert len(COMMANDS) >= 8


@pytest.fixture(scope="module")
def hydra_conf():
    """Hydra initialised once on conf/ for all the commands (a fraction of a second each)."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


@pytest.mark.parametrize("command", COMMANDS + DOCS_COMMANDS)
def test_readme_command_composes(command, hydra_conf, tmp_path):
    overrides = first_job_overrides(command)
    cfg = compose("config", overrides=[*overrides, f"output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)  # every interpolation (optim.lr=${model.lr}, ...) resolves
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        # A dotted key outside hydra.* is a config value: it must have landed in the config.
        if "." in key and not key.startswith("hydra.") and not override.is_delete():
            assert OmegaConf.select(cfg, key) is not None, f"{key} is missing after {command}"


def benchmark_script(name: str):
    """The benchmark's module, imported without running it (benchmarks/ on sys.path, as when
    the script runs: they import their siblings)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_show_benchmark_commands():
    scripts = {shlex.split(c)[1] for c in BENCHMARK_COMMANDS}
    assert {"benchmarks/beta_tradeoff.py", "benchmarks/default_run.py"} <= scripts
    assert "python benchmarks/beta_tradeoff.py --seeds 0 1 2 trainer.max_epochs=3" in (
        BENCHMARK_COMMANDS
    )


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS)
def test_benchmark_command_parses(command, hydra_conf, tmp_path):
    """The script's own parser takes the arguments; its Hydra overrides compose."""
    words = shlex.split(command)
    module = benchmark_script(Path(words[1]).name)
    parser = module.build_parser()
    takes_overrides = any(a.dest == "overrides" for a in parser._actions)
    try:
        if takes_overrides:
            args = module.parse_with_overrides(parser, words[2:])
        else:
            args = parser.parse_args(words[2:])
    except SystemExit as error:  # argparse's way of refusing
        pytest.fail(f"{command}: the script's parser refuses it (exit {error.code})")
    for override in getattr(args, "overrides", []):
        cfg = compose("config", overrides=[override, f"output_dir={tmp_path}"])
        key = override.split("=", 1)[0].lstrip("+~")
        assert OmegaConf.select(cfg, key) is not None, f"{override} of {command} lands nowhere"


def test_the_readme_stays_a_first_page():
    """The README gets a newcomer going; everything else belongs in docs/ (issue: 52k -> 15k)."""
    assert len((ROOT / "README.md").read_bytes()) <= 15_000


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in PAGES])
def test_pages_speak_of_the_product_not_of_how_it_was_made(page):
    text = (ROOT / page).read_text(encoding="utf-8").lower()
    for phrase in ("session", "earlier machine", "previous machine", "the seed's"):
        assert phrase not in text, f"{page} mentions {phrase!r}"
