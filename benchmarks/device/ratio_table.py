"""The ratio table of step_benchmark.py JSONs: each row's tokens/s and peak memory over TRL's.

    python benchmarks/device/ratio_table.py OUT/*.json                # against trl, trl_precomputed
    python benchmarks/device/ratio_table.py OUT/hh_*.json --baselines dpo_online

Rows from several files (one per `--attention`, `--compile`, `--liger` setting) are matched to
the baseline rows of the same shape (model, dtype, device, pairs, lengths, ragged), wherever
those were measured. Prints a Markdown table to paste: tokens/s and peak memory, then for each
baseline `×tok/s` (the row's tokens/s over the baseline's: above 1 is faster) and `×mem` (its
peak memory over the baseline's: below 1 is smaller).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPE_KEYS = ("model", "dtype", "device", "pairs", "prompt_len", "completion_len", "ragged")


def load_rows(paths: list[Path]) -> list[dict]:
    """One row per (file, mode): its results, its shape and a label naming its settings."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        args = data["args"]
        shape = tuple(args.get(key) for key in SHAPE_KEYS)
        for result in data["results"]:
            rows.append({**result, "shape": shape, "label": label(result["mode"], args)})
    return rows


def label(mode: str, args: dict) -> str:
    """`dpo_packed flex +compile`: the mode and the settings that change how prefopt runs it,
    the defaults unnamed (TRL's modes run as TRL runs them, whatever the flags)."""
    if mode.startswith("trl"):
        return mode
    parts = [mode]
    if args.get("attention") not in (None, "auto", "sdpa"):  # sdpa: step_benchmark's default
        parts.append(str(args["attention"]))
    parts += [f"+{flag}" for flag in ("compile", "liger") if args.get(flag)]
    return " ".join(parts)


def with_ratios(rows: list[dict], baselines: list[str]) -> list[dict]:
    """Each measured row with `ratios[baseline] = (tokens/s ratio, peak memory ratio)` against
    the first measured baseline row of its shape (None where there is none)."""
    reference = {}
    for row in rows:
        if row["mode"] in baselines and "skipped" not in row:
            reference.setdefault((row["shape"], row["mode"]), row)
    out = []
    for row in rows:
        ratios = {}
        for baseline in baselines:
            base = reference.get((row["shape"], baseline))
            ratios[baseline] = (
                None
                if base is None or "skipped" in row
                else (
                    row["tokens_per_s"] / base["tokens_per_s"],
                    row["peak_memory_mb"] / base["peak_memory_mb"],
                )
            )
        out.append({**row, "ratios": ratios})
    return out


def markdown(rows: list[dict], baselines: list[str]) -> str:
    head = ["shape", "row", "tokens/s", "peak MB"]
    for baseline in baselines:
        head += [f"×tok/s {baseline}", f"×mem {baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        model, dtype, _, pairs, prompt, completion, ragged = row["shape"]
        shape = f"{model} {dtype} {pairs}×({prompt}+{completion}){' ragged' if ragged else ''}"
        if "skipped" in row:
            lines.append(f"| {shape} | {row['label']} | skipped: {row['skipped']} |")
            continue
        cells = [shape, row["label"], f"{row['tokens_per_s']:.0f}", f"{row['peak_memory_mb']:.0f}"]
        for baseline in baselines:
            ratio = row["ratios"][baseline]
            cells += ["–", "–"] if ratio is None else [f"{ratio[0]:.2f}", f"{ratio[1]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", nargs="+", type=Path, help="step_benchmark.py --json files")
    parser.add_argument("--baselines", nargs="+", default=["trl", "trl_precomputed"])
    args = parser.parse_args(argv)
    paths = [path for path in args.json if path.is_file()]  # a step the budget cut wrote none
    rows = with_ratios(load_rows(paths), args.baselines)
    print(markdown(rows, args.baselines))


if __name__ == "__main__":
    main()
