"""Reading the commands the documentation shows, as a reader would type them: shared by
`test_readme.py` (README and docs/) and `test_guides.py` (the task guides)."""

from __future__ import annotations

import shlex

from hydra.core.override_parser.overrides_parser import OverridesParser

SHELL_FENCES = {"bash", "sh", "console", ""}
# Hydra's command-line flags that take no part in composing; the value says whether a flag
# consumes the next word.
HYDRA_FLAGS = {"--multirun": False, "-m": False, "--cfg": True, "-c": True, "--resolve": False}


def fenced_blocks(text: str, fences: set[str]) -> list[str]:
    """The bodies of the code blocks whose language is one of `fences`."""
    blocks, fence, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, lines = line[3:].strip(), []
                continue
            if fence in fences:
                blocks.append("\n".join(lines))
            fence = None
        elif fence is not None:
            lines.append(line)
    return blocks


def shell_commands(text: str, entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """(entry, command) of every command starting with one of `entries` in the shell blocks:
    comments stripped, a trailing backslash continuing the line, each part of a `&&` chain."""
    found = []
    for block in fenced_blocks(text, SHELL_FENCES):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" #", 1)[0].split("&&"):
                command = " ".join(part.split())
                entry = next((e for e in entries if command.startswith(e)), None)
                if entry:
                    found.append((entry, command))
    return found


def first_job_overrides(entry: str, command: str) -> list[str]:
    """The overrides of the command's (first) job: Hydra flags dropped, sweeps at their first
    value, as the sweeper's first job would get them."""
    overrides, skip_next = [], False
    for word in shlex.split(command)[len(shlex.split(entry)) :]:
        if skip_next:
            skip_next = False
        elif word.startswith("-"):
            assert word in HYDRA_FLAGS, f"unknown flag {word}: {command}"
            skip_next = HYDRA_FLAGS[word]
        else:
            overrides.append(word)
    first = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        else:
            first.append(override.input_line)
    return first
