"""Every `python -m prefopt.train ...` command the README (and docs/) shows composes with the configs.

The commands are read from the README's fenced code blocks, their overrides parsed with Hydra's
own parser; a sweep (`loss.beta=0.05,0.1,0.5`) is composed at its first value, as the sweeper's
first job would be. A renamed key, group option or preset then fails here, not for a newcomer.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from prefopt.config.schema import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
ENTRY = "python -m prefopt.train"
# Hydra's command-line flags that take no part in composing; the value says whether a flag
# consumes the next word.
SHELL_FENCES = {"bash", "sh", "console", ""}
HYDRA_FLAGS = {"--multirun": False, "-m": False, "--cfg": True, "-c": True, "--resolve": False}


def readme_commands(text: str) -> list[str]:
    """The `python -m prefopt.train` commands inside shell code blocks, comments stripped."""
    commands, fence, shell_lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, shell_lines = line[3:].strip(), []
                continue
            if fence in SHELL_FENCES:
                # a command continued over several lines with a trailing backslash
                block = "\n".join(shell_lines).replace("\\\n", " ")
                for shell_line in block.splitlines():
                    # `pip install ... && python -m prefopt.train` counts too: each part of a chain
                    for part in shell_line.split(" #", 1)[0].split("&&"):
                        if part.strip().startswith(ENTRY):
                            commands.append(" ".join(part.split()))
            fence = None
        elif fence is not None:
            shell_lines.append(line)
    return commands


def first_job_overrides(command: str) -> list[str]:
    """The overrides of the command's (first) job: Hydra flags dropped, sweeps at their first value."""
    words = shlex.split(command)[len(shlex.split(ENTRY)) :]
    overrides, skip_next = [], False
    for word in words:
        if skip_next:
            skip_next = False
        elif word.startswith("-"):
            assert word in HYDRA_FLAGS, f"README command uses an unknown flag {word}: {command}"
            skip_next = HYDRA_FLAGS[word]
        else:
            overrides.append(word)
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = []
    for override in parsed:
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        else:
            first.append(override.input_line)
    return first


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
# The documentation's commands too, except those with a placeholder for the reader's own
# overrides (`<same overrides> resume=true`).
DOCS_COMMANDS = list(
    dict.fromkeys(
        command
        for page in sorted((ROOT / "docs").glob("*.md"))
        for command in readme_commands(page.read_text(encoding="utf-8"))
        if "<" not in command and command not in COMMANDS
    )
)


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


def test_the_readme_stays_a_first_page():
    """The README gets a newcomer going; everything else belongs in docs/ (issue: 52k -> 15k)."""
    assert len((ROOT / "README.md").read_bytes()) <= 15_000


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
)
def test_pages_speak_of_the_product_not_of_how_it_was_made(page):
    text = (ROOT / page).read_text(encoding="utf-8").lower()
    for phrase in ("session", "earlier machine", "previous machine", "the seed's"):
        assert phrase not in text, f"{page} mentions {phrase!r}"
