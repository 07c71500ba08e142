"""Figures cannot drift: each measured figure lives in one results file (docs/results/<x>.md,
written by benchmarks/<x>.py with its command, machine and date), and a page that quotes one
must quote what that file holds.

Cheap: it reads markdown only. When a rerun benchmark rewrites its results file, the pages
quoting the old figures fail here until they are updated (or include the file instead).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
SNIPPET = re.compile(r'^--8<-- "results/([\w.-]+\.md):([a-z][-_0-9a-z]*)"$', re.MULTILINE)
SECTION = re.compile(
    r"<!-- --8<-- \[start:([a-z][-_0-9a-z]*)\] -->\n(.*?)<!-- --8<-- \[end:\1\] -->", re.DOTALL
)


def sections(name: str) -> dict[str, str]:
    return dict(SECTION.findall((RESULTS / name).read_text(encoding="utf-8")))


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text`, each as its rows keyed by the header's cells."""
    found, lines = [], text.splitlines()
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and re.fullmatch(r"\|( --- \|)+", lines[i + 1].strip()):
            header = [c.strip().strip("`") for c in lines[i].strip("|").split("|")]
            rows = []
            for line in lines[i + 2 :]:
                if not line.startswith("|"):
                    break
                rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
            found.append(rows)
    return found


def default_run(key: str = "runs") -> dict[str, str]:
    """The default run (or section `key`'s overrides) with the machine's own kernels on a toy
    cache it built before (`warm`, or `usual` with `--no-cold`)."""
    (runs,) = tables(sections("default_run.md")[key])
    return next(
        r
        for r in runs
        if r["CPU kernels"].startswith("native") and r["toy cache"] in ("warm", "usual")
    )


def page(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))]


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.md")))
def test_each_results_file_says_how_it_was_made(name):
    """Title, then sections each with the benchmark's own command, the machine and the date."""
    text = (RESULTS / name).read_text(encoding="utf-8")
    script = name.removesuffix(".md")
    assert f"Written by benchmarks/{script}.py" in text
    assert (ROOT / "benchmarks" / f"{script}.py").is_file()
    found = sections(name)
    assert found, f"{name} has no section"
    for key, body in found.items():
        assert f"- **Command:** `python benchmarks/{script}.py" in body, (name, key)
        assert "- **Machine:** " in body and "CPU kernels" in body, (name, key)
        assert re.search(r"- \*\*Date:\*\* \d{4}-\d\d-\d\d", body), (name, key)


@pytest.mark.parametrize("name", PAGES)
def test_included_results_exist(name):
    for results_file, key in SNIPPET.findall(page(name)):
        assert (RESULTS / results_file).is_file(), f"{name} includes a missing {results_file}"
        assert key in sections(results_file), f"{name} includes a missing {results_file}:{key}"


FINAL_METRIC = re.compile(r"^  ((?:eval|val)/\S+)\s+(-?\d+\.\d{4})$", re.MULTILINE)


@pytest.mark.parametrize("name", ["README.md", "docs/getting-started.md"])
def test_the_first_runs_printed_metrics_are_the_default_runs(name):
    quoted = FINAL_METRIC.findall(page(name))
    assert len(quoted) >= 4, f"{name} shows no final metrics block"
    measured = default_run()
    for metric, value in quoted:
        assert measured[metric] == value, f"{name}: {metric} {value}, results: {measured[metric]}"


def test_the_first_runs_last_evaluation_line_is_the_default_runs():
    line = next(
        line for line in page("docs/getting-started.md").splitlines() if "eval at step 75" in line
    )
    measured = default_run()
    for metric in ("kl_seq", "win_rate_vs_ref"):
        value = re.search(rf"{metric}=(\d+\.\d+)", line).group(1)
        assert float(value) == round(float(measured[f"eval/{metric}"]), 3), (metric, value)


def test_the_sweep_summary_is_the_default_run_at_each_beta():
    """sweeps.md's printed summary of `--multirun loss.beta=0.05,0.1,0.5`: each job is the
    default run at its β (`python benchmarks/default_run.py --no-cold loss.beta=0.05`)."""
    rows = [
        line.split()
        for line in page("docs/sweeps.md").splitlines()
        if re.match(r"^\d+\s+dpo β=[\d.]+ lr=5e-4 ", line)
    ]
    assert len(rows) == 3
    for row in rows:
        beta = row[2].removeprefix("β=")
        measured = default_run("runs" if beta == "0.1" else section_key_of(f"loss.beta={beta}"))
        margins, accuracies, win_rate, kl = row[-5:-1]
        assert margins == measured["val/rewards/margins"], beta
        assert accuracies == measured["val/rewards/accuracies"], beta
        assert win_rate == measured["eval/win_rate_vs_ref"], beta
        assert kl == measured["eval/kl_seq"], beta


