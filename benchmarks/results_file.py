"""Where a benchmark's figures live: `docs/results/<benchmark>.md`, written by the benchmark.

Each figure the documentation quotes comes from one of these files, and each file says which
command made it, on which machine (CPU model, cores, torch build and the CPU kernels ATen chose)
and when. The pages include the tables (`--8<--` snippets) or link to them; `tests/test_figures.py`
fails when a page quotes a figure its results file does not hold.

A results file is markdown: a title, then one section per command (its heading, then between
snippet markers `<!-- --8<-- [start:KEY] -->` ... `[end:KEY]` its provenance and tables), which
a page includes with `--8<-- "results/<benchmark>.md:KEY"`. Rerunning a command rewrites its
own section and keeps the others.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"


def cpu_model() -> str:
    """The CPU's marketing name as the kernel reports it (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_build(capability: str | None = None) -> str:
    """`torch 2.13.0+cpu, CPU kernels AVX512`: the version and the kernel family ATen dispatches
    to (ATEN_CPU_CAPABILITY lowers it; `capability` names the one a subprocess ran with)."""
    import torch

    kernels = capability or torch.backends.cpu.get_cpu_capability()
    text = f"torch {torch.__version__}, CPU kernels {kernels}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return text


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch_build()}, Python {platform.python_version()}"


def command() -> str:
    """The command as typed: `python benchmarks/<script>.py <arguments>`."""
    script = Path(sys.argv[0]).resolve()
    shown = f"benchmarks/{script.name}" if script.parent.name == "benchmarks" else sys.argv[0]
    return shlex.join(["python", shown, *sys.argv[1:]])


def load_average() -> str:
    """What else the machine was doing: the 1-minute load average against its cores."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def section_key(overrides: list[str]) -> str:
    """A section per set of overrides: `runs`, `runs-trainer-max-epochs-3`."""
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(overrides).lower()).strip("-")
    return f"runs-{slug}" if slug else "runs"


def write(
    name: str,
    title: str,
    key: str,
    heading: str,
    body: str,
    wall_s: float,
    load_at_start: str,
    out: Path | None = None,
) -> Path:
    """Write section `key` of `docs/results/<name>.md` (or `out`), keeping its other sections.

    The section is the provenance (command, machine, date, wall time, load) and `body`, between
    snippet markers so that a page can include it (`--8<-- "results/<name>.md:<key>"`); its
    heading stands above the markers.
    """
    path = out or RESULTS_DIR / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = "\n".join(
        [
            f"<!-- --8<-- [start:{key}] -->",
            f"- **Command:** `{command()}`",
            f"- **Machine:** {machine()}",
            f"- **Date:** {now}; wall time {wall_s:.0f} s; load average {load_at_start} at the "
            f"start, {load_average()} at the end (other work on the same cores slows the "
            "timings, not the metrics)",
            "",
            body.strip(),
            f"<!-- --8<-- [end:{key}] -->",
        ]
    )
    text = (
        path.read_text(encoding="utf-8")
        if path.exists()
        else (
            f"# {title}\n\n<!-- Written by benchmarks/{name}.py: rerun it to update a section, "
            "never edit by hand. -->\n"
        )
    )
    # The section with the heading above it: both are rewritten, the other sections kept.
    pattern = re.compile(
        rf"(## [^\n]*\n\n)?<!-- --8<-- \[start:{re.escape(key)}\] -->.*?"
        rf"<!-- --8<-- \[end:{re.escape(key)}\] -->",
        re.DOTALL,
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: f"## {heading}\n\n{block}", text)
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"results written to {path} (section {key})")
    return path


def is_override(word: str) -> bool:
    """A Hydra override (`trainer.max_epochs=3`, `+x=1`, `loss=ipo`): a word with `=` that is not
    an option; a path with `=` in a folder name (`runs/a=b/x`) is not one."""
    key = word.split("=", 1)[0]
    return "=" in word and not word.startswith("-") and "/" not in key


def parse_with_overrides(parser, argv: list[str] | None = None):
    """`parser.parse_args` with the Hydra overrides taken out first, wherever they stand: an
    option of several values (`--seeds 0 1 2`) would otherwise swallow the overrides after it.
    The overrides land in `args.overrides`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args([w for w in argv if not is_override(w)])
    stray = getattr(args, "overrides", None) or []
    if stray:  # the parser's positional `overrides` caught a word that is no override
        parser.error(f"not a Hydra override (key=value): {' '.join(stray)}")
    args.overrides = [w for w in argv if is_override(w)]
    return args
