"""Same results before and after a refactoring: run both checkouts, compare every number.

    git worktree add /tmp/before <commit>                      # the code to compare with
    python benchmarks/equivalence.py run --src /tmp/before --out /tmp/eq-before
    python benchmarks/equivalence.py run --src . --out /tmp/eq-after
    python benchmarks/equivalence.py compare /tmp/eq-before /tmp/eq-after

`run` trains the default toy-world run and a 3-job β sweep (`loss.beta=0.05,0.1,0.5`) from the
checkout `--src` (its own SQLite store and `PREFOPT_CACHE` under `--out`), and prepares 20,000 HH-shaped pairs
(`hh_shaped.py`, the data benchmark's tokenizer). It writes `fingerprint.json`: every metric's
whole history per run, and a SHA-256 of the prepared token ids of each split. `compare` says
whether two fingerprints are equal, value by value. Runs on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAIRS = 20000
INPUTS = Path(os.environ.get("TMPDIR", "/tmp")) / "prefopt-equivalence-inputs"


def run(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # A cache of its own: the toy world is built by the code under test too.
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "PREFOPT_CACHE": str(out / "cache")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    store = f"sqlite:///{out / 'mlflow.db'}"
    train = [sys.executable, "-m", "prefopt.train"]
    common = [f"logger.tracking_uri={store}", "export=false"]
    jobs = {
        "default": [*train, *common, f"hydra.run.dir={out / 'default'}"],
        "sweep": [*train, "--multirun", "loss.beta=0.05,0.1,0.5", *common,
                  f"hydra.sweep.dir={out / 'sweep'}"],
    }  # fmt: skip
    for name, command in jobs.items():
        print(f"{name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(command, cwd=src, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    ids = subprocess.run(
        [sys.executable, __file__, "ids", "--out", str(out)],
        cwd=src, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    fingerprint = {"runs": metric_histories(out / "mlflow.db"), "data": json.loads(ids.stdout)}
    (out / "fingerprint.json").write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    print(f"wrote {out / 'fingerprint.json'}", file=sys.stderr)


def metric_histories(db: Path) -> dict[str, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            role = "job" if "mlflow.parentRunId" in run.data.tags else "top"
            key = f"{experiment.name}/{role}/{run.info.run_name}/{run.info.status}"
            runs[key] = {
                name: [
                    (m.step, m.value)
                    for m in sorted(client.get_metric_history(run.info.run_id, name),
                                    key=lambda m: (m.step, m.timestamp))
                ]
                for name in sorted(run.data.metrics)
                if not name.startswith("system/")  # the machine's load, not a result
            }  # fmt: skip
    return runs


def prepared_ids(out: Path) -> dict[str, dict]:
    """Run inside the checkout under test (its `prefopt` on PYTHONPATH)."""
    sys.path.insert(0, str(HERE))
    from data_benchmark import MAX_LENGTH, MAX_PROMPT_LENGTH, build_inputs
    from transformers import AutoTokenizer

    from prefopt.config.schema import DataConfig
    from prefopt.data import PreferenceDataModule

    inputs = build_inputs(INPUTS, PAIRS)  # shared: both checkouts read the same file
    cfg = DataConfig(
        source="local",
        path=str(inputs["data"]),
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_PROMPT_LENGTH,
        cache_dir=str(out / "hh" / "cache"),
    )
    datamodule = PreferenceDataModule(cfg, AutoTokenizer.from_pretrained(inputs["tokenizer"]))
    datamodule.setup("fit")
    result: dict[str, dict] = {"stats": dict(datamodule.stats)}
    for split, table in (("train", datamodule.train_examples), ("val", datamodule.val_examples)):
        digest = hashlib.sha256()
        for row in table:
            ids = {k: v for k, v in row.items() if k.endswith("input_ids") or k == "index"}
            digest.update(json.dumps(ids, sort_keys=True).encode())
        result[split] = {"rows": len(table), "sha256": digest.hexdigest()}
    return result


def compare(before: Path, after: Path) -> bool:
    a, b = (json.loads((d / "fingerprint.json").read_text()) for d in (before, after))
    same = a["data"] == b["data"]
    print(f"prepared ids and data stats: {'equal' if same else 'DIFFERENT'}")
    values = differing = 0
    for run in sorted(set(a["runs"]) | set(b["runs"])):
        if run not in a["runs"] or run not in b["runs"]:
            print(f"  only in one: {run}")
            same = False
            continue
        ours, theirs = a["runs"][run], b["runs"][run]
        for name in sorted(set(ours) | set(theirs)):
            values += len(ours.get(name, []))
            if ours.get(name) != theirs.get(name):
                differing += 1
                print(f"  {run}: {name} differs")
    print(f"{len(a['runs'])} runs, {values} metric values: {differing} histories differ")
    return same and differing == 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "ids", "compare"])
    parser.add_argument("dirs", nargs="*", type=Path, help="compare: the two --out folders")
    parser.add_argument("--src", type=Path, default=HERE.parent, help="the checkout to run")
    parser.add_argument("--out", type=Path, help="where its runs and fingerprint go")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        run(args.src.resolve(), args.out.resolve())
    elif args.command == "ids":
        print(json.dumps(prepared_ids(args.out)))
    else:
        sys.exit(0 if compare(*args.dirs) else 1)


if __name__ == "__main__":
    main()