def test_online_pages_offline_rows_are_the_default_run_at_each_beta():
    rows = [line for line in page("docs/online.md").splitlines() if line.startswith("| offline |")]
    assert rows
    for row in rows:
        beta, win_rate, kl, reward = (c.strip() for c in row.strip("|").split("|")[1:5])
        measured = default_run("runs" if beta == "0.1" else section_key_of(f"loss.beta={beta}"))
        assert float(win_rate) == round(float(measured["eval/win_rate_vs_ref"]), 3), beta
        assert float(kl) == round(float(measured["eval/kl_seq"]), 2), beta
        assert float(reward) == round(float(measured["eval/reward_policy"]), 2), beta


def test_the_loss_tables_dpo_row_is_the_default_run():
    """Two benchmarks, one run: `sweep=losses`'s dpo job is the default run."""
    (rows,) = tables(sections("loss_table.md")["runs"])
    (row,) = [r for r in rows if r["loss="] == "`dpo`"]
    measured = default_run()
    assert float(row["val reward accuracy"]) == round(float(measured["val/rewards/accuracies"]), 3)
    assert float(row["ground-truth win rate vs π_ref"]) == round(
        float(measured["eval/win_rate_vs_ref"]), 3
    )
    assert float(row["KL(π ‖ π_ref) per sequence"]) == round(float(measured["eval/kl_seq"]), 2)


def test_the_moving_reference_table_is_measured():
    text = page("docs/losses/reference.md")
    keys = {
        "fixed (the default run)": "runs",
        "moving, τ = 8, α = 0.6": section_key_of(
            "reference.sync_every_n_steps=8 reference.sync_mix=0.6"
        ),
    }
    for label, key in keys.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        win_rate, reward, kl, margins = (c.strip() for c in row.strip("|").split("|")[1:5])
        measured = default_run(key)
        assert float(win_rate) == round(float(measured["eval/win_rate_vs_ref"]), 3), label
        assert float(reward) == round(float(measured["eval/reward_policy"]), 2), label
        assert float(kl) == round(float(measured["eval/kl_seq"]), 2), label
        assert float(margins) == round(float(measured["val/rewards/margins"]), 3), label


def section_key_of(overrides: str) -> str:
    """The section benchmarks/results_file.py gives a command's overrides."""
    return "runs-" + re.sub(r"[^a-z0-9]+", "-", overrides.lower()).strip("-")


@pytest.mark.parametrize("name", ["README.md", "docs/getting-started.md", "docs/sweeps.md"])
def test_every_printed_four_decimal_figure_has_a_results_file(name):
    """Output shown as printed (`0.8359`) must be output some benchmark printed."""
    held = " ".join(p.read_text(encoding="utf-8") for p in RESULTS.glob("*.md"))
    blocks = re.findall(r"```text\n(.*?)```", page(name), re.DOTALL)
    for number in re.findall(r"(?<![\d.])-?\d+\.\d{4}(?!\d)", "\n".join(blocks)):
        assert number in held, f"{name} prints {number}, which no results file holds"


def frontier_rows() -> list[dict[str, str]]:
    (rows,) = tables(sections("frontier.md")["runs"])
    return rows


def test_the_frontier_results_hold_every_method_at_every_beta():
    """`sweep=frontier` is 4 methods × 5 β: a row each, every job FINISHED."""
    pairs = [(r["method"].strip("`"), r["β"]) for r in frontier_rows()]
    methods = ["dpo_offline", "dpo_online", "rloo_learned", "rloo_true"]
    assert sorted(pairs) == sorted(
        (m, b) for m in methods for b in ["0.05", "0.1", "0.2", "0.5", "1"]
    )


def test_the_frontier_page_quotes_only_measured_figures():
    """Every decimal in frontier.md's Result section is a cell of the frontier's results table
    (β, KL, true reward or win rate, as the table writes it) or, for offline DPO's spread over
    data seeds, of beta_tradeoff.md's per-seed table; its wall time is the frontier file's."""
    result = page("docs/frontier.md").split("\n## Result", 1)[1]
    assert '--8<-- "results/frontier.md:runs"' in result
    held = {cell for row in frontier_rows() for cell in row.values()}
    held |= {
        c for rows in tables(sections("beta_tradeoff.md")["runs"]) for r in rows for c in r.values()
    }
    quoted = re.findall(r"(?<![\w.])\d+\.\d+(?![\d.]*\d)", result.replace("--8<--", ""))
    assert quoted, "the Result section quotes no figure"
    for number in quoted:
        assert number in held, f"docs/frontier.md quotes {number}, which results/frontier.md lacks"
    measured = re.search(r"wall time (\d+) s", sections("frontier.md")["runs"]).group(1)
    for wall in re.findall(r"(\d+) s of wall time", result):
        assert wall == measured, f"docs/frontier.md: {wall} s of wall time, results: {measured} s"
